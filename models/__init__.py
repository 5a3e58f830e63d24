"""Focus measures (numpy), the dual-LED defocus estimator and learned models (lazily).

``import models`` and ``import models.focus_measures`` never import torch; the
learned-model names below load their torch-backed modules on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from .focus_measures import FOCUS_MEASURES, brenner, focus_measure
from .preprocessing import Preprocessing

# name -> submodule that defines it; resolved on first attribute access (PEP 562)
_LAZY: dict[str, str] = {
    "ARCHITECTURES": "learned",
    "DefocusCNN": "learned",
    "DefocusModel": "learned",
    "FourierMLP": "learned",
    "ModelFileError": "learned",
    "load_model": "learned",
    "DEVICES": "compute",
    "resolve_device": "compute",
    "DualLEDDefocus": "dual_led",
    "ShiftEstimate": "dual_led",
    "Calibration": "uncertainty",
    "DefocusEstimate": "uncertainty",
    "Novelty": "uncertainty",
    "calibrate": "uncertainty",
    "conformal_quantile": "uncertainty",
    "DefocusExamples": "training",
    "OPTICS_KEYS": "training",
    "examples_from_runs": "training",
    "regression_metrics": "training",
    "train": "training",
    "fine_tune": "adapt",
}

__all__ = ["FOCUS_MEASURES", "Preprocessing", "brenner", "focus_measure", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
