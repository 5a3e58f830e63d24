"""Bluesky plans for microscope autofocus, the run catalogue, replay and the CLI.

Plans take devices as arguments (camera, Z stage, LED illumination) and know
nothing of how they are built; ``devices.SimMicroscope`` builds simulated ones.
"""

from .brenner import FOCUS_METHODS, brenner_sweep, fast_focus
from .catalog import CatalogError, frames_dir_for, open_catalog, subscribe_catalog
from .exposure import BadExposure, ExposureCheck, auto_exposure, judge_exposure
from .learned import (
    check_model_optics,
    cnn_focus,
    collect_training_set,
    depth_of_field_from_devices,
    track_focus,
)
from .peak import PeakFit, PeakVerdict, assess_peak, fit_peak
from .replay import (
    find_runs,
    focus_curve,
    load_frames,
    load_table,
    lookup_run,
    reanalyze,
    replay,
)
from .results import FocusResult, NoFocusFound

__all__ = [
    "FOCUS_METHODS",
    "BadExposure",
    "CatalogError",
    "ExposureCheck",
    "FocusResult",
    "NoFocusFound",
    "PeakFit",
    "PeakVerdict",
    "assess_peak",
    "auto_exposure",
    "brenner_sweep",
    "check_model_optics",
    "cnn_focus",
    "collect_training_set",
    "depth_of_field_from_devices",
    "fast_focus",
    "find_runs",
    "fit_peak",
    "focus_curve",
    "frames_dir_for",
    "judge_exposure",
    "load_frames",
    "load_table",
    "lookup_run",
    "open_catalog",
    "reanalyze",
    "replay",
    "subscribe_catalog",
    "track_focus",
]
