"""Focus by image sharpness: a full Brenner sweep and faster searches.

Every plan here checks the exposure first (preview frames, see
:func:`~autofocus_plans.exposure.auto_exposure`), sweeps upwards and makes
its final approach from below (so backlash always takes up the same way),
accepts a peak only through :func:`~autofocus_plans.peak.assess_peak` (the
data's own noise decides), restores the LED pattern and the exposure on every
exit, returns the stage to where it started when no focus is found, records
the optics and the search in its start document and writes its conclusion,
found or not, as one event of a ``focus_result`` stream.

A pause is safe before every exposure (a checkpoint). A search that is paused
and resumed starts again: the sample, the stage or the light may have
changed meanwhile, so it measures afresh rather than trusting the samples
taken before the pause.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
from bluesky.protocols import Movable, Readable
from bluesky.utils import Msg

from models.focus_measures import FOCUS_MEASURES

from .exposure import BadExposure, ExposureLimits, judge_reading
from .peak import DEFAULT_FALSE_ALARM, PeakVerdict, assess_peak, fit_peak, log_parabola_vertex
from .results import (
    FocusResult,
    NoFocusFound,
    NumbersReading,
    emit_focus_result,
    optics_metadata,
)
from .stubs import approach, depth_of_field_from_devices, search_range, stage_field, stage_limits

__all__ = ["FOCUS_METHODS", "brenner_sweep", "fast_focus"]

FOCUS_METHODS = ("coarse_to_fine", "golden")
_GOLDEN = (math.sqrt(5) - 1) / 2
_MAX_EXPOSURE_FRAMES = 6
_LONGEST_CHECKED_EXPOSURE_S = 1.0  # a focus search lengthens a dim exposure up to this


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


class _SearchRestart(Exception):
    """The run was paused and resumed: the samples taken so far may be stale."""


class _FocusCurve:
    """Focus-measure samples taken so far, the moves that take them, and the verdict on them.

    The RunEngine calls :meth:`pause` and :meth:`resume` on every object a plan
    has shown it (:meth:`watch`), which is how the search learns it was paused.
    """

    def __init__(
        self,
        camera,
        stage,
        metric: str,
        approach_um: float,
        dof_um: float,
        *,
        check_exposure: bool = True,
    ) -> None:
        self.camera, self.stage, self.metric = camera, stage, metric
        self.key = _measure_key(camera, metric)
        described = camera.describe()
        noise_key, saturation_key = f"{self.key}_noise", f"{camera.name}_saturated_fraction"
        self.noise_key = noise_key if noise_key in described else None
        self.saturation_key = saturation_key if saturation_key in described else None
        self.approach_um = approach_um
        self.dof_um = dof_um
        self.low, self.high = stage_limits(stage)
        self.resumed = False
        self.discarded = 0
        self.exposure = getattr(camera, "exposure_time", None)
        self.exposure_limits = (
            ExposureLimits.of(camera, _LONGEST_CHECKED_EXPOSURE_S)
            if self.exposure is not None
            else None
        )
        self.exposure_settled = not (check_exposure and self.exposure is not None)
        self.exposure_frames = 0
        # a child signal of the camera would be dropped from its reading: a reading of our own
        self.exposure_key = f"{camera.name}_exposure_s"
        self.exposure_reading = NumbersReading(
            self.exposure_key, {self.exposure_key: 0.0}, {self.exposure_key: "s"}
        )
        self.settled_exposure = float(self.exposure.get()) if self.exposure is not None else None
        # every verdict on new samples is one more chance for noise to pass (see assess_peak):
        # a search says how many it may take, and each is tested at its share
        self.looks_planned = 1
        self.reset()

    def reset(self) -> None:
        # a restart after a pause is a new search: its looks are counted afresh
        self.looks = 0
        self._looked_at = -1
        self.discarded += len(getattr(self, "z", []))
        self.z: list[float] = []
        self.values: list[float] = []
        self.noise: list[float] = []
        self.saturated: list[float] = []

    # bluesky.protocols.Pausable
    def pause(self) -> None:
        pass

    def resume(self) -> None:
        self.resumed = True

    def watch(self):
        yield Msg("null", self)

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
        yield from bps.checkpoint()  # a pause here loses nothing
        if self.resumed:
            self.resumed = False
            raise _SearchRestart
        yield from self.approach(z)  # from below, whatever the search order
        # the exposure is recorded with every frame: frames taken while it was being adjusted
        # stay in the run, and replays know to leave them out of the focus curve
        devices = [self.camera, self.stage]
        if self.exposure is not None:
            devices.append(self.exposure_reading.update({self.exposure_key: self.exposure.get()}))
        reading = yield from bps.trigger_and_read(devices)
        while not self.exposure_settled and reading:
            new = self._judge_exposure(reading)
            if new is None:
                self.exposure_settled = True
                self.settled_exposure = float(self.exposure.get())
                break
            yield from bps.mv(self.exposure, new)
            self.exposure_frames += 1
            devices[-1] = self.exposure_reading.update({self.exposure_key: new})
            reading = yield from bps.trigger_and_read(devices)
        value = float(reading[self.key]["value"]) if reading else math.nan
        self.z.append(z)
        self.values.append(value)
        if self.noise_key and reading:
            self.noise.append(float(reading[self.noise_key]["value"]))
        if self.saturation_key and reading:
            self.saturated.append(float(reading[self.saturation_key]["value"]))
        return value

    def _judge_exposure(self, reading) -> float | None:
        name = self.camera.name
        if self.exposure_frames >= _MAX_EXPOSURE_FRAMES:
            raise BadExposure(
                f"The exposure did not settle in {_MAX_EXPOSURE_FRAMES} frames (last "
                f"{self.exposure.get():g} s): is the light flickering?"
            )
        return judge_reading(self.exposure_limits, float(self.exposure.get()), reading, name)

    def scan(self, positions):
        positions = sorted(float(p) for p in positions)
        for z in positions:
            yield from self.measure(z)

    def verdict(self, false_alarm: float, *, decisive: bool = True) -> PeakVerdict:
        """The peak test on the samples so far, as the next look if there are new ones.

        Only a decisive verdict may end a search with a focus, so only decisive
        looks spend ``false_alarm``. A search steers by the others (is the peak
        open? where to measure next?), judged at the level of its next decisive
        look; whether a look is decisive must not depend on its own outcome.
        """
        measured = self.discarded + self.exposures  # never decreases, even across a restart
        look = self.looks + (measured != self._looked_at)
        if decisive and measured != self._looked_at:
            self.looks, self._looked_at = look, measured
        return assess_peak(
            self.z,
            self.values,
            depth_of_field_um=self.dof_um,
            camera_noise=self.noise if len(self.noise) == len(self.z) else None,
            saturated_fraction=self.saturated if len(self.saturated) == len(self.z) else None,
            false_alarm=false_alarm,
            look=max(look, 1),
            looks=self.looks_planned,
            metric=self.metric,
        )

    def extend(self, side: str, step: float, points: int) -> bool:
        """Measure ``points`` more past the ``side`` edge, within the soft limits."""
        z, _ = self.sorted()
        offsets = step * np.arange(1, points + 1)
        new = z[0] - offsets if side == "lower" else z[-1] + offsets
        new = new[(new >= self.low) & (new <= self.high)]
        if new.size == 0:
            return False
        yield from self.scan(new)
        return True


def _open_side(curve: _FocusCurve, verdict: PeakVerdict) -> str | None:
    """The side a search should extend: the curve is still rising towards that edge."""
    if verdict.failed == "open":
        return verdict.extra.get("side")
    if verdict.found or verdict.failed in ("saturated", "points"):
        return None
    z, values = curve.sorted()
    k = int(np.argmax(values))
    # a maximum on the edge that nearly stands out of the noise: the focus may lie beyond
    # it (extending only costs exposures; the peak test still decides)
    if k in (0, len(z) - 1) and verdict.significance >= 0.5 * verdict.threshold:
        return "lower" if k == 0 else "upper"
    return None


def _judge(
    curve: _FocusCurve,
    step: float,
    points: int,
    max_extensions: int,
    false_alarm: float,
    *,
    decisive: bool = True,
):
    """Assess the curve, extending the range while the peak is open on one side."""
    extensions = 0
    while True:
        verdict = curve.verdict(false_alarm, decisive=decisive)
        side = _open_side(curve, verdict)
        if side is None or extensions >= max_extensions:
            return verdict, extensions
        extended = yield from curve.extend(side, step, points)
        if not extended:
            return verdict, extensions
        extensions += 1


def refusal_sentence(verdict: PeakVerdict, origin: float, extensions: int) -> str:
    """The NoFocusFound sentence: the failed criterion, the extensions tried, where the stage is."""
    reason = verdict.reason
    if verdict.failed == "open" and extensions:
        reason += f" (after {extensions} extension(s), up to the soft limits)"
    return f"No focus peak: {reason}; the stage was returned to {origin:.2f} µm."


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
    check_exposure: bool,
    false_alarm: float,
    plan_name: str,
    plan_args: dict[str, Any],
    md: dict | None,
):
    """Shared frame of every sharpness plan: metadata, LED, exposure, run, verdict, restore."""
    dof = depth_of_field_from_devices(camera, led)
    curve = _FocusCurve(camera, stage, metric, approach_um, dof, check_exposure=check_exposure)
    origin, low, high = search_range(stage, *range_um, relative)
    led_pattern = led.pattern.get()
    initial_exposure = float(curve.exposure.get()) if curve.exposure is not None else math.nan
    _md = {
        "plan_name": plan_name,
        "plan_args": plan_args,
        "method": method,
        "metric": metric,
        "illumination": illumination,
        "search_range_um": [low, high],
        "start_z": origin,
        "depth_of_field_um": dof,
        "peak_false_alarm": false_alarm,
        "optics": optics_metadata(camera, led),
        "detectors": [camera.name],
        "motors": [stage_field(stage)],
        "hints": {"dimensions": [([stage_field(stage)], "primary")]},
        "purpose": "autofocus",
    }
    _md.update(md or {})

    outcome: dict[str, Any] = {}

    def restartable_search():
        restarts = 0
        while True:
            try:
                verdict, extensions = yield from search(curve, low, high)
                return verdict, extensions, restarts
            except _SearchRestart:
                # light and exposure may have been changed during the pause
                restarts += 1
                curve.reset()
                yield from bps.mv(led, illumination)
                if curve.settled_exposure is not None:
                    yield from bps.mv(curve.exposure, curve.settled_exposure)

    def searched():
        t0 = time.monotonic()
        yield from curve.watch()
        yield from bps.mv(led, illumination)
        verdict, extensions, restarts = yield from restartable_search()
        found = verdict.found
        if found and move_to_best:
            yield from curve.approach(verdict.center)
        result = FocusResult.from_verdict(
            verdict,
            method=method,
            metric=metric,
            metric_value=float(max(curve.values)) if curve.values else math.nan,
            start_z=origin,
            exposures=curve.exposures + curve.exposure_frames + curve.discarded,
            elapsed_s=time.monotonic() - t0,
            extensions=extensions,
            exposure_s=float(curve.exposure.get()) if curve.exposure is not None else math.nan,
            exposure_checks=curve.exposure_frames,
            restarts=restarts,
            extra={"verdict": verdict.failed or "found", "noise_source": verdict.noise_source},
        )
        yield from emit_focus_result(result)
        outcome["result"] = result
        if not found:
            raise NoFocusFound(
                refusal_sentence(verdict, origin, extensions), verdict=verdict, result=result
            )

    def back_to_origin(exc):
        yield from curve.approach(origin)

    def restore():
        yield from bps.mv(led, led_pattern)
        if curve.exposure is not None and float(curve.exposure.get()) != initial_exposure:
            yield from bps.mv(curve.exposure, initial_exposure)

    run_uid = yield from bpp.contingency_wrapper(
        bpp.stage_wrapper(bpp.run_wrapper(searched(), md=_md), [camera, stage]),
        except_plan=back_to_origin,
        final_plan=restore,
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
    check_exposure: bool = True,
    false_alarm: float = DEFAULT_FALSE_ALARM,
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
        Sweep range in µm, relative to the current position unless ``relative`` is False.
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
        How often the range may be extended while the peak is open on one side.
    check_exposure : bool
        Check the exposure on preview frames first and adjust it within the
        camera's limits (restored at the end); refuse when none is usable.
    false_alarm : float
        Probability that a curve without a focus peak is accepted (the peak
        test's significance level).
    approach_um : float
        Overshoot below a target before the final upward approach (backlash).
    md : dict, optional
        Metadata merged into the start document.

    Returns
    -------
    FocusResult
        Best Z (µm), fit parameters, the peak test's figures, exposures used, elapsed time.

    Raises
    ------
    NoFocusFound
        The curve has no focus peak; the sentence names the criterion that failed.
    """
    if num < 5:
        raise ValueError(f"A Brenner sweep needs at least 5 points, got num={num}.")

    def search(curve, low, high):
        curve.looks_planned = 1 + max_extensions  # one after the sweep and each extension
        yield from curve.scan(np.linspace(low, high, num))
        step = (high - low) / (num - 1)
        return (yield from _judge(curve, step, max(2, num // 2), max_extensions, false_alarm))

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
            check_exposure=check_exposure,
            false_alarm=false_alarm,
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


def _vertex_estimate(curve: _FocusCurve) -> float:
    """Log-parabola vertex through the best sample and its neighbours, else the best sample."""
    z, values = curve.sorted()
    k = int(np.argmax(values))
    vertex = (
        log_parabola_vertex(z[k - 1 : k + 2], values[k - 1 : k + 2]) if 0 < k < len(z) - 1 else None
    )
    return vertex if vertex is not None and z[0] <= vertex <= z[-1] else float(z[k])


def _widest_bright_gap(curve: _FocusCurve) -> float | None:
    """Midpoint of the unexplored stretch most likely to hide a narrow peak, if any is left.

    A gap wider than 1.2 DOF can hide the narrowest focus peak (sigma ~0.4 DOF);
    such gaps are weighed by their width (squared: the wider, the more it can
    hide) and by how high the curve is at their ends (a missed peak raises
    the samples either side of it).
    """
    z, values = curve.sorted()
    gaps = np.diff(z)
    if gaps.size == 0 or gaps.max() <= 1.2 * curve.dof_um:
        return None
    span = float(np.ptp(values)) or 1.0
    level = (values - values.min()) / span
    score = np.where(
        gaps > 1.2 * curve.dof_um, gaps**2 * (np.maximum(level[:-1], level[1:]) + 0.1), 0
    )
    k = int(np.argmax(score))
    return float((z[k] + z[k + 1]) / 2)


#: While it confirms a peak, a search judges for good only every this many exposures:
#: neighbouring looks see nearly the same curve, so judging after each would split the
#: false-alarm budget many ways for little new evidence.
_EXPOSURES_PER_LOOK = 3
#: Exposures a golden-section search leaves for confirming its peak (on the baseline, mostly).
_GOLDEN_CONFIRMING = 3


def _confirming_looks(exposures: int) -> int:
    """Decisive looks of :func:`_confirm` with ``exposures`` to spend."""
    return 1 + math.ceil(max(exposures, 0) / _EXPOSURES_PER_LOOK)


def _confirm(curve: _FocusCurve, budget: int, false_alarm: float):
    """Measure where the peak test points until a decisive verdict finds a peak, or the budget ends.

    The next exposure goes beside a single high sample (is it a peak?), to
    the baseline of a candidate that nearly stands out of the noise (the
    threshold falls as the baseline grows), through the top of a candidate
    that would pass (pinning it down until the next decisive look), or, with
    no candidate at all, into the widest gap of the coarse scan that could
    hide a narrow peak. The first verdict, the one after every
    :data:`_EXPOSURES_PER_LOOK` th exposure and the one after the last are
    decisive (:func:`_confirming_looks`); the others only steer. Returns the
    verdict that found a peak (located by :func:`_locate`), else None.
    """
    first = curve.exposures
    while True:
        taken = curve.exposures - first
        decisive = curve.exposures >= budget or taken % _EXPOSURES_PER_LOOK == 0
        verdict = curve.verdict(false_alarm, decisive=decisive)
        if verdict.failed in ("saturated", "points", "open", "ambiguous"):
            return
        if decisive and verdict.found:
            return (yield from _locate(curve, verdict, budget))
        if curve.exposures >= budget:
            return
        if verdict.failed == "support":  # one high sample: look either side of it
            target = _beside_the_top(curve)
        elif verdict.found:  # to be judged for good later: pin its top down meanwhile
            target = _vertex_estimate(curve)
        elif verdict.significance >= 0.5 * verdict.threshold:
            # on the camera's noise, more baseline lets the pre-test tell more surely that
            # there is no other noise; on the curve's own scatter, that scatter is known
            # better. Once the baseline is full, look through the top
            baseline = _baseline_gap(curve, verdict)
            target = baseline if baseline is not None else _vertex_estimate(curve)
        else:  # nothing yet: a narrow peak may hide in a gap of the coarse scan
            gap = _widest_bright_gap(curve)
            target = gap if gap is not None else _vertex_estimate(curve)
        yield from curve.measure(float(np.clip(target, curve.low, curve.high)))


def _locate(curve: _FocusCurve, verdict: PeakVerdict, budget: int, pins: int = 2):
    """Pin down the top of a peak already found, if no sample brackets it closely on one side.

    The peak test has decided; exposures beside the top (within the budget)
    only place it better, so they are not judged again: the verdict stands,
    with the centre refitted over the samples around the new top.
    """
    moved = False
    while pins and curve.exposures < budget and _top_is_open(curve):
        yield from curve.measure(float(np.clip(_beside_the_top(curve), curve.low, curve.high)))
        pins -= 1
        moved = True
    if not moved:
        return verdict
    z, values = curve.sorted()
    top = float(z[int(np.argmax(values))])
    reach = 0.75 * max(verdict.width_um, curve.dof_um)
    fit = fit_peak(z, values, window=(top - reach, top + reach))
    if not math.isfinite(fit.center):
        return verdict
    center = float(np.clip(fit.center, z[0], z[-1]))
    return dataclasses.replace(verdict, center=center, fit=fit, points=len(z))


def _parabola_refine(curve: _FocusCurve, tolerance_um: float, budget: int, false_alarm: float):
    """Coarse-to-fine: a pair of exposures half a DOF either side of the vertex, then confirm.

    Half a depth of field is where a focus peak is still high but already
    curved, so the pair pins its top down and the fit over all samples does
    the rest; :func:`_confirm` spends what is left while the peak test is
    not yet convinced.
    """
    estimate = _vertex_estimate(curve)
    half = max(0.5 * curve.dof_um, tolerance_um)
    for z in (estimate - half, estimate + half):
        if curve.exposures < budget:
            yield from curve.measure(float(np.clip(z, curve.low, curve.high)))
    return (yield from _confirm(curve, budget, false_alarm))


def _baseline_gap(curve: _FocusCurve, verdict: PeakVerdict) -> float | None:
    """Midpoint of the widest gap between samples well clear of the candidate peak, if any."""
    z, _ = curve.sorted()
    centre = _vertex_estimate(curve)
    clear = 2 * max(verdict.width_um, curve.dof_um) if np.isfinite(verdict.width_um) else 0
    mids, gaps = (z[1:] + z[:-1]) / 2, np.diff(z)
    usable = (np.abs(mids - centre) > clear) & (gaps > 0.5 * curve.dof_um)
    if not np.any(usable):
        return None
    return float(mids[usable][np.argmax(gaps[usable])])


def _top_is_open(curve: _FocusCurve) -> bool:
    """The highest sample has no other within 1.2 DOF on one side (inside the range).

    A gap that wide can hide the top of the narrowest focus peak (sigma ~0.4
    DOF), as in :func:`_widest_bright_gap`.
    """
    z, values = curve.sorted()
    k = int(np.argmax(values))
    reach = 1.2 * curve.dof_um
    below = (k > 0 and z[k] - z[k - 1] <= reach) or z[k] - reach < curve.low
    above = (k < len(z) - 1 and z[k + 1] - z[k] <= reach) or z[k] + reach > curve.high
    return not (below and above)


def _beside_the_top(curve: _FocusCurve) -> float:
    """Half a DOF from the highest sample, on the side with no sample that close yet."""
    z, values = curve.sorted()
    top = float(z[int(np.argmax(values))])
    half = 0.5 * curve.dof_um
    for candidate in (top - half, top + half):
        if np.min(np.abs(z - candidate)) > 0.3 * curve.dof_um:
            return candidate
    return top


def fast_focus(
    camera: Readable,
    stage: Movable,
    led: Movable,
    start: float = -20.0,
    stop: float = 20.0,
    *,
    tolerance_um: float = 0.0,
    method: str = "coarse_to_fine",
    coarse_points: int = 0,
    max_exposures: int = 15,
    relative: bool = True,
    metric: str = "brenner",
    illumination: str = "brightfield",
    move_to_best: bool = True,
    max_extensions: int = 2,
    check_exposure: bool = True,
    false_alarm: float = DEFAULT_FALSE_ALARM,
    approach_um: float = 5.0,
    md: dict | None = None,
):
    """Find focus with as few exposures as possible.

    A coarse scan, at most 1.85 depths of field apart (a focus peak is at
    least ~0.4 DOF wide with broad tails, so it shows in at least one
    neighbour), brackets the peak, extending the range while the peak is
    open on one side; then ``method`` refines it: ``"coarse_to_fine"``
    places a pair of exposures half a DOF either side of the vertex of a
    parabola through log(measure), and more, only while the peak test is not
    yet convinced (up to ``max_exposures``), in the gaps the coarse scan left,
    on the baseline and at the top; it judges for good after the pair, after
    every third exposure that follows and after the last, so that looks
    which see nearly the same curve do not split ``false_alarm`` many ways.
    ``"golden"`` runs a golden-section search inside the bracket down to
    ``tolerance_um``, keeping the last three exposures for confirming the
    peak in the same way. The same peak test as
    :func:`brenner_sweep` judges all the samples, and the focus is the fit
    over them.

    Parameters
    ----------
    camera : Readable
        Camera reporting ``<camera>_<metric>`` with each frame.
    stage : Movable
        Z stage in µm.
    led : Movable
        LED illumination, restored on exit.
    start, stop : float
        Search range in µm, relative to the current position unless ``relative`` is False.
    tolerance_um : float
        Golden-section: half-width of the final bracket (0, the default, is a
        tenth of the depth of field). Coarse-to-fine: the smallest half-width
        of its pair of exposures around the vertex.
    method : str
        ``"coarse_to_fine"`` or ``"golden"``.
    coarse_points : int
        Exposures in the bracketing scan (at least 5); 0 chooses them from the
        depth of field.
    max_exposures : int
        Recorded exposures at most, coarse scan included (each range extension adds 2).
    relative, metric, illumination, move_to_best, max_extensions, check_exposure
        As for :func:`brenner_sweep`.
    false_alarm, approach_um, md
        As for :func:`brenner_sweep`.

    Returns
    -------
    FocusResult
        Best Z, the peak test's figures and the number of exposures used.

    Raises
    ------
    NoFocusFound
        The samples show no focus peak; the sentence names the criterion that failed.
    """
    if method not in FOCUS_METHODS:
        raise ValueError(f"Unknown fast_focus method {method!r}; choose one of {FOCUS_METHODS}.")
    if coarse_points and coarse_points < 5:
        raise ValueError(f"fast_focus needs at least 5 coarse points, got {coarse_points}.")
    if tolerance_um < 0:
        raise ValueError(
            f"tolerance_um must be positive (or 0 for a tenth of a DOF), got {tolerance_um}."
        )

    def search(curve, low, high):
        tolerance = tolerance_um or 0.1 * curve.dof_um
        span_dof = (high - low) / curve.dof_um
        points = coarse_points or int(np.clip(np.ceil(span_dof / 1.85), 4, 30)) + 1
        refining = max(max_exposures - points, 0)
        coarse_decides = method != "golden" and not refining
        if coarse_decides:  # nothing left to refine with: judged as a sweep
            curve.looks_planned = 1 + max_extensions
        else:
            # the coarse scan and its extensions only steer (the refinement always follows);
            # the looks that confirm the refined peak decide. An extension after them is a
            # look beyond the plan, at a smaller share
            confirming = (
                min(_GOLDEN_CONFIRMING, max(refining - 2, 0))
                if method == "golden"
                else refining - 2  # after the pair around the vertex
            )
            planned = _confirming_looks(confirming)
            curve.looks_planned = max(planned, 2) if max_extensions else planned
        yield from curve.scan(np.linspace(low, high, points))
        step = (high - low) / (points - 1)
        _, extensions = yield from _judge(
            curve, step, 2, max_extensions, false_alarm, decisive=coarse_decides
        )
        found = None
        if method == "golden":
            z, values = curve.sorted()
            k = int(np.argmax(values))
            a, b = z[max(k - 1, 0)], z[min(k + 1, len(z) - 1)]
            budget = curve.exposures + refining
            yield from _golden_refine(curve, a, b, tolerance, budget - max(confirming, 0))
            found = yield from _confirm(curve, budget, false_alarm)
        elif refining:
            found = yield from _parabola_refine(
                curve, tolerance, curve.exposures + refining, false_alarm
            )
        if found is not None:  # decided, and located since: not judged again
            return found, extensions
        # the refined peak may still be open towards one edge: extend there too
        verdict, more = yield from _judge(curve, step, 2, max_extensions - extensions, false_alarm)
        return verdict, extensions + more

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
            check_exposure=check_exposure,
            false_alarm=false_alarm,
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
