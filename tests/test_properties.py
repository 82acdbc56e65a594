"""Property tests over the public entry points' parameters: a valid result, or a ValueError/TypeError that names
the parameter, within a time bound. One parameter is drawn at a time, the others keep valid values."""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import flbook.algorithms as algorithms
from flbook.channel import NoisyChannel
from flbook.channel.quantizers import QSGD, KMeans, TopK, UniformQuantizer
from flbook.partition import dirichlet, feature_skew, iid, inner_dirichlet, pathological, quantity_skew, shards

# Anything a user might pass: numbers of every kind (NaN, inf, huge, negative, fractional), bools, None, strings.
ANYTHING = st.one_of(
    st.integers(-3, 40), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.floats(0, 1), st.booleans(), st.none(), st.text(max_size=3), st.integers(0, 40).map(np.int64),
)
FAST = settings(max_examples=25, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
Y = np.repeat(np.arange(5), 20)  # 100 labels, 5 classes


def assert_result_or_named_error(call, name: str | tuple[str, ...]):
    """The call's result, or None after checking that its ValueError/TypeError names `name` (or one of them)."""
    try:
        return call()
    except (ValueError, TypeError) as err:
        names = (name,) if isinstance(name, str) else name
        assert any(n in str(err) for n in names), f"{type(err).__name__}({err}) does not name {name!r}"
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


# --- data loaders -------------------------------------------------------------------------------------------

SYNTHETIC = ["n_clients", "n_features", "n_classes", "alpha", "beta", "test_fraction", "seed", "iid"]
SMALL = {"n_clients": 3, "n_features": 4, "n_classes": 3}  # tiny data, so each valid draw takes milliseconds


@pytest.mark.parametrize("name", SYNTHETIC)
@settings(max_examples=15, deadline=3000)
@given(value=ANYTHING)
def test_synthetic_loader(name, value):
    from flbook.data import load

    # valid federations of thousands of clients take seconds to generate: out of this test's time bound
    assume(not (name == "n_clients" and isinstance(value, (int, float, np.integer)) and 1000 < value <= 100_000))
    data = assert_result_or_named_error(lambda: load("synthetic", **{**SMALL, name: value}), name)
    if data is not None:
        assert len(data.x_train) == sum(len(c) for c in data.client_indices) and torch.isfinite(data.x_train).all()
        assert int(data.y_train.max()) < data.n_classes


@settings(max_examples=10, deadline=5000)
@given(seed=ANYTHING)
def test_digits_seed(seed):
    from flbook.data import load

    data = assert_result_or_named_error(lambda: load("digits", seed=seed), "seed")
    if data is not None:
        assert len(data.x_train) + len(data.x_test) == 1797


# --- participation ------------------------------------------------------------------------------------------

from flbook.participation import Bernoulli, Uniform, data_correlated, two_groups  # noqa: E402

PROBABILITIES = st.one_of(ANYTHING, st.lists(st.one_of(st.floats(), st.floats(1e-12, 1), ANYTHING), max_size=5))
PARTICIPATION = {
    "fraction": lambda v: Uniform(fraction=v), "count": lambda v: Uniform(count=v),
    "p": lambda v: Bernoulli(v), "max_redraws": lambda v: Bernoulli((0.5, 0.2), max_redraws=v),
    "two_groups n_clients": lambda v: two_groups(v, 0.5, 0.2), "two_groups rate": lambda v: two_groups(6, v, 0.1),
    "two_groups gap": lambda v: two_groups(6, 0.5, v), "score": lambda v: data_correlated(v, 0.5, 0.5),
    "data_correlated rate": lambda v: data_correlated([0.0, 1.0], v, 0.5),
    "strength": lambda v: data_correlated([0.0, 1.0], 0.5, v),
}


@pytest.mark.parametrize("case", sorted(PARTICIPATION))
@FAST
@given(value=PROBABILITIES)
def test_participation_models(case, value):
    model = assert_result_or_named_error(lambda: PARTICIPATION[case](value), case.split()[-1])
    if isinstance(model, Bernoulli):
        assert all(0 < p <= 1 for p in model.p)
        assert np.isfinite(model.probabilities(len(model.p))).all()
        ids = assert_result_or_named_error(lambda: model.sample(0, len(model.p), np.random.default_rng(0)), "raise p")
        assert ids is None or (len(ids) >= 1 and (np.diff(ids) > 0).all())


@pytest.mark.parametrize("model", [Uniform(0.5), Uniform(count=3), Bernoulli((0.5, 0.1, 0.9))], ids=repr)
@FAST
@given(n_clients=ANYTHING)
def test_participation_sample(model, n_clients):
    ids = assert_result_or_named_error(lambda: model.sample(0, n_clients, np.random.default_rng(0)), "n_clients")
    if ids is not None:
        assert len(ids) >= 1 and (np.diff(ids) > 0).all() and 0 <= ids.min() and ids.max() < n_clients
        assert model.probabilities(n_clients).shape == (n_clients,)


@settings(max_examples=8, deadline=3000)
@given(n=st.integers(1, 10**6), p=st.floats(1e-300, 1e-6))
def test_bernoulli_rounds_take_bounded_time(n, p):
    """Tiny probabilities over many clients: a round or a clear error, after at most 1e8 coin flips."""
    ids = assert_result_or_named_error(lambda: Bernoulli((p,) * n).sample(0, n, np.random.default_rng(0)), "raise p")
    assert ids is None or len(ids) >= 1


# --- devices ------------------------------------------------------------------------------------------------

from flbook import devices  # noqa: E402

DEVICES = {
    "n_clients": lambda v: devices.draw(v), "linear n_clients": lambda v: devices.linear(v, 0.5),
    "spread": lambda v: devices.draw(5, "uniform", v), "lognormal spread": lambda v: devices.draw(5, "lognormal", v),
    "linear spread": lambda v: devices.linear(5, v), "distribution": lambda v: devices.draw(5, v),
    "step_time": lambda v: devices.draw(5, step_time=v), "latency": lambda v: devices.draw(5, latency=v),
    "latency_spread": lambda v: devices.draw(5, latency=1.0, latency_distribution="lognormal", latency_spread=v),
    "correlation": lambda v: devices.draw(5, score=np.arange(5.0), correlation=v),
    "score": lambda v: devices.draw(2, score=v), "seed": lambda v: devices.draw(5, seed=v),
    "Devices step_time": lambda v: devices.Devices(v, np.zeros(np.shape(v))),
    "Devices latency": lambda v: devices.Devices(np.ones(np.shape(v)), v),
}
ARRAYS = st.one_of(ANYTHING, st.lists(st.one_of(st.floats(), st.floats(0, 1e3), st.integers(-5, 5)), max_size=4))


@pytest.mark.parametrize("case", sorted(DEVICES))
@FAST
@given(value=ARRAYS)
def test_devices(case, value):
    made = assert_result_or_named_error(lambda: DEVICES[case](value), case.split()[-1])
    if made is not None:
        times = assert_result_or_named_error(lambda: made.job_time(np.arange(made.n_clients), 3), "job times overflow")
        assert times is None or (np.isfinite(times).all() and (times > 0).all())
        assert "clients" in repr(made)


# --- clock --------------------------------------------------------------------------------------------------

from flbook.clock import TOLERANCE, VirtualClock  # noqa: E402


@FAST
@given(start=ANYTHING, delays=st.lists(ANYTHING, max_size=4), until=ANYTHING)
def test_clock(start, delays, until):
    clock = assert_result_or_named_error(lambda: VirtualClock(start), "start")
    if clock is None:
        return
    scheduled = [e for e in (assert_result_or_named_error(lambda: clock.schedule(d), "delay") for d in delays) if e]
    events = assert_result_or_named_error(lambda: clock.pop_until(until), "time")
    if events is not None:
        times = [e.time for e in events]  # in order, up to ties: times within TOLERANCE come in schedule order
        assert all(a <= b + TOLERANCE * max(1.0, abs(b)) for a, b in zip(times, times[1:]))
        assert clock.now == float(until)
        assert len(events) + len(clock) == len(scheduled)
        assert all(e.time <= until + TOLERANCE * max(1.0, abs(until)) for e in events)


# --- Federation ---------------------------------------------------------------------------------------------

from flbook import Federation  # noqa: E402
from flbook.data import Dataset  # noqa: E402

_G = torch.Generator().manual_seed(0)
TINY = Dataset("tiny", torch.randn(40, 4, generator=_G), torch.arange(40) % 3, torch.randn(9, 4, generator=_G),
               torch.arange(9) % 3, 3, (4,))
TINY_PARTS = [np.arange(0, 5), np.arange(5, 15), np.arange(15, 40)]  # unequal clients
FEDERATION = ["local_steps", "local_epochs", "batch_size", "lr", "weight_decay", "participation",
              "clients_per_round", "seed", "threads", "device", "executor", "channel"]
DEVICE_NAMES = st.sampled_from(["cpu", "cuda", "cuda:7", "tpu", "mps", "meta", "", "cpu:0"])


@pytest.mark.parametrize("name", FEDERATION)
@FAST
@given(value=st.one_of(ANYTHING, DEVICE_NAMES, st.just(Uniform(count=5)), st.just(Bernoulli((0.5,) * 3))))
def test_federation_constructor(name, value):
    names = (name, "clients_per_round") if name == "participation" else name  # Uniform(count=5) names its count
    fed = assert_result_or_named_error(lambda: Federation(TINY, TINY_PARTS, "logistic", **{name: value}), names)
    if fed is not None:
        assert fed.n_clients == 3 and fed.participation.probabilities(3).shape == (3,)


INDICES = st.one_of(
    st.lists(st.integers(-3, 45), max_size=6).map(np.array), st.lists(st.floats(0, 40), max_size=4).map(np.array),
    st.lists(st.booleans(), min_size=40, max_size=40).map(np.array), ANYTHING,
    st.lists(st.integers(0, 39), min_size=4, max_size=4).map(lambda v: np.array(v).reshape(2, 2)),
)


@FAST
@given(parts=st.one_of(st.lists(INDICES, max_size=4), ANYTHING))
def test_federation_partitions(parts):
    fed = assert_result_or_named_error(lambda: Federation(TINY, parts, "logistic"), "partition")
    if fed is not None:
        assert_partition(fed.partition, len(TINY.y_train))
        assert all(len(p) >= 1 for p in fed.partition)
