"""Brenner-gradient autofocus plans on the simulated microscope, under a real RunEngine."""

import numpy as np
import pytest

from autofocus_plans import NoFocusFound, brenner_sweep, fast_focus, reanalyze
from devices import SAMPLE_FAMILIES, ImageSample, SimMicroscope

SEEDS = range(10)


def _trial(family, seed, tmp_path):
    rng = np.random.default_rng(1000 + seed)
    mic = SimMicroscope(
        family, seed=seed, focus_um=float(rng.uniform(-100, 100)), frames_dir=tmp_path, time_scale=0
    )
    dof = mic.depth_of_field_um
    mic.z.set(mic.true_focus() + float(rng.uniform(-5, 5)) * dof).wait()
    return mic, dof


@pytest.mark.parametrize("family", SAMPLE_FAMILIES)
def test_brenner_sweep_within_a_tenth_of_dof(RE, tmp_path, family):
    for seed in SEEDS:
        mic, dof = _trial(family, seed, tmp_path)
        result = RE(
            brenner_sweep(mic.camera, mic.z, mic.led, -5.5 * dof, 5.5 * dof, 23)
        ).plan_result
        assert abs(result.best_z - mic.true_focus()) <= 0.1 * dof, (family, seed, result)
        assert mic.z.position == pytest.approx(result.best_z)
        assert mic.led.pattern.get() == "brightfield"
        assert result.exposures == 23 and 0.9 < result.fit_r2 <= 1


@pytest.mark.parametrize("family", SAMPLE_FAMILIES)
def test_fast_focus_within_tolerance_in_15_exposures(RE, tmp_path, family):
    tolerance = 0.5
    for seed in SEEDS:
        mic, dof = _trial(family, seed, tmp_path)
        result = RE(
            fast_focus(mic.camera, mic.z, mic.led, -5.5 * dof, 5.5 * dof, tolerance_um=tolerance)
        ).plan_result
        assert abs(result.best_z - mic.true_focus()) <= tolerance, (family, seed, result)
        assert result.exposures <= 15


def test_focus_result_stream_and_start_metadata(RE, mic):
    docs = []
    result = RE(
        brenner_sweep(mic.camera, mic.z, mic.led, -15, 15, 16, md={"sample": "cells:1"}),
        lambda n, d: docs.append((n, d)),
    ).plan_result
    start = docs[0][1]
    assert start["plan_name"] == "brenner_sweep" and start["method"] == "brenner_sweep"
    assert start["sample"] == "cells:1" and start["metric"] == "brenner"
    assert start["search_range_um"] == [-15.0, 15.0]
    assert start["optics"]["led_objective_na"] == 0.4
    assert start["optics"]["camera_pixel_size_um"] == pytest.approx(0.325)
    assert start["hints"] == {"dimensions": [(["z"], "primary")]}
    descriptors = {d["name"]: d for n, d in docs if n == "descriptor"}
    assert set(descriptors) == {"primary", "focus_result"}
    (final,) = [
        d for n, d in docs if n == "event" and d["descriptor"] == descriptors["focus_result"]["uid"]
    ]
    assert final["data"]["best_z"] == result.best_z
    assert final["data"]["exposures"] == 16
    assert result.run_uid == start["uid"]


def test_peak_on_edge_extends_the_range(RE, tmp_path):
    mic = SimMicroscope("beads", seed=2, focus_um=13.0, frames_dir=tmp_path, time_scale=0)
    mic.z.set(0.0).wait()
    result = RE(brenner_sweep(mic.camera, mic.z, mic.led, -10, 10, 11)).plan_result
    assert result.extensions >= 1
    assert abs(result.best_z - mic.true_focus()) <= 0.1 * mic.depth_of_field_um
    assert result.exposures > 11


def test_edge_extension_stops_at_soft_limit(RE, tmp_path):
    mic = SimMicroscope(
        "beads",
        seed=2,
        focus_um=14.0,
        z_limits_um=(-20, 12),
        z_start_um=0.0,
        frames_dir=tmp_path,
        time_scale=0,
    )
    mic.z.set(0.0).wait()
    with pytest.raises(NoFocusFound, match="soft limit"):
        RE(brenner_sweep(mic.camera, mic.z, mic.led, -10, 10, 11))
    assert mic.z.position == 0.0


def test_blank_field_refused_with_stage_and_led_restored(RE, tmp_path):
    flat = ImageSample(amplitude=np.ones((64, 64)), label="blank")
    mic = SimMicroscope(flat, frames_dir=tmp_path, time_scale=0, z_start_um=7.5)
    mic.led.set("center")
    for plan in (
        brenner_sweep(mic.camera, mic.z, mic.led, -10, 10, 11),
        fast_focus(mic.camera, mic.z, mic.led, -10, 10),
    ):
        with pytest.raises(NoFocusFound, match=r"No focus peak.*returned to 7\.50 µm"):
            RE(plan)
        assert mic.z.position == 7.5
        assert mic.led.pattern.get() == "center"


def test_led_restored_after_abort_and_run_readable(catalog_RE, catalog, mic):
    import threading

    from bluesky.utils import RunEngineInterrupted

    mic.led.set("darkfield")
    seen = []

    def pause_after_three(name, doc):
        if name == "event":
            seen.append(doc)
            if len(seen) == 3:
                # callbacks run on the RunEngine's loop: ask for the pause from outside it
                threading.Thread(target=catalog_RE.request_pause).start()

    token = catalog_RE.subscribe(pause_after_three)
    with pytest.raises(RunEngineInterrupted):
        catalog_RE(brenner_sweep(mic.camera, mic.z, mic.led, -10, 10, 11))
    catalog_RE.unsubscribe(token)
    assert mic.led.pattern.get() == "brightfield"  # mid-sweep
    catalog_RE.abort("user abort in test")
    assert mic.led.pattern.get() == "darkfield"
    (uid,) = list(catalog)
    run = catalog[uid]
    assert run.stop["exit_status"] == "abort"
    assert run["primary"]["camera_image"].shape[0] >= 3


def test_bad_arguments_are_clear(RE, mic):
    with pytest.raises(ValueError, match="does not report the focus measure 'tenengrad'"):
        RE(brenner_sweep(mic.camera, mic.z, mic.led, metric="tenengrad"))
    with pytest.raises(ValueError, match="does not fit the stage's soft limits"):
        RE(brenner_sweep(mic.camera, mic.z, mic.led, -5000, 10))
    with pytest.raises(ValueError, match=r"10.00 to -10.00 µm is reversed or empty"):
        RE(brenner_sweep(mic.camera, mic.z, mic.led, 10, -10))
    with pytest.raises(ValueError, match="is reversed or empty"):
        RE(fast_focus(mic.camera, mic.z, mic.led, 10, -10))
    with pytest.raises(ValueError, match="Unknown fast_focus method 'newton'"):
        RE(fast_focus(mic.camera, mic.z, mic.led, method="newton"))
    assert mic.camera.last_frame is None


def test_reanalysis_from_catalogue_with_another_measure(catalog_RE, catalog, mic):
    result = catalog_RE(brenner_sweep(mic.camera, mic.z, mic.led, -15, 15, 21)).plan_result
    run = catalog[result.run_uid]
    for metric in ("tenengrad", "normalized_variance", "brenner"):
        fit = reanalyze(run, metric=metric)
        assert abs(fit.center - result.best_z) <= 0.1 * mic.depth_of_field_um, metric


def test_fast_focus_refines_from_below_despite_backlash(RE, tmp_path):
    for method in ("coarse_to_fine", "golden"):
        mic = SimMicroscope(
            "beads", seed=1, focus_um=3.0, backlash_um=4.0, frames_dir=tmp_path, time_scale=0
        )
        result = RE(fast_focus(mic.camera, mic.z, mic.led, -20, 20, method=method)).plan_result
        assert abs(mic.z.actual_position - mic.true_focus()) <= 0.5, method
        assert abs(result.best_z - mic.true_focus()) <= 0.5, method


def test_failed_run_leaves_no_stale_documents_for_the_next(RE, mic):
    with pytest.raises(ValueError, match="Unknown LED pattern 'bogus'"):
        RE(brenner_sweep(mic.camera, mic.z, mic.led, illumination="bogus"))
    docs = []
    RE(brenner_sweep(mic.camera, mic.z, mic.led, -15, 15, 11), lambda n, d: docs.append(n))
    assert docs.count("stream_resource") == 1


def test_renamed_devices_record_optics_by_role(RE, tmp_path):
    from autofocus_plans.results import optics_metadata

    mic = SimMicroscope(name_prefix="scope2_", frames_dir=tmp_path, time_scale=0)
    optics = optics_metadata(mic.camera, mic.led)
    assert optics["led_objective_na"] == 0.4
    assert optics["camera_pixel_size_um"] == pytest.approx(0.325)
    docs = []
    RE(brenner_sweep(mic.camera, mic.z, mic.led, -15, 15, 11), lambda n, d: docs.append((n, d)))
    assert docs[0][1]["optics"]["led_wavelength_um"] == pytest.approx(0.53)
    with pytest.raises(ValueError, match="Unknown focus measure 'brener'"):
        RE(brenner_sweep(mic.camera, mic.z, mic.led, metric="brener"))
