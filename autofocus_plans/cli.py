"""``autofocus`` command line: demo, runs, show, replay, recover, serve, collect, train,
evaluate, shell.

Every command imports what it needs inside its function, so ``autofocus --help`` and
the quick commands do not pay for bluesky, ophyd, torch or Tiled's server.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

# The profile and the Tiled config are edited in the checkout's top-level profiles/ folder;
# autofocus_plans/profiles links to it there and is a copy of it in a wheel, so this one
# path works from a checkout, an editable install and a regular install alike.
PROFILES = (Path(__file__).parent / "profiles").resolve()
TILED_CONFIG = PROFILES / "tiled" / "config.yml"
TILED_POSTGRESQL_CONFIG = PROFILES / "tiled" / "config-postgresql.yml"
PROFILE_DIR = PROFILES / "profile_autofocus"


def _catalog_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--catalog",
        default=None,
        help="catalogue folder or Tiled server URL "
        "(default: $AUTOFOCUS_CATALOG or ./autofocus-data)",
    )


def _create_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--create",
        action="store_true",
        help="make a new, empty catalogue at --catalog if there is none there "
        "(without it, only the default location is created on first use)",
    )


def _open(args):
    from .catalog import open_catalog

    return open_catalog(args.catalog, create=getattr(args, "create", False))


def _console():
    from rich.console import Console

    return Console()


def _journals(catalog):
    from .durable import RunJournals, journal_dir_for

    folder = journal_dir_for(catalog)
    return RunJournals(folder) if folder is not None else None


# -- runs / show / replay / recover ------------------------------------------------------
def _runs_through_tiled(args):
    from .replay import find_runs, iterate_runs, summarize_run

    catalog = _open(args)
    results = find_runs(
        catalog, plan_name=args.plan, sample=args.sample, since=args.since, until=args.until
    )
    journals = _journals(catalog)
    return len(results), [summarize_run(r, journals) for r in iterate_runs(results, args.limit)]


def cmd_runs(args) -> int:
    from rich.table import Table

    from .catalog import CATALOG_DB, catalog_root

    listed = None
    root = catalog_root(args.catalog)
    if root is not None and (root / CATALOG_DB).is_file():
        # an existing embedded catalogue: read its SQLite files, no Tiled server to start
        from .runlist import quick_summaries

        listed = quick_summaries(
            root,
            plan_name=args.plan,
            sample=args.sample,
            since=args.since,
            until=args.until,
            limit=args.limit,
        )
    count, summaries = listed if listed is not None else _runs_through_tiled(args)
    table = Table(title=f"{count} run(s)")
    for column in ("time", "uid", "plan", "sample", "status", "result"):
        table.add_column(column)
    for s in summaries:
        status = s.exit_status
        if status.startswith(("incomplete", "running")):
            status = f"[yellow]{status}[/yellow]"
        table.add_row(s.time, s.uid, s.plan, s.sample, status, s.result)
    console = _console()
    console.print(table)
    crashed = sum(s.exit_status == "incomplete (crashed)" for s in summaries)
    if crashed:
        console.print(
            f"{crashed} run(s) were left without a stop document by a process that died; "
            "`autofocus recover` marks them incomplete and keeps their events."
        )
    return 0


def cmd_show(args) -> int:
    import json

    from .durable import run_status
    from .replay import load_table, lookup_run, run_stop

    catalog = _open(args)
    run = lookup_run(catalog, args.uid)
    start, stop = run.start, run_stop(run)
    journals = _journals(catalog)
    journal_state = journals.state(start["uid"]) if journals is not None and stop is None else None
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
    status = run_status(stop, journal_state)
    reason = (stop or {}).get("reason", "")
    if status.startswith(("incomplete", "running")):
        status = f"[yellow]{status}[/yellow]"
    console.print(f"  status: {status}  {reason}".rstrip())
    for stream in run:
        counts = (stop or {}).get("num_events", {})
        n = counts[stream] if stream in counts else len(load_table(run, stream)["time"])
        console.print(f"  stream {stream}: {n} event(s), keys {sorted(run[stream].keys())}")
    if "focus_result" in run:
        table = load_table(run, "focus_result")
        values = {k: float(v[-1]) for k, v in table.items() if k != "time" and len(v)}
        console.print("  focus_result: " + json.dumps(values, indent=None))
    if args.metadata:
        console.print_json(json.dumps(dict(start), default=str))
    return 0


FIT_KEYS = ("amplitude", "center", "sigma", "offset")  # plot_focus_curve's fit order


def cmd_replay(args) -> int:
    from bluesky.callbacks import LiveTable

    from .replay import focus_curve, load_table, lookup_run, replay, run_stop

    run = lookup_run(_open(args), args.uid)
    start = run.start
    fields = list(start.get("motors") or [])
    metric = start.get("metric", "brenner")
    fields += [f"{d}_{metric}" for d in start.get("detectors", [])]
    count = replay(run, LiveTable(fields))
    note = "" if run_stop(run) else " (no stop document: the run is running or incomplete)"
    print(f"replayed {count} documents of run {start['uid'][:8]}{note}")
    if args.plot and start.get("plan_name") == "focus_map":
        from .plots import plot_focus_map

        table = load_table(run) if "primary" in run else {}
        x_key, y_key = (start.get("motors") or ["x", "y"])[:2]
        points = [
            {"x": float(x), "y": float(y), "z": float(z), "found": bool(f)}
            for x, y, z, f in zip(
                table.get(x_key, []),
                table.get(y_key, []),
                table.get("focus_z", []),
                table.get("found", []),
                strict=True,
            )
        ]
        path = plot_focus_map(
            start.get("focus_map"), points, args.plot, title=f"run {start['uid'][:8]}"
        )
        print(f"focus map written to {path}")
        return 0
    if args.plot:
        from .plots import plot_focus_curve

        if "primary" not in run or not len(load_table(run)["time"]):
            print(f"run {start['uid'][:8]} holds no events yet; no focus curve written")
            return 0
        _motor, z, measure, values = focus_curve(run)
        best = fit = note = None
        result = load_table(run, "focus_result") if "focus_result" in run else {}
        if result and len(result.get("best_z", [])) and int(result.get("found", [1])[-1]):
            best = float(result["best_z"][-1])
            fit = tuple(float(result[f"fit_{k}"][-1]) for k in FIT_KEYS)
        elif "method" in start:  # a focus search that concluded nothing
            note = "no focus found: " + (
                (run_stop(run) or {}).get("reason") or "the run has no result"
            )
        path = plot_focus_curve(
            z,
            values,
            args.plot,
            best_z=best,
            fit=fit,
            note=note,
            metric=measure,
            title=f"run {start['uid'][:8]}",
        )
        print(f"focus curve written to {path}" + (f" ({note})" if note else ""))
    return 0


def cmd_recover(args) -> int:
    from .durable import recover_runs

    done = recover_runs(_open(args), args.uids or None)
    for result in done:
        print(result)
    if not done:
        print(
            "no writer had died: nothing to recover (a run without a stop document and "
            "without a journal is closed only when named: `autofocus recover UID`)"
        )
    return 0


# -- serve -------------------------------------------------------------------------------
def cmd_serve(args) -> int:
    """Run the Tiled server in this process: a signal that stops it stops everything.

    ``tiled serve config`` as a child outlived a SIGTERM to this process, and its banner
    showed a second, wrong API key (read from Tiled's global settings, not the config).
    """
    from tiled.config import parse_configs

    if args.database:
        from .postgres import check_database_uri

        # the PostgreSQL config reads these two (see its header)
        os.environ.update(
            AUTOFOCUS_CATALOG_DB=check_database_uri(args.database, "--database"),
            AUTOFOCUS_TABLES_DB=check_database_uri(args.tables or args.database, "--tables"),
        )
    elif args.tables:
        raise ValueError("--tables needs --database (the PostgreSQL catalogue) as well.")
    data = Path(args.data).resolve()
    frames = Path(args.frames).resolve() if args.frames else data / "frames"
    for folder in (data, data / "data", frames):
        folder.mkdir(parents=True, exist_ok=True)
    key = args.api_key or os.environ.get("TILED_API_KEY") or secrets.token_hex(16)
    # the config file reads these three (see its header)
    os.environ.update(
        TILED_API_KEY=key, AUTOFOCUS_SERVER_DATA=str(data), AUTOFOCUS_FRAMES_DIR=str(frames)
    )
    config_path = Path(args.config or (TILED_POSTGRESQL_CONFIG if args.database else TILED_CONFIG))
    if not config_path.is_file():
        raise OSError(f"No Tiled config at {config_path}; pass --config FILE.yml.")
    config = parse_configs(config_path)
    import uvicorn
    from tiled.server.app import build_app_from_config

    app = build_app_from_config(config)
    url = f"http://{args.host}:{args.port}"
    where = _without_password(args.database) if args.database else str(data)
    print(
        f"Serving the catalogue in {where} at {url}\n"
        f"  clients:  export TILED_API_KEY={key} AUTOFOCUS_FRAMES_DIR={frames}\n"
        f"            autofocus runs --catalog {url}\n"
        "  stop with Ctrl-C (or SIGTERM)"
    )
    sys.stdout.flush()
    try:
        # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal:
        # SIGTERM ends this process the default way, SIGINT arrives as KeyboardInterrupt
        uvicorn.run(app, host=args.host, port=args.port)
    except KeyboardInterrupt:
        return 130
    return 0


def _without_password(uri: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


# -- learned focus -------------------------------------------------------------------------
def _simulated_microscope(args, **kwargs):
    from devices import SimMicroscope

    return SimMicroscope(args.sample, seed=args.seed, time_scale=0, **kwargs)


def _progress_callback(total: int, description: str):
    """A RunEngine callback that advances a tqdm bar at the end of each run."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=description, unit="run")

    def callback(name, doc):
        if name == "stop" and doc.get("exit_status") == "success":
            bar.update(1)

    return bar, callback


def cmd_collect(args) -> int:
    from bluesky import RunEngine

    from .catalog import subscribe_catalog
    from .dual_led import mirrored_patterns
    from .learned import collect_training_set

    catalog = _open(args)
    mic = _simulated_microscope(args)
    pairs = mirrored_patterns(mic.led) if args.pairs else None
    RE = RunEngine({}, call_returns_result=True)
    subscribe_catalog(RE, catalog, cameras=[mic.camera])
    bar, progress = _progress_callback(2 * args.fields, "collecting (sweep + shots per field)")
    RE.subscribe(progress)
    fields = list(range(args.first_field, args.first_field + args.fields))
    uids = RE(
        collect_training_set(
            mic.camera,
            mic.z,
            mic.led,
            mic.fov,
            fields,
            shots_per_field=args.shots,
            pair_patterns=pairs,
            training_set=args.training_set,
            seed=args.seed,
            md={"sample": args.sample},
        )
    ).plan_result
    bar.close()
    print(f"collected {len(uids)} training run(s) into training set {args.training_set!r}")
    return 0


def _training_runs(catalog, training_set: str):
    from .replay import find_runs

    runs = find_runs(catalog, purpose="training")
    runs = [r for r in runs.values() if r.start.get("training_set") == training_set]
    if not runs:
        raise ValueError(
            f"No training runs of set {training_set!r} in the catalogue; collect them with "
            f"`autofocus collect --training-set {training_set}`."
        )
    return runs


def _torchrun(nproc: int, argv: list[str]) -> int:
    """Run this same command in ``nproc`` processes under torchrun (on this machine)."""
    import subprocess

    if nproc < 1:
        raise ValueError(f"--nproc {nproc}: give a number of processes of 1 or more.")
    # torchrun would take --nproc (or an abbreviation) for its own --nproc-per-node
    worker_argv, skip = [], False
    for token in argv:
        name = token.split("=", 1)[0]
        if skip:
            skip = False
        elif len(name) > 3 and "--nproc".startswith(name):
            skip = "=" not in token
        else:
            worker_argv.append(token)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc-per-node={nproc}", "-m", "autofocus_plans.cli", *worker_argv]
    return subprocess.run(command).returncode


def _objective(text: str) -> tuple[float, float]:
    """``20x/0.4`` -> (20.0, 0.4)."""
    try:
        magnification, na = text.lower().split("x/")
        return float(magnification), float(na)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an objective; write it as MAGNIFICATIONx/NA, e.g. 20x/0.4."
        ) from None


def _scale_range(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH such as 0.5,2, got {text!r}") from None
    if not 0 < low <= high:
        raise argparse.ArgumentTypeError(f"expected 0 < LOW <= HIGH, got {text!r}")
    return low, high


def cmd_build_models(args) -> int:
    import models

    from .shipped import SHIPPED_OBJECTIVES, build_shipped_models, figures_table

    models.resolve_device(args.device)  # no GPU for --device cuda: say so before rendering
    paths = build_shipped_models(
        args.objective or SHIPPED_OBJECTIVES,
        out_dir=args.out_dir,
        fields=args.fields,
        shots_per_field=args.shots,
        epochs=args.epochs,
        seed=args.seed,
        device=args.device,
        evaluation_fields=args.evaluation_fields,
        feature_scale=args.feature_scale,
    )
    for path in paths:
        model = models.load_model(path)
        v = model.metadata["validation"]
        print(
            f"{path}: validation MAE {v['mae_dof']:.2f} DOF, RMSE {v['rmse_dof']:.2f} DOF, "
            f"{model.metadata['training_time_s']:.0f} s of training on {model.metadata['device']}"
        )
        print(figures_table(model))
    return 0


def cmd_train(args) -> int:
    if args.nproc != 1 and "LOCAL_RANK" not in os.environ:
        return _torchrun(args.nproc, args.argv)
    import torch.distributed as dist

    import models

    models.resolve_device(args.device)  # no GPU for --device cuda: say so before reading runs
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("gloo")  # the models train on the CPU
    try:
        runs = _training_runs(_open(args), args.training_set)
        examples = models.examples_from_runs(runs, progress=not distributed)
        model = models.train(
            examples,
            args.architecture,
            epochs=args.epochs,
            crops_per_frame=args.crops,
            seed=args.seed,
            name=args.name,
            device=args.device,
        )
        if distributed and dist.get_rank() != 0:
            return 0  # the same model on every rank: rank 0 saves it
    finally:
        if distributed:
            dist.destroy_process_group()
    path = model.save(args.out)
    v = model.metadata["validation"]
    kind = "frame pairs" if model.shots == 2 else "frames"
    print(
        f"{model.architecture} trained on {len(examples)} {kind} "
        f"from {len(runs)} fields; "
        f"validation on unseen fields: MAE {v['mae_um']:.2f} µm ({v['mae_dof']:.2f} DOF), "
        f"RMSE {v['rmse_um']:.2f} µm ({v['rmse_dof']:.2f} DOF); "
        f"{model.metadata['training_time_s']:.0f} s on {model.metadata['device']}\nsaved to {path}"
    )
    return 0


def cmd_evaluate(args) -> int:
    import models

    from .plots import plot_predictions

    model = models.load_model(args.model)
    runs = _training_runs(_open(args), args.training_set)
    trained_on = set(model.metadata.get("training_run_uids", []))
    held_out = [r for r in runs if r.start["uid"] not in trained_on]
    if not held_out:
        raise ValueError(
            f"Every run of set {args.training_set!r} was used to train {model.name!r}; "
            "collect a separate set (e.g. --training-set holdout) to evaluate on."
        )
    examples = models.examples_from_runs(held_out)
    predicted = model.predict(examples.frames)
    metrics = models.regression_metrics(examples.defocus_um, predicted, examples.depth_of_field_um)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    png = plot_predictions(
        examples.defocus_um, predicted, output / "predicted_vs_true.png", title=model.name
    )
    report = output / "evaluation.md"
    report.write_text(
        f"# Evaluation of {model.name}\n\n"
        f"{len(examples)} frames from {len(held_out)} held-out field(s) of set "
        f"{args.training_set!r}.\n\n| metric | µm | DOF |\n|---|---|---|\n"
        + "".join(
            f"| {m.upper()} | {metrics[m + '_um']:.3f} | {metrics[m + '_dof']:.3f} |\n"
            for m in ("mae", "rmse", "p95")
        )
    )
    print(report.read_text())
    print(f"plots: {png}")
    return 0


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


def ipython_profile_dir(source: Path, ipython_dir: Path, *, writable: bool) -> Path:
    """The profile folder to give IPython: ``source``, or a per-user copy of it.

    IPython creates ``log/``, ``pid/`` and ``security/`` in its profile folder and fails
    when it cannot, as in a read-only (e.g. facility-wide) install; there the startup
    files and config are copied afresh at each start into ``IPYTHONDIR/profile_autofocus``.
    """
    if writable:
        return source
    import shutil

    target = ipython_dir / source.name
    (target / "startup").mkdir(parents=True, exist_ok=True)
    wanted = {p.name for p in (source / "startup").glob("*.py")}
    for stale in (target / "startup").glob("*.py"):
        if stale.name not in wanted:  # a startup file the installed version no longer has
            stale.unlink()
    for name in wanted:
        shutil.copyfile(source / "startup" / name, target / "startup" / name)
    shutil.copyfile(source / "ipython_config.py", target / "ipython_config.py")
    return target


def cmd_shell(args) -> int:
    """IPython in this very process, so Ctrl-C reaches the RunEngine as in plain IPython."""
    from IPython import start_ipython
    from IPython.paths import get_ipython_dir

    if args.catalog:
        from .catalog import _check_embedded_location, catalog_root

        # the profile opens $AUTOFOCUS_CATALOG as the default, which it may create: check a
        # named location here, so a mistyped folder is refused instead of made
        root = catalog_root(args.catalog)  # refuses a malformed URL
        if root is not None and not args.create:
            _check_embedded_location(root, create=False)
        os.environ["AUTOFOCUS_CATALOG"] = args.catalog
    profile = ipython_profile_dir(
        PROFILE_DIR, Path(get_ipython_dir()), writable=os.access(PROFILE_DIR, os.W_OK)
    )
    start_ipython(argv=[f"--profile-dir={profile}", *args.ipython_args])
    return 0


def cmd_ioc(args) -> int:
    from devices.ioc import serve

    return serve(args)


def cmd_queue(args) -> int:
    from .queue import queue_command

    return queue_command(args)


def build_parser() -> argparse.ArgumentParser:
    from models.compute import DEVICES  # no torch: --help stays fast

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
    _create_arg(p)
    p.add_argument("--plan", help="only runs of this plan_name")
    p.add_argument("--sample", help="only runs of this sample")
    p.add_argument("--since", help="only runs after this time, e.g. '2026-11-27 09:00'")
    p.add_argument("--until", help="only runs before this time")
    p.add_argument("--limit", type=int, default=20, help="at most this many rows (default 20)")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("show", help="describe one run")
    _catalog_arg(p)
    _create_arg(p)
    p.add_argument("uid", help="run uid or its first 6+ characters")
    p.add_argument("--metadata", action="store_true", help="print the whole start document")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("replay", help="re-emit a run's documents into a LiveTable; plot it")
    _catalog_arg(p)
    _create_arg(p)
    p.add_argument("uid", help="run uid or its first 6+ characters")
    p.add_argument(
        "--plot", metavar="FILE.png", help="write the focus curve (or focus map) to this PNG"
    )
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser(
        "recover", help="mark runs whose writing process died as incomplete, keeping their events"
    )
    _catalog_arg(p)
    _create_arg(p)
    p.add_argument(
        "uids",
        nargs="*",
        metavar="UID",
        help="runs to recover (default: every run whose writing process died)",
    )
    p.set_defaults(func=cmd_recover)

    p = sub.add_parser("serve", help="serve a catalogue over HTTP (Tiled) on this machine")
    p.add_argument(
        "--data", default="autofocus-server", help="catalogue folder (default ./autofocus-server)"
    )
    p.add_argument("--frames", help="folder cameras write HDF5 into (default DATA/frames)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key", help="API key (default $TILED_API_KEY or a random one, printed)")
    p.add_argument(
        "--database",
        metavar="URI",
        help="keep the catalogue in this PostgreSQL database, postgresql://USER@HOST:PORT/DB "
        "(default: SQLite files in --data)",
    )
    p.add_argument(
        "--tables",
        metavar="URI",
        help="PostgreSQL database for the event tables (default: the --database one)",
    )
    p.add_argument(
        "--config",
        help="Tiled config file (default: profiles/tiled/config.yml, "
        "or config-postgresql.yml with --database)",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("collect", help="collect a training set on the simulated microscope")
    _catalog_arg(p)
    _create_arg(p)
    p.add_argument("--sample", default="tissue", help="sample family (default tissue)")
    p.add_argument("--fields", type=int, default=16, help="fields of view (default 16)")
    p.add_argument("--first-field", type=int, default=0, help="index of the first field")
    p.add_argument("--shots", type=int, default=30, help="off-axis shots per field (default 30)")
    p.add_argument("--training-set", default="default", help="tag of the set (default 'default')")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample and offsets")
    p.add_argument(
        "--pairs",
        action="store_true",
        help="a pair of frames per shot under two mirrored LEDs (for a model that generalises "
        "to unseen samples; `autofocus train` then trains a pair model)",
    )
    p.set_defaults(func=cmd_collect)

    p = sub.add_parser("train", help="train a defocus model on a collected training set")
    _catalog_arg(p)
    _create_arg(p)
    p.add_argument("--training-set", default="default", help="which set (default 'default')")
    p.add_argument("--architecture", default="DefocusCNN", choices=["DefocusCNN", "FourierMLP"])
    p.add_argument("--epochs", type=int, default=40, help="most epochs (early stopping)")
    p.add_argument("--crops", type=int, default=4, help="random crops per training frame")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", help="model name recorded in the checkpoint")
    p.add_argument(
        "--device",
        default="cpu",
        choices=DEVICES,
        help="where to train: the CPU (default), a CUDA GPU, or auto (a GPU where there is one)",
    )
    p.add_argument("--out", default="model.safetensors", help="checkpoint file to write")
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="train in this many processes on this machine (torchrun, DistributedDataParallel)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "build-models",
        help="rebuild the shipped general pair models from domain-randomised simulated fields",
        description="Render randomised fields with the simulator, train one pair model per "
        "objective, measure it on fresh fields of every family and on real images, and save it "
        "with its recipe and figures (by default into models/shipped, where cnn_focus finds it).",
    )
    p.add_argument(
        "--objective",
        type=_objective,
        action="append",
        help="MAGNIFICATIONx/NA, repeatable (default: 20x/0.4 and 10x/0.25)",
    )
    p.add_argument("--fields", type=int, default=120, help="randomised fields (default 120)")
    p.add_argument("--shots", type=int, default=24, help="pairs per field (default 24)")
    p.add_argument("--epochs", type=int, default=15, help="most epochs (default 15)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=DEVICES, help="where to train")
    p.add_argument(
        "--evaluation-fields",
        type=int,
        default=4,
        help="fresh fields per family (and crops per real image) measured (default 4)",
    )
    p.add_argument(
        "--feature-scale",
        type=_scale_range,
        default=(1.0, 1.0),
        metavar="LOW,HIGH",
        help="vary the size of every field's features by a factor in this range (log-uniform; "
        "default 1,1: each family's own sizes)",
    )
    p.add_argument("--out-dir", help="folder for the checkpoints (default models/shipped)")
    p.set_defaults(func=cmd_build_models)

    p = sub.add_parser("evaluate", help="evaluate a model on held-out runs; report and plots")
    _catalog_arg(p)
    _create_arg(p)
    p.add_argument("model", help="checkpoint (.safetensors) written by `autofocus train`")
    p.add_argument("--training-set", default="holdout", help="set to evaluate on (default holdout)")
    p.add_argument("--output", default="evaluation", help="folder for the report and PNGs")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "shell",
        help="open the IPython session (RunEngine, devices, plans)",
        usage="autofocus shell [-h] [--catalog LOC] [--create] [IPYTHON OPTIONS ...]",
        description="IPython with the autofocus profile; every other option "
        "(e.g. -c CODE, --simple-prompt, a script) goes to IPython.",
        allow_abbrev=False,  # so that IPython's options never pass for --catalog
    )
    _catalog_arg(p)
    _create_arg(p)
    p.set_defaults(func=cmd_shell, ipython_args=[])

    p = sub.add_parser(
        "ioc",
        help="serve the simulated microscope over EPICS Channel Access (caproto)",
        description="A caproto IOC: Z motor record, LED pattern/brightness, areaDetector-style "
        "camera (cam1:, image1:), on 127.0.0.1 unless --host says otherwise.",
    )
    from devices.ioc_args import add_ioc_arguments

    add_ioc_arguments(p)
    p.set_defaults(func=cmd_ioc)

    p = sub.add_parser(
        "queue",
        help="start, stop or query Redis + the queueserver (start-re-manager) on 127.0.0.1",
        description="The queueserver for the profile's startup folder; see README, "
        "'Queueing plans'.",
    )
    from .queue import add_queue_arguments

    add_queue_arguments(p)
    p.set_defaults(func=cmd_queue)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # the shell hands every option it does not know to IPython, in the order given
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.command != "shell":
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.ipython_args = unknown
    args.argv = list(sys.argv[1:] if argv is None else argv)  # to run again under torchrun
    try:
        return args.func(args)
    except (KeyError, ValueError, OSError, RuntimeError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"autofocus {args.command}: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
