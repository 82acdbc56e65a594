"""Server optimizers: FedAvgM's momentum and FedAdam's Alg. 2 step, checked by hand on small vectors."""
import torch

from flbook.algorithms import FedAdam, FedAvgM


def test_fedadam_starts_its_second_moment_at_tau_squared():
    """Reddi et al., Alg. 2: v_{-1} >= tau^2; the first step for |Delta| ~ tau is then well below eta."""
    algo = FedAdam(server_lr=0.1, beta1=0.9, beta2=0.99, tau=1e-2)
    x = torch.zeros(3, dtype=torch.float64)
    state = algo.init_server_state(x, n_clients=4)
    assert torch.equal(state["v"], torch.full_like(x, 1e-4)) and torch.equal(state["m"], torch.zeros_like(x))
    delta = torch.tensor([1e-2, -1e-3, 0.0], dtype=torch.float64)
    x1, state = algo.server_step(x, delta, state)
    m = 0.1 * delta
    v = 0.99 * 1e-4 + 0.01 * delta.square()
    assert torch.allclose(x1, 0.1 * m / (v.sqrt() + 1e-2), rtol=1e-12)
    assert x1.abs().max() < 0.1 * 0.1 / (1 + 0.99 ** 0.5)  # bounded by eta (1-b1) |Delta| / ((1 + sqrt b2) tau)
    from_zero = 0.1 * 1e-3 / ((0.01 * 1e-4) ** 0.5 + 1e-2)  # the first coordinate's step from v_{-1} = 0: 0.0091
    assert x1[0] < 0.6 * from_zero


def test_fedadam_second_step_uses_the_first_moments():
    algo = FedAdam(server_lr=0.1, tau=1e-3)
    x = torch.zeros(2, dtype=torch.float64)
    state = algo.init_server_state(x, n_clients=2)
    d1, d2 = torch.tensor([0.2, -0.1], dtype=torch.float64), torch.tensor([0.1, 0.3], dtype=torch.float64)
    x1, state = algo.server_step(x, d1, state)
    x2, state = algo.server_step(x1, d2, state)
    m = 0.9 * (0.1 * d1) + 0.1 * d2
    v = 0.99 * (0.99 * 1e-6 + 0.01 * d1.square()) + 0.01 * d2.square()
    assert torch.allclose(state["m"], m) and torch.allclose(state["v"], v)
    assert torch.allclose(x2, x1 + 0.1 * m / (v.sqrt() + 1e-3))


def test_fedavgm_accumulates_momentum_before_the_server_step():
    algo = FedAvgM(server_lr=0.5, momentum=0.9)
    x = torch.zeros(2, dtype=torch.float64)
    state = algo.init_server_state(x, n_clients=2)
    d = torch.tensor([1.0, -2.0], dtype=torch.float64)
    x1, state = algo.server_step(x, d, state)
    x2, state = algo.server_step(x1, d, state)
    assert torch.allclose(state["v"], 1.9 * d) and torch.allclose(x2, 0.5 * d + 0.5 * 1.9 * d)
