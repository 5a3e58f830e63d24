"""What an autofocus plan concludes, and the plan stubs every focus plan shares."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import bluesky.plan_stubs as bps

__all__ = [
    "FocusResult",
    "NoFocusFound",
    "NumbersReading",
    "emit_focus_result",
    "optics_metadata",
]


class NoFocusFound(RuntimeError):
    """No significant focus peak was found; the stage was returned to where it started.

    ``verdict`` holds the figures behind the refusal (a
    :class:`~autofocus_plans.peak.PeakVerdict`, or None when the search
    stopped before judging a curve) and ``result`` the run's
    :class:`FocusResult` (with ``found`` false), when there is one.
    """

    def __init__(self, message: str, *, verdict=None, result: FocusResult | None = None):
        super().__init__(message)
        self.verdict = verdict
        self.result = result


@dataclass
class FocusResult:
    """The conclusion of one autofocus run (also written as the ``focus_result`` stream).

    Positions in µm, times in seconds. ``fit_r2`` is the coefficient of
    determination of the peak fit (NaN where no fit was made). The
    ``peak_*`` figures are those of the peak-acceptance test
    (:func:`~autofocus_plans.peak.assess_peak`): the peak's height over the
    noise of the focus measure and the height needed, the noise itself, the
    peak's width in depths of field, ``peak_look`` the look at the growing
    curve that decided (the threshold rises with each). ``exposures`` counts the recorded frames
    of the search, ``exposure_checks`` the preview frames of the exposure
    check before it, ``restarts`` how often a pause made the search start
    again.
    """

    best_z: float
    method: str
    metric: str = "brenner"
    metric_value: float = math.nan
    fit_center: float = math.nan
    fit_amplitude: float = math.nan
    fit_sigma: float = math.nan
    fit_offset: float = math.nan
    fit_r2: float = math.nan
    start_z: float = math.nan
    exposures: int = 0
    elapsed_s: float = 0.0
    extensions: int = 0
    predicted_defocus: float = math.nan
    fell_back: bool = False
    found: bool = True
    peak_significance: float = math.nan
    peak_threshold: float = math.nan
    peak_noise: float = math.nan
    peak_width_dof: float = math.nan
    peak_second_ratio: float = math.nan
    peak_look: int = 0
    exposure_s: float = math.nan
    exposure_checks: int = 0
    restarts: int = 0
    run_uid: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_verdict(cls, verdict, **fields: Any) -> FocusResult:
        """The result of a search judged by ``verdict`` (a PeakVerdict): focus, fit, peak test."""
        fit = verdict.fit
        return cls(
            best_z=verdict.center if verdict.found else math.nan,
            fit_center=fit.center,
            fit_amplitude=fit.amplitude,
            fit_sigma=fit.sigma,
            fit_offset=fit.offset,
            fit_r2=fit.r2,
            found=verdict.found,
            peak_significance=verdict.significance,
            peak_threshold=verdict.threshold,
            peak_noise=verdict.noise,
            peak_width_dof=verdict.width_dof,
            peak_second_ratio=verdict.second_peak_ratio,
            peak_look=verdict.look,
            **fields,
        )

    def numeric_fields(self) -> dict[str, float | int]:
        skip = {"method", "metric", "run_uid", "extra"}
        values = {k: v for k, v in asdict(self).items() if k not in skip}
        values["fell_back"] = int(values["fell_back"])
        values["found"] = int(values["found"])
        return values


class NumbersReading:
    """A bluesky ``Readable`` of plain numbers, for the streams a plan makes itself.

    Bluesky wants the same object for every event of a stream, so make one per
    stream and run and :meth:`update` it before each read.
    """

    def __init__(
        self, name: str, values: dict[str, float | int], units: dict[str, str] | None = None
    ):
        self.name, self.parent = name, None
        self._units = units or {}
        self.update(values)

    def update(self, values: dict[str, float | int]) -> NumbersReading:
        self._values, self._time = dict(values), time.time()
        return self

    def describe(self) -> dict[str, dict]:
        return {
            key: {
                "source": f"autofocus:{key}",
                "dtype": "integer" if isinstance(value, int) else "number",
                "shape": [],
                **({"units": self._units[key]} if key in self._units else {}),
            }
            for key, value in self._values.items()
        }

    def read(self) -> dict[str, dict]:
        return {
            key: {"value": value, "timestamp": self._time} for key, value in self._values.items()
        }


_MICRONS = {"best_z", "fit_center", "fit_sigma", "start_z", "predicted_defocus"}
_UNITS = {key: "um" for key in _MICRONS} | {"elapsed_s": "s", "exposure_s": "s"}


def emit_focus_result(result: FocusResult):
    """Write ``result`` as one event in the ``focus_result`` stream of the open run."""
    yield from bps.create("focus_result")
    yield from bps.read(NumbersReading("focus_result", result.numeric_fields(), _UNITS))
    yield from bps.save()


def optics_metadata(camera, led) -> dict[str, Any]:
    """Configuration of the camera and the LED illumination, as plain values.

    Keys are ``camera_<signal>`` and ``led_<signal>`` whatever the devices are
    called, so a model trained on one set of devices can be checked against
    another (e.g. ``led_objective_na``, ``camera_pixel_size_um``).
    """
    optics: dict[str, Any] = {}
    for role, device in (("camera", camera), ("led", led)):
        for key, reading in device.read_configuration().items():
            value = reading["value"]
            signal = key.removeprefix(f"{device.name}_")
            optics[f"{role}_{signal}"] = value.tolist() if hasattr(value, "tolist") else value
    return optics
