"""Learned focus from frame pairs under two mirrored LEDs, on samples it never saw."""

import numpy as np
import pytest

import models
from autofocus_plans import (
    cnn_focus,
    collect_training_set,
    find_runs,
    mirrored_patterns,
    open_catalog,
    subscribe_catalog,
)
from devices import ImageSample, ProceduralSample, SimMicroscope, snap_shot


@pytest.fixture(scope="module")
def pair_model(tmp_path_factory):
    """Pairs collected into a real catalogue from tissue, beads and bars; a CNN trained on them."""
    from bluesky import RunEngine

    root = tmp_path_factory.mktemp("pairs")
    catalog = open_catalog(root / "catalog", create=True)
    RE = RunEngine({}, call_returns_result=True)
    uids = []
    mic = SimMicroscope("tissue", seed=0, time_scale=0)
    subscribe_catalog(RE, catalog, cameras=[mic.camera])
    for family in ("tissue", "beads", "bars"):
        mic.set_sample(family)
        uids += RE(
            collect_training_set(
                mic.camera,
                mic.z,
                mic.led,
                mic.fov,
                list(range(3)),
                shots_per_field=16,
                pair_patterns=mirrored_patterns(mic.led),
                training_set=f"pairs-{family}",
                seed=1,
            )
        ).plan_result
    runs = list(find_runs(catalog, purpose="training").values())
    examples = models.examples_from_runs(runs, progress=False)
    model = models.train(
        examples, "DefocusCNN", epochs=16, crops_per_frame=2, seed=0, progress=False
    )
    path = model.save(root / "pairs.safetensors")
    return {"catalog": catalog, "uids": uids, "examples": examples, "path": path, "mic": mic}


def test_pairs_are_recorded_and_read_back_as_pairs(pair_model):
    examples, catalog = pair_model["examples"], pair_model["catalog"]
    assert examples.frames.shape == (144, 2, 256, 256)
    start = catalog[pair_model["uids"][0]].start
    patterns = list(mirrored_patterns(pair_model["mic"].led))
    assert start["led_patterns"] == patterns
    # two events per offset, both at the same Z
    z = np.asarray(catalog[pair_model["uids"][0]]["primary"]["z"].read())
    assert len(z) == 32 and np.allclose(z[::2], z[1::2])
    model = models.load_model(pair_model["path"])
    assert model.shots == 2 and model.patterns == tuple(patterns)
    assert model.preprocessing.inputs == "pair"


def test_a_pair_model_reads_the_defocus_of_families_it_never_saw(pair_model):
    # trained on tissue, beads and bars only: the displacement between the two frames carries
    # the defocus whatever the sample, so cells and a real phase-contrast image are read
    # without ever having been seen
    model = models.load_model(pair_model["path"])
    rng = np.random.default_rng(5)
    from skimage import data

    cell = data.cell().astype(float)[:256, :256]
    cell = (cell - cell.min()) / np.ptp(cell)
    real = ImageSample(1 - 0.4 * cell, 1.2 * cell, pixel_size_um=0.5, label="real cell")
    for family in ("cells", "real cell"):
        mic = SimMicroscope("cells", seed=0, time_scale=0)
        mic.camera.exposure_time.put(0.25)  # as the training frames (the LEDs are off-axis)
        dof = mic.depth_of_field_um
        truth, pairs = [], []
        for k in range(3):
            sample = real if family == "real cell" else ProceduralSample(family, 500 + k)
            mic.set_sample(sample, seed=k)
            for dz in rng.uniform(-5, 5, 6) * dof:
                mic.z.set(mic.true_focus() + dz).wait()
                pairs.append(snap_shot(mic, model.patterns))
                truth.append(dz)
        truth = np.asarray(truth)
        error = np.abs(model.predict(np.stack(pairs)) - truth)
        # better than always answering "in focus"; a model this small (9 fields, no
        # randomisation) is far from the bench's 0.2-0.4 DOF, but a pair read in the wrong
        # order or with the wrong sign would be worse than that baseline
        assert np.mean(error) < 0.8 * np.mean(np.abs(truth)), (family, np.round(error / dof, 2))


def test_cnn_focus_with_a_pair_model_takes_two_exposures_per_shot(pair_model, RE, tmp_path):
    model = models.load_model(pair_model["path"])
    mic = SimMicroscope("tissue", seed=3, frames_dir=tmp_path, time_scale=0)
    dof = mic.depth_of_field_um
    mic.z.set(mic.true_focus() + 3 * dof).wait()
    docs = []
    result = RE(
        cnn_focus(mic.camera, mic.z, mic.led, model), lambda n, d: docs.append((n, d))
    ).plan_result
    start = next(d for n, d in docs if n == "start")
    assert start["led_patterns"] == list(model.patterns)
    streams = {
        d["uid"]: d["name"] for n, d in docs if n == "descriptor" and d["run_start"] == start["uid"]
    }
    events = [
        streams[d["descriptor"]] for n, d in docs if n == "event" and d["descriptor"] in streams
    ]
    assert events.count("primary") == 2 * events.count("prediction") > 0
    assert mic.led.pattern.get() == "brightfield"  # restored
    if not result.fell_back:  # a small model may well doubt itself (the bench counts how often)
        # two exposures a shot, and two for every pair retaken to bring the exposure in range
        retakes = result.extra["exposure_retakes"]
        assert result.exposures == 2 * (len(result.extra["predictions_um"]) + retakes)
        assert abs(result.best_z - mic.true_focus()) <= dof


def test_a_pair_model_is_refused_by_single_frame_tracking(pair_model, RE):
    from autofocus_plans import track_focus

    mic = pair_model["mic"]
    with pytest.raises(ValueError, match="one frame per time point"):
        RE(track_focus(mic.camera, mic.z, mic.led, pair_model["path"], num=1, interval_s=0))


def _cross_checked(RE, mic, model, start_dof):
    """One-pair cnn_focus from ``start_dof`` off focus: (result or None, why, origin, row)."""
    mic.z.set(mic.true_focus() + start_dof * mic.depth_of_field_um).wait()
    origin, docs, reason = mic.z.position, [], ""
    try:
        result = RE(
            cnn_focus(mic.camera, mic.z, mic.led, model, max_shots=1, fallback="none"),
            lambda name, doc, docs=docs: docs.append((name, doc)),
        ).plan_result
    except RuntimeError as err:
        result, reason = None, str(err)
    start_doc = next(d for n, d in docs if n == "start")
    assert start_doc["cross_check"] == "two-LED shift"
    (row,) = [d["data"] for n, d in docs if n == "event" and "shift_agrees" in d["data"]]
    return result, reason, origin, row


def test_the_two_led_shift_vouches_for_pairs_the_model_doubts_and_vetoes_misreads(pair_model, RE):
    # the same two frames read by physics (their displacement, no training): where it stands
    # out and agrees with the model the stage moves, although this small model finds cells
    # unfamiliar; where the two disagree one of them is wrong, and the run falls back
    model = models.load_model(pair_model["path"])
    mic = SimMicroscope("cells", seed=3, time_scale=0)
    dof = mic.depth_of_field_um
    decisions = []
    for start in (-2.5, -1.0, 1.0, 2.5):
        result, reason, origin, row = _cross_checked(RE, mic, model, start)
        if row["shift_agrees"] == 1:
            assert result is not None and not result.fell_back, reason
            mean = 0.5 * (row["predicted_defocus_um"] + row["shift_defocus_um"])
            assert result.best_z == pytest.approx(origin - mean, abs=1e-3)
            assert abs(result.best_z - mic.true_focus()) <= 0.5 * dof
        elif row["shift_agrees"] == 0:
            assert result is None and "two-LED shift disagree" in reason
            assert mic.z.position == pytest.approx(origin)  # never moved on either
            assert abs(row["predicted_defocus_um"] - start * dof) > row["agreement_um"] / 2
        decisions.append((round(row["novelty"], 2), row["shift_agrees"]))
    assert any(novelty > 1 and agrees == 1 for novelty, agrees in decisions), decisions

    # a model that misreads the sign (as one trained with the LEDs swapped would): one
    # shot cannot tell, the two-LED shift can, and the stage never moves on it
    swapped = models.load_model(pair_model["path"])
    swapped.label_scale_um = -swapped.label_scale_um
    for start in (-2.5, 2.5):
        result, reason, origin, row = _cross_checked(RE, mic, swapped, start)
        assert row["shift_agrees"] == 0, row
        assert result is None and "two-LED shift disagree" in reason
        assert mic.z.position == pytest.approx(origin)

    # with both estimators' errors measured (models.train(reference=...)) the band is their
    # root sum of squares and the better one counts for more in the combined estimate
    measured = models.load_model(pair_model["path"])
    p95 = measured.metadata["validation"]["p95_um"]
    measured.metadata["reference"] = {"p95_um": 2 * p95}
    result, reason, origin, row = _cross_checked(RE, mic, measured, -2.5)
    own = max(p95, row["interval_um"])  # this reading's interval widens it, never narrows it
    assert row["shift_agreement_um"] == pytest.approx(np.hypot(own, 2 * p95))
    assert row["agreement_um"] == pytest.approx(np.sqrt(2) * p95)
    assert row["shift_agrees"] == 1, (row, reason)
    weight = own**2 / (own**2 + (2 * p95) ** 2)
    weighted = (1 - weight) * row["predicted_defocus_um"] + weight * row["shift_defocus_um"]
    assert result.best_z == pytest.approx(origin - weighted, abs=1e-3)

    # without the check the novelty alone decides: this small model refuses its own good read
    mic.z.set(mic.true_focus() - 1.0 * dof).wait()
    with pytest.raises(RuntimeError, match="unlike those the model was trained on"):
        RE(
            cnn_focus(
                mic.camera, mic.z, mic.led, model, max_shots=1, fallback="none", cross_check=False
            )
        )
