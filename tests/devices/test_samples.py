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


def test_replayed_stack_keeps_its_noise_level_between_planes():
    # a plain blend of two planes halves their noise midway: every focus measure would then
    # peak at each recorded plane, a comb a sweep can alias into a fake focus peak
    rng = np.random.default_rng(3)
    z = np.arange(0.0, 10.0, 2.0)
    stack = ZStackSample(z, 1000 + 30 * rng.standard_normal((z.size, 64, 64)), focus_um=4.0)
    on_plane = [stack.intensity(float(p), (64, 64)).std() for p in z[1:-1]]
    midway = [stack.intensity(float(p) + 1.0, (64, 64)).std() for p in z[1:-1]]
    assert np.mean(midway) == pytest.approx(np.mean(on_plane), rel=0.05)


def test_stack_larger_than_the_sensor_is_cropped_or_resampled_and_says_which(tmp_path):
    y, x = np.mgrid[0:512, 0:512]
    plane = 1.0 + ((x // 128 + y // 128) % 2)  # 4x4 checkerboard of 128-pixel squares
    z = [0.0, 1.0]
    cropped = ZStackSample(z, [plane, plane], pixel_size_um=0.2)
    resampled = ZStackSample(z, [plane, plane], fit="resample", pixel_size_um=0.2)
    crop = cropped.intensity(0.5, (128, 128))
    whole = resampled.intensity(0.5, (128, 128))
    assert len(np.unique(np.round(crop / crop.max(), 1))) <= 2 and crop.std() > 0  # one corner
    # the whole field: 4x4 squares of 32 pixels
    assert whole[:32, :32].mean() < whole[:32, 32:64].mean()
    assert resampled.effective_pixel_um((128, 128)) == pytest.approx(0.8)
    mic = SimMicroscope(resampled, frames_dir=tmp_path, time_scale=0)
    scene = mic.camera.read_configuration()["camera_scene"]["value"]
    assert '"zstack_fit": "resample"' in scene and '"zstack_effective_pixel_um": 0.4' in scene
    with pytest.raises(ValueError, match="fit must be 'crop' or 'resample'"):
        ZStackSample(z, [plane, plane], fit="stretch")
