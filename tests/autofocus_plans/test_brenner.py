"""Brenner-gradient autofocus plans on the simulated microscope, under a real RunEngine."""

import numpy as np
import pytest

from autofocus_plans import NoFocusFound, brenner_sweep, fast_focus, reanalyze
from devices import SAMPLE_FAMILIES, ImageSample, ProceduralSample, SimMicroscope

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


# -- search trust: samples and optics nobody tuned for, exposure, pauses ---------------------
def _real_cell_image():
    """A real quantitative-phase image of cells (shipped in scikit-image's wheel).

    Used as a phase-dominant sample: amplitude 0.6-1.0, phase up to 1.2 rad.
    """
    from skimage.data import cell

    norm = cell().astype(float)
    norm = (norm - norm.min()) / np.ptp(norm)
    return ImageSample(1 - 0.4 * norm, 1.2 * norm, pixel_size_um=0.5, label="skimage-cell")


def _at_10x(sample, tmp_path, focus_um, start_dof, **kwargs):
    from devices import Objective

    mic = SimMicroscope(
        sample,
        objective=Objective(10, 0.25),
        focus_um=focus_um,
        frames_dir=tmp_path,
        time_scale=0,
        **kwargs,
    )
    dof = mic.depth_of_field_um
    mic.z.set(mic.true_focus() + start_dof * dof).wait()
    return mic, dof


# Brenner's peak on a phase-dominant object lies off the true plane (the amplitude-phase
# cross term): 0.23 DOF here, measured and listed in benchmarks/REPORT-robustness.md
@pytest.mark.parametrize(
    ("sample", "physical_bias_dof"),
    [(_real_cell_image, 0.3), (lambda: ProceduralSample("cells", 4, contrast=0.2), 0.1)],
    ids=["real-phase-cells", "faint-cells"],
)
def test_weak_contrast_at_10x_is_focused_by_both_searches(RE, tmp_path, sample, physical_bias_dof):
    for start_dof in (-2.7, 2.2):
        mic, dof = _at_10x(sample(), tmp_path, 31.0, start_dof)
        sweep = RE(brenner_sweep(mic.camera, mic.z, mic.led, -6 * dof, 6 * dof, 25)).plan_result
        assert abs(sweep.best_z - mic.true_focus()) <= physical_bias_dof * dof, sweep
        assert sweep.peak_significance >= sweep.peak_threshold
        mic.z.set(mic.true_focus() + start_dof * dof).wait()
        fast = RE(fast_focus(mic.camera, mic.z, mic.led, -6 * dof, 6 * dof)).plan_result
        assert abs(fast.best_z - sweep.best_z) <= 0.1 * dof, (fast, sweep)
        assert fast.exposures < sweep.exposures


@pytest.mark.parametrize(
    ("sample", "seed", "start_dof"),
    [(("bars", 1, {}), 20261128, 3.1), (("tissue", 0, {"contrast": 0.2}), 20261127, 3.25)],
    ids=["bars", "faint-tissue"],
)
def test_a_narrow_peak_over_a_structured_baseline_is_found_by_fast_focus(
    RE, tmp_path, sample, seed, start_dof
):
    # at 10x/0.25 these peaks are ~0.4 DOF wide, so the coarse scan samples them once, over
    # a baseline whose structure is 20-70x the camera's noise: only more baseline samples
    # make them stand out. Judged after every one of them, with the false-alarm budget split
    # ten ways, both were refused (12.5x and 14.2x where 14.7x was needed)
    family, index, kwargs = sample
    mic, dof = _at_10x(
        ProceduralSample(family, index, **kwargs), tmp_path, 31.0, start_dof, seed=seed
    )
    result = RE(fast_focus(mic.camera, mic.z, mic.led, -5.5 * dof, 5.5 * dof)).plan_result
    assert abs(result.best_z - mic.true_focus()) <= 0.1 * dof, result
    # judged for good after the pair that follows the 7-point coarse scan, then every third
    # exposure; once decided, at most two more beside the top place it better
    decided_at = 9 + 3 * (result.peak_look - 1)
    assert decided_at <= result.exposures <= min(decided_at + 2, 15), result


def test_empty_crop_of_a_recorded_stack_is_refused_and_the_stage_stays(RE, tmp_path):
    from devices import ZStackSample

    rng = np.random.default_rng(0)
    z = np.arange(-60.0, 60.0, 1.5)
    # nothing in the field but each recorded plane's own camera noise
    planes = 1000 + 30 * rng.standard_normal((z.size, 128, 128))
    mic = SimMicroscope(ZStackSample(z, planes, focus_um=0.0), frames_dir=tmp_path, time_scale=0)
    dof = mic.depth_of_field_um
    for start in (-9.0, 4.0):
        mic.z.set(start).wait()
        for plan in (
            brenner_sweep(mic.camera, mic.z, mic.led, -5.5 * dof, 5.5 * dof, 23),
            fast_focus(mic.camera, mic.z, mic.led, -5.5 * dof, 5.5 * dof),
        ):
            with pytest.raises(NoFocusFound, match="No focus peak") as refused:
                RE(plan)
            assert mic.z.position == start
            assert refused.value.verdict is not None and not refused.value.verdict.found


@pytest.mark.parametrize(
    ("magnification", "na", "immersion", "exposure_s"),
    [(40, 0.65, 1.0, 0.0015), (60, 1.4, 1.515, 0.0015)],
)
def test_a_recorded_stack_of_pure_noise_is_refused_by_fast_focus(
    RE, tmp_path, magnification, na, immersion, exposure_s
):
    # at high NA the depth of field is close to the planes' spacing, so the stack's own
    # plane-to-plane structure makes bumps one DOF wide that nine exposures can take for
    # a peak if the camera's noise is trusted too readily (the robustness benchmark's
    # negative controls, seeds 0-5, accepted two of these before)
    from devices import Objective, ZStackSample

    for index in range(6):
        rng = np.random.default_rng([20261127, 7, index, 2])
        z = np.arange(-80.0, 80.0, 1.0)
        planes = 1000 + 30 * rng.standard_normal((z.size, 128, 128))
        mic = SimMicroscope(
            ZStackSample(z, planes, focus_um=0.0, seed=index),
            objective=Objective(magnification, na, immersion),
            seed=index,
            time_scale=0,
            exposure_s=exposure_s,
            frames_dir=tmp_path,
        )
        dof = mic.depth_of_field_um
        start = float(rng.uniform(-5.0, 5.0)) * dof
        mic.z.set(start).wait()
        with pytest.raises(NoFocusFound, match="No focus peak"):
            RE(fast_focus(mic.camera, mic.z, mic.led, -5.5 * dof, 5.5 * dof))
        assert mic.z.position == pytest.approx(start, abs=1e-9)


def test_saturated_camera_gets_the_saturation_sentence(RE, tmp_path):
    mic = SimMicroscope("tissue", seed=2, frames_dir=tmp_path, time_scale=0, z_start_um=5.0)
    mic.camera.exposure_time.put(1.0)
    with pytest.raises(NoFocusFound, match=r"\d+% of the pixels are saturated.*lower exposure"):
        RE(brenner_sweep(mic.camera, mic.z, mic.led, check_exposure=False))
    assert mic.z.position == 5.0 and mic.camera.exposure_time.get() == 1.0
    # the exposure check cannot help when even the shortest exposure saturates
    mic.camera.min_exposure_s.put(0.5)
    with pytest.raises(NoFocusFound, match="saturated even at the camera's shortest exposure"):
        RE(fast_focus(mic.camera, mic.z, mic.led))
    assert mic.z.position == 5.0 and mic.camera.exposure_time.get() == 1.0


@pytest.mark.parametrize("light", ["saturated", "dim"])
def test_exposure_check_brings_the_field_into_range_and_restores_it(RE, tmp_path, light):
    mic = SimMicroscope("beads", seed=3, focus_um=4.0, frames_dir=tmp_path, time_scale=0)
    if light == "saturated":
        mic.camera.exposure_time.put(0.5)
    else:
        mic.led.brightness.put(0.01)
    before = mic.camera.exposure_time.get()
    docs = []
    result = RE(
        fast_focus(mic.camera, mic.z, mic.led), lambda name, doc: docs.append((name, doc))
    ).plan_result
    assert abs(result.best_z - mic.true_focus()) <= 0.1 * mic.depth_of_field_um
    assert result.exposure_checks >= 1
    assert (result.exposure_s < before) if light == "saturated" else (result.exposure_s > before)
    assert mic.camera.exposure_time.get() == before  # restored
    events = [doc for name, doc in docs if name == "event" and "camera_brenner" in doc["data"]]
    exposures = [e["data"]["camera_exposure_s"] for e in events]
    assert exposures[0] == before and exposures[-1] == result.exposure_s
    assert len(events) == result.exposures


def test_led_off_is_refused_as_dark(RE, tmp_path):
    mic = SimMicroscope("beads", frames_dir=tmp_path, time_scale=0, z_start_um=2.0)
    mic.led.set("off")
    with pytest.raises(NoFocusFound, match=r"frames are dark.*LED is on"):
        RE(brenner_sweep(mic.camera, mic.z, mic.led, illumination="off"))
    assert mic.z.position == 2.0 and mic.camera.exposure_time.get() == 0.01


def test_auto_exposure_stub_records_its_previews(RE, tmp_path):
    import bluesky.preprocessors as bpp

    from autofocus_plans import auto_exposure

    mic = SimMicroscope("cells", frames_dir=tmp_path, time_scale=0)
    mic.camera.exposure_time.put(2.0)
    docs = []

    checks = []

    def plan():
        check = yield from auto_exposure(mic.camera)
        checks.append(check)
        yield from check.restore(mic.camera)

    RE(bpp.run_wrapper(plan()), lambda n, d: docs.append((n, d)))
    (check,) = checks
    assert check.exposure_s < 2.0 and check.saturated_fraction <= 1e-3 and check.frames >= 2
    assert mic.camera.exposure_time.get() == 2.0
    (descriptor,) = [d for n, d in docs if n == "descriptor"]
    assert descriptor["name"] == "exposure_check"
    assert sum(n == "event" for n, _ in docs) == check.frames
    assert not any(n == "stream_resource" for n, _ in docs)  # previews are not stored


def test_refusal_is_recorded_in_the_focus_result_stream(catalog_RE, catalog, mic):
    mic.set_sample(ImageSample(amplitude=np.ones((64, 64)), label="blank"))
    with pytest.raises(NoFocusFound) as refused:
        catalog_RE(brenner_sweep(mic.camera, mic.z, mic.led, -10, 10, 11))
    result = refused.value.result
    run = catalog[result.run_uid or list(catalog)[-1]]
    table = run["focus_result"].read()
    assert int(table["found"].values[-1]) == 0
    assert np.isnan(table["best_z"].values[-1])
    assert table["peak_significance"].values[-1] < table["peak_threshold"].values[-1]
    assert run.stop["exit_status"] == "fail" and "No focus peak" in run.stop["reason"]


def test_single_ctrl_c_pauses_and_resume_measures_again(RE, tmp_path):
    import threading

    from bluesky.utils import RunEngineInterrupted

    mic = SimMicroscope("bars", seed=1, focus_um=6.0, frames_dir=tmp_path, time_scale=0)
    mic.led.set("center")
    seen = []

    def pause_after_five(name, doc):
        if name == "event" and "camera_brenner" in doc["data"]:
            seen.append(doc)
            if len(seen) == 5:  # what one Ctrl-C asks for: a pause at the next checkpoint
                threading.Thread(target=RE.request_pause, kwargs={"defer": True}).start()

    RE.subscribe(pause_after_five)
    with pytest.raises(RunEngineInterrupted):
        RE(brenner_sweep(mic.camera, mic.z, mic.led, -15, 15, 16))
    assert 5 <= len(seen) < 16  # paused promptly, mid-sweep
    before_pause = len(seen)
    mic.led.set("darkfield")  # the user fiddles with the light during the pause
    result = RE.resume().plan_result
    assert result.restarts == 1
    assert result.exposures == len(seen) == before_pause + 16  # measured again, all of it
    assert abs(result.best_z - mic.true_focus()) <= 0.1 * mic.depth_of_field_um
    assert mic.led.pattern.get() == "center"


@pytest.mark.parametrize("ending", ["stop", "abort"])
def test_stop_or_abort_in_a_pause_restore_light_exposure_and_stage(
    catalog_RE, catalog, mic, ending
):
    import threading

    from bluesky.utils import RunEngineInterrupted

    mic.led.set("darkfield")
    mic.camera.exposure_time.put(0.5)  # saturating: the search shortens it first
    start = mic.z.position
    count = []

    def pause_soon(name, doc):
        if name == "event" and "camera_brenner" in doc["data"]:
            count.append(1)
            if len(count) == 4:
                threading.Thread(target=catalog_RE.request_pause, kwargs={"defer": True}).start()

    token = catalog_RE.subscribe(pause_soon)
    with pytest.raises(RunEngineInterrupted):
        catalog_RE(fast_focus(mic.camera, mic.z, mic.led))
    catalog_RE.unsubscribe(token)
    getattr(catalog_RE, ending)()
    assert mic.led.pattern.get() == "darkfield"
    assert mic.camera.exposure_time.get() == 0.5
    assert mic.z.position == pytest.approx(start)
    (uid,) = list(catalog)
    run = catalog[uid]
    assert run.stop["exit_status"] == ("abort" if ending == "abort" else "success")
    assert run["primary"]["camera_image"].shape[0] == len(count)
