"""Leave one family out with the shipped models' recipe: pair models on samples they never saw.

The recipe of ``autofocus build-models`` (domain-randomised fields from
``devices.randomised_examples``: mixed and layered families, stain, make-up,
brightness, LED height and tilt jitter; pairs under the two mirrored LEDs), at
a smaller size, trained once per held-out set and seed on every procedural
family but the held-out one. The seed sets both the rendered fields and the
network's initialisation, so the spread is that of the whole recipe. Each
model is tested on fresh fields of the held-out family (the family's usual
samples); the models trained on all four families are tested on crops of two
real scikit-image micrographs (never trained on). The FourierMLP baseline is
trained on the same pairs; the physics estimator ``DualLEDDefocus`` needs no
training.
"""

from __future__ import annotations

import time

import numpy as np

from ._common import table
from .bench_generalisation import _metrics

SEED = 20261207
ARCHS = ("DefocusCNN", "FourierMLP")
RANGE_DOF = 5.0


def _config(quick: bool) -> dict:
    from autofocus_plans.shipped import SHIPPED_OBJECTIVES

    if quick:
        return {
            "objectives": SHIPPED_OBJECTIVES[:1],
            "fields": 3,
            "shots": 4,
            "test_fields": 1,
            "test_shots": 4,
            "seeds": (0,),
            "epochs": {"DefocusCNN": 1, "FourierMLP": 2},
            "held_out": ("bars",),
        }
    return {
        "objectives": SHIPPED_OBJECTIVES,
        "fields": 40,
        "shots": 16,
        "test_fields": 4,
        "test_shots": 12,
        "seeds": (0, 1, 2),
        "epochs": {"DefocusCNN": 15, "FourierMLP": 60},
        "held_out": None,
    }


def _cell(values: list[float]) -> str:
    """Mean over seeds, with the spread (max - min) relative to the mean."""
    values = np.asarray(values)
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{values.mean():.2f} (±{np.ptp(values) / values.mean() / 2:.0%})"


def _trained(generated, arch: str, seed: int, epochs: int, reference=None):
    from models import DefocusExamples, train

    examples = DefocusExamples(
        generated.frames,
        generated.defocus_um,
        generated.fov,
        depth_of_field_um=generated.depth_of_field_um,
    )
    return train(examples, arch, epochs=epochs, seed=seed, progress=False, reference=reference)


def run(quick: bool) -> str:
    from autofocus_plans import dual_led_model, mirrored_patterns
    from autofocus_plans.shipped import real_image_samples
    from devices import (
        SAMPLE_FAMILIES,
        Objective,
        ProceduralSample,
        SimMicroscope,
        labelled_shots,
        randomised_examples,
    )

    cfg = _config(quick)
    reals = {
        name: crops[: max(cfg["test_fields"], 1)] for name, crops in real_image_samples().items()
    }
    rows, ratio_rows, spreads, seconds = [], [], [], {"render": [], **{a: [] for a in ARCHS}}
    t_start = time.perf_counter()
    for magnification, na in cfg["objectives"]:
        objective = Objective(magnification, na)
        label = f"{magnification:g}x/{na:g}"
        mic = SimMicroscope("cells", objective=objective, time_scale=0)
        dof = mic.depth_of_field_um
        patterns = mirrored_patterns(mic.led)
        physics = dual_led_model(mic.camera, mic.led)
        rng = np.random.default_rng(SEED)
        held_families = cfg["held_out"] or SAMPLE_FAMILIES
        tests = {
            f: [ProceduralSample(f, 5000 + k) for k in range(cfg["test_fields"])]
            for f in held_families
        }
        # (tested on, trained on)
        splits = [(f, [g for g in SAMPLE_FAMILIES if g != f]) for f in held_families]
        splits += [(name, list(SAMPLE_FAMILIES)) for name in reals]
        tests |= reals
        test_pairs = {
            name: labelled_shots(
                mic, patterns, samples, shots=cfg["test_shots"], rng=rng, range_dof=RANGE_DOF
            )
            for name, samples in tests.items()
        }
        models: dict[tuple, list] = {}
        for held, families in splits:
            key = tuple(families)
            if key not in models:
                models[key] = []
                for seed in cfg["seeds"]:
                    t0 = time.perf_counter()
                    generated = randomised_examples(
                        patterns,
                        objective=objective,
                        fields=cfg["fields"],
                        shots_per_field=cfg["shots"],
                        families=families,
                        seed=seed,
                        progress=False,
                    )
                    seconds["render"].append(time.perf_counter() - t0)
                    trained = {}
                    for arch in ARCHS:
                        t0 = time.perf_counter()
                        trained[arch] = _trained(generated, arch, seed, cfg["epochs"][arch])
                        seconds[arch].append(time.perf_counter() - t0)
                    models[key].append(trained)
                    print(f"  {label} without {held}: seed {seed} trained", flush=True)
            frames, labels = test_pairs[held]
            zero = float(np.mean(np.abs(labels)) / dof)
            mae = {}
            for arch in ARCHS:
                runs, familiar = [], []
                for trained in models[key]:
                    model = trained[arch]
                    estimates = [model.estimate(f) for f in frames]
                    predicted = np.array([e.defocus_um for e in estimates])
                    runs.append(_metrics(labels, predicted, dof))
                    familiar.append(np.mean([e.familiar for e in estimates]))
                mae[arch] = [r["mae"] for r in runs]
                if arch == "DefocusCNN" and len(runs) > 1:
                    spreads.append((label, held, np.ptp(mae[arch]) / np.mean(mae[arch])))
                rows.append(
                    [
                        label,
                        held,
                        arch,
                        _cell(mae[arch]),
                        _cell([r["rmse"] for r in runs]),
                        _cell([r["p95"] for r in runs]),
                        f"{zero:.2f}",
                        f"{np.mean(familiar):.0%}",
                    ]
                )
            estimates = [physics.estimate(p[0], p[1]) for p in frames]
            found = np.array([e.found for e in estimates])
            predicted = np.array([e.defocus_um for e in estimates])
            m = _metrics(labels[found], predicted[found], dof) if found.any() else None
            rows.append(
                [
                    label,
                    held,
                    "DualLEDDefocus (no training)",
                    f"{m['mae']:.2f}" if m else "–",
                    f"{m['rmse']:.2f}" if m else "–",
                    f"{m['p95']:.2f}" if m else "–",
                    f"{zero:.2f}",
                    f"{found.mean():.0%} with an estimate",
                ]
            )
            ratio_rows.append(
                [label, held, f"{np.mean(mae['DefocusCNN']) / np.mean(mae['FourierMLP']):.2f}"]
            )
    elapsed = time.perf_counter() - t_start
    median = {k: float(np.median(v)) for k, v in seconds.items() if v}
    config = (
        f"Configuration (test numpy seed {SEED}): objectives "
        + ", ".join(f"{m:g}x/{na:g}" for m, na in cfg["objectives"])
        + f"; per model `randomised_examples(fields={cfg['fields']}, "
        f"shots_per_field={cfg['shots']}, families=<all but the held-out one>, seed=s)` "
        f"and `models.train(..., epochs={cfg['epochs']}, seed=s)` for s in "
        f"{list(cfg['seeds'])}, on the CPU; tests: {cfg['test_fields']} fresh fields (or "
        f"real crops) × {cfg['test_shots']} pairs at U(±{RANGE_DOF:g}) DOF, exposed to half "
        "the range. Median seconds per model: "
        + ", ".join(f"{k} {v:.0f}" for k, v in median.items())
        + f"; {elapsed:.0f} s in all. Cells: mean over seeds (± half the spread, relative "
        "to the mean). *Familiar*: share of pairs whose novelty is ≤ 1 (cnn_focus acts on "
        "them; it falls back on the rest)."
    )
    headers = [
        "objective",
        "tested on (never trained on)",
        "model",
        "MAE DOF",
        "RMSE DOF",
        "p95 DOF",
        "predict 0 MAE DOF",
        "familiar",
    ]
    sections = [
        "## Leave one family out with the shipped recipe (pair models)",
        (__doc__ or "").split("\n\n", 1)[1].strip(),
        config,
        table(headers, rows),
        "CNN MAE relative to the FourierMLP's on the same pairs (mean over seeds):",
        table(["objective", "tested on", "DefocusCNN / FourierMLP"], ratio_rows),
    ]
    if spreads:
        worst = max(spreads, key=lambda s: s[2])
        sections.append(
            "Seed spread of the CNN's MAE, (max − min) / mean: largest "
            f"{worst[2]:.0%} ({worst[0]}, {worst[1]}); median "
            f"{np.median([s[2] for s in spreads]):.0%} over {len(spreads)} sets."
        )
    return "\n\n".join(sections)
