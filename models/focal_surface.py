"""A focal surface z(x, y) fitted to focus measured at a few XY points.

Three kinds, by how many points there are: a plane (3 or more), a quadratic
(6 or more), a thin-plate spline (10 or more, with a plane as its trend).
``kind="auto"`` takes, among the kinds the points allow, the one that
predicts left-out points best (leave-one-out), so the data decide how much
shape the surface may have. Pure numpy/scipy: no torch, no ophyd.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.interpolate import RBFInterpolator

__all__ = ["MIN_POINTS", "SURFACE_KINDS", "FocalSurfaceFit", "fit_focal_surface"]

SURFACE_KINDS = ("plane", "quadratic", "thin_plate")
MIN_POINTS = {"plane": 3, "quadratic": 6, "thin_plate": 10}


def _design(kind: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    if kind == "plane":
        return np.column_stack([np.ones_like(x), x, y])
    return np.column_stack([np.ones_like(x), x, y, x * x, x * y, y * y])


@dataclass
class FocalSurfaceFit:
    """A fitted focal surface: ``predict(x, y)`` in µm, and how well it fits.

    ``rms_um`` is the residual at the points used; ``loo_rms_um`` the
    leave-one-out prediction error (what to expect between the points; NaN
    when there are too few points to leave one out).
    """

    kind: str
    points: np.ndarray  # (n, 3): x, y, z in µm
    coefficients: list[float] = field(default_factory=list)
    scale_um: float = 1.0
    rms_um: float = float("nan")
    loo_rms_um: float = float("nan")
    _rbf: Any = field(default=None, repr=False)

    def predict(self, x: Any, y: Any) -> np.ndarray | float:
        """Focus z (µm) at stage position(s) (x, y) (µm)."""
        xs, ys = np.atleast_1d(np.asarray(x, float)), np.atleast_1d(np.asarray(y, float))
        xs, ys = np.broadcast_arrays(xs, ys)
        if self.kind == "thin_plate":
            if self._rbf is None:
                self._rbf = _thin_plate(self.points, self.scale_um)
            z = self._rbf(np.column_stack([xs.ravel(), ys.ravel()]) / self.scale_um)
        else:
            a = _design(self.kind, xs.ravel() / self.scale_um, ys.ravel() / self.scale_um)
            z = a @ np.asarray(self.coefficients)
        z = z.reshape(xs.shape)
        return float(z[0]) if np.ndim(x) == 0 and np.ndim(y) == 0 else z

    def to_dict(self) -> dict[str, Any]:
        """Plain values (for a start document, a queue-server argument, a JSON file)."""
        return {
            "kind": self.kind,
            "points": self.points.tolist(),
            "coefficients": [float(c) for c in self.coefficients],
            "scale_um": self.scale_um,
            "rms_um": self.rms_um,
            "loo_rms_um": self.loo_rms_um,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FocalSurfaceFit:
        try:
            return cls(
                kind=str(d["kind"]),
                points=np.asarray(d["points"], float).reshape(-1, 3),
                coefficients=[float(c) for c in d.get("coefficients", [])],
                scale_um=float(d.get("scale_um", 1.0)),
                rms_um=float(d.get("rms_um", float("nan"))),
                loo_rms_um=float(d.get("loo_rms_um", float("nan"))),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(
                f"Not a focal-surface description ({err}); pass the dict from "
                "FocalSurfaceFit.to_dict() or a focus_map run's start['focus_map']."
            ) from None


def _thin_plate(points: np.ndarray, scale: float) -> RBFInterpolator:
    xy = points[:, :2] / scale
    return RBFInterpolator(xy, points[:, 2], kernel="thin_plate_spline", degree=1)


def _fit_kind(kind: str, points: np.ndarray, scale: float) -> FocalSurfaceFit:
    x, y, z = points[:, 0] / scale, points[:, 1] / scale, points[:, 2]
    if kind == "thin_plate":
        fit = FocalSurfaceFit(kind, points, [], scale)
        fit._rbf = _thin_plate(points, scale)
    else:
        a = _design(kind, x, y)
        coefficients, *_ = np.linalg.lstsq(a, z, rcond=None)
        fit = FocalSurfaceFit(kind, points, [float(c) for c in coefficients], scale)
    fit.rms_um = float(np.sqrt(np.mean((fit.predict(points[:, 0], points[:, 1]) - z) ** 2)))
    return fit


def _leave_one_out(kind: str, points: np.ndarray, scale: float) -> float:
    if len(points) <= MIN_POINTS[kind]:
        return float("nan")
    errors = []
    for i in range(len(points)):
        rest = np.delete(points, i, axis=0)
        if not _well_posed(kind, rest, scale):
            return float("nan")
        fit = _fit_kind(kind, rest, scale)
        errors.append(fit.predict(points[i, 0], points[i, 1]) - points[i, 2])
    return float(np.sqrt(np.mean(np.square(errors))))


def _well_posed(kind: str, points: np.ndarray, scale: float) -> bool:
    if len(points) < MIN_POINTS[kind]:
        return False
    x, y = points[:, 0] / scale, points[:, 1] / scale
    columns = _design("plane" if kind == "thin_plate" else kind, x, y)
    return int(np.linalg.matrix_rank(columns, tol=1e-9)) == columns.shape[1]


def fit_focal_surface(
    x: Sequence[float], y: Sequence[float], z: Sequence[float], kind: str = "auto"
) -> FocalSurfaceFit:
    """Fit ``z(x, y)`` (µm) through focus measured at points (x, y).

    Parameters
    ----------
    x, y, z : sequences of float
        Stage positions (µm) and the focus found there (µm); NaN z (no focus
        found at that point) are left out.
    kind : str
        ``"plane"``, ``"quadratic"``, ``"thin_plate"`` or ``"auto"`` (the
        allowed kind with the smallest leave-one-out error).

    Raises
    ------
    ValueError
        Too few usable points for the kind, or points on one line.
    """
    points = np.column_stack([np.asarray(x, float), np.asarray(y, float), np.asarray(z, float)])
    points = points[np.isfinite(points).all(axis=1)]
    if kind != "auto" and kind not in SURFACE_KINDS:
        raise ValueError(
            f"Unknown surface kind {kind!r}; choose one of: auto, {', '.join(SURFACE_KINDS)}."
        )
    n = len(points)
    spread = np.ptp(points[:, :2], axis=0) if n else np.zeros(2)
    scale = float(max(spread.max() / 2, 1.0)) if n else 1.0
    if kind == "auto":
        candidates = [k for k in SURFACE_KINDS if _well_posed(k, points, scale)]
        if not candidates:
            raise ValueError(
                f"A focal surface needs at least {MIN_POINTS['plane']} points with focus found, "
                f"not all on one line; got {n}: measure focus at more points."
            )
        scored = [(_leave_one_out(k, points, scale), k) for k in candidates]
        finite = [(e, k) for e, k in scored if np.isfinite(e)]
        chosen = min(finite)[1] if finite else candidates[0]
    else:
        if not _well_posed(kind, points, scale):
            raise ValueError(
                f"A {kind} focal surface needs at least {MIN_POINTS[kind]} points with focus "
                f"found, not all on one line; got {n}: measure focus at more points or "
                "choose a simpler kind."
            )
        chosen = kind
    fit = _fit_kind(chosen, points, scale)
    fit.loo_rms_um = _leave_one_out(chosen, points, scale)
    return fit
