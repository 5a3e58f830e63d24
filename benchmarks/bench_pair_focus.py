"""cnn_focus with a model of frame pairs on samples it never trained on: where does it end?

For each held-out set (a procedural family, or one of the two real scikit-image
micrographs), a pair model is trained as in ``bench_pair_generalisation`` on the
other families (randomised fields; 1 seed), then ``cnn_focus`` runs from a
random start within ±5 DOF of focus on fresh fields of the held-out set, with
``fallback="none"``: a shot it does not trust ends the run at its start
("fell back"; the Brenner search that would follow is validated elsewhere).
Both settings are run on every trial: ``max_shots=1`` (one pair, 2 exposures)
and the default ``max_shots=2`` (a second pair a known distance from the first
shot's focus confirms it, 4 exposures).
"""

from __future__ import annotations

import time

import numpy as np

from ._common import table
from .bench_generalisation import _fitted, real_images
from .bench_pair_generalisation import _pairs, _randomised

SEED = 20261205


def _config(quick: bool) -> dict:
    if quick:
        return {"train_fields": 2, "shots": 6, "epochs": {"DefocusCNN": 2}, "crops": 2, "trials": 3}
    return {"train_fields": 8, "shots": 16, "epochs": {"DefocusCNN": 20}, "crops": 2, "trials": 20}


def _row(held: str, shots: int, done: list[tuple[bool, float, int]]) -> list[str]:
    """One table row from the runs' (fell back, error in DOF, exposures)."""
    moved = [e for fell, e, _ in done if not fell]
    return [
        held,
        f"{shots} ({2 * shots} exposures)",
        str(len(done)),
        f"{np.mean([fell for fell, _, _ in done]):.0%}",
        f"{np.median(moved):.2f}" if moved else "–",
        f"{sum(e <= 0.5 for e in moved) / len(done):.0%}",
        str(sum(e > 1 for e in moved)),
    ]


def run(quick: bool) -> str:
    from bluesky import RunEngine

    from autofocus_plans import cnn_focus, dual_led_model
    from devices import SAMPLE_FAMILIES, ProceduralSample, SimMicroscope, exposure_for_level

    cfg = _config(quick)
    rng = np.random.default_rng(SEED)
    t_start = time.perf_counter()
    mic = SimMicroscope("cells", time_scale=0)
    dof = mic.depth_of_field_um
    patterns = dual_led_model(mic.camera, mic.led).patterns
    exposure = exposure_for_level(mic, patterns[0], 0.5)
    mic.camera.exposure_time.put(exposure)
    training = {
        f: _pairs(
            mic,
            patterns,
            [_randomised(f, k) for k in range(cfg["train_fields"])],
            cfg["shots"],
            rng,
        )
        for f in SAMPLE_FAMILIES
    }
    reals = real_images()
    held_sets = [(f, [g for g in SAMPLE_FAMILIES if g != f]) for f in SAMPLE_FAMILIES]
    held_sets += [(name, list(SAMPLE_FAMILIES)) for name in reals]
    RE = RunEngine({}, call_returns_result=True)
    rows, totals = [], {1: [], 2: []}
    for held, families in held_sets:
        model = _fitted(training, families, "DefocusCNN", 0, cfg, dof)
        model.metadata["led_patterns"] = list(patterns)
        samples = reals.get(held) or [ProceduralSample(held, 300 + k) for k in range(4)]
        outcomes = {1: [], 2: []}
        for trial in range(cfg["trials"]):
            mic.set_sample(samples[trial % len(samples)], seed=trial)
            start = float(rng.uniform(-5, 5))
            for shots in (1, 2):
                mic.z.set(mic.true_focus() + start * dof).wait(timeout=60)
                try:
                    result = RE(
                        cnn_focus(
                            mic.camera,
                            mic.z,
                            mic.led,
                            model,
                            max_shots=shots,
                            fallback="none",
                            off_axis_exposure_s=exposure,
                        )
                    ).plan_result
                    error = abs(result.best_z - mic.true_focus()) / dof
                    outcomes[shots].append((False, error, result.exposures))
                except RuntimeError:
                    outcomes[shots].append((True, np.nan, 2 * shots))
        for shots in (1, 2):
            totals[shots] += outcomes[shots]
            rows.append(_row(held, shots, outcomes[shots]))
    rows += [_row("**all**", shots, totals[shots]) for shots in (1, 2)]
    headers = [
        "held out (never trained on)",
        "max_shots",
        "trials",
        "fell back",
        "error DOF median (moved)",
        "within 0.5 DOF (of all trials)",
        "> 1 DOF from focus",
    ]
    return "\n\n".join(
        [
            "## cnn_focus with a pair model on samples never trained on",
            (__doc__ or "").split("\n\n", 1)[1].strip(),
            f"20x/0.4, LEDs {patterns[0]} / {patterns[1]}, exposure {exposure * 1e3:.0f} ms; "
            f"{cfg['train_fields']} randomised training fields per family, {cfg['shots']} pairs "
            f"each, `models.train(..., epochs={cfg['epochs']['DefocusCNN']}, "
            f"crops_per_frame={cfg['crops']}, seed=0)`; "
            f"{cfg['trials']} trials per held-out set (numpy seed {SEED}). "
            f"{time.perf_counter() - t_start:.0f} s in all.",
            table(headers, rows),
        ]
    )
