from dataclasses import dataclass

import numpy as np
import pytest
import torch

from flbook import Federation, make_model
from flbook import topology as T
from flbook.algorithms import DFedSAM, FedAvg
from flbook.chapters import ch51_dfedsam
from flbook.data import load
from flbook.decentralized import Decentralized
from flbook.peer_protocol import compare
from flbook.protocol import verdict

SIZES = (20, 55, 90, 35, 130, 60, 25, 75)  # unequal on purpose


def _fed(data, **kwargs):
    ids = np.random.default_rng(0).permutation(len(data.y_train))
    cuts = np.cumsum((0,) + SIZES)
    parts = [np.sort(ids[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]
    model = make_model("mlp", data.input_shape, data.n_classes, hidden=(16,))
    return Federation(data, parts, model, **({"local_steps": 3, "batch_size": 16, "lr": 0.1, "seed": 1} | kwargs))


def test_rho_zero_is_dfedavg_bit_for_bit(digits_data):
    net = Decentralized(_fed(digits_data), T.metropolis_hastings(T.ring(8)))
    a = net.run(FedAvg(), 3, progress=False, label="DFedAvg")
    b = net.run(DFedSAM(rho=0.0), 3, progress=False, label="DFedSAM")
    assert torch.equal(net.final_models["DFedAvg"], net.final_models["DFedSAM"])
    assert a["local_acc"].tolist() == b["local_acc"].tolist()
    net.run(DFedSAM(rho=0.05), 3, progress=False, label="SAM")
    assert not torch.allclose(net.final_models["SAM"], net.final_models["DFedAvg"])


def test_sam_perturbation_has_norm_rho_and_the_step_updates_y(digits_data):
    fed = _fed(digits_data)
    ctx, x = fed.context(DFedSAM()), fed.initial_model()
    xb, yb = fed.x_train[:16], fed.y_train[:16]
    g = ctx.grad(x, xb, yb)
    eps = 0.07 * g / g.norm()
    assert eps.norm().item() == pytest.approx(0.07, rel=1e-5)
    assert torch.allclose(DFedSAM(rho=0.07).sam_grad(x, xb, yb, ctx), ctx.grad(x + eps, xb, yb))
    algo = DFedSAM(rho=0.07)
    index = fed.sample_batches(torch.tensor([0]), None, torch.Generator().manual_seed(0))  # (1, K, B)
    messages, _ = fed.train_cohort(algo, {"x": x[None]}, index, None, {}, True, fed.executor_for(algo),
                                   fed.context(algo))
    y = x.clone()
    for k in range(index.shape[1]):  # y <- y - eta grad F(y + eps(y)), from y = x
        xk, yk = fed.x_train[index[0, k]], fed.y_train[index[0, k]]
        y = y - fed.lr * algo.sam_grad(y, xk, yk, ctx)
    assert torch.allclose(messages["delta"][0], y - x, atol=1e-6)


def test_mgs_with_one_step_is_dfedsam_and_q_steps_are_one_step_with_w_to_the_q(digits_data):
    fed = _fed(digits_data)
    W = T.metropolis_hastings(T.ring(8))
    net = Decentralized(fed, W)
    net.run(DFedSAM(), 2, progress=False, label="DFedSAM")
    mgs1 = Decentralized(fed, W, gossip_steps=1)
    mgs1.run(DFedSAM(), 2, progress=False, label="MGS")
    assert torch.equal(net.final_models["DFedSAM"], mgs1.final_models["MGS"])
    X = torch.randn(8, 50, dtype=torch.float64)
    assert torch.allclose(T.gossip(X, W, 4), torch.linalg.matrix_power(W, 4) @ X)


def test_complete_graph_with_size_weights_is_fedsam_on_a_server(digits_data):
    fed = _fed(digits_data)
    fed.run(DFedSAM(), 3, progress=False, label="FedSAM")
    net = Decentralized(fed, T.uniform_weights(T.complete(8), sizes=fed.client_sizes))
    net.run(DFedSAM(), 3, progress=False, label="DFedSAM")
    X = net.final_models["DFedSAM"]
    assert torch.allclose(X, fed.final_models["FedSAM"].expand_as(X), atol=1e-5)


def test_gossip_keeps_the_average_and_consensus_follows_the_graph():
    X = torch.randn(16, 200, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    after = {}
    for name in ("ring", "torus", "random regular", "complete"):
        W = T.mixing_by_name(name, 16, degree=6)
        Y = T.gossip(X, W)
        assert torch.allclose(Y.mean(0), X.mean(0))
        lam = T.second_largest_eigenvalue(W)
        assert T.consensus_distance(Y) <= lam**2 * T.consensus_distance(X) + 1e-12
        after[name] = T.consensus_distance(Y)
    assert after["ring"] > after["torus"] > after["random regular"] > after["complete"]
    assert T.consensus_distance(T.gossip(X, T.mixing_by_name("ring", 16), 2000)) < 1e-10  # Q -> inf: consensus


def test_bad_rho_is_refused():
    with pytest.raises(ValueError, match="rho"):
        DFedSAM(rho=-0.1)


@dataclass(kw_only=True)
class RandomAscent(DFedSAM):
    """SAM with its key ingredient broken: the perturbation of norm rho points in a random direction."""

    name = "RandomAscent"

    def sam_grad(self, y, xb, yb, ctx):
        u = torch.sin(12.9898 * torch.arange(y.shape[-1], dtype=y.dtype) + xb.sum())  # a direction blind to g
        return ctx.grad(y + self.rho * u / u.norm(), xb, yb)


def _flatter(algorithm):
    """The chapter's flatness claim at a tiny scale: sharpness of DFedAvg minus that of `algorithm`, per seed."""
    make = lambda algo: ch51_dfedsam.gossip_method("ring", 8, alpha=0.1, local_steps=5, algorithm=algo,
                                                    eval_every=10, measure=ch51_dfedsam.sharpness)
    runs = compare(load("digits"), {"DFedAvg": make(FedAvg), "SAM": make(algorithm)}, rounds=10, fixed_lr=0.3)
    return runs.difference("DFedAvg", "SAM", lambda h: h["measure"].iloc[0])


def test_the_ascent_step_makes_the_models_flatter_and_a_random_perturbation_does_not():
    assert verdict(_flatter(lambda: DFedSAM(rho=0.05))) == "holds"
    assert verdict(_flatter(lambda: RandomAscent(rho=0.05))) != "holds"
