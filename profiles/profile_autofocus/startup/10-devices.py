# The microscope: simulated unless AUTOFOCUS_HARDWARE names a factory "module:function"
# that returns an object with .camera, .led and .z (see README, "Plugging in hardware").
import importlib
import os

from devices import SimMicroscope

_hardware = os.environ.get("AUTOFOCUS_HARDWARE")
if _hardware:
    _module, _, _factory = _hardware.partition(":")
    microscope = getattr(importlib.import_module(_module), _factory)()
else:
    # the stage starts 12.3 µm below the focal plane: the first sweep has focus to find
    microscope = SimMicroscope(
        os.environ.get("AUTOFOCUS_SAMPLE", "tissue"),
        seed=int(os.environ.get("AUTOFOCUS_SEED", "0")),
        focus_um=12.3,
        z_start_um=0.0,
        time_scale=float(os.environ.get("AUTOFOCUS_TIME_SCALE", "1")),
    )
camera, led, z = microscope.camera, microscope.led, microscope.z
fov = getattr(microscope, "fov", None)
xy = getattr(microscope, "xy", None)
