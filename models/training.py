"""Training data from catalogue runs, and training with a field-of-view validation split."""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .compute import resolve_device
from .learned import ARCHITECTURES, DefocusModel
from .preprocessing import Preprocessing
from .uncertainty import calibrate, sample_spectrum

__all__ = ["DefocusExamples", "examples_from_runs", "regression_metrics", "train"]

#: optical settings a model is tied to; a plan refuses a model whose values differ
OPTICS_KEYS = (
    "led_objective_na",
    "led_immersion_index",
    "led_wavelength_um",
    "camera_pixel_size_um",
    "led_pitch_mm",
    "led_height_mm",
    "led_pattern",
)


@dataclass
class DefocusExamples:
    """Frames labelled with their signed defocus ``z - z_focus`` (µm), grouped by field of view."""

    frames: np.ndarray
    defocus_um: np.ndarray
    fov: np.ndarray
    run_uids: list[str] = field(default_factory=list)
    optics: dict[str, Any] = field(default_factory=dict)
    depth_of_field_um: float = float("nan")

    def __len__(self) -> int:
        return len(self.defocus_um)

    def subset(self, mask: np.ndarray) -> DefocusExamples:
        return DefocusExamples(
            self.frames[mask],
            self.defocus_um[mask],
            self.fov[mask],
            self.run_uids,
            self.optics,
            self.depth_of_field_um,
        )


def examples_from_runs(runs: Iterable[Any], *, progress: bool = True) -> DefocusExamples:
    """Read labelled frames from training runs of a Tiled catalogue.

    Each run must be a training run written by
    ``autofocus_plans.collect_training_set`` (its start document holds
    ``z_focus_um``, ``fov_id``, ``motors`` and ``optics``).
    """
    frames, labels, fovs, uids = [], [], [], []
    optics: dict[str, Any] = {}
    dof = float("nan")
    runs = list(runs)
    for run in tqdm(runs, desc="reading runs", unit="run", disable=not progress):
        start = run.start
        if "z_focus_um" not in start:
            raise ValueError(
                f"Run {start['uid'][:8]} is not a training run (no z_focus_um in its start "
                "document); select runs with purpose='training'."
            )
        stream = run["primary"]
        image_key = next(k for k in stream if k.endswith("_image"))
        z = np.asarray(stream[start["motors"][0]].read(), dtype=float)
        stack = np.asarray(stream[image_key].read())
        n = min(len(z), len(stack))
        per_shot = len(start.get("led_patterns") or [None])
        if frames and per_shot != frames[0].ndim - 2:
            raise ValueError(
                "Training runs mix single frames and frame pairs; train one model per kind."
            )
        n -= n % per_shot  # a pair cut short by an interruption is not a pair
        if per_shot > 1:  # consecutive events are one shot's frames under each pattern
            frames.append(stack[:n].reshape(n // per_shot, per_shot, *stack.shape[1:]))
        else:
            frames.append(stack[:n])
        labels.append(z[:n:per_shot] - float(start["z_focus_um"]))
        fovs.extend([str(start.get("fov_id", start["uid"]))] * (n // per_shot))
        uids.append(start["uid"])
        run_optics = {k: start.get("optics", {}).get(k) for k in OPTICS_KEYS}
        if per_shot > 1:
            run_optics["led_patterns"] = list(start["led_patterns"])
        if optics and run_optics != optics:
            differing = [k for k in run_optics if run_optics[k] != optics.get(k)]
            raise ValueError(
                f"Training runs mix optical configurations ({', '.join(differing)} differ); "
                "train one model per configuration."
            )
        optics = run_optics
        dof = float(start.get("depth_of_field_um", dof))
    if not frames:
        raise ValueError("No training runs given; collect some with `autofocus collect`.")
    return DefocusExamples(
        np.concatenate(frames), np.concatenate(labels), np.asarray(fovs), uids, optics, dof
    )


def regression_metrics(true_um, predicted_um, dof_um: float) -> dict[str, float]:
    error = np.asarray(predicted_um) - np.asarray(true_um)
    mae, rmse = float(np.mean(np.abs(error))), float(np.sqrt(np.mean(error**2)))
    p95 = float(np.percentile(np.abs(error), 95))
    return {
        "mae_um": mae,
        "rmse_um": rmse,
        "p95_um": p95,
        "mae_dof": mae / dof_um,
        "rmse_dof": rmse / dof_um,
        "p95_dof": p95 / dof_um,
        "n": int(error.size),
    }


def _split_by_fov(fov: np.ndarray, val_fraction: float, rng: np.random.Generator):
    fields = np.unique(fov)
    if len(fields) < 2:
        raise ValueError(
            "Training needs frames from at least 2 fields of view to validate on unseen "
            "ones; collect more fields."
        )
    rng.shuffle(fields)
    n_val = min(len(fields) - 1, max(1, round(val_fraction * len(fields))))
    val_fields = set(fields[:n_val].tolist())
    return np.array([f not in val_fields for f in fov]), sorted(val_fields)


def train(
    examples: DefocusExamples,
    architecture: str = "DefocusCNN",
    *,
    epochs: int = 60,
    batch_size: int = 32,
    learning_rate: float = 2e-3,
    val_fraction: float = 0.25,
    patience: int = 8,
    crops_per_frame: int = 4,
    seed: int = 0,
    preprocessing: Preprocessing | None = None,
    name: str | None = None,
    progress: bool = True,
    device: str = "cpu",
    reference: Any = None,
) -> DefocusModel:
    """Train a defocus regressor; validation frames come from fields of view never trained on.

    Stops early when the validation MAE has not improved for ``patience``
    epochs and keeps the best weights. Called in every process of a
    ``torch.distributed`` group (e.g. under ``torchrun``, gloo backend), it
    trains one model with DistributedDataParallel, each process taking its
    share of every batch. The returned model's metadata holds
    the architecture, preprocessing, optics, training run uids and the
    validation MAE/RMSE in µm and in depths of field.

    ``device`` is where the network trains: ``"cpu"`` (the default),
    ``"cuda"``, or ``"auto"`` (a CUDA GPU where torch sees one). The same
    seed gives the same model on the CPU whatever the machine; a GPU's
    kernels differ in the last digits. The returned model is on the CPU either
    way, and ``metadata["device"]`` records where it trained.

    ``reference`` (pairs only) is an estimator that reads the same pairs another
    way, e.g. :class:`~models.dual_led.DualLEDDefocus` (its ``estimate(first,
    second)``): its errors on the validation fields go into
    ``metadata["reference"]``, so that a plan that checks the model against it
    (``cnn_focus``'s two-LED cross-check) knows how far apart the two may honestly be.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"Unknown architecture {architecture!r}; choose one of {ARCHITECTURES}.")
    rank, world = _rank_and_world()
    where = resolve_device(device)
    if world > 1 and where.type != "cpu":
        raise ValueError(
            f"Training in {world} processes runs on the CPU (gloo): pass device='cpu', or train "
            "in one process to use the GPU."
        )
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    pairs = examples.frames.ndim == 4
    preprocessing = preprocessing or Preprocessing.default_for(examples.frames)
    if pairs != (preprocessing.inputs == "pair"):
        raise ValueError(
            f"The examples are {'frame pairs' if pairs else 'single frames'} but the "
            f"preprocessing expects inputs={preprocessing.inputs!r}; pass "
            f"Preprocessing(inputs={'pair' if pairs else 'frame'!r}) or leave it out."
        )
    if reference is not None and not pairs:
        raise ValueError(
            "A reference estimator reads frame pairs (N, 2, H, W), but these examples are "
            "single frames; leave reference out or train on pairs."
        )
    is_train, val_fields = _split_by_fov(examples.fov, val_fraction, rng)
    scale = float(np.max(np.abs(examples.defocus_um))) or 1.0
    model = DefocusModel(architecture, preprocessing, label_scale_um=scale)
    y = torch.from_numpy((examples.defocus_um / scale).astype(np.float32))
    train_frames = examples.frames[is_train]
    # several random crops of each training frame: new views of the sample, same defocus
    corners = [
        preprocessing.random_corner(f.shape, rng)
        for f in train_frames
        for _ in range(crops_per_frame)
    ]
    x_train = model.inputs(np.repeat(train_frames, crops_per_frame, axis=0), corners)
    y_train = y[torch.from_numpy(is_train)].repeat_interleave(crops_per_frame)
    x_val, y_val = model.inputs(examples.frames[~is_train]), y[torch.from_numpy(~is_train)]
    x_train, y_train, x_val, y_val = (t.to(where) for t in (x_train, y_train, x_val, y_val))

    net = model.net.to(where)
    # Several processes (torchrun): each one builds the same examples and takes its share
    # of every batch; DistributedDataParallel averages the gradients, so the steps are
    # those of one process on the whole batch and validation agrees on every rank.
    stepped = net
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        stepped = DistributedDataParallel(net)
    optimizer = torch.optim.AdamW(net.parameters(), lr=learning_rate, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=3)
    loss_fn = nn.SmoothL1Loss(beta=0.05)
    # batch order and flips: the same draws on every rank, each rank using its share
    generator = torch.Generator().manual_seed(seed)
    best = (float("inf"), copy.deepcopy(net.state_dict()), 0)
    t0 = time.monotonic()
    quiet = not progress or rank != 0
    bar = tqdm(range(epochs), desc=f"training {architecture}", unit="epoch", disable=quiet)
    for epoch in bar:
        net.train()
        order = torch.randperm(len(y_train), generator=generator)
        for i in range(0, len(order), batch_size):
            batch = order[i : i + batch_size]
            if len(batch) < 2 * world:  # the same test on every rank: the same number of steps
                continue
            mine = slice(rank, None, world)
            idx = batch[mine]
            xb = x_train[idx]
            if architecture == "DefocusCNN":
                xb = augment(xb, preprocessing, generator, draws=len(batch), mine=mine)
            optimizer.zero_grad()
            loss = loss_fn(stepped(xb), y_train[idx])
            loss.backward()
            optimizer.step()
        net.eval()
        with torch.inference_mode():
            val_mae = float(torch.mean(torch.abs(net(x_val) - y_val))) * scale
        scheduler.step(val_mae)
        bar.set_postfix(val_mae_um=f"{val_mae:.2f}", loss=f"{loss.item():.4f}")
        if val_mae < best[0]:
            best = (val_mae, copy.deepcopy(net.state_dict()), epoch)
        elif epoch - best[2] >= patience:
            break
    net.load_state_dict(best[1])
    net.eval()
    with torch.inference_mode():
        predicted = net(x_val).cpu().numpy() * scale
    net.to("cpu")
    y_val = y_val.cpu()
    dof = examples.depth_of_field_um
    validation = regression_metrics(y_val.numpy() * scale, predicted, dof)
    # the fields that chose the weights also calibrate the intervals: never trained on, but
    # selected on, so the stated coverage is a little optimistic
    calibration = calibrate(
        model.predict_views(examples.frames[~is_train]),
        examples.defocus_um[~is_train],
        fields=len(val_fields),
        spectra=np.stack(
            [sample_spectrum(preprocessing.first(f), preprocessing.crop) for f in examples.frames]
        ),
        is_train=is_train,
    )
    if not (math.isfinite(calibration.quantile) and math.isfinite(calibration.novelty_limit)):
        warnings.warn(
            f"Only {calibration.frames} validation frames: too few to calibrate a "
            f"{calibration.coverage:.0%} interval and a {calibration.familiar:.0%} novelty "
            "limit, so this model cannot tell when a sample is unfamiliar; collect more fields.",
            stacklevel=2,
        )
    model.metadata = {
        "name": name or f"{architecture}-{time.strftime('%Y%m%d-%H%M%S')}",
        "architecture": architecture,
        "preprocessing": preprocessing.to_dict(),
        "optics": examples.optics,
        "inputs": preprocessing.inputs,
        "led_patterns": list(examples.optics.get("led_patterns") or []),
        "depth_of_field_um": dof,
        "training_run_uids": examples.run_uids,
        # where the frames came from; generated frames say so (e.g. the shipped models')
        "provenance": {"source": "catalogue", "run_uids": len(examples.run_uids)}
        if examples.run_uids
        else {"source": "arrays"},
        "trained_range_um": [float(examples.defocus_um.min()), float(examples.defocus_um.max())],
        "validation": validation,
        "validation_fields": val_fields,
        "calibration": calibration.to_dict(),
        "train_examples": int(is_train.sum()),
        "crops_per_frame": crops_per_frame,
        "epochs": best[2] + 1,
        "training_time_s": time.monotonic() - t0,
        "seed": seed,
        "processes": world,
        "device": str(where),
    }
    if reference is not None:
        model.metadata["reference"] = _reference_errors(
            reference, examples.frames[~is_train], examples.defocus_um[~is_train], dof
        )
    return model


def _reference_errors(
    reference: Any, pairs: np.ndarray, truth_um: np.ndarray, dof_um: float
) -> dict:
    """How well ``reference`` (``estimate(first, second)``) reads labelled frame pairs.

    MAE / RMSE / p95 over the pairs it gives an estimate for, and the share it
    gives one for (``found``). ``train`` has checked that they are pairs.
    """
    estimates = [reference.estimate(p[0], p[1]) for p in pairs]
    found = np.array([e.found for e in estimates])
    figures = {"name": getattr(reference, "name", type(reference).__name__), "frames": len(pairs)}
    figures["found"] = float(found.mean()) if len(found) else 0.0
    if found.any():
        predicted = np.array([e.defocus_um for e in estimates])[found]
        figures |= regression_metrics(np.asarray(truth_um)[found], predicted, dof_um)
    return figures


def augment(
    xb: torch.Tensor,
    preprocessing: Preprocessing,
    generator: torch.Generator,
    *,
    draws: int | None = None,
    mine: slice = slice(None),
) -> torch.Tensor:
    """A batch of CNN inputs under random symmetries of the illumination (training only).

    Each input's rows are flipped with probability 1/2 and, for pairs, its
    signed channels negated with probability 1/2. ``draws`` random numbers of
    each kind are drawn from ``generator`` (the whole batch when several
    processes share it; default ``len(xb)``) and ``mine`` picks this
    process's share of them.
    """
    draws = len(xb) if draws is None else draws
    # flipping rows is a symmetry of illumination along x; flipping columns is not
    flip = (torch.rand(draws, generator=generator) < 0.5)[mine].to(xb.device)
    flipped = xb.flip(-2)
    # a centred FFT's (or correlation's) zero row is at crop/2: roll it back
    for channel in preprocessing.centred_channels:
        flipped[:, channel] = flipped[:, channel].roll(1, dims=-2)
    xb = torch.where(flip[:, None, None, None], flipped, xb)
    if preprocessing.signed_channels:
        # a transparent sample shows opposite contrast under the two LEDs: its
        # cross-correlation peak is negative at the same displacement
        negate = (torch.rand(draws, generator=generator) < 0.5)[mine].to(xb.device)
        signed = list(preprocessing.signed_channels)
        xb = xb.clone()
        xb[:, signed] = torch.where(negate[:, None, None, None], -xb[:, signed], xb[:, signed])
    return xb


def _rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes training together (0, 1 alone)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
