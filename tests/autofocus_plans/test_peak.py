"""The peak-acceptance test on focus curves with known answers (no microscope needed)."""

import numpy as np
import pytest
from scipy import stats

from autofocus_plans import peak
from autofocus_plans.peak import assess_peak, prepare_threshold

DOF = 4.0
Z = np.linspace(-22.0, 22.0, 23)  # a sweep of ±5.5 DOF, half a DOF apart


def _peak(z, center, sigma, height=1.0, tail=1.0):
    u2 = ((z - center) / sigma) ** 2
    return height * (1 + u2 / (2 * tail)) ** -tail  # Pearson VII: Brenner-like heavy tails


def test_white_noise_curves_are_refused_at_the_stated_rate():
    rng = np.random.default_rng(7)
    accepted = sum(
        assess_peak(Z, 1000 + rng.standard_normal(Z.size), depth_of_field_um=DOF).found
        for _ in range(400)
    )
    # false_alarm = 1e-3: 0.4 expected; 3 or more would contradict the calibration
    assert accepted <= 2


def test_noise_the_camera_does_not_know_about_does_not_raise_false_alarms():
    # the curve's noise is 3x what the camera predicts (vibration, flicker, a recorded
    # stack's own structure): nine samples' baseline cannot always tell, so the
    # threshold must hold whatever the extra noise is
    rng = np.random.default_rng(11)
    z = np.linspace(-22.0, 22.0, 9)
    trials, false_alarm = 1000, 0.01
    accepted = sum(
        assess_peak(
            z,
            1000 + 3.0 * rng.standard_normal(z.size),
            depth_of_field_um=DOF,
            camera_noise=np.ones(z.size),
            false_alarm=false_alarm,
        ).found
        for _ in range(trials)
    )
    # 10 at most expected; a pre-test that trusts the camera too readily accepts twice that
    assert accepted <= stats.binom.ppf(0.99, trials, false_alarm)


@pytest.mark.parametrize("relative_noise", [0.002, 0.005])
def test_a_noisy_low_contrast_peak_is_found_where_it_is(relative_noise):
    rng = np.random.default_rng(3)
    for center in (-13.0, 0.7, 9.9):
        values = 100.0 * (1 + 0.09 * _peak(Z, center, 0.8 * DOF))  # varies by 9 %
        values *= 1 + relative_noise * rng.standard_normal(Z.size)
        verdict = assess_peak(Z, values, depth_of_field_um=DOF)
        assert verdict.found, verdict.reason
        assert abs(verdict.center - center) < 0.1 * DOF
        assert verdict.significance >= verdict.threshold
        assert 0.3 < verdict.width_dof < 2


def test_a_single_high_exposure_is_not_a_focus():
    rng = np.random.default_rng(5)
    values = 1000 + rng.standard_normal(Z.size)
    values[8] += 40  # a vibration or a bright transient in one frame
    verdict = assess_peak(Z, values, depth_of_field_um=DOF)
    assert not verdict.found and verdict.failed == "support"
    assert "single exposure" in verdict.reason


def test_two_comparable_peaks_are_ambiguous():
    rng = np.random.default_rng(2)
    values = 100 + 30 * _peak(Z, -12, 2.0) + 27 * _peak(Z, 10, 2.0) + rng.standard_normal(Z.size)
    verdict = assess_peak(Z, values, depth_of_field_um=DOF)
    assert not verdict.found and verdict.failed == "ambiguous"
    assert verdict.second_peak_ratio > 0.5


def test_a_curve_still_rising_at_the_edge_asks_for_a_longer_range():
    rng = np.random.default_rng(4)
    values = 100 + 50 * _peak(Z, 24.0, 3.0) + 0.1 * rng.standard_normal(Z.size)
    verdict = assess_peak(Z, values, depth_of_field_um=DOF)
    assert not verdict.found and verdict.failed == "open"
    assert verdict.extra["side"] == "upper"


def test_saturated_frames_are_named_as_the_cause():
    values = 100 + 50 * _peak(Z, 0.0, 3.0)
    verdict = assess_peak(Z, values, depth_of_field_um=DOF, saturated_fraction=np.full(Z.size, 0.4))
    assert not verdict.found and verdict.failed == "saturated"
    assert "40% of the pixels are saturated" in verdict.reason
    assert "lower exposure_time or the LED brightness" in verdict.reason


def test_camera_noise_is_a_floor_under_the_data_noise():
    values = 100 + 5 * _peak(Z, 0.0, 3.0)  # noise-free: only the camera can say how noisy
    quiet = assess_peak(Z, values, depth_of_field_um=DOF)
    noisy = assess_peak(Z, values, depth_of_field_um=DOF, camera_noise=np.full(Z.size, 2.0))
    assert quiet.found
    assert noisy.noise == pytest.approx(2.0) and noisy.noise_source == "camera"
    assert not noisy.found and noisy.failed == "significance"


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="depth_of_field_um must be positive"):
        assess_peak(Z, Z, depth_of_field_um=0)
    verdict = assess_peak(Z[:3], Z[:3], depth_of_field_um=DOF)
    assert verdict.failed == "points" and "at least 5 needed" in verdict.reason
    tiny = assess_peak(np.linspace(0, 0.02, 6), np.arange(6.0), depth_of_field_um=DOF)
    assert tiny.failed == "points" and "widen the range" in tiny.reason


def test_a_threshold_prepared_ahead_is_the_one_the_verdict_uses():
    # a fly sweep knows its sampling before its frames arrive: 17 samples 0.65 DOF apart
    # (a spacing no other test uses), anywhere on the stage
    nominal = np.arange(17) * 0.65 * DOF
    future = prepare_threshold(nominal, depth_of_field_um=DOF)
    assert future is not None
    future.result(timeout=120)
    computed = peak._threshold.cache_info().misses
    z = 123.4 + nominal[::-1]  # the same pattern elsewhere, in any order
    rng = np.random.default_rng(3)
    values = 1000 + 40 * _peak(z, z.mean(), 1.5 * DOF) + rng.standard_normal(z.size)
    verdict = assess_peak(z, values, depth_of_field_um=DOF, camera_noise=np.ones(z.size))
    assert verdict.found
    assert peak._threshold.cache_info().misses == computed  # looked up, not computed again
    # nothing to prepare where no peak could be shown
    assert prepare_threshold(np.arange(4.0) * DOF, depth_of_field_um=DOF) is None
    assert prepare_threshold(np.linspace(0, 0.5 * DOF, 9), depth_of_field_um=DOF) is None


def test_thresholds_deeper_than_the_simulated_curves_hold_their_rate():
    # 1e-4 is under one simulated curve in 8192: the threshold comes from the conditional
    # tail; a quarter of a million fresh peak-free curves must exceed it about as often
    z_dof = np.linspace(-5.4, 5.4, 9)
    level = 1e-4
    threshold = peak._threshold(peak._pattern(z_dof), level).estimated
    bank = peak._bank(z_dof)
    rng = np.random.default_rng(99)
    trials = 1 << 18
    exceed = sum(
        int(
            np.count_nonzero(
                peak._best_peak(bank, rng.standard_normal((1 << 14, 9)))[3] >= threshold
            )
        )
        for _ in range(trials >> 14)
    )
    expected = level * trials  # 26
    # neither more false alarms than stated nor a threshold so high that it costs real peaks
    assert (
        stats.poisson.ppf(0.001, 0.5 * expected)
        <= exceed
        <= stats.poisson.ppf(0.999, 1.2 * expected)
    )


def test_each_look_at_a_growing_curve_is_held_to_a_stricter_level():
    rng = np.random.default_rng(5)
    values = 100.0 * (1 + 0.025 * _peak(Z, 1.0, 0.8 * DOF)) + 0.35 * rng.standard_normal(Z.size)
    once = assess_peak(Z, values, depth_of_field_um=DOF)
    looks = [assess_peak(Z, values, depth_of_field_um=DOF, look=k, looks=8) for k in (1, 2, 8, 12)]
    thresholds = [once.threshold] + [v.threshold for v in looks]
    assert thresholds == sorted(thresholds) and thresholds[0] < thresholds[-1]
    assert [(v.look, v.looks) for v in looks] == [(1, 8), (2, 8), (8, 8), (12, 8)]
    # however many looks a search takes, beyond its plan too, their levels add up to false_alarm
    for planned in (1, 2, 3, 9):
        spent = sum(
            peak.look_false_alarm(1e-3, k, planned) for k in range(1, 200 if planned > 1 else 2)
        )
        assert spent <= 1e-3 * (1 + 1e-12)
    # a peak that convinces a curve judged once need not convince a later look
    assert once.found, once.reason
    assert not looks[-1].found and looks[-1].failed == "significance"
    with pytest.raises(ValueError, match="judged once"):
        assess_peak(Z, values, depth_of_field_um=DOF, look=2)
