"""Plan stubs and stage helpers shared by the autofocus plans."""

from __future__ import annotations

import math

import bluesky.plan_stubs as bps

from devices.optics import Objective, depth_of_field_um
from devices.stage import can_skip_settle

from .results import optics_metadata

__all__ = [
    "approach",
    "depth_of_field_from_devices",
    "pass_through",
    "search_range",
    "stage_field",
    "stage_limits",
    "stage_settle_time",
]


def stage_limits(stage) -> tuple[float, float]:
    """Soft limits of a Z stage; infinite where it has none."""
    low, high = getattr(stage, "limits", (-math.inf, math.inf))
    if low == high == 0:  # EPICS convention: no soft limits set
        return -math.inf, math.inf
    return float(low), float(high)


def search_range(stage, start: float, stop: float, relative: bool) -> tuple[float, float, float]:
    """(origin, low, high) of a focus search; refuses a reversed range or one past the limits."""
    origin = float(stage.position)
    low, high = (origin + start, origin + stop) if relative else (float(start), float(stop))
    stage_low, stage_high = stage_limits(stage)
    if not low < high:
        raise ValueError(
            f"Search range {low:.2f} to {high:.2f} µm is reversed or empty (start >= stop); "
            "give the lower end first, e.g. start=-20, stop=20."
        )
    if not stage_low <= low < high <= stage_high:
        raise ValueError(
            f"Search range {low:.2f} to {high:.2f} µm does not fit the stage's soft limits "
            f"[{stage_low}, {stage_high}] µm; narrow or move the range."
        )
    return origin, low, high


def stage_field(stage) -> str:
    """The reading key of the stage's position (what BestEffortCallback plots against)."""
    fields = getattr(stage, "hints", {}).get("fields", [])
    return fields[0] if fields else stage.name


def pass_through(stage, target: float):
    """Move to a point on the way elsewhere, without waiting for the stage to settle there.

    Nothing is exposed at such a point (an approach's overshoot, the start of a
    run-up), so the settle time, which is there for the exposures, is skipped
    on stages that can skip it and kept on the others.
    """
    if can_skip_settle(stage):
        yield from bps.abs_set(stage, target, settle=False, wait=True)
    else:
        yield from bps.mv(stage, target)


def approach(stage, target: float, overshoot_um: float):
    """Move to ``target``, arriving from below (overshoot first when coming from above)."""
    current = yield from bps.rd(stage)
    if target < float(current) and overshoot_um > 0:
        # the stage settles at the target, after the move up that takes up the backlash
        yield from pass_through(stage, max(target - overshoot_um, stage_limits(stage)[0]))
    yield from bps.mv(stage, target)


def depth_of_field_from_devices(camera, led) -> float:
    """DOF (µm) from the devices' configuration: wavelength, NA, immersion, pixel at sample."""
    config = optics_metadata(camera, led)
    objective = Objective(
        magnification=1.0,
        na=config["led_objective_na"],
        immersion_index=config.get("led_immersion_index", 1.0),
    )
    # pixel size at the sample = e / M, so magnification 1 with that pixel gives n e / (M NA)
    return depth_of_field_um(objective, config["led_wavelength_um"], config["camera_pixel_size_um"])


def stage_settle_time(stage) -> float:
    """The stage's settle time after a move (s): its ``settle_time_s`` signal or ``settle_time``."""
    signal = getattr(stage, "settle_time_s", None)
    if signal is not None and hasattr(signal, "get"):
        return float(signal.get())
    return float(getattr(stage, "settle_time", 0.0) or 0.0)
