"""The three device roles over EPICS Channel Access: Z motor record, areaDetector camera, LED.

* :class:`EpicsZStage` — ophyd's ``EpicsMotor`` with the project's errors:
  a target outside the soft limits, a move that stalls or never completes,
  and a PV that stops answering each give one sentence naming the PV.
* :class:`EpicsCamera` — triggers ``cam1:Acquire`` (put-completion when the
  frame is ready, as areaDetector does), reads ``image1:ArrayData`` and hands
  the frame to the same :class:`~devices.frames.FrameRecorder` as the
  simulated camera: HDF5 file, StreamResource/StreamDatum, focus measures
  per frame (a client-side Stats plugin). ``cam1:`` is ophyd's own
  ``CamBase``, so the class drives an ADSimDetector, ADAravis or
  ADSpinnaker IOC with the same PV names.
* :class:`EpicsLED` — ``LED:Pattern`` and ``LED:Brightness`` (with ``_RBV``).

The camera's noise model and the LED geometry are configuration a real
camera or LED controller does not serve: pass them in (datasheet values), or
let :func:`connect` read them from the simulated microscope's IOC.

``AUTOFOCUS_HARDWARE=devices.epics:connect`` makes the IPython profile and
the queueserver use these devices; the prefix comes from
``AUTOFOCUS_EPICS_PREFIX`` (default ``AF:``) and the Channel Access ports
from the usual ``EPICS_CA_*`` variables.
"""

from __future__ import annotations

import json
import math
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, EpicsMotor, EpicsSignalRO, EpicsSignalWithRBV, Signal
from ophyd.areadetector.base import ADComponent as ADCpt
from ophyd.areadetector.cam import CamBase
from ophyd.status import DeviceStatus, MoveStatus, Status
from ophyd.utils import LimitError

from .frames import FrameRecorder
from .led import LEDIllumination
from .optics import LEDArray

__all__ = [
    "EpicsCamera",
    "EpicsLED",
    "EpicsMicroscope",
    "EpicsZStage",
    "TransportError",
    "connect",
    "use_caproto",
]

_ANSWER_TIMEOUT_S = 5.0  # how long a PV may stay silent before the device gives up on it


class TransportError(ConnectionError):
    """A PV stopped answering (IOC down or unreachable); the message names the PV."""


def use_caproto() -> None:
    """Select ophyd's pure-Python Channel Access layer (no libca needed); idempotent."""
    import ophyd

    if ophyd.get_cl().name != "caproto":
        ophyd.set_cl("caproto")


def _lost(signal, what: str, err: BaseException) -> TransportError:
    pvname = getattr(signal, "pvname", None) or getattr(signal, "setpoint_pvname", "?")
    return TransportError(
        f"PV {pvname} did not answer while {what} ({type(err).__name__}); "
        "check that the IOC is running and reachable (EPICS_CA_ADDR_LIST, ports)."
    )


def _is_transport_error(err: BaseException) -> bool:
    from ophyd.utils.errors import DisconnectedError

    return isinstance(err, TimeoutError | DisconnectedError | ConnectionError)


# -- Z ----------------------------------------------------------------------------------
class EpicsZStage(EpicsMotor):
    """A Z stage driven through a motor record (µm); refuses, stalls and losses are clear errors.

    A move counts as done when the record says so (DMOV) without an alarm
    and the readback is within ``position_tolerance_um`` of the target.
    """

    position_tolerance_um = 0.01

    @property
    def limits(self) -> tuple[float, float]:
        return (self.low_limit_travel.get(), self.high_limit_travel.get())

    def read(self):
        try:
            return super().read()
        except Exception as err:
            if _is_transport_error(err):
                raise _lost(self.user_readback, f"reading {self.name}", err) from err
            raise

    @property
    def position(self):
        try:
            return super().position
        except Exception as err:
            if _is_transport_error(err):
                raise _lost(self.user_readback, f"reading {self.name}", err) from err
            raise

    def set(self, value, **kwargs) -> MoveStatus:
        try:
            target = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"Stage {self.name} needs a number of µm, got {value!r}.") from None
        try:
            low, high = self.limits
            velocity = float(self.velocity.get())
            start = float(self.user_readback.get())
        except Exception as err:
            if _is_transport_error(err):
                raise _lost(self.user_setpoint, f"moving {self.name}", err) from err
            raise
        if not math.isfinite(target) or (low < high and not low <= target <= high):
            raise LimitError(
                f"Move of {self.name} to {target} µm refused: outside the soft limits "
                f"[{low}, {high}] µm of {self.prefix}; choose a target inside them or widen "
                "the limits (HLM/LLM)."
            )
        # a move that has not finished in twice its expected time (plus slack) has stalled
        timeout = 2 * abs(target - start) / max(velocity, 1e-9) + 10.0
        try:
            inner = super().set(target, timeout=timeout, **kwargs)
        except Exception as err:
            if _is_transport_error(err):
                raise _lost(self.user_setpoint, f"moving {self.name}", err) from err
            raise
        return self._explained(inner, target)

    def _explained(self, inner: MoveStatus, target: float) -> Status:
        """A status that fails with one sentence saying why the move did not complete."""
        status = Status(obj=self)

        def finished(done):
            # off the callback thread: it asks the IOC (the monitored readback may lag DMOV)
            threading.Thread(target=judge, args=(done,), daemon=True).start()

        def judge(done):
            err = done.exception()
            try:
                reached = float(self.user_readback.get(use_monitor=False))
                where = f"stopped at {reached:.3f} µm"
            except Exception:
                reached, where = math.nan, "position unknown"
            # DMOV=1 short of the target (a stall the record did not flag) is a failure too
            if err is None and abs(reached - target) <= self.position_tolerance_um:
                status.set_finished()
                return
            why = type(err).__name__ if err is not None else "short of the target"
            status.set_exception(
                RuntimeError(
                    f"Move of {self.name} ({self.prefix}) to {target} µm did not complete "
                    f"({where}; {why}): the motor stalled, hit a limit or stopped "
                    "answering; no focus is claimed from this move."
                )
            )

        inner.add_callback(finished)
        return status


# -- LED --------------------------------------------------------------------------------
class EpicsLED(Device):
    """LED-array illumination over CA: pattern and brightness PVs; the geometry is configuration.

    ``set(pattern)`` checks the pattern against the geometry (the same rules
    as the simulated LED array), writes ``LED:Pattern`` and finishes when the
    controller has lit it (put-completion).
    """

    pattern = Cpt(EpicsSignalWithRBV, "LED:Pattern", string=True, kind="config")
    brightness = Cpt(EpicsSignalWithRBV, "LED:Brightness", kind="config")
    pitch_mm = Cpt(Signal, value=0.0, kind="config")
    height_mm = Cpt(Signal, value=0.0, kind="config")
    array_size = Cpt(Signal, value=0, kind="config")
    led_size_mm = Cpt(Signal, value=0.0, kind="config")
    wavelength_um = Cpt(Signal, value=0.0, kind="config")
    objective_na = Cpt(Signal, value=0.0, kind="config")
    immersion_index = Cpt(Signal, value=1.0, kind="config")

    def __init__(
        self,
        prefix: str,
        *,
        geometry: dict[str, Any],
        options: dict[str, Any] | None = None,
        name: str = "led",
        **kwargs,
    ) -> None:
        super().__init__(prefix, name=name, **kwargs)
        for key, value in geometry.items():
            getattr(self, key).put(value)
        array = LEDArray(
            pitch_mm=geometry["pitch_mm"],
            height_mm=geometry["height_mm"],
            size=int(geometry["array_size"]),
            led_size_mm=geometry["led_size_mm"],
            wavelength_um=geometry["wavelength_um"],
        )
        # the pattern rules, evaluated here so a bad pattern is refused with a sentence
        self._rules = LEDIllumination(
            array,
            geometry["objective_na"],
            immersion_index=geometry.get("immersion_index", 1.0),
            name=f"{name}_rules",
            **(options or {}),
        )

    @property
    def array(self) -> LEDArray:
        """The array's geometry (for the LED angles a pattern lights)."""
        return self._rules.array

    def leds_for(self, pattern: str) -> list[tuple[int, int]]:
        """The LEDs ``pattern`` lights, by the simulated array's rules."""
        return self._rules.leds_for(pattern)

    def set(self, value: str) -> Status:
        self.leds_for(value)  # ValueError naming the accepted patterns
        status = Status(obj=self)

        def lit(*args, **kwargs):
            status.set_finished()

        try:
            self.pattern.put(value, use_complete=True, callback=lit)
        except Exception as err:
            if _is_transport_error(err):
                raise _lost(self.pattern, f"lighting pattern {value!r}", err) from err
            raise
        return status


# -- camera -----------------------------------------------------------------------------
class _ExposureSignal(EpicsSignalWithRBV):
    """``cam1:AcquireTime``, checked against the camera's exposure range before it is sent."""

    def check_value(self, value, **kwargs):
        camera = self.parent
        if not isinstance(value, int | float) or not np.isfinite(value) or value <= 0:
            raise ValueError(
                f"Camera exposure time must be a positive number of seconds, got {value!r}; "
                "use e.g. 0.01 for 10 ms."
            )
        low, high = camera.min_exposure_s.get(), camera.max_exposure_s.get()
        if not low <= value <= high:
            raise ValueError(
                f"Camera exposure time {value:g} s is outside the camera's range "
                f"[{low:g}, {high:g}] s; choose an exposure inside it."
            )
        super().check_value(value, **kwargs)


class AutofocusCam(CamBase):
    """``cam1:``, ophyd's areaDetector driver base; only the PVs plans need are ever connected."""

    def validate_asyn_ports(self) -> None:
        """Nothing to check: frames are read from ``image1:``, no plugin chain is configured."""


class StdArrays(Device):
    """``image1:``, the NDStdArrays plugin's array and its size (the PVs of ophyd's ImagePlugin)."""

    array_data = ADCpt(EpicsSignalRO, "ArrayData")
    width = ADCpt(EpicsSignalRO, "ArraySize0_RBV")
    height = ADCpt(EpicsSignalRO, "ArraySize1_RBV")
    array_counter = ADCpt(EpicsSignalRO, "ArrayCounter_RBV")


class EpicsCamera(FrameRecorder):
    """An areaDetector camera over CA whose frames are recorded like the simulated camera's.

    Configuration mirrors :class:`~devices.camera.SimCamera` (exposure_time,
    gain, binning, ROI, pixel size, bit depth, noise model), so a model
    trained on the simulator is checked against the same fields.
    """

    cam = Cpt(AutofocusCam, "cam1:", kind="omitted")
    image1 = Cpt(StdArrays, "image1:", kind="omitted")

    min_exposure_s = Cpt(Signal, value=1e-5, kind="config")
    max_exposure_s = Cpt(Signal, value=10.0, kind="config")
    # the driver's AcquireTime under the name every plan uses
    exposure_time = Cpt(_ExposureSignal, "cam1:AcquireTime", kind="config")
    gain = Cpt(Signal, value=1.0, kind="config")
    binning = Cpt(Signal, value=1, kind="config")
    roi_x = Cpt(Signal, value=0, kind="config")
    roi_y = Cpt(Signal, value=0, kind="config")
    roi_width = Cpt(Signal, value=0, kind="config")
    roi_height = Cpt(Signal, value=0, kind="config")
    pixel_size_um = Cpt(Signal, value=0.0, kind="config")
    bit_depth = Cpt(Signal, value=12, kind="config")
    offset_adu = Cpt(Signal, value=0.0, kind="config")
    read_noise_e = Cpt(Signal, value=0.0, kind="config")
    electrons_per_adu = Cpt(Signal, value=1.0, kind="config")

    def __init__(
        self,
        prefix: str,
        *,
        datasheet: dict[str, Any],
        write_dir: str | Path,
        measures=("brenner",),
        name: str = "camera",
        **kwargs,
    ) -> None:
        super().__init__(prefix, name=name, **kwargs)
        self._init_frames(write_dir, measures)
        height, width = datasheet["sensor_shape"]
        self.roi_width.put(int(width))
        self.roi_height.put(int(height))
        for key in ("pixel_size_um", "bit_depth", "offset_adu", "read_noise_e"):
            getattr(self, key).put(datasheet[key])
        self.min_exposure_s.put(datasheet.get("min_exposure_s", 1e-5))
        self.max_exposure_s.put(datasheet.get("max_exposure_s", 10.0))
        self.electrons_per_adu.put(datasheet["electrons_per_adu_at_unit_gain"])
        self.cam.stage_sigs.update({"image_mode": "Single", "num_images": 1})

    def _image_source(self) -> str:
        return f"ca://{self.image1.array_data.pvname}"

    def frame_shape(self) -> tuple[int, int]:
        return (int(self.roi_height.get()), int(self.roi_width.get()))

    def trigger(self) -> DeviceStatus:
        status = DeviceStatus(self)
        timeout = float(self.exposure_time.get()) + _ANSWER_TIMEOUT_S

        def acquire() -> None:
            try:
                self._store(self._acquire_frame(timeout))
            except Exception as exc:
                status.set_exception(exc)
            else:
                status.set_finished()

        threading.Thread(target=acquire, name=f"{self.name}-acquire", daemon=True).start()
        return status

    def _acquire_frame(self, timeout: float) -> np.ndarray:
        done = threading.Event()
        acquire = self.cam.acquire
        try:
            acquire.put(1, use_complete=True, callback=lambda *a, **k: done.set())
        except Exception as err:
            raise _lost(acquire, "starting an exposure", err) from err
        if not done.wait(timeout):
            raise TransportError(
                f"PV {acquire.setpoint_pvname} did not report the exposure done within "
                f"{timeout:.1f} s; check that the camera IOC is running and acquiring."
            )
        try:
            height, width = int(self.image1.height.get()), int(self.image1.width.get())
            data = self.image1.array_data.get(timeout=_ANSWER_TIMEOUT_S)
        except Exception as err:
            raise _lost(self.image1.array_data, "reading the frame", err) from err
        # CA carries areaDetector's UInt16 as int16: reinterpret the bits in native order
        pixels = np.asarray(data).astype(np.int16, copy=False)[: height * width]
        return pixels.view(np.uint16).reshape(height, width)


# -- the microscope ---------------------------------------------------------------------
class EpicsMicroscope:
    """Camera, LED and Z of a microscope behind one PV prefix (``.camera``, ``.led``, ``.z``)."""

    def __init__(
        self,
        prefix: str,
        *,
        datasheet: dict[str, Any],
        geometry: dict[str, Any],
        led_options: dict[str, Any] | None = None,
        frames_dir: str | Path | None = None,
        measures=("brenner",),
        timeout_s: float = 10.0,
    ) -> None:
        use_caproto()
        if frames_dir is None:
            import tempfile

            self._tmp = tempfile.TemporaryDirectory(prefix="autofocus-frames-")
            frames_dir = self._tmp.name
        self.prefix = prefix
        self.z = EpicsZStage(f"{prefix}Z", name="z")
        self.led = EpicsLED(prefix, geometry=geometry, options=led_options, name="led")
        self.camera = EpicsCamera(
            prefix, datasheet=datasheet, write_dir=frames_dir, measures=measures, name="camera"
        )
        self.fov = None
        for device in (self.z, self.led):
            device.wait_for_connection(timeout=timeout_s)
        for signal in (
            self.camera.cam.acquire,
            self.camera.exposure_time,
            self.camera.image1.array_data,
        ):
            signal.wait_for_connection(timeout=timeout_s)

    @property
    def devices(self) -> tuple:
        return (self.camera, self.led, self.z)

    def __repr__(self) -> str:
        return f"EpicsMicroscope({self.prefix!r})"


def read_description(prefix: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """The simulated microscope's datasheet and LED geometry, from ``{prefix}sim:Description``."""
    use_caproto()
    signal = EpicsSignalRO(f"{prefix}sim:Description", string=True, name="description")
    try:
        signal.wait_for_connection(timeout=timeout_s)
        return json.loads(signal.get())
    except Exception as err:
        if _is_transport_error(err):
            raise TransportError(
                f"PV {prefix}sim:Description did not answer within {timeout_s:g} s; start the "
                f"IOC (`autofocus ioc --prefix {prefix}`) or set EPICS_CA_ADDR_LIST and "
                "EPICS_CA_SERVER_PORT to reach it."
            ) from err
        raise
    finally:
        signal.destroy()


def connect(prefix: str | None = None, **kwargs) -> EpicsMicroscope:
    """The EPICS microscope served by ``autofocus ioc`` (prefix from ``AUTOFOCUS_EPICS_PREFIX``).

    Use as ``AUTOFOCUS_HARDWARE=devices.epics:connect``.
    """
    prefix = prefix or os.environ.get("AUTOFOCUS_EPICS_PREFIX", "AF:")
    description = read_description(prefix)
    return EpicsMicroscope(
        prefix,
        datasheet=description["camera"],
        geometry=description["led"],
        led_options=description.get("led_options"),
        **kwargs,
    )


def true_focus(prefix: str) -> float:
    """The simulated microscope's hidden focal plane (µm): for tests and benchmarks only."""
    signal = EpicsSignalRO(f"{prefix}sim:TrueFocus_RBV", name="true_focus")
    try:
        signal.wait_for_connection(timeout=_ANSWER_TIMEOUT_S)
        return float(signal.get())
    finally:
        signal.destroy()
