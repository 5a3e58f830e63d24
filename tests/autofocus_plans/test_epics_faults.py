"""Faults over Channel Access: the IOC dies mid-sweep, the motor stalls, a range beyond the limits.

Each test has its own `autofocus ioc` process (its own prefix), so killing one
leaves nothing stale for the next.
"""

from __future__ import annotations

import contextlib
import signal

import numpy as np
import pytest
from bluesky import RunEngine
from conftest import autofocus_ioc

from autofocus_plans import brenner_sweep, fast_focus, open_catalog, subscribe_catalog


@contextlib.contextmanager
def _station(epics_ports, tmp_path, prefix, *ioc_args):
    from devices.epics import connect

    with autofocus_ioc(tmp_path, epics_ports, prefix, "--size", "64", *ioc_args) as proc:
        catalog = open_catalog(tmp_path / "catalog", create=True)
        mic = connect(prefix, frames_dir=tmp_path / "frames")
        RE = RunEngine({}, call_returns_result=True)
        subscribe_catalog(RE, catalog, cameras=[mic.camera])
        yield {"proc": proc, "mic": mic, "RE": RE, "catalog": catalog}


def _last_run(catalog):
    return catalog.values().last()


def test_ioc_killed_mid_sweep_fails_naming_the_pv_and_keeps_the_frames(epics_ports, tmp_path):
    prefix = "AFK:"
    with _station(epics_ports, tmp_path, prefix, "--time-scale", "0") as st:
        RE, proc = st["RE"], st["proc"]

        def kill_after_five_frames(name, doc):
            if name == "event" and doc["seq_num"] == 5:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)

        RE.subscribe(kill_after_five_frames)
        with pytest.raises(Exception) as caught:
            RE(brenner_sweep(st["mic"].camera, st["mic"].z, st["mic"].led, -20, 20, 21))
        message = str(caught.value)
        assert prefix in message and "did not answer" in message
        assert message.count(". ") == 0  # one sentence
        run = _last_run(st["catalog"])
        assert run.start["plan_name"] == "brenner_sweep"
        assert run.stop["exit_status"] == "fail"
        frames = np.asarray(run["primary"]["camera_image"].read())
        assert frames.shape[0] == run.stop["num_events"]["primary"] >= 5
        assert frames.std() > 0


def test_stalled_move_is_a_clear_error_and_no_focus_is_claimed(epics_ports, tmp_path):
    from ophyd import EpicsSignal

    prefix = "AFS:"
    with _station(epics_ports, tmp_path, prefix, "--time-scale", "0") as st:
        mic, RE = st["mic"], st["RE"]
        stall = EpicsSignal(f"{prefix}Z:SimStall", name="stall")
        stall.put(1, wait=True)
        with pytest.raises(Exception) as caught:
            RE(fast_focus(mic.camera, mic.z, mic.led))
        # bluesky wraps a failed move in FailedStatus; the stage's sentence is its cause
        causes = [caught.value, caught.value.__cause__, caught.value.__context__]
        assert any(
            "did not complete" in str(c) and "no focus is claimed" in str(c) for c in causes
        ), causes
        run = _last_run(st["catalog"])
        assert run.stop["exit_status"] == "fail"
        assert "focus_result" not in run or not run["focus_result"].read()["found"].values.any()
        stall.put(0, wait=True)
        assert mic.led.pattern.get() == "brightfield"


def test_range_beyond_the_motor_limits_is_refused_and_moves_run_in_real_time(epics_ports, tmp_path):
    prefix = "AFL:"
    with _station(epics_ports, tmp_path, prefix, "--z-limits", "-30", "30") as st:
        mic, RE = st["mic"], st["RE"]
        mic.z.set(20.0).wait(30)
        with pytest.raises(ValueError, match="does not fit the stage's soft limits"):
            RE(brenner_sweep(mic.camera, mic.z, mic.led, -20, 20, 11))
        assert mic.z.position == pytest.approx(20.0)
        # the RunEngine stops every motor it touched when a plan ends: a STOP while idle
        # must not cut the next move short
        mic.z.stop()
        mic.z.set(-10.0).wait(30)
        assert mic.z.position == pytest.approx(-10.0)
