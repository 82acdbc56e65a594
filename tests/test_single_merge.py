import numpy as np
import pytest
import torch

from flbook import topology as T
from flbook.chapters import ch53_single_merge
from flbook.data import load
from flbook.peer_protocol import compare
from flbook.protocol import verdict


def test_r_n_minus_1_is_the_exact_average_and_r_0_is_no_communication():
    rng = np.random.default_rng(0)
    assert torch.allclose(T.random_gossip(12, 11, rng), torch.full((12, 12), 1 / 12, dtype=torch.float64))
    assert torch.equal(T.random_gossip(12, 0.0, rng), torch.eye(12, dtype=torch.float64))
    X = torch.randn(12, 30, dtype=torch.float64)
    assert T.consensus_distance(T.gossip(X, T.random_gossip(12, 11, rng))) < 1e-20


def test_random_gossip_is_row_stochastic_with_1_plus_r_members_on_average():
    rng = np.random.default_rng(1)
    Ws = [T.random_gossip(20, 1.3, rng) for _ in range(200)]
    for W in Ws[:20]:
        assert T.is_row_stochastic(W) and (torch.diagonal(W) > 0).all()
    members = np.mean([(W > 0).sum(1).double().mean().item() for W in Ws])
    assert members == pytest.approx(1 + 1.3, abs=0.05)  # self + floor(r) + one more with probability frac(r)
    same = torch.randn(1, 7, dtype=torch.float64).expand(20, 7)
    assert torch.allclose(T.gossip(same, Ws[0]), same)  # identical models stay identical


def test_schedules():
    assert [T.communication_rate("truncate_v2", p, 0.2, 15, 0.5, 0.1) for p in (0.49, 0.5, 0.55, 0.6)] == \
        [0.2, 15, 15, 0.2]
    assert T.communication_rate("truncate", 0.999, 0.2, 15, 1.0) == 0.2  # point = 1: no switch before the end
    assert T.communication_rate("truncate", 1.0, 0.2, 15, 1.0) == 15
    assert T.communication_rate("fixed", 0.7, 0.2, 15) == 0.2
    with pytest.raises(ValueError, match="schedule must be one of"):
        T.communication_rate("late", 0.5, 0.2, 15)
    with pytest.raises(ValueError, match="r .* must be in"):
        T.random_gossip(5, 4.5, np.random.default_rng(0))


def _merge_gain(shared_init):
    """The chapter's claim at a tiny scale: after no communication, merged accuracy - mean node accuracy, per seed."""
    method = ch53_single_merge.merge_method(8, "fixed", 0.0, alpha=0.1, local_steps=10, shared_init=shared_init,
                                            eval_every=20)
    runs = compare(load("digits"), {"no communication": method}, rounds=20, fixed_lr=0.3).history
    last = runs.groupby("seed").tail(1)
    return (last["test_acc"] - last["local_acc"]).to_numpy()


def test_merging_without_communication_needs_the_shared_initialisation():
    shared, separate = _merge_gain(shared_init=True), _merge_gain(shared_init=False)
    assert verdict(shared) == "holds"
    assert verdict(separate) != "holds" and separate.mean() < shared.mean() / 2
