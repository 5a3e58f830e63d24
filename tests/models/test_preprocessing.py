"""Network inputs: single frames and pairs under two mirrored LEDs."""

import numpy as np
import pytest
from scipy import ndimage

from models.preprocessing import Preprocessing


def _pair(shift_cols: int, *, invert: bool = False, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sample = ndimage.gaussian_filter(rng.normal(size=(256, 256)), 2.0)
    first = 1000 + 300 * sample
    moved = np.roll(sample, shift_cols, axis=1)
    second = 1000 + 300 * (-moved if invert else moved)
    return np.stack([first, second])


@pytest.mark.parametrize("shift", [-23, 0, 9, 40])
def test_the_pair_channels_peak_at_the_displacement_between_the_frames(shift):
    prep = Preprocessing.default_for(np.zeros((1, 2, 256, 256)))
    assert prep.inputs == "pair" and prep.crop == 192
    channels = prep.channels(_pair(shift))
    assert channels.shape == (2, prep.lags, prep.lags)
    middle = prep.lags // 2
    for channel in channels:
        row, col = np.unravel_index(np.argmax(np.abs(channel)), channel.shape)
        assert (row - middle, col - middle) == (0, shift)
        assert channel[row, col] == pytest.approx(1.0)


def test_inverted_contrast_flips_the_sign_and_brightness_drops_out():
    prep = Preprocessing(crop=192, inputs="pair")
    plain, inverted = prep.channels(_pair(12)), prep.channels(_pair(12, invert=True))
    row, col = np.unravel_index(np.argmax(np.abs(plain[0])), plain[0].shape)
    assert plain[0, row, col] > 0 > inverted[0, row, col]
    np.testing.assert_allclose(prep.channels(3 * _pair(12)), plain, atol=1e-4)


def test_a_pair_model_is_fed_pairs_and_says_so_otherwise():
    prep = Preprocessing(inputs="pair")
    with pytest.raises(ValueError, match=r"pair of frames \(2, H, W\)"):
        prep.channels(np.ones((256, 256)))
    with pytest.raises(ValueError, match="lags"):
        Preprocessing(crop=64, inputs="pair", lags=128)
    assert len(prep.fft_features(_pair(3))) == prep.fft_feature_count == 2 * 32 * 32


def test_a_pair_model_checkpoint_round_trips(tmp_path):
    torch = pytest.importorskip("torch")
    from models import DefocusModel, load_model

    torch.manual_seed(0)
    prep = Preprocessing(crop=192, inputs="pair")
    model = DefocusModel("DefocusCNN", prep, metadata={"led_patterns": ["a", "b"]})
    pairs = np.stack([_pair(s, seed=k) for k, s in enumerate((-10, 5))])
    loaded = load_model(model.save(tmp_path / "pair.safetensors"))
    assert loaded.preprocessing == prep and loaded.shots == 2 and loaded.patterns == ("a", "b")
    np.testing.assert_allclose(loaded.predict(pairs), model.predict(pairs), rtol=1e-5)
    with pytest.raises(ValueError, match=r"pair of frames \(2, H, W\)"):
        loaded.predict(np.ones((2, 3, 256, 256)))


def test_pair_models_locate_the_correlation_peak_and_older_checkpoints_still_load(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file, save_file

    from models import DefocusModel, load_model

    torch.manual_seed(0)
    pair = Preprocessing(crop=192, inputs="pair")
    assert DefocusModel("DefocusCNN", pair).net_options == {"head": "locate"}
    assert DefocusModel("DefocusCNN", Preprocessing()).net_options == {"head": "pool"}
    with pytest.raises(ValueError, match="head 'dense'"):
        DefocusModel("DefocusCNN", pair, net_options={"head": "dense"})

    # a checkpoint written before the options were recorded: pooled, with coordinate channels
    legacy = DefocusModel("DefocusCNN", pair, net_options={"head": "pool", "coordinates": True})
    path = legacy.save(tmp_path / "legacy.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        header = dict(f.metadata())
    del header["net_options"]
    save_file(load_file(str(path)), str(path), metadata=header)
    loaded = load_model(path)
    assert loaded.net_options == {"head": "pool", "coordinates": True}
    pairs = np.stack([_pair(s, seed=k) for k, s in enumerate((-10, 5))])
    np.testing.assert_allclose(loaded.predict(pairs), legacy.predict(pairs), rtol=1e-5)
