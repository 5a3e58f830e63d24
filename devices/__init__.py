"""Ophyd devices of an LED-illuminated microscope and a physically based simulation of one.

Three roles: a camera (frames to HDF5, focus measures as readings), LED-array
illumination (named patterns) and a Z stage (µm, soft limits). Importing this
package never imports torch, bluesky plans or the catalogue.
"""

from .camera import HDF5_DATASET, SimCamera
from .fly import ZFlyer
from .fov import SimFieldOfView
from .led import PATTERNS, LEDIllumination, angle_pattern, led_index_pattern
from .microscope import SimMicroscope
from .optics import CameraSensor, LEDArray, Objective, depth_of_field_um
from .samples import SAMPLE_FAMILIES, ImageSample, ProceduralSample, Sample, ZStackSample
from .simulator import FocusState, OpticalModel
from .slide import FocalSurface, SimXYStage, SlideSample
from .stage import SimZStage, can_skip_settle
from .training_data import (
    DebrisSample,
    LayeredSample,
    RandomisedExamples,
    ScaledSample,
    exposure_for_level,
    labelled_shots,
    randomised_examples,
    snap_shot,
)

__all__ = [
    "HDF5_DATASET",
    "PATTERNS",
    "SAMPLE_FAMILIES",
    "CameraSensor",
    "DebrisSample",
    "FocalSurface",
    "FocusState",
    "ImageSample",
    "LEDArray",
    "LEDIllumination",
    "LayeredSample",
    "Objective",
    "OpticalModel",
    "ProceduralSample",
    "RandomisedExamples",
    "Sample",
    "ScaledSample",
    "SimCamera",
    "SimFieldOfView",
    "SimMicroscope",
    "SimXYStage",
    "SimZStage",
    "SlideSample",
    "ZFlyer",
    "ZStackSample",
    "angle_pattern",
    "can_skip_settle",
    "depth_of_field_um",
    "exposure_for_level",
    "labelled_shots",
    "led_index_pattern",
    "randomised_examples",
    "snap_shot",
]
