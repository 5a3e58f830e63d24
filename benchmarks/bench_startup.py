"""Start-up time of the ``autofocus`` command line (issue 9: ``--help`` and ``runs`` in <= 2 s).

Each figure is the wall time of a fresh process, from ``subprocess.run`` to its exit,
so it includes the interpreter start and every import. Runs with the others
(``python -m benchmarks``) or alone::

    python -m benchmarks.bench_startup [--quick]
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ._common import table

AUTOFOCUS = str(Path(sys.executable).with_name("autofocus"))


def _closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _small_catalog(folder: Path) -> str:
    """Three short runs in a new embedded catalogue; returns the uid of the last one."""
    import bluesky.plans as bp
    from bluesky import RunEngine

    import devices
    from autofocus_plans import open_catalog, subscribe_catalog

    catalog = open_catalog(folder, create=True)
    mic = devices.SimMicroscope("bars", seed=3, time_scale=0)
    RE = RunEngine({})
    subscribe_catalog(RE, catalog, cameras=[mic.camera])
    uid = ""
    for i in range(3):
        (uid,) = RE(bp.scan([mic.camera], mic.z, -5, 5, 5), sample=f"bars:{i}")
    context = getattr(catalog, "context", None)
    if context is not None:
        context.close()
    return uid


def _wall(command: list[str], repeats: int) -> tuple[float, float, int]:
    """(median s, max s, exit code of the last run) of ``command`` in a fresh process."""
    times, code = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        code = subprocess.run(
            command, capture_output=True, timeout=300, env=dict(os.environ, COLUMNS="120")
        ).returncode
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), float(max(times)), code


def run(quick: bool) -> str:
    repeats = 1 if quick else 5
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        catalog = Path(tmp) / "catalog"
        uid = _small_catalog(catalog)
        url = f"http://127.0.0.1:{_closed_port()}"
        cases = [
            (
                "`python -c 'import autofocus_plans'`",
                [sys.executable, "-c", "import autofocus_plans"],
            ),
            ("`autofocus --help`", [AUTOFOCUS, "--help"]),
            (
                "`autofocus runs --catalog CAT` (3 runs; SQLite listing)",
                [AUTOFOCUS, "runs", "--catalog", str(catalog)],
            ),
            (
                "`autofocus show UID --catalog CAT` (opens the catalogue through Tiled)",
                [AUTOFOCUS, "show", uid[:8], "--catalog", str(catalog)],
            ),
            (
                "`autofocus runs --catalog http://127.0.0.1:CLOSED` (unreachable server)",
                [AUTOFOCUS, "runs", "--catalog", url],
            ),
        ]
        rows = []
        for label, command in cases:
            median, worst, code = _wall(command, repeats)
            rows.append([label, f"{median:.2f}", f"{worst:.2f}", code])
    return "\n".join(
        [
            "## Command-line start-up",
            "",
            f"Wall time of a fresh process (interpreter start + imports + work), median and "
            f"max of {repeats} run(s) each, on a catalogue of 3 five-point scans; exit code of "
            "the last run (2 = refused with its one sentence). `autofocus runs` on an embedded "
            "catalogue reads its SQLite files directly (`autofocus_plans/runlist.py`); `show`, "
            "`replay` and the others start Tiled's server in-process, whose import alone takes "
            "seconds. Before issue 9 (commit 53a75b9, same machine, loaded): `--help` 2.0–2.1 s, "
            "`runs` 10.6–13.1 s, `show` of an unknown uid 9.3 s, unreachable server 28.3 s.",
            "",
            table(["command", "median s", "max s", "exit code"], rows),
            "",
        ]
    )


def main() -> None:
    print(run("--quick" in sys.argv[1:]))


if __name__ == "__main__":
    main()
