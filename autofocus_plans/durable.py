"""Durable catalogue writing: a killed process loses at most the event being written.

Design
------
Bluesky's ``TiledWriter`` buffers up to 10 000 events per stream and writes
them at the stop document, so a process killed mid-run (``kill -9``, power
cut, out-of-memory killer) leaves a run with its start document and no
events, although its frames are on disk. :class:`DurableWriter` instead

1. writes each event (its table row and its frame reference) to the
   catalogue as it arrives (``TiledWriter(batch_size=1)``): the catalogue's
   SQLite transaction is committed before the RunEngine moves on, so a killed
   process loses at most the one event being written;
2. holds a *lease* per run in progress: a file ``running/<uid>.lock`` beside
   the frames folder, locked with ``flock`` for as long as the run is open.
   The kernel drops the lock when the process dies, however it dies, so a
   lease that can be locked by someone else belongs to a dead writer (no PID
   reuse or clock guessing).

:func:`recover_runs` finishes the runs of dead writers: it adds a stop
document with ``exit_status="fail"``, the reason (the writer died; the run is
incomplete), the number of events actually stored per stream, and a
``recovered`` record, then removes the lease. Every stored event and frame
is kept. It runs automatically when a RunEngine subscribes to the catalogue
(:func:`~autofocus_plans.subscribe_catalog`) and on demand
(``autofocus recover``). Reading a catalogue never writes to it: listing a
run without a stop document shows it as ``running`` (its lease is held),
``incomplete (crashed)`` (its lease is dead) or ``incomplete (no stop)``.

Measured cost: see ``benchmarks/bench_catalog.py`` (``make bench``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "LEASE_DIR",
    "DurableWriter",
    "RecoveredRun",
    "RunLeases",
    "lease_dir_for",
    "recover_runs",
    "run_status",
]

LEASE_DIR = "running"
ALIVE, DEAD = "alive", "dead"

logger = logging.getLogger(__name__)


def lease_dir_for(catalog) -> Path | None:
    """The lease folder of ``catalog``: ``running/`` beside its frames folder, if one is known."""
    root = getattr(catalog, "autofocus_root", None)
    if root is not None:
        return Path(root) / LEASE_DIR
    frames = getattr(catalog, "autofocus_frames_dir", None)
    return Path(frames).parent / LEASE_DIR if frames else None


class _Lease:
    """An open, ``flock``-ed lease file; the lock lives exactly as long as the descriptor."""

    def __init__(self, path: Path, fd: int):
        self.path, self.fd = path, fd

    def release(self) -> None:
        # unlink before unlocking: nobody may find an unlocked lease of a finished run
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self.fd)


class RunLeases:
    """The ``running/`` folder: one ``<uid>.lock`` file per run whose writer holds it.

    Parameters
    ----------
    folder : path
        The lease folder (created on the first :meth:`acquire`).
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def path(self, uid: str) -> Path:
        return self.folder / f"{uid}.lock"

    def acquire(self, uid: str) -> _Lease:
        """Create and lock the lease of run ``uid``; the caller keeps it until the stop document."""
        self.folder.mkdir(parents=True, exist_ok=True)
        info = {
            "uid": uid,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "time": time.time(),
        }
        # Lock a private file, then rename it into place: a lease is never visible unlocked.
        tmp = self.folder / f".{uid}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, json.dumps(info).encode())
            os.fsync(fd)
            os.replace(tmp, self.path(uid))
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return _Lease(self.path(uid), fd)

    def info(self, uid: str) -> dict[str, Any]:
        """What the writer recorded in its lease (uid, pid, host, time); {} if unreadable."""
        try:
            return json.loads(self.path(uid).read_text())
        except (OSError, ValueError):
            return {}

    def uids(self) -> list[str]:
        """Runs with a lease file, alive or dead."""
        if not self.folder.is_dir():
            return []
        return sorted(p.name[: -len(".lock")] for p in self.folder.glob("*.lock"))

    @contextlib.contextmanager
    def claim(self, uid: str):
        """Lock a *dead* lease for the duration of the block; yields None if it is alive or gone.

        Holding the lock keeps two recovering processes from finishing the same run.
        """
        try:
            fd = os.open(self.path(uid), os.O_RDWR)
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
        """``"alive"`` (its writer holds the lock), ``"dead"``, or None (no lease)."""
        if not self.path(uid).exists():
            return None
        with self.claim(uid) as claimed:
            if claimed is None:
                return ALIVE if self.path(uid).exists() else None
            return DEAD


def run_status(stop: dict | None, lease: str | None = None) -> str:
    """One word or two for a run's state, as ``autofocus runs`` prints it.

    Parameters
    ----------
    stop : dict or None
        The run's stop document (None or {} if it has none).
    lease : str, optional
        The state of its lease (:meth:`RunLeases.state`).
    """
    if stop:
        if stop.get("recovered"):
            return "incomplete (recovered)"
        return str(stop.get("exit_status", "?"))
    if lease == ALIVE:
        return "running"
    if lease == DEAD:
        return "incomplete (crashed)"
    return "incomplete (no stop)"


class DurableWriter:
    """RunEngine callback: every document into the catalogue at once, under a run lease.

    Parameters
    ----------
    catalog : CatalogOfBlueskyRuns
        A writable catalogue client.
    lease_dir : path, optional
        Folder of the run leases (:func:`lease_dir_for`); without one the
        writes are still immediate but a dead writer's run is only recovered
        when named explicitly.
    backup_directory : str, optional
        Where ``TiledWriter`` keeps a run's documents as JSON lines should the
        catalogue refuse them.
    """

    def __init__(self, catalog, *, lease_dir: str | Path | None, backup_directory=None):
        from bluesky.callbacks.tiled_writer import TiledWriter

        self._writer = TiledWriter(catalog, backup_directory=backup_directory, batch_size=1)
        self._leases = RunLeases(lease_dir) if lease_dir is not None else None
        self._held: dict[str, _Lease] = {}

    def __call__(self, name: str, doc: dict) -> None:
        if name == "start" and self._leases is not None:
            try:
                self._held[doc["uid"]] = self._leases.acquire(doc["uid"])
            except OSError as err:
                # The run is still written event by event; only its automatic recovery is lost.
                logger.warning(
                    "Cannot create the lease of run %s in %s (%s); if this process dies, "
                    "finish the run with `autofocus recover %s`.",
                    doc["uid"][:8],
                    self._leases.folder,
                    err.strerror or err,
                    doc["uid"][:8],
                )
        try:
            self._writer(name, doc)
        finally:
            if name == "stop" and (lease := self._held.pop(doc.get("run_start", ""), None)):
                lease.release()


@dataclass
class RecoveredRun:
    """What :func:`recover_runs` did to one run."""

    uid: str
    action: str  # "recovered", "already complete", "not in catalogue"
    events: dict[str, int] = field(default_factory=dict)
    stop: dict | None = None

    def __str__(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in self.events.items()) or "no events"
        if self.action == "recovered":
            return f"run {self.uid[:8]}: marked incomplete, kept {counts}"
        return f"run {self.uid[:8]}: {self.action}"


def _stored_events(run) -> tuple[dict[str, int], float | None]:
    """Events stored per stream, and the time of the last one."""
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


def _finish(run, info: dict[str, Any]) -> RecoveredRun:
    from event_model import DocumentNames, schema_validators

    uid = run.metadata["start"]["uid"]
    if run.metadata.get("stop"):
        return RecoveredRun(uid, "already complete", stop=dict(run.metadata["stop"]))
    counts, last = _stored_events(run)
    now = time.time()
    when = dt.datetime.fromtimestamp(now).strftime("%Y-%m-%d %H:%M:%S")
    if info:
        why = (
            f"The process writing this run (pid {info.get('pid')} on {info.get('host')}) "
            "died before the run ended"
        )
    else:
        why = "The run had no stop document (its writer died or never closed it)"
    stored = sum(counts.values())
    stop = {
        "uid": str(uuid.uuid4()),
        "run_start": uid,
        "time": last if last is not None else float(run.metadata["start"]["time"]),
        "exit_status": "fail",
        "reason": (
            f"{why}; recovered on {when} with the {stored} event(s) it had stored, "
            "so the run is incomplete."
        ),
        "num_events": counts,
        "recovered": {
            "time": now,
            "writer_pid": info.get("pid"),
            "writer_host": info.get("host"),
        },
    }
    schema_validators[DocumentNames.stop].validate(stop)
    # the same update TiledWriter makes with a real stop document
    run.update_metadata(metadata={**dict(run.metadata), "stop": stop}, drop_revision=True)
    return RecoveredRun(uid, "recovered", counts, stop)


def recover_runs(catalog, uids: Iterable[str] | None = None) -> list[RecoveredRun]:
    """Mark the runs of writers that died as incomplete, keeping everything they stored.

    Parameters
    ----------
    catalog : CatalogOfBlueskyRuns
        A writable catalogue (from :func:`~autofocus_plans.open_catalog`).
    uids : iterable of str, optional
        Runs to recover (full uids or unique prefixes of 6+ characters). By
        default, every run whose lease is dead. A named run without a lease
        (e.g. written by another tool) is recovered too: naming it says its
        writer is gone.

    Returns
    -------
    list of RecoveredRun
        One entry per run looked at.

    Raises
    ------
    CatalogError
        A named run is still being written (its lease is held).
    KeyError
        A named run is not in the catalogue.
    """
    from .catalog import CatalogError
    from .replay import lookup_run

    folder = lease_dir_for(catalog)
    leases = RunLeases(folder) if folder is not None else None
    done: list[RecoveredRun] = []
    if uids is None:
        for uid in leases.uids() if leases else []:
            with leases.claim(uid) as claimed:
                if claimed is None:
                    continue  # alive, or finished meanwhile
                info = leases.info(uid)
                try:
                    run = catalog[uid]
                except KeyError:
                    # the catalogue refused even the start document: see unsaved-documents/
                    result = RecoveredRun(uid, "not in catalogue")
                else:
                    result = _finish(run, info)
                claimed.unlink(missing_ok=True)
            done.append(result)
            if result.action == "recovered":
                logger.warning("Recovered a run whose writer died: %s.", result)
        return done
    for name in uids:
        run = lookup_run(catalog, name)
        uid = run.metadata["start"]["uid"]
        if leases is None or leases.state(uid) is None:
            done.append(_finish(run, {}))
            continue
        with leases.claim(uid) as claimed:
            if claimed is None:
                info = leases.info(uid)
                raise CatalogError(
                    f"Run {uid[:8]} is still being written by process {info.get('pid')} on "
                    f"{info.get('host')}; let it finish or stop that process first."
                )
            done.append(_finish(run, leases.info(uid)))
            claimed.unlink(missing_ok=True)
    return done
