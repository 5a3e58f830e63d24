"""Several acquisition processes writing into one catalogue: run them, then account for everything.

``python -m autofocus_plans.writers LOCATION NAME RUNS`` is one acquisition
process: a simulated microscope (small frames, no simulated waiting) running
``RUNS`` Brenner focus sweeps into the catalogue at ``LOCATION`` (a folder or
a server URL), each tagged ``writer=NAME``. It prints one JSON manifest line
per run: what the RunEngine emitted (documents by kind, events by stream)
and a digest of every frame the camera took. :func:`check_runs` compares a
catalogue with such manifests: every document and frame accounted for, and
no run mixed with another. The many-writers test and ``bench_scale`` use both.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import Counter
from typing import Any

import numpy as np

__all__ = ["check_runs", "frame_digest", "run_writer"]

SWEEP_POINTS = 9
SWEEP_HALF_RANGE_UM = 20.0


def frame_digest(frame: np.ndarray) -> str:
    """A short digest of one frame's pixels (shape and dtype included)."""
    frame = np.ascontiguousarray(frame)
    header = f"{frame.dtype.str}{frame.shape}".encode()
    return hashlib.sha1(header + frame.tobytes()).hexdigest()[:16]


class _RunTally:
    """RunEngine callback counting one run's documents and digesting its camera's frames."""

    def __init__(self, camera):
        self.camera = camera
        self.documents: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        self.frames: list[str] = []
        self._streams: dict[str, str] = {}

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        self.documents[name] += 1
        if name == "descriptor":
            self._streams[doc["uid"]] = doc["name"]
        elif name == "event":
            stream = self._streams[doc["descriptor"]]
            self.events[stream] += 1
            if stream == "primary":  # emitted right after its reading: the frame just taken
                self.frames.append(frame_digest(self.camera.last_frame))


def run_writer(location: str, name: str, runs: int, *, frame_px: int = 64, seed: int = 0):
    """Run ``runs`` focus sweeps into the catalogue at ``location``; yield one manifest per run.

    Each manifest: ``uid``, ``writer``, ``sample``, ``documents`` (counts by
    document name), ``events`` (counts by stream name), ``frames`` (digests
    of the primary stream's frames, in order), ``exit_status``, and the
    ``started``/``finished`` times of the run (seconds since the epoch).
    """
    from bluesky import RunEngine

    from devices import CameraSensor, SimMicroscope

    from .brenner import brenner_sweep
    from .catalog import open_catalog, subscribe_catalog

    catalog = open_catalog(location)
    mic = SimMicroscope(
        "cells", seed=seed, sensor=CameraSensor(shape=(frame_px, frame_px)), time_scale=0
    )
    RE = RunEngine({}, call_returns_result=True)
    subscribe_catalog(RE, catalog)  # no cameras named: frames still reach the catalogue
    for index in range(runs):
        tally = _RunTally(mic.camera)
        sample = f"{name}:{index}"
        started = time.time()
        result = RE(
            brenner_sweep(
                mic.camera,
                mic.z,
                mic.led,
                -SWEEP_HALF_RANGE_UM,
                SWEEP_HALF_RANGE_UM,
                SWEEP_POINTS,
                check_exposure=False,
                md={"sample": sample, "writer": name, "purpose": "scale-test"},
            ),
            tally,
        )
        yield {
            "uid": result.run_start_uids[0],
            "writer": name,
            "sample": sample,
            "documents": dict(tally.documents),
            "events": dict(tally.events),
            "frames": tally.frames,
            "exit_status": result.exit_status,
            "started": started,
            "finished": time.time(),
        }


def _stored_frames(run) -> list[str]:
    from .replay import load_frames

    return [frame_digest(frame) for frame in load_frames(run)]


def check_runs(catalog, manifests: list[dict[str, Any]]) -> list[str]:
    """Problems found comparing ``catalog`` with writer manifests; empty when all is there.

    Checks, for every manifest: the run exists with its own start metadata
    (writer, sample) and a stop document of the same exit status; each
    stream holds exactly the events emitted; the stored frames are the
    camera's frames, in order; replayed documents all belong to this run and
    hold the same number of events.
    """
    problems: list[str] = []
    for m in manifests:
        try:
            problems += _check_run(catalog, m)
        except Exception as err:  # an unreadable run is a finding, and the others still count
            problems.append(f"run {m['uid'][:8]} cannot be read: {type(err).__name__}: {err}")
    return problems


def _check_run(catalog, m: dict[str, Any]) -> list[str]:
    from .replay import load_table, run_stop

    uid = m["uid"]
    try:
        run = catalog[uid]
    except KeyError:
        return [f"run {uid[:8]} of {m['writer']} is missing"]
    problems = []
    start, stop = run.start, run_stop(run)
    if (start.get("writer"), start.get("sample")) != (m["writer"], m["sample"]):
        problems.append(f"run {uid[:8]} holds another run's metadata: {start.get('sample')}")
    if stop is None or stop.get("exit_status") != m["exit_status"]:
        problems.append(f"run {uid[:8]} has stop {stop and stop.get('exit_status')}")
    elif stop.get("num_events", {}) != m["events"]:
        problems.append(f"run {uid[:8]} stop counts {stop.get('num_events')} != {m['events']}")
    for stream, n in m["events"].items():
        stored = len(load_table(run, stream)["time"])
        if stored != n:
            problems.append(f"run {uid[:8]} stream {stream}: {stored} events, emitted {n}")
    if _stored_frames(run) != m["frames"]:
        problems.append(f"run {uid[:8]}: stored frames differ from the camera's")
    n_events = 0
    for name, doc in run.documents():
        n_events += 1 if name == "event" else len(doc["seq_num"]) if name == "event_page" else 0
        owner = doc.get("run_start")
        if owner is not None and owner != uid:
            problems.append(f"run {uid[:8]} replays a document of run {owner[:8]}")
    if n_events != sum(m["events"].values()):
        problems.append(f"run {uid[:8]} replays {n_events} events, emitted {m['events']}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("location", help="catalogue folder or server URL")
    parser.add_argument("name", help="this writer's name (recorded in every run)")
    parser.add_argument("runs", type=int, help="number of focus sweeps")
    parser.add_argument("--frame-px", type=int, default=64, help="frame size (default 64)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for manifest in run_writer(
        args.location, args.name, args.runs, frame_px=args.frame_px, seed=args.seed
    ):
        print(json.dumps(manifest), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
