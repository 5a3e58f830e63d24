"""Focus by image sharpness: a full Brenner sweep and faster searches.

Every plan here sweeps upwards and makes its final approach from below (so
backlash always takes up the same way), restores the LED pattern on every
exit, returns the stage to where it started when no focus is found, records
the optics and the search in its start document and writes its conclusion as
one event of a ``focus_result`` stream.
"""

from __future__ import annotations

import math
import time
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
from bluesky.protocols import Movable, Readable

from models.focus_measures import FOCUS_MEASURES

from .peak import PeakFit, curve_contrast, fit_peak, log_parabola_vertex
from .results import FocusResult, NoFocusFound, emit_focus_result, optics_metadata
from .stubs import approach, stage_field, stage_limits

__all__ = ["FOCUS_METHODS", "brenner_sweep", "fast_focus"]

FOCUS_METHODS = ("coarse_to_fine", "golden")
_GOLDEN = (math.sqrt(5) - 1) / 2


def _measure_key(camera, metric: str) -> str:
    key = f"{camera.name}_{metric}"
    if key not in camera.describe():
        reported = sorted(m for m in FOCUS_MEASURES if f"{camera.name}_{m}" in camera.describe())
        if metric not in FOCUS_MEASURES:
            raise ValueError(f"Unknown focus measure {metric!r}; the camera reports {reported}.")
        raise ValueError(
            f"Camera {camera.name!r} does not report the focus measure {metric!r}; "
            f"choose one of {reported} or create the camera with measures=({metric!r},)."
        )
    return key


class _FocusCurve:
    """Focus-measure samples taken so far, and the moves that take them."""

    def __init__(self, camera, stage, key: str, approach_um: float) -> None:
        self.camera, self.stage, self.key = camera, stage, key
        self.approach_um = approach_um
        self.low, self.high = stage_limits(stage)
        self.z: list[float] = []
        self.values: list[float] = []

    @property
    def exposures(self) -> int:
        return len(self.z)

    def sorted(self) -> tuple[np.ndarray, np.ndarray]:
        z = np.asarray(self.z)
        order = np.argsort(z)
        return z[order], np.asarray(self.values)[order]

    def approach(self, target: float):
        yield from approach(self.stage, target, self.approach_um)

    def measure(self, z: float):
        yield from self.approach(z)  # from below, whatever the search order
        reading = yield from bps.trigger_and_read([self.camera, self.stage])
        value = float(reading[self.key]["value"]) if reading else math.nan
        self.z.append(z)
        self.values.append(value)
        return value

    def scan(self, positions):
        positions = sorted(float(p) for p in positions)
        if not positions:
            return
        yield from self.approach(positions[0])
        for z in positions:
            yield from self.measure(z)

    def check_significant(self, min_contrast: float, origin: float):
        _, values = self.sorted()
        contrast = curve_contrast(values)
        if not contrast >= min_contrast:
            raise NoFocusFound(
                f"No focus peak: the {self.key} curve varies by only {contrast:.1%} over "
                f"z = {min(self.z):.2f} to {max(self.z):.2f} µm (blank or flat field?); "
                f"the stage was returned to {origin:.2f} µm. Check the sample, the light "
                "and the search range."
            )

    def extend_while_on_edge(self, step: float, points: int, max_extensions: int, origin: float):
        """Extend the range past an edge maximum, within the soft limits; returns the count."""
        extensions = 0
        while True:
            z, values = self.sorted()
            k = int(np.argmax(values))
            at_low, at_high = k == 0, k == len(z) - 1
            if not (at_low or at_high):
                return extensions
            if extensions >= max_extensions:
                raise NoFocusFound(
                    f"No focus peak: the maximum stays on the {'lower' if at_low else 'upper'} "
                    f"edge of the range after {extensions} extension(s) (z = {z[k]:.2f} µm); "
                    f"the stage was returned to {origin:.2f} µm. Widen the range or move "
                    "closer to focus first."
                )
            offsets = step * np.arange(1, points + 1)
            new = z[0] - offsets if at_low else z[-1] + offsets
            new = new[(new >= self.low) & (new <= self.high)]
            if new.size == 0:
                raise NoFocusFound(
                    f"No focus peak: the maximum is at the stage's soft limit (z = {z[k]:.2f} "
                    f"µm); the stage was returned to {origin:.2f} µm."
                )
            yield from self.scan(new)
            extensions += 1


def _focus_plan(
    camera,
    stage,
    led,
    *,
    method: str,
    search,
    metric: str,
    illumination: str,
    approach_um: float,
    range_um: tuple[float, float],
    relative: bool,
    move_to_best: bool,
    plan_name: str,
    plan_args: dict[str, Any],
    md: dict | None,
):
    """Shared frame of every sharpness plan: metadata, LED, run, result, restore."""
    key = _measure_key(camera, metric)
    origin = float(stage.position)
    low, high = (origin + range_um[0], origin + range_um[1]) if relative else range_um
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
    led_pattern = led.pattern.get()
    curve = _FocusCurve(camera, stage, key, approach_um)
    _md = {
        "plan_name": plan_name,
        "plan_args": plan_args,
        "method": method,
        "metric": metric,
        "illumination": illumination,
        "search_range_um": [low, high],
        "start_z": origin,
        "optics": optics_metadata(camera, led),
        "detectors": [camera.name],
        "motors": [stage_field(stage)],
        "hints": {"dimensions": [([stage_field(stage)], "primary")]},
        "purpose": "autofocus",
    }
    _md.update(md or {})

    outcome: dict[str, FocusResult] = {}

    @bpp.stage_decorator([camera, stage])
    @bpp.run_decorator(md=_md)
    def inner():
        t0 = time.monotonic()
        yield from bps.mv(led, illumination)
        fit, extensions = yield from search(curve, low, high, origin)
        best = float(np.clip(fit.center, min(curve.z), max(curve.z)))
        _z, values = curve.sorted()
        if move_to_best:
            yield from curve.approach(best)
        result = FocusResult(
            best_z=best,
            method=method,
            metric=metric,
            metric_value=float(values.max()),
            fit_center=fit.center,
            fit_amplitude=fit.amplitude,
            fit_sigma=fit.sigma,
            fit_offset=fit.offset,
            fit_r2=fit.r2,
            start_z=origin,
            exposures=curve.exposures,
            elapsed_s=time.monotonic() - t0,
            extensions=extensions,
        )
        yield from emit_focus_result(result)
        outcome["result"] = result

    def back_to_origin(exc):
        yield from curve.approach(origin)

    def restore_led():
        yield from bps.mv(led, led_pattern)

    run_uid = yield from bpp.contingency_wrapper(
        inner(), except_plan=back_to_origin, final_plan=restore_led
    )
    result = outcome["result"]
    result.run_uid = run_uid or ""
    return result


def brenner_sweep(
    camera: Readable,
    stage: Movable,
    led: Movable,
    start: float = -20.0,
    stop: float = 20.0,
    num: int = 21,
    *,
    relative: bool = True,
    metric: str = "brenner",
    illumination: str = "brightfield",
    move_to_best: bool = True,
    max_extensions: int = 2,
    min_contrast: float = 0.1,
    approach_um: float = 5.0,
    md: dict | None = None,
):
    """Find focus with a full sweep of Z and a fit around the sharpest image.

    Parameters
    ----------
    camera : Readable
        Camera reporting the focus measure ``<camera>_<metric>`` with each frame.
    stage : Movable
        Z (focus) stage, in µm.
    led : Movable
        LED illumination; set to ``illumination`` for the sweep and restored after.
    start, stop : float
        Sweep range in µm (relative to the current position if ``relative``).
    num : int
        Number of exposures in the sweep (at least 5).
    relative : bool
        Whether ``start`` and ``stop`` are offsets from the current position.
    metric : str
        Focus measure to maximise (``brenner`` or another the camera reports).
    illumination : str
        LED pattern during the sweep.
    move_to_best : bool
        Move to the fitted focus at the end (from below).
    max_extensions : int
        How often the range may be extended when the maximum lies on its edge.
    min_contrast : float
        Smallest rise of the peak above the curve's floor (relative) that counts as focus.
    approach_um : float
        Overshoot below a target before the final upward approach (backlash).
    md : dict, optional
        Metadata merged into the start document.

    Returns
    -------
    FocusResult
        Best Z (µm), fit parameters and quality, exposures used, elapsed time.
    """
    if num < 5:
        raise ValueError(f"A Brenner sweep needs at least 5 points, got num={num}.")

    def search(curve, low, high, origin):
        positions = np.linspace(low, high, num)
        yield from curve.scan(positions)
        curve.check_significant(min_contrast, origin)
        step = (high - low) / (num - 1)
        extensions = yield from curve.extend_while_on_edge(
            step, max(2, num // 2), max_extensions, origin
        )
        z, values = curve.sorted()
        return fit_peak(z, values), extensions

    return (
        yield from _focus_plan(
            camera,
            stage,
            led,
            method="brenner_sweep",
            search=search,
            metric=metric,
            illumination=illumination,
            approach_um=approach_um,
            range_um=(start, stop),
            relative=relative,
            move_to_best=move_to_best,
            plan_name="brenner_sweep",
            plan_args={"start": start, "stop": stop, "num": num, "relative": relative},
            md=md,
        )
    )


def _golden_refine(curve: _FocusCurve, a: float, b: float, tolerance_um: float, budget: int):
    """Golden-section search for the maximum in [a, b] down to ``tolerance_um``."""
    c = b - _GOLDEN * (b - a)
    d = a + _GOLDEN * (b - a)
    fc = yield from curve.measure(c)
    fd = yield from curve.measure(d)
    while (b - a) / 2 > tolerance_um and curve.exposures < budget:
        if fc >= fd:
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = yield from curve.measure(c)
        else:
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = yield from curve.measure(d)
    center = (c if fc >= fd else d) if (b - a) / 2 > tolerance_um else (a + b) / 2
    return center


def _vertex_estimate(curve: _FocusCurve) -> float:
    """Log-parabola vertex through the best sample and its neighbours, else the best sample."""
    z, values = curve.sorted()
    k = int(np.argmax(values))
    vertex = (
        log_parabola_vertex(z[k - 1 : k + 2], values[k - 1 : k + 2]) if 0 < k < len(z) - 1 else None
    )
    return vertex if vertex is not None and z[0] <= vertex <= z[-1] else float(z[k])


def _parabola_refine(curve: _FocusCurve, step: float, tolerance_um: float, budget: int):
    """Coarse-to-fine: log-parabola vertex, then 2 points at a third of the step around it."""
    estimate = None
    while curve.exposures + 2 <= budget:
        new_estimate = _vertex_estimate(curve)
        if (
            estimate is not None
            and abs(new_estimate - estimate) <= tolerance_um
            and step <= 2 * tolerance_um * 3
        ):
            return new_estimate
        estimate = new_estimate
        step = max(step / 3, tolerance_um)
        yield from curve.measure(estimate - step)
        yield from curve.measure(estimate + step)
    return _vertex_estimate(curve)


def fast_focus(
    camera: Readable,
    stage: Movable,
    led: Movable,
    start: float = -20.0,
    stop: float = 20.0,
    *,
    tolerance_um: float = 0.5,
    method: str = "coarse_to_fine",
    coarse_points: int = 11,
    max_exposures: int = 15,
    relative: bool = True,
    metric: str = "brenner",
    illumination: str = "brightfield",
    move_to_best: bool = True,
    max_extensions: int = 2,
    min_contrast: float = 0.1,
    approach_um: float = 5.0,
    md: dict | None = None,
):
    """Find focus to ``tolerance_um`` with as few exposures as possible.

    A coarse scan brackets the peak (extending the range when the maximum
    is on an edge); then ``method`` narrows it down: ``"coarse_to_fine"``
    places pairs of exposures around the vertex of a parabola through
    log(measure) (exact for a Gaussian peak) at ever finer steps;
    ``"golden"`` runs a golden-section search inside the bracket.

    Parameters
    ----------
    camera : Readable
        Camera reporting ``<camera>_<metric>`` with each frame.
    stage : Movable
        Z stage in µm.
    led : Movable
        LED illumination, restored on exit.
    start, stop : float
        Search range in µm (relative to the current position if ``relative``).
    tolerance_um : float
        Required accuracy of the focus position, µm.
    method : str
        ``"coarse_to_fine"`` or ``"golden"``.
    coarse_points : int
        Exposures in the bracketing scan (at least 3).
    max_exposures : int
        Total exposures, coarse scan included (each range extension adds 2).
    relative, metric, illumination, move_to_best, max_extensions, min_contrast, approach_um, md
        As for :func:`brenner_sweep`.

    Returns
    -------
    FocusResult
        Best Z and the number of exposures used.
    """
    if method not in FOCUS_METHODS:
        raise ValueError(f"Unknown fast_focus method {method!r}; choose one of {FOCUS_METHODS}.")
    if coarse_points < 3:
        raise ValueError(f"fast_focus needs at least 3 coarse points, got {coarse_points}.")
    if tolerance_um <= 0:
        raise ValueError(f"tolerance_um must be positive, got {tolerance_um}.")

    def search(curve, low, high, origin):
        yield from curve.scan(np.linspace(low, high, coarse_points))
        curve.check_significant(min_contrast, origin)
        step = (high - low) / (coarse_points - 1)
        extensions = yield from curve.extend_while_on_edge(step, 2, max_extensions, origin)
        budget = max_exposures + 2 * extensions
        z, values = curve.sorted()
        k = int(np.argmax(values))
        if method == "golden":
            center = yield from _golden_refine(curve, z[k - 1], z[k + 1], tolerance_um, budget)
        else:
            center = yield from _parabola_refine(curve, step, tolerance_um, budget)
        z, values = curve.sorted()
        return PeakFit(
            float(center),
            float(values.max()),
            math.nan,
            float(values.min()),
            math.nan,
            len(z),
            method,
        ), extensions

    return (
        yield from _focus_plan(
            camera,
            stage,
            led,
            method=f"fast_focus:{method}",
            search=search,
            metric=metric,
            illumination=illumination,
            approach_um=approach_um,
            range_um=(start, stop),
            relative=relative,
            move_to_best=move_to_best,
            plan_name="fast_focus",
            plan_args={
                "start": start,
                "stop": stop,
                "tolerance_um": tolerance_um,
                "method": method,
                "coarse_points": coarse_points,
                "max_exposures": max_exposures,
                "relative": relative,
            },
            md=md,
        )
    )
