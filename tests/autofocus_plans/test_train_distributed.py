"""`autofocus train --nproc 2`: two processes (torchrun, gloo on CPU) train as well as one."""

import subprocess
import sys
from pathlib import Path

import pytest
from bluesky import RunEngine

import models
from autofocus_plans import collect_training_set, open_catalog, subscribe_catalog
from devices import CameraSensor, SimMicroscope


@pytest.fixture
def training_catalog(tmp_path):
    location = tmp_path / "catalog"
    catalog = open_catalog(location, create=True)
    # 128² frames: the preprocessing's whole crop, at a quarter of the simulation cost
    mic = SimMicroscope("tissue", seed=0, time_scale=0, sensor=CameraSensor(shape=(128, 128)))
    RE = RunEngine({}, call_returns_result=True)
    subscribe_catalog(RE, catalog)
    RE(
        collect_training_set(
            mic.camera, mic.z, mic.led, mic.fov, list(range(6)), shots_per_field=10, seed=1
        )
    )
    return location


def _train(location: Path, nproc: int, out: Path) -> dict:
    autofocus = Path(sys.executable).with_name("autofocus")
    command = [str(autofocus), "train", "--catalog", str(location), "--nproc", str(nproc)]
    command += ["--architecture", "FourierMLP", "--epochs", "12", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return models.load_model(out).metadata


def test_two_processes_give_a_model_as_good_as_one(training_catalog, tmp_path):
    one = _train(training_catalog, 1, tmp_path / "one.safetensors")
    two = _train(training_catalog, 2, tmp_path / "two.safetensors")
    assert (one["processes"], two["processes"]) == (1, 2)
    assert two["training_run_uids"] == one["training_run_uids"]
    mae_1, mae_2 = one["validation"]["mae_um"], two["validation"]["mae_um"]
    assert abs(mae_2 - mae_1) <= 0.1 * mae_1, (mae_1, mae_2)
