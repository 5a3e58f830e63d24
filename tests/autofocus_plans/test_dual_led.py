"""dual_led_focus end to end: unseen samples, refusal, the catalogue record, restore."""

import numpy as np
import pytest

from autofocus_plans import dual_led_focus
from devices import ImageSample, ProceduralSample, SimMicroscope


def _real_cell_image():
    from skimage.data import cell

    norm = cell().astype(float)
    norm = (norm - norm.min()) / np.ptp(norm)
    return ImageSample(1 - 0.4 * norm, 1.2 * norm, pixel_size_um=0.5, label="skimage-cell")


@pytest.mark.parametrize(
    "sample",
    [ProceduralSample("bars", 5), ProceduralSample("cells", 6), _real_cell_image()],
    ids=["bars", "cells", "real cell image"],
)
def test_focus_within_half_a_dof_on_samples_never_trained_for(RE, tmp_path, sample):
    mic = SimMicroscope(sample, frames_dir=tmp_path, time_scale=0, seed=2)
    dof = mic.depth_of_field_um
    for start_dof in (-4.0, 3.0):
        mic.z.set(mic.true_focus() + start_dof * dof).wait()
        result = RE(dual_led_focus(mic.camera, mic.z, mic.led)).plan_result
        assert not result.fell_back, result.extra
        assert abs(result.best_z - mic.true_focus()) <= 0.5 * dof
        assert result.predicted_defocus == pytest.approx(start_dof * dof, abs=0.5 * dof)
        assert mic.led.pattern.get() == "brightfield"
        assert mic.camera.exposure_time.get() == pytest.approx(0.01)


def test_blank_field_is_refused_and_the_stage_returns(RE, tmp_path):
    mic = SimMicroscope(ImageSample(np.ones((64, 64))), frames_dir=tmp_path, time_scale=0)
    mic.z.set(7.0).wait()
    with pytest.raises(RuntimeError, match="found no displacement to trust: the two frames share"):
        RE(dual_led_focus(mic.camera, mic.z, mic.led, fallback="none"))
    assert mic.z.position == pytest.approx(7.0)
    assert mic.led.pattern.get() == "brightfield"
    assert mic.camera.exposure_time.get() == pytest.approx(0.01)


def test_estimates_and_decisions_are_in_the_catalogue(catalog_RE, catalog, mic):
    mic.z.set(mic.true_focus() + 9.0).wait()
    result = catalog_RE(dual_led_focus(mic.camera, mic.z, mic.led)).plan_result
    run = catalog[result.run_uid]
    assert run.start["plan_name"] == "dual_led_focus"
    assert len(run.start["illumination"]) == 2
    prediction = run["prediction"].read()
    assert prediction["predicted_defocus_um"].values[0] == pytest.approx(9.0, abs=1.5)
    assert list(prediction["found"].values) == [1] * len(prediction["found"])
    assert np.all(prediction["significance"].values >= prediction["threshold"].values)
    assert run["focus_result"].read()["fell_back"].values[0] == 0
