"""Shared fixtures: a real RunEngine and a simulated microscope with instant moves."""

from __future__ import annotations

import pytest
from bluesky import RunEngine

from devices import SimMicroscope


@pytest.fixture
def RE():
    engine = RunEngine({}, call_returns_result=True)
    yield engine
    if engine.state != "idle":
        engine.halt()


@pytest.fixture
def mic(tmp_path):
    return SimMicroscope("cells", seed=1, frames_dir=tmp_path / "frames", time_scale=0)


@pytest.fixture
def catalog(tmp_path):
    from autofocus_plans import open_catalog

    return open_catalog(tmp_path / "catalog", create=True)


@pytest.fixture
def catalog_RE(RE, catalog, mic):
    """A RunEngine streaming into an embedded catalogue, the camera writing where it serves."""
    from autofocus_plans import subscribe_catalog

    subscribe_catalog(RE, catalog, cameras=[mic.camera])
    return RE


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tiled_server(tmp_path):
    """A real `autofocus serve` (tiled serve) process on 127.0.0.1, stopped afterwards."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    import httpx

    port = _free_port()
    key = f"testkey{port}"
    data = tmp_path / "server"
    autofocus = Path(sys.executable).with_name("autofocus")
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115
    process = subprocess.Popen(
        [str(autofocus), "serve", "--data", str(data), "--port", str(port), "--api-key", key],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"{url}/api/v1/", timeout=1)
            break
        except httpx.HTTPError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(
                    "tiled server did not start: " + (tmp_path / "server.log").read_text()
                ) from None
            time.sleep(0.3)
    yield {"url": url, "api_key": key, "frames": data / "frames"}
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()
