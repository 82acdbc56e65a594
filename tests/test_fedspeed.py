import numpy as np
import pytest
import torch
from torch import nn

from conftest import two_class_split
from flbook import Federation
from flbook.algorithms import Batches, FedAvg, FedProx, LocalContext, RoundInfo
from flbook.algorithms.fedspeed import FedSpeed
from flbook.chapters import ch13_fedspeed
from flbook.executors import BatchedExecutor, Cohort, LoopExecutor
from flbook.models import FlatModel, mlp
from flbook.protocol import FAILS, HOLDS


@pytest.fixture
def fed(digits_data):
    return Federation(digits_data, two_class_split(digits_data.y_train.numpy(), 6), "logistic", local_steps=4,
                      batch_size=16, participation=0.5, seed=1)


# ------------------------------------------------------------------- heterogeneous quadratics, solved exactly
class _Scale(nn.Module):
    """model(theta, x) = x * theta, so a client holding (sqrt(a) 1, sqrt(a) c) has f = a/2 ||theta - c||^2."""

    def __init__(self, dim: int):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        return x * self.w


def _half_squared_error(out, y):
    return 0.5 * (out - y).square().sum(-1).mean()


def _quadratic_rounds(algo, curvature, centers, rounds, local_steps=5, lr=0.2):
    """Full-batch rounds with every client on f_i = a_i/2 ||theta - c_i||^2; returns x and the client states."""
    n, dim = centers.shape
    ctx = LocalContext(FlatModel(_Scale(dim), "quadratic"), lr, 0.0, _half_squared_error)
    x = torch.zeros(dim)
    server = algo.init_server_state(x, n)
    state = {k: v.expand(n, *v.shape).clone() for k, v in algo.init_client_state(x).items()}
    cohort = Cohort(curvature.sqrt()[:, None].expand(n, dim), curvature.sqrt()[:, None] * centers,
                    torch.arange(n)[:, None, None].expand(n, local_steps, 1))
    info = RoundInfo(1, torch.arange(n), n, torch.ones(n))
    for _ in range(rounds):
        messages, state = LoopExecutor()(algo, algo.downlink(x, server), state, cohort, ctx)
        x, server = algo.aggregate(x, server, messages, torch.full((n,), 1 / n), info)
    return x, state


CURVATURE = torch.tensor([1.0, 4.0, 0.5, 2.0])
CENTERS = torch.tensor([[2.0, 0.0], [0.0, 1.0], [-1.0, -1.0], [1.0, 2.0]])
OPTIMUM = (CURVATURE[:, None] * CENTERS).sum(0) / CURVATURE.sum()  # argmin of the mean of the f_i


def test_prox_correction_removes_the_bias_of_the_proximal_term():
    plain, _ = _quadratic_rounds(FedProx(mu=0.5), CURVATURE, CENTERS, rounds=60)
    corrected, state = _quadratic_rounds(FedSpeed(mu=0.5, rho=0.0), CURVATURE, CENTERS, rounds=60)
    assert (plain - OPTIMUM).norm() > 0.1  # FedProx settles at a biased point
    assert torch.allclose(corrected, OPTIMUM, atol=1e-4)  # the corrected fixed point is the optimum
    # there h_i = -lambda_hat_i / mu = -grad f_i(x*) / mu: the dual variables hold each client's gradient
    grads = CURVATURE[:, None] * (OPTIMUM - CENTERS)
    assert torch.allclose(state["h"], -grads / 0.5, atol=1e-3)


def test_single_client_reaches_its_optimum_with_vanishing_correction():
    center = torch.tensor([[1.5, -0.5]])
    x, state = _quadratic_rounds(FedSpeed(mu=0.5, rho=0.0), torch.tensor([3.0]), center, rounds=60)
    assert torch.allclose(x, center[0], atol=1e-5)
    assert state["h"].abs().max() < 1e-4


# -------------------------------------------------------------------------------- exact special cases
def test_without_correction_and_ascent_it_is_fedprox_then_fedavg_exactly(fed):
    runs = {"prox": FedProx(mu=0.3), "speed_prox": FedSpeed(mu=0.3, rho=0.0, correction=False),
            "avg": FedAvg(), "speed_avg": FedSpeed(mu=0.0, rho=0.0, correction=False)}
    for label, algo in runs.items():
        fed.run(algo, 3, progress=False, label=label)
    assert torch.equal(fed.final_models["prox"], fed.final_models["speed_prox"])
    assert torch.equal(fed.final_models["avg"], fed.final_models["speed_avg"])


def test_first_round_extrapolates_like_feddyn(digits_data):
    """From h = 0 with every client: x^1 = 2 avg_i x_{i,K} - x^0, and round 1's local steps are FedProx's."""
    fed = Federation(digits_data, two_class_split(digits_data.y_train.numpy(), 5), "logistic", local_steps=3, seed=2)
    fed.run(FedProx(mu=0.2), 1, progress=False, label="prox")
    for server in ("simulator", "paper"):
        fed.run(FedSpeed(mu=0.2, rho=0.0, server=server), 1, progress=False, label=server)
        assert torch.allclose(fed.final_models[server], 2 * fed.final_models["prox"] - fed.initial_model(), atol=1e-6)


def test_server_rules_agree_under_full_participation_only(digits_data):
    parts = two_class_split(digits_data.y_train.numpy(), 6)
    for participation, agree in ((1.0, True), (0.5, False)):
        fed = Federation(digits_data, parts, "logistic", local_steps=4, batch_size=16, participation=participation,
                         seed=1)
        a = fed.run(FedSpeed(server="simulator"), 3, progress=False).test_loss.to_numpy()
        b = fed.run(FedSpeed(server="paper"), 3, progress=False).test_loss.to_numpy()
        assert np.allclose(a, b, atol=1e-5) == agree


def test_ascent_step_is_off_when_rho_or_alpha_is_zero_and_changes_the_path_otherwise(fed):
    base = FedSpeed(rho=0.0)
    variants = {"base": base, "alpha0": FedSpeed(rho=0.5, alpha=0.0), "rho0": FedSpeed(rho=0.0, alpha=0.5),
                "sam": FedSpeed(rho=0.5), "plain": FedSpeed(rho=0.5, alpha=0.5, normalize_ascent=False)}
    for label, algo in variants.items():
        fed.run(algo, 2, progress=False, label=label)
    models = fed.final_models
    assert torch.equal(models["base"], models["alpha0"]) and torch.equal(models["base"], models["rho0"])
    assert not torch.allclose(models["base"], models["sam"], atol=1e-4)
    assert not torch.allclose(models["base"], models["plain"], atol=1e-4)


def test_dual_variable_accumulates_local_updates(digits_data):
    """h_i = sum over the client's rounds of (x_{i,K} - x^t) = -lambda * lambda_hat_i."""
    model = mlp(64, 10, hidden=(8,))
    ctx = LocalContext(model, 0.1, 0.0, FedSpeed().loss, eager=True)
    algo = FedSpeed(mu=0.2, rho=0.05, server="paper")
    xb, yb = digits_data.x_train[:64].view(4, 16, 1, 8, 8), digits_data.y_train[:64].view(4, 16)
    batches = Batches(xb, yb)
    x, state, total = model.init(0), algo.init_client_state(model.init(0)), torch.zeros(model.n_params)
    for _ in range(3):
        message, new_state = algo.client_update({"x": x}, state, batches, ctx)
        local_delta = new_state["h"] - state["h"]
        total = total + local_delta
        assert torch.allclose(new_state["h"], total, atol=1e-6)
        assert torch.allclose(message["delta"], local_delta + new_state["h"], atol=1e-6)  # x_hat - x = x_K + h - x
        x, state = x + 0.5 * message["delta"], new_state


# ------------------------------------------------------------------------------------------- executors
@pytest.mark.parametrize("algorithm", [FedSpeed(), FedSpeed(server="paper", normalize_ascent=False, alpha=0.9)],
                         ids=str)
@pytest.mark.parametrize("epochs", [None, 1.0])
def test_loop_and_batched_executors_agree(digits_data, algorithm, epochs):
    results = []
    for executor in (LoopExecutor(), BatchedExecutor(chunk_size=2)):
        f = Federation(digits_data, two_class_split(digits_data.y_train.numpy(), 6), mlp(64, 10, hidden=(16,)), local_steps=3,
                       local_epochs=epochs, batch_size=16, participation=0.5, executor=executor, seed=2)
        results.append(f.run(algorithm, 3, progress=False).test_loss.to_numpy())
        results.append(f.final_models[str(algorithm)])
    assert np.allclose(results[0], results[2], atol=1e-5)
    assert torch.allclose(results[1], results[3], atol=1e-5)


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, message", [
    ({"mu": -0.1}, "mu must be a finite number >= 0"),
    ({"rho": -1.0}, "rho must be a finite number >= 0"),
    ({"alpha": 1.5}, r"alpha must be in \[0, 1\]"),
    ({"alpha": -0.1}, r"alpha must be in \[0, 1\]"),
    ({"server": "fedavg"}, "server must be one of"),
])
def test_bad_hyperparameters_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FedSpeed(**kwargs)


def test_str_names_changed_hyperparameters():
    assert str(FedSpeed()) == "FedSpeed"
    assert str(FedSpeed(rho=0.0, server="paper")) == "FedSpeed(rho=0.0, server=paper)"


# ------------------------------------------------------------------------------------------ control panel


@pytest.mark.parametrize("correction, expected", [(True, HOLDS), (False, FAILS)])
def test_chapter_claim_rests_on_the_prox_correction(digits_data, correction, expected):
    """Chapter 13's claim "FedSpeed needs fewer rounds than FedProx", through the chapter's own protocol code on a
    tiny task: it holds with the prox-correction and fails once the correction is switched off."""
    methods = {"FedProx": lambda: FedProx(mu=0.1), "FedSpeed": lambda: FedSpeed(correction=correction)}
    _, table = ch13_fedspeed.claims(digits_data, methods, rounds=15, tune_rounds=1, target=0.7,
                                    task={"n_clients": 6, "local_steps": 10}, lrs=(0.3,), server_lrs=None,
                                    controls=False)
    assert table.set_index("claim").loc["FedSpeed needs fewer rounds than FedProx", "verdict"] == expected
