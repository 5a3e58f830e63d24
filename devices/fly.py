"""A continuous-motion (fly) focus sweep as an ophyd flyer: the stage moves, the camera streams.

:class:`ZFlyer` drives any Z positioner with a ``velocity`` signal and a
timestamped readback, and any camera that can stream (``start_streaming`` /
``stop_streaming``, as :class:`~devices.SimCamera` does). Each frame's Z is
the stage readback interpolated to the middle of the frame's exposure (the
readback's own timestamps), never a commanded position.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

import numpy as np
from ophyd.status import DeviceStatus, Status

from .stage import can_skip_settle

__all__ = ["ZFlyer"]

logger = logging.getLogger(__name__)

_FRAME_KEYS = ("mean", "max", "saturated_fraction", "brenner_noise")


class ZFlyer:
    """Sweep ``stage`` from where it is to ``stop`` at ``velocity`` while ``camera`` streams.

    Implements the bluesky flyer protocol (``kickoff``, ``complete``,
    ``describe_collect``, ``collect``, ``collect_asset_docs``). Call
    :meth:`prepare` with the end point and speed before each kickoff; the
    stage's velocity is restored after the sweep.

    A ``judge`` given to :meth:`prepare` sees the frames while the stage
    moves (where the camera hands them over as they are read out: a
    :class:`~devices.SimCamera` renders them ahead along the stage's planned
    path, :meth:`~devices.SimCamera.anticipate_stream`), each as a dict of the
    camera's readings plus ``z`` and ``travel`` (from the readback, once the
    readback has passed the frame's end); when it returns True the stage
    stops there (:attr:`stopped_early`) and the sweep ends with the frames
    exposed so far.

    Collected fields, one event per frame: the stage position ``<z field>``
    (µm, readback interpolated to mid-exposure), ``<z field>_travel`` (µm the
    readback moved during the exposure: the frame's blur, and whether the
    stage was at full speed throughout), the camera's focus measures,
    ``mean``, ``max``, ``saturated_fraction`` and ``brenner_noise``, and
    ``<camera>_exposure_start`` / ``<camera>_exposure_s``; the image is
    external (the camera's HDF5 file).
    """

    def __init__(self, camera, stage, *, name: str = "zfly") -> None:
        for needed in ("start_streaming", "stop_streaming", "frame_period_s"):
            if not hasattr(camera, needed):
                raise TypeError(
                    f"Camera {camera.name!r} cannot stream frames (no {needed}()); a fly "
                    "sweep needs a streaming camera: use a step sweep (brenner_sweep) instead."
                )
        if not hasattr(stage, "velocity"):
            raise TypeError(f"Stage {stage.name!r} has no velocity signal to sweep at.")
        self.name, self.parent = name, None
        self.camera, self.stage = camera, stage
        self._target: float | None = None
        self._speed: float | None = None
        self._readbacks: list[tuple[float, float]] = []
        self._move = None
        self._saved_velocity: float | None = None
        self._frames: list[dict[str, float]] = []
        self._lock = threading.Lock()
        self._discarding = False
        self._finisher: threading.Thread | None = None
        #: sweeps cut short by a pause (and swept again)
        self.discarded_sweeps = 0
        self._judge: Callable[[list[dict[str, float]]], bool] | None = None
        self._live = threading.Condition(self._lock)
        self._live_pending: list[dict[str, float]] = []
        self._live_closed = True
        #: frames the judge saw during the last sweep (camera readings plus ``z``, ``travel``)
        self.live_frames: list[dict[str, float]] = []
        #: whether the judge stopped the last sweep
        self.stopped_early = False

    @property
    def z_key(self) -> str:
        fields = getattr(self.stage, "hints", {}).get("fields", [])
        return fields[0] if fields else self.stage.name

    def prepare(
        self,
        stop: float,
        velocity_um_per_s: float,
        *,
        judge: Callable[[list[dict[str, float]]], bool] | None = None,
    ) -> None:
        """Set the end of the next sweep (µm), its speed (µm/s) and who may stop it early.

        ``judge(frames)`` is called, from a thread of the flyer's, with every
        frame seen so far each time more arrive; True stops the stage.
        """
        if not math.isfinite(stop) or not velocity_um_per_s > 0:
            raise ValueError(
                f"A fly sweep needs a finite end point and a positive speed, got stop={stop!r}, "
                f"velocity={velocity_um_per_s!r}."
            )
        self._target, self._speed = float(stop), float(velocity_um_per_s)
        self._judge = judge

    # -- bluesky flyer protocol -----------------------------------------------------
    def _on_readback(self, value, timestamp, **kwargs) -> None:
        with self._lock:
            self._readbacks.append((float(timestamp), float(value)))
            self._live.notify_all()

    def _on_live_frame(self, readings: dict[str, float]) -> None:
        with self._lock:
            self._live_pending.append(readings)
            self._live.notify_all()

    def _judge_live(self, judge) -> None:
        """Give the judge each frame once the readback has passed its end; stop if it says so."""

        def ready() -> bool:
            return self._live_closed or bool(
                self._live_pending
                and self._readbacks[-1][0] >= self._live_pending[0]["exposure_end"]
            )

        while True:
            with self._lock:
                self._live.wait_for(ready)
                if self._live_closed:
                    return
                latest = self._readbacks[-1][0]
                arrived = [f for f in self._live_pending if f["exposure_end"] <= latest]
                del self._live_pending[: len(arrived)]
            starts = np.array([f["exposure_start"] for f in arrived])
            ends = np.array([f["exposure_end"] for f in arrived])
            zs, travels = self.z_at(0.5 * (starts + ends)), self.z_at(ends) - self.z_at(starts)
            for frame, z, travel in zip(arrived, zs, travels, strict=True):
                self.live_frames.append({**frame, "z": float(z), "travel": float(travel)})
            try:
                verdict = judge(list(self.live_frames))
            except Exception:  # a judge that fails never stops a sweep
                logger.exception("%s: the judge of the live frames failed", self.name)
                return
            if verdict:
                self.stopped_early = True
                self.stage.stop(success=True)
                return

    def kickoff(self) -> Status:
        if self._target is None:
            raise RuntimeError(f"{self.name}: call prepare(stop, velocity) before kickoff().")
        self._frames = []
        if self._finisher is not None:  # a sweep cut short by a pause is still winding down
            self._finisher.join(timeout=120)
            self._finisher = None
        self._discarding = False
        if getattr(self.camera, "_streaming", None) is not None:  # left over from an abort
            self.camera.stop_streaming(discard=True).wait(timeout=120)
        with self._lock:
            self._readbacks = [(time.time(), float(self.stage.position))]
        self._saved_velocity = float(self.stage.velocity.get())
        self.stage.velocity.put(self._speed)
        self.stage.readback.subscribe(self._on_readback, run=False)
        self.stopped_early, self.live_frames = False, []
        judge = self._judge
        live = (
            judge is not None
            and hasattr(self.camera, "anticipate_stream")
            and hasattr(self.stage, "path_of_move")
            and hasattr(self.stage, "last_move_start")
        )
        if live:
            # the simulator renders the frames ahead, along the move the stage is about to make
            duration = abs(self._target - float(self.stage.position)) / self._speed
            self.camera.anticipate_stream(self.stage.path_of_move(self._target), duration)
        else:
            self.camera.start_streaming()
        # the end of the sweep is passed through (the plan moves on from there): no settle
        if can_skip_settle(self.stage):
            self._move = self.stage.set(self._target, settle=False)
        else:
            self._move = self.stage.set(self._target)
        if live:
            with self._lock:
                self._live_pending, self._live_closed = [], False
            threading.Thread(
                target=self._judge_live, args=(judge,), name=f"{self.name}-judge", daemon=True
            ).start()
            self.camera.start_streaming(
                start_at=self.stage.last_move_start, on_frame=self._on_live_frame
            )
        status = Status(obj=self)
        status.set_finished()
        return status

    def complete(self) -> DeviceStatus:
        status = DeviceStatus(self)
        move = self._move
        if move is None:
            status.set_finished()
            return status

        def finish() -> None:
            error = None
            try:
                move.wait()
            except Exception as exc:
                error = exc
            if self._stopped_short():
                # stopped short (a pause, a stop, an abort): an incomplete sweep is not data
                self._discarding, error = True, None
            try:
                self.camera.stop_streaming(discard=self._discarding).wait()
                self._finish_readbacks()
            except Exception as exc:
                error = error or exc
            if self._discarding:
                self._frames = []
            if error is None:
                status.set_finished()
            else:
                status.set_exception(error)

        self._finisher = threading.Thread(target=finish, name=f"{self.name}-complete", daemon=True)
        self._finisher.start()
        return status

    def _finish_readbacks(self) -> None:
        with self._lock:
            self._live_closed = True
            self._live.notify_all()
        self.stage.readback.clear_sub(self._on_readback)
        with self._lock:
            self._readbacks.append((time.time(), float(self.stage.position)))
        if self._saved_velocity is not None:
            self.stage.velocity.put(self._saved_velocity)
            self._saved_velocity = None
        self._frames = list(self.camera.streamed)

    def stop(self, *, success: bool = False) -> None:
        """Halt the stage and the camera (the frames exposed so far are kept)."""
        self.stage.stop()
        if self._move is not None and self._finisher is None:  # kicked off, never completed
            self._move = None
            try:
                self.camera.stop_streaming().wait(timeout=120)
            finally:
                self._finish_readbacks()

    # bluesky.protocols.Pausable: a sweep cut short is discarded; the plan sweeps again
    def pause(self) -> None:
        if self._move is not None and (not self._move.done or self._stopped_short()):
            self.discarded_sweeps += 1
            self.stage.stop(success=True)

    def _stopped_short(self) -> bool:
        """The sweep ended before its end point (stopped by a pause, a stop or an abort)."""
        if self.stopped_early or self.stage.moving or self._target is None:
            return False
        span = abs(self._target - self._readbacks[0][1]) if self._readbacks else 1.0
        return abs(float(self.stage.position) - self._target) > max(1e-3, 1e-3 * span)

    def resume(self) -> None:
        pass

    def z_at(self, times: np.ndarray) -> np.ndarray:
        """Stage readback interpolated at ``times`` (``time.time()`` seconds)."""
        with self._lock:
            samples = sorted(self._readbacks)
        t = np.array([s[0] for s in samples])
        z = np.array([s[1] for s in samples])
        return np.interp(times, t, z)

    def describe_collect(self) -> dict[str, dict]:
        cam = self.camera.name
        described = self.camera.describe()
        keys: dict[str, dict] = {
            self.z_key: {
                "source": f"{self.stage.name}:readback@mid-exposure",
                "dtype": "number",
                "shape": [],
                "units": "um",
            },
            f"{self.z_key}_travel": {
                "source": f"{self.stage.name}:readback over the exposure",
                "dtype": "number",
                "shape": [],
                "units": "um",
            },
            f"{cam}_exposure_start": {
                "source": f"{cam}:clock",
                "dtype": "number",
                "shape": [],
                "units": "s",
            },
            f"{cam}_exposure_s": {
                "source": f"{cam}:clock",
                "dtype": "number",
                "shape": [],
                "units": "s",
            },
        }
        measures = [*getattr(self.camera, "measures", ("brenner",)), *_FRAME_KEYS]
        for measure in measures:
            key = f"{cam}_{measure}"
            if key in described:
                keys[key] = dict(described[key])
        image_key = f"{cam}_image"
        if image_key in described:
            keys[image_key] = dict(described[image_key])
        return keys

    def collect(self):
        cam = self.camera.name
        frames = self._frames
        if not frames:
            return
        starts = np.array([f["exposure_start"] for f in frames])
        ends = np.array([f["exposure_end"] for f in frames])
        mid = 0.5 * (starts + ends)
        zs = self.z_at(mid)
        travels = self.z_at(ends) - self.z_at(starts)
        measures = [*getattr(self.camera, "measures", ("brenner",)), *_FRAME_KEYS]
        for frame, t, z, travel in zip(frames, mid, zs, travels, strict=True):
            data = {self.z_key: float(z), f"{self.z_key}_travel": float(travel)}
            data[f"{cam}_exposure_start"] = frame["exposure_start"]
            data[f"{cam}_exposure_s"] = frame["exposure_end"] - frame["exposure_start"]
            for measure in measures:
                if measure in frame:
                    data[f"{cam}_{measure}"] = frame[measure]
            yield {"time": float(t), "data": data, "timestamps": dict.fromkeys(data, float(t))}
        self._frames = []

    def collect_asset_docs(self):
        yield from self.camera.collect_asset_docs()
