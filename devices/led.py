"""LED-array illumination as an ophyd device.

``led.set(pattern)`` (or ``bps.mv(led, pattern)``) lights a pattern:

* a name: ``brightfield`` (every LED inside the objective NA), ``center``
  (the on-axis LED), ``off_axis`` (one LED at ``off_axis_fraction`` of the
  objective NA, azimuth 0), ``darkfield`` (a ring of LEDs just outside the
  objective NA) or ``off``;
* ``"led:IX,IY"``: one LED by index (``0,0`` is on axis);
* ``"na:NA,AZ"``: the LED nearest illumination NA ``NA`` at azimuth ``AZ`` degrees.
"""

from __future__ import annotations

import math
import re

from ophyd import Component as Cpt
from ophyd import Device, Signal
from ophyd.status import Status

from .optics import LEDArray, SourcePoint

__all__ = ["PATTERNS", "LEDIllumination", "angle_pattern", "led_index_pattern"]

PATTERNS = ("brightfield", "center", "off_axis", "darkfield", "off")
_LED_RE = re.compile(r"^led:\s*(-?\d+)\s*,\s*(-?\d+)$")
_NA_RE = re.compile(r"^na:\s*([0-9.]+)\s*,\s*(-?[0-9.]+)$")


def led_index_pattern(ix: int, iy: int) -> str:
    """Pattern string lighting the single LED ``(ix, iy)``."""
    return f"led:{int(ix)},{int(iy)}"


def angle_pattern(na: float, azimuth_deg: float = 0.0) -> str:
    """Pattern string lighting the LED nearest illumination NA ``na`` at ``azimuth_deg``."""
    return f"na:{na:.4f},{azimuth_deg:g}"


class _PatternSignal(Signal):
    """Holds the pattern string; putting a value validates it and lights the LEDs."""

    def put(self, value, **kwargs):
        self.parent._light(value)
        super().put(value, **kwargs)


class _BrightnessSignal(Signal):
    def put(self, value, **kwargs):
        if not isinstance(value, int | float) or not 0 <= value <= 1:
            raise ValueError(f"LED brightness must be a number from 0 to 1, got {value!r}.")
        super().put(float(value), **kwargs)


class LEDIllumination(Device):
    """Which LEDs of the array are lit, and how brightly (the geometry is configuration)."""

    pattern = Cpt(_PatternSignal, value="brightfield", kind="config")
    brightness = Cpt(_BrightnessSignal, value=1.0, kind="config")
    illumination_na = Cpt(Signal, value=0.0, kind="normal")
    lit_count = Cpt(Signal, value=0, kind="normal")
    pitch_mm = Cpt(Signal, value=0.0, kind="config")
    height_mm = Cpt(Signal, value=0.0, kind="config")
    array_size = Cpt(Signal, value=0, kind="config")
    led_size_mm = Cpt(Signal, value=0.0, kind="config")
    wavelength_um = Cpt(Signal, value=0.0, kind="config")
    objective_na = Cpt(Signal, value=0.0, kind="config")
    immersion_index = Cpt(Signal, value=1.0, kind="config")

    def __init__(
        self,
        array: LEDArray,
        objective_na: float,
        *,
        immersion_index: float = 1.0,
        off_axis_fraction: float = 0.75,
        darkfield_width_na: float = 0.2,
        name: str = "led",
        **kwargs,
    ) -> None:
        self.array = array
        self.off_axis_fraction = off_axis_fraction
        self.darkfield_width_na = darkfield_width_na
        self._lit: list[tuple[int, int]] = []
        super().__init__(name=name, **kwargs)
        for sig, val in (
            (self.pitch_mm, array.pitch_mm),
            (self.height_mm, array.height_mm),
            (self.array_size, array.size),
            (self.led_size_mm, array.led_size_mm),
            (self.wavelength_um, array.wavelength_um),
            (self.objective_na, objective_na),
            (self.immersion_index, immersion_index),
        ):
            sig.put(val)
        self.pattern.put("brightfield")

    # -- pattern -> lit LEDs ---------------------------------------------------
    def leds_for(self, pattern: str) -> list[tuple[int, int]]:
        """The LED indices a pattern lights; raises ValueError for an unknown pattern."""
        na_obj = self.objective_na.get()
        arr = self.array
        if not isinstance(pattern, str):
            raise ValueError(
                f"LED pattern must be a string, got {pattern!r}; use one of "
                f"{', '.join(PATTERNS)}, 'led:IX,IY' or 'na:NA,AZIMUTH'."
            )
        if pattern == "off":
            return []
        if pattern == "center":
            return [(0, 0)]
        if pattern == "brightfield":
            return [i for i in arr.indices() if arr.illumination_na(*i) < na_obj]
        if pattern == "darkfield":
            return [
                i
                for i in arr.indices()
                if na_obj < arr.illumination_na(*i) <= na_obj + self.darkfield_width_na
            ]
        if pattern == "off_axis":
            return [arr.nearest(self.off_axis_fraction * na_obj, 0.0)]
        if m := _LED_RE.match(pattern):
            ix, iy = int(m[1]), int(m[2])
            arr.position_mm(ix, iy)  # validates the index
            return [(ix, iy)]
        if m := _NA_RE.match(pattern):
            return [arr.nearest(float(m[1]), float(m[2]))]
        raise ValueError(
            f"Unknown LED pattern {pattern!r}; use one of {', '.join(PATTERNS)}, "
            "'led:IX,IY' (e.g. 'led:3,0') or 'na:NA,AZIMUTH' (e.g. 'na:0.3,0')."
        )

    def _light(self, pattern: str) -> None:
        lit = self.leds_for(pattern)
        self._lit = lit
        self.lit_count.put(len(lit))
        na = max((self.array.illumination_na(*i) for i in lit), default=0.0)
        self.illumination_na.put(na if len(lit) <= 1 else min(na, self.objective_na.get()))

    def set(self, value: str) -> Status:
        """Light ``value`` (a pattern string); the status is finished at once."""
        self.pattern.put(value)
        status = Status(obj=self)
        status.set_finished()
        return status

    @property
    def lit_leds(self) -> list[tuple[int, int]]:
        return list(self._lit)

    @property
    def off_axis_angle_deg(self) -> float:
        """Illumination angle of the single lit LED, in degrees from the axis."""
        return math.degrees(math.asin(self.illumination_na.get()))

    def source_points(self) -> list[SourcePoint]:
        return self.array.source_points(self._lit, self.brightness.get())
