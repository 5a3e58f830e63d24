"""Simulated camera: frames to one SWMR HDF5 file per run, focus measures as readings.

The image itself never travels in events: ``stage()`` opens the run's HDF5
file and emits a StreamResource; each ``trigger()`` appends one frame and
emits a StreamDatum (``external: "STREAM:"``). Per-frame scalars computed
from the frame (the configured focus measures, mean, max, saturated
fraction) are ordinary readings, like an areaDetector Stats plugin.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np
from event_model import StreamRange, compose_stream_resource
from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.status import DeviceStatus

from models.focus_measures import FOCUS_MEASURES, brenner_noise, focus_measure

from .simulator import CameraSettings, OpticalModel

__all__ = ["HDF5_DATASET", "SimCamera"]

HDF5_DATASET = "/entry/data/data"


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
    return float(value)


def _binning(sig, value):
    if value not in (1, 2, 4):
        raise ValueError(f"Camera binning must be 1, 2 or 4, got {value!r}.")
    return int(value)


def _roi_value(sig, value):
    if not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"Camera {sig.attr_name} must be a non-negative integer, got {value!r}.")
    return int(value)


class SimCamera(Device):
    """A scientific camera on the simulated microscope.

    Readings: ``<name>_brenner`` (hinted) and any other configured focus
    measure, ``<name>_brenner_noise`` (the standard deviation of the Brenner
    value that the camera's own noise predicts for this frame),
    ``<name>_mean``, ``<name>_max``, ``<name>_saturated_fraction``; the image
    ``<name>_image`` is external (HDF5). Configuration: exposure time (s) and
    its range, gain, binning, ROI (unbinned sensor pixels), pixel size at the
    sample (µm), bit depth, the noise model as a camera datasheet gives it
    (EMVA 1288): black level ``offset_adu``, ``read_noise_e`` and
    ``electrons_per_adu`` (which follows the gain), and ``scene``, the
    simulator's description of what is under the lens (JSON: the sample,
    and for a recorded z-stack whether it is cropped or resampled to the
    sensor).
    """

    image = Cpt(Signal, kind="omitted")
    mean = Cpt(Signal, value=0.0, kind="normal")
    max = Cpt(Signal, value=0, kind="normal")
    saturated_fraction = Cpt(Signal, value=0.0, kind="normal")

    brenner = Cpt(Signal, value=0.0, kind="hinted")
    brenner_noise = Cpt(Signal, value=0.0, kind="normal")
    normalized_variance = Cpt(Signal, value=0.0, kind="omitted")
    tenengrad = Cpt(Signal, value=0.0, kind="omitted")
    vollath_f4 = Cpt(Signal, value=0.0, kind="omitted")
    squared_gradient = Cpt(Signal, value=0.0, kind="omitted")
    fft_bandpass = Cpt(Signal, value=0.0, kind="omitted")

    min_exposure_s = Cpt(Signal, value=1e-5, kind="config")
    max_exposure_s = Cpt(Signal, value=10.0, kind="config")
    exposure_time = Cpt(_CheckedSignal, value=0.01, check=_positive_exposure, kind="config")
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
        time_scale: float = 1.0,
        name: str = "camera",
        **kwargs,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self._model = model
        self.write_dir = Path(write_dir)
        self.readout_time_s = readout_time_s
        self.time_scale = time_scale
        self.measures = self._check_measures(measures)
        for measure in FOCUS_MEASURES:
            getattr(self, measure).kind = (
                "hinted"
                if measure == "brenner"
                else "normal"
                if measure in self.measures
                else "omitted"
            )
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
        self._asset_docs: deque = deque()
        self._file: h5py.File | None = None
        self._dataset: h5py.Dataset | None = None
        self._compose_datum = None
        self._frames_written = 0
        self._lock = threading.Lock()
        self.last_frame: np.ndarray | None = None
        self.last_file: Path | None = None
        self._streaming: tuple | None = None
        #: threads computing streamed frames (the simulation, not the camera)
        self.render_workers = min(4, len(os.sched_getaffinity(0)))
        #: per-frame readings of the last stream (see :meth:`stop_streaming`)
        self.streamed: list[dict[str, float]] = []

    @staticmethod
    def _check_measures(measures: Sequence[str]) -> tuple[str, ...]:
        chosen = tuple(dict.fromkeys(["brenner", *measures]))
        for measure in chosen:
            focus_measure(measure)  # raises a clear error for unknown names
        return chosen

    def _update_pixel_size(self, value, **kwargs):
        self.pixel_size_um.put(self._model.sample_pixel_um(int(value)))

    def _update_conversion(self, value, **kwargs):
        sensor = self._model.sensor
        self.electrons_per_adu.put(sensor.full_well_e / sensor.max_adu / float(value))

    def pixel_variance(self, frame: np.ndarray) -> np.ndarray:
        """Noise variance of each pixel of ``frame`` (ADU²) from the camera's noise model.

        Shot noise of the detected electrons, read noise and quantisation.
        """
        k = self.electrons_per_adu.get()
        signal = np.maximum(frame.astype(np.float64) - self.offset_adu.get(), 0.0)
        return signal / k + (self.read_noise_e.get() / k) ** 2 + 1 / 12

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

    def describe(self):
        desc = super().describe()
        h, w = self.frame_shape()
        desc[self.image.name] = {
            "source": f"sim:{self.name}:hdf5",
            "dtype": "array",
            "dtype_numpy": np.dtype(np.uint16).str,
            "shape": [h, w],
            "external": "STREAM:",
        }
        return desc

    def stage(self):
        h, w = self.frame_shape()
        # a run that failed before its first reading leaves documents and a file behind
        self._asset_docs.clear()
        self._close_file()
        day = time.strftime("%Y/%m/%d")
        folder = self.write_dir / day
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{self.name}_{uuid.uuid4().hex[:12]}.h5"
            self._file = h5py.File(path, "w", libver="latest")
        except OSError as err:
            raise OSError(
                f"Camera {self.name} cannot write frames under {self.write_dir} ({err}); "
                "choose a writable frames folder."
            ) from err
        self._dataset = self._file.create_dataset(
            HDF5_DATASET, shape=(0, h, w), maxshape=(None, h, w), chunks=(1, h, w), dtype="<u2"
        )
        self._file.swmr_mode = True
        self._frames_written = 0
        self.last_file = path
        bundle = compose_stream_resource(
            mimetype="application/x-hdf5",
            uri=path.resolve().as_uri().replace("file://", "file://localhost", 1),
            data_key=self.image.name,
            parameters={
                "dataset": HDF5_DATASET,
                "chunk_shape": [1, h, w],
                "join_method": "stack",
                "swmr": True,
            },
        )
        self._compose_datum = bundle.compose_stream_datum
        self._asset_docs.append(("stream_resource", bundle.stream_resource_doc))
        return super().stage()

    def unstage(self):
        try:
            if self._streaming is not None:
                self.stop_streaming(discard=True).wait(timeout=120)
            return super().unstage()
        finally:
            self._close_file()

    def _close_file(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
            self._file = None
            self._dataset = None

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

    def _store(self, frame: np.ndarray) -> dict[str, float]:
        self.last_frame = frame
        values: dict[str, float] = {m: focus_measure(m)(frame) for m in self.measures}
        max_adu = self._model.sensor.max_adu
        values["mean"] = float(frame.mean())
        values["max"] = int(frame.max())
        values["saturated_fraction"] = float(np.count_nonzero(frame >= max_adu) / frame.size)
        values["brenner_noise"] = brenner_noise(frame, self.pixel_variance(frame))
        for key, value in values.items():
            getattr(self, key).put(value)
        with self._lock:
            if self._dataset is None:
                return values  # not staged: a snapshot outside a run, nothing to record
            i = self._frames_written
            self._dataset.resize(i + 1, axis=0)
            self._dataset[i] = frame
            self._dataset.flush()
            self._frames_written = i + 1
            self._asset_docs.append(
                ("stream_datum", self._compose_datum(indices=StreamRange(start=i, stop=i + 1)))
            )
        return values

    # -- streaming (continuous acquisition, for fly scans) -------------------------
    def frame_period_s(self) -> float:
        """Time from one frame's start to the next's when streaming (exposure + readout)."""
        return self.exposure_time.get() + self.readout_time_s

    def start_streaming(self, max_frames: int = 10_000) -> None:
        """Start exposing frames back to back, one every :meth:`frame_period_s`.

        Each frame's exposure window (start and end, ``time.time()`` seconds)
        is recorded as the camera's clock gives it. The simulator renders the
        frames when :meth:`stop_streaming` is called, from the recorded
        windows and the stage's recorded path: a real camera delivers them
        during the sweep, and this keeps the time the simulation takes out of
        the instrument's timeline. Frames go to the staged HDF5 file.
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
        stop = threading.Event()
        windows: list[tuple[float, float]] = []

        def expose_back_to_back() -> None:
            t0 = time.time()
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

        thread = threading.Thread(
            target=expose_back_to_back, name=f"{self.name}-stream", daemon=True
        )
        self._streaming = (thread, stop, windows, settings)
        self.streamed = []
        thread.start()

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
        thread, stop, windows, settings = self._streaming
        stop.set()

        def render() -> None:
            try:
                thread.join()
                chosen = [] if discard else windows
                for start in range(0, len(chosen), 16):  # bounded memory for long streams
                    batch = chosen[start : start + 16]
                    frames = self._model.expose_many(settings, batch, workers=self.render_workers)
                    for (t0, t1), frame in zip(batch, frames, strict=True):
                        values = self._store(frame)
                        values.update(exposure_start=t0, exposure_end=t1)
                        self.streamed.append(values)
            except Exception as exc:
                status.set_exception(exc)
            else:
                status.set_finished()
            finally:
                self._streaming = None

        threading.Thread(target=render, name=f"{self.name}-render", daemon=True).start()
        return status

    def collect_asset_docs(self) -> Iterator:
        while self._asset_docs:
            yield self._asset_docs.popleft()

    def snap(self) -> np.ndarray:
        """Take one frame outside a run and return it (nothing is recorded)."""
        self.trigger().wait(timeout=60)
        assert self.last_frame is not None
        return self.last_frame
