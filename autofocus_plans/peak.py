"""Peak finding on a focus curve: sub-step refinement and a significance test."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

__all__ = ["PeakFit", "curve_contrast", "fit_peak", "log_parabola_vertex"]


@dataclass(frozen=True)
class PeakFit:
    """A Gaussian-plus-offset fit ``amplitude * exp(-(z - center)^2 / (2 sigma^2)) + offset``.

    ``r2`` is the coefficient of determination over the fitted points (1 is
    perfect); ``method`` says how the center was found (``gaussian``,
    ``log_parabola`` or ``argmax`` when nothing better was possible).
    """

    center: float
    amplitude: float
    sigma: float
    offset: float
    r2: float
    points: int
    method: str


def _gaussian(z, amplitude, center, sigma, offset):
    return amplitude * np.exp(-0.5 * ((z - center) / sigma) ** 2) + offset


def log_parabola_vertex(z: np.ndarray, values: np.ndarray) -> float | None:
    """Vertex of a parabola through ``log(values)`` (exact for a Gaussian peak)."""
    if len(z) < 3 or np.any(values <= 0):
        return None
    a, b, _ = np.polyfit(z, np.log(values), 2)
    if a >= 0:
        return None
    return float(-b / (2 * a))


def curve_contrast(values: np.ndarray) -> float:
    """How far the peak rises above the curve's floor, relative to the floor."""
    values = np.asarray(values, dtype=float)
    floor = float(np.min(values))
    if floor <= 0:
        return float("inf") if np.max(values) > 0 else 0.0
    return float((np.max(values) - floor) / floor)


def fit_peak(z, values, *, half_width: int = 3) -> PeakFit:
    """Refine the maximum of a focus curve beyond the sampling step.

    Fits a Gaussian with offset to the maximum and up to ``half_width``
    points each side, starting from the log-parabola vertex of the three
    highest neighbouring points; a fit whose center leaves the fitted span
    falls back to that vertex.
    """
    z = np.asarray(z, dtype=float)
    values = np.asarray(values, dtype=float)
    order = np.argsort(z)
    z, values = z[order], values[order]
    k = int(np.argmax(values))
    lo, hi = max(0, k - half_width), min(len(z), k + half_width + 1)
    zs, vs = z[lo:hi], values[lo:hi]
    guess = z[k]
    method = "argmax"
    if 0 < k < len(z) - 1:
        vertex = log_parabola_vertex(z[k - 1 : k + 2], values[k - 1 : k + 2])
        if vertex is not None and z[k - 1] <= vertex <= z[k + 1]:
            guess, method = vertex, "log_parabola"
    if len(zs) >= 5:
        span = zs[-1] - zs[0]
        p0 = [vs.max() - vs.min(), guess, max(span / 4, 1e-6), vs.min()]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OptimizeWarning)
                params, _ = curve_fit(_gaussian, zs, vs, p0=p0, maxfev=2000)
            amplitude, center, sigma, offset = (float(p) for p in params)
            if amplitude > 0 and zs[0] <= center <= zs[-1]:
                residual = vs - _gaussian(zs, *params)
                total = np.sum((vs - vs.mean()) ** 2)
                r2 = float(1 - np.sum(residual**2) / total) if total > 0 else 0.0
                return PeakFit(center, amplitude, abs(sigma), offset, r2, len(zs), "gaussian")
        except (RuntimeError, ValueError):
            pass
    return PeakFit(
        float(guess),
        float(values[k]),
        float("nan"),
        float(values.min()),
        float("nan"),
        len(zs),
        method,
    )
