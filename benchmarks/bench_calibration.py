"""Few-shot calibration: what one z-stack of a new sample buys a pair model on its other fields.

The protocol of ``bench_pair_generalisation`` at 20x/0.4 (pair CNNs trained on
domain-randomised fields of all procedural families but the held-out one, or of
all four for the two real scikit-image micrographs; 3 training seeds; errors in
depths of field, on the centre crop as there). Each model is then calibrated
on the held-out sample with the plan a user runs, ``calibrate_model``, through
a RunEngine: one field of that sample (a field never tested on), a Brenner
sweep for its focus and 24 pairs at U(-6, 6) DOF from it, half of them held out
to choose the epoch and recalibrate the interval (``models.fine_tune``). The
labels are thus the Brenner focus's, as a user's would be, while the test
frames are labelled with the simulator's true focus.

*Before* and *after* are the errors of the base and of the calibrated model on
the same pairs of the sample's other fields (for the real images, the three
crops not calibrated on); the sign of their paired difference is tested per
seed (one-sided Wilcoxon signed-rank test). *z-stack* is the calibrated
model's error on the held-out half of its own z-stack (the figure the plan
reports), *trained families* the error on the held-out fields of the families
the base was trained on (what the calibration costs there), *unfamiliar* the
share of test pairs whose novelty is above 1 (``cnn_focus`` would fall back).
"""

from __future__ import annotations

import time

import numpy as np

from ._common import table
from .bench_generalisation import _cell, _fitted, _metrics, real_images
from .bench_pair_generalisation import _pairs, _randomised

SEED = 20261207
OBJECTIVE = (20, 0.4)
#: one-sided level of the paired test, per seed
LEVEL = 0.01


def _config(quick: bool) -> dict:
    if quick:
        return {
            "train_fields": 2,
            "test_fields": 2,
            "shots": 6,
            "seeds": (0,),
            "epochs": {"DefocusCNN": 2},
            "crops": 1,
            "calibration_shots": 18,
            "calibration_epochs": 3,
            "held_out": ("bars", "real: cell (phase)"),
        }
    return {
        "train_fields": 8,
        "test_fields": 5,
        "shots": 16,
        "seeds": (0, 1, 2),
        "epochs": {"DefocusCNN": 20},
        "crops": 2,
        "calibration_shots": 24,
        "calibration_epochs": 30,
        "held_out": None,  # every family and both real images
    }


def _unfamiliar(model, frames) -> float:
    return float(np.mean([not model.estimate(f).familiar for f in frames]))


def run(quick: bool) -> str:
    from bluesky import RunEngine
    from scipy.stats import wilcoxon

    from autofocus_plans import calibrate_model, mirrored_patterns
    from autofocus_plans.learned import PAIR_SEPARATOR
    from autofocus_plans.results import optics_metadata
    from devices import (
        SAMPLE_FAMILIES,
        Objective,
        ProceduralSample,
        SimMicroscope,
        exposure_for_level,
    )
    from models import OPTICS_KEYS

    cfg = _config(quick)
    rng = np.random.default_rng(SEED)
    reals = real_images()
    t_start = time.perf_counter()
    RE = RunEngine({}, call_returns_result=True)
    magnification, na = OBJECTIVE
    mic = SimMicroscope("cells", objective=Objective(magnification, na), time_scale=0)
    dof = mic.depth_of_field_um
    patterns = mirrored_patterns(mic.led)
    exposure = exposure_for_level(mic, patterns[0], 0.5)
    mic.camera.exposure_time.put(exposure)
    # the arrays the bench trains on carry no optics: record them as examples_from_runs would,
    # so that the plan can check the model against the devices and light its LEDs
    current = optics_metadata(mic.camera, mic.led) | {"led_pattern": PAIR_SEPARATOR.join(patterns)}
    optics = {k: current.get(k) for k in OPTICS_KEYS} | {"led_patterns": list(patterns)}

    def pairs(samples):
        return _pairs(mic, patterns, samples, cfg["shots"], rng)

    training = {
        f: pairs([_randomised(f, k) for k in range(cfg["train_fields"])]) for f in SAMPLE_FAMILIES
    }
    held_out = {
        f: pairs([ProceduralSample(f, 100 + k) for k in range(cfg["test_fields"])])
        for f in SAMPLE_FAMILIES
    }
    held_out |= {name: pairs(samples[1:]) for name, samples in reals.items()}
    evaluations = [(f, [g for g in SAMPLE_FAMILIES if g != f]) for f in SAMPLE_FAMILIES]
    evaluations += [(name, list(SAMPLE_FAMILIES)) for name in reals]
    if cfg["held_out"]:
        evaluations = [e for e in evaluations if e[0] in cfg["held_out"]]

    rows, seconds = [], {"train": [], "calibrate": []}
    for held, families in evaluations:
        frames, labels, _ = held_out[held]
        known = [f for f in families if f in held_out]
        known_frames = np.concatenate([held_out[f][0] for f in known])
        known_labels = np.concatenate([held_out[f][1] for f in known])
        figures: dict[str, list] = {
            k: []
            for k in (
                "before",
                "after",
                "stack",
                "known_before",
                "known_after",
                "unfamiliar_before",
                "unfamiliar_after",
                "epochs",
            )
        }
        significant = 0
        for seed in cfg["seeds"]:
            t0 = time.perf_counter()
            model = _fitted(training, families, "DefocusCNN", seed, cfg, dof)
            seconds["train"].append(time.perf_counter() - t0)
            model.metadata |= {"optics": optics, "led_patterns": list(patterns)}
            # a field of the sample never tested on, the stage roughly focused by hand
            if held in reals:
                mic.set_sample(reals[held][0])
            else:
                mic.set_sample(ProceduralSample(held, 900 + seed))
            mic.z.set(mic.true_focus() + rng.uniform(-2, 2) * dof).wait(timeout=60)
            t0 = time.perf_counter()
            adapted = RE(
                calibrate_model(
                    mic.camera,
                    mic.z,
                    mic.led,
                    model,
                    shots=cfg["calibration_shots"],
                    epochs=cfg["calibration_epochs"],
                    off_axis_exposure_s=exposure,
                    seed=seed,
                )
            ).plan_result
            seconds["calibrate"].append(time.perf_counter() - t0)
            before = np.abs(model.predict(frames) - labels) / dof
            after = np.abs(adapted.predict(frames) - labels) / dof
            if wilcoxon(before, after, alternative="greater").pvalue < LEVEL:
                significant += 1
            adaptation = adapted.metadata["adaptation"]
            figures["before"].append(before.mean())
            figures["after"].append(after.mean())
            figures["stack"].append(adaptation["after"]["mae_dof"])
            figures["epochs"].append(adaptation["epochs"])
            for key, m in (("known_before", model), ("known_after", adapted)):
                figures[key].append(_metrics(known_labels, m.predict(known_frames), dof)["mae"])
            figures["unfamiliar_before"].append(_unfamiliar(model, frames))
            figures["unfamiliar_after"].append(_unfamiliar(adapted, frames))
        zero = _metrics(labels, np.zeros_like(labels), dof)["mae"]
        rows.append(
            [
                f"{magnification}x/{na}",
                held,
                _cell(figures["before"]),
                _cell(figures["after"]),
                f"{np.mean(figures['after']) / np.mean(figures['before']):.2f}",
                f"{significant}/{len(cfg['seeds'])}",
                _cell(figures["stack"]),
                f"{_cell(figures['known_before'])} → {_cell(figures['known_after'])}",
                f"{np.mean(figures['unfamiliar_before']):.0%} → "
                f"{np.mean(figures['unfamiliar_after']):.0%}",
                ", ".join(str(e) for e in figures["epochs"]),
                f"{zero:.2f}",
            ]
        )
    elapsed = time.perf_counter() - t_start
    config = (
        f"Configuration (numpy seed {SEED}): {magnification}x/{na}; per family "
        f"{cfg['train_fields']} randomised training fields and {cfg['test_fields']} test "
        f"fields, 3 test crops per real image, {cfg['shots']} pairs per field at U(-6, 6) DOF; "
        f"`models.train(..., epochs={cfg['epochs']['DefocusCNN']}, "
        f"crops_per_frame={cfg['crops']}, seed=s)` for s in {list(cfg['seeds'])}; "
        f"`calibrate_model(..., shots={cfg['calibration_shots']}, "
        f"epochs={cfg['calibration_epochs']}, seed=s)` (fine_tune's defaults otherwise: "
        "learning rate 3e-4, 8 crops per frame, every 2nd offset held out), on the CPU; "
        f"median training {np.median(seconds['train']):.0f} s, median calibration (sweep, "
        f"z-stack and fine-tuning) {np.median(seconds['calibrate']):.0f} s. "
        f"{elapsed:.0f} s in all. Wilcoxon: seeds whose one-sided paired test gives p < {LEVEL}."
    )
    headers = [
        "objective",
        "calibrated on (never trained on)",
        "MAE before DOF mean (spread)",
        "MAE after",
        "after / before",
        "Wilcoxon",
        "z-stack held-out MAE after",
        "trained families MAE before → after",
        "unfamiliar before → after",
        "epochs kept",
        "predict 0 MAE",
    ]
    return "\n\n".join(
        [
            "## Few-shot calibration of a pair model on one z-stack of a new sample",
            (__doc__ or "").split("\n\n", 1)[1].strip(),
            config,
            table(headers, rows),
        ]
    )
