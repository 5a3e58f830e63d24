"""Durable catalogue writing: a killed process loses at most the event being written.

Design
------
Bluesky's ``TiledWriter`` buffers up to 10 000 events per stream and writes
them at the stop document, so a process killed mid-run (``kill -9``, power
cut, out-of-memory killer) leaves a run with its start document and no
events, although its frames are on disk. Writing every event to the
catalogue as it comes (``TiledWriter(batch_size=1)``) fixes that but costs two
catalogue requests per event — measured at 40–50 times the catalogue's cost
per frame (``benchmarks/bench_catalog.py``). So :class:`DurableWriter`

1. appends every document, as it arrives and before the catalogue writer
   sees it, to a *journal* ``running/<uid>.jsonl`` (one JSON line per
   document, written straight to the operating system, which keeps it when the
   process dies, and ``fdatasync``-ed to disk at every event, so that a power
   cut loses at most one event too), then hands it to Bluesky's batched
   ``TiledWriter`` as before. The sync is a disk flush per frame (on ext4 it
   also flushes the frame just written): a few ms on this machine's disk when
   idle, tens of ms when other processes load it. ``sync_interval_s=1`` syncs
   at most once a second instead (a power cut then loses at most the last
   second; a killed process still at most one event).
2. holds an ``flock`` on that journal for as long as the run is open. The
   kernel drops the lock when the process dies, however it dies, so a journal
   that someone else can lock belongs to a dead writer (no PID reuse or clock
   guessing), and a locked one to a run still being written;
3. deletes the journal once the catalogue has the run's stop document. If the
   catalogue refused a document, the journal is kept (unlocked) and the run is
   rewritten from it by the next recovery.

:func:`recover_runs` finishes the runs of dead writers from their journals: it
replaces whatever the catalogue holds of the run by every journaled document
(a truncated last line, the document being written at the kill, is dropped)
and, when the journal has no stop document, adds one with
``exit_status="fail"``, the reason (the writer died; the run is incomplete),
the number of events stored per stream and a ``recovered`` record. It runs
automatically when a RunEngine subscribes to the catalogue
(:func:`~autofocus_plans.subscribe_catalog`) and on demand (``autofocus
recover``). A run without a stop document and without a journal (written by
another tool, or before this design) is marked the same way when named.
Reading a catalogue never writes to it: listing a run without a stop document
shows it as ``running`` (its journal is locked), ``incomplete (crashed)`` (its
journal is not) or ``incomplete (no stop)``.

Without a folder for journals (a server catalogue with no
``AUTOFOCUS_FRAMES_DIR``), the writer falls back to writing each event to the
catalogue at once, which is durable but slow.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "JOURNAL_DIR",
    "DurableWriter",
    "RecoveredRun",
    "RunJournals",
    "journal_dir_for",
    "recover_runs",
    "run_status",
]

JOURNAL_DIR = "running"
RESULT_STREAM = "focus_result"
JOURNAL_SUFFIX = ".jsonl"
ALIVE, DEAD = "alive", "dead"
_SYNCED_BY_NEXT_EVENT = frozenset({"stream_resource", "stream_datum", "resource", "datum"})
_ALWAYS_SYNCED = frozenset({"start", "descriptor", "stop"})

logger = logging.getLogger(__name__)


def journal_dir_for(catalog) -> Path | None:
    """The journal folder of ``catalog``: ``running/`` beside its frames folder, if known."""
    root = getattr(catalog, "autofocus_root", None)
    if root is not None:
        return Path(root) / JOURNAL_DIR
    frames = getattr(catalog, "autofocus_frames_dir", None)
    return Path(frames).parent / JOURNAL_DIR if frames else None


def _jsonable(value: Any) -> Any:
    """numpy scalars and arrays in documents, as JSON."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class _Journal:
    """An open, ``flock``-ed journal; the lock lives exactly as long as the descriptor."""

    def __init__(self, path: Path, fd: int, sync_interval_s: float | None):
        self.path, self.fd, self.sync_interval_s = path, fd, sync_interval_s
        self._synced = time.monotonic()

    def append(self, name: str, doc: dict) -> None:
        line = json.dumps({"name": name, "doc": doc}, default=_jsonable) + "\n"
        # One unbuffered write: once it returns, the line survives the process.
        os.write(self.fd, line.encode())
        if self.sync_interval_s is None or name in _SYNCED_BY_NEXT_EVENT:
            return  # a frame's resource and datum precede its event, which syncs them
        now = time.monotonic()
        if name in _ALWAYS_SYNCED or now - self._synced >= self.sync_interval_s:
            os.fdatasync(self.fd)
            self._synced = now

    def close(self, *, remove: bool) -> None:
        if remove:
            # unlink before unlocking: nobody may find an unlocked journal of a finished run
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        os.close(self.fd)


class RunJournals:
    """The ``running/`` folder: one ``<uid>.jsonl`` journal per run, locked by its writer.

    The first line of a journal records its writer (``uid``, ``pid``,
    ``host``, ``time``); each further line is one document,
    ``{"name": ..., "doc": ...}``.

    Parameters
    ----------
    folder : path
        The journal folder (created on the first :meth:`open`).
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def path(self, uid: str) -> Path:
        return self.folder / f"{uid}{JOURNAL_SUFFIX}"

    def open(self, uid: str, *, sync_interval_s: float | None = 0.0) -> _Journal:
        """Create and lock the journal of run ``uid``; the writer keeps it open until the stop."""
        self.folder.mkdir(parents=True, exist_ok=True)
        header = {"uid": uid, "pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}
        # Lock a private file, then rename it into place: a journal is never visible unlocked.
        tmp = self.folder / f".{uid}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, (json.dumps({"journal": header}) + "\n").encode())
            os.fsync(fd)
            os.replace(tmp, self.path(uid))
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return _Journal(self.path(uid), fd, sync_interval_s)

    def read(self, uid: str) -> tuple[dict[str, Any], list[tuple[str, dict]]]:
        """(writer record, documents) of a journal; a truncated last line is dropped."""
        header: dict[str, Any] = {}
        docs: list[tuple[str, dict]] = []
        with open(self.path(uid), "rb") as f:
            for raw in f:
                try:
                    entry = json.loads(raw)
                except ValueError:
                    break  # the line being written when the process died
                if "journal" in entry:
                    header = entry["journal"]
                else:
                    docs.append((entry["name"], entry["doc"]))
        return header, docs

    def info(self, uid: str) -> dict[str, Any]:
        """The writer record of a journal (uid, pid, host, time); {} if unreadable."""
        try:
            with open(self.path(uid), "rb") as f:
                return json.loads(f.readline()).get("journal", {})
        except (OSError, ValueError, AttributeError):
            return {}

    def uids(self) -> list[str]:
        """Runs with a journal, alive or dead."""
        if not self.folder.is_dir():
            return []
        return sorted(
            p.name[: -len(JOURNAL_SUFFIX)] for p in self.folder.glob(f"*{JOURNAL_SUFFIX}")
        )

    @contextlib.contextmanager
    def claim(self, uid: str) -> Iterator[Path | None]:
        """Lock a *dead* journal for the duration of the block; yields None if alive or gone.

        Holding the lock keeps two recovering processes from finishing the same run.
        """
        try:
            fd = os.open(self.path(uid), os.O_RDONLY)
        except FileNotFoundError:
            yield None
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    yield None  # the writer holds it: the run is alive
                    return
                if self._pid_alive(uid):  # no flock here (some network file systems)
                    yield None
                    return
            yield self.path(uid)
        finally:
            os.close(fd)

    def _pid_alive(self, uid: str) -> bool:
        info = self.info(uid)
        if info.get("host") != socket.gethostname() or not isinstance(info.get("pid"), int):
            return True  # cannot tell: do not touch another machine's run
        try:
            os.kill(info["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def state(self, uid: str) -> str | None:
        """``"alive"`` (its writer holds the lock), ``"dead"``, or None (no journal)."""
        if not self.path(uid).exists():
            return None
        with self.claim(uid) as claimed:
            if claimed is None:
                return ALIVE if self.path(uid).exists() else None
            return DEAD


def run_status(stop: dict | None, journal_state: str | None = None) -> str:
    """One word or two for a run's state, as ``autofocus runs`` prints it.

    Parameters
    ----------
    stop : dict or None
        The run's stop document (None or {} if it has none).
    journal_state : str, optional
        The state of its journal (:meth:`RunJournals.state`).
    """
    if stop:
        if stop.get("recovered"):
            return "incomplete (recovered)"
        return str(stop.get("exit_status", "?"))
    if journal_state == ALIVE:
        return "running"
    if journal_state == DEAD:
        return "incomplete (crashed)"
    return "incomplete (no stop)"


class DurableWriter:
    """RunEngine callback: journal every document, then write it to the catalogue.

    Parameters
    ----------
    catalog : CatalogOfBlueskyRuns
        A writable catalogue client.
    journal_dir : path, optional
        Folder of the run journals (:func:`journal_dir_for`). Without one, each
        event is written to the catalogue as it arrives instead (durable, slower).
    sync_interval_s : float or None
        Least seconds between disk syncs (``fdatasync``) of the journal during
        a run: 0 (default) syncs at every event, so a power cut loses at most
        one event; 1 at most once a second (a power cut loses at most the last
        second); None never. A killed process loses at most the event being
        written whatever this is. Start, descriptors and stop are always
        synced unless None.
    """

    def __init__(
        self,
        catalog,
        *,
        journal_dir: str | Path | None,
        sync_interval_s: float | None = 0.0,
    ):
        from bluesky.callbacks.tiled_writer import BATCH_SIZE, TiledWriter

        self._catalog = catalog
        self._journals = RunJournals(journal_dir) if journal_dir is not None else None
        self._writer = TiledWriter(catalog, batch_size=BATCH_SIZE if self._journals else 1)
        self._sync_interval_s = sync_interval_s
        self._open: dict[str, _Journal] = {}  # run uid -> journal
        self._failed: set[str] = set()  # runs the catalogue refused: journal only
        self._run_of: dict[str, str] = {}  # descriptor / stream_resource / resource uid -> run
        self._result_streams: set[str] = set()  # descriptor uids of focus_result streams
        self._best_z: dict[str, float] = {}  # run uid -> last focus_result best_z

    def _run_uid(self, name: str, doc: dict) -> str | None:
        if name == "start":
            return doc["uid"]
        if name in ("stop", "descriptor", "resource", "stream_resource") and doc.get("run_start"):
            run = doc["run_start"]
        elif name in ("event", "event_page", "stream_datum"):
            run = self._run_of.get(doc.get("descriptor", ""))
        elif name in ("datum", "datum_page"):
            run = self._run_of.get(doc.get("resource", ""))
        else:
            run = None
        if run is None and self._open:
            run = next(reversed(self._open))  # the run opened last
        if name in ("descriptor", "resource", "stream_resource") and run is not None:
            self._run_of[doc["uid"]] = run
        return run

    def _note_result(self, name: str, doc: dict, uid: str | None) -> None:
        """Keep the run's conclusion, for a one-request listing (:meth:`_write_summary`)."""
        if name == "descriptor" and doc.get("name") == RESULT_STREAM:
            self._result_streams.add(doc["uid"])
        elif (
            name == "event"
            and uid
            and doc.get("descriptor") in self._result_streams
            and "best_z" in doc.get("data", {})
        ):
            self._best_z[uid] = doc["data"]["best_z"]

    def _write_summary(self, uid: str | None) -> None:
        """Copy the run's best Z into its metadata (``summary``) once the stop is written.

        Listing runs on a server then costs one request per page of runs instead
        of three per run (reading each ``focus_result`` table); a run without it
        is still listed, from its table.
        """
        if uid is None or uid not in self._best_z:
            return
        best_z = self._best_z.pop(uid)
        value = None if best_z is None or math.isnan(best_z) else float(best_z)
        try:
            node = self._catalog[uid]
            metadata = {**dict(node.metadata), "summary": {"best_z": value}}
            node.update_metadata(metadata=metadata, drop_revision=True)
        except Exception as err:  # listing falls back to the table: never fail the run here
            logger.warning("Cannot add the summary of run %s (%s).", uid[:8], err)

    def __call__(self, name: str, doc: dict) -> None:
        uid = self._run_uid(name, doc)
        self._note_result(name, doc, uid)
        if self._journals is None:
            self._writer(name, doc)
            if name == "stop":
                self._write_summary(uid)
                self._run_of = {k: v for k, v in self._run_of.items() if v != uid}
            return
        if name == "start":
            try:
                self._open[uid] = self._journals.open(uid, sync_interval_s=self._sync_interval_s)
            except OSError as err:
                logger.warning(
                    "Cannot create the journal of run %s in %s (%s): if this process dies "
                    "mid-run, the run's events are lost.",
                    uid[:8],
                    self._journals.folder,
                    err.strerror or err,
                )
        journal = self._open.get(uid) if uid else None
        if journal is not None:
            journal.append(name, doc)  # before the catalogue: this is what survives a crash
        if uid not in self._failed:
            try:
                self._writer(name, doc)
            except Exception as err:
                if journal is None:
                    raise
                # The documents are safe in the journal; recovery writes the run later.
                self._failed.add(uid)
                logger.warning(
                    "The catalogue refused run %s (%s); its documents are kept in %s and "
                    "`autofocus recover` writes them once the catalogue accepts them.",
                    uid[:8],
                    err,
                    journal.path,
                )
        if name == "stop" and uid not in self._failed:
            self._write_summary(uid)
        if name == "stop" and journal is not None:
            # kept (unlocked) if the catalogue missed anything: recovery rewrites the run
            journal.close(remove=uid not in self._failed)
            del self._open[uid]
            self._failed.discard(uid)
            self._run_of = {k: v for k, v in self._run_of.items() if v != uid}
        if name == "stop":
            self._best_z.pop(uid, None)


@dataclass
class RecoveredRun:
    """What :func:`recover_runs` did to one run."""

    uid: str
    action: str  # "recovered", "rewritten", "already complete", "empty journal removed"
    events: dict[str, int] = field(default_factory=dict)
    stop: dict | None = None

    def __str__(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in self.events.items()) or "no events"
        if self.action == "recovered":
            return f"run {self.uid[:8]}: marked incomplete, kept {counts}"
        if self.action == "rewritten":
            return f"run {self.uid[:8]}: written from its journal ({counts}), complete"
        return f"run {self.uid[:8]}: {self.action}"


def _recovered_stop(uid: str, counts: dict[str, int], last: float, info: dict) -> dict:
    """The stop document of a run whose writer died."""
    from event_model import DocumentNames, schema_validators

    now = time.time()
    when = dt.datetime.fromtimestamp(now).strftime("%Y-%m-%d %H:%M:%S")
    if info:
        why = (
            f"The process writing this run (pid {info.get('pid')} on {info.get('host')}) "
            "died before the run ended"
        )
    else:
        why = "The run had no stop document (its writer died or never closed it)"
    stop = {
        "uid": str(uuid.uuid4()),
        "run_start": uid,
        "time": last,
        "exit_status": "fail",
        "reason": (
            f"{why}; recovered on {when} with the {sum(counts.values())} event(s) it had "
            "stored, so the run is incomplete."
        ),
        "num_events": counts,
        "recovered": {"time": now, "writer_pid": info.get("pid"), "writer_host": info.get("host")},
    }
    schema_validators[DocumentNames.stop].validate(stop)
    return stop


def _stored_events(run) -> tuple[dict[str, int], float | None]:
    """Events stored per stream in the catalogue, and the time of the last one."""
    counts: dict[str, int] = {}
    last = None
    for stream in run:
        node = run[stream]
        base = getattr(node, "base", node)
        if "internal" not in base:
            counts[stream] = 0
            continue
        times = base["internal"].read(["time"])["time"]
        counts[stream] = len(times)
        if len(times):
            last = max(float(times.max()), last or 0.0)
    return counts, last


def _mark_incomplete(run) -> RecoveredRun:
    """Add a stop document to a run that has none and no journal, keeping what it holds."""
    start = run.metadata["start"]
    if run.metadata.get("stop"):
        return RecoveredRun(start["uid"], "already complete", stop=dict(run.metadata["stop"]))
    counts, last = _stored_events(run)
    stop = _recovered_stop(start["uid"], counts, last or float(start["time"]), {})
    # the same update TiledWriter makes with a real stop document
    run.update_metadata(metadata={**dict(run.metadata), "stop": stop}, drop_revision=True)
    return RecoveredRun(start["uid"], "recovered", counts, stop)


def _from_journal(catalog, journals: RunJournals, uid: str) -> RecoveredRun:
    """Write run ``uid`` from its (dead) journal, replacing what the catalogue holds of it."""
    from bluesky.callbacks.tiled_writer import TiledWriter

    from .catalog import CatalogError

    info, docs = journals.read(uid)
    if not any(name == "start" for name, _ in docs):
        return RecoveredRun(uid, "empty journal removed")  # died before journaling the start
    if uid in catalog:
        run = catalog[uid]
        if run.metadata.get("stop"):
            return RecoveredRun(uid, "already complete", stop=dict(run.metadata["stop"]))
        # Only a prefix of the journal reached the catalogue (start, descriptors, whole
        # batches): replace it. The journal is deleted only after the rewrite succeeds.
        with contextlib.suppress(KeyError):
            catalog.delete_contents([uid], recursive=True, external_only=False)
        if uid in catalog:
            raise CatalogError(
                f"Cannot replace the partial copy of run {uid[:8]} in the catalogue; its "
                f"documents are safe in {journals.path(uid)}, run `autofocus recover` again."
            )
    names = {d["uid"]: d["name"] for n, d in docs if n == "descriptor"}
    counts = {name: 0 for name in dict.fromkeys(names.values())}
    last = next(float(d["time"]) for n, d in docs if n == "start")
    stop = None
    writer = TiledWriter(catalog)
    for name, doc in docs:
        if name == "event":
            counts[names[doc["descriptor"]]] += 1
            last = max(last, float(doc["time"]))
        elif name == "stop":
            stop = doc
            continue
        writer(name, doc)
    action = "rewritten" if stop is not None else "recovered"
    if stop is None:
        stop = _recovered_stop(uid, counts, last, info)
    writer("stop", stop)
    return RecoveredRun(uid, action, counts, stop)


def recover_runs(catalog, uids: Iterable[str] | None = None) -> list[RecoveredRun]:
    """Finish the runs of writers that died, keeping everything they recorded.

    Parameters
    ----------
    catalog : CatalogOfBlueskyRuns
        A writable catalogue (from :func:`~autofocus_plans.open_catalog`).
    uids : iterable of str, optional
        Runs to recover (full uids or unique prefixes of 6+ characters). By
        default, every run whose journal is no longer locked by its writer. A
        named run without a journal (e.g. written by another tool) is given a
        stop document too: naming it says its writer is gone.

    Returns
    -------
    list of RecoveredRun
        One entry per run looked at: ``"recovered"`` (marked incomplete),
        ``"rewritten"`` (the journal held the stop document: the catalogue had
        refused the run, now it is complete) or ``"already complete"``.

    Raises
    ------
    CatalogError
        A named run is still being written (its journal is locked).
    KeyError
        A named run is not in the catalogue.
    """
    from .catalog import CatalogError
    from .replay import lookup_run

    folder = journal_dir_for(catalog)
    journals = RunJournals(folder) if folder is not None else None
    done: list[RecoveredRun] = []
    if uids is None:
        for uid in journals.uids() if journals else []:
            with journals.claim(uid) as claimed:
                if claimed is None:
                    continue  # alive, or finished meanwhile
                try:
                    result = _from_journal(catalog, journals, uid)
                except Exception as err:
                    # never block a new session on an old run: say so, keep the journal
                    logger.warning(
                        "Cannot recover run %s (%s); its documents stay in %s.",
                        uid[:8],
                        err,
                        journals.path(uid),
                    )
                    continue
                claimed.unlink(missing_ok=True)
            done.append(result)
            if result.action in ("recovered", "rewritten"):
                logger.warning("Recovered a run whose writer died: %s.", result)
        return done
    for name in uids:
        if journals is not None and journals.path(name).exists():
            uid = name  # a full uid: the run may not even be in the catalogue yet
        else:
            uid = lookup_run(catalog, name).metadata["start"]["uid"]
        if journals is None or journals.state(uid) is None:
            done.append(_mark_incomplete(catalog[uid]))
            continue
        with journals.claim(uid) as claimed:
            if claimed is None:
                info = journals.info(uid)
                raise CatalogError(
                    f"Run {uid[:8]} is still being written by process {info.get('pid')} on "
                    f"{info.get('host')}; let it finish or stop that process first."
                )
            done.append(_from_journal(catalog, journals, uid))
            claimed.unlink(missing_ok=True)
    return done
