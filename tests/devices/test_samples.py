import numpy as np
import pytest

from devices import SAMPLE_FAMILIES, ImageSample, ProceduralSample, SimMicroscope, ZStackSample
from models.focus_measures import brenner


@pytest.mark.parametrize("family", SAMPLE_FAMILIES)
def test_procedural_families_are_seeded_with_amplitude_and_phase(family):
    a = ProceduralSample(family, seed=4).transmittance((64, 64), 0.325)
    b = ProceduralSample(family, seed=4).transmittance((64, 64), 0.325)
    c = ProceduralSample(family, seed=5).transmittance((64, 64), 0.325)
    assert a.dtype == np.complex64 and a.shape == (64, 64)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.abs(a).max() <= 1.0 + 1e-6
    assert np.abs(a).std() > 0.005  # some absorption structure
    if family != "bars":
        assert np.angle(a).std() > 0.01  # and phase structure
    else:
        assert np.abs(a).min() < 0.2  # chrome bars


def test_unknown_family():
    with pytest.raises(ValueError, match="Unknown sample family 'stars'"):
        ProceduralSample("stars")


def test_image_sample_resampled_by_pixel_size():
    img = np.random.default_rng(0).random((40, 40))
    t = ImageSample(amplitude=img, pixel_size_um=0.65).transmittance((64, 64), 0.325)
    assert t.shape == (64, 64)
    with pytest.raises(ValueError, match="amplitude image, a phase image, or both"):
        ImageSample()
    with pytest.raises(ValueError, match="2-D image"):
        ImageSample(phase=np.zeros(10))


def test_recorded_zstack_at_irregular_z(tmp_path):
    # "record" a stack from the optical simulator at irregular z, then replay it
    source = SimMicroscope("bars", seed=1, frames_dir=tmp_path, time_scale=0, focus_um=3.0)
    zs = np.array([-9.0, -5.5, -2.0, 0.5, 2.2, 3.1, 4.0, 7.5, 12.0])
    planes = []
    for z in zs:
        source.z.set(z).wait()
        planes.append(source.camera.snap())
    stack = ZStackSample(zs, np.stack(planes))
    assert abs(stack.focus_um - 3.0) < 1.0
    replay = SimMicroscope(stack, frames_dir=tmp_path, time_scale=0)
    assert replay.true_focus() == stack.focus_um
    replay.z.set(3.1).wait()
    sharp = brenner(replay.camera.snap())
    replay.z.set(-8.0).wait()
    assert brenner(replay.camera.snap()) < sharp
    nearest = ZStackSample(zs, np.stack(planes), mode="nearest")
    assert np.array_equal(nearest.intensity(2.3, (256, 256)), nearest.planes[4])
    with pytest.raises(ValueError, match="at least two planes"):
        ZStackSample([0.0], np.zeros((1, 8, 8)))
