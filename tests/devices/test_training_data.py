import numpy as np
import pytest

from devices import (
    SAMPLE_FAMILIES,
    DebrisSample,
    LayeredSample,
    ProceduralSample,
    ScaledSample,
    SimMicroscope,
    labelled_shots,
    randomised_examples,
    snap_shot,
)

PAIR = ("na:0.3,0", "na:0.3,180")


def test_layers_multiply_and_empty_regions_are_bare_glass_of_the_upper_layers():
    base, upper = ProceduralSample("beads", 1), ProceduralSample("tissue", 2)
    shape, dx = (128, 128), 0.325
    full = LayeredSample([base, upper]).transmittance(shape, dx)
    expected = base.transmittance(shape, dx) * upper.transmittance(shape, dx)
    assert np.allclose(full, expected, atol=1e-6)
    sparse = LayeredSample([base, upper], empty_fraction=0.5, seed=3).transmittance(shape, dx)
    bare = np.isclose(sparse, base.transmittance(shape, dx), atol=1e-4)
    # about half the field shows the base alone (soft edges blur the boundary)
    assert 0.3 < bare.mean() < 0.7
    assert LayeredSample([base, upper]).label.startswith("beads")
    with pytest.raises(ValueError, match="at least one layer"):
        LayeredSample([])
    with pytest.raises(ValueError, match="empty_fraction"):
        LayeredSample([base], empty_fraction=1.0)


def test_a_scaled_sample_has_the_same_structure_at_another_size():
    def correlation_length(t):
        power = np.abs(np.fft.fft2(t - t.mean())) ** 2
        autocorrelation = np.real(np.fft.ifft2(power))
        return np.argmax(autocorrelation[0, :64] < 0.5 * autocorrelation[0, 0])

    cells = ProceduralSample("cells", 3)
    shape, dx = (256, 256), 0.325
    plain = np.abs(cells.transmittance(shape, dx))
    doubled = np.abs(ScaledSample(cells, 2.0).transmittance(shape, dx))
    assert correlation_length(doubled) >= 1.7 * correlation_length(plain)
    assert ScaledSample(cells, 0.5).describe()["sample_scale"] == 0.5
    with pytest.raises(ValueError, match="scale must be positive"):
        ScaledSample(cells, 0)


def test_debris_is_sharp_edged_pieces_on_bare_glass_and_joins_the_fields_asked_for():
    amplitude = np.abs(DebrisSample(4, pieces=10).transmittance((256, 256), 0.325))
    assert np.median(amplitude) == pytest.approx(1.0, abs=1e-3)  # mostly clean glass
    assert 0.005 < np.mean(amplitude < 0.8) < 0.5
    assert np.abs(np.diff(amplitude, axis=1)).max() > 0.3  # an edge within one pixel
    with pytest.raises(ValueError, match="at least one piece"):
        DebrisSample(pieces=0)
    plain = randomised_examples(PAIR, fields=2, shots_per_field=1, seed=5, progress=False)
    dusty = randomised_examples(
        PAIR, fields=2, shots_per_field=1, seed=5, debris=1.0, progress=False
    )
    assert all(d["sample"].startswith("debris:") for d in dusty.samples)
    assert not any("debris" in d["sample"] for d in plain.samples)
    assert dusty.recipe["debris"] == 1.0 and plain.recipe["debris"] == 0.0
    with pytest.raises(ValueError, match="debris is a share"):
        randomised_examples(PAIR, debris=1.5, progress=False)


def test_randomised_pairs_are_labelled_with_the_true_defocus_and_seeded():
    a = randomised_examples(PAIR, fields=3, shots_per_field=4, seed=5, progress=False)
    b = randomised_examples(PAIR, fields=3, shots_per_field=4, seed=5, progress=False)
    c = randomised_examples(PAIR, fields=3, shots_per_field=4, seed=6, progress=False)
    assert a.frames.shape == (12, 2, 256, 256) and a.frames.dtype == np.uint16
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.defocus_um, b.defocus_um)
    assert not np.array_equal(a.defocus_um, c.defocus_um)
    assert len(set(a.fov)) == 3 and np.abs(a.defocus_um).max() <= 6 * a.depth_of_field_um
    assert a.recipe["patterns"] == list(PAIR) and len(a.samples) == 3
    assert all("sample_scale" not in d for d in a.samples)  # each family's own sizes
    sized = randomised_examples(
        PAIR, fields=3, shots_per_field=1, feature_scale=(0.5, 2), seed=5, progress=False
    )
    scales = [d["sample_scale"] for d in sized.samples]
    assert all(0.5 <= k <= 2 for k in scales) and len(set(scales)) == 3
    assert sized.recipe["feature_scale"] == [0.5, 2]
    # the two frames of a pair differ (two LEDs), and they are real exposures, not blank
    assert all(not np.array_equal(f[0], f[1]) for f in a.frames)
    assert a.frames.max() > 500


def test_the_label_is_the_signed_distance_from_the_simulators_focal_plane():
    # the dual-LED physics estimator reads any sample's defocus from the pair's displacement
    from autofocus_plans import dual_led_model

    mic = SimMicroscope("tissue", time_scale=0)
    physics = dual_led_model(mic.camera, mic.led)
    generated = randomised_examples(
        physics.patterns, fields=3, shots_per_field=8, range_dof=3.0, seed=2, progress=False
    )
    estimated = np.array([physics.predict(pair) for pair in generated.frames])
    error = np.abs(estimated - generated.defocus_um) / mic.depth_of_field_um
    # a mislabelled sign or offset would put the median error at DOFs, not a fraction of one
    assert np.median(error) < 0.5, error


def test_labelled_shots_expose_each_field_and_label_it_from_the_simulators_focus():
    mic = SimMicroscope("cells", time_scale=0)
    dof = mic.depth_of_field_um
    samples = [ProceduralSample("beads", 3), ProceduralSample("bars", 4)]
    rng = np.random.default_rng(0)
    frames, labels = labelled_shots(mic, PAIR, samples, shots=3, rng=rng, range_dof=2.0)
    assert frames.shape == (6, 2, 256, 256) and labels.shape == (6,)
    assert np.abs(labels).max() <= 2 * dof and len(set(labels)) == 6
    # the last shot is where the stage was left: z - focus is its label
    assert np.isclose(mic.z.position - mic.true_focus(), labels[-1])
    offset = mic.camera.offset_adu.get()
    level = (frames.max(axis=(1, 2, 3)) - offset) / (2 ** mic.camera.bit_depth.get() - 1 - offset)
    assert np.all((level > 0.2) & (level < 0.95))  # exposed near half the range, not clipped
    single = snap_shot(mic, PAIR[:1])
    assert single.shape == (256, 256) and mic.led.pattern.get() == PAIR[0]


def test_bad_requests_are_refused_in_one_sentence():
    with pytest.raises(ValueError, match="Unknown sample families"):
        randomised_examples(PAIR, families=("stars",), progress=False)
    with pytest.raises(ValueError, match="at least one LED pattern"):
        randomised_examples((), progress=False)
    with pytest.raises(ValueError, match="at least 1"):
        randomised_examples(PAIR, fields=0, progress=False)
    with pytest.raises(ValueError, match="feature_scale must be"):
        randomised_examples(PAIR, feature_scale=(2, 1), progress=False)
    assert set(SAMPLE_FAMILIES) >= {"cells", "tissue"}
