"""Signed defocus from two exposures under mirrored off-axis LEDs (physics, no training).

Under a tilted plane wave a sample ``dz`` from focus forms its image displaced
sideways by ``dz * tan(theta)``. Two exposures, one lit by an LED at
``+theta`` and one by the mirrored LED at ``-theta``, are therefore displaced
against each other by ``dz * (tan(theta_a) - tan(theta_b))`` along the LEDs'
axis, whatever the sample: the cross-correlation of the two frames peaks at
that displacement, and its sign is the sign of the defocus. This is the
two-angle principle behind single-frame LED autofocus (Liao et al. 2017, who
multiplex both LEDs in one exposure and read ``|dz|`` from the
autocorrelation); two exposures give the sign directly and keep the peak
clear of the zero-lag peak near focus.

A transparent (phase) sample is seen with opposite contrast under the two
LEDs (differential phase contrast), so its correlation peak is negative: the
peak of ``|correlation|`` is used. Near focus, mixed amplitude and phase
structure biases the peak by a fraction of a depth of field; far from focus
the estimate is limited by the frame (the displacement must stay well inside
it).

The estimator needs no training: only the displacement per µm of defocus
(pixels, from the LED angles and the pixel size at the sample), which the
plans compute from the devices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage, stats

__all__ = ["DualLEDDefocus", "ShiftEstimate"]


@dataclass(frozen=True)
class ShiftEstimate:
    """One defocus estimate and the figures behind it.

    ``shift_px`` is the displacement (rows, columns) of the second frame
    against the first; ``correlation`` the normalised cross-correlation at
    that displacement (1 for identical frames, negative for opposite
    contrast); ``significance`` its size over the correlation's own scatter
    away from the peak, and ``threshold`` what a pair of unrelated frames
    reaches with probability ``false_alarm``. ``found`` is False when the
    frames share no structure that stands out (blank field, no light) or the
    displacement lies beyond what the frame can show.
    """

    defocus_um: float
    shift_px: tuple[float, float]
    correlation: float
    significance: float
    threshold: float
    found: bool
    reason: str = ""


def _prepared(frame: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-variance frame, its slow illumination gradient removed, edges tapered."""
    image = np.asarray(frame, dtype=np.float64)
    image = image - ndimage.gaussian_filter(image, max(image.shape) / 16, mode="reflect")
    taper = np.sqrt(np.outer(np.hanning(image.shape[0]), np.hanning(image.shape[1])))
    image = image * taper
    image -= image.mean()
    norm = float(np.sqrt(np.sum(image * image)))
    return image / norm if norm > 0 else image


def _vertex(minus: float, centre: float, plus: float) -> float:
    """Offset of a parabola's vertex through three equally spaced values (-0.5..0.5)."""
    curvature = minus - 2 * centre + plus
    if curvature == 0:
        return 0.0
    return float(np.clip(0.5 * (minus - plus) / curvature, -0.5, 0.5))


@dataclass
class DualLEDDefocus:
    """Defocus from a pair of frames under mirrored off-axis LEDs.

    Parameters
    ----------
    shift_px_per_um : (float, float)
        Displacement (rows, columns) of the second frame against the first
        per µm of defocus ``z - z_focus``.
    patterns : (str, str)
        LED patterns of the first and second exposure.
    depth_of_field_um : float
        For the figures' units and the default reach.
    false_alarm : float
        Probability that two unrelated frames (no common structure) give an
        estimate.
    name : str
        Shown in run metadata.
    metadata : dict
        Anything else to record (optics, how the geometry was obtained).
    """

    shift_px_per_um: tuple[float, float]
    patterns: tuple[str, str]
    depth_of_field_um: float
    false_alarm: float = 1e-3
    name: str = "dual-LED shift"
    metadata: dict[str, Any] = field(default_factory=dict)

    architecture = "DualLEDShift"
    #: exposures per estimate
    shots = 2
    file_sha256 = ""
    path = None

    def __post_init__(self) -> None:
        vector = np.asarray(self.shift_px_per_um, dtype=float)
        if vector.shape != (2,) or not np.all(np.isfinite(vector)) or not np.any(vector):
            raise ValueError(
                f"shift_px_per_um must be two finite numbers, not both 0, got "
                f"{self.shift_px_per_um!r}: light two LEDs at different angles."
            )
        if not self.depth_of_field_um > 0:
            raise ValueError(f"depth_of_field_um must be positive, got {self.depth_of_field_um}.")
        self.shift_px_per_um = (float(vector[0]), float(vector[1]))

    @property
    def _vector(self) -> np.ndarray:
        return np.asarray(self.shift_px_per_um)

    def reach_um(self, shape: tuple[int, int]) -> float:
        """Largest |defocus| a frame of ``shape`` shows: the displacement within a quarter of it."""
        per_um = np.abs(self._vector)
        limits = [n / 4 / p for n, p in zip(shape, per_um, strict=True) if p > 0]
        return float(min(limits))

    @property
    def trained_range_um(self) -> tuple[float, float]:
        reach = float(self.metadata.get("reach_um", 8 * self.depth_of_field_um))
        return -reach, reach

    def estimate(self, first: np.ndarray, second: np.ndarray) -> ShiftEstimate:
        """Estimate the defocus from the frames under the first and the second pattern."""
        a, b = _prepared(first), _prepared(second)
        if a.shape != b.shape:
            raise ValueError(f"The two frames differ in shape: {a.shape} and {b.shape}.")
        shape = a.shape
        # full linear cross-correlation (zero-padded): c[d] = sum a(x) b(x + d)
        size = [2 * n for n in shape]
        spectrum = np.conj(np.fft.rfft2(a, s=size)) * np.fft.rfft2(b, s=size)
        corr = np.fft.fftshift(np.fft.irfft2(spectrum, s=size))
        centre = np.array(size) // 2
        reach_px = np.abs(self._vector) * self.reach_um(shape)
        # only displacements along the LEDs' axis (and a pixel or two across it) are defocus
        rows, cols = np.indices(corr.shape)
        offset = np.stack([rows - centre[0], cols - centre[1]], axis=-1).astype(float)
        axis = self._vector / np.linalg.norm(self._vector)
        across = np.abs(offset @ np.array([-axis[1], axis[0]]))
        radius = np.hypot(offset[..., 0], offset[..., 1])
        within = radius <= np.linalg.norm(reach_px) + 1
        window = within & (across <= 2.0)
        magnitude = np.where(window, np.abs(corr), -np.inf)
        peak = np.unravel_index(int(np.argmax(magnitude)), corr.shape)
        value = float(corr[peak])
        # the scatter of the correlation at the same lags off the LEDs' axis, where no
        # displacement is expected: the noise and sample structure a peak must stand out of
        away = within & (across > 4.0)
        scatter = (
            float(stats.median_abs_deviation(corr[away], scale="normal")) if away.any() else 0.0
        )
        searched = int(window.sum())
        threshold = float(stats.norm.isf(self.false_alarm / (2 * max(searched, 1))))
        significance = abs(value) / scatter if scatter > 0 else math.inf
        sub = []
        for k in (0, 1):
            step = np.zeros(2, dtype=int)
            step[k] = 1
            p = np.array(peak)
            if 0 < p[k] < corr.shape[k] - 1:
                sign = math.copysign(1.0, value)
                sub.append(
                    _vertex(
                        sign * corr[tuple(p - step)], sign * value, sign * corr[tuple(p + step)]
                    )
                )
            else:
                sub.append(0.0)
        shift = np.array(peak, dtype=float) - centre + np.array(sub)
        defocus = float(shift @ self._vector / (self._vector @ self._vector))
        found, reason = True, ""
        if not significance >= threshold:
            found = False
            reason = (
                f"the two frames share no structure that stands out: correlation peak "
                f"{significance:.1f}x its scatter, {threshold:.1f}x needed (blank field, no light, "
                "or too far from focus)"
            )
        elif abs(defocus) > self.reach_um(shape) * 0.999:
            found = False
            reason = f"the displacement reaches the edge of what a {shape} frame shows"
        return ShiftEstimate(
            defocus,
            (float(shift[0]), float(shift[1])),
            value,
            significance,
            threshold,
            found,
            reason,
        )

    def predict(self, frames: Sequence[np.ndarray] | np.ndarray) -> np.ndarray | float:
        """Signed defocus (µm) of a pair ``(2, H, W)``, or of each pair in ``(N, 2, H, W)``."""
        frames = np.asarray(frames)
        if frames.ndim == 3 and frames.shape[0] == 2:
            return self.estimate(frames[0], frames[1]).defocus_um
        if frames.ndim == 4 and frames.shape[1] == 2:
            return np.array([self.estimate(p[0], p[1]).defocus_um for p in frames])
        raise ValueError(
            f"DualLEDDefocus.predict needs frame pairs shaped (2, H, W) or (N, 2, H, W), got "
            f"{frames.shape}: one frame under each of {self.patterns}."
        )

    def __repr__(self) -> str:
        return (
            f"DualLEDDefocus({self.patterns[0]!r} / {self.patterns[1]!r}, "
            f"{np.linalg.norm(self._vector):.2f} px per µm)"
        )
