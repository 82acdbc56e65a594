from dataclasses import dataclass

import pytest
import torch

from flbook.admm import (ADMMFL, FedAvgWLS, NoiseRobustADMM, WLSMethod, _where, matvec, msd, noise_robust_dynamics, simulate,
                         steady_state_msd, wls_problem)

RHO = 30.0


@pytest.fixture(scope="module")
def problem():
    return wls_problem(n_clients=20, dim=8, samples=30, seed=0)


def db(x):
    return float(10 * torch.log10(torch.as_tensor(x)))


def floor_db(method, problem, sigma, participation=1.0, iterations=300, runs=20):
    curve = simulate(method, problem, iterations, participation=participation, downlink_std=sigma, uplink_std=sigma,
                     runs=runs)
    return db(curve[-150:].mean())


@dataclass
class PostponedDualADMM(WLSMethod):
    """ADMM with the dual step taken when the next global model arrives (one reception), dual kept explicitly."""

    rho: float = RHO

    def init_state(self, problem, w):
        u = super().init_state(problem, w)["u"]
        return {"u": u, "z": torch.zeros_like(u), "w_local": u.clone(), "N": problem.prox_inverse(self.rho)}

    def iteration(self, problem, state, w, scheduled, links):
        received = links.down(w, problem.n_clients)
        z = state["z"] + self.rho * (state["w_local"] - received)
        w_local = matvec(state["N"], problem.b - z + self.rho * received)
        u = _where(scheduled, links.up(w_local + z / self.rho), state["u"])
        return u.mean(1), {**state, "u": u, "z": _where(scheduled, z, state["z"]),
                           "w_local": _where(scheduled, w_local, state["w_local"])}


def test_exact_solution_and_problem(problem):
    w_star = problem.solution()
    assert torch.allclose(problem.A.sum(0) @ w_star, problem.b.sum(0))
    one = wls_problem(n_clients=1, seed=3)
    assert torch.allclose(one.solution(), one.local_solutions()[0])
    assert torch.equal(wls_problem(seed=0).A, problem.A) and not torch.equal(wls_problem(seed=1).A, problem.A)
    same_models = wls_problem(heterogeneity=0.0, noise=0.0)
    assert torch.allclose(same_models.local_solutions(), same_models.solution().expand(20, -1))
    assert msd(torch.ones(2, 3), torch.zeros(3)).tolist() == [3.0, 3.0]


def test_noiseless_full_participation_matches_the_closed_form(problem):
    """p = 1, no noise: every ADMM form is exact ADMM, w_n - w* = E F^n e_0, and all converge to w*."""
    curves = [simulate(m, problem, 60) for m in (ADMMFL(RHO), NoiseRobustADMM(RHO), NoiseRobustADMM(RHO, False),
                                                  PostponedDualADMM())]
    for curve in curves[1:]:
        assert torch.allclose(curve, curves[0], rtol=1e-6, atol=1e-24)  # rounding only: e ~ 1e-9 at the end
    F, _ = noise_robust_dynamics(problem, RHO)
    K, L = problem.n_clients, problem.dim
    w_star = problem.solution()
    v_star = w_star + (problem.b - problem.A @ w_star) / RHO  # (K, L)
    e = (torch.zeros(K, L) - v_star).reshape(-1)  # v_0 = w_0 = 0 for every client
    closed = []
    for _ in range(61):
        closed.append(e.view(K, L).mean(0).square().sum())
        e = F @ e
    assert torch.allclose(curves[0], torch.stack(closed), rtol=1e-6, atol=1e-24)
    assert curves[0][-1] < 1e-15


def test_fedavg_with_one_local_step_is_gradient_descent(problem):
    lr, w = 0.004, torch.zeros(problem.dim, dtype=torch.float64)
    expected = []
    for _ in range(6):
        w = w - lr * (problem.A @ w - problem.b).mean(0)
        expected.append(msd(w, problem.solution()))
    assert torch.allclose(simulate(FedAvgWLS(lr, 1), problem, 6)[1:], torch.stack(expected))
    frozen = simulate(FedAvgWLS(), problem, 5, participation=1e-9)  # nobody scheduled: the model stays
    assert torch.all(frozen == frozen[0])


@pytest.mark.parametrize("method", [ADMMFL(RHO), NoiseRobustADMM(RHO), NoiseRobustADMM(RHO, continual=False)],
                         ids=str)
def test_noiseless_random_scheduling_converges_to_wls(problem, method):
    assert simulate(method, problem, 400, participation=0.3)[-1] < 1e-20


def test_dual_elimination_alone_is_a_reparameterisation(problem):
    """Guard: NR-ADMM without continual updates IS ADMM with the dual step postponed to the next reception."""
    for p, sigma in ((1.0, 0.0), (0.4, 0.0), (0.4, 0.05)):
        kw = {"participation": p, "downlink_std": sigma, "uplink_std": sigma, "runs": 3, "seed": 5}
        reference = simulate(PostponedDualADMM(), problem, 80, **kw)
        assert torch.allclose(simulate(NoiseRobustADMM(RHO, continual=False), problem, 80, **kw), reference,
                              rtol=1e-8, atol=1e-24)  # float64 rounding near -240 dB


def test_nr_admm_is_not_standard_admm(problem):
    """Not algebraically the same: trajectories part under scheduling, and noise leaves a different floor."""
    standard = simulate(ADMMFL(RHO), problem, 60, participation=0.5)
    robust = simulate(NoiseRobustADMM(RHO, continual=False), problem, 60, participation=0.5)
    gap = (10 * torch.log10(standard[1:]) - 10 * torch.log10(robust[1:])).abs()
    assert gap.max() > 1.0  # dB, while both converge (previous test)
    assert floor_db(ADMMFL(RHO), problem, 0.01) > floor_db(NoiseRobustADMM(RHO), problem, 0.01) + 1.0


def test_lower_error_floor_and_faster_with_continual_updates_at_partial_participation(problem):
    floors = {name: floor_db(m, problem, 0.01, participation=0.3) for name, m in
              (("standard", ADMMFL(RHO)), ("robust", NoiseRobustADMM(RHO)))}
    assert floors["robust"] < floors["standard"] - 1.0
    iterations_to = {}
    for continual in (True, False):
        curve = simulate(NoiseRobustADMM(RHO, continual), problem, 200, participation=0.3, runs=4)
        iterations_to[continual] = int(torch.nonzero(curve < 1e-6)[0])
    assert iterations_to[True] < 0.8 * iterations_to[False]


def test_continual_updates_change_nothing_at_full_participation(problem):
    kw = {"downlink_std": 0.01, "uplink_std": 0.02, "runs": 2}
    assert torch.equal(simulate(NoiseRobustADMM(RHO), problem, 30, **kw),
                       simulate(NoiseRobustADMM(RHO, False), problem, 30, **kw))


def test_steady_state_msd_matches_simulation_and_grows_as_sigma_squared(problem):
    simulated = floor_db(NoiseRobustADMM(RHO), problem, 0.01, iterations=300, runs=40)
    assert abs(simulated - db(steady_state_msd(problem, RHO, 0.01, 0.01))) < 0.5
    theory = [db(steady_state_msd(problem, RHO, s, s)) for s in (0.01, 0.1)]
    assert abs(theory[1] - theory[0] - 20) < 1e-6
    small, large = (floor_db(ADMMFL(RHO), problem, s, runs=5) for s in (0.001, 0.1))
    assert abs(large - small - 40) < 0.1  # the recursion is linear: MSD floor proportional to sigma^2


def test_same_seed_same_curve(problem):
    kw = {"participation": 0.5, "downlink_std": 0.01, "uplink_std": 0.01, "runs": 2}
    first = simulate(NoiseRobustADMM(RHO), problem, 20, seed=1, **kw)
    assert torch.equal(first, simulate(NoiseRobustADMM(RHO), problem, 20, seed=1, **kw))
    assert not torch.equal(first, simulate(NoiseRobustADMM(RHO), problem, 20, seed=2, **kw))


@pytest.mark.parametrize("call, message", [
    (lambda p: simulate(ADMMFL(), p, 0), r"iterations must be an integer >= 1, got 0"),
    (lambda p: simulate(ADMMFL(), p, 5, participation=0), r"participation must be in \(0, 1\], got 0"),
    (lambda p: simulate(ADMMFL(), p, 5, uplink_std=-1), r"_std must be a finite number >= 0"),
    (lambda p: simulate(ADMMFL(), p, 5, runs=0), r"runs must be an integer >= 1, got 0"),
    (lambda p: wls_problem(n_clients=0), r"n_clients must be an integer >= 1, got 0"),
    (lambda p: wls_problem(weight_range=(0, 1)), r"weight_range must satisfy 0 < low <= high"),
])
def test_bad_arguments_name_the_parameter(problem, call, message):
    with pytest.raises(ValueError, match=message):
        call(problem)


@pytest.mark.parametrize("build, message", [
    (lambda: ADMMFL(rho=0), r"rho must be a finite number > 0, got 0"),
    (lambda: NoiseRobustADMM(rho=-1), r"rho must be a finite number > 0, got -1"),
    (lambda: FedAvgWLS(lr=0), r"lr must be a finite number > 0, got 0"),
    (lambda: FedAvgWLS(local_steps=0), r"local_steps must be an integer >= 1, got 0"),
    (lambda: ADMMFL(rho=float("inf")), r"rho must be a finite number > 0, got inf"),
    (lambda: FedAvgWLS(lr=float("inf")), r"lr must be a finite number > 0, got inf"),
])
def test_bad_hyperparameters_name_the_parameter(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_divergence_is_reported_with_its_iteration_instead_of_a_nan_curve():
    from flbook.rounds import DivergenceError

    with pytest.raises(DivergenceError, match=r"FedAvg diverged at iteration \d+ .*smaller lr than 1"):
        simulate(FedAvgWLS(lr=1.0), wls_problem(), 50)
