"""Simulator frame time: 256x256 and 512x512 sensors, brightfield and off-axis illumination."""

from __future__ import annotations

import time

import numpy as np

import devices

from ._common import table

SIZES = (256, 512)
PATTERNS = ("brightfield", "off_axis")


def frame_times(n: int, pattern: str, frames: int) -> tuple[np.ndarray, int]:
    """Seconds per ``camera.snap()`` (after one warm-up frame) and the number of lit LEDs."""
    mic = devices.SimMicroscope(
        "cells", seed=0, sensor=devices.CameraSensor(shape=(n, n)), time_scale=0
    )
    mic.led.set(pattern)
    frame = mic.camera.snap()
    assert frame.dtype == np.uint16 and frame.shape == (n, n)
    times = []
    for _ in range(frames):
        t0 = time.perf_counter()
        mic.camera.snap()
        times.append(time.perf_counter() - t0)
    return np.array(times), int(mic.led.lit_count.get())


def run(quick: bool) -> str:
    frames = 3 if quick else 30
    rows = []
    for n in SIZES:
        for pattern in PATTERNS:
            t, lit = frame_times(n, pattern, frames)
            med, p90 = np.median(t) * 1e3, np.percentile(t, 90) * 1e3
            rows.append([f"{n}x{n}", pattern, lit, f"{med:.1f}", f"{p90:.1f}", f"{1e3 / med:.1f}"])
    return "\n".join(
        [
            "## Simulator frame time",
            "",
            "`devices.SimMicroscope('cells', seed=0, sensor=CameraSensor(shape=(n, n)), "
            "time_scale=0)`; `mic.led.set(pattern)`; timed `mic.camera.snap()` (uint16 frame, "
            f"focus measures included, nothing written): {frames} frames after 1 warm-up "
            "frame; default 20x/0.4 objective, 15x15 LED array, `fft_workers=1`.",
            "",
            table(
                [
                    "sensor",
                    "illumination",
                    "lit LEDs",
                    "median ms/frame",
                    "p90 ms/frame",
                    "frames/s (median)",
                ],
                rows,
            ),
            "",
        ]
    )
