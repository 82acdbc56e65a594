import numpy as np
import pytest
import torch

from flbook import Federation
from flbook.algorithms import FedAvg, FedAvgM, RoundInfo
from flbook.algorithms.robust_fedavg import RobustFedAvg
from flbook.robust import RobustRule, coordinate_median


@pytest.fixture
def unequal(digits_data):
    """Eight clients of sizes 20, 40, ..., 160: unequal weights."""
    ids = np.random.default_rng(0).permutation(len(digits_data.y_train))
    cuts = np.cumsum([20 * (k + 1) for k in range(8)])
    return [np.sort(part) for part in np.split(ids[:cuts[-1]], cuts[:-1])]


def test_mean_rule_without_momentum_is_fedavg_bit_for_bit(digits_data, unequal):
    fed = Federation(digits_data, unequal, "mlp", local_steps=2, participation=0.75, seed=2)
    fed.run(FedAvg(), 3, progress=False, label="fedavg")
    fed.run(RobustFedAvg(rule="mean", momentum=0.0, server_lr=1.0), 3, progress=False, label="robust")
    assert torch.equal(fed.final_models["fedavg"], fed.final_models["robust"])
    fed.run(RobustFedAvg(rule="median"), 3, progress=False, label="median")
    assert not torch.allclose(fed.final_models["fedavg"], fed.final_models["median"])


def test_mean_rule_with_momentum_is_fedavgm(digits_data, unequal):
    fed = Federation(digits_data, unequal, "mlp", local_steps=2, seed=1)
    fed.run(FedAvgM(momentum=0.9, server_lr=0.5), 3, progress=False, label="m")
    fed.run(RobustFedAvg(momentum=0.9, server_lr=0.5), 3, progress=False, label="r")
    assert torch.equal(fed.final_models["m"], fed.final_models["r"])


def test_aggregate_applies_the_rule_to_the_deltas():
    algo = RobustFedAvg(rule="median", server_lr=0.5)
    x, deltas = torch.ones(4), torch.randn(5, 4)
    info = RoundInfo(0, torch.arange(5), 5, torch.full((5,), 10))
    new_x, _ = algo.aggregate(x, algo.init_server_state(x, 5), {"delta": deltas}, torch.full((5,), 0.2), info)
    assert torch.equal(new_x, x + 0.5 * coordinate_median(deltas))


def test_centered_clipping_starts_from_the_previous_aggregate():
    algo = RobustFedAvg(rule="centered_clipping", options={"tau": 0.1})
    x, w = torch.zeros(3), torch.full((4,), 0.25)
    state = algo.init_server_state(x, 4)
    info = RoundInfo(0, torch.arange(4), 4, torch.full((4,), 1))
    deltas = torch.tensor([[5.0, 0, 0]] * 4)
    x1, state = algo.aggregate(x, state, {"delta": deltas}, w, info)
    x2, state = algo.aggregate(x1, state, {"delta": deltas}, w, info)
    torch.testing.assert_close(x1, torch.tensor([0.1, 0, 0]))  # one clipped step of length tau from zero
    torch.testing.assert_close(x2 - x1, torch.tensor([0.2, 0, 0]))  # from the last aggregate 0.1: 0.1 + tau


def test_bucketing_shuffle_is_seeded_by_round(digits_data, unequal):
    algo = RobustFedAvg(rule="trimmed_mean", f=1, pre=("bucketing",), seed=3)
    deltas, w = torch.randn(8, 5), torch.full((8,), 1 / 8)
    outs = [algo.aggregate(torch.zeros(5), {}, {"delta": deltas}, w, RoundInfo(r, torch.arange(8), 8,
                           torch.ones(8)))[0] for r in (0, 0, 1)]
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])
    assert torch.isfinite(outs[0]).all()


def test_robust_rule_survives_a_byzantine_delta_that_breaks_the_mean():
    deltas = torch.cat([0.1 * torch.randn(7, 6), torch.full((2, 6), 1e6)])
    w, info = torch.full((9,), 1 / 9), RoundInfo(0, torch.arange(9), 9, torch.ones(9))
    for rule in ("median", "trimmed_mean", "krum", "geometric_median"):
        algo = RobustFedAvg(rule=rule, f=2)
        x, _ = algo.aggregate(torch.zeros(6), {}, {"delta": deltas}, w, info)
        assert x.abs().max() < 1, rule
    x, _ = RobustFedAvg().aggregate(torch.zeros(6), {}, {"delta": deltas}, w, info)
    assert x.abs().min() > 1e5


def test_hyperparameters_are_validated_and_named():
    assert str(RobustFedAvg(rule="krum", f=2, pre=("nnm",))) == "RobustFedAvg(rule=krum, f=2, pre=('nnm',))"
    assert RobustFedAvg(rule="krum", f=2).aggregator == RobustRule("krum", f=2)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\), got 1.0"):
        RobustFedAvg(momentum=1.0)
    with pytest.raises(ValueError, match=r"server_lr must be > 0"):
        RobustFedAvg(server_lr=0.0)
    with pytest.raises(ValueError, match=r"rule must be one of"):
        RobustFedAvg(rule="bulyan")
    with pytest.raises(ValueError, match=r"f must be an integer >= 0, got -1"):
        RobustFedAvg(rule="krum", f=-1)
