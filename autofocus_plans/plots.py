"""PNG figures: focus curves, image series, predictions and drift trajectories."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["plot_focus_curve", "plot_image_series", "plot_predictions", "plot_trajectory"]


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
