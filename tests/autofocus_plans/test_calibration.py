"""Few-shot calibration: one z-stack of a sample the model never saw adapts it to that sample."""

import math

import numpy as np
import pytest
from scipy.stats import wilcoxon

import models
from autofocus_plans import (
    calibrate_model,
    find_runs,
    mirrored_patterns,
    open_catalog,
    subscribe_catalog,
)
from devices import ProceduralSample, SimMicroscope, snap_shot
from models.training import DefocusExamples

#: one-sided level of the paired test that the adapted model's errors are smaller
LEVEL = 0.01


def _pairs(model, samples, per_field: int, seed: int):
    """Pairs under the model's LEDs at U(-5, 5) DOF from the true focus of each sample."""
    mic = SimMicroscope("bars", seed=0, time_scale=0)
    mic.camera.exposure_time.put(0.25)  # as the training frames (the LEDs are off-axis)
    dof = mic.depth_of_field_um
    rng = np.random.default_rng(seed)
    truth, pairs = [], []
    for k, sample in enumerate(samples):
        mic.set_sample(sample, seed=k)
        for dz in rng.uniform(-5, 5, per_field) * dof:
            mic.z.set(mic.true_focus() + dz).wait()
            pairs.append(snap_shot(mic, model.patterns))
            truth.append(dz)
    return np.stack(pairs), np.asarray(truth), dof


def _errors(model, pairs, truth):
    """Per-pair absolute error (µm) of the mean over views, as cnn_focus predicts."""
    return np.abs(model.predict_views(pairs).mean(axis=1) - truth)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A pair model trained on tissue, cells and beads, then calibrated on one field of bars."""
    from bluesky import RunEngine

    from autofocus_plans.learned import PAIR_SEPARATOR
    from autofocus_plans.results import optics_metadata
    from devices import randomised_examples

    root = tmp_path_factory.mktemp("calibration")
    catalog = open_catalog(root / "catalog", create=True)
    RE = RunEngine({}, call_returns_result=True)
    mic = SimMicroscope("tissue", seed=0, time_scale=0)
    subscribe_catalog(RE, catalog, cameras=[mic.camera])
    patterns = mirrored_patterns(mic.led)
    # the base's frames are generated, as the shipped models' are: the catalogue path is
    # the calibration's, tested below
    generated = randomised_examples(
        patterns,
        families=("tissue", "cells", "beads"),
        fields=9,
        shots_per_field=16,
        seed=1,
        progress=False,
    )
    optics = optics_metadata(mic.camera, mic.led) | {"led_pattern": PAIR_SEPARATOR.join(patterns)}
    examples = DefocusExamples(
        generated.frames,
        generated.defocus_um,
        generated.fov,
        optics={k: optics.get(k) for k in models.OPTICS_KEYS} | {"led_patterns": list(patterns)},
        depth_of_field_um=generated.depth_of_field_um,
    )
    base = models.train(
        examples, "DefocusCNN", epochs=12, crops_per_frame=2, seed=0, progress=False
    )
    base_path = base.save(root / "base.safetensors")

    mic.set_sample("bars")  # a family the model never saw
    before = {"pattern": mic.led.pattern.get(), "exposure": mic.camera.exposure_time.get()}
    docs = []
    adapted = RE(
        calibrate_model(
            mic.camera, mic.z, mic.led, str(base_path), mic.fov, 3, out=str(root / "bars.sft")
        ),
        lambda name, doc: docs.append((name, doc)),
    ).plan_result
    after = {"pattern": mic.led.pattern.get(), "exposure": mic.camera.exposure_time.get()}
    return {
        "catalog": catalog,
        "RE": RE,
        "mic": mic,
        "base": models.load_model(base_path),
        "adapted": adapted,
        "out": root / "bars.sft",
        "docs": docs,
        "devices_before": before,
        "devices_after": after,
    }


def test_calibrating_on_one_field_improves_other_fields_of_a_family_never_trained_on(
    calibrated,
):
    base, adapted = calibrated["base"], calibrated["adapted"]
    # other fields of the family (new seeds), never seen by either model
    pairs, truth, dof = _pairs(base, [ProceduralSample("bars", 600 + k) for k in range(3)], 8, 5)
    before, after = _errors(base, pairs, truth), _errors(adapted, pairs, truth)
    # paired per pair, one-sided: the adapted model's errors are the smaller ones
    test = wilcoxon(before, after, alternative="greater")
    assert test.pvalue < LEVEL, (before.mean() / dof, after.mean() / dof, test)
    assert after.mean() < before.mean()
    adaptation = adapted.metadata["adaptation"]
    assert adaptation["after"]["mae_um"] <= adaptation["before"]["mae_um"]
    assert adaptation["frames"] == 24 and adaptation["held_out_frames"] == 12
    assert 0 < adaptation["epochs"] <= adaptation["max_epochs"]
    assert adaptation["before"]["mae_dof"] == pytest.approx(
        adaptation["before"]["mae_um"] / dof, rel=1e-6
    )


def test_the_calibrated_sample_is_familiar_and_what_was_familiar_stays_so(calibrated):
    base, adapted = calibrated["base"], calibrated["adapted"]
    catalog, uid = calibrated["catalog"], adapted.metadata["adaptation"]["run_uids"][0]
    stack = models.examples_from_runs([catalog[uid]], progress=False).frames
    assert all(adapted.estimate(p).familiar for p in stack)
    # the pooled novelty keeps every frame the base found familiar familiar (sqrt(d^2 + 1))
    tissue, _, _ = _pairs(base, [ProceduralSample("tissue", 700)], 6, 6)
    for pair in tissue:
        if base.estimate(pair).familiar:
            assert adapted.estimate(pair).familiar
    assert math.isfinite(adapted.calibration.quantile)
    assert adapted.calibration.quantile >= base.calibration.quantile


def test_the_calibration_run_is_in_the_catalogue_and_matches_what_the_plan_kept(calibrated):
    catalog, adapted, base = calibrated["catalog"], calibrated["adapted"], calibrated["base"]
    runs = find_runs(catalog, purpose="calibration")
    assert len(runs) == 1
    (uid,) = runs.keys()
    assert adapted.metadata["adaptation"]["run_uids"] == [uid]
    run = catalog[uid]
    assert run.start["plan_name"] == "calibrate_model"
    assert run.start["calibrates_model"] == base.name
    assert run.start["model_sha256"] == base.file_sha256
    assert run.start["led_patterns"] == list(base.patterns)
    assert run.stop["exit_status"] == "success"
    result = run["calibration_result"]
    assert float(np.asarray(result["after_mae_um"].read())[0]) == pytest.approx(
        adapted.metadata["adaptation"]["after"]["mae_um"]
    )
    # the focus sweep before it is tagged too, as a search, so it is no calibration data
    starts = [d for n, d in calibrated["docs"] if n == "start"]
    assert [s["purpose"] for s in starts] == ["autofocus", "calibration"]
    assert all(s["calibrates_model"] == base.name for s in starts)
    # the frames the plan adapted from are those the catalogue holds
    stored = models.examples_from_runs([run], progress=False)
    assert stored.frames.shape == (24, 2, 256, 256)
    assert adapted.metadata["adaptation"]["defocus_range_um"] == pytest.approx(
        [stored.defocus_um.min(), stored.defocus_um.max()]
    )


def test_fine_tune_works_on_the_catalogue_run(calibrated):
    base, catalog = calibrated["base"], calibrated["catalog"]
    (uid,) = find_runs(catalog, purpose="calibration").keys()
    again = models.fine_tune(
        base, models.examples_from_runs([catalog[uid]], progress=False), epochs=2, progress=False
    )
    assert again.metadata["adaptation"]["run_uids"] == [uid]
    # the same frames, split and base weights as the plan's in-memory ones: the same error
    assert (
        again.metadata["adaptation"]["before"]
        == calibrated["adapted"].metadata["adaptation"]["before"]
    )
    assert again.metadata["adapted_from"]["sha256"] == base.file_sha256
    assert again is not base and base.metadata.get("adaptation") is None  # base untouched


def test_the_adapted_checkpoint_round_trips_with_its_adaptation(calibrated):
    adapted, base = calibrated["adapted"], calibrated["base"]
    loaded = models.load_model(calibrated["out"])
    assert loaded.metadata["adapted_from"] == {
        "name": base.name,
        "sha256": base.file_sha256,
        "path": str(base.path),
    }
    assert loaded.metadata["adaptation"] == adapted.metadata["adaptation"]
    assert loaded.metadata["calibration"] == adapted.metadata["calibration"]
    assert loaded.metadata["optics"] == base.metadata["optics"]
    assert loaded.patterns == base.patterns and loaded.shots == 2
    assert loaded.name != base.name and loaded.name.startswith(base.name)
    pair = models.examples_from_runs(
        [calibrated["catalog"][adapted.metadata["adaptation"]["run_uids"][0]]], progress=False
    ).frames[:2]
    np.testing.assert_allclose(loaded.predict(pair), adapted.predict(pair), rtol=1e-5)


def test_the_plan_restores_the_led_and_exposure(calibrated):
    assert calibrated["devices_after"] == calibrated["devices_before"]


def test_too_few_shots_are_refused_before_anything_moves(calibrated):
    mic, RE, catalog = calibrated["mic"], calibrated["RE"], calibrated["catalog"]
    z, runs = mic.z.position, len(catalog)
    with pytest.raises(ValueError, match="at least 18 shots"):
        RE(calibrate_model(mic.camera, mic.z, mic.led, calibrated["base"], mic.fov, shots=6))
    assert mic.z.position == z and len(catalog) == runs


def test_fine_tune_refuses_examples_it_cannot_adapt_from(calibrated):
    base, catalog = calibrated["base"], calibrated["catalog"]
    (uid,) = find_runs(catalog, purpose="calibration").keys()
    pairs = models.examples_from_runs([catalog[uid]], progress=False)
    single_frame = models.DefocusModel("DefocusCNN", models.Preprocessing(crop=64))
    with pytest.raises(ValueError, match="predicts from single frames but the examples are pairs"):
        models.fine_tune(single_frame, pairs, progress=False)
    with pytest.raises(ValueError, match="at least 18 labelled pairs of frames"):
        models.fine_tune(base, pairs.subset(np.arange(len(pairs)) < 6), progress=False)
    other_optics = DefocusExamples(
        pairs.frames,
        pairs.defocus_um,
        pairs.fov,
        pairs.run_uids,
        {**pairs.optics, "led_objective_na": 0.25},
        pairs.depth_of_field_um,
    )
    with pytest.raises(ValueError, match=r"led_objective_na = 0\.25 but model"):
        models.fine_tune(base, other_optics, progress=False)


def test_a_failed_adaptation_closes_the_run_as_failed_and_restores_the_devices(
    calibrated, RE, mic, monkeypatch
):
    def refuse(*args, **kwargs):
        raise ValueError("the adaptation was refused")

    monkeypatch.setattr(models, "fine_tune", refuse)
    before = (mic.led.pattern.get(), mic.camera.exposure_time.get())
    docs = []
    with pytest.raises(ValueError, match="the adaptation was refused"):
        RE(
            calibrate_model(
                mic.camera, mic.z, mic.led, calibrated["base"], shots=18, sweep_points=15
            ),
            lambda name, doc: docs.append((name, doc)),
        )
    stops = [d for n, d in docs if n == "stop"]
    assert [(s["exit_status"], s["reason"]) for s in stops][-1] == (
        "fail",
        "the adaptation was refused",
    )
    assert (mic.led.pattern.get(), mic.camera.exposure_time.get()) == before
