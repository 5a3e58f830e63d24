"""``SimMicroscope``: a connected camera, LED array and Z stage sharing one optical model."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from .camera import SimCamera
from .fov import SimFieldOfView
from .led import LEDIllumination
from .optics import CameraSensor, LEDArray, Objective
from .samples import ProceduralSample, Sample, ZStackSample
from .simulator import FocusState, OpticalModel
from .slide import FocalSurface, SimXYStage
from .stage import SimZStage

__all__ = ["SimMicroscope"]


class SimMicroscope:
    """A simulated LED-array microscope: ``.camera``, ``.led``, ``.z``, ``.xy`` (and ``.fov``).

    Parameters
    ----------
    sample : Sample or ZStackSample or str, optional
        What is on the stage: a sample object, or a procedural family name
        (``"cells"``, ``"beads"``, ``"tissue"``, ``"bars"``) used with ``seed``.
    seed : int
        Seed of the procedural sample (its field of view) and of the noise.
    focus_um : float
        Hidden position of the focal plane in stage coordinates (µm).
    drift_um_per_s, random_walk_um_per_sqrt_s, tilt_x, tilt_y : float
        Focus drift over time and tilt across the field (µm per µm).
    objective, leds, sensor : optional
        Optical configuration; defaults are a 20x/0.4 air objective, a 15x15
        LED array (6 mm pitch, 60 mm below, 530 nm) and a 256x256 camera with
        6.5 µm pixels.
    frames_dir : path, optional
        Where the camera writes its HDF5 files (a temporary folder if omitted;
        :func:`autofocus_plans.subscribe_catalog` points it at the catalogue).
    z_limits_um, velocity_um_per_s, settle_time_s, backlash_um : stage settings.
    time_scale : float
        Multiplies every simulated delay (exposure, readout, moves); 0 for tests.
    measures : sequence of str
        Focus measures the camera reports besides ``brenner``.
    focus_spread_um : float
        How far the focal plane of other fields of view (``.fov``) may lie from field 0's.
    surface : FocalSurface, optional
        Focal surface of the slide over XY, added to ``focus_um`` at the XY
        stage's position (with a :class:`~devices.SlideSample` the field of
        view moves over the slide too).
    xy_limits_um, xy_velocity_um_per_s : XY stage settings.
    """

    def __init__(
        self,
        sample: Sample | ZStackSample | str = "cells",
        *,
        seed: int = 0,
        focus_um: float = 0.0,
        drift_um_per_s: float = 0.0,
        random_walk_um_per_sqrt_s: float = 0.0,
        tilt_x: float = 0.0,
        tilt_y: float = 0.0,
        objective: Objective | None = None,
        leds: LEDArray | None = None,
        sensor: CameraSensor | None = None,
        frames_dir: str | Path | None = None,
        z_start_um: float | None = None,
        z_limits_um: tuple[float, float] = (-1000.0, 1000.0),
        velocity_um_per_s: float = 500.0,
        settle_time_s: float = 0.02,
        backlash_um: float = 0.0,
        time_scale: float = 1.0,
        exposure_s: float = 0.01,
        measures: Sequence[str] = ("brenner",),
        focus_spread_um: float = 10.0,
        fft_workers: int = 1,
        name_prefix: str = "",
        surface: FocalSurface | None = None,
        xy_limits_um: tuple[float, float] = (-5000.0, 5000.0),
        xy_velocity_um_per_s: float = 2000.0,
    ) -> None:
        objective = objective or Objective()
        leds = leds or LEDArray()
        sensor = sensor or CameraSensor()
        if isinstance(sample, str):
            sample = ProceduralSample(sample, seed)
        if isinstance(sample, ZStackSample):
            focus_um = sample.focus_um
        focus = FocusState(
            focus_um,
            drift_um_per_s=drift_um_per_s,
            random_walk_um_per_sqrt_s=random_walk_um_per_sqrt_s,
            tilt_x=tilt_x,
            tilt_y=tilt_y,
            seed=seed,
        )
        self.model = OpticalModel(
            objective, leds, sensor, sample, focus, seed=seed, fft_workers=fft_workers
        )
        if frames_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="autofocus-frames-")
            frames_dir = self._tmp.name
        p = name_prefix
        self.z = SimZStage(
            name=f"{p}z",
            value=focus_um if z_start_um is None else z_start_um,
            limits_um=z_limits_um,
            velocity_um_per_s=velocity_um_per_s,
            settle_time_s=settle_time_s,
            backlash_um=backlash_um,
            time_scale=time_scale,
        )
        self.led = LEDIllumination(
            leds, objective.na, immersion_index=objective.immersion_index, name=f"{p}led"
        )
        self.camera = SimCamera(
            self.model,
            write_dir=frames_dir,
            measures=measures,
            time_scale=time_scale,
            name=f"{p}camera",
        )
        self.camera.exposure_time.put(exposure_s)
        self.fov = SimFieldOfView(self.model, focus_spread_um=focus_spread_um, name=f"{p}fov")
        self.xy = SimXYStage(
            name=f"{p}xy",
            limits_um=xy_limits_um,
            velocity_um_per_s=xy_velocity_um_per_s,
            time_scale=time_scale,
        )
        self.surface = surface
        self.model.stage_position = lambda: self.z.actual_position
        self.model.stage_position_at = self.z.actual_position_at
        self.model.field_position = lambda: self.xy.actual_position
        self.model.surface = surface
        self.model.illumination = self.led.source_points

    # -- conveniences for users, tests and benchmarks ------------------------------
    @property
    def depth_of_field_um(self) -> float:
        return self.model.depth_of_field_um

    @property
    def devices(self) -> tuple:
        return (self.camera, self.led, self.z)

    def true_focus(self) -> float:
        """Hidden focal-plane position (µm). For tests and benchmarks only: plans never ask."""
        return self.model.true_focus()

    def true_focus_at(self, x_um: float, y_um: float) -> float:
        """Hidden focal-plane position (µm) at stage position (x, y), now. Tests only."""
        base = self.model.focus.at_center()
        return base + (self.surface(x_um, y_um) if self.surface is not None else 0.0)

    def set_sample(self, sample: Sample | ZStackSample | str, seed: int = 0) -> None:
        """Put another sample (field of view) under the objective."""
        if isinstance(sample, str):
            sample = ProceduralSample(sample, seed)
        self.model.set_sample(sample)
        self.fov.follow_sample()

    def __repr__(self) -> str:
        o = self.model.objective
        return (
            f"SimMicroscope({o.magnification:g}x/{o.na:g}, sample={self.model.sample.label!r}, "
            f"DOF={self.depth_of_field_um:.2f} µm)"
        )
