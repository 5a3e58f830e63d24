"""Simulated linear stages (Z focus, X and Y) built on ``ophyd.sim.SynAxis``."""

from __future__ import annotations

import bisect
import inspect
import math
import threading
import time
from collections.abc import Callable

from ophyd import Component as Cpt
from ophyd import Signal
from ophyd.sim import SynAxis
from ophyd.status import MoveStatus
from ophyd.utils import LimitError

__all__ = ["SimZStage", "can_skip_settle"]


def can_skip_settle(stage) -> bool:
    """Whether ``stage.set`` takes ``settle=False`` (a move to a point only passed through)."""
    try:
        return "settle" in inspect.signature(stage.set).parameters
    except (TypeError, ValueError):
        return False


class SimZStage(SynAxis):
    """A linear stage in micrometres with soft limits, finite speed and optional backlash.

    A move takes ``|Δz| / velocity + settle_time_s`` seconds, multiplied by
    ``time_scale`` (0 makes every move instant, for tests); a move that only
    passes through on the way elsewhere may skip the settle
    (``set(z, settle=False)``), as nothing is exposed there. While it moves,
    the stage travels at constant speed and its readback updates
    ``readback_rate_hz`` times a second with the time of each reading, as a
    motor controller's does; :meth:`stop` halts it where it is. A move outside
    ``[low_limit, high_limit]`` raises :class:`ophyd.utils.LimitError` and the
    stage does not move.

    Backlash: after a downward move the mechanism lags ``backlash_um`` behind
    the reported position; an upward final approach removes the lag. The
    readback reports the motor position (what a controller without a linear
    encoder knows); :attr:`actual_position` and :meth:`actual_position_at`
    are the mechanical truth, used only by the simulator.
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
        readback_rate_hz: float = 100.0,
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
        if not readback_rate_hz > 0:
            raise ValueError(f"readback_rate_hz must be positive, got {readback_rate_hz!r}.")
        if not low <= value <= high:
            raise ValueError(f"Initial stage position {value} µm is outside limits {limits_um}.")
        super().__init__(name=name, value=value, egu="um", precision=4, **kwargs)
        self.low_limit.put(low)
        self.high_limit.put(high)
        self.velocity.put(float(velocity_um_per_s))
        self.settle_time_s.put(float(settle_time_s))
        self.backlash_um.put(float(backlash_um))
        self.time_scale = float(time_scale)
        self.readback_rate_hz = float(readback_rate_hz)
        self._lag = 0.0
        # the path, travelled and planned: knots (time.time(), motor position), linear between
        # them; a move records where it will be when it starts (a stop cuts the plan short)
        self._knot_t: list[float] = [time.time()]
        self._knot_z: list[float] = [float(value)]
        self._motion_lock = threading.Lock()
        self._stop_requested = threading.Event()
        self._stop_success = False
        self._moving = threading.Event()
        #: when the last move started (``time.time()`` seconds)
        self.last_move_start = self._knot_t[0]

    @property
    def limits(self) -> tuple[float, float]:
        return (self.low_limit.get(), self.high_limit.get())

    @property
    def moving(self) -> bool:
        return self._moving.is_set()

    @property
    def actual_position(self) -> float:
        """Mechanical position now, including backlash lag (simulator truth)."""
        return self.actual_position_at(time.time())

    def motor_position_at(self, t: float) -> float:
        """Where the motor was at time ``t`` (``time.time()`` seconds), from its recorded path."""
        with self._motion_lock:
            k = bisect.bisect_right(self._knot_t, t)
            if k == 0:
                return self._knot_z[0]
            if k == len(self._knot_t):
                return self._knot_z[-1]
            t0, t1 = self._knot_t[k - 1], self._knot_t[k]
            z0, z1 = self._knot_z[k - 1], self._knot_z[k]
        return z0 + (z1 - z0) * (t - t0) / (t1 - t0) if t1 > t0 else z1

    def actual_position_at(self, t: float) -> float:
        """Mechanical position at time ``t`` (simulator truth; backlash as of now)."""
        return self.motor_position_at(t) + self._lag

    def _record(self, t: float, z: float) -> None:
        with self._motion_lock:
            self._append_knot(t, z)

    def _cut_short(self, t: float, z: float) -> None:
        """The plan beyond ``t`` will not happen: the stage stopped there, at ``z``."""
        with self._motion_lock:
            k = bisect.bisect_right(self._knot_t, t)
            del self._knot_t[k:], self._knot_z[k:]
            self._append_knot(t, z)

    def _append_knot(self, t: float, z: float) -> None:  # with the motion lock held
        if self._knot_t and t <= self._knot_t[-1]:
            t = self._knot_t[-1] + 1e-9
        self._knot_t.append(t)
        self._knot_z.append(z)
        if len(self._knot_t) > 4096:  # only the recent past is ever asked for
            del self._knot_t[:2048], self._knot_z[:2048]

    def path_of_move(self, target: float) -> Callable[[float], float]:
        """Where a move from here to ``target`` would put the stage (mechanical truth, µm),
        ``s`` seconds after it starts, at the current velocity and unless it is stopped.

        The simulator's camera renders a fly sweep's frames from it ahead of the sweep.
        """
        start = float(self.sim_state["readback"])
        target = float(target)
        speed = self.velocity.get() / self.time_scale if self.time_scale else math.inf
        duration = abs(target - start) / speed if math.isfinite(speed) else 0.0
        lag = self.backlash_um.get() if target < start else 0.0 if target > start else self._lag

        def position(s: float) -> float:
            fraction = 1.0 if duration == 0 else min(1.0, max(0.0, s / duration))
            return start + (target - start) * fraction + lag

        return position

    def move_time_s(self, target: float) -> float:
        distance = abs(target - self.sim_state["setpoint"])
        return (distance / self.velocity.get() + self.settle_time_s.get()) * self.time_scale

    def _update_readback(self, position: float, timestamp: float) -> None:
        old = self.sim_state["readback"]
        self.sim_state["readback"] = position
        self.sim_state["readback_ts"] = timestamp
        for target in (self.readback, self):
            target._run_subs(
                sub_type=target.SUB_VALUE if target is self.readback else self.SUB_READBACK,
                old_value=old,
                value=position,
                timestamp=timestamp,
            )

    def set(self, value: float, *, settle: bool = True) -> MoveStatus:
        """Move to ``value`` µm; ``settle=False`` skips the settle (a point passed through)."""
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
        if self.moving:
            self.stop()
        start = float(self.sim_state["readback"])
        old_setpoint = self.sim_state["setpoint"]
        self.sim_state["setpoint"] = target
        self.sim_state["setpoint_ts"] = time.time()
        self.setpoint._run_subs(
            sub_type=self.setpoint.SUB_VALUE,
            old_value=old_setpoint,
            value=target,
            timestamp=self.sim_state["setpoint_ts"],
        )
        if target < start:
            self._lag = self.backlash_um.get()
        elif target > start:
            self._lag = 0.0
        status = MoveStatus(positioner=self, target=target)
        speed = self.velocity.get() / self.time_scale if self.time_scale else math.inf
        settle = self.settle_time_s.get() * self.time_scale if settle else 0.0
        self._stop_requested.clear()
        self._moving.set()
        duration = abs(target - start) / speed if math.isfinite(speed) else 0.0
        t0 = time.time()
        self.last_move_start = t0
        self._record(t0, start)
        self._record(t0 + duration, target)

        def travel() -> None:
            period = 1.0 / self.readback_rate_hz
            position = start
            if duration > 0:
                # readings at the corners of the path (the start, and the arrival below),
                # stamped when they were true: interpolating between readings is then exact
                # even when this thread wakes late (a loaded machine)
                self._update_readback(start, t0)
            while True:
                now = time.time()
                fraction = 1.0 if duration == 0 else min(1.0, (now - t0) / duration)
                position = start + (target - start) * fraction
                if self._stop_requested.is_set():
                    self._cut_short(now, position)
                    break
                self._update_readback(position, t0 + duration if fraction >= 1.0 else now)
                if fraction >= 1.0:
                    break
                # a stop is obeyed at once, not at the next reading
                self._stop_requested.wait(min(period, max(0.0, t0 + duration - now)) or period / 10)
            if settle and not self._stop_requested.is_set():
                time.sleep(settle)
            stopped = self._stop_requested.is_set()
            self._update_readback(position, time.time())
            self._moving.clear()
            if stopped:
                self.sim_state["setpoint"] = position
            if stopped and not self._stop_success:
                status.set_exception(
                    RuntimeError(
                        f"Move of {self.name} to {target} µm was stopped at {position:.3f} µm."
                    )
                )
            else:
                status.set_finished()

        threading.Thread(target=travel, name=f"{self.name}-move", daemon=True).start()
        return status

    def stop(self, *, success: bool = False) -> None:
        """Halt a move where the stage is now (its status fails unless ``success``)."""
        if self.moving:
            self._stop_success = success
            self._stop_requested.set()
            deadline = time.monotonic() + 1.0
            while self.moving and time.monotonic() < deadline:
                time.sleep(0.001)
