"""The general pair models shipped in models/shipped, cnn_focus's default."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import models
from autofocus_plans import cnn_focus, mirrored_patterns, shipped_model_for
from autofocus_plans.shipped import SHIPPED_DIR, SHIPPED_OBJECTIVES, shipped_model_paths
from devices import SAMPLE_FAMILIES, Objective, SimMicroscope

AUTOFOCUS = str(Path(sys.executable).with_name("autofocus"))


def test_a_model_is_shipped_for_every_standard_objective_with_its_recipe_and_figures():
    paths = shipped_model_paths()
    assert len(paths) == len(SHIPPED_OBJECTIVES)
    for magnification, na in SHIPPED_OBJECTIVES:
        path = SHIPPED_DIR / f"pairs-{magnification:g}x-{na:.2f}.safetensors"
        model = models.load_model(path)
        mic = SimMicroscope("cells", objective=Objective(magnification, na), time_scale=0)
        assert model.shots == 2 and model.patterns == mirrored_patterns(mic.led)
        assert shipped_model_for(mic.camera, mic.led).file_sha256 == model.file_sha256
        meta = model.metadata
        assert meta["provenance"]["source"] == "simulated"
        assert meta["recipe"]["command"] == "autofocus build-models"
        assert meta["recipe"]["objective"] == f"{magnification:g}x/{na:g}"
        assert set(SAMPLE_FAMILIES) <= set(meta["figures"])
        assert np.isfinite(model.calibration.quantile)
        assert np.isfinite(model.calibration.novelty_limit)
        assert path.stat().st_size < 2_000_000  # small enough to keep in the repository


def test_optics_no_model_was_shipped_for_are_refused_in_one_sentence(RE, tmp_path):
    mic = SimMicroscope("cells", objective=Objective(40, 0.65), frames_dir=tmp_path, time_scale=0)
    start = mic.z.position
    with pytest.raises(ValueError, match=r"No shipped model fits these optics .*model=") as err:
        RE(cnn_focus(mic.camera, mic.z, mic.led))
    assert "\n" not in str(err.value)
    assert mic.z.position == start and mic.led.pattern.get() == "brightfield"


def test_cnn_focus_uses_the_shipped_model_by_default_and_never_ends_far_off(
    catalog, catalog_RE, mic
):
    # a sample the model never trained on as such: a beads field at a seed and contrast
    # of its own, started 3 DOF above focus
    dof = mic.depth_of_field_um
    mic.set_sample("beads", seed=4242)
    mic.z.set(mic.true_focus() + 3 * dof).wait()
    exposure, pattern = mic.camera.exposure_time.get(), mic.led.pattern.get()
    result = catalog_RE(cnn_focus(mic.camera, mic.z, mic.led)).plan_result
    shipped = shipped_model_for(mic.camera, mic.led)
    run = catalog[result.extra.get("cnn_run_uid", result.run_uid)]
    assert run.start["model_sha256"] == shipped.file_sha256
    assert run.start["plan_name"] == "cnn_focus" and run.start["exposure_s"] > exposure
    prediction = run["prediction"].read()
    assert {"novelty", "interval_um", "spread_um", "exposure_ok"} <= set(prediction.data_vars)
    # either it trusted the model and is within its tolerance, or it fell back to a search
    assert abs(mic.z.position - mic.true_focus()) <= dof
    assert mic.camera.exposure_time.get() == exposure and mic.led.pattern.get() == pattern


def test_a_pair_out_of_exposure_range_is_retaken_and_never_predicted_from(catalog, catalog_RE, mic):
    # brightfield at 20 times its exposure: the first pair, scaled from it, saturates
    dof = mic.depth_of_field_um
    mic.set_sample("cells", seed=4343)
    mic.z.set(mic.true_focus() - 2 * dof).wait()
    overexposed = 20 * mic.camera.exposure_time.get()
    mic.camera.exposure_time.put(overexposed)
    result = catalog_RE(cnn_focus(mic.camera, mic.z, mic.led, max_shots=1)).plan_result
    run = catalog[result.extra.get("cnn_run_uid", result.run_uid)]
    rows = run["prediction"].read()
    ok = rows["exposure_ok"].values.astype(bool)
    retakes = run.stop["num_events"]["primary"] // 2 - ok.sum()
    assert not ok[0] and ok[-1] and retakes == (~ok).sum() >= 1
    assert np.isnan(rows["predicted_defocus_um"].values[~ok]).all()  # never acted on
    exposures = rows["exposure_s"].values
    assert exposures[-1] < exposures[0]  # shorter after the saturated pair
    if not result.fell_back:
        assert result.extra["exposure_retakes"] == retakes
        assert result.exposures == 2 * (1 + retakes)
        assert len(result.extra["predictions_um"]) == 1
    assert mic.camera.exposure_time.get() == overexposed


def test_build_models_rebuilds_a_model_with_its_recipe(tmp_path):
    out = subprocess.run(
        [
            AUTOFOCUS,
            "build-models",
            "--objective",
            "20x/0.4",
            "--fields",
            "4",
            "--shots",
            "4",
            "--epochs",
            "1",
            "--evaluation-fields",
            "1",
            "--out-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    model = models.load_model(tmp_path / "pairs-20x-0.40.safetensors")
    assert model.metadata["recipe"]["fields"] == 4 and model.metadata["figures"]
    assert "| cells |" in out.stdout
    bad = subprocess.run(
        [AUTOFOCUS, "build-models", "--objective", "twenty"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "MAGNIFICATIONx/NA" in bad.stderr
