"""What every camera of this project does with a frame: HDF5 file, stream documents, focus measures.

:class:`FrameRecorder` is the part shared by the simulated camera
(:class:`~devices.camera.SimCamera`) and the Channel Access camera
(:class:`~devices.epics.EpicsCamera`): however a frame was acquired, it is
appended to the run's SWMR HDF5 file with a StreamDatum, and the per-frame
scalars (the configured focus measures, mean, max, saturated fraction, the
Brenner noise the camera's own noise model predicts) become ordinary
readings, the way an areaDetector Stats plugin reports them.
"""

from __future__ import annotations

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

from models.focus_measures import FOCUS_MEASURES, brenner_noise, focus_measure

__all__ = ["HDF5_DATASET", "FrameRecorder"]

HDF5_DATASET = "/entry/data/data"


class FrameRecorder(Device):
    """Base of a camera device: stores frames (HDF5 + StreamDatum) and reports focus measures.

    Subclasses acquire the frame and hand it to :meth:`_store`; they provide
    :meth:`frame_shape` (the ``(height, width)`` of the next frame) and call
    :meth:`_init_frames` from their ``__init__``.
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

    def _init_frames(self, write_dir: str | Path, measures: Sequence[str]) -> None:
        self.write_dir = Path(write_dir)
        self.measures = self._check_measures(measures)
        for measure in FOCUS_MEASURES:
            getattr(self, measure).kind = (
                "hinted"
                if measure == "brenner"
                else "normal"
                if measure in self.measures
                else "omitted"
            )
        self._asset_docs: deque = deque()
        self._file: h5py.File | None = None
        self._dataset: h5py.Dataset | None = None
        self._compose_datum = None
        self._frames_written = 0
        self._lock = threading.Lock()
        self.last_frame: np.ndarray | None = None
        self.last_file: Path | None = None

    @staticmethod
    def _check_measures(measures: Sequence[str]) -> tuple[str, ...]:
        chosen = tuple(dict.fromkeys(["brenner", *measures]))
        for measure in chosen:
            focus_measure(measure)  # raises a clear error for unknown names
        return chosen

    # -- what subclasses provide ---------------------------------------------------
    def frame_shape(self) -> tuple[int, int]:
        raise NotImplementedError

    def pixel_variance(self, frame: np.ndarray) -> np.ndarray:
        """Noise variance of each pixel of ``frame`` (ADU²) from the camera's noise model.

        Shot noise of the detected electrons, read noise and quantisation;
        the subclass supplies ``offset_adu``, ``electrons_per_adu`` and
        ``read_noise_e`` signals.
        """
        k = self.electrons_per_adu.get()
        signal = np.maximum(frame.astype(np.float64) - self.offset_adu.get(), 0.0)
        return signal / k + (self.read_noise_e.get() / k) ** 2 + 1 / 12

    def _saturation_adu(self) -> int:
        return 2 ** int(self.bit_depth.get()) - 1

    # -- bluesky protocol ----------------------------------------------------------
    def _image_source(self) -> str:
        return f"sim:{self.name}:hdf5"

    def describe(self):
        desc = super().describe()
        h, w = self.frame_shape()
        desc[self.image.name] = {
            "source": self._image_source(),
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
            return super().unstage()
        finally:
            self._close_file()

    def _close_file(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
            self._file = None
            self._dataset = None

    def _store(self, frame: np.ndarray) -> dict[str, float]:
        """Report the frame's focus measures and statistics; append it to the run's file.

        Returns the readings (focus measures, ``mean``, ``max``,
        ``saturated_fraction``, ``brenner_noise``) by name.
        """
        self.last_frame = frame
        values = self._readings(frame)
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

    def _readings(self, frame: np.ndarray) -> dict[str, float]:
        """The frame's focus measures and statistics, by name (nothing is recorded)."""
        values: dict[str, float] = {m: focus_measure(m)(frame) for m in self.measures}
        values["mean"] = float(frame.mean())
        values["max"] = int(frame.max())
        saturated = np.count_nonzero(frame >= self._saturation_adu()) / frame.size
        values["saturated_fraction"] = float(saturated)
        values["brenner_noise"] = brenner_noise(frame, self.pixel_variance(frame))
        return values

    def collect_asset_docs(self) -> Iterator:
        while self._asset_docs:
            yield self._asset_docs.popleft()

    def snap(self) -> np.ndarray:
        """Take one frame outside a run and return it (nothing is recorded)."""
        self.trigger().wait(timeout=60)
        assert self.last_frame is not None
        return self.last_frame
