import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flbook import Federation
from flbook.algorithms import FedAvg
from flbook.algorithms.fedld import FedLD
from flbook.loss_decomposition import TERMS, LossProbe, compare, decompose
from flbook.partition import dirichlet


@pytest.fixture
def skewed(digits_data):
    return dirichlet(digits_data.y_train, 6, 0.1, seed=0)


def test_three_terms_add_up_to_the_training_loss(digits_data, skewed):
    fed = Federation(digits_data, skewed, "logistic", local_steps=3, participation=0.5)
    hist = decompose(fed, FedAvg(), 3, progress=False)
    rows = hist[hist["round"] > 0]
    assert np.allclose(rows[list(TERMS)].sum(axis=1), rows["train_loss"], atol=1e-5)
    union = torch.as_tensor(np.concatenate(skewed))
    logits = fed.model(fed.final_models["FedAvg"], digits_data.x_train[union])
    final = F.cross_entropy(logits, digits_data.y_train[union])
    assert np.isclose(rows["train_loss"].iloc[-1], final.item(), atol=1e-5)
    assert np.isnan(hist.loc[hist["round"] == 0, "local_loss"]).all()
    assert (rows["step_norm"] <= rows["update_norm"] + 1e-6).all()  # an average is never longer than its parts


def test_terms_with_one_client_on_all_data_have_no_shift_or_aggregation(digits_data):
    fed = Federation(digits_data, [np.arange(200)], "logistic", local_steps=2)
    probe = LossProbe(fed)
    x = fed.initial_model()
    delta = 0.01 * torch.randn(1, fed.model.n_params, generator=torch.Generator().manual_seed(7))
    terms = probe.measure(x, delta, torch.ones(1), torch.tensor([0]), x + delta[0])
    assert abs(terms["shift_loss"]) < 1e-7 and abs(terms["aggregation_loss"]) < 1e-7


def test_decomposition_needs_an_update_delta(digits_data, skewed):
    class SendsModels(FedAvg):
        def client_update(self, down, client_state, batches, ctx):
            message, state = super().client_update(down, client_state, batches, ctx)
            return {"y": down["x"] + message["delta"]}, state

        def aggregate(self, x, server_state, messages, weights, info):
            return weights @ messages["y"], server_state

    with pytest.raises(ValueError, match="algorithm must send an update 'delta'; FedAvg sends \\['y'\\]"):
        decompose(Federation(digits_data, skewed, "logistic"), SendsModels(), 1, progress=False)


def test_compare_labels_runs_by_name(digits_data, skewed):
    fed = Federation(digits_data, skewed, "logistic", local_steps=1)
    hist = compare(fed, {"a": FedAvg(), "b": FedLD(margin=0.0)}, 2, progress=False)
    assert list(hist["algorithm"].unique()) == ["a", "b"]
    assert np.allclose(hist[hist.algorithm == "a"].local_loss.iloc[1], hist[hist.algorithm == "b"].local_loss.iloc[1])
