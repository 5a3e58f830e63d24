"""Bluesky plans for microscope autofocus, the run catalogue, replay and the CLI.

Plans take devices as arguments (camera, Z stage, LED illumination) and know
nothing of how they are built; ``devices.SimMicroscope`` builds simulated ones.

The public names below are imported on first use (PEP 562), so that
``import autofocus_plans`` (and every ``autofocus`` command, ``--help``
included) does not pay for bluesky, ophyd, scipy and Tiled until it needs them.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

# public name -> submodule that defines it
_EXPORTS = {
    "FOCUS_METHODS": "brenner",
    "brenner_sweep": "brenner",
    "calibrate_model": "calibration",
    "fast_focus": "brenner",
    "fly_sweep": "fly",
    "fly_exposure": "fly",
    "fly_speed": "fly",
    "FocusMap": "mapping",
    "TileScan": "mapping",
    "focus_map": "mapping",
    "grid_points": "mapping",
    "tile_scan": "mapping",
    "CatalogError": "catalog",
    "BadExposure": "exposure",
    "ExposureCheck": "exposure",
    "auto_exposure": "exposure",
    "judge_exposure": "exposure",
    "frames_dir_for": "catalog",
    "open_catalog": "catalog",
    "subscribe_catalog": "catalog",
    "recover_runs": "durable",
    "dual_led_focus": "dual_led",
    "dual_led_model": "dual_led",
    "mirrored_patterns": "dual_led",
    "check_model_optics": "learned",
    "cnn_focus": "learned",
    "collect_training_set": "learned",
    "depth_of_field_from_devices": "stubs",
    "track_focus": "learned",
    "build_shipped_models": "shipped",
    "shipped_model_for": "shipped",
    "PeakFit": "peak",
    "PeakVerdict": "peak",
    "assess_peak": "peak",
    "fit_peak": "peak",
    "look_false_alarm": "peak",
    "find_runs": "replay",
    "focus_curve": "replay",
    "load_frames": "replay",
    "load_table": "replay",
    "lookup_run": "replay",
    "reanalyze": "replay",
    "replay": "replay",
    "run_stop": "replay",
    "FocusResult": "results",
    "NoFocusFound": "results",
}

__all__ = [
    "FOCUS_METHODS",
    "BadExposure",
    "CatalogError",
    "ExposureCheck",
    "FocusMap",
    "FocusResult",
    "NoFocusFound",
    "PeakFit",
    "PeakVerdict",
    "TileScan",
    "assess_peak",
    "auto_exposure",
    "brenner_sweep",
    "build_shipped_models",
    "calibrate_model",
    "check_model_optics",
    "cnn_focus",
    "collect_training_set",
    "depth_of_field_from_devices",
    "dual_led_focus",
    "dual_led_model",
    "fast_focus",
    "find_runs",
    "fit_peak",
    "fly_exposure",
    "fly_speed",
    "fly_sweep",
    "focus_curve",
    "focus_map",
    "frames_dir_for",
    "grid_points",
    "judge_exposure",
    "load_frames",
    "load_table",
    "look_false_alarm",
    "lookup_run",
    "mirrored_patterns",
    "open_catalog",
    "reanalyze",
    "recover_runs",
    "replay",
    "run_stop",
    "shipped_model_for",
    "subscribe_catalog",
    "tile_scan",
    "track_focus",
]

if TYPE_CHECKING:  # static analysers and IDEs see the real names
    from .brenner import FOCUS_METHODS, brenner_sweep, fast_focus
    from .calibration import calibrate_model
    from .catalog import CatalogError, frames_dir_for, open_catalog, subscribe_catalog
    from .dual_led import dual_led_focus, dual_led_model, mirrored_patterns
    from .durable import recover_runs
    from .exposure import BadExposure, ExposureCheck, auto_exposure, judge_exposure
    from .fly import fly_exposure, fly_speed, fly_sweep
    from .learned import (
        check_model_optics,
        cnn_focus,
        collect_training_set,
        track_focus,
    )
    from .mapping import FocusMap, TileScan, focus_map, grid_points, tile_scan
    from .peak import PeakFit, PeakVerdict, assess_peak, fit_peak, look_false_alarm
    from .replay import (
        find_runs,
        focus_curve,
        load_frames,
        load_table,
        lookup_run,
        reanalyze,
        replay,
        run_stop,
    )
    from .results import FocusResult, NoFocusFound
    from .shipped import build_shipped_models, shipped_model_for
    from .stubs import depth_of_field_from_devices


# The function ``replay`` shares its name with the submodule ``replay``: importing the
# submodule (as the CLI and the catalogue code do) would bind the package attribute to
# the module, hiding the function from ``from autofocus_plans import replay``. Binding
# the function here, after that first import, keeps the name what it always was; the
# submodule only costs numpy.
from . import replay as _replay_module  # noqa: E402

replay = _replay_module.replay


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
