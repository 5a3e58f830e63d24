"""How far a single-shot defocus prediction can be trusted: view spread and conformal intervals.

numpy only. A defocus model is trained on random crops of each frame (new
views of the sample, same defocus), so on a sample it reads right its
predictions from different crops of one frame agree; on a sample it does
not know they tend to scatter. The scatter of the predictions over a grid of
crops (:func:`view_corners`) is the per-prediction uncertainty; split
conformal prediction on fields of view never trained on turns it into an
interval with a stated coverage: the half-width is ``quantile * (spread +
floor)``, where ``quantile`` is the finite-sample conformal quantile of the
normalised errors ``|error| / (spread + floor)`` on those fields
(:func:`calibrate`). The coverage holds for frames like the calibration
frames (the same kind of sample, the same optics); on other samples the
spread is what can widen the interval, and how well it does is measured,
not assumed (``benchmarks/bench_uncertainty.py``).

The spread does not flag a sample the model never saw: on such a sample the
views can agree on a wrong answer (measured: a model trained on tissue
placed 90 % of bead frames outside intervals of under 1 DOF), and neither
do the network's own last-layer features (a regression net maps unfamiliar
inputs among familiar ones). What does is the sample's spatial-frequency
content, which defocus changes far less than the kind of sample does: the
radial profile of a frame's log power spectrum (:func:`sample_spectrum`), as
a Mahalanobis distance to the training frames' (:class:`Novelty`), against
the distances of the calibration frames. A frame further than their
``familiar`` conformal quantile (``novelty`` > 1) is one the stated coverage
says nothing about.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from .preprocessing import Preprocessing

__all__ = [
    "DEFAULT_COVERAGE",
    "DEFAULT_FAMILIAR",
    "Calibration",
    "DefocusEstimate",
    "Novelty",
    "calibrate",
    "conformal_quantile",
    "sample_spectrum",
    "view_corners",
]

#: Share of predictions a calibrated interval is to contain.
DEFAULT_COVERAGE = 0.9
#: Share of frames like the calibration frames that are to count as familiar.
DEFAULT_FAMILIAR = 0.95
#: Crops along each axis of a frame (a 3x3 grid: the centre, edges and corners).
VIEWS_PER_AXIS = 3


def view_corners(shape: tuple[int, int], crop: int) -> list[tuple[int, int]]:
    """Top-left corners of a grid of ``crop``-sized views spanning a frame of ``shape``."""
    rows = np.unique(np.round(np.linspace(0, shape[0] - crop, VIEWS_PER_AXIS)).astype(int))
    cols = np.unique(np.round(np.linspace(0, shape[1] - crop, VIEWS_PER_AXIS)).astype(int))
    return [(int(r), int(c)) for r in rows for c in cols]


def conformal_quantile(scores, coverage: float = DEFAULT_COVERAGE) -> float:
    """The split-conformal quantile: the ``ceil((n + 1) coverage)``-th smallest of ``n`` scores.

    A new score exchangeable with these lies at or below it with probability
    at least ``coverage``; with too few scores for that (``n < coverage /
    (1 - coverage)``), no finite value does, and the result is ``inf``.
    """
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must be between 0 and 1, got {coverage!r}.")
    scores = np.sort(np.asarray(scores, dtype=float).ravel())
    rank = math.ceil((len(scores) + 1) * coverage)
    return float(scores[rank - 1]) if rank <= len(scores) else math.inf


#: Shrinkage of the profiles' covariance towards its mean variance (tens of training fields
#: for a profile of ~16 numbers: the raw covariance is too noisy to invert).
_SHRINKAGE = 0.1
#: Radial bins of :func:`sample_spectrum`, log-spaced from 2 cycles per crop to Nyquist.
_SPECTRUM_BINS = 16


def sample_spectrum(frame, crop: int) -> np.ndarray:
    """The radial profile of the log power spectrum of a frame's central ``crop``.

    Of the relative contrast (frame / its mean - 1, so brightness and exposure
    do not matter), Hann-windowed, averaged in log-spaced rings from 2 cycles
    per crop to Nyquist.
    """
    contrast = Preprocessing(crop=crop).image(frame)  # the crop the model sees, normalised
    window = np.outer(np.hanning(crop), np.hanning(crop))
    power = np.abs(np.fft.fftshift(np.fft.fft2(contrast * window))) ** 2
    y, x = np.indices(power.shape) - crop // 2
    radius = np.hypot(x, y)
    edges = np.unique(np.round(np.geomspace(2, crop // 2, _SPECTRUM_BINS + 1)))
    return np.array(
        [
            np.log(power[(radius >= lo) & (radius < hi)].mean() + 1e-12)
            for lo, hi in itertools.pairwise(edges)
        ]
    )


@dataclass(frozen=True)
class Novelty:
    """Mahalanobis distance of sample spectra to those of the training frames."""

    mean: np.ndarray
    precision: np.ndarray

    @classmethod
    def fit(cls, spectra) -> Novelty:
        x = np.asarray(spectra, dtype=float)
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"Novelty needs spectra of shape (frames >= 2, d), got {x.shape}.")
        cov = np.cov(x, rowvar=False)
        target = np.trace(cov) / len(cov) or 1.0
        shrunk = (1 - _SHRINKAGE) * cov + _SHRINKAGE * target * np.eye(len(cov))
        return cls(x.mean(axis=0), np.linalg.inv(shrunk))

    def distance(self, spectra) -> np.ndarray:
        """Distance of each spectrum (last axis) to the training frames'."""
        d = np.asarray(spectra, dtype=float) - self.mean
        return np.sqrt(np.maximum(np.einsum("...i,ij,...j->...", d, self.precision, d), 0.0))

    def to_dict(self) -> dict:
        # 6 significant digits keep the checkpoint header small and the distances unchanged
        return {
            "mean": [float(f"{v:.6g}") for v in self.mean],
            "precision": [[float(f"{v:.6g}") for v in row] for row in self.precision],
        }

    @classmethod
    def from_dict(cls, d: dict) -> Novelty:
        return cls(np.asarray(d["mean"], dtype=float), np.asarray(d["precision"], dtype=float))


@dataclass(frozen=True)
class Calibration:
    """A conformal calibration of view-spread intervals and of the novelty limit
    (stored in a checkpoint's metadata)."""

    coverage: float
    quantile: float
    floor_um: float
    frames: int
    fields: int
    novelty: Novelty | None = None
    novelty_limit: float = math.inf
    familiar: float = DEFAULT_FAMILIAR

    def half_width(self, spread_um):
        """The interval half-width (µm) for predictions whose views scatter by ``spread_um``."""
        return self.quantile * (np.asarray(spread_um, dtype=float) + self.floor_um)

    def novelty_of(self, spectrum) -> float:
        """A frame's novelty from its :func:`sample_spectrum`: its distance over the limit."""
        if self.novelty is None or spectrum is None:
            return math.nan
        return float(self.novelty.distance(spectrum)) / self.novelty_limit

    def to_dict(self) -> dict:
        return {
            "method": "split conformal on the view spread; novelty of the sample spectrum",
            "coverage": self.coverage,
            "quantile": self.quantile,
            "floor_um": self.floor_um,
            "frames": self.frames,
            "fields": self.fields,
            "familiar": self.familiar,
            "novelty_limit": self.novelty_limit,
            "novelty": self.novelty.to_dict() if self.novelty is not None else None,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        novelty = d.get("novelty")
        return cls(
            float(d["coverage"]),
            float(d["quantile"]),
            float(d["floor_um"]),
            int(d["frames"]),
            int(d["fields"]),
            Novelty.from_dict(novelty) if novelty else None,
            float(d.get("novelty_limit", math.inf)),
            float(d.get("familiar", DEFAULT_FAMILIAR)),
        )


def calibrate(
    views_um,
    true_um,
    *,
    fields: int,
    coverage: float = DEFAULT_COVERAGE,
    spectra=None,
    is_train=None,
    familiar: float = DEFAULT_FAMILIAR,
) -> Calibration:
    """Conformal calibration from predictions ``views_um`` (frames, views) of known ``true_um``.

    The floor is the median spread: it keeps frames whose views happen to
    agree closely from getting a vanishing interval. With every frame's
    :func:`sample_spectrum` (``spectra``) and which frames were trained on
    (``is_train``; the others are the calibration frames, in order), the
    novelty limit is the ``familiar`` conformal quantile of the calibration
    frames' distances to the training frames' spectra.
    """
    views = np.asarray(views_um, dtype=float)
    truth = np.asarray(true_um, dtype=float)
    if views.ndim != 2 or len(views) != len(truth) or len(truth) == 0:
        raise ValueError(
            f"calibrate needs predictions of shape (frames, views) for as many known defocus "
            f"values, got {views.shape} and {truth.shape}."
        )
    spread = views.std(axis=1, ddof=1) if views.shape[1] > 1 else np.zeros(len(views))
    floor = float(np.median(spread)) or 1e-6
    scores = np.abs(views.mean(axis=1) - truth) / (spread + floor)
    novelty, limit = None, math.inf
    if spectra is not None and is_train is not None:
        spectra, is_train = np.asarray(spectra, dtype=float), np.asarray(is_train, dtype=bool)
        novelty = Novelty.fit(spectra[is_train])
        limit = conformal_quantile(novelty.distance(spectra[~is_train]), familiar)
    return Calibration(
        coverage,
        conformal_quantile(scores, coverage),
        floor,
        len(truth),
        int(fields),
        novelty,
        limit,
        familiar,
    )


@dataclass(frozen=True)
class DefocusEstimate:
    """One frame's defocus (µm, ``z - z_focus``): the mean over its views, their spread, the
    calibrated interval half-width, and its novelty (above 1: unlike the frames the
    interval was calibrated on, so the interval's coverage says nothing about it).
    ``nan`` where the model has no calibration."""

    defocus_um: float
    spread_um: float
    interval_um: float
    coverage: float
    novelty: float

    @property
    def familiar(self) -> bool:
        """Whether the interval's coverage applies (``True`` without a calibration to say)."""
        return not self.novelty > 1

    @classmethod
    def from_views(cls, views_um, spectrum, calibration: Calibration | None) -> DefocusEstimate:
        views = np.asarray(views_um, dtype=float).ravel()
        spread = float(views.std(ddof=1)) if views.size > 1 else 0.0
        if calibration is None:
            return cls(float(views.mean()), spread, math.nan, math.nan, math.nan)
        return cls(
            float(views.mean()),
            spread,
            float(calibration.half_width(spread)),
            calibration.coverage,
            calibration.novelty_of(spectrum),
        )
