"""General pair models that ship with the package, and the one command that rebuilds them.

Each shipped model reads the defocus from a pair of frames under two mirrored
off-axis LEDs (``mirrored_patterns``) for one of the simulator's standard
objectives. It is trained on domain-randomised fields rendered by the simulator
(:func:`devices.randomised_examples`), never on catalogue runs, and its
checkpoint holds the recipe and the figures measured on fresh fields of every
procedural family and on real micrographs it never saw. ``cnn_focus(...,
model="shipped")`` (the default) takes the one whose optics match the devices.

Rebuild them with ``autofocus build-models`` (``make models``).
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "SHIPPED_DIR",
    "SHIPPED_OBJECTIVES",
    "build_shipped_model",
    "shipped_model_for",
    "shipped_model_paths",
]

#: where the shipped checkpoints live (package data of ``models``, found without importing it)
SHIPPED_DIR = Path(importlib.util.find_spec("models").origin).parent / "shipped"
#: (magnification, NA) of the objectives a model is shipped for
SHIPPED_OBJECTIVES: tuple[tuple[float, float], ...] = ((20.0, 0.4), (10.0, 0.25))


def shipped_model_paths() -> list[Path]:
    """The shipped checkpoints, by file name."""
    return sorted(SHIPPED_DIR.glob("*.safetensors"))


def _file_name(magnification: float, na: float) -> str:
    return f"pairs-{magnification:g}x-{na:.2f}.safetensors"


def shipped_model_for(camera, led):
    """The shipped model trained for the optics of ``camera`` and ``led``.

    Raises
    ------
    ValueError
        No shipped model fits (one sentence naming what was shipped and what to do).
    """
    from models import load_model

    from .learned import PAIR_SEPARATOR, check_model_optics

    tried = []
    for path in shipped_model_paths():
        model = load_model(path)
        try:
            check_model_optics(model, camera, led, PAIR_SEPARATOR.join(model.patterns))
        except ValueError as why:
            tried.append(f"{path.name} ({str(why).split(' but ')[-1].split(';')[0]})")
            continue
        return model
    shipped = "; ".join(tried) or f"none in {SHIPPED_DIR}"
    raise ValueError(
        "No shipped model fits these optics (shipped: "
        f"{shipped}); train one for them (autofocus collect --pairs, then autofocus train) "
        "and pass its path as model=."
    )


def real_image_samples() -> dict[str, list]:
    """Four 256-pixel crops of each of scikit-image's bundled micrographs, as samples.

    ``cell`` (quantitative phase: transparent cells) and ``immunohistochemistry``
    (stained tissue); an empty dict when scikit-image is not installed.
    """
    try:
        from skimage import color, data
    except ImportError:
        return {}
    from devices import ImageSample

    cell = data.cell().astype(float)
    ihc = color.rgb2gray(data.immunohistochemistry()).astype(float)
    samples: dict[str, list] = {"real: cell (phase)": [], "real: ihc (stained tissue)": []}
    for image, name in ((cell, "real: cell (phase)"), (ihc, "real: ihc (stained tissue)")):
        h, w = image.shape
        for y, x in ((0, 0), (0, w - 256), (h - 256, 0), (h - 256, w - 256)):
            crop = image[y : y + 256, x : x + 256]
            norm = (crop - crop.min()) / max(np.ptp(crop), 1e-9)
            if "cell" in name:  # transparent cells: mostly phase, a little absorption
                sample = ImageSample(1 - 0.4 * norm, 1.2 * norm, pixel_size_um=0.5, label=name)
            else:  # stain absorbs: transmitted amplitude from the brightness
                sample = ImageSample(0.15 + 0.85 * norm, pixel_size_um=0.5, label=name)
            samples[name].append(sample)
    return samples


def evaluate_on_fresh_fields(
    model, mic, *, fields: int = 4, shots: int = 12, range_dof: float = 5.0, seed: int = 1
) -> dict[str, dict[str, Any]]:
    """MAE / RMSE / p95 (DOF) of ``model`` on fresh fields of every family and on real images.

    Every set also reports the predict-0 baseline and the share of its frames
    the model finds familiar (novelty ≤ 1) and whose interval covers the error.
    """
    from devices import SAMPLE_FAMILIES, ProceduralSample, labelled_shots

    rng = np.random.default_rng(seed)
    dof = mic.depth_of_field_um
    sets = {f: [ProceduralSample(f, 5000 + k) for k in range(fields)] for f in SAMPLE_FAMILIES}
    sets |= {name: crops[:fields] for name, crops in real_image_samples().items()}
    figures = {}
    for name, samples in sets.items():
        frames, labels = labelled_shots(
            mic, model.patterns, samples, shots=shots, rng=rng, range_dof=range_dof
        )
        estimates = [model.estimate(f) for f in frames]
        predicted = np.array([e.defocus_um for e in estimates])
        error = np.abs(predicted - labels) / dof
        half_widths = np.array([e.interval_um for e in estimates])
        figures[name] = {
            "frames": len(labels),
            "mae_dof": float(np.mean(error)),
            "rmse_dof": float(np.sqrt(np.mean(error**2))),
            "p95_dof": float(np.percentile(error, 95)),
            "predict0_mae_dof": float(np.mean(np.abs(labels)) / dof),
            "familiar": float(np.mean([e.familiar for e in estimates])),
            "covered": float(np.mean(np.abs(predicted - labels) <= half_widths)),
            "half_width_dof": float(np.median(half_widths) / dof),
        }
    return figures


def build_shipped_model(
    magnification: float,
    na: float,
    *,
    fields: int = 120,
    shots_per_field: int = 24,
    epochs: int = 15,
    crops_per_frame: int = 1,
    seed: int = 0,
    device: str = "cpu",
    evaluation_fields: int = 4,
    feature_scale: tuple[float, float] = (1.0, 1.0),
    progress: bool = True,
):
    """Train the general pair model for one objective from domain-randomised fields.

    Returns the model, its metadata holding the recipe (``recipe``), where its
    frames came from (``provenance``) and the figures on fresh fields and real
    images (``figures``); :func:`shipped_model_paths` lists the saved ones.
    """
    from devices import Objective, SimMicroscope, randomised_examples
    from models import OPTICS_KEYS, DefocusExamples, train

    from .dual_led import dual_led_model, mirrored_patterns
    from .learned import PAIR_SEPARATOR
    from .results import optics_metadata

    mic = SimMicroscope("cells", objective=Objective(magnification, na), time_scale=0)
    patterns = mirrored_patterns(mic.led)
    t0 = time.monotonic()
    generated = randomised_examples(
        patterns,
        objective=Objective(magnification, na),
        fields=fields,
        shots_per_field=shots_per_field,
        feature_scale=feature_scale,
        seed=seed,
        progress=progress,
    )
    render_s = time.monotonic() - t0
    mic.led.set(patterns[0]).wait(timeout=60)
    current = optics_metadata(mic.camera, mic.led) | {"led_pattern": PAIR_SEPARATOR.join(patterns)}
    optics = {k: current.get(k) for k in OPTICS_KEYS} | {"led_patterns": list(patterns)}
    examples = DefocusExamples(
        generated.frames,
        generated.defocus_um,
        generated.fov,
        optics=optics,
        depth_of_field_um=generated.depth_of_field_um,
    )
    name = f"shipped-pairs-{magnification:g}x-{na:.2f}"
    model = train(
        examples,
        "DefocusCNN",
        epochs=epochs,
        crops_per_frame=crops_per_frame,
        seed=seed,
        name=name,
        progress=progress,
        device=device,
        # cnn_focus checks each pair against the two-LED shift: measure how well that reads
        reference=dual_led_model(mic.camera, mic.led, patterns=patterns),
    )
    del examples, generated  # a few GB of frames: free them before the evaluation
    figures = evaluate_on_fresh_fields(model, mic, fields=evaluation_fields)
    model.metadata |= {
        "provenance": {"source": "simulated", "generator": "devices.randomised_examples"},
        "recipe": {
            "command": "autofocus build-models",
            "objective": f"{magnification:g}x/{na:g}",
            "fields": fields,
            "shots_per_field": shots_per_field,
            "epochs": epochs,
            "crops_per_frame": crops_per_frame,
            "seed": seed,
            "render_s": render_s,
            "evaluation_fields": evaluation_fields,
            "feature_scale": list(feature_scale),
        },
        "figures": figures,
    }
    return model


def build_shipped_models(
    objectives: Sequence[tuple[float, float]] = SHIPPED_OBJECTIVES,
    *,
    out_dir: str | Path | None = None,
    **options: Any,
) -> list[Path]:
    """Build and save the shipped model of every objective; returns the files written."""
    out = Path(out_dir) if out_dir is not None else SHIPPED_DIR
    written = []
    for magnification, na in objectives:
        model = build_shipped_model(magnification, na, **options)
        written.append(model.save(out / _file_name(magnification, na)))
    return written


def figures_table(model) -> str:
    """The model's stored figures as a Markdown table (DOF)."""
    rows = ["| set | frames | MAE | RMSE | p95 | predict 0 | familiar | interval covers |"]
    rows.append("|---|---|---|---|---|---|---|---|")
    for name, f in model.metadata.get("figures", {}).items():
        rows.append(
            f"| {name} | {f['frames']} | {f['mae_dof']:.2f} | {f['rmse_dof']:.2f} | "
            f"{f['p95_dof']:.2f} | {f['predict0_mae_dof']:.2f} | {f['familiar']:.0%} | "
            f"{f['covered']:.0%} |"
        )
    return "\n".join(rows) if len(rows) > 2 else "(no figures stored)"
