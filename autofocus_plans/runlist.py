"""``autofocus runs`` in well under a second: list an embedded catalogue from its SQLite files.

Opening an embedded catalogue starts Tiled's server in-process, and importing
that server alone takes 2–4 s here (dask, pandas, xarray, FastAPI). Listing
runs only needs each run's start and stop documents and its last
``focus_result`` row, which sit in ``catalog.db`` and ``tables.db``, so this
module reads them directly with the standard library's ``sqlite3``, read-only.

It is a read-only shortcut tied to the layout of Tiled's SQL catalogue
(``nodes`` and ``data_sources`` tables; event tables keyed by
``_dataset_id``). When anything differs from that layout :func:`quick_summaries`
returns None and the caller goes through Tiled as usual; a test checks that
both paths print the same rows.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sqlite3
from pathlib import Path

from .durable import JOURNAL_DIR, RunJournals
from .replay import RunSummary, make_summary

__all__ = ["parse_time", "quick_summaries"]

# the formats bluesky_tiled_plugins.queries.TimeRange accepts, read in local time
_TIME_FORMATS = ["%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H", "%Y-%m-%d", "%Y-%m", "%Y"]
_SQL_TABLE = "application/x-tiled-sql-table"
_IDENTIFIER = re.compile(r"^\w+$")


def parse_time(value: str | float | dt.datetime | None) -> float | None:
    """A timestamp from a number, a datetime or a local-time string such as ``2026-11-27 09:00``."""
    if value is None or isinstance(value, int | float):
        return value
    if isinstance(value, dt.datetime):
        return value.timestamp()
    text = str(value).strip()
    for fmt in _TIME_FORMATS:
        try:
            return dt.datetime.strptime(text, fmt).timestamp()
        except ValueError:
            continue
    try:
        return float(text)
    except ValueError:
        raise ValueError(
            f"Cannot read the time {value!r}; write it like '2026-11-27 09:00' (local time)."
        ) from None


def _connect(path: Path) -> sqlite3.Connection:
    # read-only: listing must never write to (or lock out) a catalogue being written
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)


def _last_best_z(catalog: sqlite3.Connection, tables: Path, run_id: int) -> float | None:
    row = catalog.execute(
        "SELECT ds.parameters FROM nodes AS s JOIN nodes AS t ON t.parent = s.id "
        "JOIN data_sources AS ds ON ds.node_id = t.id "
        "WHERE s.parent = ? AND s.key = 'focus_result' AND t.key = 'internal' "
        "AND ds.mimetype = ?",
        (run_id, _SQL_TABLE),
    ).fetchone()
    if row is None:
        return None
    parameters = json.loads(row[0])
    table, dataset = parameters["table_name"], int(parameters["dataset_id"])
    if not _IDENTIFIER.match(table):
        raise ValueError(f"unexpected table name {table!r}")
    with _connect(tables) as db:
        columns = {r[1] for r in db.execute(f'PRAGMA table_info("{table}")')}
        if "best_z" not in columns:
            return None
        value = db.execute(
            f'SELECT best_z FROM "{table}" WHERE _dataset_id = ? '
            "ORDER BY _partition_id DESC, rowid DESC LIMIT 1",
            (dataset,),
        ).fetchone()
    return None if value is None or value[0] is None else float(value[0])


def quick_summaries(
    root: str | Path,
    *,
    plan_name: str | None = None,
    sample: str | None = None,
    since: str | float | dt.datetime | None = None,
    until: str | float | dt.datetime | None = None,
    limit: int = 20,
) -> tuple[int, list[RunSummary]] | None:
    """Count the runs of the embedded catalogue ``root`` that match; summarise the newest.

    Parameters
    ----------
    root : path
        An embedded catalogue folder (holding ``catalog.db``).
    plan_name, sample, since, until
        The filters of :func:`~autofocus_plans.find_runs` (``since <= start
        time < until``).
    limit : int
        Summarise at most this many runs, newest first.

    Returns
    -------
    (int, list of RunSummary) or None
        The number of matching runs and the newest ``limit`` summaries, or
        None when the files do not have the expected layout (read through
        Tiled instead).
    """
    root = Path(root)
    since_t, until_t = parse_time(since), parse_time(until)
    where = ["parent = (SELECT id FROM nodes WHERE parent IS NULL)"]
    where.append("specs LIKE '%\"BlueskyRun\"%'")
    args: list[object] = []
    for key, value in (("plan_name", plan_name), ("sample", sample)):
        if value:
            where.append(f"json_extract(metadata, '$.start.{key}') = ?")
            args.append(value)
    if since_t is not None:
        where.append("json_extract(metadata, '$.start.time') >= ?")
        args.append(since_t)
    if until_t is not None:
        where.append("json_extract(metadata, '$.start.time') < ?")
        args.append(until_t)
    condition = " AND ".join(where)
    journals = RunJournals(root / JOURNAL_DIR)
    try:
        with _connect(root / "catalog.db") as db:
            (count,) = db.execute(f"SELECT count(*) FROM nodes WHERE {condition}", args).fetchone()
            rows = db.execute(
                f"SELECT id, metadata FROM nodes WHERE {condition} ORDER BY id DESC LIMIT ?",
                [*args, max(0, limit)],
            ).fetchall()
            summaries = []
            for run_id, text in rows:
                metadata = json.loads(text)
                start, stop = metadata["start"], metadata.get("stop") or None
                best_z = _last_best_z(db, root / "tables.db", run_id)
                journal_state = journals.state(start["uid"]) if stop is None else None
                summaries.append(make_summary(start, stop, best_z, journal_state))
    except (sqlite3.Error, KeyError, TypeError, ValueError):
        return None
    return count, summaries
