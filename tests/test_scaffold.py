"""SCAFFOLD's control variates: one weighting for the model and the variate, and the invariant c = sum_i p_i c_i."""
import numpy as np
import pytest
import torch

from flbook import Federation
from flbook.algorithms import FedAvg, Scaffold
from flbook.history import window_mean
from flbook.partition import dirichlet
from flbook.protocol import FAILS, HOLDS, compare, verdict


def unequal_parts(n_samples: int, sizes=(20, 40, 80, 160), seed: int = 0) -> list[np.ndarray]:
    """Disjoint shards of unequal sizes that all divide max(sizes): one batch of max(sizes) is a full batch."""
    ids = np.random.default_rng(seed).permutation(n_samples)[: sum(sizes)]
    return [np.sort(chunk) for chunk in np.split(ids, np.cumsum(sizes)[:-1])]


def test_one_full_batch_step_follows_fedavg_with_unequal_sizes(digits_data):
    """One full-batch local step, full participation: c_i = grad f_i(x^{t-1}) and c = sum p_i c_i, so the corrections
    cancel in the size-weighted average and SCAFFOLD takes FedAvg's step in every round."""
    fed = Federation(digits_data, unequal_parts(len(digits_data.y_train)), "logistic", local_steps=1, batch_size=160,
                     lr=0.5)
    a = fed.run(FedAvg(), 6, progress=False, label="fedavg")
    b = fed.run(Scaffold(), 6, progress=False, label="scaffold")
    assert torch.allclose(fed.final_models["fedavg"], fed.final_models["scaffold"], atol=1e-5)
    assert np.allclose(a.test_loss, b.test_loss, atol=1e-6)


def test_server_variate_is_the_size_weighted_mean_of_client_variates(digits_data):
    """Under partial participation c stays sum_i p_i c_i over all N clients, p_i = n_i / n."""
    fed = Federation(digits_data, unequal_parts(len(digits_data.y_train)), "logistic", local_steps=3, batch_size=16,
                     lr=0.1, clients_per_round=2)
    state = fed.start(Scaffold())
    for _ in range(5):
        fed.train_round(state)
    share = (fed.client_sizes / fed.client_sizes.sum()).to(state.x.dtype)  # (N,)
    assert state.client_state.all_clients()["c_i"].abs().sum(1).gt(0).all()  # every client was sampled at least once
    assert torch.allclose(state.server_state["c"], share @ state.client_state.all_clients()["c_i"], atol=1e-6)


class Uncorrected(Scaffold):
    """SCAFFOLD with its correction switched off: c and c_i read as zero in every local step (FedAvg's steps)."""

    def client_update(self, down, client_state, batches, ctx):
        return super().client_update({**down, "c": torch.zeros_like(down["c"])},
                                     {"c_i": torch.zeros_like(client_state["c_i"])}, batches, ctx)


@pytest.mark.parametrize("method, expected", [(Scaffold, HOLDS), (Uncorrected, FAILS)])
def test_chapter_02_claim_rests_on_the_correction(digits_data, method, expected):
    """Chapter 02's claim, on a tiny task through the protocol: SCAFFOLD ends ahead of FedAvg (3 seeds, same lr
    grid). Without the correction the same claim must fail."""
    def make(data, seed, lr):
        return Federation(data, dirichlet(data.y_train, 5, 0.1, seed=seed), "logistic", local_steps=20,
                          batch_size=16, lr=lr, seed=seed, executor="batched")
    result = compare(digits_data, make, {"FedAvg": lambda: FedAvg(), "SCAFFOLD": lambda: method()}, rounds=10,
                     lrs=(0.1,), server_lrs=None, controls=False, tune_rounds=1)
    assert verdict(result.difference("SCAFFOLD", "FedAvg", lambda h: window_mean(h, last=5).mean)) == expected
