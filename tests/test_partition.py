"""Partitioners: exact cover, seeding, the skew each one promises, bounded time and clear errors."""
import doctest
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import flbook.partition.partitioners as partitioners_module
from flbook.partition import (
    PARTITIONERS,
    dirichlet,
    feature_skew,
    iid,
    inner_dirichlet,
    label_entropy,
    partition,
    pathological,
    quantity_skew,
    shards,
    sizes,
)

FAST = settings(max_examples=25, deadline=2000)


@st.composite
def problems(draw, max_clients=20):
    """Random labels (1..6 classes, 1..200 samples) and a client count that fits them."""
    n = draw(st.integers(1, 200))
    n_classes = draw(st.integers(1, 6))
    labels = np.random.default_rng(draw(st.integers(0, 2**16))).integers(0, n_classes, n)
    n_clients = draw(st.integers(1, min(n, max_clients)))
    return labels, n_clients, draw(st.integers(0, 2**16))


def assert_exact_cover(parts, n):
    """Every index 0..n-1 appears exactly once, each client's indices sorted int64."""
    for p in parts:
        assert p.dtype == np.int64
        assert np.all(np.diff(p) > 0)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(n))


def assert_same(a, b):
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def balanced_labels(n_classes=10, per_class=100):
    return np.repeat(np.arange(n_classes), per_class)


# --- properties: nothing lost, nothing duplicated, sizes and minimums respected, seeded -------------------


@FAST
@given(problems())
def test_iid_covers_and_balances(problem):
    labels, n_clients, seed = problem
    parts = iid(labels, n_clients, seed=seed)
    assert_exact_cover(parts, len(labels))
    assert np.ptp(sizes(parts)) <= 1
    assert_same(parts, iid(labels, n_clients, seed=seed))


@FAST
@given(problems(), st.sampled_from([0.01, 0.3, 5.0]))
def test_dirichlet_covers_and_respects_min_size(problem, alpha):
    labels, n_clients, seed = problem
    parts = dirichlet(labels, n_clients, alpha, seed=seed)
    assert_exact_cover(parts, len(labels))
    assert sizes(parts).min() >= min(10, len(labels) // n_clients)
    assert_same(parts, dirichlet(labels, n_clients, alpha, seed=seed))


@FAST
@given(problems(), st.integers(0, 5))
def test_dirichlet_without_top_up_meets_min_size_or_raises(problem, min_size):
    labels, n_clients, seed = problem
    min_size = min(min_size, len(labels) // n_clients)
    try:
        parts = dirichlet(labels, n_clients, 0.5, min_size=min_size, max_redraws=5, top_up=False, seed=seed)
    except ValueError as err:
        assert "min_size" in str(err)
    else:
        assert_exact_cover(parts, len(labels))
        assert sizes(parts).min() >= min_size


@FAST
@given(problems(), st.integers(1, 6))
def test_pathological_covers_when_classes_can_be_covered(problem, classes_per_client):
    labels, n_clients, seed = problem
    n_classes = len(np.unique(labels))
    classes_per_client = min(classes_per_client, n_classes)
    parts = pathological(labels, n_clients, classes_per_client, seed=seed)
    assert len(parts) == n_clients
    assert all(len(np.unique(labels[p])) <= classes_per_client for p in parts)
    if n_clients * classes_per_client >= n_classes:
        assert_exact_cover(parts, len(labels))
    assert_same(parts, pathological(labels, n_clients, classes_per_client, seed=seed))


@FAST
@given(problems(), st.integers(1, 4))
def test_shards_cover(problem, shards_per_client):
    labels, n_clients, seed = problem
    shards_per_client = min(shards_per_client, len(labels) // n_clients)
    parts = shards(labels, n_clients, shards_per_client, seed=seed)
    assert_exact_cover(parts, len(labels))
    assert sizes(parts).min() >= shards_per_client  # every shard holds at least one sample
    assert_same(parts, shards(labels, n_clients, shards_per_client, seed=seed))


@FAST
@given(problems(), st.sampled_from(["lognormal", "powerlaw"]), st.integers(0, 5))
def test_quantity_skew_covers_and_respects_min_size(problem, distribution, min_size):
    labels, n_clients, seed = problem
    min_size = min(min_size, len(labels) // n_clients)
    parts = quantity_skew(labels, n_clients, distribution=distribution, sigma=2.0, min_size=min_size, seed=seed)
    assert_exact_cover(parts, len(labels))
    assert sizes(parts).min() >= min_size
    assert_same(parts, quantity_skew(labels, n_clients, distribution=distribution, sigma=2.0, min_size=min_size, seed=seed))


@FAST
@given(problems(), st.sampled_from([0.01, 0.5, 100.0]))
def test_inner_dirichlet_covers_with_given_sizes(problem, alpha):
    labels, n_clients, seed = problem
    client_sizes = np.random.default_rng(seed).multinomial(len(labels), np.full(n_clients, 1 / n_clients))
    parts = inner_dirichlet(labels, client_sizes, alpha, seed=seed)
    assert_exact_cover(parts, len(labels))
    np.testing.assert_array_equal(sizes(parts), client_sizes)
    assert_same(parts, inner_dirichlet(labels, client_sizes, alpha, seed=seed))


@FAST
@given(problems(max_clients=5), st.sampled_from(["noise", "rotation"]))
def test_feature_skew_covers_and_returns_a_new_tensor(problem, kind):
    labels, n_clients, seed = problem
    x = torch.randn(len(labels), 3, dtype=torch.float64)
    before = x.clone()
    parts, shifted = feature_skew(x, labels, n_clients, kind=kind, strength=30.0, seed=seed)
    assert_exact_cover(parts, len(labels))
    assert shifted.shape == x.shape and shifted.dtype == x.dtype and shifted is not x
    assert torch.equal(x, before)
    assert torch.equal(shifted[parts[0]], x[parts[0]])  # client 0 gets level 0
    assert torch.equal(shifted, feature_skew(x, labels, n_clients, kind=kind, strength=30.0, seed=seed)[1])


EXAMPLES = {
    "iid": {},
    "dirichlet": {"alpha": 0.5},
    "pathological": {"classes_per_client": 2},
    "shards": {"shards_per_client": 2},
    "quantity_skew": {"sigma": 1.0},
}


@pytest.mark.parametrize("name", sorted(PARTITIONERS))
def test_different_seeds_give_different_partitions(name):
    labels = balanced_labels()
    a = partition(name, labels, 10, seed=0, **EXAMPLES[name])
    b = partition(name, labels, 10, seed=1, **EXAMPLES[name])
    assert not all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("name", sorted(PARTITIONERS))
def test_torch_labels_match_numpy_labels(name):
    labels = balanced_labels()
    assert_same(
        partition(name, torch.as_tensor(labels), 10, seed=3, **EXAMPLES[name]),
        partition(name, labels, 10, seed=3, **EXAMPLES[name]),
    )


def test_partition_dispatches_by_name():
    labels = balanced_labels()
    assert_same(partition("dirichlet", labels, 7, alpha=0.2, seed=4), dirichlet(labels, 7, 0.2, seed=4))
    assert set(PARTITIONERS) == set(EXAMPLES)


def test_docstring_examples_hold():
    assert doctest.testmod(partitioners_module).failed == 0


# --- behaviour: the skew each partitioner promises ------------------------------------------------------------


def test_dirichlet_alpha_controls_label_skew():
    labels = balanced_labels(10, 500)
    near_iid = label_entropy(labels, dirichlet(labels, 10, alpha=1000.0, seed=0))
    skewed = label_entropy(labels, dirichlet(labels, 10, alpha=0.05, seed=0))
    assert near_iid.min() > 0.98 * np.log2(10)
    assert skewed.mean() < 1.5


def test_dirichlet_extreme_settings_finish_fast():
    labels = np.random.default_rng(0).integers(0, 10, 2000)
    start = time.perf_counter()
    parts = dirichlet(labels, 1000, alpha=0.01, seed=0)  # default min_size = 2000 // 1000 = 2, reached by top-up
    with pytest.raises(ValueError, match="min_size=2 is unattainable"):
        dirichlet(labels, 1000, alpha=0.01, top_up=False, seed=0)
    assert time.perf_counter() - start < 2.0
    assert_exact_cover(parts, 2000)
    assert sizes(parts).min() >= 2


def test_dirichlet_top_up_keeps_most_of_the_skew():
    labels = balanced_labels(10, 100)
    parts = dirichlet(labels, 50, alpha=0.05, min_size=10, max_redraws=0, seed=0)
    assert sizes(parts).min() >= 10
    assert label_entropy(labels, parts).mean() < 1.0  # topped-up clients get single-class blocks


def test_dirichlet_raises_when_min_size_is_unattainable():
    with pytest.raises(ValueError, match=r"min_size must be in \[0, 10\]"):
        dirichlet(balanced_labels(), 100, alpha=1.0, min_size=11)


def test_pathological_gives_exactly_c_classes_and_covers_all():
    labels = balanced_labels(10, 100)
    for classes_per_client in (1, 2, 5):
        parts = pathological(labels, 12, classes_per_client, seed=0)
        assert all(len(np.unique(labels[p])) == classes_per_client for p in parts)
        assert_exact_cover(parts, len(labels))


def test_pathological_splits_a_class_evenly_among_holders():
    labels = balanced_labels(4, 99)
    counts = [np.bincount(labels[p], minlength=4) for p in pathological(labels, 6, 2, seed=1)]
    per_class = np.stack(counts).T  # (classes, clients)
    for row in per_class:
        held = row[row > 0]
        assert held.max() - held.min() <= 1


def test_pathological_leaves_out_classes_nobody_can_hold():
    labels = balanced_labels(10, 20)
    parts = pathological(labels, 2, 1, seed=0)
    held = np.concatenate(parts)
    assert len(held) == 40 and len(np.unique(labels[held])) == 2


def test_shards_give_at_most_two_classes_with_two_shards():
    labels = balanced_labels(10, 60)  # 20 shards of 30 samples: each shard is one class
    parts = shards(labels, 10, 2, seed=0)
    assert max(len(np.unique(labels[p])) for p in parts) <= 2
    uneven = np.random.default_rng(0).integers(0, 10, 1000)  # shards may straddle a class border
    assert np.mean([len(np.unique(uneven[p])) for p in shards(uneven, 20, 2, seed=0)]) <= 2.5


def test_quantity_skew_spread_grows_with_sigma():
    labels = np.zeros(20_000)

    def spread(sigma):
        s = sizes(quantity_skew(labels, 50, sigma=sigma, seed=0))
        return s.std() / s.mean()

    assert spread(0.1) < 0.3 < 1.0 < spread(2.0)


def test_quantity_skew_keeps_labels_iid():
    labels = balanced_labels(10, 1000)
    parts = quantity_skew(labels, 10, sigma=1.0, seed=0)
    big = max(parts, key=len)
    assert label_entropy(labels, [big]).item() > 0.99 * np.log2(10)


def test_inner_dirichlet_alpha_controls_label_skew_and_survives_dry_pools():
    labels = balanced_labels(10, 100)
    client_sizes = [400, 300, 200, 50, 50]  # the big clients drain their favourite classes
    skewed = label_entropy(labels, inner_dirichlet(labels, client_sizes, 0.05, seed=0))
    near_iid = label_entropy(labels, inner_dirichlet(labels, client_sizes, 1000.0, seed=0))
    assert skewed.mean() < near_iid.mean() - 1.0


def test_feature_skew_noise_grows_linearly_over_clients():
    x = torch.zeros(3000, 20)
    parts, shifted = feature_skew(x, np.zeros(3000), 3, kind="noise", strength=2.0, seed=0)
    stds = [shifted[p].std().item() for p in parts]
    assert stds[0] == 0.0
    assert stds[1] == pytest.approx(1.0, rel=0.05) and stds[2] == pytest.approx(2.0, rel=0.05)


def test_feature_skew_rotates_images_counterclockwise():
    x = torch.rand(40, 1, 6, 6)
    parts, shifted = feature_skew(x, np.zeros(40), 2, kind="rotation", strength=90.0, seed=0)
    assert torch.allclose(shifted[parts[1]], torch.rot90(x[parts[1]], 1, dims=(-2, -1)), atol=1e-5)


def test_feature_skew_rotates_vectors_without_changing_norms():
    x = torch.randn(200, 8)
    parts, shifted = feature_skew(x, np.zeros(200), 4, kind="rotation", strength=45.0, seed=0)
    assert torch.allclose(shifted.norm(dim=1), x.norm(dim=1), atol=1e-5)
    moved = [(shifted[p] - x[p]).norm(dim=1).mean().item() for p in parts]
    assert moved[0] < 1e-6 < moved[1] < moved[2] < moved[3]


# --- bad input: ValueError naming the parameter -----------------------------------------------------------------

Y = balanced_labels(5, 10)  # 50 samples, 5 classes

BAD_INPUTS = {
    "alpha <= 0": (lambda: dirichlet(Y, 5, alpha=0.0), "alpha must be a finite number > 0, got 0.0"),
    "inner alpha <= 0": (lambda: inner_dirichlet(Y, [25, 25], alpha=-1.0), "alpha must be a finite number > 0"),
    "no clients": (lambda: iid(Y, 0), r"n_clients must be an integer in \[1, 50\]"),
    "more clients than samples": (lambda: dirichlet(Y, 51, alpha=1.0), r"n_clients must be an integer in \[1, 50\]"),
    "classes_per_client 0": (lambda: pathological(Y, 5, 0), r"classes_per_client must be an integer in \[1, 5\]"),
    "classes_per_client > classes": (lambda: pathological(Y, 5, 6), r"classes_per_client must be an integer in \[1, 5\]"),
    "too many shards": (lambda: shards(Y, 10, 6), r"shards_per_client must be in \[1, 5\]"),
    "sizes off": (lambda: inner_dirichlet(Y, [20, 20], alpha=1.0), "sizes must .* summing to 50"),
    "negative size": (lambda: inner_dirichlet(Y, [60, -10], alpha=1.0), "sizes must"),
    "negative strength": (lambda: feature_skew(torch.zeros(50, 2), Y, 5, strength=-1.0), "strength must be a finite number >= 0"),
    "unknown kind": (lambda: feature_skew(torch.zeros(50, 2), Y, 5, kind="blur"), "kind must be one of"),
    "x rows": (lambda: feature_skew(torch.zeros(49, 2), Y, 5), "x must have one row per label"),
    "integer x": (lambda: feature_skew(torch.zeros(50, 2, dtype=torch.long), Y, 5), "floating-point"),
    "unknown distribution": (lambda: quantity_skew(Y, 5, distribution="zipf"), "distribution must be one of"),
    "negative sigma": (lambda: quantity_skew(Y, 5, sigma=-1.0), r"sigma must be in \[0, 1000\]"),
    "exponent <= 0": (lambda: quantity_skew(Y, 5, distribution="powerlaw", exponent=0.0), r"exponent must be .*0.001"),
    "negative max_redraws": (lambda: dirichlet(Y, 5, alpha=1.0, max_redraws=-1), r"max_redraws must be an integer in \[0, 10000\]"),
    "min_size too big": (lambda: quantity_skew(Y, 5, min_size=11), r"min_size must be an integer in \[0, 10\]"),
    "2-D labels": (lambda: iid(Y.reshape(5, 10), 2), "labels must be 1-D"),
    "unknown name": (lambda: partition("random", Y, 5), "name must be one of .*dirichlet"),
    # values that used to pass a `< 0` check, hang, or fail deep inside numpy
    "nan strength": (lambda: feature_skew(torch.zeros(50, 2), Y, 5, strength=float("nan")), "strength .* got nan"),
    "inf strength": (lambda: feature_skew(torch.zeros(50, 2), Y, 5, strength=float("inf")), "strength .* got inf"),
    "nan rotation": (lambda: feature_skew(torch.zeros(50, 4), Y, 5, kind="rotation", strength=float("nan")),
                     "strength .* got nan"),
    "fractional min_size": (lambda: dirichlet(Y, 10, 0.01, min_size=2.5), "min_size must be an integer, got 2.5"),
    "fractional n_clients": (lambda: iid(Y, 2.5), "n_clients must be an integer, got 2.5"),
    "fractional classes": (lambda: pathological(Y, 5, 2.5), "classes_per_client must be an integer, got 2.5"),
    "fractional shards": (lambda: shards(Y, 5, 2.5), "shards_per_client must be an integer, got 2.5"),
    "fractional quantity min_size": (lambda: quantity_skew(Y, 5, min_size=2.5), "min_size must be an integer"),
    "fractional max_redraws": (lambda: dirichlet(Y, 5, 0.5, max_redraws=1.5), "max_redraws must be an integer"),
    "inf alpha": (lambda: dirichlet(Y, 5, alpha=float("inf")), "alpha must be a finite number > 0, got inf"),
    "inner inf alpha": (lambda: inner_dirichlet(Y, [25, 25], alpha=float("inf")), "alpha .* got inf"),
    "nan sigma": (lambda: quantity_skew(Y, 5, sigma=float("nan")), r"sigma must be in \[0, 1000\], got nan"),
    "inf sigma": (lambda: quantity_skew(Y, 5, sigma=float("inf")), "sigma .* got inf"),
    "fractional sizes": (lambda: inner_dirichlet(np.repeat(np.arange(10), 100), [100.7] * 10, 0.5),
                         "sizes must be whole numbers"),
    "empty labels": (lambda: iid(np.array([]), 3), "labels must hold at least one sample"),
    "negative seed": (lambda: iid(Y, 5, seed=-1), "seed must be an integer in"),
    "fractional seed": (lambda: iid(Y, 5, seed=1.5), "seed must be an integer, got 1.5"),
}

BAD_TYPES = {
    "bool n_clients (dirichlet)": lambda: dirichlet(Y, True, 0.5),
    "bool n_clients (iid)": lambda: iid(Y, True),
    "bool n_clients (shards)": lambda: shards(Y, True),
    "string n_clients": lambda: iid(Y, "10"),
    "None n_clients": lambda: iid(Y, None),
    "mixed labels": lambda: dirichlet(np.array(["a", 1.5] * 25, dtype=object), 5, 0.5),
}


@pytest.mark.parametrize("case", sorted(BAD_TYPES))
def test_bad_types_raise_type_error_naming_the_parameter(case):
    with pytest.raises(TypeError, match="n_clients|labels"):
        BAD_TYPES[case]()


def test_heavy_tailed_sizes_stay_finite_and_complete():
    """Weights are drawn in log space: sigma=400 or a Pareto exponent of 1e-3 once overflowed to NaN sizes."""
    for kwargs in ({"sigma": 400.0}, {"distribution": "powerlaw", "exponent": 1e-3}):
        parts = quantity_skew(np.zeros(6000), 100, **kwargs)
        assert sum(map(len, parts)) == 6000 and min(map(len, parts)) >= 1


def test_feature_skew_takes_a_numpy_generator_as_seed():
    x = torch.randn(100, 3)
    a = feature_skew(x, np.zeros(100), 4, seed=np.random.default_rng(0))
    b = feature_skew(x, np.zeros(100), 4, seed=np.random.default_rng(0))
    assert all(np.array_equal(p, q) for p, q in zip(a[0], b[0])) and torch.equal(a[1], b[1])


def test_numpy_integer_counts_and_seeds_are_accepted():
    parts = dirichlet(Y, np.int64(5), 0.5, min_size=np.int64(2), seed=np.int64(3))
    assert all(np.array_equal(p, q) for p, q in zip(parts, dirichlet(Y, 5, 0.5, min_size=2, seed=3)))


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_raises_value_error_naming_the_parameter(case):
    call, message = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=message):
        call()
