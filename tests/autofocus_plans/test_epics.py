"""Every plan, unchanged, against a real `autofocus ioc` process over Channel Access.

One IOC (128x128 camera, instant moves and exposures) serves the module; the
runs go to an embedded catalogue and the frames are read back from it.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from bluesky import RunEngine
from conftest import autofocus_ioc
from ophyd.utils import LimitError

from autofocus_plans import (
    brenner_sweep,
    cnn_focus,
    collect_training_set,
    dual_led_focus,
    dual_led_model,
    fast_focus,
    find_runs,
    open_catalog,
    subscribe_catalog,
    track_focus,
)

PREFIX = "AFT:"


@pytest.fixture(scope="module")
def ioc(epics_ports, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ioc")
    with autofocus_ioc(folder, epics_ports, PREFIX, "--size", "128", "--time-scale", "0") as proc:
        yield proc


@pytest.fixture(scope="module")
def station(ioc, tmp_path_factory):
    """The EPICS microscope, a RunEngine and a catalogue the camera writes into."""
    from devices.epics import connect

    root = tmp_path_factory.mktemp("station")
    catalog = open_catalog(root / "catalog", create=True)
    mic = connect(PREFIX, frames_dir=root / "frames")
    RE = RunEngine({}, call_returns_result=True)
    subscribe_catalog(RE, catalog, cameras=[mic.camera])
    return {"mic": mic, "RE": RE, "catalog": catalog}


def _truth() -> float:
    from devices.epics import true_focus

    return true_focus(PREFIX)


def _dof(mic) -> float:
    from autofocus_plans.stubs import depth_of_field_from_devices

    return depth_of_field_from_devices(mic.camera, mic.led)


def _frames_of(catalog, uid) -> np.ndarray:
    run = catalog[uid]
    return np.asarray(run["primary"]["camera_image"].read())


def test_devices_follow_the_motor_record_and_areadetector_conventions(station):
    from ophyd import EpicsSignal

    mic = station["mic"]
    mic.z.set(3.0).wait(30)
    assert mic.z.position == pytest.approx(3.0)
    assert mic.z.motor_done_move.get() == 1 and mic.z.motor_is_moving.get() == 0
    with pytest.raises(LimitError, match="outside the soft limits"):
        mic.z.set(5000.0)
    # a put straight to .VAL beyond the limits (no client-side check): the record stays put
    val = EpicsSignal(f"{PREFIX}Z.VAL", name="val")
    val.put(5000.0, force=True)
    time.sleep(0.5)  # the put is not waited for: give the IOC its turn
    assert val.get() == pytest.approx(3.0) and mic.z.user_readback.get() == pytest.approx(3.0)

    with pytest.raises(ValueError, match="Unknown LED pattern"):
        mic.led.set("sideways")
    mic.led.set("off_axis").wait(10)
    assert mic.led.pattern.get() == "off_axis"
    mic.led.set("brightfield").wait(10)

    counter = mic.camera.cam.array_counter.get()
    frame = mic.camera.snap()
    assert frame.shape == (128, 128) and frame.dtype == np.uint16
    assert mic.camera.cam.array_counter.get() == counter + 1
    assert mic.camera.cam.detector_state.get() == 0  # Idle
    with pytest.raises(ValueError, match="outside the camera's range"):
        mic.camera.exposure_time.set(100.0).wait(10)
    mic.z.set(0.0).wait(30)


def test_brenner_sweep_and_fast_focus_over_channel_access(station):
    mic, RE, catalog = station["mic"], station["RE"], station["catalog"]
    truth, dof = _truth(), _dof(mic)
    for plan in (
        brenner_sweep(mic.camera, mic.z, mic.led, -20, 30, 21),
        fast_focus(mic.camera, mic.z, mic.led),
    ):
        mic.z.set(0.0).wait(30)
        result = RE(plan).plan_result
        assert result.found and abs(result.best_z - truth) < dof
        assert mic.z.position == pytest.approx(result.best_z, abs=1e-3)
        assert mic.led.pattern.get() == "brightfield"  # restored
        run = catalog[result.run_uid]
        assert run.stop["exit_status"] == "success"
        frames = _frames_of(catalog, result.run_uid)
        assert frames.shape == (run.stop["num_events"]["primary"], 128, 128)
        assert frames.std() > 0


def test_the_two_led_shift_reads_the_led_geometry_over_channel_access(station):
    # the geometry is the LED's configuration: the same estimator as on the simulator, so
    # dual_led_focus and cnn_focus's cross-check of pair models work over EPICS too
    mic, RE = station["mic"], station["RE"]
    assert mic.led.leds_for(mic.led.pattern.get())
    assert np.linalg.norm(dual_led_model(mic.camera, mic.led).shift_px_per_um) > 0
    mic.z.set(_truth() + 2 * _dof(mic)).wait(30)
    result = RE(dual_led_focus(mic.camera, mic.z, mic.led)).plan_result
    assert not result.fell_back and abs(result.best_z - _truth()) < _dof(mic)
    assert mic.led.pattern.get() == "brightfield"


def test_learned_plans_over_channel_access(station):
    import models

    mic, RE, catalog = station["mic"], station["RE"], station["catalog"]
    mic.z.set(0.0).wait(30)
    uids = RE(
        collect_training_set(
            mic.camera,
            mic.z,
            mic.led,
            None,
            [0, 1],
            shots_per_field=10,
            sweep_points=15,
            training_set="epics",
        )
    ).plan_result
    assert sorted(find_runs(catalog, purpose="training")) == sorted(uids)
    assert _frames_of(catalog, uids[0]).shape == (10, 128, 128)
    assert mic.led.pattern.get() == "brightfield"

    examples = models.examples_from_runs([catalog[uid] for uid in uids], progress=False)
    model = models.train(examples, "DefocusCNN", epochs=2, crops_per_frame=1, progress=False)

    mic.z.set(_truth() - 8.0).wait(30)
    result = RE(cnn_focus(mic.camera, mic.z, mic.led, model)).plan_result
    # a two-epoch model may well be out of its depth: then it falls back to fast_focus
    assert result.found and abs(result.best_z - _truth()) < 3 * _dof(mic)
    assert _frames_of(catalog, result.run_uid).shape[1:] == (128, 128)
    assert mic.led.pattern.get() == "brightfield"

    trajectory = RE(track_focus(mic.camera, mic.z, mic.led, model, num=3, interval_s=0.0))
    assert len(trajectory.plan_result["z_um"]) == 3
    (uid,) = trajectory.run_start_uids
    assert catalog[uid].start["plan_name"] == "track_focus"
    assert _frames_of(catalog, uid).shape == (3, 128, 128)
    assert mic.led.pattern.get() == "brightfield"
