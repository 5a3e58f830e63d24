"""Conformal intervals and sample novelty (numpy only, no network)."""

import math

import numpy as np
import pytest
from scipy import stats

from models.uncertainty import (
    Calibration,
    DefocusEstimate,
    calibrate,
    conformal_quantile,
    sample_spectrum,
    view_corners,
)


def test_conformal_quantile_is_the_finite_sample_order_statistic():
    scores = np.arange(1.0, 20.0)  # 19 scores
    assert conformal_quantile(scores, 0.9) == 18.0  # ceil(20 * 0.9) = 18th smallest
    assert conformal_quantile(scores[:8], 0.9) == math.inf  # too few for 90 %
    with pytest.raises(ValueError, match="coverage must be between 0 and 1"):
        conformal_quantile(scores, 1.0)


def test_calibrated_intervals_cover_new_predictions_like_the_calibration_ones():
    # predictions whose error scales with the spread of their views, as a model's may
    rng = np.random.default_rng(0)

    def draw(n):
        scale = rng.uniform(0.5, 3.0, n)
        truth = rng.uniform(-20, 20, n)
        error = scale * rng.standard_normal(n)
        views = truth[:, None] + error[:, None] + scale[:, None] * rng.standard_normal((n, 9))
        return views, truth

    calibration = calibrate(*draw(200), fields=10, coverage=0.9)
    views, truth = draw(4000)
    estimates = [DefocusEstimate.from_views(v, None, calibration) for v in views]
    errors = np.abs([e.defocus_um for e in estimates] - truth)
    covered = np.mean(errors <= [e.interval_um for e in estimates])
    # at least the stated coverage, less what 4000 draws can scatter below it by chance
    assert covered >= stats.binom.ppf(1e-4, len(truth), 0.9) / len(truth), covered
    assert all(e.familiar and math.isnan(e.novelty) for e in estimates[:5])
    round_trip = Calibration.from_dict(calibration.to_dict())
    assert round_trip.quantile == calibration.quantile and round_trip.novelty is None


def test_sample_spectrum_ignores_brightness_and_tells_samples_apart():
    rng = np.random.default_rng(1)
    fine = 1000 + 50 * rng.standard_normal((256, 256))
    y, x = np.indices((256, 256))
    coarse = 1000 + 50 * np.sin(x / 9.0) * np.cos(y / 13.0)
    assert np.allclose(sample_spectrum(3 * fine, 128), sample_spectrum(fine, 128))
    assert np.abs(sample_spectrum(fine, 128) - sample_spectrum(coarse, 128)).max() > 5


def test_novelty_flags_a_sample_unlike_the_training_frames():
    rng = np.random.default_rng(2)
    _, x = np.indices((256, 256))

    def frame(kind):
        if kind == "stripes":
            period = rng.uniform(8, 12)
            return 1000 + 80 * np.sin(2 * np.pi * x / period) + 5 * rng.standard_normal(x.shape)
        return 1000 + 80 * rng.standard_normal(x.shape)

    frames = [frame("stripes") for _ in range(60)]
    spectra = np.stack([sample_spectrum(f, 128) for f in frames])
    is_train = np.arange(60) < 40
    views = np.zeros((20, 9))
    calibration = calibrate(views, np.zeros(20), fields=20, spectra=spectra, is_train=is_train)
    assert math.isfinite(calibration.novelty_limit)
    familiar = [
        DefocusEstimate.from_views(np.zeros(9), sample_spectrum(frame("stripes"), 128), calibration)
        for _ in range(40)
    ]
    strange = DefocusEstimate.from_views(
        np.zeros(9), sample_spectrum(frame("noise"), 128), calibration
    )
    assert not strange.familiar and strange.novelty > 1
    # stated: 95 % of frames like the calibration ones count as familiar
    assert sum(e.familiar for e in familiar) >= stats.binom.ppf(1e-4, 40, 0.95)
    stored = Calibration.from_dict(calibration.to_dict())
    assert stored.novelty_of(sample_spectrum(frames[0], 128)) == pytest.approx(
        calibration.novelty_of(sample_spectrum(frames[0], 128)), rel=1e-4
    )


def test_views_span_the_frame():
    corners = view_corners((256, 256), 128)
    assert len(corners) == 9 and (0, 0) in corners and (128, 128) in corners and (64, 64) in corners
