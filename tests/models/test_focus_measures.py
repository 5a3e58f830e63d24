import numpy as np
import pytest

from models.focus_measures import FOCUS_MEASURES, brenner, focus_measure


def test_brenner_matches_definition_along_first_axis():
    rng = np.random.default_rng(0)
    g = rng.integers(0, 4096, size=(7, 9)).astype(float)
    expected = sum(
        (g[i, j] - g[i + 2, j]) ** 2 for i in range(g.shape[0] - 2) for j in range(g.shape[1])
    )
    assert brenner(g) == pytest.approx(expected)
    # differences are along i (rows): a pattern varying only along columns scores 0
    columns_only = np.tile(np.arange(9.0), (7, 1))
    assert brenner(columns_only) == 0.0
    assert brenner(columns_only.T) > 0


def test_uint16_input_does_not_overflow():
    g = np.zeros((6, 6), np.uint16)
    g[::2] = 65535
    g[1::2] = 0
    g[2::4] = 0  # rows 2 apart differ by 65535
    assert brenner(g) == pytest.approx(brenner(g.astype(np.float64)))
    assert brenner(g) > 65535**2


@pytest.mark.parametrize("name", sorted(FOCUS_MEASURES))
def test_every_measure_prefers_sharp_over_blurred(name):
    from scipy import ndimage

    rng = np.random.default_rng(1)
    sharp = ndimage.gaussian_filter(rng.random((64, 64)), 1.0) * 1000 + 100
    blurred = ndimage.gaussian_filter(sharp, 3.0)
    measure = focus_measure(name)
    for dtype in (np.uint16, np.int32, np.float32, np.float64):
        assert isinstance(measure(sharp.astype(dtype)), float)
    assert measure(sharp) > measure(blurred)


@pytest.mark.parametrize("name", sorted(FOCUS_MEASURES))
@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((4, 4, 4)), "2-D"),
        (np.zeros((0, 5)), "at least"),
        (np.array([[1.0, np.nan, 1], [1, 1, 1], [1, 1, 1]]), "NaN"),
        (np.array([[1.0, np.inf, 1], [1, 1, 1], [1, 1, 1]]), "NaN or infinite"),
    ],
)
def test_bad_input_gives_clear_error(name, bad, message):
    with pytest.raises(ValueError, match=message):
        focus_measure(name)(bad)


def test_unknown_measure_name():
    with pytest.raises(ValueError, match="Unknown focus measure 'sharpness'; choose one of"):
        focus_measure("sharpness")


def test_brenner_noise_predicts_the_scatter_of_noisy_frames():
    from models.focus_measures import brenner_noise

    rng = np.random.default_rng(1)
    clean = 1000 + 200 * np.sin(np.arange(48)[:, None] / 2.5) * np.cos(np.arange(40)[None, :] / 4)
    variance = clean / 5.0  # shot noise of 5 electrons per ADU
    noisy = [clean + rng.normal(0, np.sqrt(variance)) for _ in range(1500)]
    measured = np.std([brenner(frame) for frame in noisy])
    # predicted from one noisy frame, as a camera does it
    assert brenner_noise(noisy[0], variance) == pytest.approx(measured, rel=0.1)
    flat = [1000 + rng.normal(0, 10, (48, 40)) for _ in range(1500)]
    assert brenner_noise(flat[0], 100.0) == pytest.approx(
        np.std([brenner(f) for f in flat]), rel=0.1
    )
