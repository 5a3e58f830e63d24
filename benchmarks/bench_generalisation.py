"""Learned focus on samples it never saw: leave one family out, and real images, over 3 seeds.

For each objective, frames are taken under the off-axis LED at random
offsets U(-6, 6) DOF around the true focus of fields of every procedural
family, and of crops of two real micrographs bundled with scikit-image (no
download): ``cell`` (phase-contrast cells, used as a phase-dominant sample)
and ``ihc`` (a stained tissue section, used as an absorbing sample). Neither
real image is ever trained on.

* **Leave one family out**: a model trained on the other families is tested on
  the held-out one.
* **Real images**: a model trained on all families is tested on each image.

Every model is trained with 3 seeds (the seed sets the validation split, the
crops, the initial weights and the batch order); the table gives the mean over
seeds and, in brackets, their spread (max - min). Errors are in depths of
field; "predict 0" is the error of always answering "in focus" on the same
frames.
"""

from __future__ import annotations

import time

import numpy as np

from ._common import table

SEED = 20261203
ARCHS = ("DefocusCNN", "FourierMLP")
DEFOCUS_RANGE_DOF = 6.0
OBJECTIVES = ((20, 0.4), (10, 0.25))


def _config(quick: bool) -> dict:
    if quick:
        return {
            "objectives": OBJECTIVES[:1],
            "fields": 2,
            "shots": 8,
            "seeds": (0,),
            "epochs": {"DefocusCNN": 3, "FourierMLP": 5},
            "crops": 1,
        }
    return {
        "objectives": OBJECTIVES,
        "fields": 5,
        "shots": 16,
        "seeds": (0, 1, 2),
        "epochs": {"DefocusCNN": 25, "FourierMLP": 60},
        "crops": 2,
    }


def real_images() -> dict[str, list]:
    """Crops of scikit-image's bundled micrographs as samples, four per image."""
    from autofocus_plans.shipped import real_image_samples

    return real_image_samples()


def _shots(mic, samples, shots: int, rng: np.random.Generator):
    """Off-axis frames at U(-6, 6) DOF around the focus of each sample (one field each)."""
    dof = mic.depth_of_field_um
    mic.led.set("off_axis").wait(timeout=60)
    mic.camera.exposure_time.put(0.25)
    frames, labels, fields = [], [], []
    for k, sample in enumerate(samples):
        mic.set_sample(sample, seed=k)
        for dz in rng.uniform(-DEFOCUS_RANGE_DOF, DEFOCUS_RANGE_DOF, shots) * dof:
            mic.z.set(mic.true_focus() + dz).wait(timeout=60)
            frames.append(mic.camera.snap().copy())
            labels.append(dz)
            fields.append(f"{getattr(sample, 'label', sample)}:{k}")
    return np.stack(frames), np.asarray(labels, dtype=float), np.asarray(fields)


def _fitted(sets: dict, families: list[str], arch: str, seed: int, cfg: dict, dof: float):
    """A model trained on the frames of ``families``."""
    from models.training import DefocusExamples, train

    frames = np.concatenate([sets[f][0] for f in families])
    labels = np.concatenate([sets[f][1] for f in families])
    fields = np.concatenate([sets[f][2] for f in families])
    examples = DefocusExamples(frames, labels, fields, depth_of_field_um=dof)
    return train(
        examples,
        arch,
        epochs=cfg["epochs"][arch],
        crops_per_frame=cfg["crops"],
        seed=seed,
        progress=False,
    )


def _metrics(true_um: np.ndarray, predicted_um: np.ndarray, dof: float) -> dict[str, float]:
    error = np.abs(predicted_um - true_um) / dof
    return {
        "mae": float(np.mean(error)),
        "rmse": float(np.sqrt(np.mean(error**2))),
        "p95": float(np.percentile(error, 95)),
    }


def _cell(values: list[float]) -> str:
    values = np.asarray(values)
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{values.mean():.2f} ({np.ptp(values):.2f})"


def run(quick: bool) -> str:
    from devices import SAMPLE_FAMILIES, Objective, ProceduralSample, SimMicroscope

    cfg = _config(quick)
    rng = np.random.default_rng(SEED)
    reals = real_images()
    rows, ratio_rows, train_seconds = [], [], []
    t_start = time.perf_counter()
    for magnification, na in cfg["objectives"]:
        mic = SimMicroscope("cells", objective=Objective(magnification, na), time_scale=0)
        dof = mic.depth_of_field_um
        label = f"{magnification}x/{na}"
        sets = {
            family: _shots(
                mic,
                [ProceduralSample(family, 100 + k) for k in range(cfg["fields"])],
                cfg["shots"],
                rng,
            )
            for family in SAMPLE_FAMILIES
        }
        tests = {name: _shots(mic, samples, cfg["shots"], rng) for name, samples in reals.items()}

        # held-out family: trained on the others; real images: trained on every family
        evaluations = [
            (held, [f for f in SAMPLE_FAMILIES if f != held], sets[held])
            for held in SAMPLE_FAMILIES
        ] + [(name, list(SAMPLE_FAMILIES), frames) for name, frames in tests.items()]
        for held, families, (frames, labels, _) in evaluations:
            zero = _metrics(labels, np.zeros_like(labels), dof)["mae"]
            results = {}
            for arch in ARCHS:
                runs = []
                for seed in cfg["seeds"]:
                    t0 = time.perf_counter()
                    model = _fitted(sets, families, arch, seed, cfg, dof)
                    train_seconds.append((arch, time.perf_counter() - t0))
                    runs.append(_metrics(labels, model.predict(frames), dof))
                results[arch] = runs
                rows.append(
                    [
                        label,
                        held,
                        arch,
                        _cell([r["mae"] for r in runs]),
                        _cell([r["rmse"] for r in runs]),
                        _cell([r["p95"] for r in runs]),
                        f"{zero:.2f}",
                    ]
                )
            cnn = np.mean([r["mae"] for r in results["DefocusCNN"]])
            mlp = np.mean([r["mae"] for r in results["FourierMLP"]])
            ratio_rows.append([label, held, f"{cnn / mlp:.2f}"])
    elapsed = time.perf_counter() - t_start
    per_arch = {arch: np.median([s for a, s in train_seconds if a == arch]) for arch in ARCHS}
    config = (
        f"Configuration (numpy seed {SEED}): objectives "
        + ", ".join(f"{m}x/{na}" for m, na in cfg["objectives"])
        + f"; {cfg['fields']} fields per family ({', '.join(SAMPLE_FAMILIES)}) and 4 crops "
        f"per real image, {cfg['shots']} off-axis shots per field at U(-6, 6) DOF; "
        f"`models.train(..., epochs={cfg['epochs']}, crops_per_frame={cfg['crops']}, seed=s)` "
        f"for s in {list(cfg['seeds'])}, on the CPU; median training time "
        + ", ".join(f"{a} {s:.0f} s" for a, s in per_arch.items())
        + f". {elapsed:.0f} s in all."
    )
    headers = [
        "objective",
        "tested on (never trained on)",
        "model",
        "MAE DOF mean (spread)",
        "RMSE DOF",
        "p95 DOF",
        "predict 0 MAE DOF",
    ]
    return "\n\n".join(
        [
            "## Learned focus on samples never trained on (leave one family out, real images)",
            (__doc__ or "").split("\n\n", 1)[1].strip(),
            config,
            table(headers, rows),
            "CNN MAE relative to the FourierMLP's on the same frames (mean over seeds):",
            table(["objective", "tested on", "DefocusCNN / FourierMLP"], ratio_rows),
        ]
    )
