"""Exposure sanity before a focus search: no saturated frames, no dark ones.

:func:`judge_exposure` looks at one frame's statistics (mean, brightest
pixel, saturated fraction) and says which exposure to try next: shorter while
too many pixels are saturated, longer while the frames use little of the
camera's range, or a refusal with the cause and the fix when the camera's
limits allow no usable frame. The focus searches apply it to their own first
exposures; :func:`auto_exposure` is the plan stub any other plan can call
before it stages the camera (preview frames whose statistics go into an
``exposure_check`` stream). What it changed is undone by
``yield from check.restore(camera)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import bluesky.plan_stubs as bps

from .results import NoFocusFound, NumbersReading

__all__ = ["BadExposure", "ExposureCheck", "ExposureLimits", "auto_exposure", "judge_exposure"]


class BadExposure(NoFocusFound):
    """No exposure within the camera's limits gives a usable frame; the message says why."""


@dataclass
class ExposureCheck:
    """What :func:`auto_exposure` saw and did (exposures in seconds)."""

    initial_exposure_s: float
    exposure_s: float
    frames: int = 0
    saturated_fraction: float = math.nan
    peak_level: float = math.nan  # brightest pixel above black, as a fraction of the range
    signal_e: float = math.nan  # mean signal per pixel in electrons (NaN if unknown)
    history: list[dict] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.exposure_s != self.initial_exposure_s

    def metadata(self) -> dict:
        """Plain values for a start document."""
        return {
            "initial_exposure_s": self.initial_exposure_s,
            "exposure_s": self.exposure_s,
            "frames": self.frames,
            "saturated_fraction": self.saturated_fraction,
            "peak_level": self.peak_level,
        }

    def restore(self, camera):
        """Plan stub: put the camera's exposure back to what it was before the check."""
        if self.changed:
            yield from bps.mv(camera.exposure_time, self.initial_exposure_s)


def _config(camera, name: str, default: float) -> float:
    signal = getattr(camera, name, None)
    return float(signal.get()) if signal is not None else default


@dataclass(frozen=True)
class ExposureLimits:
    """What judging a frame's exposure needs to know about the camera (from its configuration)."""

    offset_adu: float
    full_range_adu: float
    electrons_per_adu: float
    read_noise_e: float
    shortest_s: float
    longest_s: float

    @classmethod
    def of(cls, camera, max_exposure_s: float = math.inf) -> ExposureLimits:
        offset = _config(camera, "offset_adu", 0.0)
        return cls(
            offset_adu=offset,
            full_range_adu=2 ** int(_config(camera, "bit_depth", 16)) - 1 - offset,
            electrons_per_adu=_config(camera, "electrons_per_adu", math.nan),
            read_noise_e=_config(camera, "read_noise_e", math.nan),
            shortest_s=_config(camera, "min_exposure_s", 0.0),
            longest_s=min(_config(camera, "max_exposure_s", math.inf), max_exposure_s),
        )


def judge_exposure(
    limits: ExposureLimits,
    exposure_s: float,
    mean_adu: float,
    max_adu: float,
    saturated_fraction: float,
    *,
    target_level: float = 0.5,
    max_saturated_fraction: float = 1e-3,
) -> float | None:
    """The exposure to try next after a frame with these statistics; None when it is fine.

    Too many saturated pixels: shorter. The brightest pixel below a quarter
    of ``target_level`` (of the range above black): longer, towards the
    target. Raises :class:`BadExposure` when the camera's limits allow no
    better: saturated at the shortest exposure, or dark (less signal per
    pixel than the read noise) at the longest.
    """
    level = (max_adu - limits.offset_adu) / limits.full_range_adu
    signal_e = (mean_adu - limits.offset_adu) * limits.electrons_per_adu
    if saturated_fraction > max_saturated_fraction:
        if exposure_s <= limits.shortest_s * (1 + 1e-9):
            raise BadExposure(
                f"{saturated_fraction:.0%} of the pixels are saturated even at the camera's "
                f"shortest exposure ({exposure_s:g} s): lower the LED brightness."
            )
        # a clipped frame hides how bright it really is: step down hard
        return max(exposure_s * (0.1 if saturated_fraction > 0.1 else 0.5), limits.shortest_s)
    if level < target_level / 4:
        if exposure_s >= limits.longest_s * (1 - 1e-9):
            dark = math.isfinite(signal_e) and signal_e < limits.read_noise_e
            if dark or level <= 0:
                raise BadExposure(
                    f"The frames are dark ({max(signal_e, 0):.1f} e- of signal per pixel at the "
                    f"longest allowed exposure, {exposure_s:g} s, below the camera's read noise "
                    f"of {limits.read_noise_e:g} e-): check that the LED is on and the light "
                    "path is open."
                )
            return None  # dim but measurable: the peak test judges the rest from its noise
        return min(exposure_s * min(target_level / max(level, 1e-6), 100.0), limits.longest_s)
    return None


#: the camera reading's frame statistics that judge_exposure needs, by suffix
FRAME_STATISTICS = ("mean", "max", "saturated_fraction")


def judge_reading(
    limits: ExposureLimits, exposure_s: float, reading: dict, camera_name: str
) -> float | None:
    """:func:`judge_exposure` on a frame's ``trigger_and_read`` reading from ``camera_name``."""
    mean, peak, saturated = (
        float(reading[f"{camera_name}_{k}"]["value"]) for k in FRAME_STATISTICS
    )
    return judge_exposure(limits, exposure_s, mean, peak, saturated)


def auto_exposure(
    camera,
    *,
    target_level: float = 0.5,
    max_saturated_fraction: float = 1e-3,
    max_exposure_s: float = 1.0,
    max_frames: int = 6,
    stream: str | None = "exposure_check",
):
    """Bring the camera's exposure into range from preview frames; returns an ExposureCheck.

    Call it with the camera unstaged (its preview frames must not enter the
    run's frame file), inside an open run when ``stream`` is given. The focus
    searches do the same check on their own first exposures instead, which
    then count as data when the exposure was already fine.

    Parameters
    ----------
    camera : device
        A camera with ``exposure_time`` and the readings ``mean``, ``max`` and
        ``saturated_fraction``; ``offset_adu``, ``bit_depth``,
        ``electrons_per_adu``, ``read_noise_e``, ``min_exposure_s`` and
        ``max_exposure_s`` are used when it has them.
    target_level : float
        Brightest pixel above black, as a fraction of the camera's range, to
        aim for when the exposure has to change.
    max_saturated_fraction : float
        Fraction of saturated pixels above which the exposure is lowered.
    max_exposure_s : float
        Longest exposure the check may choose (the camera's own limit also applies).
    max_frames : int
        Preview frames at most.
    stream : str or None
        Event stream for the preview statistics (None: record nothing).

    Returns
    -------
    ExposureCheck
        Its ``restore(camera)`` plan stub puts the old exposure back.
    """
    if not 0 < target_level < 1:
        raise ValueError(f"target_level must be between 0 and 1, got {target_level!r}.")
    if getattr(camera, "_staged", None) is not None and camera._staged.name == "yes":
        raise ValueError(
            f"auto_exposure needs camera {camera.name!r} unstaged (its previews must not be "
            "stored as data); call it before staging the camera."
        )
    limits = ExposureLimits.of(camera, max_exposure_s)
    initial = float(camera.exposure_time.get())
    check = ExposureCheck(initial_exposure_s=initial, exposure_s=initial)
    reading = NumbersReading(stream or "exposure_check", {})
    exposure = initial
    for frame in range(max_frames):
        yield from bps.trigger(camera, wait=True)
        mean = float((yield from bps.rd(camera.mean)))
        peak = float((yield from bps.rd(camera.max)))
        saturated = float((yield from bps.rd(camera.saturated_fraction)))
        check.frames = frame + 1
        check.saturated_fraction = saturated
        check.peak_level = (peak - limits.offset_adu) / limits.full_range_adu
        check.signal_e = (mean - limits.offset_adu) * limits.electrons_per_adu
        step = {
            "exposure_s": exposure,
            "mean_adu": mean,
            "max_adu": peak,
            "saturated_fraction": saturated,
            "peak_level": check.peak_level,
        }
        check.history.append(step)
        if stream:
            yield from bps.create(stream)
            yield from bps.read(reading.update(step))
            yield from bps.save()
        new = judge_exposure(
            limits,
            exposure,
            mean,
            peak,
            saturated,
            target_level=target_level,
            max_saturated_fraction=max_saturated_fraction,
        )
        if new is None:
            return check
        yield from bps.mv(camera.exposure_time, new)
        exposure = check.exposure_s = new
    raise BadExposure(
        f"The exposure did not settle in {max_frames} preview frames (last: {exposure:g} s, "
        f"{check.saturated_fraction:.1%} saturated, brightest pixel at {check.peak_level:.0%} "
        "of the range): is the light flickering?"
    )
