"""Cost of recording 512x512 uint16 frames: raw HDF5, a bare RunEngine, RunEngine + catalogue."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import bluesky.plans as bp
import h5py
import numpy as np
from bluesky import RunEngine

import devices

from ._common import table

SHAPE = (512, 512)
PATTERN = "off_axis"


def microscope(frames_dir: Path | None = None) -> devices.SimMicroscope:
    mic = devices.SimMicroscope(
        "cells",
        seed=0,
        sensor=devices.CameraSensor(shape=SHAPE),
        time_scale=0,
        frames_dir=frames_dir,
    )
    mic.led.set(PATTERN)
    return mic


def per_frame(action: Callable[[int], object], num: int, repeats: int) -> float:
    """Median over ``repeats`` of seconds per frame of ``action(num)``, after a warm-up."""
    action(1)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        action(num)
        times.append((time.perf_counter() - t0) / num)
    return float(np.median(times))


def raw_h5py(folder: Path, frames: list[np.ndarray]) -> Callable[[int], None]:
    """Append frames one at a time the way ``devices/camera.py`` does (SWMR, flush each)."""
    counter = iter(range(1_000_000))

    def action(num: int) -> None:
        h, w = SHAPE
        with h5py.File(folder / f"raw_{next(counter)}.h5", "w", libver="latest") as f:
            ds = f.create_dataset(
                "data", shape=(0, h, w), maxshape=(None, h, w), chunks=(1, h, w), dtype="<u2"
            )
            f.swmr_mode = True
            for i in range(num):
                ds.resize(i + 1, axis=0)
                ds[i] = frames[i % len(frames)]
                ds.flush()

    return action


def simulate(mic: devices.SimMicroscope) -> Callable[[int], None]:
    def action(num: int) -> None:
        for _ in range(num):
            mic.model.expose(mic.camera.settings())

    return action


def snap(mic: devices.SimMicroscope) -> Callable[[int], None]:
    def action(num: int) -> None:
        for _ in range(num):
            mic.camera.snap()

    return action


def count(RE: RunEngine, mic: devices.SimMicroscope) -> Callable[[int], None]:
    def action(num: int) -> None:
        RE(bp.count([mic.camera], num))

    return action


def run(quick: bool) -> str:
    from autofocus_plans import open_catalog, subscribe_catalog

    num, repeats = (5, 1) if quick else (50, 3)
    with tempfile.TemporaryDirectory(prefix="bench-catalog-") as tmp:
        root = Path(tmp)
        mic_d = microscope()
        frames = [mic_d.model.expose(mic_d.camera.settings()) for _ in range(4)]
        t_sim = per_frame(simulate(mic_d), num, repeats)
        t_snap = per_frame(snap(mic_d), num, repeats)
        (root / "raw").mkdir()
        t_raw = per_frame(raw_h5py(root / "raw", frames), num, repeats)

        mic_b = microscope(root / "bare")
        t_bare = per_frame(count(RunEngine({}), mic_b), num, repeats)

        mic_c = microscope()
        RE = RunEngine({})
        catalog = open_catalog(root / "catalog")
        subscribe_catalog(RE, catalog, cameras=[mic_c.camera])
        t_cat = per_frame(count(RE, mic_c), num, repeats)
        stored = len(catalog)
        context = getattr(catalog, "context", None)
        if context is not None:
            context.close()

    ms = 1e3
    over_b, over_c = t_bare - t_sim, t_cat - t_sim
    rows = [
        [
            "(a) raw h5py write",
            "resize + write + flush one frame into a chunked (1,H,W) "
            "SWMR dataset, no fsync (frames pre-simulated)",
            t_raw,
            None,
        ],
        [
            "(b) RunEngine, no catalogue",
            "`RE(count([mic.camera], num))`: simulation + "
            "focus measures/stats + HDF5 write + documents, run open/close amortised",
            t_bare,
            over_b,
        ],
        [
            "(c) RunEngine + Tiled catalogue",
            "as (b) + `subscribe_catalog` (embedded Tiled, "
            "SQLite): every document written to the catalogue",
            t_cat,
            over_c,
        ],
        ["(d) simulation only", "`mic.model.expose(mic.camera.settings())`", t_sim, None],
        [
            "(e) camera.snap(), unstaged",
            "(d) + focus measures/stats + acquire thread; nothing written (for reference)",
            t_snap,
            t_snap - t_sim,
        ],
    ]
    body = [
        [
            name,
            what,
            f"{t * ms:.1f}",
            f"{1 / t:.1f}",
            "" if over is None else f"{over * ms:.1f}",
            "" if over is None else f"{over / t_raw:.1f}x",
        ]
        for name, what, t, over in rows
    ]
    return "\n".join(
        [
            "## Recording cost: HDF5, RunEngine, catalogue",
            "",
            f"`SimMicroscope('cells', sensor=CameraSensor(shape={SHAPE}), time_scale=0)`, LED "
            f"`{PATTERN}` (cheapest simulation, so overheads stand out); {num} frames per run, "
            f"median of {repeats} timed run(s) after a 1-frame warm-up run; per-frame time = "
            "wall time of the whole run / frames (so (b) and (c) include opening and closing "
            "the run). Nothing is subtracted from the measured rows; the overhead column is "
            "row − (d), i.e. what recording adds to the simulation, and its ratio to the raw "
            f"HDF5 write (a). The catalogue held {stored} runs at the end.",
            "",
            table(
                [
                    "row",
                    "includes",
                    "ms/frame",
                    "frames/s",
                    "overhead vs (d), ms/frame",
                    "overhead / (a)",
                ],
                body,
            ),
            "",
            f"Ratios (same run): (c)/(b) = {t_cat / t_bare:.2f}, (c)/(a) = {t_cat / t_raw:.1f}; "
            f"RunEngine + HDF5 alone (b)−(e) = {(t_bare - t_snap) * ms:.1f} ms/frame; "
            f"catalogue alone (c)−(b) = {(t_cat - t_bare) * ms:.1f} ms/frame.",
            "",
        ]
    )
