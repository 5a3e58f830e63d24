"""The cost of Channel Access: per-frame time and time to focus over CA vs in-process.

Both sides are the same simulated microscope (``tissue``, seed 0, focus at
12.3 µm, 20x/0.4): in-process as ``devices.SimMicroscope``, and served by a
real ``autofocus ioc`` process on 127.0.0.1 (free ports) driven through
``devices.epics.connect`` (ophyd over caproto). Ratios come from one run.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bluesky import RunEngine

from ._common import table

FOCUS_UM = 12.3
PREFIX = "AFBENCH:"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _ca_environment():
    """Loopback-only Channel Access on free ports (set before ophyd's CA context exists)."""
    ports = {"server": _free_port(), "repeater": _free_port()}
    env = {
        "EPICS_CA_ADDR_LIST": "127.0.0.1",
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "EPICS_CA_SERVER_PORT": str(ports["server"]),
        "EPICS_CA_REPEATER_PORT": str(ports["repeater"]),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield ports
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _ioc(ports: dict, prefix: str, size: int, time_scale: float):
    from devices.epics import read_description

    command = [str(Path(sys.executable).with_name("autofocus")), "ioc", "--prefix", prefix]
    command += ["--port", str(ports["server"]), "--repeater-port", str(ports["repeater"])]
    command += ["--size", str(size), "--time-scale", str(time_scale), "--focus-um", str(FOCUS_UM)]
    proc = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                read_description(prefix, timeout_s=2)
                break
            except ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("autofocus ioc did not start") from None
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _local(size: int, time_scale: float):
    from devices import CameraSensor, SimMicroscope

    return SimMicroscope(
        "tissue",
        seed=0,
        focus_um=FOCUS_UM,
        z_start_um=0.0,
        sensor=CameraSensor(shape=(size, size)),
        time_scale=time_scale,
    )


def frame_times(camera, frames: int) -> np.ndarray:
    """Seconds per trigger + read (focus measures included, nothing written), after a warm-up."""
    camera.trigger().wait(60)
    times = []
    for _ in range(frames):
        t0 = time.perf_counter()
        camera.trigger().wait(60)
        camera.read()
        times.append(time.perf_counter() - t0)
    return np.asarray(times)


def _train_model(quick: bool):
    """A small CNN for these optics (accuracy is not the point here: the time of its shots is)."""
    import models
    from autofocus_plans import collect_training_set, find_runs, open_catalog, subscribe_catalog

    root = Path(tempfile.mkdtemp(prefix="bench-epics-"))
    catalog = open_catalog(root / "catalog", create=True)
    mic = _local(256, 0.0)
    RE = RunEngine({}, call_returns_result=True)
    subscribe_catalog(RE, catalog, cameras=[mic.camera])
    RE(
        collect_training_set(
            mic.camera, mic.z, mic.led, mic.fov, [0, 1, 2], shots_per_field=8 if quick else 24
        )
    )
    runs = list(find_runs(catalog, purpose="training").values())
    examples = models.examples_from_runs(runs, progress=False)
    return models.train(examples, "DefocusCNN", epochs=2 if quick else 10, progress=False)


def focus_times(mic, truth: float, model, repeats: int) -> dict[str, list[float]]:
    """Wall seconds from the plan's start to its end, per method, from 8 µm below focus."""
    from autofocus_plans import brenner_sweep, cnn_focus, fast_focus

    plans = {
        "sweep": lambda: brenner_sweep(mic.camera, mic.z, mic.led, -20, 30, 21),
        "fast": lambda: fast_focus(mic.camera, mic.z, mic.led),
        "cnn": lambda: cnn_focus(mic.camera, mic.z, mic.led, model),
    }
    RE = RunEngine({}, call_returns_result=True)
    out: dict[str, list[float]] = {name: [] for name in plans}
    for _ in range(repeats):
        for name, plan in plans.items():
            mic.z.set(truth - 8.0).wait(60)
            t0 = time.perf_counter()
            RE(plan())
            out[name].append(time.perf_counter() - t0)
    return out


def _disconnect(microscope) -> None:
    """Drop the client's channels before the IOC goes (no complaints about vanished ones)."""
    for device in microscope.devices:
        device.destroy()


def run(quick: bool) -> str:
    from devices.epics import connect, true_focus

    frames = 5 if quick else 40
    repeats = 1 if quick else 3
    scales = (0.0,) if quick else (0.0, 1.0)
    frame_rows, focus_rows = [], []
    model = _train_model(quick)
    with _ca_environment() as ports:
        for size in (256, 512):
            local = _local(size, 0.0)
            t_local = np.median(frame_times(local.camera, frames))
            with _ioc(ports, f"{PREFIX[:-1]}{size}:", size, 0.0):
                remote = connect(f"{PREFIX[:-1]}{size}:")
                t_ca = np.median(frame_times(remote.camera, frames))
                _disconnect(remote)
            frame_rows.append(
                [
                    f"{size}x{size}",
                    f"{t_local * 1e3:.1f}",
                    f"{t_ca * 1e3:.1f}",
                    f"{(t_ca - t_local) * 1e3:.1f}",
                    f"{t_ca / t_local:.2f}",
                ]
            )
        for scale in scales:
            prefix = f"{PREFIX[:-1]}F{int(scale)}:"
            local = _local(256, scale)
            t_local = focus_times(local, local.true_focus(), model, repeats)
            with _ioc(ports, prefix, 256, scale):
                remote = connect(prefix)
                t_ca = focus_times(remote, true_focus(prefix), model, repeats)
                _disconnect(remote)
            for name in t_local:
                a, b = np.median(t_local[name]), np.median(t_ca[name])
                focus_rows.append([f"{scale:g}", name, f"{a:.2f}", f"{b:.2f}", f"{b / a:.2f}"])
    return "\n".join(
        [
            "## Channel Access vs in-process",
            "",
            "Same simulated microscope (`tissue`, seed 0) in-process (`devices.SimMicroscope`) "
            "and behind a real `autofocus ioc` process on 127.0.0.1, driven with "
            "`devices.epics.connect` (ophyd over caproto, pure Python). Per frame: median of "
            f"{frames} `camera.trigger().wait(); camera.read()` (focus measures computed, "
            "nothing written), time_scale 0 (pure software cost: over CA that is the "
            "Acquire put-completion round trip, the IOC computing the frame and the "
            "`image1:ArrayData` transfer).",
            "",
            table(["frame", "in-process ms", "over CA ms", "CA overhead ms", "ratio"], frame_rows),
            "",
            "Time to focus at 256x256 from 8 µm below focus (median of "
            f"{repeats}; RunEngine without a catalogue on both sides): `brenner_sweep(-20, 30, "
            "21)`, `fast_focus()` defaults, `cnn_focus` with a small CNN trained here on "
            "the in-process microscope (2-10 epochs: it may fall back to `fast_focus`, on "
            "both sides alike). time_scale 1 adds the simulated exposure (10 ms), readout "
            "(5 ms), moves (500 µm/s) and settle (20 ms), as a real microscope would.",
            "",
            table(["time_scale", "plan", "in-process s", "over CA s", "ratio"], focus_rows),
            "",
        ]
    )
