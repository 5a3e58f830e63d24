"""The shipped pair models out of the box: figures, and cnn_focus with them on every sample set.

``cnn_focus(camera, z, led)`` with no model argument takes the general pair
model shipped for the objective (``models/shipped``, rebuilt by ``autofocus
build-models`` from domain-randomised simulated fields). For each shipped
objective it runs from a random start within ±5 DOF of focus on fresh fields
of every procedural family (never the training fields) and on crops of two
real scikit-image micrographs (never trained on), with ``fallback="none"``: a
shot it does not trust ends the run at its start ("fell back"; the search that
would follow is validated elsewhere). Both ``max_shots=1`` (one pair) and the
default ``max_shots=2`` (a second pair a known distance away confirms it) run on
every trial. Exposures count every frame, pairs retaken to bring the exposure into range included.
"""

from __future__ import annotations

import time

import numpy as np

from ._common import table

SEED = 20261207


def cnn_focus_trials(
    RE, mic, samples: list, trials: int, rng: np.random.Generator, model="shipped"
) -> dict[int, list[tuple[bool, float, int]]]:
    """``cnn_focus`` from U(±5) DOF on ``samples`` in turn, with ``max_shots`` 1 and 2 each trial.

    Returns, per ``max_shots``, each run's (fell back, error in DOF, exposures);
    with ``fallback="none"`` a shot it does not trust ends the run at its start.
    """
    from autofocus_plans import cnn_focus

    dof = mic.depth_of_field_um
    outcomes: dict[int, list] = {1: [], 2: []}
    for trial in range(trials):
        mic.set_sample(samples[trial % len(samples)], seed=trial)
        start = float(rng.uniform(-5, 5))
        for shots in (1, 2):
            mic.z.set(mic.true_focus() + start * dof).wait(timeout=60)
            try:
                result = RE(
                    cnn_focus(mic.camera, mic.z, mic.led, model, max_shots=shots, fallback="none")
                ).plan_result
                error = abs(result.best_z - mic.true_focus()) / dof
                outcomes[shots].append((False, error, result.exposures))
            except RuntimeError:  # fell back: the stage is back at its start
                outcomes[shots].append((True, np.nan, 0))
    return outcomes


def row(label: str, shots: int, done: list[tuple[bool, float, int]]) -> list[str]:
    """One table row from the runs' (fell back, error in DOF, exposures)."""
    moved = [e for fell, e, _ in done if not fell]
    return [
        label,
        str(shots),
        str(len(done)),
        f"{np.mean([fell for fell, _, _ in done]):.0%}",
        f"{np.median(moved):.2f}" if moved else "–",
        f"{sum(e <= 0.5 for e in moved) / len(done):.0%}",
        str(sum(e > 1 for e in moved)),
        f"{np.median([n for fell, _, n in done if not fell]):.0f}" if moved else "–",
    ]


def run(quick: bool) -> str:
    from bluesky import RunEngine

    import models
    from autofocus_plans.shipped import SHIPPED_OBJECTIVES, figures_table, real_image_samples
    from devices import SAMPLE_FAMILIES, Objective, ProceduralSample, SimMicroscope

    trials = 2 if quick else 20
    rng = np.random.default_rng(SEED)
    RE = RunEngine({}, call_returns_result=True)
    t_start = time.perf_counter()
    figure_sections, rows, totals = [], [], {1: [], 2: []}
    for magnification, na in SHIPPED_OBJECTIVES:
        mic = SimMicroscope("cells", objective=Objective(magnification, na), time_scale=0)
        label = f"{magnification:g}x/{na:g}"
        model = models.load_model(
            models.__path__[0] + f"/shipped/pairs-{magnification:g}x-{na:.2f}.safetensors"
        )
        recipe = model.metadata["recipe"]
        figure_sections.append(
            f"**{label}** ({model.name}: {recipe['fields']} randomised fields × "
            f"{recipe['shots_per_field']} pairs, {model.metadata['epochs']} epochs, "
            f"{model.metadata['training_time_s']:.0f} s of training on "
            f"{model.metadata['device']}; validation on unseen fields "
            f"{model.metadata['validation']['mae_dof']:.2f} DOF MAE), figures stored in the "
            "checkpoint (DOF):\n\n" + figures_table(model)
        )
        sets = {f: [ProceduralSample(f, 7000 + k) for k in range(4)] for f in SAMPLE_FAMILIES}
        sets |= real_image_samples()
        for name, samples in sets.items():
            outcomes = cnn_focus_trials(RE, mic, samples, trials, rng)
            for shots in (1, 2):
                totals[shots] += outcomes[shots]
                rows.append(row(f"{label} {name}", shots, outcomes[shots]))
    rows += [row("**all**", shots, totals[shots]) for shots in (1, 2)]
    headers = [
        "objective, set",
        "max_shots",
        "trials",
        "fell back",
        "error DOF median (moved)",
        "within 0.5 DOF (of all trials)",
        "> 1 DOF from focus",
        "exposures (median, moved)",
    ]
    return "\n\n".join(
        [
            "## Shipped pair models: figures, and cnn_focus with them out of the box",
            (__doc__ or "").split("\n\n", 1)[1].strip(),
            *figure_sections,
            f"cnn_focus, {trials} trials per set and objective (numpy seed {SEED}), "
            f"{time.perf_counter() - t_start:.0f} s in all:",
            table(headers, rows),
        ]
    )
