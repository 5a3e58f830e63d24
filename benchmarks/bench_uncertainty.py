"""Does a defocus model know a sample it never saw? Intervals and novelty, per family.

A ``DefocusCNN`` trained the way the test suite trains one (10 tissue fields,
24 off-axis shots each, 20x/0.4; its interval and novelty calibrated on its
validation fields) predicts frames of fresh fields of every procedural
family, started within ±4 DOF of focus. Per family: the single-shot error,
how often the calibrated 90 % interval covers it, its median width, and how
often the frame is flagged as unlike the training frames (novelty > 1, where
``cnn_focus`` falls back before moving). The tissue row is the calibration's
own kind of sample: there the interval should cover ~90 % and few frames
should be flagged; the others are samples the model never saw.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from ._common import table

FAMILIES = ("tissue", "beads", "cells", "bars")


def _train(root: Path, fields: int):
    from bluesky import RunEngine

    import models
    from autofocus_plans import collect_training_set, find_runs, open_catalog, subscribe_catalog
    from devices import SimMicroscope

    catalog = open_catalog(root / "catalog", create=True)
    mic = SimMicroscope("tissue", seed=0, time_scale=0)
    RE = RunEngine({}, call_returns_result=True)
    subscribe_catalog(RE, catalog, cameras=[mic.camera])
    RE(
        collect_training_set(
            mic.camera,
            mic.z,
            mic.led,
            mic.fov,
            list(range(fields)),
            shots_per_field=24,
            training_set="unit",
            seed=1,
        )
    )
    runs = list(find_runs(catalog, purpose="training").values())
    examples = models.examples_from_runs(runs, progress=False)
    return models.train(
        examples, "DefocusCNN", epochs=14, crops_per_frame=2, patience=6, seed=0, progress=False
    )


def _figures(estimates, truth_um, dof: float) -> list:
    """Frames, MAE, interval coverage and median half-width (DOF), median novelty, flagged."""
    errors = np.abs([e.defocus_um for e in estimates] - np.asarray(truth_um))
    widths = np.array([e.interval_um for e in estimates])
    novelty = np.array([e.novelty for e in estimates])
    return [
        len(estimates),
        f"{errors.mean() / dof:.2f}",
        f"{np.mean(errors <= widths):.0%}",
        f"{np.median(widths) / dof:.2f}",
        f"{np.median(novelty):.2f}",
        f"{np.mean(novelty > 1):.0%}",
    ]


_HEADERS = [
    "frames",
    "MAE DOF",
    "interval covers",
    "median half-width DOF",
    "median novelty",
    "novelty > 1",
]


def _held_out_rows(quick: bool) -> list[list]:
    """Trained on three families (or all four), tested on the one (or the real images) left out."""
    from devices import SAMPLE_FAMILIES, ProceduralSample, SimMicroscope

    from .bench_generalisation import _fitted, _shots, real_images

    fields, shots = (2, 6) if quick else (5, 16)
    cfg = {"epochs": {"DefocusCNN": 3 if quick else 25}, "crops": 2}
    rng = np.random.default_rng(20261203)
    mic = SimMicroscope("cells", time_scale=0)
    dof = mic.depth_of_field_um
    sets = {
        family: _shots(mic, [ProceduralSample(family, 100 + k) for k in range(fields)], shots, rng)
        for family in SAMPLE_FAMILIES
    }
    reals = {name: _shots(mic, samples, shots, rng) for name, samples in real_images().items()}
    cases = [("tissue", [f for f in SAMPLE_FAMILIES if f != "tissue"], {"tissue": sets["tissue"]})]
    cases.append(("real images", list(SAMPLE_FAMILIES), reals))
    rows = []
    for _, families, tests in cases:
        model = _fitted(sets, families, "DefocusCNN", 0, cfg, dof)
        for name, (frames, labels, _) in tests.items():
            estimates = [model.estimate(f) for f in frames]
            rows.append([", ".join(families), name, *_figures(estimates, labels, dof)])
    return rows


def run(quick: bool) -> str:
    from devices import SimMicroscope

    t0 = time.perf_counter()
    fields, shots = (4, 4) if quick else (6, 8)
    with tempfile.TemporaryDirectory() as tmp:
        model = _train(Path(tmp), 4 if quick else 10)
    calibration = model.calibration
    rows = []
    for family in FAMILIES:
        mic = SimMicroscope(family, seed=7, time_scale=0)
        mic.led.set("off_axis").wait()
        mic.camera.exposure_time.put(0.25)
        dof = mic.depth_of_field_um
        rng = np.random.default_rng(3)
        estimates, offsets = [], []
        for f in range(fields):
            mic.fov.set(900 + f).wait()
            for offset in rng.uniform(-4, 4, shots) * dof:
                mic.z.set(mic.true_focus() + offset).wait()
                mic.camera.trigger().wait()
                estimates.append(model.estimate(mic.camera.last_frame))
                offsets.append(offset)
        label = family + (" (trained)" if family == "tissue" else "")
        rows.append([label, *_figures(estimates, offsets, dof)])
    return "\n".join(
        [
            "## Does the model know the sample? Conformal intervals and novelty",
            "",
            __doc__.split("\n\n", 1)[1].strip(),
            "",
            f"Calibration: {calibration.coverage:.0%} interval = "
            f"{calibration.quantile:.2f} x (view spread + {calibration.floor_um:.2f} µm), "
            f"novelty limit {calibration.novelty_limit:.2f} (the {calibration.familiar:.0%} "
            f"conformal quantile), from {calibration.frames} frames of {calibration.fields} "
            f"validation fields. {time.perf_counter() - t0:.0f} s.",
            "",
            table(["family", *_HEADERS], rows),
            "",
            "### Trained on several families, tested on one left out",
            "",
            "As `bench_generalisation` (20x/0.4, 5 fields x 16 shots per family at "
            "U(-6, 6) DOF, `DefocusCNN`, 25 epochs, seed 0): trained on three families and "
            "tested on the fourth, or on all four and tested on scikit-image's micrographs. "
            "Here the training set already spans several kinds of sample, so an unseen one "
            "can look familiar.",
            "",
            table(["trained on", "tested on", *_HEADERS], _held_out_rows(quick)),
        ]
    )
