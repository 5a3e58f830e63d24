"""Autofocus accuracy, exposures and time to focus: full Brenner sweep vs fast searches."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from bluesky import RunEngine

import devices

from ._common import table

SEED = 20240601
METHODS = ("sweep", "coarse_to_fine", "golden")
LABELS = {
    "sweep": "`brenner_sweep(..., -5.5*dof, 5.5*dof, 23)`",
    "coarse_to_fine": "`fast_focus(..., -5.5*dof, 5.5*dof, tolerance_um=0.5)`",
    "golden": "`fast_focus(..., method='golden')`",
}


@dataclass
class Trial:
    family: str
    seed: int
    focus_um: float
    offset_dof: float


def trials(rng: np.random.Generator, n: int) -> Iterator[Trial]:
    for _ in range(n):
        yield Trial(
            family=str(rng.choice(devices.SAMPLE_FAMILIES)),
            seed=int(rng.integers(0, 2**31)),
            focus_um=float(rng.uniform(-100, 100)),
            offset_dof=float(rng.uniform(-5, 5)),
        )


def plan_for(method: str, mic: devices.SimMicroscope) -> Callable[[], object]:
    from autofocus_plans import brenner_sweep, fast_focus

    dof = mic.depth_of_field_um
    args = (mic.camera, mic.z, mic.led, -5.5 * dof, 5.5 * dof)
    if method == "sweep":
        return lambda: brenner_sweep(*args, 23)
    return lambda: fast_focus(*args, tolerance_um=0.5, method=method)


def focus_once(RE: RunEngine, mic: devices.SimMicroscope, trial: Trial, method: str):
    """Start at the trial's offset, focus with ``method``; (error µm, exposures, wall s)."""
    from autofocus_plans import NoFocusFound

    mic.z.set(mic.true_focus() + trial.offset_dof * mic.depth_of_field_um).wait(timeout=60)
    make = plan_for(method, mic)
    t0 = time.perf_counter()
    try:
        result = RE(make()).plan_result
    except NoFocusFound:
        return None
    return result.best_z - mic.true_focus(), result.exposures, time.perf_counter() - t0


def accuracy(n: int, rng: np.random.Generator) -> str:
    RE = RunEngine({}, call_returns_result=True)
    out: dict[str, list] = {m: [] for m in METHODS}
    dofs = []
    for trial in trials(rng, n):
        mic = devices.SimMicroscope(
            trial.family, seed=trial.seed, focus_um=trial.focus_um, time_scale=0
        )
        dofs.append(mic.depth_of_field_um)
        for method in METHODS:
            r = focus_once(RE, mic, trial, method)
            out[method].append(None if r is None else (r[0], r[0] / dofs[-1], r[1]))
    rows = []
    for method in METHODS:
        ok = [r for r in out[method] if r is not None]
        err = np.abs([r[0] for r in ok]) if ok else np.array([np.nan])
        err_dof = np.abs([r[1] for r in ok]) if ok else np.array([np.nan])
        exp = np.array([r[2] for r in ok]) if ok else np.array([np.nan])
        rows.append(
            [
                LABELS[method],
                f"{len(ok)}/{n}",
                f"{np.median(err):.3f}",
                f"{np.percentile(err, 95):.3f}",
                f"{err.max():.3f}",
                f"{np.median(err_dof):.3f}",
                f"{np.percentile(err_dof, 95):.3f}",
                f"{err_dof.max():.3f}",
                f"{exp.mean():.1f}",
                f"{exp.max():.0f}",
                f"{np.mean(err_dof <= 0.1) * len(ok) / n:.0%}",
            ]
        )
    headers = [
        "method",
        "found",
        "error µm median",
        "p95",
        "max",
        "error DOF median",
        "p95",
        "max",
        "exposures mean",
        "max",
        "within 0.1 DOF",
    ]
    note = f"DOF of the default 20x/0.4 objective: {np.median(dofs):.2f} µm."
    return table(headers, rows) + "\n\n" + note


def timing(n: int, rng: np.random.Generator) -> str:
    RE = RunEngine({}, call_returns_result=True)
    walls: dict[str, list[float]] = {m: [] for m in METHODS}
    exposures: dict[str, list[int]] = {m: [] for m in METHODS}
    for trial in trials(rng, n):
        mic = devices.SimMicroscope(
            trial.family, seed=trial.seed, focus_um=trial.focus_um, time_scale=1
        )
        for method in METHODS:
            r = focus_once(RE, mic, trial, method)
            if r is not None:
                walls[method].append(r[2])
                exposures[method].append(r[1])
    sweep = np.median(walls["sweep"]) if walls["sweep"] else np.nan
    rows = []
    for method in METHODS:
        med = np.median(walls[method]) if walls[method] else np.nan
        exp = np.mean(exposures[method]) if exposures[method] else np.nan
        rows.append(
            [
                LABELS[method],
                f"{len(walls[method])}/{n}",
                f"{exp:.1f}",
                f"{med:.2f}",
                f"{med / sweep:.2f}",
            ]
        )
    return table(
        ["method", "found", "exposures mean", "wall s per focus (median)", "vs full sweep"], rows
    )


def run(quick: bool) -> str:
    n_acc, n_time = (4, 1) if quick else (50, 5)
    rng = np.random.default_rng(SEED)
    acc_table = accuracy(n_acc, rng)
    time_table = timing(n_time, rng)
    return "\n".join(
        [
            "## Autofocus: full sweep vs fast searches",
            "",
            f"{n_acc} random trials (numpy seed {SEED}), each method on the same trial: "
            "family drawn from `devices.SAMPLE_FAMILIES`, random sample seed, "
            "`SimMicroscope(family, seed=seed, focus_um=U(-100, 100), time_scale=0)` "
            "(256x256, brightfield), stage started at `true_focus() + U(-5, 5)*dof`; plans run "
            "with `RunEngine({}, call_returns_result=True)`; error = `|best_z − true_focus()|` "
            "(absolute value; in µm and in units of the depth of field). "
            "Statistics are over the runs that found focus (`NoFocusFound` counts as not "
            "found; the within-0.1-DOF fraction is over all trials).",
            "",
            acc_table,
            "",
            "### Time to focus with realistic latencies",
            "",
            f"{n_time} further random trial(s) per method with `time_scale=1`: 10 ms exposure + "
            "5 ms readout per frame, stage at 500 µm/s with 20 ms settle, plus the simulation "
            "itself; wall-clock seconds of `RE(plan)`.",
            "",
            time_table,
            "",
        ]
    )
