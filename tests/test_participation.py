import numpy as np
import pytest

from flbook.participation import (Bernoulli, Uniform, data_correlated,
                                  two_groups)


def _frequencies(model, n_clients, rounds=2000, seed=0):
    """How often each client took part over `rounds` sampled rounds, and the sizes of those rounds."""
    rng = np.random.default_rng(seed)
    samples = [model.sample(t, n_clients, rng) for t in range(rounds)]
    counts = np.zeros(n_clients)
    for ids in samples:
        counts[ids] += 1
    return counts / rounds, np.array([len(ids) for ids in samples]), samples


def test_uniform_probabilities_are_the_cohort_fraction():
    freq, sizes, _ = _frequencies(Uniform(fraction=0.25), 12)
    assert (sizes == 3).all()
    np.testing.assert_allclose(Uniform(fraction=0.25).probabilities(12), 0.25)
    np.testing.assert_allclose(freq, 0.25, atol=0.03)
    np.testing.assert_allclose(Uniform(count=5).probabilities(10), 0.5)


def test_bernoulli_samples_sorted_ids_at_each_clients_rate():
    p = (1.0, 0.9, 0.5, 0.1, 0.1, 0.3)
    model = Bernoulli(p)
    freq, _, samples = _frequencies(model, len(p))
    assert all((np.diff(ids) > 0).all() for ids in samples)
    np.testing.assert_allclose(freq, p, atol=0.03)
    assert freq[0] == 1.0  # p = 1: every round
    np.testing.assert_allclose(model.probabilities(len(p)), p)  # some p_k = 1: no round is ever empty


def test_bernoulli_redraws_empty_rounds_and_reports_the_conditional_probabilities():
    p = np.array([0.3, 0.2, 0.1])
    model = Bernoulli(tuple(p))
    freq, sizes, _ = _frequencies(model, 3, rounds=8000)
    assert sizes.min() >= 1
    nonempty = 1 - np.prod(1 - p)  # 0.496: half the raw draws are empty
    np.testing.assert_allclose(model.probabilities(3), p / nonempty)
    np.testing.assert_allclose(freq, p / nonempty, atol=0.02)


def test_bernoulli_is_deterministic_given_the_generator():
    model = two_groups(10, 0.4, 0.4)
    a = [model.sample(t, 10, np.random.default_rng(7)) for t in range(3)]
    b = [model.sample(t, 10, np.random.default_rng(7)) for t in range(3)]
    assert all((x == y).all() for x, y in zip(a, b))


def test_two_groups_splits_frequent_and_rare_halves():
    model = two_groups(5, 0.55, 0.9)
    np.testing.assert_allclose(model.p, [1.0, 1.0, 0.1, 0.1, 0.1])
    assert max(model.p) == 1.0  # exactly, so these clients take part in every round
    assert two_groups(4, 0.5, 0.0).p == (0.5,) * 4


def test_data_correlated_clients_with_the_class_report_rarely():
    model = data_correlated([0.0, 0.5, 1.0], rate=0.8, strength=0.75)
    np.testing.assert_allclose(model.p, [0.8, 0.5, 0.2])


@pytest.mark.parametrize("make, message", [
    (lambda: Bernoulli(()), "p must be a non-empty"),
    (lambda: Bernoulli((0.5, 0.0)), r"p must lie in \(0, 1\]"),
    (lambda: Bernoulli((1.2,)), r"p must lie in \(0, 1\]"),
    (lambda: Bernoulli((0.5, 0.5)).sample(1, 3, np.random.default_rng()), "n_clients must equal len"),
    (lambda: Bernoulli((0.5, 0.5)).probabilities(3), "n_clients must equal len"),
    (lambda: two_groups(4, 0.0, 0.0), r"rate must be in \(0, 1\]"),
    (lambda: two_groups(4, 0.3, 0.6), "gap must be >= 0, below 2 \\* rate"),
    (lambda: two_groups(4, 0.8, 0.5), "gap must be"),
    (lambda: two_groups(4, 0.5, -0.1), "gap must be"),
    (lambda: two_groups(0, 0.5, 0.1), r"n_clients must be an integer in \[1, 1000000\], got 0"),
    (lambda: two_groups(2.5, 0.5, 0.1), "n_clients must be an integer, got 2.5"),
    (lambda: two_groups(4, float("nan"), 0.1), "rate must be in .*got nan"),
    (lambda: Uniform(fraction=float("nan")), "participation fraction must be in .*got nan"),
    (lambda: Uniform(count=2.5), "count must be an integer, got 2.5"),
    (lambda: data_correlated([0.2, 1.5], 0.5, 0.5), r"score must be .* in \[0, 1\]"),
    (lambda: data_correlated([0.2], 0.5, 1.0), r"strength must be in \[0, 1\)"),
    (lambda: data_correlated([0.2], 1.5, 0.5), r"rate must be in \(0, 1\]"),
])
def test_bad_inputs_name_the_parameter(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_bernoulli_with_tiny_probabilities_gives_up_after_a_bounded_number_of_draws():
    """p = 1e-9 for 20 clients used to redraw empty rounds about 5e7 times; now a bounded loop and a clear error."""
    import time

    start = time.perf_counter()
    with pytest.raises(ValueError, match="no client took part in 10000 draws.*raise p"):
        Bernoulli(tuple([1e-9] * 20)).sample(1, 20, np.random.default_rng(0))
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("make, message", [
    (lambda: Uniform(count=2**70), r"count must be an integer in \[1, 1000000\]"),
    (lambda: Uniform(count=30).sample(0, 20, np.random.default_rng(0)), "Uniform: count must be <= n_clients=20"),
    (lambda: Uniform(0.5).sample(0, 2**40, np.random.default_rng(0)), r"n_clients must be an integer in \[1, 1000000\]"),
    (lambda: Uniform(0.5).probabilities(2**40), r"n_clients must be an integer in \[1, 1000000\]"),
    (lambda: two_groups(2**40, 0.5, 0.1), r"n_clients must be an integer in \[1, 1000000\]"),
])
def test_huge_counts_are_refused_with_the_bound(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_bernoulli_redraws_are_bounded_in_coin_flips_for_large_federations():
    """10,000 redraws of a million tiny coins would take minutes: the draws stop at MAX_COIN_FLIPS = 1e8 coins."""
    import time

    from flbook.participation import MAX_COIN_FLIPS

    n = 10**6
    start = time.perf_counter()
    with pytest.raises(ValueError, match=f"no client took part in {MAX_COIN_FLIPS // n} draws"):
        Bernoulli((1e-12,) * n).sample(1, n, np.random.default_rng(0))
    assert time.perf_counter() - start < 5.0


def test_bernoulli_probabilities_stay_finite_for_tiny_p():
    """1 - prod(1 - p) underflowed to 0 for p = 1e-309, and the conditional probabilities were inf."""
    np.testing.assert_allclose(Bernoulli((1e-309, 1e-309)).probabilities(2), [0.5, 0.5])
    np.testing.assert_allclose(Bernoulli((0.5, 0.5)).probabilities(2), [2 / 3, 2 / 3])


def test_bad_scores_and_rates_name_their_parameter():
    with pytest.raises(TypeError, match="score must be a sequence of numbers"):
        data_correlated(["a"], 0.5, 0.5)
    with pytest.raises(TypeError, match="p must be a sequence of probabilities"):
        Bernoulli(("x",))


def test_data_correlated_names_a_rate_that_underflows():
    with pytest.raises(ValueError, match="rate=4.94066e-324 x .* underflows to 0"):
        data_correlated([0.0, 1.0], 5e-324, 0.5)
