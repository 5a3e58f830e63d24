"""``autofocus demo``: the whole story on the simulated microscope, into the embedded catalogue."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["DemoSettings", "run_demo"]


@dataclass(frozen=True)
class DemoSettings:
    fields: int
    shots: int
    epochs: int
    crops: int
    cnn_trials: int
    track_points: int
    track_interval_s: float

    @classmethod
    def for_mode(cls, fast: bool) -> DemoSettings:
        if fast:
            return cls(
                fields=6,
                shots=16,
                epochs=6,
                crops=1,
                cnn_trials=2,
                track_points=6,
                track_interval_s=0.2,
            )
        return cls(
            fields=20,
            shots=30,
            epochs=30,
            crops=3,
            cnn_trials=6,
            track_points=20,
            track_interval_s=0.5,
        )


@dataclass
class _Row:
    method: str
    errors_um: list[float]
    exposures: list[int]
    seconds: list[float]


def run_demo(
    catalog: str | None = None,
    output: Path = Path("demo-output"),
    *,
    fast: bool = False,
    seed: int = 0,
    sample: str = "tissue",
) -> dict[str, _Row]:
    """Sweep, fast and fly focus, training, CNN and dual-LED focus, drift tracking, a focus map
    and tile scan."""
    from bluesky import RunEngine
    from rich.console import Console
    from rich.table import Table

    import models
    from devices import (
        SAMPLE_FAMILIES,
        FocalSurface,
        ProceduralSample,
        SimMicroscope,
        SlideSample,
        labelled_shots,
    )

    from .brenner import brenner_sweep, fast_focus
    from .catalog import frames_dir_for, open_catalog, subscribe_catalog
    from .dual_led import dual_led_focus
    from .fly import fly_sweep
    from .learned import cnn_focus, collect_training_set, track_focus
    from .mapping import focus_map, tile_scan
    from .plots import (
        plot_calibration,
        plot_focus_curve,
        plot_focus_map,
        plot_image_series,
        plot_predictions,
        plot_trajectory,
    )
    from .replay import load_table
    from .shipped import real_image_samples, shipped_model_for

    console = Console()
    settings = DemoSettings.for_mode(fast)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()

    def step(text: str) -> None:
        console.print(
            f"[bold cyan]▶ {text}[/bold cyan]  [dim]({time.monotonic() - t_start:.0f} s)[/dim]"
        )

    step("opening the embedded catalogue")
    cat = open_catalog(catalog, create=True)  # the demo makes its catalogue wherever it is told
    RE = RunEngine({}, call_returns_result=True)
    mic = SimMicroscope(sample, seed=seed, focus_um=12.3, time_scale=0)
    subscribe_catalog(RE, cat, cameras=[mic.camera])
    dof = mic.depth_of_field_um
    console.print(f"  {mic}; catalogue has {len(cat)} run(s)")
    rows: dict[str, _Row] = {}

    def record(name: str, result, truth: float) -> None:
        row = rows.setdefault(name, _Row(name, [], [], []))
        row.errors_um.append(result.best_z - truth)
        row.exposures.append(result.exposures)
        row.seconds.append(result.elapsed_s)

    # 1. full Brenner sweep, from 3 DOF away
    step("Brenner sweep (brightfield)")
    mic.z.set(mic.true_focus() + 3 * dof).wait()
    sweep = RE(
        brenner_sweep(mic.camera, mic.z, mic.led, -25, 25, 26, md={"sample": sample})
    ).plan_result
    record("Brenner sweep", sweep, mic.true_focus())
    run = cat[sweep.run_uid]
    table = load_table(run)
    plot_focus_curve(
        table["z"],
        table[f"{mic.camera.name}_brenner"],
        output / "focus_curve.png",
        best_z=sweep.best_z,
        true_focus=mic.true_focus(),
        title="Brenner sweep (from the catalogue)",
    )

    # a defocus series under off-axis light, for the eye
    mic.led.set("off_axis")
    mic.camera.exposure_time.put(0.25)
    offsets = [-4, -2, 0, 2, 4]
    images = []
    for k in offsets:
        mic.z.set(mic.true_focus() + k * dof).wait()
        images.append(mic.camera.snap()[64:192, 64:192])
    plot_image_series(
        images,
        [f"{k:+d} DOF" for k in offsets],
        output / "defocus_series.png",
        title="Off-axis LED: defocus shifts and reshapes the image",
    )
    mic.led.set("brightfield")
    mic.camera.exposure_time.put(0.01)

    # 2. fast focus
    step("fast focus (coarse-to-fine)")
    mic.z.set(mic.true_focus() - 4 * dof).wait()
    fast = RE(fast_focus(mic.camera, mic.z, mic.led, -25, 25, md={"sample": sample})).plan_result
    record("fast_focus", fast, mic.true_focus())

    # 2b. a fly sweep: the stage moves while the camera streams (needs real time to pass)
    step("fly sweep (continuous motion, realistic stage and camera timing)")
    mic.z.time_scale = mic.camera.time_scale = 1.0
    try:
        mic.z.set(mic.true_focus() + 3 * dof).wait()
        fly = RE(fly_sweep(mic.camera, mic.z, mic.led, -25, 25, md={"sample": sample})).plan_result
        record("fly_sweep", fly, mic.true_focus())
    finally:
        mic.z.time_scale = mic.camera.time_scale = 0.0

    # 3. training set and training
    step(f"collecting a training set: {settings.fields} fields x {settings.shots} off-axis shots")
    fields = list(range(1, settings.fields + 1))
    uids = RE(
        collect_training_set(
            mic.camera,
            mic.z,
            mic.led,
            mic.fov,
            fields,
            shots_per_field=settings.shots,
            training_set="demo",
            seed=seed,
            md={"sample": sample},
        )
    ).plan_result
    step(f"training DefocusCNN on {len(uids)} runs from the catalogue")
    examples = models.examples_from_runs([cat[u] for u in uids])
    model = models.train(
        examples,
        "DefocusCNN",
        epochs=settings.epochs,
        crops_per_frame=settings.crops,
        seed=seed,
        name="demo-cnn",
    )
    model_path = model.save(output / "demo-cnn.safetensors")
    val = model.metadata["validation"]
    console.print(
        f"  validation on unseen fields: MAE {val['mae_um']:.2f} µm ({val['mae_dof']:.2f} DOF); "
        f"predicting the mean would give {np.mean(np.abs(examples.defocus_um)):.2f} µm"
    )
    model = models.load_model(model_path)
    val_frames = examples.subset(np.isin(examples.fov, model.metadata["validation_fields"]))
    plot_predictions(
        val_frames.defocus_um,
        model.predict(val_frames.frames),
        output / "predicted_vs_true.png",
        title="DefocusCNN on unseen fields",
    )

    # 4. CNN focus on fields never seen in training
    step(f"CNN focus on {settings.cnn_trials} new fields")
    rng = np.random.default_rng(seed + 1)
    for k in range(settings.cnn_trials):
        mic.fov.set(1000 + k).wait()
        mic.z.set(mic.true_focus() + rng.uniform(-4, 4) * dof).wait()
        result = RE(cnn_focus(mic.camera, mic.z, mic.led, model, md={"sample": sample})).plan_result
        record("cnn_focus" + (" (fell back)" if result.fell_back else ""), result, mic.true_focus())

    # the same fields with no model at all: two mirrored off-axis LEDs
    step(f"dual-LED focus (no training) on the same {settings.cnn_trials} fields")
    rng = np.random.default_rng(seed + 1)
    for k in range(settings.cnn_trials):
        mic.fov.set(1000 + k).wait()
        mic.z.set(mic.true_focus() + rng.uniform(-4, 4) * dof).wait()
        result = RE(dual_led_focus(mic.camera, mic.z, mic.led, md={"sample": sample})).plan_result
        name = "dual_led_focus" + (" (fell back)" if result.fell_back else "")
        record(name, result, mic.true_focus())

    # the same fields, and a field of every other family, with the shipped general model
    step("CNN focus with the shipped pair model (no training here) on every sample family")
    shipped = shipped_model_for(mic.camera, mic.led)
    rng = np.random.default_rng(seed + 2)
    trials = max(1, settings.cnn_trials // 2)
    # every family, then real micrographs no model trained on: where the novelty doubts the
    # phase-contrast cell, the two-LED shift of the same pair vouches for (or vetoes) its reading
    runs = [
        ("cnn_focus, shipped pairs", family, 2000 + k, f"{family}:{k}")
        for family in SAMPLE_FAMILIES
        for k in range(trials)
    ]
    runs += [
        ("cnn_focus, shipped pairs, real images", crops[k % len(crops)], 2500 + k, label)
        for label, crops in real_image_samples().items()
        for k in range(trials)
    ]
    for row, sample_to_focus, sample_seed, label in runs:
        mic.set_sample(sample_to_focus, seed=sample_seed)
        mic.z.set(mic.true_focus() + rng.uniform(-4, 4) * dof).wait()
        result = RE(
            cnn_focus(mic.camera, mic.z, mic.led, shipped, md={"sample": label})
        ).plan_result
        record(row + (" (fell back)" if result.fell_back else ""), result, mic.true_focus())
    calibration: dict[str, tuple[list[float], list[float]]] = {}
    exposure = mic.camera.exposure_time.get()
    for family in SAMPLE_FAMILIES:  # fresh fields: the intervals against the actual errors
        pairs, truth = labelled_shots(
            mic,
            shipped.patterns,
            [ProceduralSample(family, 3000)],
            shots=settings.cnn_trials * 3,
            rng=rng,
        )
        estimates = [shipped.estimate(pair) for pair in pairs]
        calibration[family] = (
            [e.interval_um for e in estimates],
            [abs(e.defocus_um - dz) for e, dz in zip(estimates, truth, strict=True)],
        )
    mic.led.set("brightfield").wait()
    mic.camera.exposure_time.put(exposure)
    plot_calibration(
        calibration,
        output / "calibration.png",
        dof_um=dof,
        coverage=shipped.calibration.coverage,
        title=f"Shipped pair model: stated {shipped.calibration.coverage:.0%} intervals",
    )

    # 5. drift tracking
    step(
        f"tracking a drifting sample: {settings.track_points} shots, "
        f"{settings.track_interval_s} s apart"
    )
    drifting = SimMicroscope(
        sample, seed=seed + 4242, drift_um_per_s=1.5 if not fast else 4.0, time_scale=0
    )
    drifting.camera.write_dir = frames_dir_for(cat)
    truth: list[float] = []
    key = f"{drifting.camera.name}_brenner"
    RE.subscribe(
        lambda name, doc: (
            name == "event" and key in doc["data"] and truth.append(drifting.true_focus())
        )
    )
    trajectory = RE(
        track_focus(
            drifting.camera,
            drifting.z,
            drifting.led,
            model,
            num=settings.track_points,
            interval_s=settings.track_interval_s,
            md={"sample": sample},
        )
    ).plan_result
    n = len(trajectory["z_um"])
    truth_at_shots = truth[-n:]
    errors = np.asarray(trajectory["z_um"]) - np.asarray(truth_at_shots)
    plot_trajectory(
        trajectory["time_s"],
        trajectory["z_um"],
        truth_at_shots,
        output / "drift_tracking.png",
        uncorrected=[trajectory["z_um"][0]] * n,
        title="Focus tracking under drift",
    )
    rows["track_focus (per shot)"] = _Row(
        "track_focus (per shot)", list(errors), [1] * n, list(np.diff([0.0, *trajectory["time_s"]]))
    )

    # 6. a focus map over a tilted, curved slide, and a tile scan that follows it
    step("focus map of a tilted slide (3x3 points) and a 4x4 tile scan at the mapped focus")
    slide = SimMicroscope(
        SlideSample(sample, seed),
        focus_um=12.3,
        z_start_um=12.3,
        surface=FocalSurface(tilt_x=0.01, tilt_y=-0.006, curvature_per_um=6e-6, seed=seed),
        time_scale=0,
    )
    slide.camera.write_dir = frames_dir_for(cat)
    span = (-150.0, 150.0)
    mapped = RE(
        focus_map(
            slide.camera,
            slide.z,
            slide.led,
            slide.xy,
            x_range=span,
            y_range=span,
            md={"sample": sample},
        )
    ).plan_result
    plot_focus_map(
        mapped.fit.to_dict(),
        mapped.points,
        output / "focus_map.png",
        extent=(-180.0, 180.0, -180.0, 180.0),
        title="Focus map of a tilted, curved slide",
    )
    tiles = RE(
        tile_scan(
            slide.camera,
            slide.z,
            slide.led,
            slide.xy,
            mapped.fit.to_dict(),
            x_range=span,
            y_range=span,
            grid=(4, 4),
            md={"sample": sample},
        )
    ).plan_result
    rows["tile_scan (per tile)"] = _Row(
        "tile_scan (per tile)",
        [t["z"] - slide.true_focus_at(t["x"], t["y"]) for t in tiles.tiles],
        [1] * len(tiles.tiles),  # one image per tile (the map took its own runs)
        [tiles.elapsed_s / len(tiles.tiles)] * len(tiles.tiles),
    )

    summary = Table(title=f"Autofocus summary (simulated microscope, DOF {dof:.2f} µm)")
    for column in (
        "method",
        "runs",
        "median |error| µm",
        "median |error| DOF",
        "exposures",
        "time s",
    ):
        summary.add_column(column, justify="right" if column != "method" else "left")
    for row in rows.values():
        err = np.abs(row.errors_um)
        summary.add_row(
            row.method,
            str(len(err)),
            f"{np.median(err):.2f}",
            f"{np.median(err) / dof:.2f}",
            f"{np.mean(row.exposures):.1f}",
            f"{np.median(row.seconds):.2f}",
        )
    console.print(summary)
    console.print(
        f"plots in {output.resolve()}: " + ", ".join(sorted(p.name for p in output.glob("*.png")))
    )
    console.print(
        f"catalogue: {len(cat)} run(s); try `autofocus runs` and "
        f"`autofocus replay {sweep.run_uid[:8]} --plot curve.png`"
    )
    step("done")
    return rows
