import numpy as np
import pytest

from flbook import Federation, make_model
from flbook.algorithms import FedAvg
from flbook.modest import AliveSample, Churn, MoDeST, View, sample_order


def _fed(data, n=8, size=40, **kwargs):
    ids = np.random.default_rng(0).permutation(len(data.y_train))[: n * size].reshape(n, size)
    model = make_model("mlp", data.input_shape, data.n_classes, hidden=(16,))
    return Federation(data, [np.sort(p) for p in ids], model, **({"local_steps": 3, "batch_size": 8, "lr": 0.1,
                                                                  "seed": 2} | kwargs))


def test_full_sample_one_aggregator_no_churn_is_fedavg_with_full_participation(digits_data):
    fed = _fed(digits_data)  # equal shards: MoDeST's uniform mean is FedAvg's size-weighted one
    server = fed.run(FedAvg(), 4, progress=False, label="FedAvg")
    modest = MoDeST(sample_size=8, aggregators=1).run(fed, FedAvg(), 4)
    assert np.allclose(modest["test_acc"], server["test_acc"])
    assert np.allclose(modest["test_loss"], server["test_loss"], atol=1e-5)


def test_every_node_derives_the_same_sample_a_permutation_that_changes_per_round():
    peers = np.arange(30)
    first, again, later = sample_order(peers, 5), sample_order(peers.copy(), 5), sample_order(peers, 6)
    assert np.array_equal(first, again) and sorted(first) == list(peers)
    assert not np.array_equal(first, later)


def test_offline_and_inactive_nodes_are_never_sampled():
    alive = np.ones(20, dtype=bool)
    alive[[3, 7, 11]] = False
    view = View(np.full(20, 10), inactivity=5)
    view.last_active[[0, 1]] = 2  # inactive for more than I = 5 rounds at k = 10
    for k in range(10, 30):
        view.last_active[:] = np.where(np.isin(np.arange(20), [0, 1]), 2, k)
        chosen = view.available(k, 10, alive)
        assert len(chosen) == 10 and not set(chosen) & {0, 1, 3, 7, 11}
    assert len(view.available(10, 20, alive)) == 15  # all that answer, no more


def test_aggregation_after_exactly_floor_s_sf_models_and_2as_transfers(digits_data):
    fed = _fed(digits_data, n=12)
    history = MoDeST(sample_size=6, aggregators=2, success_fraction=0.6).run(fed, FedAvg(), 5)
    assert (history["aggregated"].iloc[1:] == 3).all()  # floor(6 * 0.6)
    assert history["transfers"].tolist() == [t * 2 * 2 * 6 for t in range(6)]  # s*a up + a*s down per round
    assert history["bytes_sent"].iloc[-1] == 5 * 24 * fed.model.n_params * 4


def test_a_crash_is_survived_by_filling_the_sample_from_survivors(digits_data):
    fed = _fed(digits_data, n=20)
    churn = Churn(crash_round=3, crash_fraction=0.7, rejoin_round=6, rejoin_fraction=0.5, seed=1)
    assert churn.alive(2, 20).sum() == 20 and churn.alive(3, 20).sum() == 6 and churn.alive(6, 20).sum() == 13
    history = MoDeST(sample_size=5, churn=churn).run(fed, FedAvg(), 8)
    assert (history["aggregated"].iloc[1:] == 5).all() and history["lost_rounds"].iloc[-1] == 0
    assert history["timeouts"].iloc[-1] <= 1  # at most the aggregator chosen just before the crash
    broken = MoDeST(sample_size=5, churn=churn, ping=False).run(fed, FedAvg(), 8)
    assert broken["models"].iloc[-1] < history["models"].iloc[-1]  # without pings dead nodes fill the sample
    server = AliveSample(churn, 5)
    assert set(server.sample(4, 20, np.random.default_rng(0))) <= set(np.flatnonzero(churn.alive(4, 20)))


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="aggregators"):
        MoDeST(sample_size=3, aggregators=4)
    with pytest.raises(ValueError, match="rejoin_round"):
        Churn(crash_round=5, rejoin_round=4)


def _fill(ping):
    """The chapter's survival claim at a tiny scale: per seed, the models per round / s between crash and rejoin."""
    from flbook.chapters import ch52_modest
    from flbook.data import load

    values = {**ch52_modest.DEFAULTS, "n_nodes": 20, "sample_size": 5, "crash_round": 3, "rejoin_round": 8,
              "crash_fraction": 0.6}  # 8 of 20 survive: enough to fill a sample of 5
    fills = []
    for seed in (0, 1, 2):
        protocol = MoDeST(5, churn=ch52_modest.churn_from({**values, "seed": seed}), ping=ping)
        method = ch52_modest.modest_method(20, protocol, alpha=1.0, local_steps=2, eval_every=1)
        fills.append(ch52_modest.sample_fill(method(load("digits"), seed, 0.1, 8), 5, 3, 8))
    return fills


def test_without_pings_the_samples_do_not_fill_after_a_crash_and_the_claim_fails():
    from flbook.protocol import verdict

    assert verdict(_fill(ping=True), margin=0.9) == "holds"
    assert verdict(_fill(ping=False), margin=0.9) == "does not hold"
