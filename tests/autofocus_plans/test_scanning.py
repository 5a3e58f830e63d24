"""Fly sweeps, focus maps and tile scans on the simulated microscope, into a real catalogue."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from bluesky.utils import RunEngineInterrupted

from autofocus_plans import (
    NoFocusFound,
    fly_exposure,
    fly_speed,
    fly_sweep,
    focus_map,
    load_table,
    peak,
    subscribe_catalog,
    tile_scan,
)
from autofocus_plans.fly import _sweep_geometry
from devices import CameraSensor, FocalSurface, ImageSample, SimMicroscope, SlideSample


def _fly_scope(tmp_path, sample="bars", **kwargs):
    # a real timeline (stage speed, exposures) but a small frame: the simulation stays cheap
    return SimMicroscope(
        sample,
        seed=2,
        sensor=CameraSensor(shape=(64, 64)),
        frames_dir=tmp_path / "frames",
        time_scale=1,
        **kwargs,
    )


def test_fly_sweep_finds_focus_and_each_frame_gets_the_stage_position_mid_exposure(
    RE, catalog, tmp_path
):
    mic = _fly_scope(tmp_path, focus_um=6.0, z_start_um=0.0)
    subscribe_catalog(RE, catalog, cameras=[mic.camera])
    dof = mic.depth_of_field_um
    mic.led.set("center")
    velocity = mic.z.velocity.get()
    result = RE(fly_sweep(mic.camera, mic.z, mic.led, -5 * dof, 5 * dof)).plan_result
    assert result.found and abs(result.best_z - mic.true_focus()) <= 0.15 * dof
    assert mic.z.position == pytest.approx(result.best_z)
    assert mic.led.pattern.get() == "center" and mic.z.velocity.get() == velocity
    assert mic.camera.exposure_time.get() == 0.01 and mic.camera.gain.get() == 1.0

    run = catalog[result.run_uid]
    assert run.start["fly_blur_dof"] <= 0.5 + 1e-9  # the defaults
    assert run.start["fly_spacing_dof"] <= 0.75 + 1e-9
    # the exposure was shortened (the gain raised as much) so that the stage sweeps at its
    # top speed, rounded down to the peak test's pattern grid
    assert run.start["exposure_s"] < run.start["fly_full_exposure_s"] == 0.01
    assert run.start["fly_gain"] * run.start["exposure_s"] == pytest.approx(0.01)
    assert 0.98 * velocity <= run.start["fly_speed_um_per_s"] <= velocity
    table = load_table(run)
    mid = table["camera_exposure_start"] + table["camera_exposure_s"] / 2
    truth = np.array([mic.z.motor_position_at(t) for t in mid])
    assert len(truth) == result.exposures >= 10
    assert np.abs(table["z"] - truth).max() < 0.01 * dof  # from the readback, not a setpoint
    assert np.all(np.diff(table["z"]) >= 0)  # one upward sweep (still at the end, settling)
    assert run["primary"]["camera_image"].shape[0] == len(truth)
    # every frame says how far the stage moved during it; the judged ones moved at full speed
    full = run.start["fly_speed_um_per_s"] * run.start["exposure_s"]
    assert np.all(table["z_travel"] <= full * 1.001)
    assert (
        np.count_nonzero(np.abs(table["z_travel"] - full) <= 0.02 * full)
        >= (result.extra["judged_frames"])
    )
    assert result.extra["judged_frames"] == run.start["fly_judged_frames"]


@pytest.mark.parametrize("phase", [0.0, 0.13, 0.5, 0.77, 0.999])
def test_a_sweep_is_judged_on_the_same_evenly_spaced_frames_whatever_the_cameras_phase(phase):
    speed, exposure, period, run_up = 206.0, 0.010, 0.015, 5.0
    low, high = -22.7, 22.7
    geometry = _sweep_geometry(
        low,
        high,
        speed=speed,
        exposure_s=exposure,
        period_s=period,
        run_up_um=run_up,
        limits=(-1000.0, 1000.0),
    )
    # the camera streams from before the stage starts (t = 0) until after it stops
    duration = (geometry.stop - geometry.start) / speed
    starts = np.arange(-2, duration / period + 3) * period - phase * period

    def z(t):
        return geometry.start + speed * np.clip(t, 0.0, duration)

    mid, travel = z(starts + exposure / 2), z(starts + exposure) - z(starts)
    judged = geometry.judged(mid, travel, speed * exposure)
    spacing = speed * period
    assert len(judged) == geometry.frames
    assert np.allclose(np.sort(mid[judged]) - mid[judged].min(), geometry.nominal_z())
    assert np.allclose(travel[judged], speed * exposure)  # none partly still
    # the range is covered as a step sweep covers it, the backlash run-up is not judged
    assert mid[judged].min() <= low + spacing / 2 and mid[judged].max() >= high - spacing / 2
    assert (mid[judged] - speed * exposure / 2).min() >= geometry.start + run_up - 1e-9


def test_a_second_fly_sweep_over_the_same_range_computes_no_new_threshold(RE, tmp_path):
    mic = _fly_scope(tmp_path, focus_um=6.0, z_start_um=0.0)
    dof = mic.depth_of_field_um
    first = RE(fly_sweep(mic.camera, mic.z, mic.led, -5 * dof, 5 * dof)).plan_result
    computed = peak._threshold.cache_info().misses
    mic.z.set(mic.true_focus() - 1.7 * dof).wait(timeout=60)  # elsewhere, another phase
    second = RE(fly_sweep(mic.camera, mic.z, mic.led, -5 * dof, 5 * dof)).plan_result
    assert first.found and second.found
    assert abs(second.best_z - mic.true_focus()) <= 0.15 * dof
    assert peak._threshold.cache_info().misses == computed


def test_an_early_stopped_fly_sweep_finds_the_same_focus_with_fewer_frames(RE, catalog, tmp_path):
    mic = _fly_scope(tmp_path, focus_um=6.0, z_start_um=0.0)
    subscribe_catalog(RE, catalog, cameras=[mic.camera])
    dof = mic.depth_of_field_um
    results = {}
    for early_stop in (False, True):
        mic.z.set(mic.true_focus() + 2.5 * dof).wait(timeout=60)  # focus in the lower half
        plan = fly_sweep(mic.camera, mic.z, mic.led, -5 * dof, 5 * dof, early_stop=early_stop)
        results[early_stop] = RE(plan).plan_result
    full, early = results[False], results[True]
    assert early.extra["stopped_early"] and not full.extra["stopped_early"]
    assert early.found and abs(early.best_z - mic.true_focus()) <= 0.15 * dof
    assert mic.z.position == pytest.approx(early.best_z)
    assert early.exposures < full.exposures
    assert early.extra["judged_frames"] < full.extra["judged_frames"]
    assert early.peak_look >= 2  # a look taken during the sweep, at that look's level
    run = catalog[early.run_uid]
    assert run.start["fly_early_stop"] and run.start["plan_args"]["early_stop"]
    table = load_table(run)
    assert len(table["z"]) == early.exposures
    assert np.all(np.diff(table["z"]) >= 0)  # one upward sweep
    # the sweep ended well short of its end (focus + 2.5 DOF + the run-out above the range)
    assert table["z"].max() < mic.true_focus() + 2.5 * dof + 5 * dof - 2 * dof


@pytest.mark.parametrize("early_stop", [False, True])
def test_fly_sweep_refuses_a_blank_field_and_returns_the_stage(RE, catalog, tmp_path, early_stop):
    blank = ImageSample(amplitude=np.ones((64, 64)), label="blank")
    mic = _fly_scope(tmp_path, sample=blank, z_start_um=3.0)
    subscribe_catalog(RE, catalog, cameras=[mic.camera])
    with pytest.raises(NoFocusFound, match=r"No focus peak.*returned to 3\.00 µm") as refused:
        RE(fly_sweep(mic.camera, mic.z, mic.led, -15, 15, max_extensions=0, early_stop=early_stop))
    assert mic.z.position == 3.0
    assert not refused.value.result.extra["stopped_early"]  # no look during the sweep found one
    assert mic.camera.exposure_time.get() == 0.01 and mic.camera.gain.get() == 1.0
    # nothing stood out at the short exposure: swept again at the full one before refusing
    result = refused.value.result
    assert result.extra["full_exposure_retry"] and result.exposure_s == 0.01
    table = load_table(catalog[-1])
    exposures = np.unique(np.round(table["camera_exposure_s"], 4))
    assert len(exposures) == 2 and exposures[-1] == 0.01


def test_fly_exposure_is_shortened_only_where_that_makes_the_sweep_faster(tmp_path):
    camera = _fly_scope(tmp_path).camera
    dof = 4.0
    # at 10 ms the blur allows 200 µm/s: 4 ms (gain x2.5) reaches a 500 µm/s stage's top
    exposure, gain = fly_exposure(camera, dof, 0.01, 1.0, max_velocity_um_per_s=500.0)
    assert exposure == pytest.approx(0.5 * dof / 500.0, rel=0.02) and gain * exposure == 0.01
    assert fly_speed(dof, exposure, camera.frame_period_s(exposure_s=exposure)) >= 495.0
    # a slow stage limits the sweep already; a camera at its maximum gain cannot brighten
    assert fly_exposure(camera, dof, 0.01, 1.0, max_velocity_um_per_s=150.0) == (0.01, 1.0)
    assert fly_exposure(camera, dof, 0.01, 16.0, max_velocity_um_per_s=500.0) == (0.01, 16.0)
    # the gain stops at the camera's maximum, and so does the shortening
    exposure, gain = fly_exposure(camera, dof, 0.01, 8.0, max_velocity_um_per_s=500.0)
    assert gain == pytest.approx(16.0) and exposure == pytest.approx(0.005)


def test_fly_sweep_needs_a_streaming_camera_and_a_sane_range(RE, tmp_path):
    mic = _fly_scope(tmp_path)

    class StillCamera:
        name = "still"

        def describe(self):
            return {"still_brenner": {}}

    with pytest.raises(TypeError, match=r"cannot stream frames.*brenner_sweep"):
        RE(fly_sweep(StillCamera(), mic.z, mic.led))
    with pytest.raises(ValueError, match="reversed"):
        RE(fly_sweep(mic.camera, mic.z, mic.led, 10, -10))


def test_a_pause_during_a_fly_sweep_sweeps_again_on_resume(RE, catalog, tmp_path):
    mic = _fly_scope(tmp_path, focus_um=4.0, z_start_um=0.0)
    subscribe_catalog(RE, catalog, cameras=[mic.camera])

    path: list[float] = []

    def pause_mid_sweep(value, **kwargs):
        # what a double Ctrl-C does, once the upward sweep has passed the middle of its range
        if path and min(path) < -15 and path[-1] < 0 <= value:
            threading.Thread(target=RE.request_pause, kwargs={"defer": False}).start()
        path.append(value)

    mic.z.readback.subscribe(pause_mid_sweep, run=False)
    with pytest.raises(RunEngineInterrupted):
        RE(fly_sweep(mic.camera, mic.z, mic.led, -20, 20))
    mic.z.readback.clear_sub(pause_mid_sweep)
    result = RE.resume().plan_result
    assert result.restarts == 1
    assert result.found and abs(result.best_z - mic.true_focus()) <= 0.15 * mic.depth_of_field_um
    table = load_table(catalog[result.run_uid])
    assert np.all(np.diff(table["z"]) >= 0)  # only the complete sweep was recorded
    assert len(table["z"]) == result.exposures


@pytest.fixture
def slide_scope(tmp_path):
    surface = FocalSurface(tilt_x=0.006, tilt_y=-0.004, curvature_per_um=5e-6, seed=4)
    return SimMicroscope(
        SlideSample("tissue", 3),
        focus_um=2.0,
        surface=surface,
        sensor=CameraSensor(shape=(64, 64)),
        frames_dir=tmp_path / "frames",
        z_start_um=0.0,
        time_scale=0,
    )


def test_focus_map_round_trips_through_the_catalogue_and_guides_a_tile_scan(
    RE, catalog, slide_scope
):
    mic = slide_scope
    subscribe_catalog(RE, catalog, cameras=[mic.camera])
    dof = mic.depth_of_field_um
    mapped = RE(focus_map(mic.camera, mic.z, mic.led, mic.xy, grid=(3, 3))).plan_result
    assert len(mapped.points) == 9 and all(p["found"] for p in mapped.points)
    assert mic.xy.actual_position == (0.0, 0.0) and mic.z.position == 0.0  # put back

    run = catalog[mapped.run_uid]
    assert run.start["plan_name"] == "focus_map"
    assert set(run.start["point_run_uids"]) == {
        catalog[u].start["uid"] for u in mapped.point_run_uids
    }
    table = load_table(run)
    assert np.allclose(table["focus_z"], [p["z"] for p in mapped.points])
    stored = run.start["focus_map"]
    probe = np.array([[-350.0, 120.0], [10.0, -300.0], [390.0, 390.0]])
    assert np.allclose(
        mapped.fit.predict(probe[:, 0], probe[:, 1]),
        __import__("models.focal_surface")
        .focal_surface.FocalSurfaceFit.from_dict(stored)
        .predict(probe[:, 0], probe[:, 1]),
    )

    mic.led.set("center")
    scan = RE(tile_scan(mic.camera, mic.z, mic.led, mic.xy, stored, grid=(4, 4))).plan_result
    errors = [abs(t["z"] - mic.true_focus_at(t["x"], t["y"])) / dof for t in scan.tiles]
    assert len(errors) == 16 and max(errors) < 0.5
    assert mic.led.pattern.get() == "center" and mic.xy.actual_position == (0.0, 0.0)
    tiles = catalog[scan.run_uid]
    assert tiles["primary"]["camera_image"].shape[0] == 16
    assert tiles.start["focus_map"] == stored


def test_a_map_with_too_few_points_refuses_to_fit_and_keeps_its_points(RE, catalog, slide_scope):
    mic = slide_scope
    subscribe_catalog(RE, catalog, cameras=[mic.camera])
    with pytest.raises(ValueError, match=r"at least 3 points.*recorded in run"):
        RE(focus_map(mic.camera, mic.z, mic.led, mic.xy, points=[[0, 0], [200, 0]]))
    maps = [catalog[u] for u in list(catalog)[-1:]]
    assert maps[0].start["plan_name"] == "focus_map" and maps[0].start["focus_map"] is None
    assert len(load_table(maps[0])["focus_z"]) == 2
    with pytest.raises(ValueError, match="needs a focus_map"):
        RE(tile_scan(mic.camera, mic.z, mic.led, mic.xy))
    with pytest.raises(ValueError, match="Unknown focus method"):
        RE(focus_map(mic.camera, mic.z, mic.led, mic.xy, method="guess"))


def test_map_plot_from_the_catalogue(RE, catalog, slide_scope, tmp_path):
    from autofocus_plans.cli import main

    mic = slide_scope
    subscribe_catalog(RE, catalog, cameras=[mic.camera])
    mapped = RE(focus_map(mic.camera, mic.z, mic.led, mic.xy, grid=(2, 2))).plan_result
    png = tmp_path / "map.png"
    code = main(
        ["replay", mapped.run_uid[:8], "--catalog", str(tmp_path / "catalog"), "--plot", str(png)]
    )
    assert code == 0 and png.stat().st_size > 10_000
    time.sleep(0)  # the plot is written synchronously
