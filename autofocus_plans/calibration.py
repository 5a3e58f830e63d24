"""Few-shot calibration of a learned focus model on the user's own sample.

A model trained on some kinds of sample can miss on another; one z-stack of
the new sample fixes much of that. :func:`calibrate_model` records one field's
z-stack into the catalogue (a Brenner sweep for focus, then exposures at known
offsets, exactly as ``collect_training_set`` takes training data), adapts the
model from it (``models.fine_tune``) and returns the adapted model. The same
run can be adapted from again later:
``models.fine_tune(model, models.examples_from_runs([catalog[uid]]))``.
"""

from __future__ import annotations

import os
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
from bluesky.protocols import Movable, Readable
from bluesky.utils import Msg

from .exposure import auto_exposure
from .learned import (
    PAIR_SEPARATOR,
    SHIPPED,
    _model_identity,
    _model_patterns,
    _resolve_model,
    check_model_optics,
    collect_training_set,
)
from .results import NumbersReading
from .stubs import stage_field

__all__ = ["calibrate_model"]


def calibrate_model(
    camera: Readable,
    stage: Movable,
    led: Movable,
    model: str = SHIPPED,
    fov: Movable | None = None,
    field: float | None = None,
    *,
    shots: int = 24,
    epochs: int = 30,
    defocus_range_dof: float = 6.0,
    sweep_range_um: float = 25.0,
    sweep_points: int = 26,
    off_axis_pattern: str = "off_axis",
    off_axis_exposure_s: float | None = None,
    seed: int = 0,
    out: str | None = None,
    md: dict | None = None,
):
    """Adapt a learned focus model to the sample under the lens from one z-stack of it.

    Moves ``fov`` to ``field`` (when given), finds focus with a Brenner sweep,
    then takes ``shots`` exposures at random offsets within
    ±``defocus_range_dof`` depths of field, as the model was trained (a pair
    under its own two LEDs per offset for a model of pairs,
    ``model.shots == 2``), labelled with their defocus: the run
    ``collect_training_set`` makes, tagged ``purpose="calibration"`` and
    ``calibrates_model`` (the model's name) instead of as training data. Before
    that run closes, ``models.fine_tune`` adapts the model from the frames it
    took (kept in memory: nothing is read back from the catalogue) and the
    ``calibration_result`` stream records the error on the held-out part of the
    stack before and after. The LED pattern and the exposure are restored; the
    field of view stays the calibrated one.

    The model is refused before anything moves when it was trained for other
    optics, or when ``shots`` is too few to adapt from.

    Parameters
    ----------
    camera : Readable
        Camera (provides ``last_frame``).
    stage : Movable
        Z stage (µm).
    led : Movable
        LED illumination.
    model : str, path or DefocusModel
        Checkpoint path, a loaded model, or ``"shipped"`` (the default): the
        general pair model shipped for the devices' optics. Left untouched.
    fov : Movable, optional
        Field-of-view positioner (an XY stage, or the simulator's ``fov``).
    field : float, optional
        Where to move ``fov`` first; None: the field under the lens.
    shots : int
        Exposures (pairs for a model of pairs) of the z-stack; at least 18.
    epochs : int
        Most fine-tuning passes (the best on the held-out offsets is kept).
    defocus_range_dof : float
        Half-width of the random offsets, in depths of field (as the training data).
    sweep_range_um, sweep_points : float, int
        Brenner sweep (relative, ± range) that finds the field's focus.
    off_axis_pattern : str
        LED pattern of a single-frame model's shots (a pair model uses its own two).
    off_axis_exposure_s : float or None
        Exposure of the shots. None: for a model of pairs (which normalises
        brightness away) set from preview frames under its first LED
        (``auto_exposure``), as ``cnn_focus`` does; for a single-frame model
        0.25 s, ``collect_training_set``'s default (it needs its training exposure).
    seed : int
        Seed of the offsets and of the fine-tuning.
    out : str, optional
        Where to save the adapted model (``.safetensors``); None: not saved.
    md : dict, optional
        Metadata merged into the start documents.

    Returns
    -------
    DefocusModel
        The adapted model; its metadata holds ``adapted_from`` and ``adaptation``
        (the calibration run's uid, the held-out error before and after).
    """
    from models.adapt import MIN_EXAMPLES

    model = _resolve_model(model, camera, led)
    patterns = _model_patterns(model, off_axis_pattern)
    check_model_optics(model, camera, led, PAIR_SEPARATOR.join(patterns))
    if shots < MIN_EXAMPLES:
        raise ValueError(
            f"calibrate_model needs at least {MIN_EXAMPLES} shots to adapt a model from "
            f"(every other one is held out to check it), got {shots}; use shots=24."
        )
    if field is None:  # the field under the lens (a label only, without a positioner)
        field = float((yield from bps.rd(fov))) if fov is not None else 0.0
    recorder = _Recorder(camera, stage, model, epochs=epochs, seed=seed)
    old_pattern, old_exposure = led.pattern.get(), camera.exposure_time.get()

    def stack():
        exposure = off_axis_exposure_s
        if fov is not None:  # the previews must see the field to be calibrated on
            yield from bps.mv(fov, field)
        if exposure is None and len(patterns) > 1:
            yield from bps.mv(led, patterns[0])
            yield from auto_exposure(camera, stream=None)  # previews only: nothing recorded
            exposure = float(camera.exposure_time.get())
        plan = collect_training_set(
            camera,
            stage,
            led,
            fov,
            [field],
            shots_per_field=shots,
            defocus_range_dof=defocus_range_dof,
            sweep_range_um=sweep_range_um,
            sweep_points=sweep_points,
            off_axis_pattern=patterns[0],
            off_axis_exposure_s=0.25 if exposure is None else exposure,
            pair_patterns=patterns if len(patterns) > 1 else None,
            training_set=f"calibration:{model.name}",
            seed=seed,
            # md goes to the focus sweep's run too, so both runs say what they were for
            md={"calibrates_model": model.name, **_model_identity(model), **(md or {})},
        )
        return (yield from recorder.relay(plan))

    def restore():
        # collect_training_set restores what it found after its focus sweep: the exposure
        # the previews chose, not the one before them
        yield from bps.mv(led, old_pattern)
        yield from bps.mv(camera.exposure_time, old_exposure)

    yield from bpp.finalize_wrapper(stack(), restore())
    if recorder.failure is not None:
        raise recorder.failure
    adapted = recorder.adapted
    if adapted is None:
        raise RuntimeError("calibrate_model recorded no calibration run; nothing was adapted.")
    if out:
        adapted.save(os.fspath(out))
    return adapted


class _MemoryRun:
    """The frames of a calibration run as ``models.examples_from_runs`` reads a catalogue run."""

    class _Column:
        def __init__(self, values: np.ndarray) -> None:
            self._values = values

        def read(self) -> np.ndarray:
            return self._values

    def __init__(self, start: dict[str, Any], image_key: str, frames, z) -> None:
        self.start = start
        self._stream = {
            image_key: self._Column(np.stack(frames)),
            start["motors"][0]: self._Column(np.asarray(z, dtype=float)),
        }

    def __getitem__(self, stream: str) -> dict[str, _MemoryRun._Column]:
        if stream != "primary":
            raise KeyError(stream)
        return self._stream


class _Recorder:
    """Relays ``collect_training_set``'s messages, keeping its frames; adapts before the run ends.

    The run is re-tagged as a calibration at its ``open_run``; each event's
    frame (the camera's ``last_frame``) and stage reading are kept as they are
    read; at its ``close_run`` the model is fine-tuned and a
    ``calibration_result`` event is written first. A fine-tuning that fails
    closes the run as failed, with the reason, and is raised after the
    LED and exposure are restored.
    """

    def __init__(self, camera, stage, model, *, epochs: int, seed: int) -> None:
        self.camera, self.stage, self.model = camera, stage, model
        self.epochs, self.seed = epochs, seed
        self.motor = stage_field(stage)
        self.image_key = f"{camera.name}_image"
        self.start: dict[str, Any] | None = None
        self.opening = self.open = False
        self.frames: list[np.ndarray] = []
        self.z: list[float] = []
        self._event: dict[str, Any] = {}
        self.adapted = None
        self.failure: Exception | None = None

    def relay(self, plan):
        response, error = None, None
        while True:
            try:
                msg = plan.send(response) if error is None else plan.throw(error)
            except StopIteration as stop:
                return stop.value
            response, error = None, None
            msg, first = self._before(msg)
            try:
                for extra in first:  # noqa: UP028 (the RunEngine sends; a list cannot)
                    yield extra
                response = yield msg
            except GeneratorExit:
                plan.close()
                raise
            except BaseException as err:  # the RunEngine's (pause, abort) or a device's error
                error = err
                continue
            self._after(msg, response)

    def _before(self, msg: Msg) -> tuple[Msg, list[Msg]]:
        if msg.command == "open_run" and msg.kwargs.get("plan_name") == "collect_training_set":
            kwargs = {
                **msg.kwargs,
                "plan_name": "calibrate_model",
                "purpose": "calibration",
                "plan_args": {"epochs": self.epochs, "seed": self.seed},
            }
            self.start, self.opening = kwargs, True
            return Msg("open_run", *msg.args, **kwargs), []
        if msg.command == "close_run" and self.open:
            self.open = False
            try:
                result = self._adapt()
            except Exception as err:  # refused or failed: the run says why
                self.failure = err
                return Msg("close_run", exit_status="fail", reason=str(err)), []
            reading = NumbersReading("calibration_result", result, _UNITS)
            result_event = [Msg("create", name="calibration_result"), Msg("read", reading)]
            return msg, [*result_event, Msg("save")]
        return msg, []

    def _after(self, msg: Msg, response: Any) -> None:
        if msg.command == "open_run" and self.opening:
            self.start["uid"] = response
            self.opening, self.open = False, True
        elif not self.open:
            return
        elif msg.command == "read" and msg.obj is self.camera:
            self._event["frame"] = np.array(self.camera.last_frame, copy=True)
        elif msg.command == "read" and msg.obj is self.stage:
            self._event["z"] = float(response[self.motor]["value"])
        elif msg.command == "save":
            if {"frame", "z"} <= self._event.keys():
                self.frames.append(self._event["frame"])
                self.z.append(self._event["z"])
            self._event = {}

    def _adapt(self) -> dict[str, float | int]:
        import models

        if not self.frames:
            raise ValueError("The calibration run recorded no frames; nothing to adapt from.")
        run = _MemoryRun(self.start, self.image_key, self.frames, self.z)
        examples = models.examples_from_runs([run], progress=False)
        self.adapted = models.fine_tune(self.model, examples, epochs=self.epochs, seed=self.seed)
        adaptation = self.adapted.metadata["adaptation"]
        before, after = adaptation["before"], adaptation["after"]
        return {
            "before_mae_um": before["mae_um"],
            "before_mae_dof": before["mae_dof"],
            "after_mae_um": after["mae_um"],
            "after_mae_dof": after["mae_dof"],
            "epochs": int(adaptation["epochs"]),
            "frames": int(adaptation["frames"]),
            "held_out_frames": int(adaptation["held_out_frames"]),
            "fine_tune_s": float(adaptation["time_s"]),
        }


_UNITS = {"before_mae_um": "um", "after_mae_um": "um", "fine_tune_s": "s"}
