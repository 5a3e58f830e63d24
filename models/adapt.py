"""Few-shot adaptation of a trained defocus model to the user's own sample.

A model trained on some kinds of sample can miss on another (measured: a pair
model misses periodic bars by 1.2-1.5 DOF while it reads the families it never
saw but which resemble its training set within 0.4). One labelled z-stack of
the new sample (``autofocus_plans.calibrate_model`` records one: a Brenner
sweep for focus, then exposures at known offsets) is enough to fine-tune the
model's weights briefly, at a low learning rate, and to recalibrate its
interval and novelty for that sample (:func:`fine_tune`).
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .compute import resolve_device
from .learned import DefocusModel
from .training import DefocusExamples, augment, regression_metrics
from .uncertainty import Calibration, Novelty, calibrate, sample_spectrum, view_corners

__all__ = ["MIN_EXAMPLES", "fine_tune"]

#: Fewest labelled frames (or pairs) to adapt from: every other one is held out, and a 90 %
#: conformal interval needs at least 9 held-out frames to be finite.
MIN_EXAMPLES = 18


def fine_tune(
    model: DefocusModel,
    examples: DefocusExamples,
    *,
    epochs: int = 30,
    learning_rate: float = 3e-4,
    crops_per_frame: int = 8,
    batch_size: int = 16,
    holdout_every: int = 2,
    seed: int = 0,
    name: str | None = None,
    progress: bool = True,
    device: str = "cpu",
) -> DefocusModel:
    """A copy of ``model`` adapted to the sample of ``examples`` (one z-stack is enough).

    The frames are sorted by defocus and every ``holdout_every``-th one is
    held out; the network is trained from ``model``'s weights for up to
    ``epochs`` passes over random crops of the others (``crops_per_frame``
    per frame, with the augmentation of :func:`models.train`: row flips, and
    for pairs negated correlations), and the epoch whose weights predict the
    held-out frames best is kept. Epoch 0 is ``model`` itself: when no epoch
    beats it, the weights stay the base's. The held-out frames then
    recalibrate the interval, and the novelty is refit so that this sample
    counts as familiar (see the notes). ``model`` is left untouched.

    Parameters
    ----------
    model : DefocusModel
        The trained model to adapt (a checkpoint from :func:`models.train` or
        :func:`models.load_model`).
    examples : DefocusExamples
        Labelled frames of the new sample, e.g.
        ``examples_from_runs([catalog[uid]])`` of a run by
        ``autofocus_plans.calibrate_model``. They must be of the model's
        inputs (single frames or pairs) and optics.
    epochs : int
        Most passes over the crops.
    learning_rate : float
        AdamW learning rate (a tenth of training's: the weights are to move a
        little, not to forget what the base learnt).
    crops_per_frame : int
        Random crops of each training frame (new views of one sample).
    batch_size : int
        Crops per step.
    holdout_every : int
        Every how many frames, in order of defocus, one is held out.
    seed : int
        Seed of the crops, the batch order, the augmentation and dropout.
    name : str, optional
        Name of the adapted model; default the base's with ``+calibrated`` and a timestamp.
    progress : bool
        Show a progress bar.
    device : str
        Where to train: ``"cpu"``, ``"cuda"`` or ``"auto"``; the result is on the CPU.

    Returns
    -------
    DefocusModel
        The adapted model. Its metadata is the base's with ``name`` and
        ``calibration`` replaced, plus ``adapted_from`` (the base's name, file
        and sha256) and ``adaptation`` (run uids, frames, epochs, and the MAE
        on the held-out frames before and after, in µm and DOF).

    Notes
    -----
    The held-out frames come from the same field as the frames trained on,
    at other offsets, so their error (``adaptation["after"]``) measures how
    well the model now fits this sample, not how it does on the sample's
    other fields; ``benchmarks/bench_calibration.py`` measures that. For the
    same reason the recalibrated interval never gets narrower than the base's
    quantile makes it (the base's was calibrated across fields). The novelty
    stays one Gaussian of sample spectra, the base's widened towards this
    sample's mean spectrum (:func:`_pooled`; the checkpoint keeps only the
    base's mean and precision, not its training spectra), with a limit that
    keeps familiar every frame the base found familiar and takes in every
    held-out frame of this field. Other fields of the sample are familiar
    only as far as they resemble this one: one field cannot say how much the
    sample's fields differ (bars, whose fields show other bar groups: 34 % of
    their pairs unfamiliar before, 1 % after in ``bench_calibration``; with
    the test suite's smaller base model they stay unfamiliar).
    """
    pairs = _check(model, examples)
    if epochs < 0 or holdout_every < 2 or crops_per_frame < 1 or batch_size < 2:
        raise ValueError(
            "fine_tune needs epochs >= 0, holdout_every >= 2, crops_per_frame >= 1 and "
            f"batch_size >= 2, got {epochs}, {holdout_every}, {crops_per_frame}, {batch_size}."
        )
    where = resolve_device(device)
    t0 = time.monotonic()
    torch.manual_seed(seed)  # dropout
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    prep = model.preprocessing
    dof = examples.depth_of_field_um
    if not math.isfinite(dof):
        dof = float(model.metadata.get("depth_of_field_um", math.nan))

    # Interleaved in defocus, not a contiguous block: the held-out frames then span the
    # same range as the frames trained on (a held-out end of the stack would test
    # extrapolation, and leave that end untrained). One field gives no other split: crops
    # of one frame overlap, so a spatial split would show the network its test pixels.
    order = np.argsort(examples.defocus_um, kind="stable")
    is_train = np.ones(len(examples), dtype=bool)
    is_train[order[holdout_every - 1 :: holdout_every]] = False

    adapted = DefocusModel(
        model.architecture,
        prep,
        label_scale_um=model.label_scale_um,
        metadata=copy.deepcopy(model.metadata),
        net=copy.deepcopy(model.net).to(where),
        net_options=model.net_options,
    )
    scale = adapted.label_scale_um
    train_frames = examples.frames[is_train]
    corners = [
        prep.random_corner(f.shape, rng) for f in train_frames for _ in range(crops_per_frame)
    ]
    x_train = adapted.inputs(np.repeat(train_frames, crops_per_frame, axis=0), corners).to(where)
    y_train = torch.from_numpy(
        np.repeat(examples.defocus_um[is_train] / scale, crops_per_frame).astype(np.float32)
    ).to(where)
    held_frames, held_truth = examples.frames[~is_train], examples.defocus_um[~is_train]
    views = view_corners(held_frames.shape[-2:], prep.crop)
    x_held = adapted.inputs(np.repeat(held_frames, len(views), axis=0), views * len(held_frames))
    x_held = x_held.to(where)
    net = adapted.net

    def held_out_views() -> np.ndarray:
        net.eval()
        with torch.inference_mode():
            out = net(x_held).cpu().numpy() * scale
        return out.reshape(len(held_frames), len(views))

    before = regression_metrics(held_truth, held_out_views().mean(axis=1), dof)
    best = (before["mae_um"], copy.deepcopy(net.state_dict()), 0)
    optimizer = torch.optim.AdamW(net.parameters(), lr=learning_rate, weight_decay=1e-4)
    loss_fn = nn.SmoothL1Loss(beta=0.05)  # as in training: the same objective, continued
    bar = tqdm(
        range(1, epochs + 1), desc=f"adapting {model.name}", unit="epoch", disable=not progress
    )
    for epoch in bar:
        # train mode: batch norm re-estimates its statistics on the new sample, where an
        # unfamiliar sample moves them (bars, 2 seeds: 0.46-0.51 DOF on its other fields,
        # 0.52-0.62 with the base's statistics frozen)
        net.train()
        shuffled = torch.randperm(len(y_train), generator=generator)
        for i in range(0, len(shuffled), batch_size):
            idx = shuffled[i : i + batch_size]
            if len(idx) < 2:  # batch norm needs two
                continue
            xb = x_train[idx]
            if model.architecture == "DefocusCNN":
                xb = augment(xb, prep, generator)
            optimizer.zero_grad()
            loss = loss_fn(net(xb), y_train[idx])
            loss.backward()
            optimizer.step()
        mae = float(np.mean(np.abs(held_out_views().mean(axis=1) - held_truth)))
        bar.set_postfix(held_out_mae_um=f"{mae:.2f}")
        if mae < best[0]:
            best = (mae, copy.deepcopy(net.state_dict()), epoch)
    net.load_state_dict(best[1])
    net.eval()
    held_views = held_out_views()
    after = regression_metrics(held_truth, held_views.mean(axis=1), dof)
    net.to("cpu")

    base_calibration = model.calibration
    spectra = np.stack([sample_spectrum(prep.first(f), prep.crop) for f in examples.frames])
    calibration = _recalibrate(
        held_views,
        held_truth,
        fields=len(np.unique(examples.fov)),
        spectra=spectra,
        is_train=is_train,
        base=base_calibration,
    )
    metadata = adapted.metadata
    earlier = list(metadata.pop("earlier_adaptations", []))
    if "adaptation" in metadata:  # adapting an adapted model: keep the chain
        earlier.append(
            {"adapted_from": metadata.pop("adapted_from", None), **metadata.pop("adaptation")}
        )
    metadata.update(
        {
            "name": name or f"{model.name}+calibrated-{time.strftime('%Y%m%d-%H%M%S')}",
            "calibration": calibration.to_dict(),
            "adapted_from": {
                "name": model.name,
                "sha256": model.file_sha256,
                "path": str(model.path) if model.path else None,
            },
            "adaptation": {
                "method": "fine-tune from the base weights; held-out offsets choose the epoch "
                "and recalibrate the interval; the novelty widened to this sample",
                "run_uids": list(examples.run_uids),
                "fields": sorted({str(f) for f in examples.fov}),
                "frames": len(examples),
                "inputs": "pair" if pairs else "frame",
                "train_frames": int(is_train.sum()),
                "held_out_frames": int((~is_train).sum()),
                "holdout_every": holdout_every,
                "defocus_range_um": [
                    float(examples.defocus_um.min()),
                    float(examples.defocus_um.max()),
                ],
                "epochs": best[2],
                "max_epochs": epochs,
                "learning_rate": learning_rate,
                "crops_per_frame": crops_per_frame,
                "batch_size": batch_size,
                "seed": seed,
                "depth_of_field_um": dof,
                "before": before,
                "after": after,
                "time_s": time.monotonic() - t0,
                "device": str(where),
            },
        }
    )
    if earlier:
        metadata["earlier_adaptations"] = earlier
    return adapted


def _check(model: DefocusModel, examples: DefocusExamples) -> bool:
    """Refuse examples the model cannot adapt from; returns whether they are pairs."""
    pairs = examples.frames.ndim == 4
    kind = "pairs of frames" if pairs else "single frames"
    if pairs != (model.shots == 2):
        wanted = (
            "pairs of frames (one under each of its two LEDs)"
            if model.shots == 2
            else "single frames"
        )
        raise ValueError(
            f"Model {model.name!r} predicts from {wanted} but the examples are {kind}; "
            "calibrate it on frames recorded the way it was trained."
        )
    if len(examples) < MIN_EXAMPLES:
        raise ValueError(
            f"Adapting a model needs at least {MIN_EXAMPLES} labelled {kind} of the sample "
            f"(every other one is held out to check the adaptation), got {len(examples)}; "
            f"record a longer z-stack (calibrate_model(..., shots=24))."
        )
    trained = dict(model.metadata.get("optics") or {})
    if model.patterns:
        trained.setdefault("led_patterns", list(model.patterns))
    for key, now in (examples.optics or {}).items():
        then = trained.get(key)
        if then is None or now is None:  # not recorded on one side: nothing to compare
            continue
        if not _same(then, now):
            raise ValueError(
                f"The examples were recorded with {key} = {now!r} but model {model.name!r} was "
                f"trained for {then!r}; calibrate it under the optics it was trained for."
            )
    return pairs


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(float(a), float(b), rel_tol=1e-3)
    return list(a) == list(b) if isinstance(a, list | tuple) else a == b


def _recalibrate(
    views_um: np.ndarray,
    true_um: np.ndarray,
    *,
    fields: int,
    spectra: np.ndarray,
    is_train: np.ndarray,
    base: Calibration | None,
) -> Calibration:
    """The adapted model's calibration from its held-out frames (see :func:`fine_tune`)."""
    coverage = base.coverage if base else 0.9
    new = calibrate(views_um, true_um, fields=fields, coverage=coverage)
    # the held-out offsets share the field with the frames trained on: their errors
    # understate those on the sample's other fields, which the base's quantile (from fields
    # never trained on) does not
    quantile = max(new.quantile, base.quantile) if base else new.quantile
    novelty, limit, familiar = None, math.inf, base.familiar if base else 0.95
    if base is not None and base.novelty is not None:
        novelty = _pooled(base.novelty, spectra[is_train])
        held = novelty.distance(spectra[~is_train])
        # sqrt(limit**2 + 1): every frame the base counted familiar still is (see _pooled);
        # and every held-out frame of the new sample is
        limit = max(math.sqrt(base.novelty_limit**2 + 1), float(held.max()))
    return Calibration(
        coverage, quantile, new.floor_um, new.frames, fields, novelty, limit, familiar
    )


def _pooled(base: Novelty, spectra: np.ndarray) -> Novelty:
    """The base's Gaussian of sample spectra, widened to take in the new sample's mean.

    An equal mixture of the base's Gaussian and one as wide around the new
    sample's mean spectrum (one field cannot say how the sample's fields
    differ, so they are taken to differ as the base's training fields did),
    as one Gaussian: the midpoint, and the base's covariance plus a quarter
    of the outer product of the two means' difference. A frame at distance
    ``d`` from the base's Gaussian is within ``sqrt(d**2 + 1)`` of this one.
    """
    delta = spectra.mean(axis=0) - base.mean
    covariance = np.linalg.inv(base.precision) + 0.25 * np.outer(delta, delta)
    return Novelty(base.mean + 0.5 * delta, np.linalg.inv(covariance))
