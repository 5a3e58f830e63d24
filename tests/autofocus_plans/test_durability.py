"""Durable catalogue writing: a process killed mid-run, run journals, recovery."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import bluesky.plan_stubs as bps
import numpy as np
import pytest

from autofocus_plans import (
    CatalogError,
    load_frames,
    load_table,
    open_catalog,
    recover_runs,
    subscribe_catalog,
)
from autofocus_plans.durable import RunJournals, journal_dir_for
from models.focus_measures import brenner

AUTOFOCUS = str(Path(sys.executable).with_name("autofocus"))

# The child records each event *before* the catalogue writer sees it (it subscribes
# first), so its log is everything the RunEngine emitted, written or not.
CHILD = """
import sys
import bluesky.plans as bp
from bluesky import RunEngine
from autofocus_plans import open_catalog, subscribe_catalog
from devices import SimMicroscope

location, log_path = sys.argv[1], sys.argv[2]
catalog = open_catalog(location, create=True)
mic = SimMicroscope("bars", seed=3, time_scale=0)
RE = RunEngine({})
log = open(log_path, "w", buffering=1)

def emitted(name, doc):
    if name == "event":
        log.write(f"{doc['seq_num']} {doc['data']['camera_brenner']!r}\\n")
        log.flush()

RE.subscribe(emitted)
subscribe_catalog(RE, catalog, cameras=[mic.camera])
RE(bp.count([mic.camera], 400, delay=0.02), sample="bars:3")
"""


def _emitted(log: Path) -> list[tuple[int, float]]:
    lines = [line.split() for line in log.read_text().splitlines()]
    return [(int(seq), float(value)) for seq, value in lines if value]


def _runs(catalog_dir: Path) -> str:
    return subprocess.run(
        [AUTOFOCUS, "runs", "--catalog", str(catalog_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env=dict(os.environ, COLUMNS="200"),
    ).stdout


def test_kill_9_mid_run_loses_at_most_one_event(tmp_path, RE):
    location, log = tmp_path / "catalog", tmp_path / "emitted.log"
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CHILD), str(location), str(log)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (log.exists() and len(log.read_text().splitlines()) >= 40):
            assert child.poll() is None, child.stderr.read()
            assert time.monotonic() < deadline, "the child emitted no events in 120 s"
            time.sleep(0.1)
        # still writing: listed as running, and its journal is locked
        assert "running" in _runs(location)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL

    emitted = _emitted(log)
    assert 40 <= len(emitted) < 400
    listed = _runs(location)
    assert "incomplete (crashed)" in listed and "autofocus recover" in listed

    # the next writer to subscribe finishes the dead writer's run
    catalog = open_catalog(location)
    subscribe_catalog(RE, catalog)
    (uid,) = list(catalog)
    run = catalog[uid]
    assert run.stop["exit_status"] == "fail"
    assert "died before the run ended" in run.stop["reason"]
    assert "incomplete" in run.stop["reason"]
    assert run.stop["recovered"]["writer_pid"] == child.pid
    assert RunJournals(journal_dir_for(catalog)).uids() == []

    table = load_table(run)
    stored = len(table["time"])
    assert len(emitted) - 1 <= stored <= len(emitted)
    assert run.stop["num_events"] == {"primary": stored}
    # every stored event is the one emitted, in order, with its value
    assert [seq for seq, _ in emitted[:stored]] == list(range(1, stored + 1))
    assert np.array_equal(table["camera_brenner"], [value for _, value in emitted[:stored]])
    # and its frame is readable and is the frame that was measured
    frames = load_frames(run)
    assert stored <= len(frames) <= stored + 1
    assert np.allclose([brenner(f) for f in frames[:stored]], table["camera_brenner"])
    assert "incomplete (recovered)" in _runs(location)


def test_run_in_progress_is_not_recovered(catalog_RE, catalog, mic):
    journals = RunJournals(journal_dir_for(catalog))
    seen = {}

    def plan():
        uid = yield from bps.open_run()
        yield from bps.stage(mic.camera)
        yield from bps.trigger_and_read([mic.camera])
        seen["state"] = journals.state(uid)
        seen["automatic"] = recover_runs(catalog)
        with pytest.raises(CatalogError, match=r"still being written by process \d+"):
            recover_runs(catalog, [uid])
        seen["journaled"] = [name for name, _ in journals.read(uid)[1]]
        yield from bps.trigger_and_read([mic.camera])
        yield from bps.unstage(mic.camera)
        yield from bps.close_run()
        return uid

    uid = catalog_RE(plan()).plan_result
    assert seen == {
        "state": "alive",
        "automatic": [],
        "journaled": ["start", "descriptor", "stream_resource", "stream_datum", "event"],
    }
    assert catalog[uid].stop["exit_status"] == "success"
    assert journals.uids() == []  # removed once the catalogue has the stop document
    (result,) = recover_runs(catalog, [uid[:8]])
    assert result.action == "already complete"


def test_run_the_catalogue_refused_is_written_from_its_journal(tmp_path, RE, mic):
    location = tmp_path / "catalog"
    catalog = open_catalog(location, create=True)
    subscribe_catalog(RE, catalog, cameras=[mic.camera])
    frames = []

    def plan():
        uid = yield from bps.open_run()
        yield from bps.stage(mic.camera)
        yield from bps.trigger_and_read([mic.camera])
        frames.append(mic.camera.last_frame.copy())
        catalog.context.close()  # the catalogue connection goes away mid-run
        yield from bps.trigger_and_read([mic.camera])
        frames.append(mic.camera.last_frame.copy())
        yield from bps.unstage(mic.camera)
        yield from bps.close_run()
        return uid

    uid = RE(plan()).plan_result  # the run goes on: its documents are in the journal
    journals = RunJournals(location / "running")
    assert journals.uids() == [uid] and journals.state(uid) == "dead"

    reopened = open_catalog(location)
    (result,) = recover_runs(reopened)
    assert (result.action, result.events) == ("rewritten", {"primary": 2})
    run = reopened[uid]
    assert run.stop["exit_status"] == "success" and "recovered" not in run.stop
    assert np.array_equal(load_frames(run), np.stack(frames))
    assert journals.uids() == []
