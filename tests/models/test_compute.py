"""Where models train and predict: device="auto" | "cpu" | "cuda" (no GPU needed to pass)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import models
from models import DefocusExamples, resolve_device


def _examples(n_fields: int = 6, per_field: int = 8) -> DefocusExamples:
    # defocus blurs a random texture: enough for a few epochs to learn something
    rng = np.random.default_rng(0)
    frames, labels, fov = [], [], []
    for field in range(n_fields):
        texture = rng.random((128, 128))
        for dz in np.linspace(-10, 10, per_field):
            spectrum = np.fft.fft2(texture)
            f = np.fft.fftfreq(128)
            blur = np.exp(-(abs(dz) * 0.3) * (f[:, None] ** 2 + f[None, :] ** 2) * 50)
            frames.append(np.real(np.fft.ifft2(spectrum * blur)).astype(np.float32))
            labels.append(dz)
            fov.append(field)
    return DefocusExamples(np.stack(frames), np.array(labels), np.array(fov), depth_of_field_um=4.0)


def test_devices_resolve_and_a_missing_gpu_is_one_clear_sentence():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(ValueError, match="device must be one of"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA GPU on this machine: use device='cpu'"):
            resolve_device("cuda")


def test_auto_trains_where_it_can_and_the_model_comes_back_on_the_cpu():
    examples = _examples()
    kwargs = dict(epochs=3, crops_per_frame=1, seed=3, progress=False)
    on_cpu = models.train(examples, "FourierMLP", device="cpu", **kwargs)
    auto = models.train(examples, "FourierMLP", device="auto", **kwargs)
    assert on_cpu.metadata["device"] == "cpu"
    assert auto.metadata["device"] == str(resolve_device("auto"))
    assert on_cpu.device.type == auto.device.type == "cpu"
    frames = examples.frames[:5]
    if auto.metadata["device"] == "cpu":  # the same seed, the same model
        np.testing.assert_array_equal(on_cpu.predict(frames), auto.predict(frames))
    # batch inference follows the weights, and gives the same answer there
    before = auto.predict(frames)
    moved = auto.to("auto").predict(frames)
    np.testing.assert_allclose(moved, before, rtol=1e-4, atol=1e-4)


def test_the_cli_refuses_a_gpu_the_machine_does_not_have(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    autofocus = Path(sys.executable).with_name("autofocus")
    command = [str(autofocus), "train", "--catalog", str(tmp_path / "none"), "--device", "cuda"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "sees no CUDA GPU on this machine" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_too_few_validation_frames_for_a_calibration_are_named():
    # 2 of 6 fields validate: 16 frames, fewer than a 95 % conformal limit needs (19)
    with pytest.warns(UserWarning, match="Only 16 validation frames: too few"):
        model = models.train(_examples(), "FourierMLP", epochs=1, crops_per_frame=1, progress=False)
    assert model.calibration.novelty_limit == float("inf")
