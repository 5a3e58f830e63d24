"""The `autofocus` command line, the demo in fast mode, and the README's commands."""

import os
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
COMMANDS = [
    "demo",
    "runs",
    "show",
    "replay",
    "recover",
    "serve",
    "collect",
    "train",
    "build-models",
    "evaluate",
    "shell",
    "ioc",
    "queue",
]


def _run(*args, cwd=None, check=True, columns=None):
    env = dict(os.environ, COLUMNS=str(columns)) if columns else None  # rich wraps at 80
    return subprocess.run(
        [AUTOFOCUS, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        check=check,
        env=env,
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_answers_help(command):
    out = _run(command, "--help").stdout
    assert out.startswith(f"usage: autofocus {command}")


def test_fast_demo_then_runs_show_replay(tmp_path):
    catalog, output = tmp_path / "catalog", tmp_path / "out"
    demo = _run("demo", "--fast", "--catalog", str(catalog), "--output", str(output), cwd=tmp_path)
    assert "Autofocus summary" in demo.stdout
    assert "fly_sweep" in demo.stdout and "tile_scan" in demo.stdout
    assert "dual_led_focus" in demo.stdout
    assert "CNN focus with the shipped pair model" in demo.stdout
    for png in (
        "focus_curve.png",
        "defocus_series.png",
        "predicted_vs_true.png",
        "drift_tracking.png",
        "focus_map.png",
        "calibration.png",
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
    result = _run("show", "deadbeef00", "--catalog", str(tmp_path / "c"), "--create", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("autofocus show: No run 'deadbeef00'")
    result = _run("train", "--catalog", str(tmp_path / "c"), check=False)  # exists now
    assert "No training runs of set 'default'" in result.stderr


def test_every_command_the_readme_shows_exists():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```\n(.*?)```", readme, flags=re.S)
    shown = [line.strip() for block in blocks for line in block.splitlines()]
    shown += re.findall(r"`(autofocus [a-z][a-z-]*)[^`]*`", readme)
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
    _run("collect", *common, "--create", "--fields", "3", "--shots", "8", cwd=tmp_path)
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
    import numpy as np

    from devices import ImageSample

    mic.set_sample(ImageSample(amplitude=np.ones((64, 64)), label="blank"))
    with pytest.raises(NoFocusFound):
        catalog_RE(brenner_sweep(mic.camera, mic.z, mic.led, -10, 10, 11))
    (uid,) = list(catalog)
    plot = tmp_path / "none.png"
    assert main(["replay", uid, "--catalog", str(tmp_path / "catalog"), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "no focus found: No focus peak" in out
    assert plot.stat().st_size > 1000


def test_incomplete_runs_are_listed_shown_replayed_and_recovered(tmp_path, RE, mic):
    """Runs without a stop document (a writer that died) through the real commands."""
    import bluesky.plan_stubs as bps
    import bluesky.plans as bp
    import numpy as np

    from autofocus_plans import load_frames, load_table, open_catalog
    from autofocus_plans.durable import DurableWriter

    location = tmp_path / "catalog"
    catalog = open_catalog(location, create=True)
    mic.camera.write_dir = location / "frames"
    writer = DurableWriter(catalog, journal_dir=None)
    # everything a writer stores before it dies: every document but the stop
    RE.subscribe(lambda name, doc: name != "stop" and writer(name, doc))
    (cut,) = RE(bp.scan([mic.camera], mic.z, -4, 4, 5), sample="cells:1").run_start_uids

    def no_events_yet():
        yield from bps.open_run()
        yield from bps.stage(mic.camera)
        yield from bps.declare_stream(mic.camera, name="primary")
        yield from bps.unstage(mic.camera)
        yield from bps.close_run()

    (empty,) = RE(no_events_yet()).run_start_uids
    assert len(load_table(catalog[cut])["z"]) == 5
    assert load_frames(catalog[cut]).shape == (5, 256, 256)
    assert {k: len(v) for k, v in load_table(catalog[empty]).items()} == {
        "camera_brenner": 0,
        "camera_brenner_noise": 0,
        "camera_max": 0,
        "camera_mean": 0,
        "camera_saturated_fraction": 0,
        "time": 0,
    }
    assert load_frames(catalog[empty]).shape == (0, 256, 256)

    at = ["--catalog", str(location)]
    runs = _run("runs", *at, columns=200).stdout
    assert runs.count("incomplete (no stop)") == 2, runs
    shown = _run("show", cut[:8], *at).stdout
    assert "status: incomplete (no stop)" in shown and "stream primary: 5 event(s)" in shown
    plot = tmp_path / "cut.png"
    replayed = _run("replay", cut[:8], *at, "--plot", str(plot)).stdout
    assert "replayed 9 documents" in replayed and "no stop document" in replayed
    assert len(re.findall(r"\|\s+\d+\s+\|\s+\d\d:\d\d:\d\d", replayed)) == 5  # LiveTable rows
    assert plot.stat().st_size > 1000
    assert "holds no events yet" in _run("replay", empty[:8], *at, "--plot", str(plot)).stdout

    recovered = _run("recover", cut[:8], empty[:8], *at).stdout
    assert f"run {cut[:8]}: marked incomplete, kept 5 primary" in recovered
    assert f"run {empty[:8]}: marked incomplete, kept 0 primary" in recovered
    assert _run("runs", *at, columns=200).stdout.count("incomplete (recovered)") == 2
    stop = open_catalog(location)[cut].stop
    assert stop["exit_status"] == "fail" and stop["num_events"] == {"primary": 5}
    assert np.array_equal(load_table(open_catalog(location)[cut])["z"], [-4, -2, 0, 2, 4])


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("htp://127.0.0.1:8765", "'htp://127.0.0.1:8765' is not a catalogue server URL"),
        ("no-such-catalog", "There is no catalogue at"),
        ("http://127.0.0.1:9", "Cannot reach the catalogue server at http://127.0.0.1:9"),
    ],
)
def test_bad_catalogue_locations_are_one_sentence(tmp_path, location, message):
    result = _run("runs", "--catalog", location, cwd=tmp_path, check=False)
    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("autofocus")]
    assert line.startswith(f"autofocus runs: {message}")
    assert list(tmp_path.iterdir()) == []


def test_create_makes_a_new_catalogue(tmp_path):
    result = _run("runs", "--catalog", "fresh", "--create", cwd=tmp_path)
    assert "0 run(s)" in result.stdout and (tmp_path / "fresh" / "catalog.db").is_file()


def test_cli_imports_nothing_heavy_until_a_command_needs_it():
    code = (
        "import sys, autofocus_plans.cli, autofocus_plans.replay; "
        "from autofocus_plans import replay; "
        "heavy = ('bluesky', 'ophyd', 'tiled', 'torch', 'scipy', 'devices', 'pandas'); "
        "print(callable(replay), sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split(maxsplit=1) == ["True", "[]\n"]


def test_shell_refuses_a_mistyped_catalogue_folder(tmp_path):
    result = _run(
        "shell", "--catalog", "autofocus-dta", "-c", "print(1)", cwd=tmp_path, check=False
    )
    assert result.returncode == 2
    assert "There is no catalogue at" in result.stderr and "--create" in result.stderr
    assert list(tmp_path.iterdir()) == []
