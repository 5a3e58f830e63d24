"""Find, replay and load stored runs without the microscope."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "RunSummary",
    "find_runs",
    "focus_curve",
    "iterate_runs",
    "load_frames",
    "load_table",
    "lookup_run",
    "reanalyze",
    "replay",
    "run_stop",
    "summarize_run",
]


def lookup_run(catalog, uid: str):
    """The run whose uid is ``uid`` or starts with it (at least 6 characters)."""
    from bluesky_tiled_plugins.queries import PartialUID

    try:
        return catalog[uid]
    except KeyError:
        pass
    if len(uid) >= 6:
        matches = catalog.search(PartialUID(uid))
        if len(matches) == 1:
            return matches.values().first()
        if len(matches) > 1:
            raise KeyError(f"Run id {uid!r} is ambiguous ({len(matches)} runs); give more of it.")
    raise KeyError(f"No run {uid!r} in the catalogue; `autofocus runs` lists the stored runs.")


def find_runs(
    catalog,
    *,
    plan_name: str | None = None,
    sample: str | None = None,
    since: str | float | dt.datetime | None = None,
    until: str | float | dt.datetime | None = None,
    purpose: str | None = None,
):
    """Search runs by plan name, sample label, time range and ``purpose`` tag.

    ``since``/``until`` accept timestamps, datetimes or strings such as
    ``"2026-11-27 09:00"``. Returns the filtered catalogue (still a
    ``CatalogOfBlueskyRuns``).
    """
    from bluesky_tiled_plugins.queries import Key, TimeRange

    results = catalog
    if plan_name:
        results = results.search(Key("plan_name") == plan_name)
    if sample:
        results = results.search(Key("sample") == sample)
    if purpose:
        results = results.search(Key("purpose") == purpose)
    if since is not None or until is not None:
        # local time, as `autofocus runs` prints it
        results = results.search(TimeRange(since=since, until=until))
    return results


def replay(run, callbacks: Callable | Iterable[Callable]) -> int:
    """Re-emit a stored run's documents into ``callbacks``; returns the number of documents.

    Works with any document callback: ``LiveTable``, ``BestEffortCallback``,
    a ``RunRouter``, a plotting function. The stored documents are
    reconstructed by the catalogue (Tiled's ``application/json-seq``
    export): the same data, not necessarily the original byte order. A run
    without a stop document (still running, or its writer died) is replayed
    as far as it goes, without a stop document.
    """
    callbacks = [callbacks] if callable(callbacks) else list(callbacks)
    count = 0
    for name, doc in run.documents():
        if name == "stop" and not doc:
            continue  # the exporter stands in {} for a missing stop document
        for callback in callbacks:
            callback(name, doc)
        count += 1
    return count


def run_stop(run) -> dict | None:
    """The run's stop document, or None while it has none (running, or its writer died)."""
    return run.metadata.get("stop") or None


def _stream_base(run, stream: str):
    node = run[stream]
    return node, getattr(node, "base", node)


def load_table(run, stream: str = "primary") -> dict[str, np.ndarray]:
    """Every scalar column of ``stream`` as numpy arrays (images left out), and ``time``.

    Reads the stream's event table only (never the images). A stream with no
    events yet gives empty columns; a run cut short gives the rows it stored.
    """
    node, base = _stream_base(run, stream)
    data_keys = node.metadata.get("data_keys", {})
    scalars = [
        k for k, v in data_keys.items() if not v.get("external") and not list(v.get("shape", []))
    ]
    frame = base["internal"].read() if "internal" in base else None
    if frame is not None and not data_keys:  # no descriptor to go by: every plain column
        scalars = [c for c in frame.columns if c not in ("seq_num", "time", "_dataset_id")]
        scalars = [c for c in scalars if not c.startswith("ts_")]
    columns = {}
    for key in scalars:
        if frame is None or key not in frame:
            columns[key] = np.array([], dtype=float)
        else:
            columns[key] = np.asarray(frame[key].to_numpy())
    times = frame["time"].to_numpy() if frame is not None else np.array([], dtype=float)
    return columns | {"time": np.asarray(times, dtype=float)}


def load_frames(run, key: str | None = None, stream: str = "primary") -> np.ndarray:
    """The stored frames of ``stream`` as a ``(n, height, width)`` array.

    A run cut short gives the frames it stored (possibly one more than its
    events: a frame is registered just before its event); a stream with no
    frames yet gives an empty ``(0, height, width)`` array.
    """
    node, base = _stream_base(run, stream)
    data_keys = node.metadata.get("data_keys", {})
    if key is None:
        images = [k for k in data_keys if k.endswith("_image")] or [
            k for k in base if k.endswith("_image")
        ]
        if not images:
            raise KeyError(f"Stream {stream!r} of run {run.start['uid'][:8]} holds no images.")
        key = images[0]
    if key not in base:
        shape = [0, *list(data_keys.get(key, {}).get("shape", []))[-2:]]
        dtype = data_keys.get(key, {}).get("dtype_numpy") or "<u2"
        return np.zeros(shape, dtype=dtype)
    return np.asarray(base[key].read())


def _search_rows(table: dict[str, np.ndarray], start: dict) -> np.ndarray:
    """Rows taken at the search's final exposure.

    A focus search reads the exposure with every frame; frames taken while
    it was adjusting the exposure stay in the run but are not part of its curve.
    """
    rows = np.ones(len(next(iter(table.values()), [])), dtype=bool)
    for detector in start.get("detectors", []):
        exposure = table.get(f"{detector}_exposure_s")
        if exposure is not None and len(exposure):
            rows &= exposure == exposure[-1]
    return rows


def focus_curve(run, stream: str = "primary") -> tuple[str, np.ndarray, str, np.ndarray]:
    """(motor name, positions, measure name, values) of a stored focus scan.

    Frames a search took while it was still adjusting the exposure are left out.
    """
    start = run.start
    table = load_table(run, stream)
    rows = _search_rows(table, start)
    table = {key: column[rows] for key, column in table.items()}
    motors = start.get("motors") or []
    motor = next((m for m in motors if m in table), None)
    if motor is None:
        raise KeyError(f"Run {start['uid'][:8]} has no scanned motor to plot against.")
    metric = start.get("metric", "brenner")
    measure = next((k for k in table if k.endswith(f"_{metric}")), None)
    if measure is None:
        raise KeyError(f"Run {start['uid'][:8]} has no {metric!r} readings.")
    return motor, table[motor], measure, table[measure]


def reanalyze(run, metric: str = "brenner", stream: str = "primary"):
    """Recompute a stored focus scan with another focus measure, from its stored frames.

    Needs no microscope: the frames come from the catalogue, the measure from
    :mod:`models.focus_measures`. Returns the :class:`~autofocus_plans.PeakFit`.
    """
    from models.focus_measures import focus_measure

    from .peak import fit_peak

    measure = focus_measure(metric)
    frames = load_frames(run, stream=stream)
    rows = _search_rows(load_table(run, stream), run.start)
    _motor, z, _, _ = focus_curve(run, stream)
    common = min(len(frames), len(rows))
    frames = frames[:common][rows[:common]]
    n = min(len(frames), len(z))  # a run cut short may hold one frame more than events
    values = np.array([measure(frame) for frame in frames[:n]])
    return fit_peak(z[:n], values)


@dataclass
class RunSummary:
    """One row of ``autofocus runs``."""

    time: str
    uid: str
    plan: str
    sample: str
    exit_status: str
    result: str


def make_summary(start: dict, stop: dict | None, best_z: float | None, journal_state: str | None):
    """The :class:`RunSummary` of a run from its documents (shared by both listing paths)."""
    from .durable import run_status

    when = dt.datetime.fromtimestamp(start["time"]).strftime("%Y-%m-%d %H:%M:%S")
    return RunSummary(
        when,
        start["uid"][:8],
        str(start.get("plan_name", "?")),
        str(start.get("sample", "")),
        run_status(stop, journal_state),
        ""
        if best_z is None
        else "no focus found"
        if np.isnan(best_z)
        else f"best z {best_z:.2f} µm",
    )


def summarize_run(run, journals=None) -> RunSummary:
    """Summarise ``run``; ``journals`` (a :class:`~autofocus_plans.durable.RunJournals`) tells
    a running run from one whose writer died."""
    start = run.start
    stop = run_stop(run)
    best_z = None
    summary = run.metadata.get("summary") or {}
    num_events = (stop or {}).get("num_events") or {}
    if "best_z" in summary:  # written with the stop document: no table to read
        best_z = float("nan") if summary["best_z"] is None else float(summary["best_z"])
    elif (stop is None or num_events.get("focus_result")) and "focus_result" in run:
        table = load_table(run, "focus_result")
        if "best_z" in table and len(table["best_z"]):
            best_z = float(table["best_z"][-1])
    journal_state = journals.state(start["uid"]) if journals is not None and stop is None else None
    return make_summary(start, stop, best_z, journal_state)


def iterate_runs(results, limit: int) -> Iterator[Any]:
    """The newest ``limit`` runs of a (filtered) catalogue, newest first."""
    count = len(results)
    yield from reversed(list(results.values()[max(0, count - limit) :]))
