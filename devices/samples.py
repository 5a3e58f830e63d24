"""Samples for the simulated microscope.

A thin sample is a complex transmittance ``t = A * exp(i φ)`` (amplitude
``A <= 1``, phase ``φ`` in radians) rendered on the simulation grid. Procedural
samples are periodic over the field so the FFT-based optics has no seam.
A recorded z-stack bypasses the optics: it is real intensity already.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

from models.focus_measures import brenner

__all__ = [
    "SAMPLE_COMPONENTS",
    "SAMPLE_FAMILIES",
    "ZSTACK_FITS",
    "ImageSample",
    "ProceduralSample",
    "Sample",
    "ZStackSample",
]

SAMPLE_FAMILIES = ("cells", "beads", "tissue", "bars")


class Sample(ABC):
    """A thin sample: complex transmittance on any grid."""

    #: short label recorded in run metadata
    label: str = "sample"

    @abstractmethod
    def transmittance(self, shape: tuple[int, int], dx_um: float) -> np.ndarray:
        """Complex64 transmittance on a ``shape`` grid of ``dx_um`` pitch."""

    def describe(self) -> dict:
        return {"sample": self.label}


def _periodic_coords(shape: tuple[int, int], dx_um: float) -> tuple[np.ndarray, np.ndarray]:
    y = np.arange(shape[0], dtype=np.float32)[:, None] * dx_um
    x = np.arange(shape[1], dtype=np.float32)[None, :] * dx_um
    return y, x


def _wrap(d: np.ndarray, period: float) -> np.ndarray:
    return (d + period / 2) % period - period / 2


SAMPLE_COMPONENTS = ("both", "amplitude", "phase")


class ProceduralSample(Sample):
    """Seeded procedural sample of one family: ``cells``, ``beads``, ``tissue`` or ``bars``.

    The same family, seed and grid always give the same transmittance; a new
    seed is a new field of view.

    Parameters
    ----------
    family : str
        One of :data:`SAMPLE_FAMILIES`.
    seed : int
        Field of view.
    contrast : float
        Scales the optical density and the phase of the sample (1 is the
        family's usual stain; 0.2 a faint, barely stained one).
    component : str
        ``"both"``, ``"amplitude"`` (phase removed: a pure absorber) or
        ``"phase"`` (absorption removed: an unstained, transparent sample; the
        chrome of ``bars`` becomes a 1 rad phase etch).
    """

    def __init__(
        self,
        family: str = "cells",
        seed: int = 0,
        *,
        contrast: float = 1.0,
        component: str = "both",
    ) -> None:
        if family not in SAMPLE_FAMILIES:
            raise ValueError(
                f"Unknown sample family {family!r}; choose one of: {', '.join(SAMPLE_FAMILIES)}."
            )
        if not (isinstance(contrast, int | float) and contrast > 0):
            raise ValueError(f"Sample contrast must be a positive number, got {contrast!r}.")
        if component not in SAMPLE_COMPONENTS:
            raise ValueError(
                f"Unknown sample component {component!r}; choose one of: "
                f"{', '.join(SAMPLE_COMPONENTS)}."
            )
        self.family = family
        self.seed = int(seed)
        self.contrast = float(contrast)
        self.component = component
        suffix = "" if component == "both" else f"/{component}"
        suffix += "" if self.contrast == 1 else f"/x{self.contrast:g}"
        self.label = f"{family}:{self.seed}{suffix}"

    def describe(self) -> dict:
        return {
            "sample": self.label,
            "sample_family": self.family,
            "sample_seed": self.seed,
            "sample_contrast": self.contrast,
            "sample_component": self.component,
        }

    def transmittance(self, shape: tuple[int, int], dx_um: float) -> np.ndarray:
        return _render_procedural(
            self.family, self.seed, tuple(shape), float(dx_um), self.contrast, self.component
        )


@lru_cache(maxsize=16)
def _render_procedural(
    family: str,
    seed: int,
    shape: tuple[int, int],
    dx_um: float,
    contrast: float = 1.0,
    component: str = "both",
) -> np.ndarray:
    rng = np.random.default_rng([seed, SAMPLE_FAMILIES.index(family)])
    render = {"cells": _cells, "beads": _beads, "tissue": _tissue, "bars": _bars}[family]
    amplitude, phase = render(rng, shape, dx_um)
    density = -np.log(np.clip(amplitude, 1e-6, 1))
    if component == "phase" and not np.any(phase):
        phase = density / max(float(density.max()), 1e-12)  # a 1 rad etch where chrome was
    if component == "phase":
        density = np.zeros_like(density)
    elif component == "amplitude":
        phase = np.zeros_like(phase)
    t = np.exp(-contrast * density) * np.exp(1j * contrast * phase)
    t = t.astype(np.complex64)
    t.setflags(write=False)
    return t


def _soften(a: np.ndarray, dx_um: float, sigma_um: float = 0.3) -> np.ndarray:
    return ndimage.gaussian_filter(a, sigma_um / dx_um, mode="wrap")


def _ellipses(
    rng: np.random.Generator,
    shape: tuple[int, int],
    dx_um: float,
    count: int,
    semi_axes_um: tuple[float, float],
) -> list[np.ndarray]:
    """Normalised radius maps (``< 1`` inside) of ``count`` random ellipses."""
    y, x = _periodic_coords(shape, dx_um)
    ly, lx = shape[0] * dx_um, shape[1] * dx_um
    maps = []
    for _ in range(count):
        cy, cx = rng.uniform(0, ly), rng.uniform(0, lx)
        a, b = rng.uniform(*semi_axes_um, size=2)
        theta = rng.uniform(0, np.pi)
        dy, dx = _wrap(y - cy, ly), _wrap(x - cx, lx)
        u = dx * np.cos(theta) + dy * np.sin(theta)
        v = -dx * np.sin(theta) + dy * np.cos(theta)
        maps.append(np.sqrt((u / a) ** 2 + (v / b) ** 2))
    return maps


def _cells(rng, shape, dx_um):
    area = shape[0] * shape[1] * dx_um**2
    count = max(3, int(area / 350))
    phase = np.zeros(shape, np.float32)
    absorb = np.zeros(shape, np.float32)
    for r in _ellipses(rng, shape, dx_um, count, (4.0, 10.0)):
        inside = r < 1
        dome = np.sqrt(np.clip(1 - r**2, 0, 1))
        # stained cells (as in routine brightfield): absorption carries most of the contrast
        phase += rng.uniform(0.2, 0.5) * dome
        absorb += rng.uniform(0.05, 0.15) * inside
        nucleus = r < rng.uniform(0.3, 0.45)
        phase += 0.2 * nucleus
        absorb += rng.uniform(0.2, 0.4) * nucleus
    # granular cytoplasm: fine texture inside the cells
    grain = _soften(rng.standard_normal(shape).astype(np.float32), dx_um, 0.4)
    grain *= 0.1 / (grain.std() + 1e-9)
    phase += grain * (phase > 0)
    return np.exp(-_soften(absorb, dx_um)), _soften(phase, dx_um)


def _beads(rng, shape, dx_um):
    area = shape[0] * shape[1] * dx_um**2
    count = max(5, int(area / 50))
    absorb = np.zeros(shape, np.float32)
    phase = np.zeros(shape, np.float32)
    for r in _ellipses(rng, shape, dx_um, count, (0.6, 2.0)):
        dome = np.sqrt(np.clip(1 - r**2, 0, 1))
        absorb += rng.uniform(0.3, 1.2) * dome
        phase += rng.uniform(0.5, 1.5) * dome
    return np.exp(-_soften(absorb, dx_um, 0.2)), _soften(phase, dx_um, 0.2)


def _band_noise(rng, shape, dx_um, low_um, high_um):
    noise = rng.standard_normal(shape).astype(np.float32)
    fy = np.fft.fftfreq(shape[0], dx_um)[:, None]
    fx = np.fft.fftfreq(shape[1], dx_um)[None, :]
    f = np.hypot(fy, fx)
    band = (f >= 1 / high_um) & (f <= 1 / low_um)
    field = np.real(np.fft.ifft2(np.fft.fft2(noise) * band * (1 / np.maximum(f, 1e-6))))
    return (field / (field.std() + 1e-12)).astype(np.float32)


def _tissue(rng, shape, dx_um):
    stroma = _band_noise(rng, shape, dx_um, 1.0, 25.0)
    fibres = _band_noise(rng, shape, dx_um, 0.8, 4.0)
    # a stained section: absorption dominates, phase is modest
    absorb = 0.3 + 0.2 * stroma + 0.1 * np.abs(fibres)
    phase = 0.4 * stroma + 0.2 * fibres
    return np.exp(-np.clip(absorb, 0, None)), phase


def _bars(rng, shape, dx_um):
    """USAF-like chrome target: triplets of bars at several periods, both orientations."""
    y, x = _periodic_coords(shape, dx_um)
    ly, lx = shape[0] * dx_um, shape[1] * dx_um
    chrome = np.zeros(shape, bool)
    periods = [1.5, 2.0, 3.0, 4.0, 6.0, 8.0]
    offset_y, offset_x = rng.uniform(0, ly), rng.uniform(0, lx)
    cols = 3
    cell_y, cell_x = ly / 2, lx / cols
    for k, period in enumerate(periods):
        row, col = divmod(k, cols)
        oy = offset_y + row * cell_y + 0.1 * cell_y
        ox = offset_x + col * cell_x + 0.1 * cell_x
        length = min(5 * period, 0.35 * cell_x, 0.35 * cell_y)
        dy, dx = _wrap(y - oy, ly) % ly, _wrap(x - ox, lx) % lx
        # horizontal-period bars (vertical lines) then vertical-period bars beside them
        for b in range(3):
            chrome |= (dx >= b * period) & (dx < b * period + period / 2) & (dy < length)
            chrome |= (
                (dy >= b * period)
                & (dy < b * period + period / 2)
                & (dx >= length + period)
                & (dx < 2 * length + period)
            )
    amplitude = np.where(chrome, 0.08, 1.0).astype(np.float32)
    return _soften(amplitude, dx_um, 0.1), np.zeros(shape, np.float32)


def _fit_to_grid(image: np.ndarray, shape: tuple[int, int], zoom: float) -> np.ndarray:
    if abs(zoom - 1) > 1e-6:
        image = ndimage.zoom(image, zoom, order=1, mode="reflect")
    reps = (-(-shape[0] // image.shape[0]), -(-shape[1] // image.shape[1]))
    image = np.tile(image, reps) if reps != (1, 1) else image
    y0 = (image.shape[0] - shape[0]) // 2
    x0 = (image.shape[1] - shape[1]) // 2
    return image[y0 : y0 + shape[0], x0 : x0 + shape[1]]


class ImageSample(Sample):
    """A user-supplied image used as sample amplitude and/or phase.

    Parameters
    ----------
    amplitude : array, optional
        Transmitted amplitude; scaled so its maximum is 1.
    phase : array, optional
        Phase in radians.
    pixel_size_um : float, optional
        Pixel size of the given image at the sample; the image is resampled to
        the simulation grid. Without it, one image pixel is one grid pixel.
    label : str
        Name recorded in run metadata.
    """

    def __init__(
        self,
        amplitude: ArrayLike | None = None,
        phase: ArrayLike | None = None,
        *,
        pixel_size_um: float | None = None,
        label: str = "image",
    ) -> None:
        if amplitude is None and phase is None:
            raise ValueError("ImageSample needs an amplitude image, a phase image, or both.")
        arrays = {}
        for name, arr in (("amplitude", amplitude), ("phase", phase)):
            if arr is None:
                continue
            a = np.asarray(arr, dtype=np.float64)
            if a.ndim != 2 or min(a.shape) < 8:
                raise ValueError(
                    f"ImageSample {name} must be a 2-D image of at least 8x8 pixels, "
                    f"got shape {a.shape}."
                )
            if not np.all(np.isfinite(a)):
                raise ValueError(f"ImageSample {name} contains NaN or infinite pixels.")
            arrays[name] = a
        if "amplitude" in arrays:
            a = arrays["amplitude"]
            if a.min() < 0 or a.max() <= 0:
                raise ValueError("ImageSample amplitude must be non-negative and not all zero.")
            arrays["amplitude"] = a / a.max()
        if (
            "amplitude" in arrays
            and "phase" in arrays
            and (arrays["amplitude"].shape != arrays["phase"].shape)
        ):
            raise ValueError("ImageSample amplitude and phase must have the same shape.")
        if pixel_size_um is not None and pixel_size_um <= 0:
            raise ValueError(f"pixel_size_um must be positive, got {pixel_size_um}.")
        self._arrays = arrays
        self.pixel_size_um = pixel_size_um
        self.label = label
        self._cache: dict = {}

    def transmittance(self, shape: tuple[int, int], dx_um: float) -> np.ndarray:
        key = (tuple(shape), float(dx_um))
        if key not in self._cache:
            zoom = 1.0 if self.pixel_size_um is None else self.pixel_size_um / dx_um
            amp = self._arrays.get("amplitude")
            ph = self._arrays.get("phase")
            amp = np.ones(shape) if amp is None else _fit_to_grid(amp, shape, zoom)
            ph = np.zeros(shape) if ph is None else _fit_to_grid(ph, shape, zoom)
            t = (amp * np.exp(1j * ph)).astype(np.complex64)
            t.setflags(write=False)
            self._cache = {key: t}
        return self._cache[key]


ZSTACK_FITS = ("crop", "resample")


def _plane_noise_variance(plane: np.ndarray) -> float:
    """Variance of a plane's pixel noise, robust to the sample's own edges (Immerkaer's mask).

    The mask cancels any locally linear intensity; a median keeps the sparse
    structure of the sample out of the estimate.
    """
    mask = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)
    response = ndimage.convolve(plane, mask, mode="reflect")
    sigma = 1.4826 * float(np.median(np.abs(response))) / 6.0  # sum(mask**2) = 36
    return sigma * sigma


class ZStackSample:
    """A recorded z-stack replayed by Z: ``(z_um, image)`` pairs at any spacing.

    The stack is real intensity, so the simulated optics are bypassed; the
    camera adds its noise and the LED brightness scales the light (``off``
    gives a dark frame). ``mode="linear"`` interpolates between the two
    nearest planes, ``"nearest"`` serves the closest plane. The true focus is
    ``focus_um`` when given, else the Brenner maximum of the stack (refined
    by a parabola through the best plane and its neighbours).

    A plain blend of two recorded planes halves their noise variance
    midway, which would make every focus measure peak at each recorded plane
    (a comb with the stack's period, that a sweep can alias into a fake focus
    peak). Linear interpolation therefore adds fresh noise for the variance
    the blend removes, estimated from the planes themselves, so the noise
    level is the same at every Z, as on a microscope.

    Parameters
    ----------
    z_um : sequence of float
        Stage position of each plane (µm), any order and spacing.
    images : array (N, H, W)
        The planes.
    mode : str
        ``"linear"`` or ``"nearest"``.
    focus_um : float, optional
        Known focal plane (µm).
    fit : str
        When the planes and the sensor differ in size: ``"crop"`` takes the
        centre of the planes at their recorded scale (tiling smaller ones),
        ``"resample"`` scales the whole recorded field onto the sensor.
    pixel_size_um : float, optional
        Pixel size of the recorded planes at the sample; with ``"resample"``
        it gives the effective pixel size of the replayed frames.
    label : str
        Name recorded in run metadata.
    seed : int
        Seed of the interpolation noise.
    """

    def __init__(
        self,
        z_um: Sequence[float],
        images: ArrayLike,
        *,
        mode: str = "linear",
        focus_um: float | None = None,
        fit: str = "crop",
        pixel_size_um: float | None = None,
        label: str = "zstack",
        seed: int = 0,
    ) -> None:
        z = np.asarray(z_um, dtype=np.float64)
        stack = np.asarray(images, dtype=np.float32)
        if stack.ndim != 3 or stack.shape[0] != z.size or z.size < 2:
            raise ValueError(
                "ZStackSample needs at least two planes: z_um of length N and images of "
                f"shape (N, H, W); got {z.size} z values and images of shape {stack.shape}."
            )
        if mode not in ("linear", "nearest"):
            raise ValueError(f"ZStackSample mode must be 'linear' or 'nearest', got {mode!r}.")
        if fit not in ZSTACK_FITS:
            raise ValueError(
                f"ZStackSample fit must be 'crop' or 'resample', got {fit!r}; 'crop' keeps "
                "the recorded scale, 'resample' shows the whole recorded field."
            )
        if pixel_size_um is not None and not pixel_size_um > 0:
            raise ValueError(f"pixel_size_um must be positive, got {pixel_size_um!r}.")
        if len(np.unique(z)) != z.size:
            raise ValueError("ZStackSample z_um values must be distinct.")
        order = np.argsort(z)
        self.z_um = z[order]
        peak = float(np.percentile(stack, 99.9)) or 1.0
        self.planes = stack[order] / peak
        self.mode = mode
        self.fit = fit
        self.pixel_size_um = pixel_size_um
        self.label = label
        self.noise_variance = np.array([_plane_noise_variance(p) for p in self.planes])
        # a stream of its own: default_rng(seed) could replay the very noise in the planes
        self._rng = np.random.default_rng([seed, 0x2A57AC])
        self.focus_um = float(focus_um) if focus_um is not None else self._brenner_focus()

    def effective_pixel_um(self, shape: tuple[int, int]) -> float | None:
        """Pixel size at the sample of a replayed frame of ``shape`` (None if unknown)."""
        if self.pixel_size_um is None:
            return None
        if self.fit == "crop":
            return self.pixel_size_um
        return self.pixel_size_um * max(
            self.planes.shape[1] / shape[0], self.planes.shape[2] / shape[1]
        )

    def describe(self, shape: tuple[int, int] | None = None) -> dict:
        info = {
            "sample": self.label,
            "sample_family": "zstack",
            "zstack_fit": self.fit,
            "zstack_plane_shape": list(self.planes.shape[1:]),
            "zstack_mode": self.mode,
        }
        if self.pixel_size_um is not None:
            info["zstack_pixel_size_um"] = self.pixel_size_um
        if shape is not None and (pixel := self.effective_pixel_um(shape)) is not None:
            info["zstack_effective_pixel_um"] = pixel
        return info

    def _brenner_focus(self) -> float:
        scores = np.array([brenner(p) for p in self.planes])
        k = int(np.argmax(scores))
        if 0 < k < len(scores) - 1:
            z3, s3 = self.z_um[k - 1 : k + 2], scores[k - 1 : k + 2]
            a, b, _ = np.polyfit(z3, s3, 2)
            if a < 0:
                return float(np.clip(-b / (2 * a), z3[0], z3[-1]))
        return float(self.z_um[k])

    def _to_sensor(self, plane: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        if self.fit == "resample" and plane.shape != tuple(shape):
            zoom = (shape[0] / plane.shape[0], shape[1] / plane.shape[1])
            return ndimage.zoom(plane, zoom, order=1, mode="nearest", grid_mode=True)
        return _fit_to_grid(plane, shape, 1.0)

    def intensity(self, z_um: float, shape: tuple[int, int]) -> np.ndarray:
        """Relative intensity at stage position ``z_um`` (clamped to the stack's range)."""
        z = float(np.clip(z_um, self.z_um[0], self.z_um[-1]))
        k = int(np.searchsorted(self.z_um, z))
        if self.mode == "nearest" or k == 0:
            k = k if k == 0 else (k if self.z_um[k] - z < z - self.z_um[k - 1] else k - 1)
            return self._to_sensor(self.planes[k], shape)
        w = (z - self.z_um[k - 1]) / (self.z_um[k] - self.z_um[k - 1])
        plane = (1 - w) * self.planes[k - 1] + w * self.planes[k]
        lost = 2 * w * (1 - w) * ((1 - w) * self.noise_variance[k - 1] + w * self.noise_variance[k])
        if lost > 0:
            # resampling onto a coarser grid averages noise too: add it on the plane's grid
            plane = plane + self._rng.normal(0.0, np.sqrt(lost), plane.shape).astype(np.float32)
        return self._to_sensor(plane, shape)
