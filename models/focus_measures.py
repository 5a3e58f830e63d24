"""Classic image-sharpness measures used to find focus.

Every measure takes a 2-D array of any integer or float dtype and returns a
Python float; larger means sharper. Arrays are converted to float64 before any
arithmetic, so uint16 frames cannot overflow. Axis convention: ``i`` is the
first array axis (rows, image *y*), ``j`` the second (columns, image *x*).

This module is numpy-only on purpose: importing it never imports torch.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "FOCUS_MEASURES",
    "brenner",
    "brenner_noise",
    "fft_bandpass",
    "focus_measure",
    "normalized_variance",
    "squared_gradient",
    "tenengrad",
    "vollath_f4",
]


def _as_image(image: ArrayLike, *, min_size: int = 3) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim != 2:
        raise ValueError(
            f"A focus measure needs a 2-D image, but got an array of shape {array.shape}; "
            "pass a single frame (e.g. frame[0] from a stack)."
        )
    if min(array.shape) < min_size:
        raise ValueError(
            f"A focus measure needs an image of at least {min_size}x{min_size} pixels, "
            f"but got shape {array.shape}; use a larger ROI."
        )
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise TypeError(
            f"A focus measure needs an integer or float image, not dtype {array.dtype}; "
            "convert the frame with .astype(float)."
        )
    image64 = array.astype(np.float64, copy=False)
    if not np.all(np.isfinite(image64)):
        raise ValueError(
            "A focus measure got an image containing NaN or infinite pixels; "
            "mask or replace them (e.g. np.nan_to_num) first."
        )
    return image64


def brenner(image: ArrayLike) -> float:
    """Brenner gradient ``B = sum_i sum_j (g(i, j) - g(i + 2, j))**2``.

    ``i`` runs along the first axis (rows), so the difference is taken between
    pixels two rows apart.
    """
    g = _as_image(image)
    diff = g[2:, :] - g[:-2, :]
    return float(np.einsum("ij,ij->", diff, diff))


def brenner_noise(image: ArrayLike, variance: ArrayLike) -> float:
    """Standard deviation of :func:`brenner` caused by pixel noise of the given ``variance``.

    ``variance`` is the noise variance of each pixel (same shape as ``image``,
    or a scalar), e.g. from the camera's noise model: shot noise
    ``(g - offset) / gain_e_per_adu`` plus read noise and quantisation, in
    ADU². The Brenner gradient of a noisy frame is
    ``sum (d + e)**2 = B + 2 sum d e + sum e**2`` with ``e`` the difference of
    the noise two rows apart: the linear term's variance is exact, the
    quadratic term's is approximated by ``2 sum var(e)**2``.
    """
    g = _as_image(image)
    v = np.broadcast_to(np.asarray(variance, dtype=np.float64), g.shape).astype(np.float32)
    diff = (g[2:, :] - g[:-2, :]).astype(np.float32)
    # every pixel enters two differences: +d one row pair up, -d the one below, so its
    # coefficient in the linear term is c = 2 (d_(m-2) - d_m) (zero beyond the edges)
    padded = np.pad(diff, ((2, 2), (0, 0)))
    c = 2 * (padded[:-2, :] - padded[2:, :])
    up, down = v[2:, :], v[:-2, :]
    cross = float(np.einsum("ij,ij->", up, down, dtype=np.float64))
    squares = float(np.einsum("ij,ij->", v, v, dtype=np.float64))
    # the differences of a noisy frame carry the noise too: remove its share of c**2
    # (E[c**2] gains 4 (4 v_m + v_(m-2) + v_(m+2)) for Gaussian noise)
    noise_share = 16 * squares + 8 * cross
    linear = max(float(np.einsum("ij,ij,ij->", c, c, v, dtype=np.float64)) - noise_share, 0.0)
    pairs = (
        float(np.einsum("ij,ij->", up, up, dtype=np.float64))
        + float(np.einsum("ij,ij->", down, down, dtype=np.float64))
        + 2 * cross
    )
    shared = v[2:-2, :]  # e_k and e_(k+2) both contain the pixel two rows up: cov = -v
    quadratic = 2 * pairs + 4 * float(np.einsum("ij,ij->", shared, shared, dtype=np.float64))
    return float(np.sqrt(linear + quadratic))


def normalized_variance(image: ArrayLike) -> float:
    """Variance divided by the mean intensity (Groen et al.); grows linearly with brightness."""
    g = _as_image(image)
    mean = g.mean()
    if mean == 0:
        return 0.0
    return float(g.var() / mean)


def _sobel(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from scipy import ndimage

    return ndimage.sobel(g, axis=0, mode="reflect"), ndimage.sobel(g, axis=1, mode="reflect")


def tenengrad(image: ArrayLike) -> float:
    """Sum of squared Sobel gradient magnitudes (Tenengrad)."""
    gi, gj = _sobel(_as_image(image))
    return float(np.sum(gi * gi + gj * gj))


def vollath_f4(image: ArrayLike) -> float:
    """Vollath's F4 autocorrelation measure along the first axis."""
    g = _as_image(image)
    return float(np.sum(g[:-1, :] * g[1:, :]) - np.sum(g[:-2, :] * g[2:, :]))


def squared_gradient(image: ArrayLike) -> float:
    """Sum of squared differences between neighbouring pixels along the first axis."""
    g = _as_image(image)
    diff = g[1:, :] - g[:-1, :]
    return float(np.einsum("ij,ij->", diff, diff))


def fft_bandpass(image: ArrayLike, low: float = 0.05, high: float = 0.35) -> float:
    """Fraction of spectral power between ``low`` and ``high`` cycles/pixel.

    The DC term and the lowest frequencies carry illumination, the highest
    carry noise; sharp detail lives in between. Normalised by total non-DC
    power so it does not depend on brightness.
    """
    if not 0 <= low < high <= 0.5 * np.sqrt(2):
        raise ValueError(
            f"fft_bandpass needs 0 <= low < high <= 0.707 cycles/pixel, got low={low}, high={high}."
        )
    g = _as_image(image)
    power = np.abs(np.fft.rfft2(g - g.mean())) ** 2
    fi = np.fft.fftfreq(g.shape[0])[:, None]
    fj = np.fft.rfftfreq(g.shape[1])[None, :]
    radius = np.hypot(fi, fj)
    total = power.sum()
    if total == 0:
        return 0.0
    band = (radius >= low) & (radius <= high)
    return float(power[band].sum() / total)


FOCUS_MEASURES: dict[str, Callable[[ArrayLike], float]] = {
    "brenner": brenner,
    "normalized_variance": normalized_variance,
    "tenengrad": tenengrad,
    "vollath_f4": vollath_f4,
    "squared_gradient": squared_gradient,
    "fft_bandpass": fft_bandpass,
}


def focus_measure(name: str) -> Callable[[ArrayLike], float]:
    """Return the focus measure called ``name`` (one of :data:`FOCUS_MEASURES`)."""
    try:
        return FOCUS_MEASURES[name]
    except KeyError:
        known = ", ".join(sorted(FOCUS_MEASURES))
        raise ValueError(f"Unknown focus measure {name!r}; choose one of: {known}.") from None
