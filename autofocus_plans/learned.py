"""Learned single-shot focus: training-set collection, CNN-guided focus, drift tracking.

One image under off-axis LED light encodes the size and the sign of the
defocus. ``collect_training_set`` labels such images with ``z - z_focus``
where ``z_focus`` comes from a Brenner sweep; a model trained on them
(``models.train``) lets ``cnn_focus`` jump to focus in one or two shots and
``track_focus`` hold focus during a time-lapse.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
from bluesky.protocols import Movable, Readable

from .brenner import brenner_sweep
from .dual_led import dual_led_model
from .exposure import FRAME_STATISTICS, BadExposure, ExposureLimits, judge_reading
from .fallback import check_fallback, fall_back
from .results import FocusResult, NumbersReading, emit_focus_result, optics_metadata
from .stubs import approach, depth_of_field_from_devices, stage_field, stage_limits

__all__ = [
    "check_model_optics",
    "cnn_focus",
    "collect_training_set",
    "depth_of_field_from_devices",
    "track_focus",
]


def _set_and_restore(camera, led, pattern: str, exposure_s: float | None):
    """Plan pieces: light ``pattern`` at ``exposure_s``; and the matching restore."""
    old_pattern, old_exposure = led.pattern.get(), camera.exposure_time.get()

    def apply():
        yield from bps.mv(led, pattern)
        if exposure_s is not None:
            yield from bps.mv(camera.exposure_time, exposure_s)

    def restore():
        yield from bps.mv(led, old_pattern)
        yield from bps.mv(camera.exposure_time, old_exposure)

    return apply, restore


#: pairs a cnn_focus run may retake while it brings the exposure into range
_MAX_EXPOSURE_RETAKES = 4


def _lit_count(led) -> float:
    """LEDs lit now; 0 for an LED device that does not report it."""
    lit = getattr(led, "lit_count", None)
    return float(lit.get()) if lit is not None else 0.0


def _exposure_for_pattern(camera, led, lit_before: float, exposure_s: float) -> float:
    """A first exposure for the LED pattern now lit, scaled from the exposure before it.

    The light on the sample grows with the number of lit LEDs inside the
    objective's aperture, so the exposure that suited the old pattern, times
    the ratio of lit LEDs, keeps the frame about as bright; halved, because an
    oblique LED's peak over its mean differs from a brightfield disc's and a
    clipped frame says less than a dim one. The shot's frames are then judged
    (``judge_exposure``) and the pair retaken only when they are out of range.
    Cameras or LEDs that do not report these keep their exposure.
    """
    lit_now = _lit_count(led)
    if not (lit_before > 0 and lit_now > 0):
        return exposure_s
    limits = ExposureLimits.of(camera)
    guess = 0.5 * exposure_s * lit_before / lit_now
    return float(min(max(guess, limits.shortest_s), limits.longest_s))


def _retuned_exposure(camera, limits: ExposureLimits, readings: list) -> float | None:
    """The exposure a shot's frames ask for (the first frame out of range decides); None: fine."""
    name = camera.name
    exposure = float(camera.exposure_time.get())
    for reading in readings:
        if not all(f"{name}_{k}" in reading for k in FRAME_STATISTICS):
            return None  # a camera without frame statistics cannot be judged
        new = judge_reading(limits, exposure, reading, name)
        if new is not None:
            return new
    return None


def collect_training_set(
    camera: Readable,
    stage: Movable,
    led: Movable,
    fov: Movable | None = None,
    fields: Sequence[float] = (0, 1, 2, 3),
    *,
    shots_per_field: int = 30,
    defocus_range_dof: float = 6.0,
    sweep_range_um: float = 25.0,
    sweep_points: int = 26,
    off_axis_pattern: str = "off_axis",
    off_axis_exposure_s: float = 0.25,
    pair_patterns: Sequence[str] | None = None,
    training_set: str = "default",
    seed: int = 0,
    md: dict | None = None,
):
    """Collect frames under off-axis light labelled with their signed defocus.

    For each field of view: move ``fov`` there (any Movable: an XY stage, or
    the simulator's field selector), find focus with a Brenner sweep under
    brightfield, then take ``shots_per_field`` off-axis exposures at random
    offsets within ±``defocus_range_dof`` depths of field, in ascending order
    (one approach direction). Each field is one run tagged
    ``purpose="training"`` and ``training_set``, with ``z_focus_um`` in its
    start document; select them with
    ``find_runs(catalog, purpose="training")``.

    Parameters
    ----------
    camera : Readable
        Camera; its frames are the training images.
    stage : Movable
        Z stage (µm).
    led : Movable
        LED illumination.
    fov : Movable, optional
        Field-of-view positioner; without it all shots come from the current field.
    fields : list of float
        Positions of ``fov`` to visit.
    shots_per_field : int
        Off-axis exposures per field.
    defocus_range_dof : float
        Half-width of the random offsets, in depths of field.
    sweep_range_um, sweep_points : float, int
        Brenner sweep (relative, ± range) that finds each field's focus.
    off_axis_pattern : str
        LED pattern of the training images.
    off_axis_exposure_s : float
        Exposure of the off-axis frames (one LED is far dimmer than brightfield).
    pair_patterns : (str, str), optional
        Take a pair of frames at every offset instead, one under each pattern
        (two mirrored off-axis LEDs, :func:`~autofocus_plans.mirrored_patterns`):
        the training set of a model that predicts from pairs
        (``Preprocessing(inputs="pair")``), which carries the defocus as the
        displacement between the two frames whatever the sample.
        ``off_axis_pattern`` is then unused.
    training_set : str
        Tag recorded in every run, to select this set later.
    seed : int
        Seed of the random offsets.
    md : dict, optional
        Metadata merged into every start document.

    Returns
    -------
    list of str
        The uids of the training runs.
    """
    if shots_per_field < 1:
        raise ValueError(f"shots_per_field must be at least 1, got {shots_per_field}.")
    patterns = _shot_patterns(off_axis_pattern, pair_patterns)
    rng = np.random.default_rng(seed)
    dof = depth_of_field_from_devices(camera, led)
    half_range = defocus_range_dof * dof
    uids: list[str] = []
    for field_position in fields:
        # a pause waits for the field in progress: its shots are labelled with the focus
        # found just before them, which a pause (drift, a moved stage) could make stale
        yield from bps.checkpoint()
        if fov is not None:
            yield from bps.mv(fov, field_position)
        sweep = yield from brenner_sweep(
            camera,
            stage,
            led,
            -sweep_range_um,
            sweep_range_um,
            sweep_points,
            md={"training_set": training_set, "fov_position": field_position, **(md or {})},
        )
        z_focus = sweep.best_z
        low, high = stage_limits(stage)
        offsets = np.sort(rng.uniform(-half_range, half_range, shots_per_field))
        targets = [z for z in z_focus + offsets if low <= z <= high]
        apply, restore = _set_and_restore(camera, led, patterns[0], off_axis_exposure_s)
        _md = {
            "plan_name": "collect_training_set",
            "purpose": "training",
            "training_set": training_set,
            "fov_position": field_position,
            "fov_id": f"{training_set}:{field_position}",
            "z_focus_um": z_focus,
            "focus_run_uid": sweep.run_uid,
            "illumination": PAIR_SEPARATOR.join(patterns),
            "led_patterns": list(patterns),
            "depth_of_field_um": dof,
            "defocus_range_um": [-half_range, half_range],
            "optics": optics_metadata(camera, led) | {"led_pattern": PAIR_SEPARATOR.join(patterns)},
            "detectors": [camera.name],
            "motors": [stage_field(stage)],
            "hints": {"dimensions": [([stage_field(stage)], "primary")]},
        }
        _md.update(md or {})

        @bpp.stage_decorator([camera, stage])
        @bpp.run_decorator(md=_md)
        def shots(targets=targets, apply=apply, z_focus=z_focus):
            yield from apply()
            yield from approach(stage, targets[0], 5.0)
            for z in targets:
                yield from bps.mv(stage, z)
                for pattern in patterns:  # one event per frame; a pair is two in a row
                    if len(patterns) > 1:
                        yield from bps.mv(led, pattern)
                    yield from bps.trigger_and_read([camera, stage])
            # back to this field's focus: the next field's sweep is centred on it
            yield from approach(stage, z_focus, 5.0)

        uid = yield from bpp.finalize_wrapper(shots(), restore())
        uids.append(uid)
    return uids


#: joins the two patterns of a pair where one pattern string is recorded
PAIR_SEPARATOR = " | "


def _shot_patterns(off_axis_pattern: str, pair_patterns: Sequence[str] | None) -> tuple[str, ...]:
    if pair_patterns is None:
        return (off_axis_pattern,)
    if isinstance(pair_patterns, str) or len(pair_patterns) != 2:
        raise ValueError(
            f"pair_patterns must be two LED patterns (one per frame of a pair), got "
            f"{pair_patterns!r}; see autofocus_plans.mirrored_patterns(led)."
        )
    return tuple(str(p) for p in pair_patterns)


# configuration that says what is imaged or how long, not through which optics
_NOT_OPTICS = {"camera_scene", "camera_exposure_time", "camera_min_exposure_s"}
_NOT_OPTICS |= {"camera_max_exposure_s"}
# a pair's two patterns are compared joined, as led_pattern
_NOT_OPTICS |= {"led_patterns"}


def check_model_optics(model, camera, led, pattern: str) -> None:
    """Refuse a model trained for other optics, naming the first field that differs."""
    trained = model.metadata.get("optics", {})
    current = optics_metadata(camera, led) | {"led_pattern": pattern}
    for key, value in trained.items():
        if value is None or key in _NOT_OPTICS:  # nothing to compare
            continue
        if key not in current:
            raise ValueError(
                f"Model {model.name!r} was trained for {key} = {value!r} but the devices do "
                "not report it; use devices of the same kind or retrain."
            )
        now = current[key]
        same = (
            math.isclose(float(value), float(now), rel_tol=1e-3)
            if isinstance(value, int | float) and isinstance(now, int | float)
            else value == now
        )
        if not same:
            raise ValueError(
                f"Model {model.name!r} was trained for {key} = {value!r} but the devices have "
                f"{now!r}; retrain for this optical configuration or restore it."
            )


#: ``cnn_focus(model=SHIPPED)``: the general pair model shipped for the devices' optics
SHIPPED = "shipped"


def _resolve_model(model, camera=None, led=None):
    if isinstance(model, str) and model == SHIPPED and camera is not None:
        from .shipped import shipped_model_for

        return shipped_model_for(camera, led)
    if isinstance(model, str | os.PathLike):
        from models import load_model

        return load_model(model)
    return model


def _model_identity(model) -> dict[str, Any]:
    """What the start document records about the model a plan uses."""
    return {
        "model_name": model.name,
        "model_architecture": model.architecture,
        "model_sha256": model.file_sha256 or "",
        "model_path": str(model.path or ""),
        "model_training_run_uids": model.metadata.get("training_run_uids", []),
    }


def _last_frame(camera):
    frame = camera.last_frame
    if frame is None:
        raise RuntimeError(f"Camera {camera.name!r} returned no frame to predict from.")
    return frame


def _predict(model, camera) -> float:
    return float(model.predict(_last_frame(camera)))


def _shift_estimator(camera, led, patterns: tuple[str, ...], wanted: bool):
    """The two-LED shift estimator for a pair model's patterns, and what the start doc says."""
    if not wanted:
        return None, "off"
    if len(patterns) != 2:
        return None, "off: a single-frame model"
    if not (hasattr(led, "array") and hasattr(led, "leds_for")):
        return None, f"unavailable: LED {led.name!r} does not report its geometry"
    try:
        return dual_led_model(camera, led, patterns=(patterns[0], patterns[1])), "two-LED shift"
    except ValueError as err:
        return None, f"unavailable: {err}"


def _model_patterns(model, off_axis_pattern: str) -> tuple[str, ...]:
    """The LED pattern of each exposure of one prediction by ``model``."""
    if getattr(model, "shots", 1) == 1:
        return (off_axis_pattern,)
    patterns = tuple(getattr(model, "patterns", ()))
    if len(patterns) != model.shots:
        raise ValueError(
            f"Model {model.name!r} predicts from {model.shots} frames but does not record their "
            "LED patterns (led_patterns in its metadata); retrain it from runs collected with "
            "collect_training_set(..., pair_patterns=...)."
        )
    return patterns


def _shift_agreement(
    model, p95_um: float | None, agreement_um: float, interval_um: float = math.nan
) -> tuple[float, float]:
    """How far apart the model and the two-LED shift may read a pair, and the shift's weight.

    From the shift's 95th-percentile error on the model's validation fields
    (``metadata["reference"]``, stored by ``models.train(reference=...)``) and the
    model's own error for this reading: its calibrated interval (``interval_um``)
    or its validation p95, whichever is wider, so that a sample the model is
    unsure of widens the band. The errors are independent, so the band is their
    root sum of squares and the shift's weight in the combined estimate its
    inverse-variance share. A model without the shift's figures gets its own
    agreement band and an even mean.
    """
    shift_p95 = model.metadata.get("reference", {}).get("p95_um")
    if not (p95_um and shift_p95):
        return agreement_um, 0.5
    own = max(float(p95_um), interval_um if math.isfinite(interval_um) else 0.0)
    return math.hypot(own, shift_p95), own**2 / (own**2 + shift_p95**2)


def cnn_focus(
    camera: Readable,
    stage: Movable,
    led: Movable,
    model: str = SHIPPED,
    *,
    max_shots: int = 2,
    tolerance_um: float = 1.0,
    probe_um: float | None = None,
    max_interval_um: float | None = None,
    fallback: str = "fast_focus",
    off_axis_pattern: str = "off_axis",
    off_axis_exposure_s: float | None = None,
    cross_check: bool = True,
    approach_um: float = 5.0,
    md: dict | None = None,
):
    """Jump to focus from one off-axis exposure, using a trained defocus model.

    Shot 1 predicts the signed defocus, so where focus is. A model of frame
    pairs (``model.shots == 2``, trained on frames collected with
    ``collect_training_set(..., pair_patterns=...)``) takes each shot as two
    exposures, one under each of its two mirrored LEDs (``model.patterns``). The optional shot 2
    checks the model where the first shot cannot fake it: it is taken
    ``probe_um`` from that focus, on the other side from where shot 1 was, so
    a model that reads the sample right must now see ``probe_um`` of defocus
    of the opposite sign, which a model stuck on one answer whatever it sees
    (as an unfamiliar sample can make it) misses by more than ``probe_um``. When
    the two shots place focus within the model's agreement band of each
    other (from its validation error: ``sqrt(2)`` times its 95th percentile,
    else ``max(2 * tolerance_um, 1 DOF)``) the stage goes to the mean of the
    two; otherwise, or when a prediction lies outside the model's trained
    range, the plan falls back to ``fast_focus`` (a separate run).

    Each shot's prediction is the mean over a grid of crops of the frame, and
    their scatter gives it an interval (:meth:`models.DefocusModel.estimate`,
    calibrated by split conformal prediction on fields the model never trained
    on, with the coverage stored in the checkpoint). A shot whose frame's
    spatial-frequency content is unlike the training frames' (``novelty``
    above 1), or whose interval is wider than ``max_interval_um``, falls back
    before the stage moves on it.

    A pair is also read by physics (``cross_check``): the displacement between
    its two frames gives the defocus whatever the sample
    (:func:`~autofocus_plans.dual_led_model`, no training), and fails in
    other ways than the network. When that estimate stands out of its noise,
    it decides instead of the novelty and the interval: within their
    agreement band (the root sum of squares of the shift's 95th-percentile
    error on the model's validation fields, ``metadata["reference"]``, and the
    model's: its interval for this reading or its validation p95, whichever is
    wider; the model's own band when the shift's is not measured) the stage goes to their
    inverse-variance weighted mean (a sample the model never saw, read right,
    is used); further apart, the plan falls
    back (one of them is wrong, and a frame can look familiar to the model
    and still be misread). When it does not stand out (a blank or
    featureless field, beyond what the frame shows), the novelty and the
    interval decide as above. In the confirming shot a disagreement vetoes
    nothing by itself: there the probe checks the model (it must see the move
    it was sent on), with the novelty and the interval as when the shift does
    not stand out. The probe lands within about a depth of field of focus,
    on either side, and just above focus the shift reads some samples (beads,
    tissue) too close to focus.

    Parameters
    ----------
    camera : Readable
        Camera (provides ``last_frame``).
    stage : Movable
        Z stage (µm).
    led : Movable
        LED illumination, restored on exit.
    model : str, path or DefocusModel
        Checkpoint path, a loaded model, or ``"shipped"`` (the default): the
        general pair model shipped for the devices' optics
        (:func:`~autofocus_plans.shipped.shipped_model_for`).
    max_shots : int
        1 (predict and move) or 2 (also confirm, and correct a small residual).
    tolerance_um : float
        Agreement band when the model carries no validation figures (see above).
    probe_um : float, optional
        Distance of the confirming shot from the first shot's focus; None: twice
        the wider of the two agreement bands, kept inside the trained range.
    max_interval_um : float, optional
        Widest acceptable interval half-width of a prediction (µm); None: the
        agreement band. Checkpoints without a calibration are not checked.
    fallback : str
        ``"fast_focus"``, ``"brenner_sweep"`` or ``"none"`` (raise instead).
    off_axis_pattern, off_axis_exposure_s : str, float or None
        Illumination and exposure of the shots; a model of pairs uses its own
        two patterns instead. A single-frame model needs the exposure it was
        trained at (None: 0.25 s, ``collect_training_set``'s default); a pair
        model normalises brightness away, so None starts from the camera's
        exposure scaled by the ratio of lit LEDs (the old pattern's to the
        pair's), judges the first shot's frames and retakes the pair at a
        corrected exposure only when they are saturated or too dim (retakes
        count in ``exposures`` and in ``extra["exposure_retakes"]``; their
        ``prediction`` rows have ``exposure_ok`` 0).
    cross_check : bool
        Whether a pair model's shots are checked against the two-LED shift
        estimate (above); ignored for single-frame models, and for LEDs that
        do not report their geometry (the start document says why).
    approach_um : float
        Overshoot below a target before the final upward approach.
    md : dict, optional
        Metadata merged into the start document.

    Returns
    -------
    FocusResult
    """
    if max_shots not in (1, 2):
        raise ValueError(f"max_shots must be 1 or 2, got {max_shots}.")
    check_fallback(fallback)
    model = _resolve_model(model, camera, led)
    patterns = _model_patterns(model, off_axis_pattern)
    check_model_optics(model, camera, led, PAIR_SEPARATOR.join(patterns))
    judge_shots = off_axis_exposure_s is None and len(patterns) > 1
    if off_axis_exposure_s is None and not judge_shots:
        off_axis_exposure_s = 0.25
    dof = depth_of_field_from_devices(camera, led)
    low_range, high_range = model.trained_range_um
    p95 = model.metadata.get("validation", {}).get("p95_um")
    # two independent predictions' errors differ by sqrt(2) times one's spread
    agreement = math.sqrt(2) * float(p95) if p95 else max(2 * tolerance_um, dof)
    # the narrowest model-vs-shift band (a reading the model is unsure of widens it)
    shift_agreement = _shift_agreement(model, p95, agreement)[0]
    # a model stuck on one answer misses the probe by more than either band
    probe = (
        probe_um
        if probe_um is not None
        else min(2 * max(agreement, shift_agreement), 0.8 * high_range)
    )
    widest = agreement if max_interval_um is None else float(max_interval_um)
    if not widest > 0:
        raise ValueError(f"max_interval_um must be positive, got {max_interval_um!r}.")
    shift_model, cross_check_state = _shift_estimator(camera, led, patterns, cross_check)
    origin = float(stage.position)
    apply, restore = _set_and_restore(camera, led, patterns[0], off_axis_exposure_s)
    state: dict[str, Any] = {"fell_back": False, "reason": ""}
    _md = {
        "plan_name": "cnn_focus",
        "method": "cnn_focus",
        "purpose": "autofocus",
        **_model_identity(model),
        "illumination": PAIR_SEPARATOR.join(patterns),
        "led_patterns": list(patterns),
        "start_z": origin,
        "optics": optics_metadata(camera, led),
        "detectors": [camera.name],
        "motors": [stage_field(stage)],
        "plan_args": {
            "max_shots": max_shots,
            "tolerance_um": tolerance_um,
            "probe_um": probe,
            "agreement_um": agreement,
            "shift_agreement_um": shift_agreement,
            "max_interval_um": widest,
            "fallback": fallback,
            "cross_check": cross_check,
        },
        "cross_check": cross_check_state,
    }
    _md.update(md or {})

    @bpp.stage_decorator([camera, stage])
    @bpp.run_decorator(md=_md)
    def shots():
        t0 = time.monotonic()
        yield from apply()
        exposures = retakes = 0
        settled = not judge_shots
        limits = ExposureLimits.of(camera)
        predictions = []
        reading = NumbersReading(
            "prediction",
            {
                "predicted_defocus_um": 0.0,
                "spread_um": 0.0,
                "interval_um": 0.0,
                "novelty": 0.0,
                "expected_um": 0.0,
                "agreement_um": 0.0,
                "shift_agreement_um": 0.0,
                "shot": 0.0,
                "exposure_s": 0.0,
                "exposure_ok": 1.0,
                "shift_defocus_um": 0.0,
                "shift_significance": 0.0,
                "shift_agrees": 0.0,
            },
        )
        intervals: list[float] = []
        shifts: list[float] = []  # the physics estimate of each shot (nan: none stood out)
        foci: list[float] = []  # where each shot places focus
        shot = 0
        while shot < max_shots:
            yield from bps.checkpoint()  # each shot measures afresh: a pause here loses nothing
            frames, readings = [], []
            exposure_s = float(camera.exposure_time.get())
            for pattern in patterns:  # one frame, or a pair under two mirrored LEDs
                if len(patterns) > 1:
                    yield from bps.mv(led, pattern)
                readings.append((yield from bps.trigger_and_read([camera, stage])))
                frames.append(np.array(_last_frame(camera), copy=True))
                exposures += 1
            retuned = None if settled else _retuned_exposure(camera, limits, readings)
            if retuned is not None:
                # the pair stays in the run (its row says so); the model never sees it
                retakes += 1
                yield from bps.create("prediction")
                yield from bps.read(
                    reading.update(
                        {k: math.nan for k in reading.describe()}
                        | {"shot": float(shot), "exposure_s": exposure_s, "exposure_ok": 0.0}
                    )
                )
                yield from bps.save()
                if retakes > _MAX_EXPOSURE_RETAKES:
                    raise BadExposure(
                        f"The exposure did not settle in {retakes} pairs (last {exposure_s:g} "
                        "s): is the light flickering?"
                    )
                yield from bps.mv(camera.exposure_time, retuned)
                continue
            settled = True
            estimate = model.estimate(frames[0] if len(frames) == 1 else np.stack(frames))
            dz = estimate.defocus_um
            predictions.append(dz)
            intervals.append(estimate.interval_um)
            shift = shift_model.estimate(frames[0], frames[1]) if shift_model else None
            checked = shift is not None and shift.found
            shift_dz = shift.defocus_um if checked else math.nan
            shift_agreement, shift_weight = _shift_agreement(
                model, p95, agreement, estimate.interval_um
            )
            agrees = checked and abs(dz - shift_dz) <= shift_agreement
            shifts.append(shift_dz)
            # the probe goes against the first prediction: a model stuck on one answer then
            # misses it by more than the probe, whatever that answer is
            expected = 0.0 if shot == 0 else -math.copysign(probe, predictions[0])
            yield from bps.create("prediction")
            yield from bps.read(
                reading.update(
                    {
                        "predicted_defocus_um": dz,
                        "spread_um": estimate.spread_um,
                        "interval_um": estimate.interval_um,
                        "novelty": estimate.novelty,
                        "expected_um": expected,
                        "agreement_um": agreement,
                        "shift_agreement_um": shift_agreement,
                        "shot": float(shot),
                        "exposure_s": exposure_s,
                        "exposure_ok": 1.0,
                        "shift_defocus_um": shift_dz,
                        "shift_significance": (
                            shift.significance / shift.threshold if shift else math.nan
                        ),
                        "shift_agrees": float(agrees) if checked else math.nan,
                    }
                )
            )
            yield from bps.save()
            if not low_range <= dz <= high_range:
                state.update(fell_back=True, reason=f"prediction {dz:.2f} µm outside trained range")
                break
            if checked and not agrees and shot == 0:
                state.update(
                    fell_back=True,
                    reason=(
                        f"the model and the two-LED shift disagree: {dz:+.2f} µm and "
                        f"{shift_dz:+.2f} µm of defocus, more than their agreement band "
                        f"({shift_agreement:.2f} µm) apart"
                    ),
                )
                break
            if checked and agrees:
                # two estimates that fail in different ways agree: that is the check; each
                # counts by how well it reads (inverse variance), evenly when not measured
                dz = shift_weight * shift_dz + (1 - shift_weight) * dz
            elif not estimate.familiar:
                state.update(
                    fell_back=True,
                    reason=(
                        f"the frame is unlike those the model was trained on (novelty "
                        f"{estimate.novelty:.1f}, where above 1 is unfamiliar): its interval "
                        "would not hold"
                    ),
                )
                break
            elif estimate.interval_um > widest:  # nan (no calibration) never is
                state.update(
                    fell_back=True,
                    reason=(
                        f"the model is unsure of this sample: its {estimate.coverage:.0%} "
                        f"interval is ±{estimate.interval_um:.2f} µm, wider than "
                        f"{widest:.2f} µm"
                    ),
                )
                break
            foci.append(float(stage.position) - dz)
            if shot == 0 and max_shots > 1 and probe <= agreement:
                # a probe inside the band cannot tell a model stuck on one answer from a good one
                state.update(
                    fell_back=True,
                    reason=(
                        f"the model cannot be checked: its agreement band ({agreement:.2f} µm, "
                        f"from its validation error) is as wide as the probe its trained range "
                        f"allows ({probe:.2f} µm)"
                    ),
                )
                break
            if shot == 1 and abs(foci[1] - foci[0]) > agreement:
                state.update(
                    fell_back=True,
                    reason=(
                        f"shots disagree: {expected:+.2f} µm from the first shot's focus the "
                        f"model saw {dz:+.2f} µm of defocus (agreement band {agreement:.2f} µm)"
                    ),
                )
                break
            target = float(np.mean(foci))
            if shot == 0 and max_shots > 1:
                target -= math.copysign(probe, dz)
            low, high = stage_limits(stage)
            if not low <= target <= high:
                state.update(fell_back=True, reason=f"target {target:.2f} µm outside limits")
                break
            yield from approach(stage, target, approach_um)
            shot += 1
        result = FocusResult(
            best_z=float(stage.position),
            method="cnn_focus",
            metric=model.architecture,
            start_z=origin,
            exposures=exposures,
            elapsed_s=time.monotonic() - t0,
            predicted_defocus=predictions[0],
            fell_back=state["fell_back"],
            extra={
                "predictions_um": predictions,
                "intervals_um": intervals,
                "shift_defocus_um": shifts,
                "reason": state["reason"],
                "exposure_retakes": retakes,
            },
        )
        yield from emit_focus_result(result)
        state["result"] = result

    def exposed():
        if judge_shots:
            lit_before = _lit_count(led)
            exposure_before = float(camera.exposure_time.get())
            yield from bps.mv(led, patterns[0])
            first = _exposure_for_pattern(camera, led, lit_before, exposure_before)
            yield from bps.mv(camera.exposure_time, first)
        _md["exposure_s"] = float(camera.exposure_time.get())
        return (yield from shots())

    def back_to_origin(exc):
        yield from approach(stage, origin, approach_um)

    uid = yield from bpp.contingency_wrapper(
        exposed(), except_plan=back_to_origin, final_plan=restore
    )
    result: FocusResult = state["result"]
    result.run_uid = uid or ""
    if not result.fell_back:
        return result
    # search where the model was trained to see, a little wider, and no less than the
    # ±6 depths of field a search needs to tell a peak from its tails
    reach = max(1.1 * max(abs(low_range), abs(high_range)), 6 * dof)
    return (
        yield from fall_back(
            camera,
            stage,
            led,
            result,
            fallback=fallback,
            reach_um=reach,
            origin=origin,
            approach_um=approach_um,
            refusal="cnn_focus could not trust the model",
            first_run_key="cnn_run_uid",
            md=md,
        )
    )


def track_focus(
    camera: Readable,
    stage: Movable,
    led: Movable,
    model: str = "model.safetensors",
    *,
    num: int = 20,
    interval_s: float = 1.0,
    max_step_um: float | None = None,
    off_axis_pattern: str = "off_axis",
    off_axis_exposure_s: float = 0.25,
    md: dict | None = None,
):
    """Hold a drifting sample in focus during a time-lapse: one shot, one correction per interval.

    Each time point takes one off-axis exposure (the ``primary`` stream,
    frames in the catalogue), predicts the defocus and moves the stage by its
    negative (limited to ``max_step_um``, default the model's trained range);
    the ``tracking`` stream records the elapsed time, the prediction and the
    correction, so the trajectory can be replayed.

    Parameters
    ----------
    camera, stage, led : devices
        As for :func:`cnn_focus`.
    model : str, path or DefocusModel
        Checkpoint path, a loaded model, or ``"shipped"`` (the default): the
        general pair model shipped for the devices' optics
        (:func:`~autofocus_plans.shipped.shipped_model_for`).
    num : int
        Number of time points.
    interval_s : float
        Time between the starts of successive time points (s).
    max_step_um : float, optional
        Largest correction in one step.
    off_axis_pattern, off_axis_exposure_s : str, float
        Illumination and exposure of the shots.
    md : dict, optional
        Metadata merged into the start document.

    Returns
    -------
    dict
        ``time_s``, ``z_um`` and ``predicted_defocus_um`` lists.
    """
    model = _resolve_model(model)
    if getattr(model, "shots", 1) != 1:
        raise ValueError(
            f"track_focus predicts from one frame per time point; model {model.name!r} needs "
            f"{model.shots} (a pair under two LEDs): use a single-frame model, or cnn_focus."
        )
    check_model_optics(model, camera, led, off_axis_pattern)
    limit = max_step_um if max_step_um is not None else max(map(abs, model.trained_range_um))
    apply, restore = _set_and_restore(camera, led, off_axis_pattern, off_axis_exposure_s)
    trajectory: dict[str, list[float]] = {"time_s": [], "z_um": [], "predicted_defocus_um": []}
    _md = {
        "plan_name": "track_focus",
        "method": "track_focus",
        "purpose": "time-lapse",
        **_model_identity(model),
        "illumination": off_axis_pattern,
        "num_points": num,
        "interval_s": interval_s,
        "optics": optics_metadata(camera, led),
        "detectors": [camera.name],
        "motors": [stage_field(stage)],
        "hints": {"dimensions": [(["time"], "primary")]},
    }
    _md.update(md or {})

    @bpp.stage_decorator([camera, stage])
    @bpp.run_decorator(md=_md)
    def lapse():
        yield from apply()
        t0 = time.monotonic()
        reading = NumbersReading("tracking", {})
        for i in range(num):
            yield from bps.checkpoint()
            deadline = t0 + i * interval_s
            wait = deadline - time.monotonic()
            if wait > 0:
                yield from bps.sleep(wait)
            yield from bps.trigger_and_read([camera, stage])
            dz = _predict(model, camera)
            step = float(np.clip(-dz, -limit, limit))
            trajectory["time_s"].append(time.monotonic() - t0)
            trajectory["z_um"].append(float(stage.position))
            trajectory["predicted_defocus_um"].append(dz)
            yield from bps.create("tracking")
            values = {
                "elapsed_s": trajectory["time_s"][-1],
                "predicted_defocus_um": dz,
                "correction_um": step,
            }
            yield from bps.read(reading.update(values))
            yield from bps.save()
            yield from bps.mv(stage, float(stage.position) + step)

    yield from bpp.finalize_wrapper(lapse(), restore())
    return trajectory
