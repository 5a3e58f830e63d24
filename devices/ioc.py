"""A Channel Access IOC (caproto) that serves a :class:`~devices.SimMicroscope`.

``autofocus ioc`` runs it; every PV name starts with the prefix (``AF:`` by
default). The PVs follow the records and drivers a facility would have:

* ``{P}Z`` — a motor record (``.VAL``, ``.RBV``, ``.DMOV``, ``.MOVN``,
  ``.VELO``, ``.HLM``/``.LLM``, ``.STOP`` …). A move takes
  ``|Δz| / VELO + settle`` (times ``time_scale``); a target beyond the soft
  limits is refused (``.LVIO`` set, the motor does not move).
  ``{P}Z:SimStall`` (1 = on) makes every move stop half way with a MAJOR
  alarm on ``.RBV``, as a stalled motor does.
* ``{P}LED:Pattern`` (string: ``brightfield``, ``off_axis``, ``led:3,0`` …)
  and ``{P}LED:Brightness`` (0–1), each with ``_RBV``.
* ``{P}cam1:`` — the areaDetector driver subset plans need: ``Acquire``
  (put-completion when the frame is ready), ``AcquireTime``, ``Gain``,
  ``ImageMode``, ``NumImages``, ``ArrayCounter``, ``DetectorState_RBV``,
  ``ArraySizeX_RBV``/``ArraySizeY_RBV`` (each setting with ``_RBV``);
  ``{P}image1:`` — the NDStdArrays plugin: ``ArrayData``,
  ``ArraySize0_RBV``/``ArraySize1_RBV``, ``ArrayCounter_RBV``.
* ``{P}sim:Description`` — JSON: the camera datasheet (noise model, pixel
  size at the sample) and the LED geometry, which a real camera or LED
  controller would not serve; :func:`devices.epics.connect` reads it.
  ``{P}sim:TrueFocus_RBV`` is the hidden focal plane, for tests and
  benchmarks only (plans never read it).

Only Python (caproto) runs here; no EPICS base is needed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Sequence

import numpy as np
from caproto import AlarmSeverity, AlarmStatus, ChannelType
from caproto.server import PVGroup, pvproperty

from .ioc_args import add_ioc_arguments
from .microscope import SimMicroscope
from .optics import CameraSensor
from .simulator import CameraSettings

__all__ = ["MicroscopeIOC", "build_ioc", "main", "serve"]

_DETECTOR_STATES = ["Idle", "Acquire", "Readout", "Correct", "Saving", "Aborting", "Error"]
_IMAGE_MODES = ["Single", "Multiple", "Continuous"]
_DESCRIPTION_BYTES = 8192


def _rbv(name: str, value, **kwargs) -> pvproperty:
    return pvproperty(name=f"{name}_RBV", value=value, read_only=True, **kwargs)


class MicroscopeIOC(PVGroup):
    """The PVs of one simulated microscope (see the module docstring for the list)."""

    z = pvproperty(name="Z", value=0.0, record="motor", precision=4)
    z_stall = pvproperty(name="Z:SimStall", value=0, doc="1: every move stalls half way")

    led_pattern = pvproperty(name="LED:Pattern", value="brightfield", dtype=str)
    led_pattern_rbv = _rbv("LED:Pattern", "brightfield", dtype=str)
    led_brightness = pvproperty(name="LED:Brightness", value=1.0)
    led_brightness_rbv = _rbv("LED:Brightness", 1.0)

    acquire = pvproperty(
        name="cam1:Acquire", value="Done", enum_strings=["Done", "Acquire"], dtype=ChannelType.ENUM
    )
    acquire_rbv = _rbv(
        "cam1:Acquire", "Done", enum_strings=["Done", "Acquire"], dtype=ChannelType.ENUM
    )
    acquire_time = pvproperty(name="cam1:AcquireTime", value=0.01, precision=6)
    acquire_time_rbv = _rbv("cam1:AcquireTime", 0.01, precision=6)
    gain = pvproperty(name="cam1:Gain", value=1.0)
    gain_rbv = _rbv("cam1:Gain", 1.0)
    image_mode = pvproperty(
        name="cam1:ImageMode", value="Single", enum_strings=_IMAGE_MODES, dtype=ChannelType.ENUM
    )
    image_mode_rbv = _rbv(
        "cam1:ImageMode", "Single", enum_strings=_IMAGE_MODES, dtype=ChannelType.ENUM
    )
    num_images = pvproperty(name="cam1:NumImages", value=1)
    num_images_rbv = _rbv("cam1:NumImages", 1)
    array_counter = pvproperty(name="cam1:ArrayCounter", value=0)
    array_counter_rbv = _rbv("cam1:ArrayCounter", 0)
    detector_state = _rbv(
        "cam1:DetectorState", "Idle", enum_strings=_DETECTOR_STATES, dtype=ChannelType.ENUM
    )
    size_x = _rbv("cam1:ArraySizeX", 0)
    size_y = _rbv("cam1:ArraySizeY", 0)

    array_data = pvproperty(
        name="image1:ArrayData", value=[0], dtype=ChannelType.INT, read_only=True, max_length=1
    )
    array_size0 = _rbv("image1:ArraySize0", 0)
    array_size1 = _rbv("image1:ArraySize1", 0)
    image_counter = _rbv("image1:ArrayCounter", 0)

    description = pvproperty(
        name="sim:Description",
        value="{}",
        dtype=ChannelType.CHAR,
        max_length=_DESCRIPTION_BYTES,
        string_encoding="utf-8",
        read_only=True,
    )
    true_focus = _rbv("sim:TrueFocus", 0.0, precision=4)

    def __init__(
        self,
        microscope: SimMicroscope,
        *,
        time_scale: float = 1.0,
        readout_time_s: float = 0.005,
        settle_time_s: float = 0.02,
        **kwargs,
    ) -> None:
        height, width = microscope.model.sensor.shape
        # the waveform's length is fixed when the PV is made: size it for this sensor
        type(self).array_data.pvspec = type(self).array_data.pvspec._replace(
            max_length=height * width, value=np.zeros(height * width, dtype=np.int16)
        )
        super().__init__(**kwargs)
        self.microscope = microscope
        self.time_scale = float(time_scale)
        self.readout_time_s = readout_time_s
        self.settle_time_s = settle_time_s
        self.height, self.width = height, width
        self._position = float(microscope.z.position)
        microscope.model.stage_position = lambda: self._position
        self._move_requested: asyncio.Event | None = None
        self._target = self._position

    # -- the description a real device would not serve ------------------------------
    def describe_optics(self) -> dict:
        """Camera datasheet and LED geometry as plain values (the ``sim:Description`` PV)."""
        camera, led = self.microscope.camera, self.microscope.led
        sensor = self.microscope.model.sensor
        return {
            "camera": {
                "pixel_size_um": camera.pixel_size_um.get(),
                "bit_depth": int(camera.bit_depth.get()),
                "offset_adu": camera.offset_adu.get(),
                "read_noise_e": camera.read_noise_e.get(),
                "electrons_per_adu_at_unit_gain": sensor.full_well_e / sensor.max_adu,
                "min_exposure_s": camera.min_exposure_s.get(),
                "max_exposure_s": camera.max_exposure_s.get(),
                "sensor_shape": [self.height, self.width],
            },
            "led": {
                key: getattr(led, key).get()
                for key in (
                    "pitch_mm",
                    "height_mm",
                    "array_size",
                    "led_size_mm",
                    "wavelength_um",
                    "objective_na",
                    "immersion_index",
                )
            },
            "led_options": {
                "off_axis_fraction": led.off_axis_fraction,
                "darkfield_width_na": led.darkfield_width_na,
            },
        }

    @description.startup
    async def description(self, instance, async_lib):
        await instance.write(json.dumps(self.describe_optics()))
        for prop, value in (
            (self.size_x, self.width),
            (self.size_y, self.height),
            (self.array_size0, self.width),
            (self.array_size1, self.height),
            (self.acquire_time, self.microscope.camera.exposure_time.get()),
            (self.acquire_time_rbv, self.microscope.camera.exposure_time.get()),
        ):
            await prop.write(value)

    @true_focus.getter
    async def true_focus(self, instance):
        return self.microscope.true_focus()

    # -- Z: a motor record ----------------------------------------------------------
    @z.startup
    async def z(self, instance, async_lib):
        fields = instance.field_inst
        low, high = self.microscope.z.limits
        await fields.user_low_limit.write(low)
        await fields.user_high_limit.write(high)
        await fields.velocity.write(self.microscope.z.velocity.get())
        await fields.engineering_units.write("um")
        await instance.write_metadata(lower_ctrl_limit=low, upper_ctrl_limit=high)
        await instance.write(self._position, verify_value=False)
        await fields.user_readback_value.write(self._position)
        await fields.done_moving_to_value.write(1)
        self._move_requested = asyncio.Event()
        while True:
            await self._move_requested.wait()
            await self._move(instance)

    @z.putter
    async def z(self, instance, value):
        fields = instance.field_inst
        low, high = fields.user_low_limit.value, fields.user_high_limit.value
        if low < high and not low <= value <= high:
            # what a motor record does: flag the limit violation and stay put
            await fields.limit_violation.write(1)
            raise ValueError(f"Z target {value} outside the soft limits [{low}, {high}]")
        await fields.limit_violation.write(0)
        if low < high and (instance.lower_ctrl_limit, instance.upper_ctrl_limit) != (low, high):
            await instance.write_metadata(lower_ctrl_limit=low, upper_ctrl_limit=high)
        self._target = float(value)
        if self._move_requested is not None:
            self._move_requested.set()
        return value

    async def _move(self, instance) -> None:
        fields = instance.field_inst
        if fields.stop.value:
            # a STOP that came while idle (the RunEngine stops every motor it touched at the
            # end of a plan) is spent: only a STOP during this move ends it
            await fields.stop.write(0)
        await fields.done_moving_to_value.write(0)
        await fields.motor_is_moving.write(1)
        stalled = False
        while self._move_requested.is_set():  # a new target during a move re-aims it
            self._move_requested.clear()
            start, target = self._position, self._target
            await fields.direction_of_travel.write(1 if target >= start else 0)
            velocity = max(float(fields.velocity.value), 1e-9)
            duration = abs(target - start) / velocity * self.time_scale
            stall = bool(self.z_stall.value)
            t0 = time.monotonic()
            while True:
                fraction = 1.0 if duration <= 0 else min(1.0, (time.monotonic() - t0) / duration)
                if stall and fraction >= 0.5:
                    fraction, stalled = 0.5, True
                self._position = start + fraction * (target - start)
                await fields.user_readback_value.write(self._position)
                if fraction >= 1.0 or stalled or fields.stop.value:
                    break
                if self._move_requested.is_set():
                    break
                await asyncio.sleep(min(0.02, duration * (1 - fraction)))
            if stalled or fields.stop.value:
                await fields.stop.write(0)
                self._move_requested.clear()
                await instance.write(self._position, verify_value=False)
                break
        if self.settle_time_s * self.time_scale:
            await asyncio.sleep(self.settle_time_s * self.time_scale)
        if stalled:
            await fields.user_readback_value.write(
                self._position, status=AlarmStatus.STATE, severity=AlarmSeverity.MAJOR_ALARM
            )
        else:
            await fields.user_readback_value.write(
                self._position, status=AlarmStatus.NO_ALARM, severity=AlarmSeverity.NO_ALARM
            )
        await fields.motor_is_moving.write(0)
        await fields.done_moving_to_value.write(1)

    # -- LED ------------------------------------------------------------------------
    @led_pattern.putter
    async def led_pattern(self, instance, value):
        self.microscope.led.set(value)  # ValueError for an unknown pattern: the put fails
        await self.led_pattern_rbv.write(value)
        return value

    @led_brightness.putter
    async def led_brightness(self, instance, value):
        self.microscope.led.brightness.put(float(value))
        await self.led_brightness_rbv.write(value)
        return value

    # -- camera ---------------------------------------------------------------------
    @acquire_time.putter
    async def acquire_time(self, instance, value):
        self.microscope.camera.exposure_time.put(float(value))  # refuses out-of-range values
        await self.acquire_time_rbv.write(value)
        return value

    @gain.putter
    async def gain(self, instance, value):
        self.microscope.camera.gain.put(float(value))
        await self.gain_rbv.write(value)
        return value

    @image_mode.putter
    async def image_mode(self, instance, value):
        await self.image_mode_rbv.write(value)
        return value

    @num_images.putter
    async def num_images(self, instance, value):
        if value < 1:
            raise ValueError("NumImages must be at least 1")
        await self.num_images_rbv.write(value)
        return value

    @array_counter.putter
    async def array_counter(self, instance, value):
        await self.array_counter_rbv.write(value)
        return value

    def _expose(self) -> np.ndarray:
        camera = self.microscope.camera
        settings = CameraSettings(
            camera.exposure_time.get(), camera.gain.get(), 1, (0, 0, self.width, self.height)
        )
        return self.microscope.model.expose(settings)

    @acquire.putter
    async def acquire(self, instance, value):
        if value in ("Done", 0):
            return "Done"
        await self.acquire_rbv.write("Acquire")
        frames = 1 if self.image_mode.value == "Single" else int(self.num_images.value)
        loop = asyncio.get_running_loop()
        try:
            for _ in range(frames):
                await self.detector_state.write("Acquire")
                delay = self.acquire_time.value * self.time_scale
                if delay:
                    await asyncio.sleep(delay)
                await self.detector_state.write("Readout")
                # the optics take tens of ms: keep the IOC answering meanwhile
                frame = await loop.run_in_executor(None, self._expose)
                if self.readout_time_s * self.time_scale:
                    await asyncio.sleep(self.readout_time_s * self.time_scale)
                # CA has no unsigned 16-bit type: the bits travel as int16 (areaDetector's UInt16)
                await self.array_data.write(frame.astype(np.uint16).ravel().view(np.int16))
                count = self.array_counter.value + 1
                for prop in (self.array_counter, self.array_counter_rbv, self.image_counter):
                    await prop.write(count)
        finally:
            await self.detector_state.write("Idle")
            await self.acquire_rbv.write("Done")
        return "Done"


def build_ioc(
    prefix: str = "AF:",
    *,
    sample: str = "tissue",
    seed: int = 0,
    focus_um: float = 12.3,
    z_start_um: float = 0.0,
    size: int = 256,
    time_scale: float = 1.0,
    velocity_um_per_s: float = 500.0,
    z_limits_um: tuple[float, float] = (-1000.0, 1000.0),
) -> MicroscopeIOC:
    """The IOC's PV group around a new simulated microscope (not yet serving)."""
    microscope = SimMicroscope(
        sample,
        seed=seed,
        focus_um=focus_um,
        z_start_um=z_start_um,
        sensor=CameraSensor(shape=(size, size)),
        time_scale=0,  # the IOC does the waiting itself, on its event loop
        velocity_um_per_s=velocity_um_per_s,
        z_limits_um=z_limits_um,
    )
    return MicroscopeIOC(microscope, time_scale=time_scale, prefix=prefix)


def _loopback_environment(port: int, repeater_port: int, host: str) -> None:
    """Serve on ``host`` and ``port`` only; caproto reads these when the server starts."""
    os.environ["EPICS_CAS_SERVER_PORT"] = str(port)
    os.environ["EPICS_CA_SERVER_PORT"] = str(port)
    os.environ["EPICS_CA_REPEATER_PORT"] = str(repeater_port)
    os.environ["EPICS_CAS_BEACON_PORT"] = str(repeater_port)
    os.environ["EPICS_CAS_INTF_ADDR_LIST"] = host
    os.environ["EPICS_CAS_BEACON_ADDR_LIST"] = host
    os.environ["EPICS_CAS_AUTO_BEACON_ADDR_LIST"] = "NO"


def serve(args: argparse.Namespace) -> int:
    """Serve the IOC described by parsed ``args`` until the process is stopped."""
    _loopback_environment(args.port, args.repeater_port, args.host)
    from caproto.asyncio.server import run

    ioc = build_ioc(
        args.prefix,
        sample=args.sample,
        seed=args.seed,
        focus_um=args.focus_um,
        z_start_um=args.z_start_um,
        size=args.size,
        time_scale=args.time_scale,
        velocity_um_per_s=args.velocity,
        z_limits_um=tuple(args.z_limits),
    )
    print(
        f"autofocus ioc: serving prefix {args.prefix!r} on {args.host}:{args.port} "
        f"({args.size}x{args.size} camera, time scale {args.time_scale:g})",
        flush=True,
    )
    run(ioc.pvdb, interfaces=[args.host], log_pv_names=False)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Serve a simulated microscope over Channel Access until stopped."""
    parser = argparse.ArgumentParser(
        prog="python -m devices.ioc", description="Serve a simulated microscope over CA."
    )
    add_ioc_arguments(parser)
    return serve(parser.parse_args(argv))


if __name__ == "__main__":
    main()
