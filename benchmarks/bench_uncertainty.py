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
        errors, widths, covered, novel = [], [], [], []
        for f in range(fields):
            mic.fov.set(900 + f).wait()
            for offset in rng.uniform(-4, 4, shots) * dof:
                mic.z.set(mic.true_focus() + offset).wait()
                mic.camera.trigger().wait()
                estimate = model.estimate(mic.camera.last_frame)
                error = abs(estimate.defocus_um - offset)
                errors.append(error / dof)
                widths.append(estimate.interval_um / dof)
                covered.append(error <= estimate.interval_um)
                novel.append(estimate.novelty)
        novel = np.asarray(novel)
        rows.append(
            [
                family + (" (trained)" if family == "tissue" else ""),
                len(errors),
                f"{np.mean(errors):.2f}",
                f"{np.mean(covered):.0%}",
                f"{np.median(widths):.2f}",
                f"{np.median(novel):.2f}",
                f"{np.mean(novel > 1):.0%}",
            ]
        )
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
            table(
                [
                    "family",
                    "frames",
                    "MAE DOF",
                    "interval covers",
                    "median half-width DOF",
                    "median novelty",
                    "novelty > 1",
                ],
                rows,
            ),
        ]
    )
