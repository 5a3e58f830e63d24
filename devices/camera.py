"""Simulated camera: frames to one SWMR HDF5 file per run, focus measures as readings.

The image itself never travels in events: ``stage()`` opens the run's HDF5
file and emits a StreamResource; each ``trigger()`` appends one frame and
emits a StreamDatum (``external: "STREAM:"``). Per-frame scalars computed
from the frame (the configured focus measures, mean, max, saturated
fraction) are ordinary readings, like an areaDetector Stats plugin. The
recording part is :class:`~devices.frames.FrameRecorder`, shared with the
Channel Access camera.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from ophyd import Component as Cpt
from ophyd import Signal
from ophyd.status import DeviceStatus

from .frames import HDF5_DATASET, FrameRecorder
from .simulator import CameraSettings, OpticalModel

__all__ = ["HDF5_DATASET", "SimCamera"]

logger = logging.getLogger(__name__)


class _CheckedSignal(Signal):
    """A configuration signal that validates a value before accepting it."""

    def __init__(self, *args, check=None, **kwargs):
        self._check = check
        super().__init__(*args, **kwargs)

    def put(self, value, **kwargs):
        if self._check is not None:
            value = self._check(self, value)
        super().put(value, **kwargs)


def _positive_exposure(sig, value):
    if not isinstance(value, int | float) or not np.isfinite(value) or value <= 0:
        raise ValueError(
            f"Camera exposure time must be a positive number of seconds, got {value!r}; "
            "use e.g. 0.01 for 10 ms."
        )
    camera = sig.parent
    low, high = camera.min_exposure_s.get(), camera.max_exposure_s.get()
    if not low <= value <= high:
        raise ValueError(
            f"Camera exposure time {value:g} s is outside the camera's range "
            f"[{low:g}, {high:g}] s; choose an exposure inside it."
        )
    return float(value)


def _positive_gain(sig, value):
    if not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"Camera gain must be a positive number, got {value!r}.")
    highest = float(sig.parent.max_gain.get())
    if value > highest:
        raise ValueError(
            f"Camera gain {value:g} is above the camera's maximum of {highest:g}; lower the "
            "gain, or lengthen the exposure (or brighten the light) instead."
        )
    return float(value)


def _binning(sig, value):
    if value not in (1, 2, 4):
        raise ValueError(f"Camera binning must be 1, 2 or 4, got {value!r}.")
    return int(value)


def _roi_value(sig, value):
    if not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"Camera {sig.attr_name} must be a non-negative integer, got {value!r}.")
    return int(value)


class SimCamera(FrameRecorder):
    """A scientific camera on the simulated microscope.

    Readings: ``<name>_brenner`` (hinted) and any other configured focus
    measure, ``<name>_brenner_noise`` (the standard deviation of the Brenner
    value that the camera's own noise predicts for this frame),
    ``<name>_mean``, ``<name>_max``, ``<name>_saturated_fraction``; the image
    ``<name>_image`` is external (HDF5). Configuration: exposure time (s) and
    its range, gain (up to ``max_gain``, 16 as a CMOS camera's analog gain
    goes), binning, ROI (unbinned sensor pixels), pixel size at the sample
    (µm), bit depth, the noise model as a camera datasheet gives it
    (EMVA 1288): black level ``offset_adu``, ``read_noise_e`` and
    ``electrons_per_adu`` (which follows the gain), and ``scene``, the
    simulator's description of what is under the lens (JSON: the sample,
    and for a recorded z-stack whether it is cropped or resampled to the
    sensor).
    """

    min_exposure_s = Cpt(Signal, value=1e-5, kind="config")
    max_exposure_s = Cpt(Signal, value=10.0, kind="config")
    exposure_time = Cpt(_CheckedSignal, value=0.01, check=_positive_exposure, kind="config")
    max_gain = Cpt(Signal, value=16.0, kind="config")
    gain = Cpt(_CheckedSignal, value=1.0, check=_positive_gain, kind="config")
    binning = Cpt(_CheckedSignal, value=1, check=_binning, kind="config")
    roi_x = Cpt(_CheckedSignal, value=0, check=_roi_value, kind="config")
    roi_y = Cpt(_CheckedSignal, value=0, check=_roi_value, kind="config")
    roi_width = Cpt(_CheckedSignal, value=0, check=_roi_value, kind="config")
    roi_height = Cpt(_CheckedSignal, value=0, check=_roi_value, kind="config")
    pixel_size_um = Cpt(Signal, value=0.0, kind="config")
    bit_depth = Cpt(Signal, value=12, kind="config")
    scene = Cpt(Signal, value="", kind="config")
    offset_adu = Cpt(Signal, value=0.0, kind="config")
    read_noise_e = Cpt(Signal, value=0.0, kind="config")
    electrons_per_adu = Cpt(Signal, value=1.0, kind="config")

    def __init__(
        self,
        model: OpticalModel,
        *,
        write_dir: str | Path,
        measures: Sequence[str] = ("brenner",),
        readout_time_s: float = 0.005,
        overlap_readout: bool = True,
        time_scale: float = 1.0,
        name: str = "camera",
        **kwargs,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self._model = model
        self._init_frames(write_dir, measures)
        self.readout_time_s = readout_time_s
        #: while streaming, the next exposure starts during the last frame's readout
        #: (as CMOS cameras stream); triggered frames always take exposure + readout
        self.overlap_readout = bool(overlap_readout)
        self.time_scale = time_scale
        height, width = model.sensor.shape
        self.roi_width.put(width)
        self.roi_height.put(height)
        self.bit_depth.put(model.sensor.bit_depth)
        self.pixel_size_um.put(model.sample_pixel_um(1))
        self.offset_adu.put(float(model.sensor.offset_adu))
        self.read_noise_e.put(float(model.sensor.read_noise_e))
        self.binning.subscribe(self._update_pixel_size, run=False)
        self.gain.subscribe(self._update_conversion, run=False)
        self._update_conversion(self.gain.get())
        self._streaming: tuple | None = None
        self._anticipated: tuple | None = None
        #: threads computing streamed frames (the simulation, not the camera)
        self.render_workers = min(4, len(os.sched_getaffinity(0)))
        #: per-frame readings of the last stream (see :meth:`stop_streaming`)
        self.streamed: list[dict[str, float]] = []
        #: seconds spent measuring and writing streamed frames after their stream stopped
        #: (a real camera and its file writer do that during the stream)
        self.stream_store_seconds = 0.0

    def _update_pixel_size(self, value, **kwargs):
        self.pixel_size_um.put(self._model.sample_pixel_um(int(value)))

    def _update_conversion(self, value, **kwargs):
        sensor = self._model.sensor
        self.electrons_per_adu.put(sensor.full_well_e / sensor.max_adu / float(value))

    # -- geometry ---------------------------------------------------------------
    def settings(self) -> CameraSettings:
        roi = (self.roi_x.get(), self.roi_y.get(), self.roi_width.get(), self.roi_height.get())
        binning = self.binning.get()
        sensor_h, sensor_w = self._model.sensor.shape
        x, y, w, h = roi
        if w < 8 * binning or h < 8 * binning or x + w > sensor_w or y + h > sensor_h:
            raise ValueError(
                f"Camera ROI (x={x}, y={y}, width={w}, height={h}) does not fit the "
                f"{sensor_w}x{sensor_h} sensor with binning {binning} (at least 8 binned "
                "pixels a side); shrink or move the ROI."
            )
        return CameraSettings(self.exposure_time.get(), self.gain.get(), binning, roi)

    def frame_shape(self) -> tuple[int, int]:
        s = self.settings()
        return (s.roi[3] // s.binning, s.roi[2] // s.binning)

    # -- bluesky protocol ---------------------------------------------------------
    def _refresh_scene(self) -> None:
        sample = self._model.sample
        try:
            info = sample.describe(self._model.sensor.shape)
        except TypeError:  # samples whose description does not depend on the sensor
            info = sample.describe()
        self.scene.put(json.dumps(info, sort_keys=True))

    def read_configuration(self):
        self._refresh_scene()
        return super().read_configuration()

    def describe_configuration(self):
        self._refresh_scene()
        return super().describe_configuration()

    def unstage(self):
        if self._streaming is not None:
            self.stop_streaming(discard=True).wait(timeout=120)
        return super().unstage()

    def trigger(self) -> DeviceStatus:
        if self._streaming is not None:
            raise RuntimeError(
                f"Camera {self.name} is streaming; stop_streaming() before triggering frames."
            )
        status = DeviceStatus(self)
        settings = self.settings()
        delay = (settings.exposure_s + self.readout_time_s) * self.time_scale

        def acquire() -> None:
            try:
                start = time.time()
                if delay:
                    time.sleep(delay)
                window = (start, start + settings.exposure_s * self.time_scale)
                self._store(self._model.expose(settings, window if self.time_scale else None))
            except Exception as exc:
                status.set_exception(exc)
            else:
                status.set_finished()

        threading.Thread(target=acquire, name=f"{self.name}-acquire", daemon=True).start()
        return status

    # -- streaming (continuous acquisition, for fly scans) -------------------------
    def frame_period_s(self, exposure_s: float | None = None) -> float:
        """Time from one frame's start to the next's when streaming.

        The longer of the exposure and the readout when the readout overlaps
        the next exposure (:attr:`overlap_readout`), their sum otherwise; for
        the current exposure unless ``exposure_s`` is given.
        """
        exposure = self.exposure_time.get() if exposure_s is None else float(exposure_s)
        if self.overlap_readout:
            return max(exposure, self.readout_time_s)
        return exposure + self.readout_time_s

    def anticipate_stream(self, position_after: Callable[[float], float], duration_s: float) -> int:
        """Render the next stream's frames ahead, for a stage that will follow a known path.

        ``position_after(s)`` is the stage's Z ``s`` seconds after the stream
        starts (a planned move, e.g. :meth:`SimZStage.path_of_move
        <devices.SimZStage.path_of_move>`); frames are rendered for the
        stream's first ``duration_s`` seconds. A real camera measures each
        frame as it is read out; the simulator cannot render that fast, so it
        renders them before the stream starts (the time it takes is simulation,
        counted in the model's ``render_seconds``) and hands each one's
        readings to :meth:`start_streaming`'s ``on_frame`` when the frame would
        have been read out, never earlier. A frame the stage did not in the end
        expose along the planned path (it was stopped) is rendered again from
        the path it took. Returns the number of frames rendered.
        """
        settings = self.settings()
        period = self.frame_period_s() * self.time_scale
        exposure = settings.exposure_s * self.time_scale
        count = max(0, math.floor((duration_s - exposure) / period + 1e-9) + 1)
        windows = [(k * period, k * period + exposure) for k in range(count)]
        frames = self._model.expose_many(
            settings, windows, workers=self.render_workers, position_at=position_after
        )
        started = time.perf_counter()
        readings = [self._readings(frame) for frame in frames]
        self.stream_store_seconds += time.perf_counter() - started
        self._anticipated = (settings, position_after, frames, readings)
        return count

    def start_streaming(
        self,
        max_frames: int = 10_000,
        *,
        start_at: float | None = None,
        on_frame: Callable[[dict[str, float]], None] | None = None,
    ) -> None:
        """Start exposing frames back to back, one every :meth:`frame_period_s`.

        Each frame's exposure window (start and end, ``time.time()`` seconds)
        is recorded as the camera's clock gives it, the first starting at
        ``start_at`` (default now). The simulator renders the frames when
        :meth:`stop_streaming` is called, from the recorded windows and the
        stage's recorded path: a real camera delivers them during the sweep,
        and this keeps the time the simulation takes out of the instrument's
        timeline. Frames go to the staged HDF5 file.

        ``on_frame(readings)`` is called with each frame's readings (as in
        :attr:`streamed`) one readout after its exposure ends, for the frames
        rendered ahead by :meth:`anticipate_stream` (the stream then starts when
        the stage's planned move does); without them there is nothing to hand
        over during the stream.
        """
        if self.time_scale == 0:
            raise ValueError(
                f"Camera {self.name} cannot stream with time_scale=0 (frames would take no "
                "time while the stage moves); use a time_scale > 0."
            )
        if self._streaming is not None:
            raise RuntimeError(f"Camera {self.name} is already streaming.")
        settings = self.settings()
        period = self.frame_period_s() * self.time_scale
        exposure = settings.exposure_s * self.time_scale
        readout = self.readout_time_s * self.time_scale
        stop = threading.Event()
        windows: list[tuple[float, float]] = []
        t0 = time.time() if start_at is None else float(start_at)
        anticipated, self._anticipated = self._anticipated, None
        if anticipated is not None and anticipated[0] != settings:
            anticipated = None  # rendered for other settings: of no use

        def expose_back_to_back() -> None:
            for k in range(max_frames):
                start = t0 + k * period
                end = start + exposure
                while time.time() < end and not stop.is_set():
                    time.sleep(min(0.002, max(0.0, end - time.time())))
                if time.time() < end:  # stopped during this exposure: the frame is lost
                    return
                windows.append((start, end))
                if stop.is_set():
                    return
                while time.time() < start + period and not stop.is_set():
                    time.sleep(min(0.002, max(0.0, start + period - time.time())))

        def hand_over() -> None:  # each frame's readings, once it would have been read out
            assert anticipated is not None and on_frame is not None
            for k, values in enumerate(anticipated[3]):
                start = t0 + k * period
                while (remaining := start + exposure + readout - time.time()) > 0:
                    if stop.wait(remaining):
                        return
                if stop.is_set() or k >= len(windows):  # not exposed after all
                    return
                try:
                    on_frame({**values, "exposure_start": start, "exposure_end": start + exposure})
                except Exception:  # the consumer's fault: the stream goes on regardless
                    logger.exception("on_frame callback of camera %s failed", self.name)
                    return

        thread = threading.Thread(
            target=expose_back_to_back, name=f"{self.name}-stream", daemon=True
        )
        self._streaming = (thread, stop, windows, settings, t0, anticipated)
        self.streamed = []
        thread.start()
        if anticipated is not None and on_frame is not None:
            threading.Thread(target=hand_over, name=f"{self.name}-live", daemon=True).start()

    def _anticipated_frame(self, anticipated, t0: float, k: int, window) -> np.ndarray | None:
        """Frame ``k`` as rendered ahead, if the stage followed the planned path through it."""
        if anticipated is None or k >= len(anticipated[2]):
            return None
        path, at = anticipated[1], self._model.stage_position_at
        if at is None:
            return None
        start, end = window
        for t in (start, 0.5 * (start + end), end):
            if abs(at(t) - path(t - t0)) > 1e-6:
                return None
        return anticipated[2][k]

    def stop_streaming(self, *, discard: bool = False) -> DeviceStatus:
        """Stop streaming; the Status finishes when every exposed frame is stored.

        ``discard=True`` drops the frames instead (a sweep cut short by a pause).

        :attr:`streamed` then holds one dict per frame: the readings (focus
        measures, mean, max, saturated fraction, Brenner noise) and the
        exposure window ``exposure_start`` / ``exposure_end``.
        """
        status = DeviceStatus(self)
        if self._streaming is None:
            status.set_finished()
            return status
        thread, stop, windows, settings, t0, anticipated = self._streaming
        stop.set()

        def render() -> None:
            try:
                thread.join()
                chosen = [] if discard else windows
                for first in range(0, len(chosen), 16):  # bounded memory for long streams
                    batch = chosen[first : first + 16]
                    frames = [
                        self._anticipated_frame(anticipated, t0, first + i, window)
                        for i, window in enumerate(batch)
                    ]
                    missing = [i for i, frame in enumerate(frames) if frame is None]
                    if missing:
                        rendered = self._model.expose_many(
                            settings, [batch[i] for i in missing], workers=self.render_workers
                        )
                        for i, frame in zip(missing, rendered, strict=True):
                            frames[i] = frame
                    started = time.perf_counter()
                    for (w0, w1), frame in zip(batch, frames, strict=True):
                        values = self._store(frame)
                        values.update(exposure_start=w0, exposure_end=w1)
                        self.streamed.append(values)
                    self.stream_store_seconds += time.perf_counter() - started
            except Exception as exc:
                status.set_exception(exc)
            else:
                status.set_finished()
            finally:
                self._streaming = None

        threading.Thread(target=render, name=f"{self.name}-render", daemon=True).start()
        return status
