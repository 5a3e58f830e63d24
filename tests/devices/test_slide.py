"""The XY stage, the slide canvas, the focal surface and a stage that moves in time."""

from __future__ import annotations

import time

import numpy as np
import pytest
from ophyd.utils import LimitError

from devices import CameraSensor, FocalSurface, SimMicroscope, SimXYStage, SlideSample
from models.focus_measures import brenner


def test_xy_stage_honours_limits_and_stays_put():
    xy = SimXYStage(limits_um=(-100.0, 100.0), time_scale=0)
    xy.x.set(50).wait(timeout=5)
    with pytest.raises(LimitError, match="outside the soft limits"):
        xy.y.set(150)
    with pytest.raises(LimitError):
        xy.x.set(-101)
    assert xy.x.position == 50 and xy.y.position == 0


def test_focal_surface_is_what_the_camera_sees_over_the_slide(tmp_path):
    surface = FocalSurface(tilt_x=0.01, curvature_per_um=2e-6, bump_um=1.0, seed=3)
    mic = SimMicroscope(
        SlideSample("tissue", 2),
        focus_um=4.0,
        surface=surface,
        sensor=CameraSensor(shape=(64, 64)),
        frames_dir=tmp_path,
        time_scale=0,
    )
    mic.xy.x.set(300).wait(timeout=5)
    mic.xy.y.set(-200).wait(timeout=5)
    expected = 4.0 + surface(300, -200)
    assert mic.true_focus() == pytest.approx(expected)
    assert mic.true_focus_at(300, -200) == pytest.approx(expected)
    # the image is sharpest at the surface's focus, not at the focus of the slide's origin
    sharpness = {}
    for z in (expected - 8, expected, expected + 8, 4.0 + 8):
        mic.z.set(z).wait(timeout=5)
        sharpness[z] = brenner(mic.model.intensity(z, mic.led.source_points()))
    assert max(sharpness, key=sharpness.get) == expected


def test_slide_fields_differ_and_overlap_where_they_should():
    slide = SlideSample("cells", 5, patch_um=40.0)
    a = slide.window((0.0, 0.0), (64, 64), 0.5)
    b = slide.window((16.0, 0.0), (64, 64), 0.5)  # 32 pixels to the right
    assert np.array_equal(a[:, 32:], b[:, :32])
    assert not np.array_equal(a, b)
    far = slide.window((500.0, 500.0), (64, 64), 0.5)
    assert not np.allclose(far, a)


def test_a_moving_stage_reports_timestamped_readbacks_along_its_path():
    mic = SimMicroscope("beads", time_scale=1, z_start_um=0.0, settle_time_s=0.0)
    mic.z.velocity.put(200.0)
    seen: list[tuple[float, float]] = []
    mic.z.readback.subscribe(
        lambda value, timestamp, **_: seen.append((timestamp, value)), run=False
    )
    mic.z.set(20.0).wait(timeout=5)
    assert len(seen) >= 4  # updates while moving, not only at the end
    for t, z in seen:
        assert z == pytest.approx(mic.z.motor_position_at(t), abs=1e-4)
    middle = [z for _, z in seen if 1.0 < z < 19.0]
    assert middle, "no readback between start and end"
    # readings at the path's corners (set off, arrived), so that interpolating between
    # readings gives the path exactly, however late the readback thread woke
    times = np.array([t for t, _ in seen])
    values = np.array([z for _, z in seen])
    dense = np.linspace(times[0] - 0.05, times[-1] + 0.05, 500)
    truth = np.array([mic.z.motor_position_at(t) for t in dense])
    assert np.abs(np.interp(dense, times, values) - truth).max() < 1e-4


def test_a_frame_exposed_while_moving_is_blurred_over_the_travel(tmp_path):
    mic = SimMicroscope(
        "bars", seed=1, sensor=CameraSensor(shape=(64, 64)), frames_dir=tmp_path, time_scale=0
    )
    dof = mic.depth_of_field_um
    sources = mic.led.source_points()
    still = mic.model.intensity(0.0, sources)
    # a path through focus: 2 DOF of travel during the exposure
    t0 = time.time() + 100  # a path recorded ahead of now, so nothing else lies on it
    mic.z._record(t0, -dof)
    mic.z._record(t0 + 1, dof)
    moving = mic.model._clean_frame(1, (t0, t0 + 1))
    assert brenner(moving) < 0.9 * brenner(still)
    planes = [mic.model.intensity(z, sources) for z in np.linspace(-dof, dof, 41)]
    assert np.allclose(moving, np.mean(planes, axis=0), rtol=0.05, atol=0.02 * float(still.mean()))
