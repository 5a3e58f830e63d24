"""A whole slide for XY scanning: a large sample canvas, an XY stage and a focal surface.

The field of view is the part of the :class:`SlideSample` under the lens at
the XY stage's position; the focal plane there is ``FocalSurface(x, y)``
(stage tilt, slide curvature and local variation such as a coverslip that
is not flat). Plans see only the XY stage; tests and benchmarks may ask the
surface for the truth.
"""

from __future__ import annotations

import math

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device

from .samples import ProceduralSample, Sample, _render_procedural
from .stage import SimZStage

__all__ = ["FocalSurface", "SimXYStage", "SlideSample"]


class SlideSample(Sample):
    """A slide much larger than the field of view, tiled from procedural patches.

    The slide is a mosaic of square patches of ``patch_um`` a side, each a
    field of the procedural ``family`` with its own seed (neighbouring patches
    meet at a seam, as neighbouring cells or tissue regions do); any window of
    it can be rendered at any pixel size.

    Parameters
    ----------
    family, seed, contrast, component :
        As for :class:`~devices.ProceduralSample`.
    patch_um : float
        Side of one procedural patch (µm).
    """

    def __init__(
        self,
        family: str = "tissue",
        seed: int = 0,
        *,
        contrast: float = 1.0,
        component: str = "both",
        patch_um: float = 100.0,
    ) -> None:
        # every patch is a field of this procedural sample: it checks the family and the style
        self._patch_style = ProceduralSample(family, seed, contrast=contrast, component=component)
        if not patch_um > 0:
            raise ValueError(f"Slide patch_um must be a positive number, got {patch_um!r}.")
        self.family, self.seed = family, int(seed)
        self.contrast, self.component = float(contrast), component
        self.patch_um = float(patch_um)
        self.label = f"slide:{family}:{self.seed}"

    def describe(self) -> dict:
        return {
            **self._patch_style.describe(),
            "sample": self.label,
            "slide_patch_um": self.patch_um,
        }

    def transmittance(self, shape: tuple[int, int], dx_um: float) -> np.ndarray:
        return self.window((0.0, 0.0), shape, dx_um)

    def window(
        self, center_um: tuple[float, float], shape: tuple[int, int], dx_um: float
    ) -> np.ndarray:
        """Transmittance of the ``shape`` window centred at ``center_um`` = (x, y) on the slide."""
        patch = max(8, round(self.patch_um / dx_um))
        h, w = shape
        x0 = round(center_um[0] / dx_um) - w // 2
        y0 = round(center_um[1] / dx_um) - h // 2
        out = np.empty(shape, np.complex64)
        for py in range(math.floor(y0 / patch), math.floor((y0 + h - 1) / patch) + 1):
            for px in range(math.floor(x0 / patch), math.floor((x0 + w - 1) / patch) + 1):
                cell = [self.seed, px + 2**20, py + 2**20]
                seed = int(np.random.SeedSequence(cell).generate_state(1)[0]) % 2**31
                tile = _render_procedural(
                    self.family,
                    seed,
                    (patch, patch),
                    float(dx_um),
                    self.contrast,
                    self.component,
                )
                ys, xs = max(y0, py * patch), max(x0, px * patch)
                ye, xe = min(y0 + h, (py + 1) * patch), min(x0 + w, (px + 1) * patch)
                out[ys - y0 : ye - y0, xs - x0 : xe - x0] = tile[
                    ys - py * patch : ye - py * patch, xs - px * patch : xe - px * patch
                ]
        return out


class FocalSurface:
    """Where the slide is in focus: ``z(x, y)`` in stage coordinates (µm).

    ``z = tilt_x·x + tilt_y·y + curvature·(x² + y²) + bumps`` (x, y in µm; add
    it to the microscope's ``focus_um``). ``bumps`` is local variation: a sum
    of ``bump_count`` Gaussian hills and dips of ``bump_um`` height scale and
    ``bump_width_um`` width, placed at random within ``extent_um`` of the
    origin.
    """

    def __init__(
        self,
        *,
        tilt_x: float = 0.0,
        tilt_y: float = 0.0,
        curvature_per_um: float = 0.0,
        bump_um: float = 0.0,
        bump_width_um: float = 300.0,
        bump_count: int = 6,
        extent_um: float = 1000.0,
        seed: int = 0,
    ) -> None:
        self.tilt_x, self.tilt_y = float(tilt_x), float(tilt_y)
        self.curvature_per_um = float(curvature_per_um)
        self.bump_um, self.bump_width_um = float(bump_um), float(bump_width_um)
        rng = np.random.default_rng([seed, 0x5F0C])
        count = int(bump_count) if bump_um else 0
        self._centers = rng.uniform(-extent_um, extent_um, size=(count, 2))
        self._heights = rng.uniform(-1.0, 1.0, size=count) * self.bump_um

    def __call__(self, x_um: float, y_um: float) -> float:
        x, y = float(x_um), float(y_um)
        z = self.tilt_x * x + self.tilt_y * y + self.curvature_per_um * (x * x + y * y)
        if self._heights.size:
            d2 = (self._centers[:, 0] - x) ** 2 + (self._centers[:, 1] - y) ** 2
            z += float(np.sum(self._heights * np.exp(-d2 / (2 * self.bump_width_um**2))))
        return z

    def describe(self) -> dict:
        return {
            "surface_tilt_x": self.tilt_x,
            "surface_tilt_y": self.tilt_y,
            "surface_curvature_per_um": self.curvature_per_um,
            "surface_bump_um": self.bump_um,
            "surface_bump_width_um": self.bump_width_um,
        }


class SimXYStage(Device):
    """An XY stage: two :class:`~devices.SimZStage` axes ``x`` and ``y`` in µm.

    Each axis has soft limits (a move outside refuses with a clear error),
    a velocity and a settle time; ``bps.mv(xy.x, 100, xy.y, 50)`` moves both
    at once.
    """

    x = Cpt(SimZStage, velocity_um_per_s=2000.0, settle_time_s=0.03)
    y = Cpt(SimZStage, velocity_um_per_s=2000.0, settle_time_s=0.03)

    def __init__(
        self,
        *,
        name: str = "xy",
        limits_um: tuple[float, float] = (-5000.0, 5000.0),
        velocity_um_per_s: float = 2000.0,
        settle_time_s: float = 0.03,
        time_scale: float = 1.0,
        **kwargs,
    ) -> None:
        super().__init__(name=name, **kwargs)
        low, high = (float(v) for v in limits_um)
        if not low < high:
            raise ValueError(f"XY stage limits must satisfy low < high, got {limits_um}.")
        for axis in (self.x, self.y):
            axis.low_limit.put(low)
            axis.high_limit.put(high)
            axis.velocity.put(float(velocity_um_per_s))
            axis.settle_time_s.put(float(settle_time_s))
            axis.time_scale = float(time_scale)

    @property
    def actual_position(self) -> tuple[float, float]:
        """Mechanical (x, y) now (simulator truth)."""
        return (self.x.actual_position, self.y.actual_position)
