"""Property tests over the public entry points' parameters: a valid result, or a ValueError/TypeError that names
the parameter, within a time bound. One parameter is drawn at a time, the others keep valid values."""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flbook.algorithms as algorithms
from flbook.channel import NoisyChannel
from flbook.channel.compression import QSGD, KMeans, TopK, UniformQuantizer
from flbook.partition import dirichlet, feature_skew, iid, inner_dirichlet, pathological, quantity_skew, shards

# Anything a user might pass: numbers of every kind (NaN, inf, huge, negative, fractional), bools, None, strings.
ANYTHING = st.one_of(
    st.integers(-3, 40), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.floats(0, 1), st.booleans(), st.none(), st.text(max_size=3), st.integers(0, 40).map(np.int64),
)
FAST = settings(max_examples=25, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
Y = np.repeat(np.arange(5), 20)  # 100 labels, 5 classes


def assert_result_or_named_error(call, name: str):
    """The call's result, or None after checking that its ValueError/TypeError names `name`."""
    try:
        return call()
    except (ValueError, TypeError) as err:
        assert name in str(err), f"{type(err).__name__}({err}) does not name {name!r}"
        return None


def assert_partition(parts, n: int) -> None:
    order = np.concatenate(parts)
    assert len(order) == len(np.unique(order)) and (order >= 0).all() and (order < n).all()


PARTITIONERS = {
    "iid": lambda v: (lambda: iid(Y, v), "n_clients"),
    "dirichlet n_clients": lambda v: (lambda: dirichlet(Y, v, 0.5), "n_clients"),
    "dirichlet alpha": lambda v: (lambda: dirichlet(Y, 10, v), "alpha"),
    "dirichlet min_size": lambda v: (lambda: dirichlet(Y, 10, 0.05, min_size=v), "min_size"),
    "dirichlet max_redraws": lambda v: (lambda: dirichlet(Y, 10, 0.5, max_redraws=v), "max_redraws"),
    "dirichlet seed": lambda v: (lambda: dirichlet(Y, 10, 0.5, seed=v), "seed"),
    "pathological": lambda v: (lambda: pathological(Y, 10, v), "classes_per_client"),
    "shards": lambda v: (lambda: shards(Y, 10, v), "shards_per_client"),
    "quantity_skew sigma": lambda v: (lambda: quantity_skew(Y, 10, sigma=v), "sigma"),
    "quantity_skew exponent": lambda v: (lambda: quantity_skew(Y, 10, distribution="powerlaw", exponent=v), "exponent"),
    "quantity_skew min_size": lambda v: (lambda: quantity_skew(Y, 10, min_size=v), "min_size"),
    "inner_dirichlet alpha": lambda v: (lambda: inner_dirichlet(Y, [50, 30, 20], v), "alpha"),
}


@pytest.mark.parametrize("case", sorted(PARTITIONERS))
@FAST
@given(value=ANYTHING)
def test_partitioners(case, value):
    call, name = PARTITIONERS[case](value)
    parts = assert_result_or_named_error(call, name)
    if parts is not None:
        assert_partition(parts, len(Y))


@FAST
@given(strength=ANYTHING, kind=st.sampled_from(["noise", "rotation", "blur"]))
def test_feature_skew(strength, kind):
    out = assert_result_or_named_error(lambda: feature_skew(torch.randn(100, 4), Y, 5, kind=kind, strength=strength),
                                "strength" if kind != "blur" else "kind")
    if out is not None:
        assert torch.isfinite(out[1]).all()


CHANNELS = {
    "snr_db": lambda v: NoisyChannel(snr_db=v), "drop_prob": lambda v: NoisyChannel(drop_prob=v),
    "links": lambda v: NoisyChannel(links=v), "fraction": lambda v: TopK(fraction=v), "k": lambda v: TopK(k=v),
    "bits": lambda v: UniformQuantizer(bits=v), "levels": lambda v: QSGD(levels=v),
    "clusters": lambda v: KMeans(clusters=v),
    "iterations": lambda v: KMeans(iterations=v),
}


@pytest.mark.parametrize("name", sorted(CHANNELS))
@FAST
@given(value=ANYTHING)
def test_channel_constructors(name, value):
    assert_result_or_named_error(lambda: CHANNELS[name](value), name)


ALGORITHM_PARAMETERS = [
    ("FedAvg", "server_lr"), ("FedProx", "mu"), ("Scaffold", "server_lr"), ("FedAvgM", "momentum"),
    ("FedAdam", "tau"), ("FedAdam", "beta1"), ("FedLD", "margin"), ("FedLD", "k_prop"), ("FedSpeed", "rho"),
    ("FedSpeed", "alpha"), ("FedStale", "beta"), ("FedAMD", "anchor_probability"), ("FedAMD", "seed"),
    ("FedBuff", "buffer_size"), ("FedFix", "period"), ("AsyncFedAvg", "policy"), ("StaleFedAvg", "dc_lambda"),
    ("StaleFedAvg", "half_life"), ("GradientInversion", "step_size"), ("GradientInversion", "n_rec"),
]


@pytest.mark.parametrize("algorithm, name", ALGORITHM_PARAMETERS)
@settings(max_examples=15, deadline=2000)
@given(value=ANYTHING)
def test_algorithm_constructors(algorithm, name, value):
    assert_result_or_named_error(lambda: getattr(algorithms, algorithm)(**{name: value}), name)
