"""The shared optical model behind the simulated camera, LED array and Z stage.

Plans never touch this module: they see only the three devices. Tests and
benchmarks may ask it for the truth (the hidden focal plane).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.fft

from .optics import (
    CameraSensor,
    LEDArray,
    Objective,
    SourcePoint,
    depth_of_field_um,
    image_intensity,
)
from .samples import Sample, ZStackSample
from .slide import SlideSample

__all__ = ["CameraSettings", "FocusState", "OpticalModel"]


class FocusState:
    """Hidden position of the sample's focal plane, in stage coordinates (µm).

    ``z_focus(t) = focus_um + drift_um_per_s * t + random walk``, plus a tilt
    across the field (µm of focus per µm of lateral position). ``t`` counts
    from creation on ``clock`` (seconds).
    """

    def __init__(
        self,
        focus_um: float = 0.0,
        *,
        drift_um_per_s: float = 0.0,
        random_walk_um_per_sqrt_s: float = 0.0,
        tilt_x: float = 0.0,
        tilt_y: float = 0.0,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if random_walk_um_per_sqrt_s < 0:
            raise ValueError("random_walk_um_per_sqrt_s must be >= 0.")
        self.focus_um = float(focus_um)
        self.drift_um_per_s = float(drift_um_per_s)
        self.random_walk_um_per_sqrt_s = float(random_walk_um_per_sqrt_s)
        self.tilt_x = float(tilt_x)
        self.tilt_y = float(tilt_y)
        self._clock = clock
        self._t0 = clock()
        self._rng = np.random.default_rng(seed)
        self._walk = 0.0
        self._walk_t = 0.0
        self._lock = threading.Lock()

    def elapsed_s(self) -> float:
        return self._clock() - self._t0

    def at_center(self) -> float:
        """Focal-plane position at the field centre, now."""
        t = self.elapsed_s()
        with self._lock:
            if self.random_walk_um_per_sqrt_s and t > self._walk_t:
                step = self._rng.standard_normal() * np.sqrt(t - self._walk_t)
                self._walk += self.random_walk_um_per_sqrt_s * step
                self._walk_t = t
            return self.focus_um + self.drift_um_per_s * t + self._walk

    def describe(self) -> dict:
        return {
            "drift_um_per_s": self.drift_um_per_s,
            "random_walk_um_per_sqrt_s": self.random_walk_um_per_sqrt_s,
            "tilt_x": self.tilt_x,
            "tilt_y": self.tilt_y,
        }


@dataclass(frozen=True)
class CameraSettings:
    """What the camera asks of the model for one frame."""

    exposure_s: float
    gain: float
    binning: int
    roi: tuple[int, int, int, int]  # x, y, width, height in unbinned sensor pixels


class OpticalModel:
    """Objective + LED array + camera sensor + sample + hidden focus.

    ``stage_position`` and ``illumination`` are callables wired by
    :class:`devices.SimMicroscope` so the camera sees where the stage is and
    which LEDs are lit at the moment of exposure.
    """

    def __init__(
        self,
        objective: Objective,
        leds: LEDArray,
        sensor: CameraSensor,
        sample: Sample | ZStackSample,
        focus: FocusState,
        *,
        seed: int = 0,
        fft_workers: int = 1,
    ) -> None:
        self.objective = objective
        self.leds = leds
        self.sensor = sensor
        self.sample = sample
        self.focus = focus
        self.fft_workers = fft_workers
        self._rng = np.random.default_rng(seed)
        self._spectra: dict = {}
        self.stage_position: Callable[[], float] = lambda: 0.0
        # where the stage was at an earlier time.time(): frames exposed while it moves
        self.stage_position_at: Callable[[float], float] | None = None
        self.illumination: Callable[[], list[SourcePoint]] = lambda: []
        # the XY stage's position over the slide, and the slide's focal surface
        self.field_position: Callable[[], tuple[float, float]] = lambda: (0.0, 0.0)
        self.surface: Callable[[float, float], float] | None = None
        #: seconds spent computing frames (what a real camera does not spend)
        self.render_seconds = 0.0

    # -- derived optics -------------------------------------------------
    @property
    def depth_of_field_um(self) -> float:
        return depth_of_field_um(self.objective, self.leds.wavelength_um, self.sensor.pixel_um)

    def sample_pixel_um(self, binning: int = 1) -> float:
        return self.sensor.pixel_um * binning / self.objective.magnification

    def true_focus(self) -> float:
        """Focal-plane position at the centre of the field of view, now."""
        if self.surface is None:
            return self.focus.at_center()
        return self.focus.at_center() + self.surface(*self.field_position())

    def set_sample(self, sample: Sample | ZStackSample) -> None:
        """Move to another field of view (a new sample) without rebuilding devices."""
        self.sample = sample
        self._spectra.clear()
        if isinstance(sample, ZStackSample):
            self.focus.focus_um = sample.focus_um

    def _spectrum(self, shape: tuple[int, int], dx_um: float) -> np.ndarray:
        if isinstance(self.sample, SlideSample):
            x, y = self.field_position()
            center = (round(x / dx_um) * dx_um, round(y / dx_um) * dx_um)
            key = (shape, dx_um, id(self.sample), center)
            if key not in self._spectra:
                t = self.sample.window(center, shape, dx_um)
                self._spectra = {key: scipy.fft.fft2(t, workers=self.fft_workers)}
            return self._spectra[key]
        key = (shape, dx_um, id(self.sample))
        if key not in self._spectra:
            t = self.sample.transmittance(shape, dx_um)
            self._spectra = {key: scipy.fft.fft2(t, workers=self.fft_workers)}
        return self._spectra[key]

    def _slide_margin(self, binning: int) -> int:
        """Pixels rendered around the field of a slide, so that defocus blur does not wrap."""
        return 32 // binning if isinstance(self.sample, SlideSample) else 0

    # -- imaging ----------------------------------------------------------
    def intensity(self, z_um: float, sources: list[SourcePoint], binning: int = 1) -> np.ndarray:
        """Noise-free intensity on the whole (binned) sensor at stage position ``z_um``."""
        shape = (self.sensor.shape[0] // binning, self.sensor.shape[1] // binning)
        if isinstance(self.sample, ZStackSample):
            z_rel = z_um - (self.true_focus() - self.sample.focus_um)
            total = sum(s.weight for s in sources)
            full = self.sample.intensity(z_rel, self.sensor.shape)
            if binning > 1:
                h, w = shape
                full = full[: h * binning, : w * binning]
                full = full.reshape(h, binning, w, binning).mean(axis=(1, 3))
            return (full * total).astype(np.float32)
        dx = self.sample_pixel_um(binning)
        margin = self._slide_margin(binning)
        if margin:
            shape = (shape[0] + 2 * margin, shape[1] + 2 * margin)
        spectrum = self._spectrum(shape, dx)
        defocus = z_um - self.true_focus()

        def at(dz: float) -> np.ndarray:
            return image_intensity(
                spectrum,
                dx,
                sources,
                dz,
                self.objective,
                self.leds.wavelength_um,
                workers=self.fft_workers,
            )

        tilt = (self.focus.tilt_x, self.focus.tilt_y)
        if tilt == (0.0, 0.0) or not sources:
            image = at(defocus)
            return image[margin:-margin, margin:-margin] if margin else image
        # tilt: render a few planes across the field's defocus range, blend per pixel
        y = (np.arange(shape[0]) - shape[0] / 2)[:, None] * dx
        x = (np.arange(shape[1]) - shape[1] / 2)[None, :] * dx
        dz_map = defocus - tilt[0] * x - tilt[1] * y
        lo, hi = float(dz_map.min()), float(dz_map.max())
        planes = max(2, min(6, int(np.ceil((hi - lo) / (0.25 * self.depth_of_field_um))) + 1))
        zs = np.linspace(lo, hi, planes)
        images = np.stack([at(dz) for dz in zs])
        pos = (dz_map - lo) / (hi - lo) * (planes - 1)
        k = np.clip(np.floor(pos).astype(int), 0, planes - 2)
        w = (pos - k).astype(np.float32)
        rows, cols = np.indices(shape)
        image = (1 - w) * images[k, rows, cols] + w * images[k + 1, rows, cols]
        return image[margin:-margin, margin:-margin] if margin else image

    def _clean_frame(
        self,
        binning: int,
        window: tuple[float, float] | None,
        position_at: Callable[[float], float] | None = None,
    ) -> np.ndarray:
        """Noise-free frame; averaged over the Z travelled during ``window`` = (t0, t1)."""
        sources = self.illumination()
        position_at = position_at or self.stage_position_at
        if window is None or position_at is None:
            return self.intensity(self.stage_position(), sources, binning)
        t0, t1 = window
        z0, z1 = position_at(t0), position_at(t1)
        # planes a quarter of a depth of field apart integrate the travel within an exposure
        planes = max(1, math.ceil(abs(z1 - z0) / (0.25 * self.depth_of_field_um) - 1e-9))
        if planes == 1:
            return self.intensity(position_at(0.5 * (t0 + t1)), sources, binning)
        times = t0 + (np.arange(planes) + 0.5) / planes * (t1 - t0)
        total = self.intensity(position_at(float(times[0])), sources, binning)
        for t in times[1:]:
            total = total + self.intensity(position_at(float(t)), sources, binning)
        return total / planes

    def expose(
        self, settings: CameraSettings, window: tuple[float, float] | None = None
    ) -> np.ndarray:
        """One camera frame (uint16 ADU) with shot noise, read noise, gain and clipping.

        ``window`` = (start, end) of the exposure in ``time.time()`` seconds:
        the image is integrated over the Z the stage travelled meanwhile.
        Without it the stage is taken where it is now.
        """
        started = time.perf_counter()
        frame = self.add_noise(self.clean_frame(settings, window), settings)
        self.render_seconds += time.perf_counter() - started
        return frame

    def expose_many(
        self,
        settings: CameraSettings,
        windows: list[tuple[float, float]],
        workers: int = 2,
        position_at: Callable[[float], float] | None = None,
    ) -> list[np.ndarray]:
        """Frames for several exposure windows; the optics of each computed in parallel.

        ``position_at(t)`` gives the stage's Z at the windows' times instead of
        the stage's recorded path (a path planned ahead).
        """
        from concurrent.futures import ThreadPoolExecutor

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            cleans = list(pool.map(lambda w: self.clean_frame(settings, w, position_at), windows))
        frames = [self.add_noise(clean, settings) for clean in cleans]
        self.render_seconds += time.perf_counter() - started
        return frames

    def clean_frame(
        self,
        settings: CameraSettings,
        window: tuple[float, float] | None = None,
        position_at: Callable[[float], float] | None = None,
    ) -> np.ndarray:
        """The noise-free frame in the camera's ROI (photons per unit rate)."""
        b = settings.binning
        clean = self._clean_frame(b, window, position_at)
        x, y, w, h = settings.roi
        return clean[y // b : y // b + h // b, x // b : x // b + w // b]

    def add_noise(self, clean: np.ndarray, settings: CameraSettings) -> np.ndarray:
        """Shot noise, read noise, gain, offset and clipping of a noise-free frame."""
        sensor = self.sensor
        b = settings.binning
        photons = clean * (self.leds.photon_rate * settings.exposure_s * b * b)
        electrons = self._rng.poisson(photons * sensor.quantum_efficiency).astype(np.float64)
        electrons = np.minimum(electrons, sensor.full_well_e * b * b)
        electrons += self._rng.normal(0.0, sensor.read_noise_e, electrons.shape)
        e_per_adu = sensor.full_well_e / sensor.max_adu / settings.gain
        adu = np.rint(electrons / e_per_adu) + sensor.offset_adu
        return np.clip(adu, 0, sensor.max_adu).astype(np.uint16)
