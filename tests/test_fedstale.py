import itertools

import numpy as np
import pytest
import torch

from flbook import Federation
from flbook.algorithms import FedAvg
from flbook.algorithms.base import RoundInfo
from flbook.algorithms.fedstale import FedStale, FedVARP
from flbook.participation import Bernoulli, two_groups

SIZES = torch.tensor([10, 20, 30, 40])  # n_k, so alpha = (0.1, 0.2, 0.3, 0.4)
ALPHA = SIZES.double() / SIZES.sum()
P = (0.9, 0.5, 0.3, 0.6)


def _info(ids, t=1):
    return RoundInfo(t, torch.as_tensor(ids), len(SIZES), SIZES)


def _round(algo, x, state, deltas, ids, t=1):
    """One aggregation with fixed client updates `deltas` (N, P) of which the clients `ids` report."""
    ids = torch.as_tensor(ids)
    return algo.aggregate(x, state, {"delta": deltas[ids]}, torch.full((len(ids),), 1 / len(ids)), _info(ids, t))


@pytest.fixture
def deltas():
    return torch.randn(len(SIZES), 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _with_memory(algo, deltas):
    """Server state after a first round in which every client reported, so that every h_k is non-zero."""
    x = torch.zeros(3, dtype=torch.float64)
    _, state = _round(algo, x, algo.init_server_state(x, len(SIZES)), deltas.flip(0), [0, 1, 2, 3])
    return x, state


def test_beta_zero_is_fedavg_with_inverse_probability_weights(deltas):
    algo = FedStale(beta=0.0, probabilities=P)
    x, state = _with_memory(algo, deltas)
    ids = [1, 3]
    x_new, _ = _round(algo, x, state, deltas, ids)
    weights = ALPHA[ids] / torch.tensor(P, dtype=torch.float64)[ids]  # alpha_k / p_k
    torch.testing.assert_close(x_new, weights @ deltas[ids])


def test_beta_one_is_fedvarp_and_the_memory_is_refreshed_after_the_step(deltas):
    algo = FedVARP(probabilities=P)
    x, state = _with_memory(algo, deltas)
    h = deltas.flip(0)  # what every client sent in the first round
    ids = [0, 2]
    x_new, state = _round(algo, x, state, deltas, ids, t=2)
    inv_p = 1 / torch.tensor(P, dtype=torch.float64)
    # FedVARP (Jhunjhunwala et al., Alg. 1): sum_k alpha_k h_k + sum_{S} alpha_k / p_k (Delta_k - h_k)
    expected = ALPHA @ h + (ALPHA[ids] * inv_p[ids]) @ (deltas[ids] - h[ids])
    torch.testing.assert_close(x_new, expected)
    torch.testing.assert_close(state["h"], torch.stack([deltas[0], h[1], deltas[2], h[3]]))
    assert str(algo) == "FedVARP" and algo.beta == 1.0
    with pytest.raises(TypeError):
        FedVARP(beta=0.5)


def test_direction_is_the_convex_combination_of_fedavg_and_fedvarp(deltas):
    ids = [0, 3]
    steps = {}
    for beta in (0.0, 0.3, 1.0):
        algo = FedStale(beta=beta, probabilities=P)
        x, state = _with_memory(algo, deltas)
        steps[beta], _ = _round(algo, x, state, deltas, ids, t=2)
    torch.testing.assert_close(steps[0.3], 0.7 * steps[0.0] + 0.3 * steps[1.0])


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_unbiased_for_every_beta_exact_expectation(deltas, beta):
    """E_S[d] = sum_k alpha_k Delta_k, summing over every non-empty cohort of Bernoulli(p) participation."""
    participation = Bernoulli(P)
    p = np.array(P)
    algo = FedStale(beta=beta, probabilities=tuple(participation.probabilities(4)))  # p_k given a non-empty round
    x, state = _with_memory(algo, deltas)
    mean = torch.zeros(3, dtype=torch.float64)
    for mask in itertools.product([False, True], repeat=4):
        if any(mask):
            chance = np.prod(np.where(mask, p, 1 - p)) / (1 - np.prod(1 - p))
            mean += chance * _round(algo, x, state, deltas, np.flatnonzero(mask), t=2)[0]
    torch.testing.assert_close(mean, ALPHA @ deltas)


def test_unbiased_monte_carlo_with_the_participation_sampler(deltas):
    participation = two_groups(4, 0.55, 0.9)
    algo = FedStale(beta=0.5, probabilities=tuple(participation.probabilities(4)))
    x, state = _with_memory(algo, deltas)
    rng = np.random.default_rng(0)
    draws = torch.stack([_round(algo, x, state, deltas, participation.sample(t, 4, rng), t=2)[0] for t in range(1000)])
    error = (draws.mean(0) - ALPHA @ deltas).abs()
    assert (error < 4 * draws.std(0) / np.sqrt(len(draws))).all()


def test_fedau_estimates_one_over_the_period(deltas):
    """Client 0 reports every third round, client 1 every round: 1/p_k is estimated as 3 and 1."""
    algo = FedStale(beta=0.5)
    x = torch.zeros(3, dtype=torch.float64)
    state = algo.init_server_state(x, 4)
    torch.testing.assert_close(state["inv_p"], torch.ones(4, dtype=torch.float64))  # 1 before any evidence
    for t in range(1, 31):
        x, state = _round(algo, x, state, deltas, [0, 1] if t % 3 == 0 else [1], t)
    torch.testing.assert_close(state["inv_p"][:2], torch.tensor([3.0, 1.0], dtype=torch.float64))
    assert (state["inv_p"][2:] == 1).all()  # never seen


@pytest.fixture(scope="module")
def skewed(digits_data):
    labels = digits_data.y_train.numpy()
    return [np.flatnonzero(labels % 6 == k) for k in range(6)]


@pytest.mark.parametrize("beta, probabilities", [(0.0, (1.0,) * 6), (0.7, (1.0,) * 6), (1.0, None)])
def test_full_participation_is_fedavg_for_every_beta(digits_data, skewed, beta, probabilities):
    fed = Federation(digits_data, skewed, "logistic", local_steps=2, lr=0.2, seed=1)
    fed.run(FedAvg(), 4, progress=False, label="avg")
    fed.run(FedStale(beta=beta, probabilities=probabilities), 4, progress=False, label="stale")
    torch.testing.assert_close(fed.final_models["stale"], fed.final_models["avg"])


def test_loop_and_batched_executors_agree(digits_data, skewed):
    participation = two_groups(6, 0.5, 0.6)
    algo = FedStale(beta=0.5, probabilities=tuple(participation.probabilities(6)))
    models = []
    for executor in ("loop", "batched"):
        fed = Federation(digits_data, skewed, "mlp", local_steps=2, participation=participation, executor=executor,
                         seed=2)
        fed.run(algo, 3, progress=False)
        models.append(fed.final_models[str(algo)])
    torch.testing.assert_close(models[0], models[1], atol=1e-5, rtol=1e-4)


def test_fedvarp_run_equals_fedstale_with_beta_one(digits_data, skewed):
    participation = two_groups(6, 0.55, 0.9)
    p = tuple(participation.probabilities(6))
    fed = Federation(digits_data, skewed, "logistic", local_steps=2, participation=participation, seed=3)
    varp = fed.run(FedVARP(probabilities=p), 5, progress=False)
    stale = fed.run(FedStale(beta=1.0, probabilities=p), 5, progress=False)
    np.testing.assert_array_equal(varp.test_loss, stale.test_loss)


@pytest.mark.parametrize("make, message", [
    (lambda: FedStale(beta=-0.1), r"beta must be in \[0, 1\]"),
    (lambda: FedStale(beta=1.5), r"beta must be in \[0, 1\]"),
    (lambda: FedStale(probabilities=(0.5, 0.0)), r"probabilities must be a 1-D sequence of values in \(0, 1\]"),
    (lambda: FedStale(probabilities=(0.5, 1.2)), r"probabilities must be"),
    (lambda: FedStale(probabilities=(0.5, 0.5)).init_server_state(torch.zeros(3), 4),
     r"probabilities must have one entry per client \(4\), got 2"),
])
def test_bad_inputs_name_the_parameter(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("broken", [False, True])
def test_the_stale_memory_carries_fedvarps_gain(broken, monkeypatch):
    """Chapter 21's "FedVARP beats FedAvg at alpha=0.1, gap 0.9" holds, and fails once the stale memory never
    refreshes (h stays 0, so every beta is FedAvg), through the chapter's protocol run on a tiny setting."""
    from flbook.algorithms import FedStale
    from flbook.chapters import ch21_fedstale as chapter
    from flbook.protocol import HOLDS, clear_cache, verdict

    clear_cache()  # the cache keys a run by the method's fields, not by its code
    if broken:
        aggregate = FedStale.aggregate

        def forgetful(self, x, server_state, messages, weights, info):
            x, state = aggregate(self, x, server_state, messages, weights, info)
            return x, {**state, "h": server_state["h"]}
        monkeypatch.setattr(FedStale, "aggregate", forgetful)
    history = chapter.experiment({**chapter.CARD, "rounds": 60}, settings=[chapter.BAND], betas=(0.0, 1.0),
                                 controls_at=None)
    clear_cache()
    assert (verdict(chapter.stale_gain(history, *chapter.BAND), "less") == HOLDS) != broken
