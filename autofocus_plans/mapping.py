"""Focus over a whole slide: a focus map from a few XY points, and a tile scan that follows it.

``focus_map`` measures focus at a sparse set of XY points with any focus
plan (each point is its own run, as if the user had focused there by hand),
fits a focal surface (:func:`models.focal_surface.fit_focal_surface`) and
records the points and the fit as a run of its own (``plan_name
"focus_map"``; the fit in its start document under ``focus_map``).
``tile_scan`` then visits a grid of tiles at the Z the map predicts,
optionally correcting each tile with one learned-focus shot.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
from bluesky.protocols import Movable, Readable

from models.focal_surface import FocalSurfaceFit, fit_focal_surface

from .brenner import brenner_sweep, fast_focus
from .fly import fly_sweep
from .results import NoFocusFound, NumbersReading, optics_metadata
from .stubs import approach, depth_of_field_from_devices, stage_field, stage_limits

__all__ = ["MAP_METHODS", "FocusMap", "TileScan", "focus_map", "grid_points", "tile_scan"]

MAP_METHODS = ("fast_focus", "brenner_sweep", "fly_sweep", "cnn_focus")


def grid_points(
    x_range: Sequence[float], y_range: Sequence[float], grid: Sequence[int]
) -> list[tuple[float, float]]:
    """Centres of a ``grid`` = (nx, ny) of points spanning the ranges, in snake order."""
    nx, ny = (int(n) for n in grid)
    if nx < 1 or ny < 1:
        raise ValueError(f"A grid needs at least one point a side, got {tuple(grid)}.")
    xs = np.linspace(*x_range, nx) if nx > 1 else np.array([np.mean(x_range)])
    ys = np.linspace(*y_range, ny) if ny > 1 else np.array([np.mean(y_range)])
    points = []
    for j, y in enumerate(ys):  # boustrophedon: the stage never crosses the slide empty
        row = xs if j % 2 == 0 else xs[::-1]
        points.extend((float(x), float(y)) for x in row)
    return points


@dataclass
class FocusMap:
    """What :func:`focus_map` measured and fitted (``fit`` is None when it could not fit)."""

    points: list[dict[str, float]]
    fit: FocalSurfaceFit | None
    run_uid: str = ""
    point_run_uids: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0


@dataclass
class TileScan:
    """The tiles :func:`tile_scan` visited: where, at which Z, and the learned corrections."""

    tiles: list[dict[str, float]]
    run_uid: str = ""
    elapsed_s: float = 0.0


def _axes(xy) -> tuple[Any, Any]:
    try:
        return xy.x, xy.y
    except AttributeError:
        raise TypeError(
            f"{getattr(xy, 'name', xy)!r} is not an XY stage: it needs .x and .y axes."
        ) from None


def _focus_at_point(method, camera, stage, led, half_range, model, approach_um):
    if method == "fast_focus":
        return (yield from fast_focus(camera, stage, led, -half_range, half_range))
    if method == "brenner_sweep":
        return (yield from brenner_sweep(camera, stage, led, -half_range, half_range, 23))
    if method == "fly_sweep":
        return (yield from fly_sweep(camera, stage, led, -half_range, half_range))
    from .learned import cnn_focus

    return (yield from cnn_focus(camera, stage, led, model, approach_um=approach_um))


def focus_map(
    camera: Readable,
    stage: Movable,
    led: Movable,
    xy: Movable,
    points: Sequence[Sequence[float]] | None = None,
    *,
    x_range: Sequence[float] = (-400.0, 400.0),
    y_range: Sequence[float] = (-400.0, 400.0),
    grid: Sequence[int] = (3, 3),
    method: str = "fast_focus",
    model: str = "",
    search_half_range_dof: float = 5.5,
    surface: str = "auto",
    approach_um: float = 5.0,
    md: dict | None = None,
):
    """Measure focus at a few XY points and fit a focal surface through them.

    Each point is focused by ``method`` in its own run (a refusal there is
    recorded and the point left out of the fit). Each search starts at the Z
    the points measured so far predict. The map itself is one more run: one
    event per point in ``primary`` (x, y, focus found there, the fit's
    prediction) and the fit in the start document (``start["focus_map"]``,
    see :meth:`models.focal_surface.FocalSurfaceFit.from_dict`). The XY and Z
    stages are returned to where they started.

    Parameters
    ----------
    camera, stage, led : devices
        As for the focus plans.
    xy : Movable
        XY stage with ``x`` and ``y`` axes (µm).
    points : list of [x, y], optional
        Where to measure; default a ``grid`` over ``x_range`` × ``y_range``.
    x_range, y_range : (float, float)
        Extent of the default grid (µm, stage coordinates).
    grid : (int, int)
        Points along x and y of the default grid.
    method : str
        ``"fast_focus"``, ``"brenner_sweep"``, ``"fly_sweep"`` or ``"cnn_focus"``.
    model : str
        Model checkpoint for ``cnn_focus``.
    search_half_range_dof : float
        Half the search range at each point, in depths of field.
    surface : str
        ``"auto"``, ``"plane"``, ``"quadratic"`` or ``"thin_plate"``.
    approach_um : float
        Overshoot below a target before the final upward approach.
    md : dict, optional
        Metadata merged into the map run's start document.

    Returns
    -------
    FocusMap

    Raises
    ------
    ValueError
        Too few points with focus found to fit the surface (the map run is
        recorded all the same).
    """
    if method not in MAP_METHODS:
        raise ValueError(
            f"Unknown focus method {method!r}; choose one of: {', '.join(MAP_METHODS)}."
        )
    if method == "cnn_focus" and not model:
        raise ValueError("method='cnn_focus' needs model='path/to/model.safetensors'.")
    x_axis, y_axis = _axes(xy)
    where = (
        [tuple(map(float, p)) for p in points] if points else grid_points(x_range, y_range, grid)
    )
    if any(len(p) != 2 for p in where):
        raise ValueError("Each focus-map point must be [x, y] in µm.")
    dof = depth_of_field_from_devices(camera, led)
    half_range = search_half_range_dof * dof
    x0, y0, z0 = float(x_axis.position), float(y_axis.position), float(stage.position)
    t0 = time.monotonic()
    measured: list[dict[str, float]] = []
    uids: list[str] = []
    outcome: dict[str, Any] = {}

    def guess(x: float, y: float) -> float | None:
        found = [(p["x"], p["y"], p["z"]) for p in measured if p["found"]]
        if len(found) >= 3:
            try:
                return float(
                    fit_focal_surface(*zip(*found, strict=True), kind="plane").predict(x, y)
                )
            except ValueError:  # on one line so far
                pass
        return float(np.mean([f[2] for f in found])) if found else None

    def measure():
        for x, y in where:
            yield from bps.checkpoint()
            yield from bps.mv(x_axis, x, y_axis, y)
            start = guess(x, y)
            if start is not None:
                yield from approach(stage, start, approach_um)
            try:
                result = yield from _focus_at_point(
                    method, camera, stage, led, half_range, model, approach_um
                )
                z, found, uid = float(result.best_z), True, result.run_uid
            except NoFocusFound as refusal:
                z, found = math.nan, False
                uid = refusal.result.run_uid if refusal.result is not None else ""
            uids.append(uid)
            measured.append({"x": x, "y": y, "z": z, "found": found})
        try:
            fit = fit_focal_surface(
                [p["x"] for p in measured],
                [p["y"] for p in measured],
                [p["z"] for p in measured],
                kind=surface,
            )
        except ValueError as err:
            fit, outcome["error"] = None, err
        outcome["fit"] = fit
        yield from _record_map(fit)

    def _record_map(fit):
        _md = {
            "plan_name": "focus_map",
            "method": method,
            "purpose": "focus_map",
            "plan_args": {"method": method, "surface": surface, "points": [list(p) for p in where]},
            "focus_map": fit.to_dict() if fit is not None else None,
            "focus_map_kind": fit.kind if fit is not None else "none",
            "point_run_uids": uids,
            "depth_of_field_um": dof,
            "optics": optics_metadata(camera, led),
            "motors": [x_axis.name, y_axis.name],
            "hints": {"dimensions": [([x_axis.name], "primary")]},
        }
        _md.update(md or {})
        reading = NumbersReading("focus_point", {})

        @bpp.run_decorator(md=_md)
        def record():
            for p in measured:
                predicted = float(fit.predict(p["x"], p["y"])) if fit is not None else math.nan
                values = {
                    x_axis.name: p["x"],
                    y_axis.name: p["y"],
                    "focus_z": p["z"],
                    "found": int(p["found"]),
                    "surface_z": predicted,
                    "residual_um": p["z"] - predicted,
                }
                yield from bps.create("primary")
                yield from bps.read(reading.update(values))
                yield from bps.save()

        outcome["uid"] = yield from record()

    def back_to_start():
        yield from bps.mv(x_axis, x0, y_axis, y0)
        yield from approach(stage, z0, approach_um)

    yield from bpp.finalize_wrapper(measure(), back_to_start())
    result = FocusMap(
        measured, outcome.get("fit"), outcome.get("uid") or "", uids, time.monotonic() - t0
    )
    if outcome.get("error") is not None:
        raise ValueError(
            f"{outcome['error']} The points were recorded in run {result.run_uid[:8]}."
        )
    return result


def tile_scan(
    camera: Readable,
    stage: Movable,
    led: Movable,
    xy: Movable,
    focus_map: dict | None = None,
    *,
    x_range: Sequence[float] = (-400.0, 400.0),
    y_range: Sequence[float] = (-400.0, 400.0),
    grid: Sequence[int] = (10, 10),
    illumination: str = "brightfield",
    model: str = "",
    off_axis_pattern: str = "off_axis",
    off_axis_exposure_s: float = 0.25,
    approach_um: float = 5.0,
    md: dict | None = None,
):
    """Image a grid of tiles, each at the Z the focus map predicts there.

    One run; each tile is one event of ``primary`` (image in the catalogue,
    x, y, Z, the map's prediction ``surface_z``, ``shot`` = 1). With
    ``model``, each tile first takes one off-axis shot (an event with
    ``shot`` = 0) and moves by the negative of the defocus it predicts when
    that lies inside the model's trained range (``correction_um``).

    Parameters
    ----------
    camera, stage, led : devices
        As for the focus plans.
    xy : Movable
        XY stage with ``x`` and ``y`` axes (µm).
    focus_map : dict
        A focal surface: ``FocusMap.fit.to_dict()``, or a focus_map run's
        ``start["focus_map"]``.
    x_range, y_range, grid :
        Tile centres: a (nx, ny) grid spanning the ranges, visited in snake order.
    illumination : str
        LED pattern of the tile images.
    model : str
        Optional defocus model checkpoint for one correcting shot per tile.
    off_axis_pattern, off_axis_exposure_s :
        Illumination and exposure of the correcting shot (as the model was trained).
    approach_um : float
        Overshoot below a target before the final upward approach.
    md : dict, optional
        Metadata merged into the start document.

    Returns
    -------
    TileScan
    """
    if focus_map is None:
        raise ValueError(
            "tile_scan needs a focus_map: run focus_map first and pass its fit "
            "(result.fit.to_dict(), or catalog[uid].start['focus_map'])."
        )
    fit = (
        focus_map
        if isinstance(focus_map, FocalSurfaceFit)
        else FocalSurfaceFit.from_dict(focus_map)
    )
    x_axis, y_axis = _axes(xy)
    tiles = grid_points(x_range, y_range, grid)
    learned = None
    if model:
        from .learned import _resolve_model, check_model_optics

        learned = _resolve_model(model)
        check_model_optics(learned, camera, led, off_axis_pattern)
    led_pattern, exposure = led.pattern.get(), float(camera.exposure_time.get())
    x0, y0, z0 = float(x_axis.position), float(y_axis.position), float(stage.position)
    stage_low = stage_limits(stage)[0]
    visited: list[dict[str, float]] = []
    t0 = time.monotonic()
    _md = {
        "plan_name": "tile_scan",
        "purpose": "tile_scan",
        "plan_args": {
            "x_range": list(x_range),
            "y_range": list(y_range),
            "grid": list(grid),
            "model": model,
        },
        "focus_map": fit.to_dict(),
        "num_points": len(tiles),
        "illumination": illumination,
        "optics": optics_metadata(camera, led),
        "detectors": [camera.name],
        "motors": [x_axis.name, y_axis.name, stage_field(stage)],
        "hints": {"dimensions": [([x_axis.name], "primary")]},
    }
    _md.update(md or {})
    tile_reading = NumbersReading("tile", {})

    @bpp.stage_decorator([camera])
    @bpp.run_decorator(md=_md)
    def scan():
        yield from bps.mv(led, illumination)
        for i, (x, y) in enumerate(tiles):
            yield from bps.checkpoint()
            predicted = float(fit.predict(x, y))
            # Z moves while XY does; it still arrives from below (overshoot first if above)
            below = predicted - approach_um if predicted < float(stage.position) else predicted
            yield from bps.mv(x_axis, x, y_axis, y, stage, max(below, stage_low))
            if below != predicted:
                yield from bps.mv(stage, predicted)
            correction = math.nan
            devices = [camera, stage, x_axis, y_axis]
            if learned is not None:
                yield from bps.mv(led, off_axis_pattern, camera.exposure_time, off_axis_exposure_s)
                shot = {"tile": i, "shot": 0, "surface_z": predicted, "correction_um": math.nan}
                yield from bps.trigger_and_read([*devices, tile_reading.update(shot)])
                dz = float(learned.predict(camera.last_frame))
                low, high = learned.trained_range_um
                if low <= dz <= high:
                    correction = -dz
                    yield from approach(stage, predicted + correction, approach_um)
                yield from bps.mv(led, illumination, camera.exposure_time, exposure)
            values = {"tile": i, "shot": 1, "surface_z": predicted, "correction_um": correction}
            yield from bps.trigger_and_read([*devices, tile_reading.update(values)])
            visited.append(
                {
                    "x": x,
                    "y": y,
                    "z": float(stage.position),
                    "surface_z": predicted,
                    "correction_um": correction,
                }
            )

    def restore():
        yield from bps.mv(led, led_pattern, camera.exposure_time, exposure)
        yield from bps.mv(x_axis, x0, y_axis, y0)
        yield from approach(stage, z0, approach_um)

    uid = yield from bpp.finalize_wrapper(scan(), restore())
    return TileScan(visited, uid or "", time.monotonic() - t0)
