"""Focus from pairs of exposures under mirrored off-axis LEDs: physics, no training.

A sample ``dz`` from focus is imaged displaced sideways by ``dz * tan(theta)``
under light arriving at angle ``theta``; under two mirrored LEDs the two
images are displaced against each other in proportion to ``dz``, with its
sign, whatever the sample (see :mod:`models.dual_led`). ``dual_led_focus``
measures that displacement, jumps, and measures again to confirm; it needs
no model file, so it works out of the box on samples nobody trained for, and
refuses (falling back to a Brenner search) when the frames share no
structure that stands out of their noise.
"""

from __future__ import annotations

import math
import time
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
from bluesky.protocols import Movable, Readable

from models.dual_led import DualLEDDefocus

from .exposure import auto_exposure
from .fallback import check_fallback, fall_back
from .results import FocusResult, NumbersReading, emit_focus_result, optics_metadata
from .stubs import approach, depth_of_field_from_devices, stage_field, stage_limits

__all__ = ["dual_led_focus", "dual_led_model", "mirrored_patterns"]


def _displacement_per_um(led, pattern: str) -> np.ndarray:
    """Image displacement (rows, columns) per µm of defocus under ``pattern``, in µm."""
    config = {
        k.removeprefix(f"{led.name}_"): v["value"] for k, v in led.read_configuration().items()
    }
    n = float(config.get("immersion_index", 1.0))
    wavelength = float(config["wavelength_um"])
    leds = led.leds_for(pattern)
    if len(leds) != 1:
        raise ValueError(f"Pattern {pattern!r} lights {len(leds)} LEDs; one is needed.")
    (point,) = led.array.source_points(leds, 1.0)[:1]
    kz = math.sqrt((n / wavelength) ** 2 - point.ux**2 - point.uy**2)
    # the lateral group delay of a tilted plane wave: a shift of u/kz per µm of defocus
    return np.array([point.uy / kz, point.ux / kz])


def mirrored_patterns(led, *, fraction: float = 0.75, azimuth_deg: float = 0.0) -> tuple[str, str]:
    """Two LED patterns mirrored about the optical axis, each at ``fraction`` of the objective NA.

    Under them a sample ``dz`` from focus appears displaced between the two
    frames in proportion to ``dz``: the illumination of :func:`dual_led_focus`
    and of learned models of frame pairs.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be between 0 and 1 (of the objective NA), got {fraction}.")
    na = fraction * float(led.objective_na.get())
    array = getattr(led, "array", None)
    if array is not None:
        # light from the LEDs crosses air below the slide: an oil objective's outer NA is out
        # of reach, so stay a step inside the array's edge
        na = min(na, 0.9 * array.illumination_na(array.half, 0))
    return (f"na:{na:.4f},{azimuth_deg:g}", f"na:{na:.4f},{azimuth_deg + 180:g}")


def dual_led_model(
    camera,
    led,
    *,
    fraction: float = 0.75,
    azimuth_deg: float = 0.0,
    false_alarm: float = 1e-3,
    patterns: tuple[str, str] | None = None,
) -> DualLEDDefocus:
    """The dual-LED estimator for these devices: two LEDs mirrored about the axis.

    Parameters
    ----------
    camera, led : devices
        The camera (its ``pixel_size_um`` at the sample) and the LED array.
    fraction : float
        Illumination NA of each LED as a fraction of the objective NA (inside
        it, so both frames are brightfield; farther out, more displacement per µm).
    azimuth_deg : float
        Direction of the first LED; the second is opposite.
    false_alarm : float
        Probability that two unrelated frames give an estimate.
    patterns : (str, str), optional
        The two LED patterns (one LED each) instead of ``fraction`` and
        ``azimuth_deg``: those a model of frame pairs was trained with.
    """
    derived = patterns is None
    if patterns is None:
        patterns = mirrored_patterns(led, fraction=fraction, azimuth_deg=azimuth_deg)
    patterns = (str(patterns[0]), str(patterns[1]))
    pixel_um = float(camera.pixel_size_um.get())
    per_um = (_displacement_per_um(led, patterns[1]) - _displacement_per_um(led, patterns[0])) / (
        pixel_um
    )
    dof = depth_of_field_from_devices(camera, led)
    model = DualLEDDefocus(
        (float(per_um[0]), float(per_um[1])),
        patterns,
        dof,
        false_alarm=false_alarm,
        metadata={
            "optics": optics_metadata(camera, led),
            "led_fraction_of_na": fraction if derived else None,
        },
    )
    model.metadata["reach_um"] = model.reach_um(camera.frame_shape())
    return model


def dual_led_focus(
    camera: Readable,
    stage: Movable,
    led: Movable,
    *,
    rounds: int = 2,
    tolerance_um: float = 0.0,
    exposure_s: float | None = None,
    fraction: float = 0.75,
    fallback: str = "fast_focus",
    approach_um: float = 5.0,
    md: dict | None = None,
):
    """Jump to focus from pairs of exposures under two mirrored off-axis LEDs.

    Each round takes one frame under each LED, estimates the signed defocus
    from their relative displacement (:class:`models.dual_led.DualLEDDefocus`)
    and moves by its negative, approaching from below; the next round
    confirms from where the stage landed. Rounds stop once the estimate is
    within ``tolerance_um``. When a pair shares no structure that stands
    out of its noise (blank field, no light) or the estimate lies beyond
    what the frame can show, the plan falls back to a Brenner search.

    Parameters
    ----------
    camera : Readable
        Camera (provides ``last_frame``, ``pixel_size_um`` and ``frame_shape``).
    stage : Movable
        Z stage (µm).
    led : Movable
        LED array illumination; restored on exit.
    rounds : int
        Pairs of exposures at most (1 to 5).
    tolerance_um : float
        Estimated defocus accepted without another move (0: a quarter of the DOF).
    exposure_s : float, optional
        Exposure under the off-axis LEDs; None brings it into range with
        :func:`~autofocus_plans.exposure.auto_exposure` first (its previews
        go to the ``exposure_check`` stream). Restored on exit.
    fraction : float
        LED angle as a fraction of the objective NA (see :func:`dual_led_model`).
    fallback : str
        ``"fast_focus"``, ``"brenner_sweep"`` or ``"none"`` (raise instead).
    approach_um : float
        Overshoot below a target before the final upward approach.
    md : dict, optional
        Metadata merged into the start document.

    Returns
    -------
    FocusResult
        ``predicted_defocus`` is the first estimate; ``extra`` holds every
        round's estimate and significance.
    """
    if not 1 <= rounds <= 5:
        raise ValueError(f"rounds must be 1 to 5, got {rounds}.")
    check_fallback(fallback)
    if tolerance_um < 0:
        raise ValueError(
            f"tolerance_um must be >= 0 (0: a quarter of the DOF), got {tolerance_um}."
        )
    model = dual_led_model(camera, led, fraction=fraction)
    dof = model.depth_of_field_um
    tolerance = tolerance_um or 0.25 * dof
    origin = float(stage.position)
    old_pattern, old_exposure = led.pattern.get(), camera.exposure_time.get()
    state: dict[str, Any] = {"fell_back": False, "reason": ""}
    _md = {
        "plan_name": "dual_led_focus",
        "method": "dual_led_focus",
        "purpose": "autofocus",
        "model_name": model.name,
        "model_architecture": model.architecture,
        "illumination": list(model.patterns),
        "dual_led_px_per_um": list(model.shift_px_per_um),
        "start_z": origin,
        "optics": optics_metadata(camera, led),
        "detectors": [camera.name],
        "motors": [stage_field(stage)],
        "plan_args": {
            "rounds": rounds,
            "tolerance_um": tolerance_um,
            "exposure_s": exposure_s,
            "fraction": fraction,
            "fallback": fallback,
        },
    }
    _md.update(md or {})

    def restore():
        yield from bps.mv(led, old_pattern)
        yield from bps.mv(camera.exposure_time, old_exposure)

    def shot(pattern: str):
        yield from bps.mv(led, pattern)
        yield from bps.trigger_and_read([camera, stage])
        frame = camera.last_frame
        if frame is None:
            raise RuntimeError(f"Camera {camera.name!r} returned no frame.")
        return np.array(frame, copy=True)

    @bpp.run_decorator(md=_md)
    def measured():
        t0 = time.monotonic()
        previews = 0
        yield from bps.mv(led, model.patterns[0])
        if exposure_s is None:
            check = yield from auto_exposure(camera)
            previews = check.frames
        else:
            yield from bps.mv(camera.exposure_time, exposure_s)
        yield from bps.stage(camera)
        estimates: list[float] = []
        significance: list[float] = []
        reading = NumbersReading(
            "prediction",
            {
                "predicted_defocus_um": 0.0,
                "significance": 0.0,
                "threshold": 0.0,
                "found": 0,
                "round": 0,
            },
        )
        for index in range(rounds):
            yield from bps.checkpoint()  # a pair measures afresh: a pause here loses nothing
            first = yield from shot(model.patterns[0])
            second = yield from shot(model.patterns[1])
            estimate = model.estimate(first, second)
            estimates.append(estimate.defocus_um)
            significance.append(estimate.significance)
            yield from bps.create("prediction")
            yield from bps.read(
                reading.update(
                    {
                        "predicted_defocus_um": estimate.defocus_um,
                        "significance": estimate.significance,
                        "threshold": estimate.threshold,
                        "found": int(estimate.found),
                        "round": index,
                    }
                )
            )
            yield from bps.save()
            if not estimate.found:
                state.update(fell_back=True, reason=estimate.reason)
                break
            if abs(estimate.defocus_um) <= tolerance:
                break
            target = float(stage.position) - estimate.defocus_um
            low, high = stage_limits(stage)
            if not low <= target <= high:
                state.update(fell_back=True, reason=f"target {target:.2f} µm outside the limits")
                break
            yield from approach(stage, target, approach_um)
        yield from bps.unstage(camera)
        result = FocusResult(
            best_z=float(stage.position),
            method="dual_led_focus",
            metric=model.architecture,
            start_z=origin,
            exposures=2 * len(estimates) + previews,
            elapsed_s=time.monotonic() - t0,
            predicted_defocus=estimates[0] if estimates else math.nan,
            fell_back=state["fell_back"],
            extra={
                "estimates_um": estimates,
                "significance": significance,
                "reason": state["reason"],
            },
        )
        yield from emit_focus_result(result)
        state["result"] = result

    def back_to_origin(exc):
        yield from approach(stage, origin, approach_um)

    uid = yield from bpp.contingency_wrapper(
        measured(), except_plan=back_to_origin, final_plan=restore
    )
    result: FocusResult = state["result"]
    result.run_uid = uid or ""
    if not result.fell_back:
        return result
    return (
        yield from fall_back(
            camera,
            stage,
            led,
            result,
            fallback=fallback,
            reach_um=6 * dof,
            origin=origin,
            approach_um=approach_um,
            refusal="dual_led_focus found no displacement to trust",
            first_run_key="dual_led_run_uid",
            md=md,
        )
    )
