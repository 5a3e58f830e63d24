"""Learned single-shot focus: regression accuracy, focus trials, time to focus, inference cost."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from bluesky import RunEngine

from ._common import table

SEED = 20240611
ARCHS = ("DefocusCNN", "FourierMLP")
FAMILIES = ("tissue", "beads")  # training family first; "beads" is never trained on
METHODS = (*ARCHS, "brenner_sweep")
LABELS = {
    "DefocusCNN": "`cnn_focus` + DefocusCNN",
    "FourierMLP": "`cnn_focus` + FourierMLP",
    "brenner_sweep": "`brenner_sweep(-25, 25, 26)`",
}
DEFOCUS_RANGE_DOF = 6.0  # training / regression-test offsets: U(-6, 6) DOF
START_RANGE_DOF = 4.0  # focus-trial start offsets: U(-4, 4) DOF
# field-of-view indices: train 0.., regression test 1000.., focus trials 2000.., timing 3000..
TEST_FIELDS, TRIAL_FIELDS, TIMING_FIELDS = 1000, 2000, 3000


@dataclass
class Config:
    train_fields: int
    shots: int
    test_fields: int
    trials: int
    timing_trials: int
    epochs: dict[str, int]
    crops: int
    inference_repeats: int = 50
    batch: int = 32

    @classmethod
    def make(cls, quick: bool) -> Config:
        if quick:
            return cls(8, 16, 3, 3, 1, {"DefocusCNN": 8, "FourierMLP": 8}, 1, 10)
        return cls(30, 30, 10, 20, 3, {"DefocusCNN": 40, "FourierMLP": 80}, 4)


def _microscope(family: str, time_scale: float = 0):
    from devices import SimMicroscope

    return SimMicroscope(family, seed=0, time_scale=time_scale)


def _off_axis(mic) -> None:
    mic.led.set("off_axis").wait(timeout=60)
    mic.camera.exposure_time.put(0.25)


def _brightfield(mic) -> None:
    mic.led.set("brightfield").wait(timeout=60)
    mic.camera.exposure_time.put(0.01)


def shoot(mic, family: str, fields, shots: int, rng: np.random.Generator):
    """Off-axis frames at random offsets U(-6, 6) DOF around each field's true focus."""
    dof = mic.depth_of_field_um
    _off_axis(mic)
    frames, labels, fov_ids = [], [], []
    for k in fields:
        mic.fov.set(k).wait(timeout=60)
        for dz in rng.uniform(-DEFOCUS_RANGE_DOF, DEFOCUS_RANGE_DOF, shots) * dof:
            mic.z.set(mic.true_focus() + dz).wait(timeout=60)
            frames.append(mic.camera.snap().copy())
            labels.append(dz)
            fov_ids.append(f"{family}:{k}")
    _brightfield(mic)
    return np.stack(frames), np.asarray(labels, dtype=float), np.asarray(fov_ids)


def fmt(x: float, digits: int = 2) -> str:
    return "n/a" if not np.isfinite(x) else f"{x:.{digits}f}"


# -- training and regression -----------------------------------------------------------
def train_models(cfg: Config, rng: np.random.Generator):
    from models.training import DefocusExamples, train

    mic = _microscope("tissue")
    dof = mic.depth_of_field_um
    t0 = time.perf_counter()
    frames, labels, fov_ids = shoot(mic, "tissue", range(cfg.train_fields), cfg.shots, rng)
    collect_s = time.perf_counter() - t0
    examples = DefocusExamples(
        frames, labels, fov_ids, run_uids=[], optics={}, depth_of_field_um=dof
    )
    trained, rows = {}, []
    for arch in ARCHS:
        t0 = time.perf_counter()
        model = train(
            examples,
            arch,
            epochs=cfg.epochs[arch],
            crops_per_frame=cfg.crops,
            seed=0,
            progress=False,
        )
        wall = time.perf_counter() - t0
        trained[arch] = model
        md = model.metadata
        val = md["validation"]
        rows.append(
            [
                arch,
                f"{sum(p.numel() for p in model.net.parameters()):,}",
                len(examples),
                f"{md['train_examples']} x {cfg.crops}",
                val["n"],
                f"{md['epochs']} / {cfg.epochs[arch]}",
                f"{wall:.1f}",
                f"{fmt(val['mae_um'])} ({fmt(val['mae_dof'])})",
            ]
        )
    headers = [
        "model",
        "parameters",
        "frames",
        "train frames x crops",
        "validation frames",
        "best epoch / max",
        "training wall s",
        "validation MAE µm (DOF)",
    ]
    note = (
        f"Training set: {len(examples)} frames from {cfg.train_fields} tissue fields "
        f"(generated in {collect_s:.1f} s); `models.train` holds out a quarter of the fields "
        "for validation and early stopping (patience 8), so the models see "
        "three quarters of them."
    )
    return trained, dof, table(headers, rows) + "\n\n" + note


def regression(cfg: Config, trained, rng: np.random.Generator) -> str:
    from models.training import regression_metrics

    rows = []
    for family in FAMILIES:
        mic = _microscope(family)
        dof = mic.depth_of_field_um
        fields = range(TEST_FIELDS, TEST_FIELDS + cfg.test_fields)
        frames, labels, _ = shoot(mic, family, fields, cfg.shots, rng)
        preds = {arch: trained[arch].predict(frames) for arch in ARCHS}
        preds["predict 0 (baseline)"] = np.zeros_like(labels)
        test = f"{family} ({'training family' if family == 'tissue' else 'unseen family'})"
        for name, pred in preds.items():
            m = regression_metrics(labels, pred, dof)
            rows.append(
                [
                    test,
                    name,
                    m["n"],
                    fmt(m["mae_um"]),
                    fmt(m["rmse_um"]),
                    fmt(m["p95_um"]),
                    fmt(m["mae_dof"]),
                    fmt(m["rmse_dof"]),
                    fmt(m["p95_dof"]),
                ]
            )
    headers = [
        "test set",
        "model",
        "frames",
        "MAE µm",
        "RMSE µm",
        "p95 abs err µm",
        "MAE DOF",
        "RMSE DOF",
        "p95 abs err DOF",
    ]
    return table(headers, rows)


# -- focus plans -----------------------------------------------------------------------
def make_plan(method: str, mic, trained):
    from autofocus_plans import brenner_sweep, cnn_focus

    if method == "brenner_sweep":
        return brenner_sweep(mic.camera, mic.z, mic.led, -25, 25, 26)
    return cnn_focus(mic.camera, mic.z, mic.led, trained[method])


def focus_once(RE: RunEngine, mic, method: str, trained, start_dof: float):
    """Start ``start_dof`` DOF from focus, run the plan; dict of the outcome (None if failed)."""
    from autofocus_plans import NoFocusFound

    _brightfield(mic)
    mic.z.set(mic.true_focus() + start_dof * mic.depth_of_field_um).wait(timeout=60)
    t0 = time.perf_counter()
    try:
        result = RE(make_plan(method, mic, trained)).plan_result
    except (NoFocusFound, RuntimeError):
        return None
    wall = time.perf_counter() - t0
    error = result.best_z - mic.true_focus()
    return {
        "err_um": abs(error),
        "err_dof": abs(error) / mic.depth_of_field_um,
        "exposures": result.exposures,
        "fell_back": bool(result.fell_back),
        "elapsed_s": result.elapsed_s,
        "wall_s": wall,
    }


def focus_trials(cfg: Config, trained, rng: np.random.Generator) -> str:
    RE = RunEngine({}, call_returns_result=True)
    rows = []
    for family in FAMILIES:
        mic = _microscope(family)
        out: dict[str, list] = {m: [] for m in METHODS}
        for k in range(TRIAL_FIELDS, TRIAL_FIELDS + cfg.trials):
            mic.fov.set(k).wait(timeout=60)
            start = float(rng.uniform(-START_RANGE_DOF, START_RANGE_DOF))
            for method in METHODS:
                out[method].append(focus_once(RE, mic, method, trained, start))
        for method in METHODS:
            ok = [r for r in out[method] if r is not None]
            n = len(out[method])
            err = np.array([r["err_um"] for r in ok]) if ok else np.array([np.nan])
            err_dof = np.array([r["err_dof"] for r in ok]) if ok else np.array([np.nan])
            within = sum(r["err_dof"] <= 0.5 for r in ok) / n
            if method in ARCHS:
                fast = sum(r["err_dof"] <= 0.5 and r["exposures"] <= 2 for r in ok) / n
                fell = f"{sum(r['fell_back'] for r in ok) / n:.0%}"
                within_fast = f"{fast:.0%}"
            else:
                within_fast, fell = "—", "—"
            rows.append(
                [
                    family,
                    LABELS[method],
                    f"{len(ok)}/{n}",
                    fmt(np.median(err)),
                    fmt(np.percentile(err, 95)),
                    fmt(np.median(err_dof)),
                    fmt(np.percentile(err_dof, 95)),
                    f"{within:.0%}",
                    within_fast,
                    fell,
                    fmt(np.mean([r["exposures"] for r in ok]) if ok else np.nan, 1),
                ]
            )
    headers = [
        "family",
        "method",
        "found",
        "abs err µm median",
        "p95",
        "abs err DOF median",
        "p95",
        "within 0.5 DOF",
        "within 0.5 DOF in ≤2 exposures",
        "fell back",
        "exposures mean",
    ]
    return table(headers, rows)


def timing(cfg: Config, trained, rng: np.random.Generator) -> str:
    RE = RunEngine({}, call_returns_result=True)
    mic = _microscope("tissue", time_scale=1)
    out: dict[str, list] = {m: [] for m in METHODS}
    for k in range(TIMING_FIELDS, TIMING_FIELDS + cfg.timing_trials):
        mic.fov.set(k).wait(timeout=60)
        start = float(rng.uniform(-START_RANGE_DOF, START_RANGE_DOF))
        for method in METHODS:
            r = focus_once(RE, mic, method, trained, start)
            if r is not None:
                out[method].append(r)
    ref = np.median([r["wall_s"] for r in out["brenner_sweep"]]) if out["brenner_sweep"] else np.nan
    rows = []
    for method in METHODS:
        rs = out[method]
        med = np.median([r["wall_s"] for r in rs]) if rs else np.nan
        rows.append(
            [
                LABELS[method],
                f"{len(rs)}/{cfg.timing_trials}",
                fmt(np.mean([r["exposures"] for r in rs]) if rs else np.nan, 1),
                str(sum(r["fell_back"] for r in rs)),
                fmt(np.median([r["err_dof"] for r in rs]) if rs else np.nan),
                fmt(med),
                fmt(med / ref),
            ]
        )
    headers = [
        "method",
        "found",
        "exposures mean",
        "fell back",
        "abs err DOF median",
        "wall s per focus (median)",
        "vs brenner_sweep",
    ]
    return table(headers, rows)


# -- inference cost ----------------------------------------------------------------------
def inference(cfg: Config, trained) -> str:
    import torch

    mic = _microscope("tissue")
    frames, _, _ = shoot(
        mic, "tissue", [TIMING_FIELDS + 100], cfg.batch, np.random.default_rng(SEED)
    )
    rows = []
    for arch in ARCHS:
        model = trained[arch]
        for _ in range(5):
            model.predict(frames[0])
        single = []
        for i in range(cfg.inference_repeats):
            t0 = time.perf_counter()
            model.predict(frames[i % len(frames)])
            single.append(time.perf_counter() - t0)
        model.predict(frames)
        batched = []
        for _ in range(max(3, cfg.inference_repeats // 5)):
            t0 = time.perf_counter()
            model.predict(frames)
            batched.append((time.perf_counter() - t0) / len(frames))
        rows.append(
            [
                arch,
                f"{np.median(single) * 1e3:.2f}",
                f"{np.percentile(single, 95) * 1e3:.2f}",
                f"{np.median(batched) * 1e3:.2f}",
            ]
        )
    headers = [
        "model",
        "single frame ms (median)",
        "single frame ms (p95)",
        f"batch of {cfg.batch}: ms per frame (median)",
    ]
    note = (
        f"CPU, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        "`model.predict` on 256x256 uint16 frames, including preprocessing "
        f"(crop / FFT features); single: median of {cfg.inference_repeats} calls after "
        f"5 warm-up calls; batch: median of {max(3, cfg.inference_repeats // 5)} calls."
    )
    return table(headers, rows) + "\n\n" + note


def run(quick: bool) -> str:
    cfg = Config.make(quick)
    rng = np.random.default_rng(SEED)
    trained, dof, train_table = train_models(cfg, rng)
    reg_table = regression(cfg, trained, rng)
    trial_table = focus_trials(cfg, trained, rng)
    time_table = timing(cfg, trained, rng)
    infer_table = inference(cfg, trained)
    epochs = ", ".join(f"{a} {e}" for a, e in cfg.epochs.items())
    return "\n".join(
        [
            "## Learned single-shot focus (DefocusCNN, FourierMLP)",
            "",
            f"Configuration (numpy seed {SEED}): `SimMicroscope(family, seed=0, time_scale=0)` "
            f"(256x256, 20x/0.4, DOF {dof:.2f} µm); each field of view `k` "
            "(`mic.fov.set(k)`) is a new sample region whose focal plane lies up to ±10 µm "
            "from field 0's. Frames are taken directly with the simulator (`camera.snap()`, "
            "no catalogue) under `off_axis` light at 0.25 s exposure, at "
            "`true_focus() + dz`, dz ~ U(-6, 6) DOF; label = dz.",
            "",
            f"- training: tissue fields 0..{cfg.train_fields - 1}, {cfg.shots} shots each; "
            f"`models.train(examples, arch, epochs=E, crops_per_frame={cfg.crops}, seed=0)` "
            f"with E: {epochs}",
            f"- regression test: fields {TEST_FIELDS}..{TEST_FIELDS + cfg.test_fields - 1} "
            f"of `tissue` (held-out fields, training family) and of `beads` (a family never "
            f"trained on), {cfg.shots} shots each, same offset distribution",
            f"- focus trials: fields {TRIAL_FIELDS}..{TRIAL_FIELDS + cfg.trials - 1} of each "
            "family, stage started at `true_focus() + U(-4, 4)*dof` (same start for every "
            "method); `cnn_focus(camera, z, led, model)` (defaults: max_shots=2, "
            "tolerance_um=1, fallback `fast_focus`) vs `brenner_sweep(camera, z, led, "
            "-25, 25, 26)`, under `RunEngine({}, call_returns_result=True)`",
            "",
            "### Training",
            "",
            train_table,
            "",
            "### Regression accuracy (signed defocus from one off-axis frame)",
            "",
            "Error = predicted − true defocus; the `predict 0` row is the trivial baseline "
            '(always answer "in focus", i.e. the mean of the labels).',
            "",
            reg_table,
            "",
            "### Focus trials",
            "",
            "abs err = `|best_z − true_focus()|`; statistics over the runs that returned "
            "(a `NoFocusFound` counts as not found), fractions over all trials. "
            '"within 0.5 DOF in ≤2 exposures" counts `cnn_focus` runs that needed no '
            "fall-back search; exposures of a fall-back include its `fast_focus` run.",
            "",
            trial_table,
            "",
            "### Time to focus with realistic latencies",
            "",
            f"{cfg.timing_trials} tissue trial(s) (fields {TIMING_FIELDS}..), each method from "
            "the same start, with `SimMicroscope('tissue', seed=0, time_scale=1)`: 0.25 s "
            "off-axis exposures, 10 ms brightfield exposures (+5 ms readout), stage 500 µm/s "
            "with 20 ms settle, plus the simulation and inference; wall-clock seconds of "
            "`RE(plan)`.",
            "",
            time_table,
            "",
            "### CPU inference time",
            "",
            infer_table,
            "",
        ]
    )
