"""The IPython profile, loaded by a real IPython and by the queueserver's loader."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from autofocus_plans import open_catalog

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiles" / "profile_autofocus"


def _env(tmp_path):
    env = dict(os.environ)
    env.update(
        AUTOFOCUS_CATALOG=str(tmp_path / "catalog"),
        AUTOFOCUS_TIME_SCALE="0",
        AUTOFOCUS_SAMPLE="beads",
        IPYTHONDIR=str(tmp_path / "ipython"),
    )
    env.pop("DISPLAY", None)
    return env


def _git_status() -> str:
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to compare the repository's status")
    return subprocess.run(
        [git, "status", "--porcelain", "--untracked-files=all"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_ipython_profile_runs_a_sweep_and_reads_it_back(tmp_path):
    status_before = _git_status()
    ipython = Path(sys.executable).with_name("ipython")
    command = (
        "r = RE(brenner_sweep(camera, z, led, -20, 20, 21, md={'sample': 'beads:0'})); "
        "uid = r.plan_result.run_uid; "
        "print('UID', uid); "
        "print('ERROR', abs(r.plan_result.best_z - microscope.true_focus()))"
    )
    out = subprocess.run(
        [str(ipython), f"--profile-dir={PROFILE}", "--no-banner", "-c", command],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    uid = next(line.split()[1] for line in out.splitlines() if line.startswith("UID"))
    error = float(next(line.split()[1] for line in out.splitlines() if line.startswith("ERROR")))
    assert error < 0.5
    assert "bluesky-autofocus: RE, camera, led, z, catalog ready" in out
    run = open_catalog(tmp_path / "catalog")[uid]
    assert run.start["plan_name"] == "brenner_sweep" and run.start["sample"] == "beads:0"
    assert run["primary"]["camera_image"].shape == (21, 256, 256)
    # the history went to IPYTHONDIR, and the checkout is as it was
    assert (tmp_path / "ipython" / "autofocus_history.sqlite").is_file()
    assert not (PROFILE / "history.sqlite").exists()
    assert _git_status() == status_before


def test_queueserver_loader_finds_plans_and_devices(tmp_path):
    lister = Path(sys.executable).with_name("qserver-list-plans-devices")
    subprocess.run(
        [str(lister), "--startup-dir", str(PROFILE / "startup"), "--file-dir", str(tmp_path)],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    listing = yaml.safe_load((tmp_path / "existing_plans_and_devices.yaml").read_text())
    plans, devices = listing["existing_plans"], listing["existing_devices"]
    for plan in (
        "brenner_sweep",
        "fast_focus",
        "fly_sweep",
        "collect_training_set",
        "cnn_focus",
        "track_focus",
        "focus_map",
        "tile_scan",
    ):
        assert plan in plans, plan
    for device in ("camera", "led", "z", "xy"):
        assert device in devices, device
    params = {p["name"]: p for p in plans["brenner_sweep"]["parameters"]}
    assert params["num"]["default"] == "21"
    assert "Number of exposures" in params["num"]["description"]
