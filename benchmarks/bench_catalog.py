"""Cost of recording 512x512 uint16 frames: raw HDF5, a bare RunEngine, RunEngine + catalogue.

Also the price and the effect of durable catalogue writing (issue 9): the per-frame cost
of ``subscribe_catalog`` (every document journaled, then Bluesky's batched ``TiledWriter``)
against the batched writer alone (``subscribe_catalog(..., durable=False)``, the design
before issue 9) and against the alternative considered, writing every event to the
catalogue as it arrives (``TiledWriter(batch_size=1)``); and what is left of a run whose
process is killed with ``kill -9`` mid-run.

Runs with the others (``python -m benchmarks``) or alone::

    python -m benchmarks.bench_catalog [--quick]
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import bluesky.plans as bp
import h5py
import numpy as np
from bluesky import RunEngine

import devices

from ._common import table

SHAPE = (512, 512)
PATTERN = "off_axis"


def microscope(frames_dir: Path | None = None) -> devices.SimMicroscope:
    mic = devices.SimMicroscope(
        "cells",
        seed=0,
        sensor=devices.CameraSensor(shape=SHAPE),
        time_scale=0,
        frames_dir=frames_dir,
    )
    mic.led.set(PATTERN)
    return mic


def per_frame(action: Callable[[int], object], num: int, repeats: int) -> float:
    """Median over ``repeats`` of seconds per frame of ``action(num)``, after a warm-up."""
    action(1)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        action(num)
        times.append((time.perf_counter() - t0) / num)
    return float(np.median(times))


def raw_h5py(folder: Path, frames: list[np.ndarray]) -> Callable[[int], None]:
    """Append frames one at a time the way ``devices/camera.py`` does (SWMR, flush each)."""
    counter = iter(range(1_000_000))

    def action(num: int) -> None:
        h, w = SHAPE
        with h5py.File(folder / f"raw_{next(counter)}.h5", "w", libver="latest") as f:
            ds = f.create_dataset(
                "data", shape=(0, h, w), maxshape=(None, h, w), chunks=(1, h, w), dtype="<u2"
            )
            f.swmr_mode = True
            for i in range(num):
                ds.resize(i + 1, axis=0)
                ds[i] = frames[i % len(frames)]
                ds.flush()

    return action


def simulate(mic: devices.SimMicroscope) -> Callable[[int], None]:
    def action(num: int) -> None:
        for _ in range(num):
            mic.model.expose(mic.camera.settings())

    return action


def snap(mic: devices.SimMicroscope) -> Callable[[int], None]:
    def action(num: int) -> None:
        for _ in range(num):
            mic.camera.snap()

    return action


def count(RE: RunEngine, mic: devices.SimMicroscope) -> Callable[[int], None]:
    def action(num: int) -> None:
        RE(bp.count([mic.camera], num))

    return action


def interleaved(actions: list[Callable[[int], object]], num: int, repeats: int) -> list[float]:
    """Median seconds per frame of each action, timed in turns so load drifts hit all alike."""
    for action in actions:
        action(1)
    times: list[list[float]] = [[] for _ in actions]
    for _ in range(repeats):
        for i, action in enumerate(actions):
            t0 = time.perf_counter()
            action(num)
            times[i].append((time.perf_counter() - t0) / num)
    return [float(np.median(t)) for t in times]


# A writer killed mid-run. It logs each event *before* the catalogue sees it (it
# subscribes first), so the log holds everything the RunEngine emitted.
KILLED_CHILD = """
import sys
import bluesky.plans as bp
from bluesky import RunEngine
from autofocus_plans import open_catalog, subscribe_catalog
from devices import SimMicroscope

location, log_path, durable = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
catalog = open_catalog(location, create=True)
mic = SimMicroscope("bars", seed=3, time_scale=0)
RE = RunEngine({})
log = open(log_path, "w", buffering=1)
RE.subscribe(lambda name, doc: name == "event" and log.write(f"{doc['seq_num']}\\n"))
subscribe_catalog(RE, catalog, cameras=[mic.camera], durable=durable)
RE(bp.count([mic.camera], 100000, delay=0.02))
"""


def killed_mid_run(folder: Path, *, durable: bool, after: int) -> tuple[int, int, int]:
    """(events emitted, events in the catalogue after recovery, frames readable)."""
    from autofocus_plans import load_frames, load_table, open_catalog, recover_runs

    location, log = folder / "catalog", folder / "emitted.log"
    flag = "1" if durable else "0"
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(KILLED_CHILD), str(location), str(log), flag],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not (log.exists() and len(log.read_text().splitlines()) >= after):
            if child.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the killed-writer child emitted too few events")
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    emitted = len(log.read_text().splitlines())
    catalog = open_catalog(location)
    (uid,) = list(catalog)
    recover_runs(catalog, [uid])  # the batched writer keeps no journal: name the run
    run = catalog[uid]
    stored = len(load_table(run)["time"])
    frames = len(load_frames(run))
    context = getattr(catalog, "context", None)
    if context is not None:
        context.close()
    return emitted, stored, frames


def run(quick: bool) -> str:
    from autofocus_plans import frames_dir_for, open_catalog, subscribe_catalog
    from autofocus_plans.durable import DurableWriter

    num, repeats = (5, 1) if quick else (50, 3)
    with tempfile.TemporaryDirectory(prefix="bench-catalog-") as tmp:
        root = Path(tmp)
        mic_d = microscope()
        frames = [mic_d.model.expose(mic_d.camera.settings()) for _ in range(4)]
        t_sim = per_frame(simulate(mic_d), num, repeats)
        t_snap = per_frame(snap(mic_d), num, repeats)
        (root / "raw").mkdir()
        t_raw = per_frame(raw_h5py(root / "raw", frames), num, repeats)

        mic_b = microscope(root / "bare")
        bare = count(RunEngine({}), mic_b)

        catalogs, recorders = [], []
        for name in ("batched", "durable", "per-event", "sync-1s"):
            mic_c = microscope()
            RE = RunEngine({})
            catalog = open_catalog(root / name, create=True)
            if name == "per-event":  # without a journal folder, each event goes to the catalogue
                RE.subscribe(DurableWriter(catalog, journal_dir=None))
                mic_c.camera.write_dir = frames_dir_for(catalog)
            else:
                subscribe_catalog(
                    RE,
                    catalog,
                    cameras=[mic_c.camera],
                    durable=name != "batched",
                    sync_interval_s=1.0 if name == "sync-1s" else 0.0,
                )
            catalogs.append(catalog)
            recorders.append(count(RE, mic_c))
        # the compared rows in turns, more repeats: some differences are a few ms
        t_bare, t_cat, t_dur, t_each, t_sync = interleaved([bare, *recorders], num, 2 * repeats + 1)
        stored = len(catalogs[0])
        for catalog in catalogs:
            context = getattr(catalog, "context", None)
            if context is not None:
                context.close()

        after = 10 if quick else 60
        (root / "kill-durable").mkdir()
        (root / "kill-batched").mkdir()
        kill_durable = killed_mid_run(root / "kill-durable", durable=True, after=after)
        kill_batched = killed_mid_run(root / "kill-batched", durable=False, after=after)

    ms = 1e3
    over_b, over_c, over_f = t_bare - t_sim, t_cat - t_sim, t_dur - t_sim
    rows = [
        [
            "(a) raw h5py write",
            "resize + write + flush one frame into a chunked (1,H,W) "
            "SWMR dataset, no fsync (frames pre-simulated)",
            t_raw,
            None,
        ],
        [
            "(b) RunEngine, no catalogue",
            "`RE(count([mic.camera], num))`: simulation + "
            "focus measures/stats + HDF5 write + documents, run open/close amortised",
            t_bare,
            over_b,
        ],
        [
            "(c) RunEngine + Tiled catalogue, batched",
            "as (b) + `subscribe_catalog(..., durable=False)` (embedded Tiled, SQLite): "
            "Bluesky's default `TiledWriter`, events buffered and written at the stop "
            "document (the design before issue 9)",
            t_cat,
            over_c,
        ],
        [
            "(f) RunEngine + Tiled catalogue, durable",
            "as (c) + `subscribe_catalog`'s journal (the default): every document appended "
            "to a flock-ed `running/<uid>.jsonl` before the batched writer sees it, "
            "`fdatasync` at every event",
            t_dur,
            over_f,
        ],
        [
            "(g) RunEngine + Tiled catalogue, per-event writes",
            "as (b) + `TiledWriter(batch_size=1)`: each event's row and frame reference "
            "written to the catalogue as it arrives (the alternative not chosen)",
            t_each,
            t_each - t_sim,
        ],
        [
            "(h) as (f), `fdatasync` at most 1 s apart",
            "`subscribe_catalog(..., sync_interval_s=1)`: a power cut loses at most the last "
            "second (a killed process still at most one event)",
            t_sync,
            t_sync - t_sim,
        ],
        ["(d) simulation only", "`mic.model.expose(mic.camera.settings())`", t_sim, None],
        [
            "(e) camera.snap(), unstaged",
            "(d) + focus measures/stats + acquire thread; nothing written (for reference)",
            t_snap,
            t_snap - t_sim,
        ],
    ]
    body = [
        [
            name,
            what,
            f"{t * ms:.1f}",
            f"{1 / t:.1f}",
            "" if over is None else f"{over * ms:.1f}",
            "" if over is None else f"{over / t_raw:.1f}x",
        ]
        for name, what, t, over in rows
    ]
    cost_c, cost_f, cost_g = t_cat - t_bare, t_dur - t_bare, t_each - t_bare
    cost_h = t_sync - t_bare
    kills = [
        [label, e, s, e - s, f]
        for label, (e, s, f) in (
            ("durable (`subscribe_catalog`)", kill_durable),
            ("batched (`durable=False`)", kill_batched),
        )
    ]
    return "\n".join(
        [
            "## Recording cost: HDF5, RunEngine, catalogue",
            "",
            f"`SimMicroscope('cells', sensor=CameraSensor(shape={SHAPE}), time_scale=0)`, LED "
            f"`{PATTERN}` (cheapest simulation, so overheads stand out); {num} frames per run; "
            f"rows (a), (d), (e): median of {repeats} timed run(s) after a 1-frame warm-up run; "
            f"rows (b), (c), (f), (g), (h): median of {2 * repeats + 1} runs each, timed in "
            "turns (b, c, f, g, h, b, c, …) so that load from other processes hits them alike. "
            "Per-frame time = wall time of the whole run / frames (so (b), (c), (f)–(h) include "
            "opening and closing the run). Nothing is subtracted from the measured rows; the "
            "overhead column is row − (d), i.e. what recording adds to the simulation, and its "
            f"ratio to the raw HDF5 write (a). The batched catalogue held {stored} runs at the "
            "end.",
            "",
            table(
                [
                    "row",
                    "includes",
                    "ms/frame",
                    "frames/s",
                    "overhead vs (d), ms/frame",
                    "overhead / (a)",
                ],
                body,
            ),
            "",
            f"Ratios (same run): (c)/(b) = {t_cat / t_bare:.2f}, (f)/(b) = {t_dur / t_bare:.2f}, "
            f"(c)/(a) = {t_cat / t_raw:.1f}; RunEngine + HDF5 alone (b)−(e) = "
            f"{(t_bare - t_snap) * ms:.1f} ms/frame.",
            "",
            "**Durable writing, cost per frame.** Catalogue alone: batched (c)−(b) = "
            f"{cost_c * ms:.1f} ms/frame, journal + batched (f)−(b) = {cost_f * ms:.1f} "
            f"ms/frame, per-event writes (g)−(b) = {cost_g * ms:.1f} ms/frame, journal synced "
            f"at most once a second (h)−(b) = {cost_h * ms:.1f} ms/frame; "
            + (
                f"ratio durable / batched = {cost_f / cost_c:.1f}x, per-event / batched = "
                f"{cost_g / cost_c:.1f}x, synced once a second / batched = "
                f"{cost_h / cost_c:.1f}x."
                if cost_c > 0
                else "(batched within noise of zero: no ratio)."
            ),
            "",
            f"Whole run: (f)/(c) = {t_dur / t_cat:.2f}, (g)/(c) = {t_each / t_cat:.2f}, "
            f"(h)/(c) = {t_sync / t_cat:.2f}.",
            "",
            "### A writer killed with `kill -9` mid-run",
            "",
            f"A child process runs `RE(count([camera], 100000, delay=0.02))` (256² frames) into "
            f"a new embedded catalogue and logs each event before the catalogue writer sees "
            f"it; it is killed with SIGKILL once it has logged {after} events. Then "
            "`recover_runs(catalog, [uid])` writes the run from its journal (durable) or just "
            "adds a stop document (batched: no journal), and the run's event table and frames "
            "are read back.",
            "",
            table(["writer", "events emitted", "events stored", "lost", "frames readable"], kills),
            "",
        ]
    )


def main() -> None:
    print(run("--quick" in sys.argv[1:]))


if __name__ == "__main__":
    main()
