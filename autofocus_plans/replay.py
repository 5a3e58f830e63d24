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
    export): the same data, not necessarily the original byte order.
    """
    callbacks = [callbacks] if callable(callbacks) else list(callbacks)
    count = 0
    for name, doc in run.documents():
        for callback in callbacks:
            callback(name, doc)
        count += 1
    return count


def load_table(run, stream: str = "primary") -> dict[str, np.ndarray]:
    """Every scalar column of ``stream`` as numpy arrays (images left out)."""
    dataset = run[stream].read()
    return {
        name: np.asarray(var.values) for name, var in dataset.data_vars.items() if var.ndim == 1
    } | {"time": np.asarray(dataset["time"].values)}


def load_frames(run, key: str | None = None, stream: str = "primary") -> np.ndarray:
    """The stored frames of ``stream`` as a ``(n, height, width)`` array."""
    node = run[stream]
    if key is None:
        images = [k for k in node if k.endswith("_image")]
        if not images:
            raise KeyError(f"Stream {stream!r} of run {run.start['uid'][:8]} holds no images.")
        key = images[0]
    return np.asarray(node[key].read())


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
    rows = _search_rows(load_table(run, stream), run.start)[: len(frames)]
    _motor, z, _, _ = focus_curve(run, stream)
    values = np.array([measure(frame) for frame in frames[rows]])
    return fit_peak(z[: len(values)], values)


@dataclass
class RunSummary:
    time: str
    uid: str
    plan: str
    sample: str
    exit_status: str
    result: str


def summarize_run(run) -> RunSummary:
    start = run.start
    stop = run.stop or {}
    result = ""
    if "focus_result" in run:
        table = load_table(run, "focus_result")
        if "found" in table and len(table["found"]) and not int(table["found"][-1]):
            result = "no focus found"
        elif "best_z" in table and len(table["best_z"]):
            result = f"best z {float(table['best_z'][-1]):.2f} µm"
    when = dt.datetime.fromtimestamp(start["time"]).strftime("%Y-%m-%d %H:%M:%S")
    return RunSummary(
        when,
        start["uid"][:8],
        start.get("plan_name", "?"),
        str(start.get("sample", "")),
        stop.get("exit_status", "running"),
        result,
    )


def iterate_runs(results, limit: int) -> Iterator[Any]:
    """The newest ``limit`` runs of a (filtered) catalogue, newest first."""
    count = len(results)
    yield from reversed(list(results.values()[max(0, count - limit) :]))
