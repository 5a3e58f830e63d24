"""The `autofocus` command line, the demo in fast mode, and the README's commands."""

import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from autofocus_plans import NoFocusFound, brenner_sweep, open_catalog
from autofocus_plans.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
AUTOFOCUS = str(Path(sys.executable).with_name("autofocus"))
COMMANDS = ["demo", "runs", "show", "replay", "serve", "collect", "train", "evaluate", "shell"]


def _run(*args, cwd=None, check=True):
    return subprocess.run(
        [AUTOFOCUS, *args], cwd=cwd, capture_output=True, text=True, timeout=600, check=check
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_answers_help(command):
    out = _run(command, "--help").stdout
    assert out.startswith(f"usage: autofocus {command}")


def test_fast_demo_then_runs_show_replay(tmp_path):
    catalog, output = tmp_path / "catalog", tmp_path / "out"
    demo = _run("demo", "--fast", "--catalog", str(catalog), "--output", str(output), cwd=tmp_path)
    assert "Autofocus summary" in demo.stdout
    for png in (
        "focus_curve.png",
        "defocus_series.png",
        "predicted_vs_true.png",
        "drift_tracking.png",
    ):
        assert (output / png).stat().st_size > 1000, png

    runs = _run("runs", "--catalog", str(catalog), "--plan", "brenner_sweep").stdout
    uids = re.findall(r"│\s*\S+ \S+\s*│\s*([0-9a-f]{8})\s*│\s*brenner_sweep", runs)
    assert uids, runs
    shown = _run("show", uids[-1], "--catalog", str(catalog)).stdout
    assert "plan_name: brenner_sweep" in shown and "focus_result" in shown

    plot = tmp_path / "curve.png"
    replayed = _run("replay", uids[-1], "--catalog", str(catalog), "--plot", str(plot)).stdout
    assert "replayed" in replayed and plot.stat().st_size > 1000
    assert "camera_brenner" in replayed


def test_cli_errors_are_one_line(tmp_path):
    result = _run("show", "deadbeef00", "--catalog", str(tmp_path / "c"), check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("autofocus show: No run 'deadbeef00'")
    result = _run("train", "--catalog", str(tmp_path / "c"), check=False)
    assert "No training runs of set 'default'" in result.stderr


def test_every_command_the_readme_shows_exists():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```\n(.*?)```", readme, flags=re.S)
    shown = [line.strip() for block in blocks for line in block.splitlines()]
    shown += re.findall(r"`(autofocus [a-z]+)[^`]*`", readme)
    subcommands = set(build_parser()._subparsers._group_actions[0].choices)
    makefile = (ROOT / "Makefile").read_text()
    checked = 0
    for line in shown:
        if line.startswith("autofocus "):
            assert line.split()[1] in subcommands, line
            checked += 1
        elif line.startswith("make "):
            assert re.search(rf"^{line.split()[1]}:", makefile, flags=re.M), line
            checked += 1
    assert checked >= 10
    quick_start = re.search(r"## Quick start\n\n```\n(.*?)```", readme, flags=re.S).group(1)
    assert quick_start.split("\n")[:2] == ["make demo", "make test"]


def test_collect_train_evaluate_commands(tmp_path):
    catalog = str(tmp_path / "catalog")
    common = ["--catalog", catalog, "--sample", "beads"]
    _run("collect", *common, "--fields", "3", "--shots", "8", cwd=tmp_path)
    _run(
        "collect",
        *common,
        "--fields",
        "1",
        "--first-field",
        "100",
        "--shots",
        "8",
        "--training-set",
        "holdout",
        cwd=tmp_path,
    )
    model = tmp_path / "mlp.safetensors"
    trained = _run(
        "train",
        "--catalog",
        catalog,
        "--architecture",
        "FourierMLP",
        "--epochs",
        "3",
        "--crops",
        "1",
        "--out",
        str(model),
        cwd=tmp_path,
    ).stdout
    assert "validation on unseen fields" in trained and model.exists()
    report = _run(
        "evaluate",
        str(model),
        "--catalog",
        catalog,
        "--output",
        str(tmp_path / "eval"),
        cwd=tmp_path,
    ).stdout
    assert "| MAE |" in report and "8 frames from 1 held-out field" in report
    assert (tmp_path / "eval" / "predicted_vs_true.png").stat().st_size > 1000


def test_serve_prints_one_working_key_and_stops_on_sigterm(serve, tmp_path):
    process, url, log = serve("--data", str(tmp_path / "server"))
    banner = log.read_text()
    keys = set(re.findall(r"[0-9a-f]{32,}", banner))
    assert len(keys) == 1, banner  # Tiled's own banner used to show a second, refused key
    (key,) = keys
    assert f"export TILED_API_KEY={key}" in banner
    assert len(open_catalog(url, api_key=key)) == 0  # the printed key is the one that works

    port = url.rsplit(":", 1)[1]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) in (0, -signal.SIGTERM)
    serving = [
        p.info["cmdline"]
        for p in psutil.process_iter(["cmdline"])
        if p.info["cmdline"] and "serve" in p.info["cmdline"] and port in p.info["cmdline"]
    ]
    assert not serving
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/api/v1/", timeout=5)


def test_replay_plot_says_no_focus_found(catalog_RE, catalog, mic, tmp_path, capsys):
    with pytest.raises(NoFocusFound):
        catalog_RE(brenner_sweep(mic.camera, mic.z, mic.led, illumination="off"))
    (uid,) = list(catalog)
    plot = tmp_path / "none.png"
    assert main(["replay", uid, "--catalog", str(tmp_path / "catalog"), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "no focus found: No focus peak" in out
    assert plot.stat().st_size > 1000
