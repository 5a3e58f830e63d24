"""Simulated Z (focus) stage built on ``ophyd.sim.SynAxis``."""

from __future__ import annotations

import math

from ophyd import Component as Cpt
from ophyd import Signal
from ophyd.sim import SynAxis
from ophyd.status import MoveStatus
from ophyd.utils import LimitError

__all__ = ["SimZStage"]


class SimZStage(SynAxis):
    """A Z stage in micrometres with soft limits, finite speed and optional backlash.

    A move takes ``|Δz| / velocity + settle_time_s`` seconds, multiplied by
    ``time_scale`` (0 makes every move instant, for tests). A move outside
    ``[low_limit, high_limit]`` raises :class:`ophyd.utils.LimitError` and the
    stage does not move.

    Backlash: after a downward move the mechanism lags ``backlash_um`` behind
    the reported position; an upward final approach removes the lag. The
    readback reports the motor position (what a controller without a linear
    encoder knows); :attr:`actual_position` is the mechanical truth, used only
    by the simulator.
    """

    low_limit = Cpt(Signal, value=-1000.0, kind="config")
    high_limit = Cpt(Signal, value=1000.0, kind="config")
    settle_time_s = Cpt(Signal, value=0.0, kind="config")
    backlash_um = Cpt(Signal, value=0.0, kind="config")

    def __init__(
        self,
        *,
        name: str = "z",
        value: float = 0.0,
        limits_um: tuple[float, float] = (-1000.0, 1000.0),
        velocity_um_per_s: float = 500.0,
        settle_time_s: float = 0.02,
        backlash_um: float = 0.0,
        time_scale: float = 1.0,
        **kwargs,
    ) -> None:
        low, high = (float(v) for v in limits_um)
        if not low < high:
            raise ValueError(f"Stage limits must satisfy low < high, got {limits_um}.")
        if velocity_um_per_s <= 0 or settle_time_s < 0 or backlash_um < 0 or time_scale < 0:
            raise ValueError(
                "Stage velocity must be positive; settle time, backlash and time_scale "
                "must be non-negative."
            )
        if not low <= value <= high:
            raise ValueError(f"Initial stage position {value} µm is outside limits {limits_um}.")
        super().__init__(name=name, value=value, egu="um", precision=4, **kwargs)
        self.low_limit.put(low)
        self.high_limit.put(high)
        self.velocity.put(float(velocity_um_per_s))
        self.settle_time_s.put(float(settle_time_s))
        self.backlash_um.put(float(backlash_um))
        self.time_scale = float(time_scale)
        self._lag = 0.0

    @property
    def limits(self) -> tuple[float, float]:
        return (self.low_limit.get(), self.high_limit.get())

    @property
    def actual_position(self) -> float:
        """Mechanical position including backlash lag (simulator truth)."""
        return self.position + self._lag

    def move_time_s(self, target: float) -> float:
        distance = abs(target - self.sim_state["setpoint"])
        return (distance / self.velocity.get() + self.settle_time_s.get()) * self.time_scale

    def set(self, value: float) -> MoveStatus:
        try:
            target = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"Stage {self.name} needs a number of µm, got {value!r}.") from None
        low, high = self.limits
        if not math.isfinite(target) or not low <= target <= high:
            raise LimitError(
                f"Move of {self.name} to {target} µm refused: outside the soft limits "
                f"[{low}, {high}] µm; choose a target inside them or widen the limits."
            )
        current = self.sim_state["setpoint"]
        self.delay = self.move_time_s(target)
        if target < current:
            self._lag = self.backlash_um.get()
        elif target > current:
            self._lag = 0.0
        return super().set(target)
