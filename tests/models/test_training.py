"""Training: what a checkpoint learns about the estimator it will be checked against."""

import numpy as np
import pytest
from scipy import ndimage

from models.dual_led import DualLEDDefocus


def _pairs(shifts_px, seed=0):
    rng = np.random.default_rng(seed)
    pairs = []
    for shift in shifts_px:
        sample = ndimage.gaussian_filter(rng.normal(size=(256, 256)), 2.0)
        second = np.roll(sample, int(shift), axis=1)
        pairs.append(np.stack([1000 + 300 * sample, 1000 + 300 * second]))
    return np.stack(pairs)


def test_the_reference_estimators_errors_on_the_validation_fields_are_stored():
    pytest.importorskip("torch")
    from models import DefocusExamples, train

    shifts = np.tile([-12, -6, 0, 6, 12], 8)
    fov = np.repeat([f"f{k}" for k in range(8)], 5)
    # the reference reads 1 px of displacement as 1 µm: it is right on these pairs
    reference = DualLEDDefocus((0.0, 1.0), ("a", "b"), depth_of_field_um=5.0)
    pairs = DefocusExamples(_pairs(shifts), shifts.astype(float), fov, depth_of_field_um=5.0)
    model = train(pairs, epochs=1, crops_per_frame=1, progress=False, reference=reference)
    figures = model.metadata["reference"]
    assert figures["name"] == "dual-LED shift" and figures["frames"] == 10
    assert figures["found"] == 1.0 and figures["p95_um"] < 0.5

    frames = DefocusExamples(pairs.frames[:, 0], pairs.defocus_um, fov, depth_of_field_um=5.0)
    with pytest.raises(ValueError, match=r"reads frame pairs \(N, 2, H, W\)"):
        train(frames, epochs=1, crops_per_frame=1, progress=False, reference=reference)
