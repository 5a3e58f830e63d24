"""The dual-LED displacement estimator against the simulator's truth (no training)."""

import numpy as np
import pytest

from devices import ImageSample, ProceduralSample, SimMicroscope
from models.dual_led import DualLEDDefocus


def _pair(mic, model, defocus_um):
    mic.z.set(mic.true_focus() + defocus_um).wait()
    frames = []
    for pattern in model.patterns:
        mic.led.set(pattern)
        frames.append(mic.camera.snap())
    return frames


@pytest.fixture
def geometry():
    from autofocus_plans import dual_led_model

    def build(mic):
        mic.camera.exposure_time.put(0.05)
        return dual_led_model(mic.camera, mic.led)

    return build


@pytest.mark.parametrize(
    "sample",
    [
        ProceduralSample("beads", 1),
        ProceduralSample("tissue", 2),
        ProceduralSample("cells", 3, component="phase"),  # opposite contrast under the two LEDs
    ],
    ids=["beads", "tissue", "pure-phase cells"],
)
def test_signed_defocus_far_from_focus_whatever_the_sample(tmp_path, geometry, sample):
    mic = SimMicroscope(sample, frames_dir=tmp_path, time_scale=0, seed=1)
    model = geometry(mic)
    dof = model.depth_of_field_um
    for offset_dof in (-4.0, -2.0, 2.0, 4.0):
        estimate = model.estimate(*_pair(mic, model, offset_dof * dof))
        assert estimate.found, estimate.reason
        assert estimate.defocus_um == pytest.approx(offset_dof * dof, abs=0.25 * dof)


def test_blank_field_gives_no_estimate(tmp_path, geometry):
    mic = SimMicroscope(ImageSample(np.ones((64, 64))), frames_dir=tmp_path, time_scale=0)
    model = geometry(mic)
    for offset_dof in (-3.0, 0.0, 2.0):
        estimate = model.estimate(*_pair(mic, model, offset_dof * model.depth_of_field_um))
        assert not estimate.found
        assert "share no structure" in estimate.reason
        assert estimate.significance < estimate.threshold


def test_predict_takes_pairs_and_says_what_it_needs(tmp_path, geometry):
    mic = SimMicroscope(ProceduralSample("beads", 4), frames_dir=tmp_path, time_scale=0)
    model = geometry(mic)
    dof = model.depth_of_field_um
    pairs = np.stack([_pair(mic, model, 3 * dof), _pair(mic, model, -3 * dof)])
    assert model.predict(pairs) == pytest.approx([3 * dof, -3 * dof], abs=0.25 * dof)
    with pytest.raises(ValueError, match=r"frame pairs shaped \(2, H, W\)"):
        model.predict(pairs[0, 0])
    with pytest.raises(ValueError, match="not both 0"):
        DualLEDDefocus((0.0, 0.0), ("a", "b"), 1.0)
