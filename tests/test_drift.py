import numpy as np
import pytest
import torch

from flbook import Federation
from flbook.algorithms import FedAvg
from flbook.drift import client_updates, drift
from flbook.partition import dirichlet, iid


def test_drift_of_identical_and_opposite_updates():
    same = torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]])
    expected = {"update_norm": 5 ** 0.5, "average_norm": 5 ** 0.5, "drift": 0.0, "cosine": 1.0}
    assert drift(same) == pytest.approx(expected)
    opposite = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    summary = drift(opposite)
    assert summary["drift"] == pytest.approx(1.0) and summary["average_norm"] == pytest.approx(0.0)


def test_drift_weights_the_clients():
    updates = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    summary = drift(updates, weights=torch.tensor([3.0, 1.0]))  # mean (1.5, 0.5)
    assert summary["average_norm"] == pytest.approx(np.hypot(1.5, 0.5))
    assert summary["drift"] == pytest.approx((0.75 * (0.25 + 0.25) + 0.25 * (2.25 + 2.25)) / 4)
    with pytest.raises(ValueError, match="updates must have shape"):
        drift(torch.zeros(3))


def test_client_updates_match_one_fedavg_round(digits_data):
    parts = iid(digits_data.y_train, 4, seed=0)
    fed = Federation(digits_data, parts, "logistic", local_steps=2, seed=0)
    x0 = fed.initial_model()
    updates = client_updates(fed, FedAvg(), x0, seed=fed.seed)  # (4, P)
    fed.run(FedAvg(), 1, progress=False)
    weights = fed.client_sizes.double() / fed.client_sizes.sum()
    assert torch.allclose(fed.final_models["FedAvg"], x0 + (weights @ updates.double()).float(), atol=1e-6)
    assert client_updates(fed, FedAvg(), x0, clients=[2]).shape == (1, fed.model.n_params)
    with pytest.raises(ValueError, match="clients must be"):
        client_updates(fed, FedAvg(), x0, clients=[4])


def test_label_skew_raises_drift(digits_data):
    labels = digits_data.y_train
    summaries = {}
    for name, parts in {"iid": iid(labels, 10), "skewed": dirichlet(labels, 10, alpha=0.1)}.items():
        fed = Federation(digits_data, parts, "logistic", local_steps=10, lr=0.3)
        updates = client_updates(fed, FedAvg(), fed.initial_model())
        summaries[name] = drift(updates, fed.client_sizes)
    assert summaries["skewed"]["drift"] > summaries["iid"]["drift"] + 0.2
    assert summaries["skewed"]["cosine"] < summaries["iid"]["cosine"]
