"""Learned single-shot focus end to end: catalogue training set -> model -> plans."""

import numpy as np
import pytest
from scipy import stats

import models
from autofocus_plans import (
    cnn_focus,
    collect_training_set,
    find_runs,
    open_catalog,
    subscribe_catalog,
    track_focus,
)
from devices import Objective, SimMicroscope


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small training set collected into a real catalogue, and a CNN trained on it."""
    from bluesky import RunEngine

    root = tmp_path_factory.mktemp("learned")
    catalog = open_catalog(root / "catalog", create=True)
    mic = SimMicroscope("tissue", seed=0, time_scale=0)
    RE = RunEngine({}, call_returns_result=True)
    subscribe_catalog(RE, catalog, cameras=[mic.camera])
    uids = RE(
        collect_training_set(
            mic.camera,
            mic.z,
            mic.led,
            mic.fov,
            list(range(10)),
            shots_per_field=24,
            training_set="unit",
            seed=1,
        )
    ).plan_result
    runs = list(find_runs(catalog, purpose="training").values())
    examples = models.examples_from_runs(runs, progress=False)
    model = models.train(
        examples, "DefocusCNN", epochs=14, crops_per_frame=2, patience=6, seed=0, progress=False
    )
    path = model.save(root / "cnn.safetensors")
    return {"catalog": catalog, "uids": uids, "examples": examples, "model": model, "path": path}


def test_training_runs_are_tagged_and_labelled(trained):
    catalog, uids = trained["catalog"], trained["uids"]
    assert len(uids) == 10
    assert sorted(find_runs(catalog, purpose="training")) == sorted(uids)
    start = catalog[uids[0]].start
    assert start["training_set"] == "unit" and start["illumination"] == "off_axis"
    assert catalog[start["focus_run_uid"]].start["plan_name"] == "brenner_sweep"
    examples = trained["examples"]
    assert len(examples) == 240 and examples.frames.shape[1:] == (256, 256)
    assert np.abs(examples.defocus_um).max() <= 6 * examples.depth_of_field_um + 1e-6


def test_small_training_beats_predicting_the_mean_on_unseen_fields(trained):
    model, examples = trained["model"], trained["examples"]
    validation = model.metadata["validation"]
    held_out = np.isin(examples.fov, model.metadata["validation_fields"])
    mean_predictor_mae = np.mean(
        np.abs(examples.defocus_um[held_out] - examples.defocus_um[~held_out].mean())
    )
    assert validation["n"] == held_out.sum() > 0
    assert validation["mae_um"] < 0.5 * mean_predictor_mae, (validation, mean_predictor_mae)
    for key in ("mae_um", "rmse_um", "mae_dof", "rmse_dof"):
        assert np.isfinite(validation[key])
    assert set(model.metadata["training_run_uids"]) == set(trained["uids"])
    assert model.metadata["optics"]["led_pattern"] == "off_axis"


def test_checkpoint_round_trips_to_identical_predictions(trained):
    loaded = models.load_model(trained["path"])
    frames = trained["examples"].frames[:12]
    assert np.array_equal(loaded.predict(frames), trained["model"].predict(frames))
    assert loaded.metadata == trained["model"].metadata
    assert len(loaded.file_sha256) == 64


def test_mlp_baseline_round_trips(trained, tmp_path):
    mlp = models.train(
        trained["examples"], "FourierMLP", epochs=5, crops_per_frame=1, progress=False
    )
    loaded = models.load_model(mlp.save(tmp_path / "mlp.safetensors"))
    frames = trained["examples"].frames[:5]
    assert np.allclose(loaded.predict(frames), mlp.predict(frames))


def test_corrupt_and_foreign_files_give_clear_errors(tmp_path):
    import pickle

    from safetensors.numpy import save_file

    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00\x01 not a checkpoint at all")
    with pytest.raises(models.ModelFileError, match="not a readable bluesky-autofocus model"):
        models.load_model(corrupt)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(foreign))
    with pytest.raises(models.ModelFileError, match="not a bluesky-autofocus model checkpoint"):
        models.load_model(foreign)
    # a pickle that would run code if unpickled: it is refused, never executed
    marker = tmp_path / "executed"
    evil = tmp_path / "evil.safetensors"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(models.ModelFileError):
        models.load_model(evil)
    assert not marker.exists()
    with pytest.raises(models.ModelFileError, match="No model file"):
        models.load_model(tmp_path / "missing.safetensors")


def test_cnn_focus_gets_close_in_two_shots(trained, RE, tmp_path):
    model = models.load_model(trained["path"])
    mic = SimMicroscope("tissue", seed=0, frames_dir=tmp_path, time_scale=0)
    dof = mic.depth_of_field_um
    rng = np.random.default_rng(5)
    before, after = [], []

    class Docs(list):
        def append_pair(self, name, doc):
            self.append((name, doc))

    for k in range(6):
        mic.fov.set(500 + k).wait()
        start = mic.true_focus() + rng.uniform(-4, 4) * dof
        mic.z.set(start).wait()
        docs = Docs()
        result = RE(cnn_focus(mic.camera, mic.z, mic.led, model), docs.append_pair).plan_result
        before.append(abs(start - mic.true_focus()))
        after.append(abs(result.best_z - mic.true_focus()))
        if not result.fell_back:
            assert result.exposures <= 2
        start_doc = docs[0][1]
        assert start_doc["model_sha256"] == model.file_sha256
        assert start_doc["model_training_run_uids"] == model.metadata["training_run_uids"]
        assert mic.led.pattern.get() == "brightfield"
        assert mic.camera.exposure_time.get() == 0.01
    # a small model: it need not be exact, but it must bring the stage much closer to focus
    assert np.median(after) < 0.35 * np.median(before), (before, after)


def test_out_of_range_prediction_falls_back_to_fast_focus(trained, RE, tmp_path):
    model = models.load_model(trained["path"])
    model.metadata["trained_range_um"] = [-0.01, 0.01]  # nothing is "in range" for this copy
    mic = SimMicroscope("tissue", seed=3, frames_dir=tmp_path, time_scale=0)
    mic.z.set(mic.true_focus() + 8.0).wait()
    result = RE(cnn_focus(mic.camera, mic.z, mic.led, model)).plan_result
    assert result.fell_back and "outside trained range" in result.extra["reason"]
    assert abs(result.best_z - mic.true_focus()) < 0.5
    assert result.exposures > 2


@pytest.mark.parametrize("family", ["beads"])
def test_on_samples_it_never_saw_the_model_ends_near_focus_or_falls_back(
    trained, RE, tmp_path, family
):
    # trained on tissue only: on other samples its answers can be confidently wrong, and
    # the confirming shot, a known distance from the first shot's focus, must catch it
    model = models.load_model(trained["path"])
    mic = SimMicroscope(family, seed=4, frames_dir=tmp_path, time_scale=0)
    dof = mic.depth_of_field_um
    rng = np.random.default_rng(11)
    decisions = []
    for k in range(4):
        mic.fov.set(700 + k).wait()
        mic.z.set(mic.true_focus() + rng.uniform(-4, 4) * dof).wait()
        docs = []
        result = RE(
            cnn_focus(mic.camera, mic.z, mic.led, model), lambda n, d, docs=docs: docs.append(d)
        ).plan_result
        error = abs(result.best_z - mic.true_focus())
        decisions.append((result.fell_back, round(error / dof, 2), result.extra.get("reason")))
        assert result.fell_back or error <= dof, decisions
        shots = [d["data"] for d in docs if "data" in d and "expected_um" in d["data"]]
        assert shots[0]["expected_um"] == 0.0
        if len(shots) > 1:  # the probe: on the other side of the first shot's focus
            assert abs(shots[1]["expected_um"]) > shots[1]["agreement_um"] > 0
            assert np.sign(shots[1]["expected_um"]) == -np.sign(shots[0]["predicted_defocus_um"])


def test_the_model_states_its_interval_and_knows_a_sample_it_never_saw(trained, RE, tmp_path):
    # trained on tissue: on fresh tissue fields it is familiar and its interval mostly covers
    # the error; beads look like nothing it was trained on, so it falls back before moving
    model = models.load_model(trained["path"])
    calibration = model.calibration
    assert calibration.coverage == 0.9 and calibration.frames == model.metadata["validation"]["n"]
    assert np.isfinite(calibration.quantile) and np.isfinite(calibration.novelty_limit)
    familiar, covered = [], []
    for family in ("tissue", "beads"):
        mic = SimMicroscope(family, seed=7, frames_dir=tmp_path, time_scale=0)
        mic.led.set("off_axis").wait()
        mic.camera.exposure_time.put(0.25)
        dof = mic.depth_of_field_um
        for k, offset in enumerate(np.linspace(-4, 4, 12) * dof):
            mic.fov.set(900 + k).wait()
            mic.z.set(mic.true_focus() + offset).wait()
            mic.camera.trigger().wait()
            estimate = model.estimate(mic.camera.last_frame)
            familiar.append((family, estimate.familiar))
            if family == "tissue":
                covered.append(abs(estimate.defocus_um - offset) <= estimate.interval_um)
    tissue = [f for name, f in familiar if name == "tissue"]
    beads = [f for name, f in familiar if name == "beads"]
    # 95 % of frames like the calibration fields count as familiar, 90 % are covered;
    # the bounds allow for what 12 frames can scatter below that by chance
    assert sum(tissue) >= stats.binom.ppf(1e-3, 12, 0.95), familiar
    assert sum(covered) >= stats.binom.ppf(1e-3, 12, 0.9), covered
    assert not any(beads), familiar

    mic = SimMicroscope("beads", seed=4, frames_dir=tmp_path, time_scale=0)
    mic.z.set(mic.true_focus() + 2 * mic.depth_of_field_um).wait()
    docs = []
    result = RE(
        cnn_focus(mic.camera, mic.z, mic.led, model), lambda n, d: docs.append(d)
    ).plan_result
    assert result.fell_back and "unlike those the model was trained on" in result.extra["reason"]
    (shot,) = [d["data"] for d in docs if "data" in d and "novelty" in d["data"]]
    assert shot["novelty"] > 1 and shot["interval_um"] > 0


def test_cnn_focus_falls_back_when_its_interval_is_wider_than_allowed(trained, RE, tmp_path):
    mic = SimMicroscope("tissue", seed=0, frames_dir=tmp_path, time_scale=0)
    mic.fov.set(501).wait()
    start = mic.true_focus() + 2 * mic.depth_of_field_um
    mic.z.set(start).wait()
    result = RE(
        cnn_focus(mic.camera, mic.z, mic.led, trained["path"], max_interval_um=1e-3)
    ).plan_result
    if "unlike" not in result.extra["reason"]:  # one field in 20 may look unfamiliar
        assert result.fell_back and "interval is ±" in result.extra["reason"], result.extra
    assert abs(result.best_z - mic.true_focus()) < 0.5
    with pytest.raises(ValueError, match="max_interval_um must be positive"):
        RE(cnn_focus(mic.camera, mic.z, mic.led, trained["path"], max_interval_um=0))


def test_model_for_other_optics_is_refused(trained, RE, tmp_path):
    mic = SimMicroscope(
        "tissue", objective=Objective(magnification=20, na=0.5), frames_dir=tmp_path, time_scale=0
    )
    with pytest.raises(
        ValueError, match=r"trained for led_objective_na = 0\.4 but the devices have 0\.5"
    ):
        RE(cnn_focus(mic.camera, mic.z, mic.led, str(trained["path"])))
    assert mic.camera.last_frame is None


def test_track_focus_bounds_error_under_drift(trained, RE, tmp_path):
    model = models.load_model(trained["path"])
    drift = 3.0  # µm/s: about 9 DOF over the time-lapse, far out of focus without correction
    mic = SimMicroscope("tissue", seed=77, drift_um_per_s=drift, frames_dir=tmp_path, time_scale=0)
    dof = mic.depth_of_field_um
    key = f"{mic.camera.name}_brenner"
    truth = []
    RE.subscribe(lambda n, d: n == "event" and key in d["data"] and truth.append(mic.true_focus()))
    mic.z.set(mic.true_focus()).wait()
    trajectory = RE(
        track_focus(mic.camera, mic.z, mic.led, model, num=16, interval_s=0.8)
    ).plan_result
    errors = np.abs(np.asarray(trajectory["z_um"]) - np.asarray(truth))
    uncorrected = np.abs(trajectory["z_um"][0] - np.asarray(truth))
    assert uncorrected[-1] > 5 * dof
    assert np.max(errors[2:]) < 2.0 * dof, errors / dof
    assert np.median(errors) < 0.3 * uncorrected[-1]
