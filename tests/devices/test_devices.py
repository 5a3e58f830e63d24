import time

import numpy as np
import pytest
from ophyd.utils import LimitError

from devices import PATTERNS, CameraSensor, SimMicroscope, ZFlyer, can_skip_settle


def test_stage_refuses_moves_outside_soft_limits(tmp_path):
    mic = SimMicroscope(frames_dir=tmp_path, time_scale=0, z_limits_um=(-50, 50))
    mic.z.set(10).wait()
    with pytest.raises(LimitError, match=r"outside the soft limits \[-50.0, 50.0\] µm"):
        mic.z.set(60)
    assert mic.z.position == 10
    assert mic.z.setpoint.get() == 10


def test_stage_moves_take_realistic_time(tmp_path):
    mic = SimMicroscope(frames_dir=tmp_path, velocity_um_per_s=100, settle_time_s=0.01)
    assert mic.z.move_time_s(50) == pytest.approx(0.51)
    mic.z.time_scale = 0
    assert mic.z.move_time_s(50) == 0


def test_a_move_to_a_point_only_passed_through_skips_the_settle(tmp_path):
    mic = SimMicroscope(frames_dir=tmp_path, velocity_um_per_s=1e6, settle_time_s=0.4)
    assert can_skip_settle(mic.z)
    started = time.monotonic()
    mic.z.set(-10, settle=False).wait(timeout=5)
    passed = time.monotonic() - started
    mic.z.set(0).wait(timeout=5)
    settled = time.monotonic() - started - passed
    assert passed < 0.2 < 0.4 <= settled
    assert mic.z.position == 0


def test_a_moving_stage_knows_its_planned_path_and_a_stop_cuts_it_short(tmp_path):
    mic = SimMicroscope(frames_dir=tmp_path, velocity_um_per_s=100, settle_time_s=0)
    planned = mic.z.path_of_move(10)
    moving = mic.z.set(10)
    t0 = mic.z.last_move_start
    # where the stage will be, while it is still on its way (what a fly sweep is rendered from)
    assert mic.z.actual_position_at(t0 + 0.05) == pytest.approx(5) == pytest.approx(planned(0.05))
    time.sleep(0.03)
    mic.z.stop(success=True)
    moving.wait(timeout=5)
    stopped = mic.z.position
    assert 2 < stopped < 8
    assert mic.z.actual_position_at(t0 + 0.09) == pytest.approx(stopped)  # the rest never came


def test_a_judged_fly_sweep_stops_where_the_judge_says_and_shows_no_frame_early(tmp_path):
    mic = SimMicroscope(
        "bars", seed=2, sensor=CameraSensor(shape=(64, 64)), frames_dir=tmp_path, time_scale=1
    )
    camera, stage = mic.camera, mic.z
    camera.exposure_time.put(0.004)
    seen: list[tuple[float, dict]] = []

    def judge(frames):
        seen.append((time.time(), frames[-1]))
        return frames[-1]["z"] > 0

    flyer = ZFlyer(camera, stage)
    camera.stage()
    try:
        stage.set(-20).wait(timeout=60)
        flyer.prepare(20, 400.0, judge=judge)
        flyer.kickoff().wait(timeout=60)
        flyer.complete().wait(timeout=60)
        events = [event["data"] for event in flyer.collect()]
    finally:
        camera.unstage()
    assert flyer.stopped_early and flyer.live_frames
    crossed = next(f for f in flyer.live_frames if f["z"] > 0)
    # stopped soon after the first frame past 0 was read out and its position known
    assert crossed["z"] < stage.position < 15
    for when, frame in seen:  # each handed over once read out, never before
        assert when >= frame["exposure_end"] + camera.readout_time_s
    recorded = {data["camera_exposure_start"]: data for data in events}
    for frame in flyer.live_frames:  # what the judge saw is what was recorded, at the true Z
        data = recorded[frame["exposure_start"]]
        assert data["camera_brenner"] == frame["brenner"]
        assert data[flyer.z_key] == pytest.approx(frame["z"], abs=1e-6)
        mid = 0.5 * (frame["exposure_start"] + frame["exposure_end"])
        assert abs(frame["z"] - stage.actual_position_at(mid)) < 0.01
    # frames exposed after the stop are kept too, rendered along the path actually taken
    assert len(events) >= len(flyer.live_frames)
    assert max(data[flyer.z_key] for data in events) <= stage.position + 1e-6


def test_streaming_overlaps_the_readout_with_the_next_exposure(tmp_path):
    mic = SimMicroscope(frames_dir=tmp_path, time_scale=1)
    camera = mic.camera
    readout = camera.readout_time_s
    assert camera.frame_period_s(exposure_s=readout / 2) == readout
    assert camera.frame_period_s(exposure_s=3 * readout) == 3 * readout
    camera.overlap_readout = False
    assert camera.frame_period_s(exposure_s=readout / 2) == 1.5 * readout
    camera.overlap_readout = True
    camera.exposure_time.put(readout / 2)
    camera.stage()
    try:
        camera.start_streaming()
        time.sleep(0.1)
        camera.stop_streaming().wait(timeout=60)
    finally:
        camera.unstage()
    starts = np.array([frame["exposure_start"] for frame in camera.streamed])
    assert len(starts) >= 5
    assert np.allclose(np.diff(starts), readout, rtol=0, atol=1e-6)  # per readout, not per sum


def test_the_gain_stops_at_the_cameras_maximum(tmp_path):
    camera = SimMicroscope(frames_dir=tmp_path, time_scale=0).camera
    camera.gain.put(camera.max_gain.get())
    with pytest.raises(ValueError, match=r"above the camera's maximum of 16; lower the gain"):
        camera.gain.put(20.0)
    assert camera.gain.get() == 16.0


def test_backlash_lags_after_downward_moves(tmp_path):
    mic = SimMicroscope(frames_dir=tmp_path, time_scale=0, backlash_um=2.0)
    mic.z.set(-10).wait()
    assert mic.z.actual_position == pytest.approx(-8.0)
    mic.z.set(-5).wait()
    assert mic.z.actual_position == pytest.approx(-5.0)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_named_patterns(tmp_path, pattern):
    mic = SimMicroscope(frames_dir=tmp_path, time_scale=0)
    mic.led.set(pattern)
    count = mic.led.lit_count.get()
    expected = {"off": 0, "center": 1, "off_axis": 1}
    if pattern in expected:
        assert count == expected[pattern]
    else:
        assert count > 8
    if pattern == "off_axis":
        assert 0.2 < mic.led.illumination_na.get() < 0.4


def test_explicit_led_and_angle(tmp_path):
    mic = SimMicroscope(frames_dir=tmp_path, time_scale=0)
    mic.led.set("led:2,-1")
    assert mic.led.lit_leds == [(2, -1)]
    mic.led.set("na:0.3,90")
    ((ix, iy),) = mic.led.lit_leds
    assert ix == 0 and iy > 0
    config = mic.led.read_configuration()
    assert config["led_pattern"]["value"] == "na:0.3,90"
    assert config["led_wavelength_um"]["value"] == pytest.approx(0.53)


def test_bad_configuration_is_one_clear_sentence(tmp_path):
    mic = SimMicroscope(frames_dir=tmp_path, time_scale=0)
    with pytest.raises(ValueError, match="Unknown LED pattern 'sideways'; use one of"):
        mic.led.set("sideways")
    assert mic.led.pattern.get() == "brightfield"
    with pytest.raises(ValueError, match="exposure time must be a positive number of seconds"):
        mic.camera.exposure_time.put(-0.1)
    assert mic.camera.exposure_time.get() == 0.01
    with pytest.raises(ValueError, match="outside the 15x15 array"):
        mic.led.set("led:9,0")
    with pytest.raises(ValueError, match="binning must be 1, 2 or 4"):
        mic.camera.binning.put(3)


def test_roi_and_binning_shape_frames(tmp_path):
    mic = SimMicroscope(frames_dir=tmp_path, time_scale=0)
    mic.camera.binning.put(2)
    assert mic.camera.pixel_size_um.get() == pytest.approx(0.65)
    mic.camera.roi_x.put(64)
    mic.camera.roi_width.put(128)
    frame = mic.camera.snap()
    assert frame.shape == (128, 64) and frame.dtype == np.uint16
    mic.camera.roi_x.put(200)
    with pytest.raises(ValueError, match="does not fit the 256x256 sensor"):
        mic.camera.snap()


def test_roi_offset_not_a_multiple_of_binning(tmp_path):
    mic = SimMicroscope(frames_dir=tmp_path, time_scale=0)
    mic.camera.binning.put(2)
    mic.camera.roi_y.put(1)
    mic.camera.roi_height.put(31)
    assert mic.camera.snap().shape == (15, 128)


def test_fov_follows_a_new_sample(tmp_path):
    mic = SimMicroscope("cells", frames_dir=tmp_path, time_scale=0)
    mic.set_sample("beads", seed=5)
    mic.fov.set(1).wait()
    assert mic.model.sample.label.startswith("beads:")
