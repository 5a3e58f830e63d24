"""The simulator's physics, checked against what optics predicts."""

import math

import numpy as np
import pytest

from devices import CameraSensor, ImageSample, LEDArray, Objective, SimMicroscope
from devices.optics import SourcePoint


def _grating(period_px: int, size: int = 128, modulation: float = 0.3) -> np.ndarray:
    x = np.arange(size)
    row = 1 + modulation * np.cos(2 * np.pi * x / period_px)
    return np.tile(row / row.max(), (size, 1))


def _noise_free(mic: SimMicroscope, z: float, sources) -> np.ndarray:
    return mic.model.intensity(z, sources)


def test_in_focus_image_reproduces_amplitude_inside_passband(tmp_path):
    # 20x/0.4 at 530 nm: coherent cutoff NA/λ = 0.755 cycles/µm; pixel 0.325 µm
    size = 128
    coherent = [SourcePoint(0.0, 0.0, 1.0)]
    passed = _grating(period_px=8, size=size)  # 0.385 cycles/µm: inside the pupil
    mic = SimMicroscope(
        ImageSample(amplitude=passed),
        sensor=CameraSensor(shape=(size, size)),
        frames_dir=tmp_path,
        time_scale=0,
    )
    image = _noise_free(mic, mic.true_focus(), coherent)
    expected = (passed / passed.max()) ** 2
    assert np.allclose(image / image.mean(), expected / expected.mean(), atol=2e-3)

    blocked = _grating(period_px=3, size=126)  # 1.03 cycles/µm: beyond the pupil
    mic = SimMicroscope(
        ImageSample(amplitude=blocked),
        sensor=CameraSensor(shape=(126, 126)),
        frames_dir=tmp_path,
        time_scale=0,
    )
    image = _noise_free(mic, mic.true_focus(), coherent)
    assert image.std() / image.mean() < 1e-3  # the grating is gone, field uniform
    assert (blocked**2).std() / (blocked**2).mean() > 0.1


def test_defocus_blurs_and_focus_is_sharpest(tmp_path):
    mic = SimMicroscope("beads", seed=3, frames_dir=tmp_path, time_scale=0)
    sources = mic.led.source_points()
    contrast = [_noise_free(mic, z, sources).std() for z in (-2 * mic.depth_of_field_um, 0.0, 5.0)]
    assert contrast[1] > contrast[0] and contrast[1] > contrast[2]


def _shift_x(reference: np.ndarray, moved: np.ndarray) -> float:
    """Sub-pixel lateral shift along x (columns) by phase correlation."""
    cross = np.fft.ifft2(
        np.fft.fft2(moved - moved.mean()) * np.conj(np.fft.fft2(reference - reference.mean()))
    )
    corr = np.abs(cross).sum(axis=0)
    k = int(np.argmax(corr))
    left, mid, right = corr[k - 1], corr[k], corr[(k + 1) % corr.size]
    k = k + 0.5 * (left - right) / (left - 2 * mid + right)
    return k - corr.size if k > corr.size / 2 else k


def test_off_axis_defocus_shifts_image_opposite_ways(tmp_path):
    mic = SimMicroscope("beads", seed=5, frames_dir=tmp_path, time_scale=0)
    mic.led.set("off_axis")
    sources = mic.led.source_points()
    na_ill = mic.led.illumination_na.get()
    theta = math.asin(na_ill)  # air objective: the angle in the medium is the LED's
    dx = mic.camera.pixel_size_um.get()
    focus = mic.true_focus()
    reference = _noise_free(mic, focus, sources)
    dz = 6.0
    up = _shift_x(reference, _noise_free(mic, focus + dz, sources))
    down = _shift_x(reference, _noise_free(mic, focus - dz, sources))
    expected_px = dz * math.tan(theta) / dx
    assert np.sign(up) == -np.sign(down) != 0
    # the LED sits at +x, so its light travels towards -x: farther along it, the image moves -x
    assert mic.led.lit_leds[0][0] > 0 and up < 0
    assert abs(up) == pytest.approx(expected_px, rel=0.2)
    assert abs(down) == pytest.approx(expected_px, rel=0.2)


def test_shot_noise_variance_scales_with_signal(tmp_path):
    flat = ImageSample(amplitude=np.ones((64, 64)))
    mic = SimMicroscope(flat, frames_dir=tmp_path, time_scale=0)
    sensor = mic.model.sensor
    e_per_adu = sensor.full_well_e / sensor.max_adu
    ratios = []
    for exposure in (0.002, 0.005, 0.012):
        mic.camera.exposure_time.put(exposure)
        frame = mic.camera.snap().astype(float)
        signal_e = (frame.mean() - sensor.offset_adu) * e_per_adu
        noise_e2 = frame.var() * e_per_adu**2 - sensor.read_noise_e**2 - e_per_adu**2 / 12
        ratios.append(noise_e2 / signal_e)
        assert mic.camera.saturated_fraction.get() == 0.0
    # Poisson: variance in electrons equals the mean, at every signal level
    assert ratios == pytest.approx([1.0, 1.0, 1.0], rel=0.12)


def test_saturation_is_reported(tmp_path):
    mic = SimMicroscope("tissue", seed=2, frames_dir=tmp_path, time_scale=0)
    mic.camera.exposure_time.put(0.005)
    mic.camera.snap()
    assert mic.camera.saturated_fraction.get() == 0.0
    mic.camera.exposure_time.put(0.5)
    frame = mic.camera.snap()
    assert frame.max() == mic.model.sensor.max_adu
    assert mic.camera.saturated_fraction.get() > 0.5


def test_dark_frame_when_leds_off(tmp_path):
    mic = SimMicroscope("cells", frames_dir=tmp_path, time_scale=0)
    mic.led.set("off")
    frame = mic.camera.snap()
    assert abs(frame.mean() - mic.model.sensor.offset_adu) < 2


def test_darkfield_is_dark_background_bright_edges(tmp_path):
    mic = SimMicroscope("beads", seed=1, frames_dir=tmp_path, time_scale=0)
    mic.led.set("darkfield")
    dark = mic.model.intensity(mic.true_focus(), mic.led.source_points())
    mic.led.set("brightfield")
    bright = mic.model.intensity(mic.true_focus(), mic.led.source_points())
    # darkfield: no direct light, so far below brightfield per lit LED, and median near zero
    assert np.median(dark) < 0.05 * np.median(bright) / mic.led.lit_count.get() * 10


def test_bad_optics_are_refused_in_one_sentence():
    with pytest.raises(ValueError, match=r"NA must be between 0 and the immersion index"):
        Objective(magnification=40, na=1.1, immersion_index=1.0)
    with pytest.raises(ValueError, match="odd"):
        LEDArray(size=8)


def test_tilt_makes_one_side_of_the_field_sharper(tmp_path):
    from models.focus_measures import brenner

    mic = SimMicroscope("beads", seed=4, tilt_x=0.1, frames_dir=tmp_path, time_scale=0)
    sources = mic.led.source_points()
    # 0.1 µm of focus per µm across an 83 µm field: the two halves are ~4 µm apart in focus
    for dz, sharper in ((4.0, "right"), (-4.0, "left")):
        image = mic.model.intensity(mic.true_focus() + dz, sources)
        left, right = brenner(image[:, :100]), brenner(image[:, -100:])
        assert (right > 1.5 * left) if sharper == "right" else (left > 1.5 * right)


def test_focus_drift_and_random_walk_follow_the_clock():
    from devices import FocusState

    now = [0.0]
    steady = FocusState(10.0, drift_um_per_s=2.0, clock=lambda: now[0])
    walkers = [
        FocusState(0.0, random_walk_um_per_sqrt_s=1.0, seed=s, clock=lambda: now[0])
        for s in range(400)
    ]
    now[0] = 4.0
    assert steady.at_center() == pytest.approx(18.0)
    spread = np.std([w.at_center() for w in walkers])
    assert spread == pytest.approx(2.0, rel=0.15)  # sigma * sqrt(t)


def test_camera_reports_the_noise_of_its_brenner_value(tmp_path):
    mic = SimMicroscope("tissue", seed=3, frames_dir=tmp_path, time_scale=0, z_start_um=6.0)
    values, predicted = [], []
    for _ in range(150):
        mic.camera.snap()
        values.append(mic.camera.brenner.get())
        predicted.append(mic.camera.brenner_noise.get())
    assert np.median(predicted) == pytest.approx(np.std(values), rel=0.15)
    config = mic.camera.read_configuration()
    assert config["camera_electrons_per_adu"]["value"] == pytest.approx(20000 / 4095)
    mic.camera.gain.put(2.0)
    assert mic.camera.electrons_per_adu.get() == pytest.approx(20000 / 4095 / 2)
    with pytest.raises(ValueError, match="outside the camera's range"):
        mic.camera.exposure_time.put(60.0)
