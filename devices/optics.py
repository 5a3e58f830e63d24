"""Optical configuration of an LED-array microscope and its imaging physics.

The image of a thin sample with complex transmittance ``t(x, y)`` lit by one
tilted plane wave of transverse spatial frequency ``u`` (cycles/µm) is

    I_u(x) = | IFFT[ T(f) * P(f + u) * H_dz(f + u) ] |^2

where ``T`` is the sample spectrum, ``P`` the objective pupil
(``|f| <= NA / λ``) and ``H_dz`` the angular-spectrum defocus transfer
function ``exp(i 2π dz (sqrt((n/λ)^2 - |f|^2) - n/λ))``. The constant phase is
removed because it changes no intensity and keeps complex64 accurate. Several
LEDs, and several points across one LED of finite size, add incoherently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.fft

__all__ = [
    "CameraSensor",
    "LEDArray",
    "Objective",
    "SourcePoint",
    "depth_of_field_um",
    "image_intensity",
]


@dataclass(frozen=True)
class Objective:
    """Microscope objective: magnification, numerical aperture and immersion index."""

    magnification: float = 20.0
    na: float = 0.4
    immersion_index: float = 1.0

    def __post_init__(self) -> None:
        if self.magnification <= 0:
            raise ValueError(
                f"Objective magnification must be positive, got {self.magnification}; "
                "use e.g. magnification=20."
            )
        if self.immersion_index < 1:
            raise ValueError(
                f"Immersion index must be at least 1 (air), got {self.immersion_index}."
            )
        if not 0 < self.na < self.immersion_index:
            raise ValueError(
                f"Objective NA must be between 0 and the immersion index "
                f"({self.immersion_index}), got NA={self.na}; lower the NA or use an "
                "immersion medium with a higher index."
            )


@dataclass(frozen=True)
class LEDArray:
    """A square LED array below the sample, centred on the optical axis.

    ``size`` LEDs per side at ``pitch_mm`` spacing, ``height_mm`` below the
    sample; each LED is a disc of ``led_size_mm`` diameter (partial coherence)
    emitting ``photon_rate`` photons per second per camera pixel (unbinned,
    clear sample, brightness 1).
    """

    pitch_mm: float = 6.0
    height_mm: float = 60.0
    size: int = 15
    wavelength_um: float = 0.53
    led_size_mm: float = 1.0
    photon_rate: float = 2.5e4

    def __post_init__(self) -> None:
        for name in ("pitch_mm", "height_mm", "wavelength_um", "photon_rate"):
            if getattr(self, name) <= 0:
                raise ValueError(f"LEDArray {name} must be positive, got {getattr(self, name)}.")
        if self.led_size_mm < 0:
            raise ValueError(f"LEDArray led_size_mm must be >= 0, got {self.led_size_mm}.")
        if self.size < 1 or self.size % 2 == 0:
            raise ValueError(
                f"LEDArray size must be a positive odd number (one LED on axis), got {self.size}."
            )

    @property
    def half(self) -> int:
        return self.size // 2

    def position_mm(self, ix: int, iy: int) -> tuple[float, float]:
        """Position of LED ``(ix, iy)``; indices run from ``-half`` to ``+half``."""
        if abs(ix) > self.half or abs(iy) > self.half:
            raise ValueError(
                f"LED index ({ix}, {iy}) is outside the {self.size}x{self.size} array; "
                f"indices run from {-self.half} to {self.half}."
            )
        return ix * self.pitch_mm, iy * self.pitch_mm

    def illumination_na(self, ix: int, iy: int) -> float:
        x, y = self.position_mm(ix, iy)
        r = math.hypot(x, y)
        return r / math.sqrt(r * r + self.height_mm**2)

    def indices(self) -> list[tuple[int, int]]:
        rng = range(-self.half, self.half + 1)
        return [(ix, iy) for iy in rng for ix in rng]

    def nearest(self, na: float, azimuth_deg: float) -> tuple[int, int]:
        """The LED closest to illumination angle ``(na, azimuth)``."""
        if not 0 <= na < 1:
            raise ValueError(f"Illumination NA must be in [0, 1), got {na}.")
        r = self.height_mm * na / math.sqrt(1 - na * na)
        phi = math.radians(azimuth_deg)
        ix = round(r * math.cos(phi) / self.pitch_mm)
        iy = round(r * math.sin(phi) / self.pitch_mm)
        if abs(ix) > self.half or abs(iy) > self.half:
            raise ValueError(
                f"Illumination NA {na} lies beyond the edge of the {self.size}x{self.size} LED "
                f"array (maximum about {self.illumination_na(self.half, 0):.3f} along an axis)."
            )
        return ix, iy

    def source_points(self, leds: list[tuple[int, int]], brightness: float) -> list[SourcePoint]:
        """Plane-wave source points for the lit ``leds``.

        A single LED is sampled at seven points across its disc (centre and a
        ring) so its finite size gives partial coherence; with several LEDs
        lit, their spread dominates and one point per LED is used.
        """
        if not leds or brightness <= 0:
            return []
        lam = self.wavelength_um
        ring = self.led_size_mm / 2 / math.sqrt(2)
        offsets = [(0.0, 0.0)]
        if len(leds) == 1 and self.led_size_mm > 0:
            offsets += [
                (ring * math.cos(a), ring * math.sin(a))
                for a in np.linspace(0, 2 * math.pi, 6, endpoint=False)
            ]
        points = []
        for ix, iy in leds:
            x0, y0 = self.position_mm(ix, iy)
            for ox, oy in offsets:
                x, y = x0 + ox, y0 + oy
                r = math.sqrt(x * x + y * y + self.height_mm**2)
                # light from an LED at +x reaches the sample travelling towards -x
                points.append(SourcePoint(-x / r / lam, -y / r / lam, brightness / len(offsets)))
        return points


@dataclass(frozen=True)
class SourcePoint:
    """One incoherent plane-wave source: transverse frequency (cycles/µm) and weight."""

    ux: float
    uy: float
    weight: float


@dataclass(frozen=True)
class CameraSensor:
    """Camera sensor: pixel pitch, size, bit depth and noise."""

    pixel_um: float = 6.5
    shape: tuple[int, int] = (256, 256)
    bit_depth: int = 12
    full_well_e: float = 20000.0
    read_noise_e: float = 2.0
    quantum_efficiency: float = 0.7
    offset_adu: int = 100

    def __post_init__(self) -> None:
        if self.pixel_um <= 0:
            raise ValueError(f"Camera pixel pitch must be positive, got {self.pixel_um} µm.")
        if len(self.shape) != 2 or min(self.shape) < 8:
            raise ValueError(f"Camera shape must be two sizes of at least 8, got {self.shape}.")
        if not 8 <= self.bit_depth <= 16:
            raise ValueError(f"Camera bit depth must be 8 to 16, got {self.bit_depth}.")
        if not 0 < self.quantum_efficiency <= 1:
            raise ValueError(
                f"Quantum efficiency must be in (0, 1], got {self.quantum_efficiency}."
            )
        if self.full_well_e <= 0 or self.read_noise_e < 0:
            raise ValueError("Full well must be positive and read noise non-negative.")

    @property
    def max_adu(self) -> int:
        return 2**self.bit_depth - 1


def depth_of_field_um(objective: Objective, wavelength_um: float, pixel_um: float) -> float:
    """DOF = λ n / NA² + n e / (M NA): wave-optical plus detector-limited term."""
    n, na = objective.immersion_index, objective.na
    return wavelength_um * n / na**2 + n * pixel_um / (objective.magnification * na)


@dataclass
class _Grid:
    shape: tuple[int, int]
    dx_um: float
    fx: np.ndarray = field(init=False, repr=False)
    fy: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.fy = np.fft.fftfreq(self.shape[0], self.dx_um)[:, None]
        self.fx = np.fft.fftfreq(self.shape[1], self.dx_um)[None, :]


_GRIDS: dict[tuple[tuple[int, int], float], _Grid] = {}


def _grid(shape: tuple[int, int], dx_um: float) -> _Grid:
    key = (tuple(shape), float(dx_um))
    if key not in _GRIDS:
        _GRIDS[key] = _Grid(key[0], key[1])
    return _GRIDS[key]


def image_intensity(
    spectrum: np.ndarray,
    dx_um: float,
    sources: list[SourcePoint],
    defocus_um: float,
    objective: Objective,
    wavelength_um: float,
    *,
    batch: int = 16,
    workers: int = 1,
) -> np.ndarray:
    """Noise-free image intensity (clear field under one unit source = 1).

    ``spectrum`` is ``fft2`` of the sample transmittance on a grid of pitch
    ``dx_um`` at the sample; ``defocus_um`` is the signed distance of the
    sample from the focal plane.
    """
    grid = _grid(spectrum.shape, dx_um)
    out = np.zeros(spectrum.shape, dtype=np.float32)
    if not sources:
        return out
    n_over_lam = objective.immersion_index / wavelength_um
    cutoff2 = (objective.na / wavelength_um) ** 2
    two_pi_dz = 2 * np.pi * defocus_um
    for start in range(0, len(sources), batch):
        chunk = sources[start : start + batch]
        stack = np.zeros((len(chunk), *spectrum.shape), dtype=np.complex64)
        for k, src in enumerate(chunk):
            kx = grid.fx + src.ux
            ky = grid.fy + src.uy
            rho2 = kx * kx + ky * ky
            # only the pupil disc (about a fifth of the grid) needs the transfer function
            inside = np.nonzero(rho2 <= cutoff2)
            kz = np.sqrt(n_over_lam**2 - rho2[inside])
            stack[k][inside] = spectrum[inside] * np.exp(1j * two_pi_dz * (kz - n_over_lam))
        # ifft2's default 1/N normalisation makes a clear field under a unit source equal 1
        fields = scipy.fft.ifft2(stack, axes=(-2, -1), workers=workers, overwrite_x=True)
        weights = np.asarray([s.weight for s in chunk], dtype=np.float32)[:, None, None]
        out += np.sum(weights * (fields.real**2 + fields.imag**2), axis=0)
    return out
