"""``autofocus`` command line: demo, runs, show, replay, serve, collect, train, evaluate, shell."""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TILED_CONFIG = REPO_ROOT / "profiles" / "tiled" / "config.yml"
PROFILE_DIR = REPO_ROOT / "profiles" / "profile_autofocus"


def _catalog_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--catalog",
        default=None,
        help="catalogue folder or Tiled server URL "
        "(default: $AUTOFOCUS_CATALOG or ./autofocus-data)",
    )


def _console():
    from rich.console import Console

    return Console()


# -- runs / show / replay ------------------------------------------------------------
def cmd_runs(args) -> int:
    from rich.table import Table

    from .catalog import open_catalog
    from .replay import find_runs, iterate_runs, summarize_run

    catalog = open_catalog(args.catalog)
    results = find_runs(
        catalog, plan_name=args.plan, sample=args.sample, since=args.since, until=args.until
    )
    table = Table(title=f"{len(results)} run(s)")
    for column in ("time", "uid", "plan", "sample", "status", "result"):
        table.add_column(column)
    for run in iterate_runs(results, args.limit):
        s = summarize_run(run)
        table.add_row(s.time, s.uid, s.plan, s.sample, s.exit_status, s.result)
    _console().print(table)
    return 0


def cmd_show(args) -> int:
    import json

    from .catalog import open_catalog
    from .replay import load_table, lookup_run

    run = lookup_run(open_catalog(args.catalog), args.uid)
    start, stop = run.start, run.stop or {}
    console = _console()
    console.print(f"[bold]run {start['uid']}[/bold]")
    for key in (
        "plan_name",
        "method",
        "metric",
        "sample",
        "illumination",
        "search_range_um",
        "purpose",
    ):
        if key in start:
            console.print(f"  {key}: {start[key]}")
    console.print(f"  exit_status: {stop.get('exit_status', 'running')}  {stop.get('reason', '')}")
    for stream in run:
        n = stop.get("num_events", {}).get(stream, "?")
        console.print(f"  stream {stream}: {n} event(s), keys {sorted(run[stream].keys())}")
    if "focus_result" in run:
        table = load_table(run, "focus_result")
        values = {k: float(v[-1]) for k, v in table.items() if k != "time" and len(v)}
        console.print("  focus_result: " + json.dumps(values, indent=None))
    if args.metadata:
        console.print_json(json.dumps(dict(start), default=str))
    return 0


def cmd_replay(args) -> int:
    from bluesky.callbacks import LiveTable

    from .catalog import open_catalog
    from .replay import focus_curve, load_table, lookup_run, replay

    run = lookup_run(open_catalog(args.catalog), args.uid)
    start = run.start
    fields = list(start.get("motors") or [])
    metric = start.get("metric", "brenner")
    fields += [f"{d}_{metric}" for d in start.get("detectors", [])]
    count = replay(run, LiveTable(fields or None))
    print(f"replayed {count} documents of run {start['uid'][:8]}")
    if args.plot:
        from .plots import plot_focus_curve

        _motor, z, measure, values = focus_curve(run)
        best = None
        if "focus_result" in run:
            best = float(load_table(run, "focus_result")["best_z"][-1])
        path = plot_focus_curve(
            z, values, args.plot, best_z=best, metric=measure, title=f"run {start['uid'][:8]}"
        )
        print(f"focus curve written to {path}")
    return 0


# -- serve -------------------------------------------------------------------------------
def cmd_serve(args) -> int:
    data = Path(args.data).resolve()
    frames = Path(args.frames).resolve() if args.frames else data / "frames"
    for folder in (data, data / "data", frames):
        folder.mkdir(parents=True, exist_ok=True)
    key = args.api_key or os.environ.get("TILED_API_KEY") or secrets.token_hex(16)
    env = dict(os.environ)
    env.update(TILED_API_KEY=key, AUTOFOCUS_SERVER_DATA=str(data), AUTOFOCUS_FRAMES_DIR=str(frames))
    tiled = Path(sys.executable).with_name("tiled")
    command = [str(tiled), "serve", "config", str(args.config), "--host", args.host]
    command += ["--port", str(args.port)]
    url = f"http://{args.host}:{args.port}"
    print(
        f"Serving the catalogue in {data} at {url}\n"
        f"  clients:  export TILED_API_KEY={key} AUTOFOCUS_FRAMES_DIR={frames}\n"
        f"            autofocus runs --catalog {url}"
    )
    sys.stdout.flush()
    return subprocess.call(command, env=env)


# -- front door --------------------------------------------------------------------------
def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(
        catalog=args.catalog,
        output=Path(args.output),
        fast=args.fast,
        seed=args.seed,
    )
    return 0


def cmd_shell(args) -> int:
    env = dict(os.environ)
    if args.catalog:
        env["AUTOFOCUS_CATALOG"] = args.catalog
    ipython = Path(sys.executable).with_name("ipython")
    return subprocess.call(
        [str(ipython), f"--profile-dir={PROFILE_DIR}", *args.ipython_args], env=env
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autofocus",
        description="Autofocus for LED-illuminated microscopes on the Bluesky stack.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="run the whole story on the simulated microscope")
    _catalog_arg(p)
    p.add_argument("--output", default="demo-output", help="folder for the PNG plots")
    p.add_argument("--fast", action="store_true", help="smaller, quicker run (for tests)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the samples")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("runs", help="list stored runs (newest first)")
    _catalog_arg(p)
    p.add_argument("--plan", help="only runs of this plan_name")
    p.add_argument("--sample", help="only runs of this sample")
    p.add_argument("--since", help="only runs after this time, e.g. '2026-11-27 09:00'")
    p.add_argument("--until", help="only runs before this time")
    p.add_argument("--limit", type=int, default=20, help="at most this many rows (default 20)")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("show", help="describe one run")
    _catalog_arg(p)
    p.add_argument("uid", help="run uid or its first 6+ characters")
    p.add_argument("--metadata", action="store_true", help="print the whole start document")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("replay", help="re-emit a run's documents into a LiveTable; plot it")
    _catalog_arg(p)
    p.add_argument("uid", help="run uid or its first 6+ characters")
    p.add_argument("--plot", metavar="FILE.png", help="write the focus curve to this PNG")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("serve", help="serve a catalogue over HTTP (Tiled) on this machine")
    p.add_argument(
        "--data", default="autofocus-server", help="catalogue folder (default ./autofocus-server)"
    )
    p.add_argument("--frames", help="folder cameras write HDF5 into (default DATA/frames)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key", help="API key (default $TILED_API_KEY or a random one, printed)")
    p.add_argument("--config", default=str(TILED_CONFIG), help="Tiled config file")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("shell", help="open the IPython session (RunEngine, devices, plans)")
    _catalog_arg(p)
    p.add_argument("ipython_args", nargs=argparse.REMAINDER, help="passed on to ipython")
    p.set_defaults(func=cmd_shell)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (KeyError, ValueError, OSError, RuntimeError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"autofocus {args.command}: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
