"""Focus by a continuous-motion (fly) sweep: the stage moves while the camera streams.

The stage sweeps upwards at constant speed; every frame's Z is its readback
interpolated to the middle of the frame's exposure (:class:`devices.ZFlyer`).
The speed keeps the blur within one exposure to ``blur_dof`` depths of field
and the spacing between frames to ``max_spacing_dof`` (rounded down so that
frames fall a whole number of the peak test's pattern steps apart). The curve
is judged by the same peak test as the step searches
(:func:`~autofocus_plans.peak.assess_peak`), the range is extended by another
sweep while the peak is open on one side, and the final approach is from below.

The stage goes straight to the start of a run-up below the range (the run-up
takes up backlash, as the overshoot of a step search's approach does) and
sweeps a little past the range. Only frames exposed entirely at speed are
judged (a frame partly still has less blur, so a different focus measure),
and of those the evenly spaced block centred on the range: every sweep of the
same range at the same speed is judged on the same sampling pattern, so the
peak test's Monte-Carlo threshold for it is computed while the run opens and
the stage moves, or found in the cache, instead of after the sweep. Every
frame is still recorded.

With ``early_stop=True`` the curve is also judged while the stage sweeps, a
planned look of the peak test at every frame once the curve spans
``_FIRST_LOOK_DOF``; the first look that accepts a peak stops the stage, and
that look's frames are the ones judged.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import time
from dataclasses import dataclass
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
from bluesky.protocols import Movable, Readable

from devices.fly import ZFlyer
from devices.stage import can_skip_settle

from .brenner import _measure_key, refusal_sentence
from .exposure import auto_exposure
from .peak import DEFAULT_FALSE_ALARM, assess_peak, pattern_resolution_dof, prepare_threshold
from .results import FocusResult, NoFocusFound, emit_focus_result, optics_metadata
from .stubs import (
    approach,
    depth_of_field_from_devices,
    pass_through,
    search_range,
    stage_field,
    stage_limits,
    stage_settle_time,
)

__all__ = ["fly_exposure", "fly_speed", "fly_sweep"]

#: verdicts that fewer photons can cause: a search at a shortened exposure that ends so
#: is repeated at the full one
_NOISE_LIMITED = ("significance", "support")


def fly_speed(
    dof_um: float,
    exposure_s: float,
    frame_period_s: float,
    *,
    blur_dof: float = 0.5,
    max_spacing_dof: float = 0.75,
    max_velocity_um_per_s: float = math.inf,
) -> float:
    """Sweep speed (µm/s): blur per exposure ≤ ``blur_dof``, frame spacing ≤ ``max_spacing_dof``."""
    if not 0 < blur_dof <= 1 or not 0 < max_spacing_dof <= 1:
        raise ValueError(
            f"blur_dof and max_spacing_dof must be in (0, 1] depths of field, got {blur_dof!r} "
            f"and {max_spacing_dof!r}."
        )
    return min(
        blur_dof * dof_um / exposure_s,
        max_spacing_dof * dof_um / frame_period_s,
        max_velocity_um_per_s,
    )


def fly_exposure(
    camera,
    dof_um: float,
    exposure_s: float,
    gain: float,
    *,
    blur_dof: float = 0.5,
    max_spacing_dof: float = 0.75,
    max_velocity_um_per_s: float = math.inf,
) -> tuple[float, float]:
    """(exposure s, gain) for the fastest sweep the camera and the stage allow.

    The longest exposure no longer than ``exposure_s`` at which
    :func:`fly_speed` is within 0.1 % of the fastest any shorter exposure
    reaches, with the gain raised in proportion so that the frames keep their
    brightness in ADU; exposures shorter than the camera's ``min_exposure_s``
    or needing a gain above its ``max_gain`` are not considered. ``exposure_s``
    and ``gain`` come back when nothing shorter is faster (the stage's speed
    already limits the sweep), or when the camera cannot say its frame period
    for another exposure (``frame_period_s(exposure_s=...)``).
    """
    try:
        inspect.signature(camera.frame_period_s).bind(exposure_s=exposure_s)
    except (TypeError, ValueError):
        return exposure_s, gain
    max_gain = float(camera.max_gain.get()) if hasattr(camera, "max_gain") else gain
    shortest = exposure_s * gain / max_gain
    if hasattr(camera, "min_exposure_s"):
        shortest = max(shortest, float(camera.min_exposure_s.get()))
    if not shortest < exposure_s:
        return exposure_s, gain
    exposures = np.geomspace(shortest, exposure_s, 400)
    speeds = np.array(
        [
            fly_speed(
                dof_um,
                e,
                float(camera.frame_period_s(exposure_s=e)),
                blur_dof=blur_dof,
                max_spacing_dof=max_spacing_dof,
                max_velocity_um_per_s=max_velocity_um_per_s,
            )
            for e in exposures
        ]
    )
    if not speeds.max() > speeds[-1] * 1.001:
        return exposure_s, gain
    chosen = float(exposures[np.flatnonzero(speeds >= speeds.max() * 0.999)[-1]])
    return chosen, gain * exposure_s / chosen


def _expose_with(camera, exposure_s: float, gain: float | None):
    """Plan stub: set the camera's exposure and gain (None: leave it) where they differ."""
    if float(camera.exposure_time.get()) != exposure_s:
        yield from bps.mv(camera.exposure_time, exposure_s)
    if gain is not None and float(camera.gain.get()) != gain:
        yield from bps.mv(camera.gain, gain)


#: A frame is at speed when the stage travelled this close to speed x exposure during it.
_AT_SPEED_TOLERANCE = 0.02


def _at_speed(travel, full_travel: float):
    """Whether a frame (or each of an array of frames) was exposed entirely at the sweep's speed."""
    return np.abs(travel - full_travel) <= _AT_SPEED_TOLERANCE * full_travel


def _on_pattern_grid(speed: float, period_s: float, dof_um: float) -> float:
    """``speed`` lowered so that frames fall a whole number of pattern steps apart.

    The peak test's threshold is cached per sampling pattern, to
    :func:`~autofocus_plans.peak.pattern_resolution_dof`; frames exactly a
    multiple of it apart meet the same pattern on every sweep of the same
    length, instead of one that rounds either way.
    """
    step = pattern_resolution_dof()
    steps = math.floor(speed * period_s / dof_um / step + 1e-6)
    return steps * step * dof_um / period_s if steps >= 1 else speed


@dataclass(frozen=True)
class _SweepGeometry:
    """Where one sweep runs (µm), and which of its frames are judged.

    The judged frames are the ``frames`` consecutive frames exposed entirely
    at the sweep's speed whose middle is nearest the middle of the range
    (``center``): at speed they are exactly ``spacing_um`` apart, so every
    sweep over a range of the same length at the same speed is judged on the
    same sampling pattern, whose threshold can be computed while the stage
    moves. The sweep runs far enough past both ends that such frames exist
    whatever the camera's phase.
    """

    start: float
    stop: float
    center: float
    spacing_um: float
    frames: int

    def nominal_z(self) -> list[float]:
        """The judged frames' Z relative to the first (µm)."""
        return [k * self.spacing_um for k in range(self.frames)]

    def judged(self, z: np.ndarray, travel: np.ndarray, full_travel: float) -> np.ndarray:
        """Indices of the judged frames among frames at ``z`` that travelled ``travel`` µm."""
        at_speed = _at_speed(travel, full_travel)
        order = np.flatnonzero(at_speed)[np.argsort(z[at_speed], kind="stable")]
        if len(order) <= self.frames:  # cut short by the stage's limits: all there is
            return order
        # at speed, frames are evenly spaced: the block whose middle is nearest the range's
        middles = 0.5 * (z[order[: len(order) - self.frames + 1]] + z[order[self.frames - 1 :]])
        first = int(np.argmin(np.abs(middles - self.center)))
        return order[first : first + self.frames]


def _sweep_geometry(
    low: float,
    high: float,
    *,
    speed: float,
    exposure_s: float,
    period_s: float,
    run_up_um: float,
    limits: tuple[float, float],
) -> _SweepGeometry:
    """The sweep that samples ``[low, high]`` (µm) at speed, as :class:`_SweepGeometry`."""
    spacing = speed * period_s
    # one frame more than the range needs: the judged frames reach within half a spacing
    # of both ends (or beyond), as a step sweep's first and last points do
    frames = math.ceil((high - low) / spacing - 1e-9) + 1
    center, half = 0.5 * (low + high), 0.5 * frames * spacing
    # the block of frames nearest the middle lies within [center - half, center + half]
    # whatever the camera's phase; a frame's Z is half an exposure's travel into it. Below,
    # a run-up takes up any backlash from the move down to the start before the first.
    half_blur = 0.5 * speed * exposure_s
    return _SweepGeometry(
        start=max(center - half - half_blur - run_up_um, limits[0]),
        stop=min(center + half + half_blur, limits[1]),
        center=center,
        spacing_um=spacing,
        frames=frames,
    )


def _early_judge(geometry: _SweepGeometry, full_travel: float, looks, early: dict, assess):
    """A :class:`~devices.ZFlyer` judge that stops the sweep at the first look finding a peak.

    ``looks`` are (judged frames, look number, threshold future) in order;
    each is taken once that many judged frames (at speed, from the start of the
    range) have arrived, if its threshold is ready by then (a look not taken
    spends nothing). ``assess(frames, look)`` gives the peak verdict. The look
    that stopped the sweep and its frames' exposure starts go into ``early``.
    """
    lowest = geometry.center - 0.5 * geometry.frames * geometry.spacing_um
    pending = list(looks)

    def judge(frames) -> bool:
        judged = [f for f in frames if _at_speed(f["travel"], full_travel) and f["z"] >= lowest]
        due = [i for i, (count, _, _) in enumerate(pending) if count <= len(judged)]
        if not due:
            return False
        count, look, threshold = pending[due[-1]]
        del pending[: due[-1] + 1]
        if threshold is not None and not threshold.done():
            return False  # computing it now would take longer than the sweep
        part = judged[:count]
        if not assess(part, look).found:
            return False
        early.update(look=look, starts=[f["exposure_start"] for f in part])
        return True

    return judge


#: The first look during a sweep, in depths of field swept: the peak test's thresholds for
#: fewer samples are so high that a look there rarely accepts, and each look spends part of
#: the false-alarm rate (from 3 DOF on every second frame measured 4 % slower).
_FIRST_LOOK_DOF = 4.5


def _early_checks(geometry: _SweepGeometry, dof_um: float) -> list[int]:
    """How many judged frames each look during a sweep takes (every frame, from 4.5 DOF)."""
    first = max(5, math.ceil(_FIRST_LOOK_DOF * dof_um / geometry.spacing_um))
    return list(range(first, geometry.frames))


def fly_sweep(
    camera: Readable,
    stage: Movable,
    led: Movable,
    start: float = -20.0,
    stop: float = 20.0,
    *,
    relative: bool = True,
    blur_dof: float = 0.5,
    max_spacing_dof: float = 0.75,
    metric: str = "brenner",
    illumination: str = "brightfield",
    move_to_best: bool = True,
    max_extensions: int = 2,
    check_exposure: bool = True,
    false_alarm: float = DEFAULT_FALSE_ALARM,
    approach_um: float = 5.0,
    fast_exposure: bool = True,
    early_stop: bool = False,
    md: dict | None = None,
):
    """Find focus with one continuous sweep of Z while the camera streams.

    Parameters
    ----------
    camera : Readable
        A camera that can stream frames (``start_streaming``/``stop_streaming``)
        and reports ``<camera>_<metric>`` per frame.
    stage : Movable
        Z stage in µm with a ``velocity`` signal (its maximum speed; restored after).
    led : Movable
        LED illumination; set to ``illumination`` for the sweep and restored after.
    start, stop : float
        Sweep range in µm, relative to the current position unless ``relative`` is False.
    relative : bool
        Whether ``start`` and ``stop`` are offsets from the current position.
    blur_dof : float
        Largest Z travel within one exposure, in depths of field.
    max_spacing_dof : float
        Largest Z step between frames, in depths of field.
    metric, illumination, move_to_best, max_extensions, check_exposure, false_alarm, approach_um :
        As for :func:`~autofocus_plans.brenner_sweep`; ``approach_um`` is also the
        run-up below the range that every sweep starts with (its frames are not judged).
    fast_exposure : bool
        Shorten the exposure below the one the preview settles on, raising the
        gain to keep the frames as bright (within the camera's ``max_gain``),
        where that lets the stage sweep faster (the blur per exposure limits the
        speed); the start document gives the sweep's ``exposure_s`` and
        ``fly_gain``. Shorter exposures collect fewer photons: a curve whose
        peak does not then stand out of its noise is swept again at the full
        exposure (each search at half the false-alarm rate) before the plan refuses.
    early_stop : bool
        Judge the curve while the stage sweeps (at every frame, once it spans
        4.5 depths of field) and stop the sweep as soon as it shows a peak
        that passes the peak test; the stage then needs neither the rest of the
        sweep nor the way back from its end. The range beyond the stop is
        **not searched**: a second peak there (another layer) goes unseen, so
        use it on samples with one focal plane (a slide scan), not to find out
        whether there are two. The first such sweep over a range in a session
        waits for its looks' thresholds (about 0.2 s of computing each). Each
        look is one of the planned looks
        (:func:`~autofocus_plans.peak.look_false_alarm`), so the search's
        false-alarm rate stays ``false_alarm``. Needs a camera that hands
        frames over during the sweep (the simulator's does); the start
        document says ``fly_early_stop`` and the result's ``extra`` whether
        the sweep ``stopped_early``.
    md : dict, optional
        Metadata merged into the start document.

    Returns
    -------
    FocusResult
        Best Z (µm), the peak test's figures, frames exposed (``exposures``;
        ``extra["judged_frames"]`` of them judged), elapsed time.

    Raises
    ------
    NoFocusFound
        The curve has no focus peak; the stage was returned to where it started.
    """
    key = _measure_key(camera, metric)
    flyer = ZFlyer(camera, stage, name=f"{camera.name}_fly")
    dof = depth_of_field_from_devices(camera, led)
    origin, low, high = search_range(stage, start, stop, relative)
    stage_low, stage_high = stage_limits(stage)
    led_pattern = led.pattern.get()
    initial_exposure = float(camera.exposure_time.get())
    initial_gain = float(camera.gain.get()) if hasattr(camera, "gain") else None
    max_velocity = float(stage.velocity.get())
    # the move to the run-up does not settle where the stage can skip it: the run-up then
    # lasts at least the settle time, so the stage settles while it runs up, not standing still
    settle_s = stage_settle_time(stage) if can_skip_settle(stage) else 0.0
    t0 = time.monotonic()
    outcome: dict[str, Any] = {}

    def plan():
        yield from bps.mv(led, illumination)
        check = None
        if check_exposure:
            # previews before the run: the sweep's speed depends on the exposure they settle on
            check = yield from auto_exposure(camera, stream=None)
        full_exposure = float(camera.exposure_time.get())
        full_gain = float(camera.gain.get()) if initial_gain is not None else None
        settings = [(full_exposure, full_gain)]
        if fast_exposure and full_gain is not None:
            fast = fly_exposure(
                camera,
                dof,
                full_exposure,
                full_gain,
                blur_dof=blur_dof,
                max_spacing_dof=max_spacing_dof,
                max_velocity_um_per_s=max_velocity,
            )
            if fast[0] < full_exposure:
                settings.insert(0, fast)
        # a shortened exposure's search may be followed by one at the full exposure
        search_false_alarm = false_alarm / len(settings)

        def looks_for(geometry: _SweepGeometry) -> tuple[list[int], int]:
            """The looks during the first sweep (frames each), and all the looks planned."""
            checks = _early_checks(geometry, dof) if early_stop else []
            return checks, 1 + len(checks) + max_extensions  # + one after each sweep

        def prepared_early_looks(geometry: _SweepGeometry, checks: list[int], planned: int):
            """(frames, look, threshold being computed) for each look during the sweep."""
            nominal = geometry.nominal_z()
            return [
                (
                    frames,
                    2 + j,
                    prepare_threshold(
                        nominal[:frames],
                        depth_of_field_um=dof,
                        false_alarm=search_false_alarm,
                        look=2 + j,
                        looks=planned,
                    ),
                )
                for j, frames in enumerate(checks)
            ]

        def sweep_plan(exposure: float):
            """(speed, geometry of the first sweep, a function giving any other sweep's)."""
            period = float(camera.frame_period_s())
            speed = _on_pattern_grid(
                fly_speed(
                    dof,
                    exposure,
                    period,
                    blur_dof=blur_dof,
                    max_spacing_dof=max_spacing_dof,
                    max_velocity_um_per_s=max_velocity,
                ),
                period,
                dof,
            )

            def geometry_of(a: float, b: float) -> _SweepGeometry:
                return _sweep_geometry(
                    a,
                    b,
                    speed=speed,
                    exposure_s=exposure,
                    period_s=period,
                    run_up_um=max(approach_um, speed * settle_s),
                    limits=(stage_low, stage_high),
                )

            return speed, period, geometry_of(low, high), geometry_of

        yield from _expose_with(camera, *settings[0])
        exposure = settings[0][0]
        speed, period, first, geometry_of = sweep_plan(exposure)
        checks, planned_looks = looks_for(first)
        # the first sweep alone is judged on a pattern known now: its threshold is computed
        # while the run opens and the stage moves (later sweeps add frames at their own phase)
        warm = prepare_threshold(
            first.nominal_z(),
            depth_of_field_um=dof,
            false_alarm=search_false_alarm,
            looks=planned_looks,
        )
        early_looks = prepared_early_looks(first, checks, planned_looks)

        _md = {
            "plan_name": "fly_sweep",
            "plan_args": {
                "start": start,
                "stop": stop,
                "relative": relative,
                "blur_dof": blur_dof,
                "max_spacing_dof": max_spacing_dof,
                "fast_exposure": fast_exposure,
                "early_stop": early_stop,
            },
            "method": "fly_sweep",
            "metric": metric,
            "illumination": illumination,
            "search_range_um": [low, high],
            "start_z": origin,
            "depth_of_field_um": dof,
            "peak_false_alarm": false_alarm,
            "fly_speed_um_per_s": speed,
            "fly_blur_dof": speed * exposure / dof,
            "fly_spacing_dof": speed * period / dof,
            "fly_frame_period_s": period,
            "fly_judged_frames": first.frames,
            "fly_gain": settings[0][1],
            "fly_early_stop": early_stop,
            "fly_full_exposure_s": full_exposure,
            "exposure_s": exposure,
            "exposure_checks": check.frames if check else 0,
            "optics": optics_metadata(camera, led),
            "detectors": [camera.name],
            "motors": [stage_field(stage)],
            "hints": {"dimensions": [([stage_field(stage)], "primary")]},
            "purpose": "autofocus",
        }
        _md.update(md or {})
        curve: dict[str, list[float]] = {"z": [], "value": [], "noise": [], "saturated": []}
        exposed = [0]  # frames streamed, judged or not

        early: dict[str, Any] = {}  # the look that stopped the last sweep, and its frames

        def sweep(geometry: _SweepGeometry, speed: float, exposure: float, warm=None, looks=None):
            """Sweep; ``looks`` (:func:`prepared_early_looks`) may stop it at a peak."""
            yield from bps.checkpoint()
            # straight to the start of the run-up, which takes up any backlash on the way up
            yield from pass_through(stage, geometry.start)
            early.clear()
            if looks:  # a look whose threshold is not ready is not taken: have them all first
                yield from bps.wait_for(
                    [lambda f=f: asyncio.wrap_future(f) for _, _, f in looks if f is not None]
                )
            judge = (
                _early_judge(geometry, speed * exposure, looks, early, assess_early)
                if looks
                else None
            )
            flyer.prepare(geometry.stop, speed, judge=judge)
            yield from bps.kickoff(flyer, wait=True)
            if warm is not None:  # waited for before the frames arrive, not after
                yield from bps.wait_for([lambda: asyncio.wrap_future(warm)])
            yield from bps.complete(flyer, wait=True)
            events = [
                event["data"]
                for event in (yield from bps.collect(flyer, name="primary", return_payload=True))
                or []
            ]
            exposed[0] += len(events)
            full_travel = speed * exposure
            z = np.array([data[flyer.z_key] for data in events])
            travel = np.array([data.get(f"{flyer.z_key}_travel", full_travel) for data in events])
            if flyer.stopped_early and early:  # judged on the frames the peak was seen in
                starts = np.array([data[f"{camera.name}_exposure_start"] for data in events])
                chosen = np.flatnonzero(np.isin(starts, early["starts"]))
                chosen = chosen[np.argsort(z[chosen], kind="stable")]
            else:
                # frames in the run-up, the run-out or partly still have another blur: not judged
                chosen = geometry.judged(z, travel, full_travel)
            for i in chosen:
                data = events[i]
                curve["z"].append(data[flyer.z_key])
                curve["value"].append(data[key])
                curve["noise"].append(data.get(f"{key}_noise", math.nan))
                curve["saturated"].append(data.get(f"{camera.name}_saturated_fraction", 0.0))

        looks = [0]  # each sweep's verdict is another look at the growing curve
        planned = [planned_looks]
        stopped_early = [False]

        def judge_curve(z, values, noise, saturated, look: int):
            noise = np.asarray(noise, dtype=float)
            return assess_peak(
                z,
                values,
                depth_of_field_um=dof,
                camera_noise=None if np.isnan(noise).any() else noise,
                saturated_fraction=saturated,
                false_alarm=search_false_alarm,
                look=look,
                looks=planned[0],
                metric=metric,
            )

        measure = key[len(camera.name) + 1 :]

        def assess_early(frames, look: int):
            return judge_curve(
                [f["z"] for f in frames],
                [f[measure] for f in frames],
                [f.get(f"{measure}_noise", math.nan) for f in frames],
                [f.get("saturated_fraction", 0.0) for f in frames],
                look,
            )

        def verdict(look: int | None = None):
            looks[0] += 1
            return judge_curve(
                curve["z"],
                curve["value"],
                curve["noise"],
                curve["saturated"],
                looks[0] if look is None else look,
            )

        def search(speed, first, geometry_of, exposure, warm=None, early_looks=None):
            """Sweep the range, and beyond it while the peak is open: (verdict, extensions)."""
            for values in curve.values():
                values.clear()
            checks, planned[0] = looks_for(first)
            looks[0] = len(checks)  # looks 2 to 1 + len(checks) are taken during the first sweep
            if early_stop and early_looks is None:
                early_looks = prepared_early_looks(first, checks, planned[0])
            yield from sweep(first, speed, exposure, warm, early_looks)
            stopped = flyer.stopped_early and bool(early)
            judged, extensions = verdict(early["look"] if stopped else 1), 0
            stopped_early[0] = stopped
            span = high - low
            while judged.failed == "open" and extensions < max_extensions:
                side = judged.extra.get("side")
                z_sorted = sorted(curve["z"])
                if side == "upper":
                    a, b = z_sorted[-1], min(z_sorted[-1] + span / 2, stage_high)
                else:
                    a, b = max(z_sorted[0] - span / 2, stage_low), z_sorted[0]
                if not b - a > 0.5 * dof:
                    break
                yield from sweep(geometry_of(a, b), speed, exposure)
                extensions += 1
                judged = verdict()
            return judged, extensions

        def searched():
            yield from bps.declare_stream(flyer, name="primary", collect=True)
            judged, extensions = yield from search(
                speed, first, geometry_of, exposure, warm, early_looks
            )
            used = (exposure, speed)
            if len(settings) > 1 and judged.failed in _NOISE_LIMITED:
                # fewer photons may be all that hid the peak: again at the full exposure
                yield from _expose_with(camera, *settings[1])
                full_speed, _, full_first, full_geometry = sweep_plan(settings[1][0])
                judged, more = yield from search(
                    full_speed, full_first, full_geometry, settings[1][0]
                )
                extensions += more
                used = (settings[1][0], full_speed)
            found = judged.found
            if found and move_to_best:
                yield from approach(stage, judged.center, approach_um)
            result = FocusResult.from_verdict(
                judged,
                method="fly_sweep",
                metric=metric,
                metric_value=float(max(curve["value"])) if curve["value"] else math.nan,
                start_z=origin,
                exposures=exposed[0],
                elapsed_s=time.monotonic() - t0,
                extensions=extensions,
                exposure_s=used[0],
                exposure_checks=check.frames if check else 0,
                restarts=flyer.discarded_sweeps,
                extra={
                    "verdict": judged.failed or "found",
                    "fly_speed_um_per_s": used[1],
                    "judged_frames": len(curve["z"]),
                    "full_exposure_retry": used[0] != exposure,
                    "stopped_early": stopped_early[0],
                },
            )
            yield from emit_focus_result(result)
            outcome["result"] = result
            if not found:
                raise NoFocusFound(
                    refusal_sentence(judged, origin, extensions),
                    verdict=judged,
                    result=result,
                )

        return (yield from bpp.stage_wrapper(bpp.run_wrapper(searched(), md=_md), [camera]))

    def back_to_origin(exc):
        yield from approach(stage, origin, approach_um)

    def restore():
        yield from bps.mv(led, led_pattern)
        yield from _expose_with(camera, initial_exposure, initial_gain)
        if float(stage.velocity.get()) != max_velocity:
            yield from bps.mv(stage.velocity, max_velocity)

    uid = yield from bpp.contingency_wrapper(plan(), except_plan=back_to_origin, final_plan=restore)
    result = outcome["result"]
    result.run_uid = uid or ""
    return result
