"""Is there a focus peak? One test for every search, decided by the data's own noise.

A focus curve (a focus measure against Z) has a focus peak when a peak
whose width is plausible for the optics rises above the curve's baseline
by more than its noise could explain. :func:`assess_peak` decides that:

1. **Shape.** Peaks plus an offset are fitted by least squares over a bank
   of centres inside the sampled range, widths from
   :data:`PLAUSIBLE_WIDTH_DOF` (a Brenner peak is never much narrower than
   the depth of field, nor many depths of field wide) and tails from
   Gaussian to Lorentzian (Pearson VII). The best one is the candidate.
2. **Noise.** Where the camera reports the noise its own model predicts
   for each frame (shot noise, read noise, quantisation) and the scatter of
   the samples on the candidate's baseline passes a chi-square pre-test
   against it, the noise is the camera's. Otherwise it is that scatter, which
   also catches structure that is not a focus peak, such as a recorded
   z-stack's own noise, or a peak shape no template quite matches.
3. **Significance.** The candidate's height above the baseline, in units of
   that noise, is compared with what curves without any peak reach on the
   same Z positions: the threshold comes from simulated peak-free curves
   (white noise) put through the same test, pre-test included, so it
   accounts for the search over centres and widths, for the number of
   samples, and for noise the camera does not know about (vibration, LED
   flicker, a recorded stack's structure): whatever that extra noise, a
   curve without a peak passes with probability at most ``false_alarm``.
   It is computed once per sampling pattern and cached. Levels deeper
   than the simulated curves resolve come from a tail fitted to the
   largest of them (peaks over threshold).
   A search that judges a growing curve again and again (after each new
   exposure) gets another chance at a false alarm with every look that may
   end it with a focus, so it spends ``false_alarm`` over the looks it plans
   (:func:`look_false_alarm`): over all of them the chances add up to
   ``false_alarm`` at most. Looks that only steer a search spend nothing;
   which looks may decide must be fixed before their outcome is known.
4. **Support.** Without its highest sample, the other samples must still
   show the same peak (its amplitude, refitted with centre and width
   fixed, significant by a t-test): a single exposure (a vibration, a noise
   spike) is not a focus.
5. **Unique.** No second peak, clearly apart from the first and fitted
   together with it, may reach half its height: two layers, the twin
   contrast maxima of a transparent (phase) sample, or structured noise
   such as the beat between a replayed z-stack's planes and the sweep's
   steps make the curve ambiguous, and no statistic can say which peak is
   focus.
6. **Closed.** The fitted peak must come down at both ends of the sampled
   range by more than the noise explains (one-sided, at ``false_alarm``);
   otherwise the range is too short or the sample featureless.

The figures behind the decision travel in the :class:`PeakVerdict`; its
``reason`` names the criterion that failed.
"""

from __future__ import annotations

import logging
import math
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy import special, stats
from scipy.optimize import OptimizeWarning, brentq, curve_fit

__all__ = [
    "DEFAULT_FALSE_ALARM",
    "PLAUSIBLE_WIDTH_DOF",
    "PeakFit",
    "PeakVerdict",
    "assess_peak",
    "fit_peak",
    "log_parabola_vertex",
    "look_false_alarm",
    "pattern_resolution_dof",
    "prepare_threshold",
]

logger = logging.getLogger(__name__)

#: Gaussian sigma of a focus peak, in depths of field, that the optics allow. The
#: narrowest Brenner peaks measured on the simulator (10x/0.25, sparse beads and
#: tissue) have sigma ~0.4 DOF and the widest (60x/1.4 oil, cells) ~2.4 DOF;
#: the bank reaches well beyond both so that real peaks are never cut off.
PLAUSIBLE_WIDTH_DOF = (0.15, 6.0)
#: Probability that a curve without a focus peak passes the significance test.
DEFAULT_FALSE_ALARM = 1e-3
_NULL_CURVES = 8192
_FITTED_PARAMETERS = 4  # offset, height, centre, width
_MIN_BASELINE = 4  # baseline samples needed to measure the scatter there
#: A sample is on a peak's baseline where the peak has fallen below this fraction of its
#: top, if that leaves _FAR_BASELINE samples; else below _NEAR_BASELINE_LEVEL.
_BASELINE_LEVEL = 0.25
_FAR_BASELINE = 6
_NEAR_BASELINE_LEVEL = 0.5
_TAIL_SHAPES = (1, 3)  # Pearson VII exponents besides the Gaussian (1 = Lorentzian)


@dataclass(frozen=True)
class PeakFit:
    """A Gaussian-plus-offset fit ``amplitude * exp(-(z - center)^2 / (2 sigma^2)) + offset``.

    ``r2`` is the coefficient of determination over the fitted points (1 is
    perfect); ``method`` says how the center was found (``gaussian``,
    ``log_parabola`` or ``argmax`` when nothing better was possible).
    """

    center: float
    amplitude: float
    sigma: float
    offset: float
    r2: float
    points: int
    method: str


@dataclass(frozen=True)
class PeakVerdict:
    """Whether a focus curve has a focus peak, and the figures behind the decision.

    Positions and widths in µm unless the name says DOF; ``significance`` and
    ``threshold`` are the peak height over the noise (dimensionless).
    ``failed`` is empty when a peak was found, else the criterion that
    failed (``points``, ``saturated``, ``significance``, ``support``,
    ``ambiguous``, ``wide`` or ``open``), and ``reason`` says it in words.
    """

    found: bool
    center: float
    fit: PeakFit
    significance: float
    threshold: float
    support_significance: float
    support_threshold: float
    noise: float
    noise_source: str
    residual_noise: float
    camera_noise: float
    height: float
    baseline: float
    width_um: float
    width_dof: float
    saturated_fraction: float
    second_peak_ratio: float
    points: int
    false_alarm: float
    look: int = 1
    looks: int = 1
    failed: str = ""
    reason: str = ""
    extra: dict = field(default_factory=dict)

    def figures(self) -> dict[str, float]:
        """The numbers recorded in a ``focus_result`` event (prefixed ``peak_``)."""
        return {
            "peak_found": int(self.found),
            "peak_significance": self.significance,
            "peak_threshold": self.threshold,
            "peak_support_significance": self.support_significance,
            "peak_noise": self.noise,
            "peak_camera_noise": self.camera_noise,
            "peak_residual_noise": self.residual_noise,
            "peak_height": self.height,
            "peak_baseline": self.baseline,
            "peak_width_dof": self.width_dof,
            "peak_saturated_fraction": self.saturated_fraction,
            "peak_second_ratio": self.second_peak_ratio,
            "peak_look": self.look,
            "peak_look_false_alarm": look_false_alarm(self.false_alarm, self.look, self.looks),
        }


def _gaussian(z, amplitude, center, sigma, offset):
    return amplitude * np.exp(-0.5 * ((z - center) / sigma) ** 2) + offset


def log_parabola_vertex(z: np.ndarray, values: np.ndarray) -> float | None:
    """Vertex of a parabola through ``log(values)`` (exact for a Gaussian peak)."""
    z = np.asarray(z, dtype=float)
    values = np.asarray(values, dtype=float)
    if len(z) < 3 or np.any(values <= 0) or np.ptp(z) <= 0:
        return None
    origin, scale = float(z.mean()), float(np.ptp(z))  # well conditioned at any stage position
    a, b, _ = np.polyfit((z - origin) / scale, np.log(values), 2)
    if a >= 0:
        return None
    return float(origin - scale * b / (2 * a))


def fit_peak(
    z, values, *, half_width: int = 3, window: tuple[float, float] | None = None
) -> PeakFit:
    """Refine the maximum of a focus curve beyond the sampling step.

    Fits a Gaussian with offset to the maximum and up to ``half_width``
    points each side (or to the points inside ``window``, µm, when given),
    starting from the log-parabola vertex of the three highest neighbouring
    points; a fit whose center leaves the fitted span falls back to that
    vertex.
    """
    z = np.asarray(z, dtype=float)
    values = np.asarray(values, dtype=float)
    order = np.argsort(z)
    z, values = z[order], values[order]
    k = int(np.argmax(values))
    if window is not None:
        inside = np.nonzero((z >= window[0]) & (z <= window[1]))[0]
        lo, hi = (int(inside[0]), int(inside[-1]) + 1) if inside.size else (k, k + 1)
        lo, hi = min(lo, k), max(hi, k + 1)
        while hi - lo < 5 and (lo > 0 or hi < len(z)):  # at least 5 points for 4 parameters
            lo, hi = max(0, lo - 1), min(len(z), hi + 1)
    else:
        lo, hi = max(0, k - half_width), min(len(z), k + half_width + 1)
    zs, vs = z[lo:hi], values[lo:hi]
    guess = z[k]
    method = "argmax"
    if 0 < k < len(z) - 1:
        vertex = log_parabola_vertex(z[k - 1 : k + 2], values[k - 1 : k + 2])
        if vertex is not None and z[k - 1] <= vertex <= z[k + 1]:
            guess, method = vertex, "log_parabola"
    if len(zs) >= 5:
        span = zs[-1] - zs[0]
        p0 = [vs.max() - vs.min(), guess, max(span / 4, 1e-6), vs.min()]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OptimizeWarning)
                params, _ = curve_fit(_gaussian, zs, vs, p0=p0, maxfev=2000)
            amplitude, center, sigma, offset = (float(p) for p in params)
            if amplitude > 0 and zs[0] <= center <= zs[-1]:
                residual = vs - _gaussian(zs, *params)
                total = np.sum((vs - vs.mean()) ** 2)
                r2 = float(1 - np.sum(residual**2) / total) if total > 0 else 0.0
                return PeakFit(center, amplitude, abs(sigma), offset, r2, len(zs), "gaussian")
        except (RuntimeError, ValueError):
            pass
    return PeakFit(
        float(guess),
        float(values[k]),
        float("nan"),
        float(values.min()),
        float("nan"),
        len(zs),
        method,
    )


# -- the template bank and its significance -------------------------------------------------
@dataclass(frozen=True)
class _Bank:
    """Centred, peak-covering Gaussian templates for one set of Z positions (in DOF)."""

    centered: np.ndarray  # (T, n) templates minus their mean
    norms: np.ndarray  # (T,) squared norms of the centred templates
    top: np.ndarray  # (T,) largest template value at a sample (height = amplitude * top)
    centers: np.ndarray
    widths: np.ndarray
    raw: np.ndarray  # (T, n)


def _bank(z_dof: np.ndarray) -> _Bank:
    lo, hi = PLAUSIBLE_WIDTH_DOF
    span = float(z_dof[-1] - z_dof[0])
    widths = np.geomspace(lo, max(lo, min(hi, span)), 9)
    step = min(0.25, span / 40) if span > 0 else lo
    centers = np.arange(z_dof[0], z_dof[-1] + step / 2, step)
    c, w = (a.ravel() for a in np.meshgrid(centers, widths))
    u2 = ((z_dof[None, :] - c[:, None]) / w[:, None]) ** 2
    # Pearson VII shapes from Lorentzian to Gaussian: Brenner peaks have heavy tails
    raw = np.concatenate(
        [np.exp(-0.5 * u2)] + [(1 + u2 / (2 * m)) ** -m for m in _TAIL_SHAPES], axis=0
    )
    c = np.tile(c, 1 + len(_TAIL_SHAPES))
    w = np.tile(w, 1 + len(_TAIL_SHAPES))
    top = raw.max(axis=1)
    # a peak between two samples that neither sees is no evidence of anything
    keep = top >= 0.5
    raw, c, w, top = raw[keep], c[keep], w[keep], top[keep]
    centered = raw - raw.mean(axis=1, keepdims=True)
    norms = np.einsum("ij,ij->i", centered, centered)
    keep = norms > 1e-9
    return _Bank(
        centered[keep].astype(np.float32),
        norms[keep].astype(np.float32),
        top[keep],
        c[keep],
        w[keep],
        raw[keep],
    )


def _best_peak(bank: _Bank, values: np.ndarray):
    """Least-squares best template for each row of ``values`` (K, n).

    Returns (index, amplitude, noise, height/noise, height, degrees of freedom
    of the noise) per row. The noise is the scatter of the residuals on the
    baseline, where the template has fallen below :data:`_BASELINE_LEVEL` of
    its top (below half of it where that leaves fewer than
    :data:`_FAR_BASELINE` samples, since a scatter from a few samples needs a
    far higher threshold): over its top and flanks a real peak's shape never
    quite matches any template (a narrow core on broad wings, ripples of
    defocus), and that mismatch grows with the peak instead of telling its
    noise.
    """
    centered = values - values.mean(axis=1, keepdims=True)
    projections = (centered.astype(np.float32) @ bank.centered.T).astype(np.float64)  # (K, T)
    amplitude = projections / bank.norms
    reduction = np.where(amplitude > 0, amplitude * projections, -np.inf)
    best = np.argmax(reduction, axis=1)
    rows = np.arange(len(values))
    a = np.maximum(amplitude[rows, best], 0.0)
    residual = centered - a[:, None] * bank.centered[best]
    template = bank.raw[best]
    # the far baseline where it holds enough samples to measure a scatter; else the lower half
    far = template < _BASELINE_LEVEL
    baseline = np.where(
        (far.sum(axis=1) >= _FAR_BASELINE)[:, None], far, template < _NEAR_BASELINE_LEVEL
    )
    count = baseline.sum(axis=1)
    enough = count >= _MIN_BASELINE
    squares = residual * residual
    base_rms = np.sqrt(np.where(baseline, squares, 0).sum(axis=1) / np.maximum(count - 1, 1))
    all_rms = np.sqrt(squares.sum(axis=1) / max(values.shape[1] - _FITTED_PARAMETERS, 1))
    noise = np.where(enough, base_rms, all_rms)
    dof = np.where(enough, np.maximum(count - 1, 1), max(values.shape[1] - _FITTED_PARAMETERS, 1))
    height = a * bank.top[best]
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(noise > 0, height / noise, np.where(height > 0, np.inf, 0.0))
    return best, a, noise, score, height, dof


@dataclass(frozen=True)
class _Thresholds:
    """What a sampling pattern needs of a peak, from simulated peak-free curves.

    ``estimated``: height over the noise estimated from the curve alone (no
    camera model), at ``false_alarm``. With a camera model, a curve whose
    baseline scatter passes the consistency pre-test (at level
    ``consistency``) is judged against the camera's noise and ``known``;
    any other against its own scatter and ``estimated_with_camera``.
    """

    estimated: float
    known: float
    estimated_with_camera: float
    consistency: float


#: Levels tried for the camera-consistency pre-test; the one with which the smallest
#: peak is found with probability ``_POWER`` (the curve taking either path) is used.
_CONSISTENCY_LEVELS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
_POWER = 0.9
#: Extra noise tried, as a multiple of the camera's (the test must hold whatever it is).
_EXTRA_NOISE_SCALES = np.sqrt(np.geomspace(1.0, 25.0, 48))
#: Below this many simulated curves over a threshold, the threshold comes from a fitted tail.
_EMPIRICAL_EXCEEDANCES = 8
#: Largest values an exponential tail is fitted to.
_TAIL_POINTS = 32


def _weighted_exceeded(descending: np.ndarray, weights: np.ndarray, allowed: float) -> float:
    """The value above which the ``weights`` of these values add up to ``allowed`` at most.

    Read off the values where at least :data:`_EMPIRICAL_EXCEEDANCES` of them
    lie above it; deeper, an exponential tail through the largest values.
    Heights of peaks fitted to white noise (maxima of Gaussians) fall off
    faster than exponentially, so the exponential errs towards a higher value.
    """
    total = np.cumsum(weights)
    if allowed >= total[-1]:
        return 0.0
    j = int(np.searchsorted(total, allowed, side="right"))
    if j >= _EMPIRICAL_EXCEEDANCES:
        return float(descending[j])
    m = min(_TAIL_POINTS, len(descending) - 1)
    if m < 1 or allowed <= 0 or total[m - 1] <= 0:
        return math.inf
    u = float(descending[m])
    scale = float(np.average(descending[:m] - u, weights=weights[:m] + 1e-300))
    return u + scale * math.log(total[m - 1] / allowed)


def _scatter_quantile(score: np.ndarray, height: np.ndarray, dof: np.ndarray, p: float) -> float:
    """The height over the curve's own scatter that peak-free curves exceed with probability ``p``.

    Counted from the simulated curves where at least :data:`_EMPIRICAL_EXCEEDANCES`
    exceed it. Deeper, by conditional Monte Carlo: the scatter of a white-noise
    baseline is a chi-square variate with ``dof`` degrees of freedom, so each
    simulated peak height contributes its probability of meeting a scatter
    small enough, ``P(chi2_dof / dof < (height / t)^2)``. That resolves levels
    of 1e-5 from a few thousand curves (checked against a million: within
    about 5 %, and above where it differs most), where counting would need
    hundreds of thousands.
    """
    if p * len(score) >= _EMPIRICAL_EXCEEDANCES:
        return float(np.quantile(score, 1 - p))

    def excess(log_t: float) -> float:
        return float(np.mean(special.chdtr(dof, dof * (height / math.exp(log_t)) ** 2))) - p

    top = float(np.max(score))
    hi = math.log(max(top, 1.0)) + 1.0
    while excess(hi) > 0:
        hi += 1.0
    return math.exp(brentq(excess, math.log(1e-3), hi))


def look_false_alarm(false_alarm: float, look: int = 1, looks: int = 1) -> float:
    """The level the ``look``-th of at most ``looks`` looks at a growing curve is tested at.

    A single look gets all of ``false_alarm``. Otherwise the first look, where
    a clear peak is accepted, gets half, and the others share the rest: each
    of looks 2 to ``looks`` ``false_alarm / (2 looks)``, and any look beyond
    (a search that looked more often than it planned) half the one before. The
    levels add up to ``false_alarm`` at most.
    """
    if look < 1 or looks < 1:
        raise ValueError(f"look and looks count from 1, got look={look!r}, looks={looks!r}.")
    if looks == 1:
        if look > 1:
            raise ValueError(f"look {look} of a curve judged once: pass looks={look} or more.")
        return false_alarm
    if look == 1:
        return false_alarm / 2
    return false_alarm / (2 * looks) * 0.5 ** max(look - looks, 0)


def _known_threshold(height, dof, level, false_alarm, with_camera):
    """Smallest camera-noise threshold whose false-alarm rate, pre-test included, is at most
    ``false_alarm`` whatever noise the curve has on top of the camera's.

    A curve is judged against the camera's noise only when its baseline scatter passes
    the chi-square pre-test at ``level``; a curve with noise the camera does not know
    about (vibration, flicker, a recorded stack's own structure) passes it less often
    but, when it does, its peak looks taller in camera units. The worst case over
    that extra noise sets the threshold; at each, the false alarms of the curves the
    pre-test sends to their own scatter (judged against ``with_camera``) use up part
    of the budget. Each simulated peak counts with its probability of taking either
    path (its baseline scatter a chi-square variate), which resolves deep levels from
    a few thousand curves.
    """
    order = np.argsort(height)[::-1]
    top = height[order]
    # few distinct degrees of freedom: work out each one's probabilities once
    dofs, which = np.unique(dof[order], return_inverse=True)
    pass_limit = np.sqrt(stats.chi2.ppf(1 - level, dofs) / dofs)  # largest scatter passed
    floor = np.maximum(pass_limit, 1.0)  # the camera's noise floors the scatter
    budget = false_alarm * len(height)
    needed = 0.0
    for s in _EXTRA_NOISE_SCALES:

        def below(x, d, s=s):  # P(scatter in camera units <= x) for a baseline of noise s
            return special.chdtr(d, d * (x / s) ** 2)

        passes = below(pass_limit, dofs)
        # sent to its own scatter r > pass_limit, judged as s * height / max(r, 1)
        between = np.clip(below(1.0, dofs) - passes, 0, None)[which]
        data_alarms = float(np.sum(between[s * top >= with_camera]))
        # only the tallest peaks can reach with_camera over a scatter above the floor
        tall = s * top / with_camera > floor[which]
        if np.any(tall):
            d = dofs[which[tall]]
            reach = below(s * top[tall] / with_camera, d) - below(floor[which[tall]], d)
            data_alarms += float(np.sum(np.clip(reach, 0, None)))
        spare = budget - data_alarms
        needed = max(needed, _weighted_exceeded(s * top, passes[which], spare) + 1e-9)
    return needed


@lru_cache(maxsize=256)
def _threshold(pattern: tuple[float, ...], false_alarm: float) -> _Thresholds:
    """Thresholds for one sampling pattern (see :class:`_Thresholds`), by Monte Carlo."""
    z = np.asarray(pattern)
    bank = _bank(z)
    if bank.raw.size == 0:
        return _Thresholds(math.inf, math.inf, math.inf, 0.5)
    rng = np.random.default_rng(20261127)
    parts = [
        _best_peak(bank, rng.standard_normal((2048, len(z))))
        for _ in range(max(1, _NULL_CURVES // 2048))
    ]
    score, height, dof = (np.concatenate([p[i] for p in parts]) for i in (3, 4, 5))
    estimated = _scatter_quantile(score, height, dof, false_alarm)
    # a curve the pre-test sends to its own scatter is judged as if there were no camera
    # model; the camera path gets what that leaves of the budget at each noise level
    with_camera = estimated

    def reliably_found(known: float, level: float, data: float) -> float:
        # the height (in camera noise) found 90 % of the time on a camera-noise-only curve,
        # which passes the pre-test with probability 1 - level
        def shortfall(h):
            found = (1 - level) * stats.norm.cdf(h - known) + level * stats.norm.cdf(h - data)
            return found - _POWER

        return brentq(shortfall, 0.0, 10 * max(min(known, 1e6), data) + 10)

    # never trusting the camera (every curve judged on its own scatter) is the fallback
    best = (reliably_found(math.inf, 1.0, estimated), math.inf, 1.0)
    for level in _CONSISTENCY_LEVELS:
        known = _known_threshold(height, dof, level, false_alarm, with_camera)
        if not (math.isfinite(known) and math.isfinite(with_camera)):
            continue
        cost = reliably_found(known, level, with_camera)
        if cost < best[0]:
            best = (cost, known, level)
    _, known, level = best
    return _Thresholds(estimated, known, with_camera, level)


#: Sampling patterns are told apart to 1/_PATTERN_STEPS_PER_DOF of a depth of field.
_PATTERN_STEPS_PER_DOF = 20


def _pattern(z_dof: np.ndarray) -> tuple[float, ...]:
    # positions relative to the first, to a twentieth of a DOF: the threshold depends on the
    # pattern only, and changes little within that
    steps = _PATTERN_STEPS_PER_DOF
    return tuple(np.round(steps * (z_dof - z_dof[0])) / steps)


def pattern_resolution_dof() -> float:
    """Z positions (in depths of field) closer than this share a significance threshold.

    The thresholds are cached per sampling pattern, the positions relative to
    the first rounded to this; a sweep whose samples are a multiple of it
    apart always meets the same pattern.
    """
    return 1.0 / _PATTERN_STEPS_PER_DOF


# one worker: thresholds are CPU-bound, and two for one pattern would be computed twice
_warmer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="peak-threshold")


def _warm(pattern: tuple[float, ...], false_alarm: float) -> None:
    try:
        _threshold(pattern, false_alarm)
    except Exception:  # the verdict computes it again, and raises there
        logger.exception("Computing the peak threshold ahead of the verdict failed")


def prepare_threshold(
    z,
    *,
    depth_of_field_um: float,
    false_alarm: float = DEFAULT_FALSE_ALARM,
    look: int = 1,
    looks: int = 1,
) -> Future | None:
    """Start computing the significance threshold for samples at ``z`` (µm), in a worker thread.

    A sweep whose sampling is known before its frames arrive (a fly sweep) can
    have the Monte-Carlo threshold (:func:`assess_peak`, step 3) ready by the
    time it is judged, instead of computing it afterwards. The threshold is the
    one :func:`assess_peak` looks up for any curve with the same pattern (Z
    relative to the first sample, to :func:`pattern_resolution_dof`) and the
    same ``look`` of as many ``looks``; a curve sampled elsewhere gets its own, as always.

    Wait for the returned future before calling :func:`assess_peak` on such a
    curve (otherwise the threshold may be computed twice, concurrently).

    Returns
    -------
    concurrent.futures.Future or None
        Done when the threshold is cached (it never raises); None when ``z``
        could not show a peak anyway (fewer than 5 samples, or less than one
        depth of field), so there is nothing to compute.
    """
    z_dof = np.sort(np.asarray(z, dtype=float)) / float(depth_of_field_um)
    if len(z_dof) < 5 or not np.ptp(z_dof) >= 1.0:
        return None
    # a pattern already cached comes straight back from the worker
    level = look_false_alarm(float(false_alarm), look, looks)
    return _warmer.submit(_warm, _pattern(z_dof), level)


def _significance(z_dof: np.ndarray, values: np.ndarray, camera_sigma: float, false_alarm: float):
    """The best peak's height over the noise, and the height the pattern needs.

    When the camera predicts the noise and the scatter on the baseline is no
    larger than that prediction allows (a chi-square pre-test), the noise is
    known and the stronger known-noise threshold applies; else
    the noise is the scatter itself, with its own, higher threshold.
    """
    bank = _bank(z_dof)
    best, amplitude, rms, _, height, dof = _best_peak(bank, values[None, :])
    k = int(best[0])
    rms, height, dof = float(rms[0]), float(height[0]), int(dof[0])
    thresholds = _threshold(_pattern(z_dof), false_alarm)
    consistent = (
        camera_sigma > 0
        and thresholds.consistency < 1
        and rms**2 <= camera_sigma**2 * (stats.chi2.ppf(1 - thresholds.consistency, dof) / dof)
    )
    if consistent:
        noise, threshold, source = camera_sigma, thresholds.known, "camera"
    elif camera_sigma > 0:  # the camera's noise is still a floor under the scatter
        source = "camera" if camera_sigma > rms else "data"
        noise, threshold = max(rms, camera_sigma), thresholds.estimated_with_camera
    else:
        noise, threshold, source = rms, thresholds.estimated, "data"
    score = height / noise if noise > 0 else (math.inf if height > 0 else 0.0)
    return {
        "score": score,
        "threshold": threshold,
        "noise": noise,
        "noise_source": source,
        "rms": rms,
        "height": height,
        "amplitude": float(amplitude[0]),
        "center": float(bank.centers[k]),
        "width": float(bank.widths[k]),
        "template": bank.raw[k],
    }


def _second_peak(z_dof: np.ndarray, values: np.ndarray, main: dict) -> dict:
    """The highest peak clearly apart from the main one, fitted together with it.

    Returns both heights from the joint fit and the noise of the residuals
    outside both peaks.
    """
    none = {"height": 0.0, "center": math.nan, "main_height": main["height"], "noise": math.nan}
    bank = _bank(z_dof)
    g1 = main["template"]
    apart = np.abs(bank.centers - main["center"]) > 2 * (bank.widths + main["width"])
    if not np.any(apart):
        return none
    # project out offset and main peak from the data and from every other template
    basis, _ = np.linalg.qr(np.stack([np.ones_like(g1), g1], axis=1))
    v = values - basis @ (basis.T @ values)
    templates = bank.raw[apart]
    t = templates - (templates @ basis) @ basis.T
    norms = np.einsum("ij,ij->i", t, t)
    ok = norms > 1e-9
    if not np.any(ok):
        return none
    t, norms = t[ok], norms[ok]
    amplitude = (t @ v) / norms
    k = int(np.argmax(np.where(amplitude > 0, amplitude * (t @ v), -np.inf)))
    if not amplitude[k] > 0:
        return none
    g2 = templates[ok][k]
    design = np.stack([np.ones_like(g1), g1, g2], axis=1)
    coefficients, *_ = np.linalg.lstsq(design, values, rcond=None)
    residual = values - design @ coefficients
    outside = (g1 < 0.5) & (g2 < 0.5)
    if outside.sum() >= _MIN_BASELINE:
        noise = float(np.sqrt(np.sum(residual[outside] ** 2) / (outside.sum() - 1)))
    else:
        noise = float(np.sqrt(np.sum(residual**2) / max(len(values) - 7, 1)))
    return {
        "height": max(float(coefficients[2]), 0.0) * float(g2.max()),
        "center": float(bank.centers[apart][ok][k]),
        "main_height": max(float(coefficients[1]), 0.0) * float(g1.max()),
        "noise": noise,
    }


def _ambiguity(second: dict, dof: float, metric: str) -> str:
    first = second["main_height"]
    ratio = second["height"] / first if first > 0 else math.nan
    return (
        f"two peaks: near z = {second['center_main']:.2f} µm and a second one {ratio:.0%} as high "
        f"near z = {second['center'] * dof:.2f} µm in the {metric} (two layers, a transparent "
        "phase sample whose focus lies between its two contrast maxima, or structured noise): "
        "narrow the range around the plane you want"
    )


def assess_peak(
    z,
    values,
    *,
    depth_of_field_um: float,
    camera_noise=None,
    saturated_fraction=None,
    false_alarm: float = DEFAULT_FALSE_ALARM,
    look: int = 1,
    looks: int = 1,
    max_saturated_fraction: float = 0.02,
    max_second_peak: float = 0.5,
    metric: str = "focus measure",
) -> PeakVerdict:
    """Decide whether a focus curve has a focus peak, and where it is.

    Parameters
    ----------
    z, values : array_like
        Positions (µm) and focus-measure values, in any order; repeated
        positions are fine.
    depth_of_field_um : float
        Depth of field of the optics; peak widths are judged in its units.
    camera_noise : array_like, optional
        Standard deviation of each value predicted by the camera's noise
        model; its median is a floor under the noise estimated from the data.
    saturated_fraction : array_like, optional
        Fraction of saturated pixels of each frame.
    false_alarm : float
        Probability that a curve without a peak is accepted, over all the
        looks a search takes at it.
    look, looks : int
        Which look at a growing curve this is, of how many the search may take
        (1 and 1 for a curve judged once): the significance test is at
        :func:`look_false_alarm` ``(false_alarm, look, looks)``, so that a
        search judging its curve after every exposure is not accepted by a
        lucky look.
    max_saturated_fraction : float
        Saturated fraction of the median frame above which the measure is
        not trusted (clipped pixels have no gradient).
    max_second_peak : float
        Height of a second, separate peak relative to the main one above which
        the curve is ambiguous (two focal planes, or a phase object).
    metric : str
        Name of the measure, for the sentences.

    Returns
    -------
    PeakVerdict
    """
    if not depth_of_field_um > 0:
        raise ValueError(f"depth_of_field_um must be positive, got {depth_of_field_um!r}.")
    if not 0 < false_alarm < 0.5:
        raise ValueError(f"false_alarm must be between 0 and 0.5, got {false_alarm!r}.")
    significance_level = look_false_alarm(false_alarm, look, looks)
    z = np.asarray(z, dtype=float)
    values = np.asarray(values, dtype=float)
    order = np.argsort(z, kind="stable")
    z, values = z[order], values[order]
    n = len(z)
    dof = float(depth_of_field_um)
    cam = np.asarray(camera_noise, dtype=float)[order] if camera_noise is not None else None
    camera_sigma = float(np.nanmedian(cam)) if cam is not None and np.any(np.isfinite(cam)) else 0.0
    saturated = (
        float(np.nanmedian(np.asarray(saturated_fraction, dtype=float)))
        if saturated_fraction is not None and len(saturated_fraction)
        else 0.0
    )
    nan = math.nan
    empty_fit = PeakFit(nan, nan, nan, nan, nan, n, "none")

    def verdict(found: bool, failed: str, reason: str, **figures) -> PeakVerdict:
        base = {
            "center": nan,
            "fit": empty_fit,
            "significance": nan,
            "threshold": nan,
            "support_significance": nan,
            "support_threshold": nan,
            "noise": nan,
            "noise_source": "",
            "residual_noise": nan,
            "camera_noise": camera_sigma if camera_sigma > 0 else nan,
            "height": nan,
            "baseline": nan,
            "width_um": nan,
            "width_dof": nan,
            "saturated_fraction": saturated,
            "second_peak_ratio": nan,
            "points": n,
            "false_alarm": false_alarm,
            "look": look,
            "looks": looks,
        }
        base.update(figures)
        return PeakVerdict(found=found, failed=failed, reason=reason, **base)

    if n < 5 or not np.all(np.isfinite(values)) or np.ptp(z) <= 0:
        return verdict(
            False, "points", f"only {n} usable point(s) over {np.ptp(z):.2f} µm; at least 5 needed"
        )
    if saturated > max_saturated_fraction:
        return verdict(
            False,
            "saturated",
            f"{saturated:.0%} of the pixels are saturated, so the {metric} has no gradient to "
            "measure: lower exposure_time or the LED brightness",
        )

    z_dof = z / dof
    if np.ptp(z_dof) < 1.0 or _bank(z_dof).raw.size == 0:
        return verdict(
            False,
            "points",
            f"the samples span only {np.ptp(z):.2f} µm ({np.ptp(z_dof):.2f} DOF), too little to "
            "show a focus peak: widen the range",
        )
    main = _significance(z_dof, values, camera_sigma, significance_level)
    width_um = main["width"] * dof
    fitted = values.mean() + main["amplitude"] * (main["template"] - main["template"].mean())
    baseline = float(fitted.min())
    figures = {
        "significance": main["score"],
        "threshold": main["threshold"],
        "noise": main["noise"],
        "noise_source": main["noise_source"],
        "residual_noise": main["rms"],
        "height": main["height"],
        "baseline": baseline,
        "width_um": width_um,
        "width_dof": main["width"],
    }
    if not main["score"] >= main["threshold"]:
        # two peaks inflate each other's baseline noise: say so rather than "no peak"
        second = _second_peak(z_dof, values, main)
        second["center_main"] = main["center"] * dof
        if second["main_height"] > 0:
            figures["second_peak_ratio"] = second["height"] / second["main_height"]
        floor = max(second["noise"], camera_sigma)
        if min(second["height"], second["main_height"]) >= main["threshold"] * floor:
            return verdict(False, "ambiguous", _ambiguity(second, dof, metric), **figures)
        return verdict(
            False,
            "significance",
            f"no focus peak stands out of the noise: the best peak rises "
            f"{main['score']:.1f}x the noise of the {metric} above its baseline, where "
            f"{main['threshold']:.1f}x is needed (blank or featureless field, too little light, "
            "or the focus outside the range?)",
            **figures,
        )

    # support: without its highest exposure, do the others still show this peak?
    top = int(np.argmax(values))
    keep = np.arange(n) != top
    g = main["template"][keep] - main["template"][keep].mean()
    v = values[keep] - values[keep].mean()
    norm = float(g @ g)
    support = (float(g @ v) / norm) * math.sqrt(norm) / main["noise"] if norm > 0 else 0.0
    support_threshold = float(stats.t.ppf(1 - false_alarm, df=max(n - 3, 1)))
    figures.update(support_significance=support, support_threshold=support_threshold)
    if not support >= support_threshold:
        return verdict(
            False,
            "support",
            f"the peak rests on a single exposure (z = {z[top]:.2f} µm): the others show it "
            f"at only {support:.1f} standard errors ({support_threshold:.1f} needed); a noise "
            "spike or vibration, or a peak narrower than the step: repeat with more points",
            **figures,
        )

    second = _second_peak(z_dof, values, main)
    second["center_main"] = main["center"] * dof
    figures["second_peak_ratio"] = second["height"] / main["height"] if main["height"] else nan
    if second["height"] > max_second_peak * main["height"]:
        return verdict(False, "ambiguous", _ambiguity(second, dof, metric), **figures)

    hi_w = PLAUSIBLE_WIDTH_DOF[1]
    span_dof = float(z_dof[-1] - z_dof[0])
    if main["width"] >= min(hi_w, span_dof) * 0.999 and main["width"] > 0.5 * span_dof:
        return verdict(
            False,
            "wide",
            f"the {metric} changes over the whole {z[-1] - z[0]:.1f} µm range without a "
            f"distinct peak (best width {main['width']:.1f} DOF): a featureless sample, or a "
            "range too short",
            **figures,
        )
    # closed: the fitted peak must come down at both ends of the range by more than the
    # noise explains there (one place each, so a one-sided normal quantile)
    drop_needed = float(stats.norm.ppf(1 - false_alarm)) * main["noise"]
    shape = main["amplitude"] * main["template"]
    peak_value = main["height"]
    for side, edge_value in (("lower", shape[0]), ("upper", shape[-1])):
        if peak_value - edge_value < drop_needed:
            return verdict(
                False,
                "open",
                f"the peak does not come down on the {side} side of the range "
                f"(z = {z[0] if side == 'lower' else z[-1]:.2f} µm): extend the range that way",
                extra={"side": side},
                **figures,
            )

    # the top of the peak only: broad, skewed curves (phase-dominant samples) pull a wide fit
    # towards their heavier tail
    window = (main["center"] * dof - 0.75 * width_um, main["center"] * dof + 0.75 * width_um)
    fit = fit_peak(z, values, window=window)
    center = fit.center if math.isfinite(fit.center) else main["center"] * dof
    center = float(np.clip(center, z[0], z[-1]))
    return verdict(True, "", "", center=center, fit=fit, **figures)
