"""PNG figures: focus curves, image series, predictions and drift trajectories."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "plot_calibration",
    "plot_focus_curve",
    "plot_focus_map",
    "plot_image_series",
    "plot_predictions",
    "plot_trajectory",
]


def _figure(**kwargs):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt, plt.figure(**kwargs)


def _save(plt, fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_focus_curve(
    z: Sequence[float],
    values: Sequence[float],
    path: str | Path,
    *,
    best_z: float | None = None,
    true_focus: float | None = None,
    fit: tuple[float, float, float, float] | None = None,
    note: str | None = None,
    metric: str = "brenner",
    title: str = "Focus curve",
) -> Path:
    """Focus measure against Z, with the fitted best focus (and the truth, in simulation).

    ``fit`` is the Gaussian peak fit ``(amplitude, center, sigma, offset)`` of a
    :class:`~autofocus_plans.PeakFit` (drawn when all four are finite); ``note``
    is written across the plot, e.g. why no focus was found.
    """
    plt, fig = _figure(figsize=(6, 4))
    ax = fig.add_subplot()
    z, values = np.asarray(z, dtype=float), np.asarray(values, dtype=float)
    order = np.argsort(z)
    ax.plot(z[order], values[order], "o-", ms=4, label=metric)
    if fit is not None and len(z) and all(np.isfinite(fit)):
        amplitude, center, sigma, offset = fit
        dense = np.linspace(z.min(), z.max(), 400)
        curve = amplitude * np.exp(-0.5 * ((dense - center) / sigma) ** 2) + offset
        ax.plot(dense, curve, "-", color="C2", lw=1, label=f"Gaussian fit (σ = {sigma:.2f} µm)")
    if best_z is not None:
        ax.axvline(best_z, color="C1", label=f"best z = {best_z:.2f} µm")
    if true_focus is not None:
        ax.axvline(true_focus, color="k", ls="--", lw=1, label=f"true focus = {true_focus:.2f} µm")
    if note:
        import textwrap

        ax.text(
            0.5,
            0.5,
            textwrap.fill(note, 50),
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=9,
            color="C3",
            bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "C3"},
        )
    ax.set_xlabel("z (µm)")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_image_series(
    images: Sequence[np.ndarray], labels: Sequence[str], path: str | Path, *, title: str = ""
) -> Path:
    """A row of frames (e.g. a defocus series) with one label each."""
    plt, fig = _figure(figsize=(2.2 * len(images), 2.6))
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        ax = fig.add_subplot(1, len(images), i + 1)
        ax.imshow(image, cmap="gray")
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title)
    return _save(plt, fig, path)


def plot_predictions(
    true_um: Sequence[float], predicted_um: Sequence[float], path: str | Path, *, title: str = ""
) -> Path:
    """Predicted against true defocus, and the error histogram."""
    true_um, predicted_um = np.asarray(true_um), np.asarray(predicted_um)
    plt, fig = _figure(figsize=(9, 4))
    ax = fig.add_subplot(1, 2, 1)
    ax.plot(true_um, predicted_um, ".", ms=4, alpha=0.7)
    lim = [min(true_um.min(), predicted_um.min()), max(true_um.max(), predicted_um.max())]
    ax.plot(lim, lim, "k--", lw=1)
    ax.set_xlabel("true defocus (µm)")
    ax.set_ylabel("predicted defocus (µm)")
    ax.set_title(title or "Predicted vs true")
    ax = fig.add_subplot(1, 2, 2)
    ax.hist(predicted_um - true_um, bins=30)
    ax.set_xlabel("error (µm)")
    ax.set_ylabel("count")
    return _save(plt, fig, path)


def plot_calibration(
    sets: dict[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    *,
    dof_um: float,
    coverage: float,
    title: str = "",
) -> Path:
    """Each prediction's stated interval half-width against its actual error (DOF).

    ``sets`` maps a label to (half-widths µm, absolute errors µm). A calibrated
    interval keeps ``coverage`` of the points on or below the diagonal.
    """
    plt, fig = _figure(figsize=(5.5, 4.8))
    ax = fig.add_subplot(1, 1, 1)
    top = 0.0
    for label, (half_width, error) in sets.items():
        w, e = np.asarray(half_width) / dof_um, np.asarray(error) / dof_um
        ax.plot(w, e, ".", ms=5, alpha=0.7, label=f"{label}: {np.mean(e <= w):.0%} covered")
        top = max(top, float(np.max(w, initial=0)), float(np.max(e, initial=0)))
    ax.plot([0, top], [0, top], "k--", lw=1, label="error = half-width")
    ax.set_xlabel("interval half-width (DOF)")
    ax.set_ylabel("|predicted − true defocus| (DOF)")
    ax.set_title(title or f"Stated {coverage:.0%} intervals against actual errors")
    ax.legend(fontsize=7)
    return _save(plt, fig, path)


def plot_trajectory(
    t_s: Sequence[float],
    stage_z: Sequence[float],
    true_focus: Sequence[float] | None,
    path: str | Path,
    *,
    uncorrected: Sequence[float] | None = None,
    title: str = "Focus tracking",
) -> Path:
    """Stage position (and, in simulation, the drifting true focus) over time."""
    plt, fig = _figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.plot(t_s, stage_z, "o-", ms=3, label="stage z (corrected)")
    if true_focus is not None:
        ax.plot(t_s, true_focus, "k--", lw=1, label="true focus")
    if uncorrected is not None:
        ax.plot(t_s, uncorrected, ":", color="C3", label="without correction")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("z (µm)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_focus_map(
    focus_map: dict,
    points: Sequence[dict[str, float]],
    path: str | Path,
    *,
    extent: tuple[float, float, float, float] | None = None,
    title: str = "focus map",
) -> Path:
    """The fitted focal surface as a colour map with the measured points (refusals as crosses).

    ``focus_map`` is a :meth:`~models.focal_surface.FocalSurfaceFit.to_dict`
    description (or None: only the points are drawn); ``points`` carry
    ``x``, ``y``, ``z`` and ``found``.
    """
    from models.focal_surface import FocalSurfaceFit

    xs = np.array([p["x"] for p in points], float)
    ys = np.array([p["y"] for p in points], float)
    zs = np.array([p["z"] for p in points], float)
    found = np.array([bool(p["found"]) for p in points])
    if extent is None:
        pad = 0.1 * max(np.ptp(xs), np.ptp(ys), 1.0)
        extent = (xs.min() - pad, xs.max() + pad, ys.min() - pad, ys.max() + pad)
    plt, fig = _figure(figsize=(5.4, 4.4))
    ax = fig.add_subplot(1, 1, 1)
    if focus_map:
        fit = FocalSurfaceFit.from_dict(focus_map)
        gx, gy = np.meshgrid(
            np.linspace(extent[0], extent[1], 120), np.linspace(extent[2], extent[3], 120)
        )
        surface = fit.predict(gx, gy)
        image = ax.imshow(surface, origin="lower", extent=extent, cmap="viridis", aspect="equal")
        ax.contour(gx, gy, surface, colors="white", linewidths=0.6, alpha=0.7)
        fig.colorbar(image, ax=ax, label="focus z (µm)")
        title += f" ({fit.kind}, leave-one-out error {fit.loo_rms_um:.2f} µm)"
    ax.scatter(xs[found], ys[found], c="white", edgecolors="black", s=36, label="focus found")
    if (~found).any():
        ax.scatter(xs[~found], ys[~found], marker="x", c="red", s=40, label="no focus (left out)")
    for x, y, z, ok in zip(xs, ys, zs, found, strict=True):
        if ok:
            ax.annotate(
                f"{z:.1f}",
                (x, y),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
                color="white",
            )
    ax.set_xlabel("x (µm)")
    ax.set_ylabel("y (µm)")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=7)
    return _save(plt, fig, path)
