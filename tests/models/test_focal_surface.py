"""Fitting a focal surface through focus measured at a few XY points."""

from __future__ import annotations

import numpy as np
import pytest

from models.focal_surface import FocalSurfaceFit, fit_focal_surface


def _grid(n: int, half: float = 400.0):
    xs, ys = np.meshgrid(np.linspace(-half, half, n), np.linspace(-half, half, n))
    return xs.ravel(), ys.ravel()


def test_a_tilted_plane_is_recovered_and_auto_keeps_it_a_plane():
    x, y = _grid(4)
    rng = np.random.default_rng(1)
    z = 3.0 + 0.01 * x - 0.004 * y + rng.normal(0, 0.05, x.size)
    fit = fit_focal_surface(x, y, z)
    assert fit.kind in ("plane", "quadratic")
    tx, ty = rng.uniform(-400, 400, (2, 50))
    assert np.abs(fit.predict(tx, ty) - (3.0 + 0.01 * tx - 0.004 * ty)).max() < 0.2
    assert fit.loo_rms_um < 0.2


def test_curvature_needs_a_curved_surface():
    x, y = _grid(4)
    z = 2e-5 * (x**2 + y**2)
    fit = fit_focal_surface(x, y, z)
    assert fit.kind in ("quadratic", "thin_plate")
    assert fit.predict(200.0, -100.0) == pytest.approx(2e-5 * (200**2 + 100**2), abs=0.05)


def test_refusals_are_left_out_and_too_few_points_refuse_to_fit():
    with pytest.raises(ValueError, match="at least 3 points"):
        fit_focal_surface([0, 100, 200], [0, 100, 0], [1.0, np.nan, 2.0])
    with pytest.raises(ValueError, match="not all on one line"):
        fit_focal_surface([0, 100, 200, 300], [0, 100, 200, 300], [1, 2, 3, 4])
    with pytest.raises(ValueError, match="quadratic focal surface needs at least 6"):
        fit_focal_surface([0, 100, 0, 100], [0, 0, 100, 100], [1, 2, 3, 4], kind="quadratic")
    with pytest.raises(ValueError, match="Unknown surface kind"):
        fit_focal_surface([0, 1, 0], [0, 0, 1], [0, 0, 0], kind="spline")


def test_round_trip_through_plain_values():
    x, y = _grid(4)
    z = np.sin(x / 300) + 0.001 * y
    for kind in ("plane", "quadratic", "thin_plate"):
        fit = fit_focal_surface(x, y, z, kind=kind)
        again = FocalSurfaceFit.from_dict(fit.to_dict())
        assert again.kind == kind
        assert np.allclose(again.predict(x + 17, y - 5), fit.predict(x + 17, y - 5))
    with pytest.raises(ValueError, match="Not a focal-surface description"):
        FocalSurfaceFit.from_dict({"points": []})
