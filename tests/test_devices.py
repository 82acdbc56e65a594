import numpy as np
import pytest
import torch

from flbook import devices


def test_job_time_is_steps_times_step_time_plus_latency():
    d = devices.Devices(np.array([1.0, 0.5]), np.array([0.0, 2.0]))
    assert np.allclose(d.job_time([0, 1], 4), [4.0, 4.0])
    assert np.allclose(d.job_time(torch.tensor([1]), torch.tensor([2])), [3.0])
    assert d.speed_spread(steps=1) == pytest.approx(2.5 / 1.0)


def test_linear_devices_are_fraboni_F_X():
    d = devices.linear(5, 0.8)
    assert np.allclose(d.step_time, [1.0, 0.8, 0.6, 0.4, 0.2])  # F-80: slowest 1, fastest 1 - 0.8
    assert np.allclose(devices.linear(3, 0.0).step_time, 1.0)  # F-0 is homogeneous
    with pytest.raises(ValueError, match=r"spread must be in \[0, 1\)"):
        devices.linear(5, 1.0)


def test_draw_is_seeded_and_positive():
    a = devices.draw(50, "lognormal", 1.0, latency=0.3, latency_distribution="uniform", latency_spread=0.5, seed=1)
    b = devices.draw(50, "lognormal", 1.0, latency=0.3, latency_distribution="uniform", latency_spread=0.5, seed=1)
    c = devices.draw(50, "lognormal", 1.0, seed=2)
    assert np.array_equal(a.step_time, b.step_time) and np.array_equal(a.latency, b.latency)
    assert not np.array_equal(a.step_time, c.step_time)
    assert (a.step_time > 0).all() and (0.15 <= a.latency).all() and (a.latency <= 0.3).all()
    with pytest.raises(ValueError, match="distribution must be one of"):
        devices.draw(5, "pareto")


def test_correlated_devices_are_slow_where_the_score_is_high():
    score = np.random.default_rng(0).random(40)
    tied = devices.draw(40, "uniform", 0.9, latency=1.0, latency_distribution="uniform", latency_spread=0.5,
                        score=score, correlation=1.0)
    assert np.array_equal(np.argsort(tied.step_time), np.argsort(score))  # exactly by score
    assert np.array_equal(np.argsort(tied.latency), np.argsort(score))  # slow device, slow link
    loose = devices.draw(40, "uniform", 0.9, score=score, correlation=0.0, seed=3)
    assert abs(np.corrcoef(np.argsort(np.argsort(loose.step_time)), np.argsort(np.argsort(score)))[0, 1]) < 0.5
    with pytest.raises(ValueError, match="correlation must be in"):
        devices.draw(40, score=score, correlation=1.5)


def test_class_share_and_slowed_tie_speed_to_the_data():
    labels = np.array([0, 0, 1, 1, 1, 2])
    parts = [np.array([0, 1]), np.array([2, 3, 5]), np.array([4])]
    share = devices.class_share(parts, labels, 1)
    assert np.allclose(share, [0.0, 2 / 3, 1.0])
    slow = devices.draw(3, "constant").slowed(np.flatnonzero(share > 0), extra_latency=10.0, factor=2.0)
    assert np.allclose(slow.job_time([0, 1, 2], 1), [1.0, 12.0, 12.0])


def test_devices_validate_their_arrays():
    with pytest.raises(ValueError, match="step_time must be finite and > 0"):
        devices.Devices(np.array([1.0, 0.0]), np.zeros(2))
    with pytest.raises(ValueError, match="one length"):
        devices.Devices(np.ones(2), np.zeros(3))


def test_slowed_takes_a_range():
    slow = devices.linear(4, 0.5).slowed(range(2), extra_latency=1.0)
    assert slow.latency.tolist() == [1.0, 1.0, 0.0, 0.0]


@pytest.mark.parametrize("make", [lambda n: devices.draw(n), lambda n: devices.linear(n, 0.5)])
def test_huge_federations_are_refused_with_the_bound(make):
    with pytest.raises(ValueError, match=r"n_clients must be an integer in \[1, 1000000\], got 1180591620717411303424"):
        make(2**70)
    assert make(devices.MAX_CLIENTS).n_clients == 10**6


@pytest.mark.parametrize("make, error, message", [
    (lambda: devices.draw(5, "lognormal", 5000.0), ValueError, "spread=5000 makes the 'lognormal' time multipliers"),
    (lambda: devices.draw(5, latency=1.0, latency_distribution="lognormal", latency_spread=1e3), ValueError,
     "latency_spread=1000 makes"),
    (lambda: devices.draw(2, score=""), TypeError, "score must be an array of numbers"),
    (lambda: devices.Devices("", np.zeros(1)), TypeError, "step_time must be an array of numbers"),
    (lambda: devices.Devices(np.ones(2), np.array([0.0, np.inf])), ValueError,
     "latency must be finite and >= 0 for every client, got inf for client 1"),
])
def test_device_errors_name_the_parameter_and_the_bad_value(make, error, message):
    with pytest.raises(error, match=message):
        make()
