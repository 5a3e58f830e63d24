"""Run the benchmarks and write one markdown report.

Every module ``benchmarks/bench_*.py`` exposes ``run(quick: bool) -> str``, which
returns a markdown section (a ``## Title`` heading, its configuration and a
table). Usage::

    python -m benchmarks [--quick] [--only NAME ...] [--output PATH]
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import platform
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_OUTPUT = HERE / "results" / "REPORT.md"


def discover() -> list[str]:
    """Names of the benchmark modules (``bench_*``), sorted."""
    return sorted(m.name for m in pkgutil.iter_modules([str(HERE)]) if m.name.startswith("bench_"))


def header(quick: bool, argv: list[str]) -> str:
    command = shlex.join(["python", "-m", "benchmarks", *argv])
    return "\n".join(
        [
            "# bluesky-autofocus benchmarks",
            "",
            f"- date: {datetime.now().astimezone().isoformat(timespec='seconds')}",
            f"- command: `{command}`" + (" (quick: small sizes, smoke test only)" if quick else ""),
            f"- python {platform.python_version()}, numpy {np.__version__}",
            f"- nproc: {len(os.sched_getaffinity(0))} ({platform.machine()}, "
            f"{platform.system()} {platform.release()})",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    parser.add_argument(
        "--only",
        metavar="NAME",
        action="append",
        help="run benchmarks whose name contains NAME (repeat for several)",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="report path")
    args = parser.parse_args(argv)

    names = [n for n in discover() if not args.only or any(o in n for o in args.only)]
    if not names:
        parser.error(f"no benchmark matches {args.only}; available: {', '.join(discover())}")
    sections = [header(args.quick, argv)]
    started = time.perf_counter()
    for i, name in enumerate(names, 1):
        print(f"[{i}/{len(names)}] {name} ...", flush=True)
        t0 = time.perf_counter()
        module = importlib.import_module(f"benchmarks.{name}")
        sections.append(module.run(args.quick).rstrip() + "\n")
        print(f"[{i}/{len(names)}] {name} done in {time.perf_counter() - t0:.1f} s", flush=True)
    total = time.perf_counter() - started
    sections.append(f"---\nTotal benchmark time: {total:.1f} s.\n")

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(sections), encoding="utf-8")
    print(f"Report written to {args.output}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
