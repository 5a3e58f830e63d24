"""Scanning: fly sweep vs step sweep vs fast_focus, and a tile scan guided by a focus map.

Realistic latencies (``time_scale=1``): 10 ms exposures + 5 ms readout, Z stage
at 500 µm/s with 20 ms settle, XY stage at 2000 µm/s with 30 ms settle. Times
are reported twice: the wall clock of ``RE(plan)``, and the wall clock less
the time the simulator spent computing frames (``model.render_seconds``),
which is what the same plan would take with a real camera (which delivers a
frame as soon as it is read out). Ratios are taken within this run.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np
from bluesky import RunEngine

import devices

from ._common import table

SEED = 20261127
METHODS = ("step", "fast", "fly", "fly_early")
LABELS = {
    "step": "`brenner_sweep(..., -5.5*dof, 5.5*dof, 23)`",
    "fast": "`fast_focus(..., -5.5*dof, 5.5*dof)`",
    "fly": "`fly_sweep(..., -5.5*dof, 5.5*dof)`",
    "fly_early": "`fly_sweep(..., early_stop=True)`",
}


def _plan(method: str, mic: devices.SimMicroscope):
    from autofocus_plans import brenner_sweep, fast_focus, fly_sweep

    dof = mic.depth_of_field_um
    args = (mic.camera, mic.z, mic.led, -5.5 * dof, 5.5 * dof)
    if method == "step":
        return brenner_sweep(*args, 23)
    if method == "fast":
        return fast_focus(*args)
    return fly_sweep(*args, early_stop=method == "fly_early")


def _timed(RE: RunEngine, mic: devices.SimMicroscope, plan) -> tuple[object, float, float]:
    """(plan result or None on refusal, wall s, wall s less the simulator's frame time)."""
    from autofocus_plans import NoFocusFound

    def simulated() -> float:
        return mic.model.render_seconds + mic.camera.stream_store_seconds

    before = simulated()
    t0 = time.perf_counter()
    try:
        result = RE(plan).plan_result
    except NoFocusFound:
        result = None
    wall = time.perf_counter() - t0
    return result, wall, wall - (simulated() - before)


def time_to_focus(n: int, rng: np.random.Generator) -> str:
    RE = RunEngine({}, call_returns_result=True)
    out: dict[str, list] = {m: [] for m in METHODS}
    for _ in range(n):
        family = str(rng.choice(devices.SAMPLE_FAMILIES))
        seed, focus = int(rng.integers(0, 2**31)), float(rng.uniform(-100, 100))
        offset = float(rng.uniform(-5, 5))
        mic = devices.SimMicroscope(family, seed=seed, focus_um=focus, time_scale=1)
        dof = mic.depth_of_field_um
        for method in METHODS:
            mic.z.set(mic.true_focus() + offset * dof).wait(timeout=60)
            result, wall, instrument = _timed(RE, mic, _plan(method, mic))
            if result is None:
                out[method].append(None)
                continue
            error = abs(result.best_z - mic.true_focus()) / dof
            out[method].append((error, result.exposures, wall, instrument))
    medians = {}
    for method in METHODS:
        done = [r for r in out[method] if r is not None]
        if done:
            medians[method] = (np.median([r[2] for r in done]), np.median([r[3] for r in done]))
    step_wall, step_instrument = medians.get("step", (np.nan, np.nan))
    rows = []
    for method in METHODS:
        done = [r for r in out[method] if r is not None]
        if not done:
            rows.append([LABELS[method], f"0/{n}", *["–"] * 8])
            continue
        errors = np.array([r[0] for r in done])
        wall, instrument = medians[method]
        rows.append(
            [
                LABELS[method],
                f"{len(done)}/{n}",
                f"{np.median(errors):.3f}",
                f"{np.percentile(errors, 95):.3f}",
                f"{np.mean([r[1] for r in done]):.1f}",
                f"{wall:.2f}",
                f"{wall / step_wall:.2f}",
                f"{instrument:.2f}",
                f"{instrument / step_instrument:.2f}",
            ]
        )
    headers = [
        "method",
        "found",
        "error DOF median",
        "p95",
        "frames mean",
        "wall s (median)",
        "wall vs step",
        "wall − simulation s",
        "vs step",
    ]
    return (
        f"{n} random trials (numpy seed {SEED}): family from `devices.SAMPLE_FAMILIES`, random "
        "sample seed, focus at U(-100, 100) µm, the stage started U(-5, 5) DOF away; every "
        "method on the same trial; default 256x256 camera, brightfield, 20x/0.4 (DOF 4.12 µm). "
        "Fly sweep: speed from `fly_speed` (blur ≤ 0.5 DOF per exposure, frames ≤ 0.75 DOF "
        "apart). `early_stop=True` judges the curve during the sweep and stops once it shows an "
        "accepted peak (the range beyond is not searched); the first such trial computes its "
        "looks' thresholds (cached after).\n\n" + table(headers, rows)
    )


def _slide_scope() -> devices.SimMicroscope:
    surface = devices.FocalSurface(
        tilt_x=0.01,
        tilt_y=-0.006,
        curvature_per_um=6e-6,
        bump_um=1.5,
        bump_width_um=250.0,
        extent_um=500.0,
        seed=7,
    )
    return devices.SimMicroscope(
        devices.SlideSample("tissue", 11),
        focus_um=20.0,
        surface=surface,
        z_start_um=20.0,
        time_scale=1,
    )


def tile_scanning(tiles_per_side: int, map_points_per_side: int) -> str:
    from autofocus_plans import NoFocusFound, fast_focus, focus_map, grid_points, tile_scan

    RE = RunEngine({}, call_returns_result=True)
    mic = _slide_scope()
    dof = mic.depth_of_field_um
    field_um = mic.camera.pixel_size_um.get() * mic.model.sensor.shape[1]
    half = field_um * (tiles_per_side - 1) / 2
    span = (-half, half)
    grid = (tiles_per_side, tiles_per_side)
    tiles = len(grid_points(span, span, grid))

    def within(visited) -> tuple[float, float]:
        errors = np.array([abs(t["z"] - mic.true_focus_at(t["x"], t["y"])) / dof for t in visited])
        return float(np.mean(errors <= 0.5)), float(np.max(errors))

    mapped, map_wall, map_instrument = _timed(
        RE,
        mic,
        focus_map(
            mic.camera,
            mic.z,
            mic.led,
            mic.xy,
            x_range=span,
            y_range=span,
            grid=(map_points_per_side, map_points_per_side),
        ),
    )
    scanned, scan_wall, scan_instrument = _timed(
        RE,
        mic,
        tile_scan(
            mic.camera,
            mic.z,
            mic.led,
            mic.xy,
            mapped.fit.to_dict(),
            x_range=span,
            y_range=span,
            grid=grid,
        ),
    )
    fraction, worst = within(scanned.tiles)

    def every_tile():
        import bluesky.plan_stubs as bps

        visited = []
        for x, y in grid_points(span, span, grid):
            yield from bps.mv(mic.xy.x, x, mic.xy.y, y)
            # a refusal leaves the stage where it was: that tile is then off
            with contextlib.suppress(NoFocusFound):
                yield from fast_focus(mic.camera, mic.z, mic.led, -5.5 * dof, 5.5 * dof)
            yield from bps.trigger(mic.camera, wait=True)  # the tile image
            visited.append({"x": x, "y": y, "z": float(mic.z.position)})
        return visited

    mic.z.set(20.0).wait(timeout=60)
    visited, all_wall, all_instrument = _timed(RE, mic, every_tile())
    every_fraction, every_worst = within(visited)
    points = len(mapped.points)
    rows = [
        [
            f"`focus_map` ({points} points, `fast_focus`, {mapped.fit.kind}) + `tile_scan`",
            f"{fraction:.0%}",
            f"{worst:.2f}",
            f"{points} ({points / tiles:.0%})",
            f"{map_wall + scan_wall:.1f}",
            f"{(map_wall + scan_wall) / all_wall:.2f}",
            f"{map_instrument + scan_instrument:.1f}",
            f"{(map_instrument + scan_instrument) / all_instrument:.2f}",
        ],
        [
            "`fast_focus` on every tile",
            f"{every_fraction:.0%}",
            f"{every_worst:.2f}",
            f"{tiles} (100%)",
            f"{all_wall:.1f}",
            "1.00",
            f"{all_instrument:.1f}",
            "1.00",
        ],
    ]
    headers = [
        "method",
        "tiles within 0.5 DOF",
        "worst DOF",
        "focus searches (share of tiles)",
        "wall s",
        "vs every tile",
        "wall − simulation s",
        "vs every tile",
    ]
    surface = mic.surface
    zs = [surface(x, y) for x, y in grid_points(span, span, grid)]
    return (
        f"{tiles} tiles ({tiles_per_side}x{tiles_per_side}, adjacent {field_um:.0f} µm fields) "
        f"on a `SlideSample('tissue')` whose focal surface is tilted (0.01, -0.006), curved "
        f"(6e-6 /µm) and bumpy (±1.5 µm over 250 µm): the focus varies by "
        f"{np.ptp(zs):.1f} µm ({np.ptp(zs) / dof:.1f} DOF) over the scan. Map: "
        f"leave-one-out error {mapped.fit.loo_rms_um:.2f} µm. Error = |Z of the tile image − "
        "true focus at the tile centre|.\n\n" + table(headers, rows)
    )


def run(quick: bool) -> str:
    rng = np.random.default_rng(SEED)
    parts = [
        "## Scanning: fly sweep, focus map and tile scan",
        "",
        __doc__.split("\n\n", 1)[1].strip(),
        "",
        "### Time to focus",
        "",
        time_to_focus(2 if quick else 10, rng),
        "",
        "### Tile scan guided by a focus map",
        "",
        tile_scanning(3 if quick else 10, 2 if quick else 3),
    ]
    return "\n".join(parts)
