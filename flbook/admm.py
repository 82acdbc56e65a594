"""Federated weighted least squares over noisy links: ADMM-based FL with one or two receptions, and FedAvg.

Paper: Lari, Arablouei, Gogineni, Werner, "Noise-Robust and Resource-Efficient ADMM-based Federated Learning",
arXiv:2409.13451 (2024), https://arxiv.org/abs/2409.13451. The paper's exact update equations were not
available and could not be reconstructed: `DualFreeADMM` eliminates the dual variable as the paper describes, but
the result is `StandardADMM` re-parameterised; only its continual local updates are new (see chapter 31).

Problem: min_w sum_k J_k(w), J_k(w) = 1/2 (y_k - X_k w)^T W_k (y_k - X_k w), with A_k = X_k^T W_k X_k and
b_k = X_k^T W_k y_k; the exact solution is w* = (sum_k A_k)^{-1} sum_k b_k. Each iteration the server schedules
every client independently with probability p; every vector sent gets additive white Gaussian noise
(std `downlink_std` from the server, `uplink_std` to it). All tensors carry a leading dimension R of independent
runs and a client dimension K, so one call simulates R Monte Carlo runs of all clients at once.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from . import validation as V
from .algorithms.base import Tensors
from .rounds import DivergenceError
from .runtime import cpu_threads


@dataclass(frozen=True)
class WLSProblem:
    """K clients' sufficient statistics A_k = X_k^T W_k X_k (K, L, L) and b_k = X_k^T W_k y_k (K, L)."""

    A: torch.Tensor  # (K, L, L)
    b: torch.Tensor  # (K, L)

    @property
    def n_clients(self) -> int:
        return self.A.shape[0]

    @property
    def dim(self) -> int:
        return self.A.shape[1]

    def solution(self) -> torch.Tensor:
        """The exact WLS solution w* = (sum_k A_k)^{-1} sum_k b_k, shape (L,)."""
        return torch.linalg.solve(self.A.sum(0), self.b.sum(0))

    def local_solutions(self) -> torch.Tensor:
        """Each client's own WLS solution A_k^{-1} b_k, shape (K, L)."""
        return torch.linalg.solve(self.A, self.b)

    def prox_inverse(self, rho: float) -> torch.Tensor:
        """N_k = (A_k + rho I)^{-1}, shape (K, L, L): the matrix of every ADMM local step."""
        return torch.linalg.inv(self.A + rho * torch.eye(self.dim, dtype=self.A.dtype))


def wls_problem(n_clients: int = 20, dim: int = 8, samples: int = 30, heterogeneity: float = 0.5,
                weight_range: tuple[float, float] = (0.5, 2.0), noise: float = 0.1, seed: int = 0) -> WLSProblem:
    """Synthetic federated WLS: x ~ N(0, I), y_k = X_k (w_o + heterogeneity d_k) + noise, W_k diagonal in weight_range.

    Each client's labels follow its own true model, so `heterogeneity` > 0 keeps local solutions away from w*."""
    n_clients, dim, samples = (V.integer(k, v, 1) for k, v in (("n_clients", n_clients), ("dim", dim),
                                                                ("samples", samples)))
    heterogeneity, noise = V.non_negative("heterogeneity", heterogeneity), V.non_negative("noise", noise)
    low, high = (V.finite(f"weight_range[{i}]", w) for i, w in enumerate(weight_range))
    seed = V.seed(seed)
    if not 0 < low <= high:
        raise ValueError(f"weight_range must satisfy 0 < low <= high, got {weight_range}")
    g = torch.Generator().manual_seed(seed)
    kw = {"generator": g, "dtype": torch.float64}
    x = torch.randn(n_clients, samples, dim, **kw)  # (K, n, L)
    w_true = torch.randn(dim, **kw) + heterogeneity * torch.randn(n_clients, dim, **kw)  # (K, L) per-client models
    y = (x @ w_true[..., None]).squeeze(-1) + noise * torch.randn(n_clients, samples, **kw)  # (K, n)
    weights = low + (high - low) * torch.rand(n_clients, samples, **kw)  # (K, n) diagonal of W_k
    A = torch.einsum("kni,kn,knj->kij", x, weights, x)  # (K, L, L)
    b = torch.einsum("kni,kn,kn->ki", x, weights, y)  # (K, L)
    return WLSProblem(A, b)


def msd(w: torch.Tensor, w_star: torch.Tensor) -> torch.Tensor:
    """Mean-square deviation ||w - w*||^2 over the last dimension (average over runs for the paper's MSD)."""
    return (w - w_star).square().sum(-1)


def matvec(M: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Per-client matrix times vector: (K, L, L) x (R, K, L) -> (R, K, L)."""
    return torch.einsum("kij,rkj->rki", M, v)


@dataclass
class NoisyLinks:
    """Additive white Gaussian noise on every vector sent (std per entry), drawn from one seeded generator."""

    downlink_std: float
    uplink_std: float
    generator: torch.Generator

    def _noisy(self, v: torch.Tensor, std: float) -> torch.Tensor:
        return v if std == 0 else v + std * torch.randn(v.shape, generator=self.generator, dtype=v.dtype)

    def down(self, w: torch.Tensor, n_clients: int) -> torch.Tensor:
        """What each client receives of the global model (R, L): its own noisy copy, (R, K, L)."""
        return self._noisy(w[:, None, :].expand(-1, n_clients, -1), self.downlink_std)

    def up(self, u: torch.Tensor) -> torch.Tensor:
        """What the server receives of the clients' uploads (R, K, L)."""
        return self._noisy(u, self.uplink_std)


def _where(scheduled: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Per client: `new` where scheduled (R, K), else `old`; vectors (R, K, L)."""
    return torch.where(scheduled[..., None], new, old)


def _positive_rho(rho: float) -> float:
    return V.positive("rho", rho)


class WLSMethod(ABC):
    """A federated solver of the WLS problem: per-run, per-client state and one iteration over all clients at once."""

    name: ClassVar[str] = "method"
    receptions: ClassVar[int] = 1  # global-model receptions per scheduled client and iteration

    def init_state(self, problem: WLSProblem, w: torch.Tensor) -> Tensors:
        """State at iteration 0 for runs starting from the global model w (R, L)."""
        return {"u": w[:, None, :].expand(-1, problem.n_clients, -1).clone()}  # server's last upload per client

    @abstractmethod
    def iteration(self, problem: WLSProblem, state: Tensors, w: torch.Tensor, scheduled: torch.Tensor,
                  links: NoisyLinks) -> tuple[torch.Tensor, Tensors]:
        """One iteration with the scheduled clients (R, K) bool; returns the new global model (R, L) and state."""


@dataclass
class StandardADMM(WLSMethod):
    """Standard ADMM-based FL (the card's form): one noisy reception of the global model serves both steps.

    Consensus ADMM (Boyd et al. 2011, Sec. 7.1) with the dual step of the last participation taken when the next
    global model arrives: a scheduled client receives w_hat = w_n + zeta, takes the dual step
    z_k += rho (w_k - w_hat), the primal step w_k = N_k (b_k - z_k + rho w_hat) and uploads u_k = w_k + z_k / rho;
    the server averages the last upload of every client, w_{n+1} = mean_k u_k."""

    rho: float = 30.0  # penalty; of the order of the A_k's eigenvalues suits the default problem
    name = "ADMM, single reception"

    def __post_init__(self) -> None:
        self.rho = _positive_rho(self.rho)

    def init_state(self, problem: WLSProblem, w: torch.Tensor) -> Tensors:
        u = super().init_state(problem, w)["u"]
        return {"u": u, "z": torch.zeros_like(u), "w_local": u.clone(), "N": problem.prox_inverse(self.rho)}

    def iteration(self, problem: WLSProblem, state: Tensors, w: torch.Tensor, scheduled: torch.Tensor,
                  links: NoisyLinks) -> tuple[torch.Tensor, Tensors]:
        rho, N = self.rho, state["N"]
        received = links.down(w, problem.n_clients)  # (R, K, L) one noisy copy of w_n per client
        z = state["z"] + rho * (state["w_local"] - received)  # dual step with w_hat_n
        w_local = matvec(N, problem.b - z + rho * received)  # primal step with the same w_hat_n
        u = _where(scheduled, links.up(w_local + z / rho), state["u"])
        return u.mean(1), {**state, "u": u, "z": _where(scheduled, z, state["z"]),
                           "w_local": _where(scheduled, w_local, state["w_local"])}


@dataclass
class DoubleReceptionADMM(WLSMethod):
    """ADMM-based FL in the textbook order with two noisy receptions per iteration, each copy used once.

    A scheduled client receives w_n, takes the primal step w_k = N_k (b_k - z_k + rho w_hat_n) and uploads
    u_k = w_k + z_k / rho; the server averages the last upload of every client and sends w_{n+1} back to the same
    clients, whose dual step z_k += rho (w_k - w_hat'_{n+1}) uses this second, independently noisy copy. Without
    noise and at p = 1 it is `StandardADMM`; with noise it pays for the extra reception."""

    rho: float = 30.0
    name = "ADMM, double reception"
    receptions = 2

    def __post_init__(self) -> None:
        self.rho = _positive_rho(self.rho)

    def init_state(self, problem: WLSProblem, w: torch.Tensor) -> Tensors:
        u = super().init_state(problem, w)["u"]
        return {"u": u, "z": torch.zeros_like(u), "N": problem.prox_inverse(self.rho)}

    def iteration(self, problem: WLSProblem, state: Tensors, w: torch.Tensor, scheduled: torch.Tensor,
                  links: NoisyLinks) -> tuple[torch.Tensor, Tensors]:
        rho, z, N = self.rho, state["z"], state["N"]
        w_local = matvec(N, problem.b - z + rho * links.down(w, problem.n_clients))  # primal step with w_n
        u = _where(scheduled, links.up(w_local + z / rho), state["u"])
        w = u.mean(1)  # (R, L) stale uploads stand in for unscheduled clients
        z = _where(scheduled, z + rho * (w_local - links.down(w, problem.n_clients)), z)  # dual step with w_{n+1}
        return w, {**state, "u": u, "z": z}


@dataclass
class DualFreeADMM(WLSMethod):
    """`StandardADMM` with the dual variable eliminated, plus the paper's continual local updates (optional).

    With v_k = w_k + z_k / rho (the upload), the dual step gives z_k / rho = v_k - w_hat, so the client's whole
    state is v_k and one received model drives the update v_k <- v_k - w_hat + N_k (b_k + rho (2 w_hat - v_k)).
    This is a re-parameterisation: with `continual=False` it equals `StandardADMM` to rounding, noise and
    scheduling included. It is not the paper's noise-robust update, whose equations could not be reconstructed.
    `continual=True`: clients that are not scheduled repeat the update with the last model they received."""

    rho: float = 30.0
    continual: bool = True
    name = "dual-free ADMM"

    def __post_init__(self) -> None:
        self.rho = _positive_rho(self.rho)

    def init_state(self, problem: WLSProblem, w: torch.Tensor) -> Tensors:
        u = super().init_state(problem, w)["u"]
        return {"u": u, "v": u.clone(), "received": u.clone(), "N": problem.prox_inverse(self.rho)}

    def iteration(self, problem: WLSProblem, state: Tensors, w: torch.Tensor, scheduled: torch.Tensor,
                  links: NoisyLinks) -> tuple[torch.Tensor, Tensors]:
        v, N = state["v"], state["N"]
        received = _where(scheduled, links.down(w, problem.n_clients), state["received"])  # (R, K, L)
        v_new = v - received + matvec(N, problem.b + self.rho * (2 * received - v))
        u = _where(scheduled, links.up(v_new), state["u"])
        active = scheduled | self.continual  # continual local updates for the unscheduled
        return u.mean(1), {**state, "u": u, "v": _where(active, v_new, v), "received": received}


@dataclass
class FedAvgWLS(WLSMethod):
    """FedAvg on the WLS problem: `local_steps` gradient steps on J_k from the received model, then the average.

    Paper: McMahan et al., AISTATS 2017 (Algorithm 1), with full-batch local gradients A_k w - b_k."""

    lr: float = 0.002  # stable while lr < 2 / max eigenvalue of the A_k
    local_steps: int = 5
    name = "FedAvg"

    def __post_init__(self) -> None:
        self.lr = V.positive("lr", self.lr)
        self.local_steps = V.integer("local_steps", self.local_steps, 1)

    def init_state(self, problem: WLSProblem, w: torch.Tensor) -> Tensors:
        return {}  # stateless: the server averages only this iteration's uploads

    def iteration(self, problem: WLSProblem, state: Tensors, w: torch.Tensor, scheduled: torch.Tensor,
                  links: NoisyLinks) -> tuple[torch.Tensor, Tensors]:
        y = links.down(w, problem.n_clients)  # (R, K, L)
        for _ in range(self.local_steps):
            y = y - self.lr * (matvec(problem.A, y) - problem.b)
        u = links.up(y)
        weights = scheduled.to(u.dtype) / scheduled.sum(1, keepdim=True).clamp(min=1)  # (R, K) over the scheduled
        w_new = torch.einsum("rk,rkl->rl", weights, u)
        return torch.where(scheduled.any(1, keepdim=True), w_new, w), state


def simulate(method: WLSMethod, problem: WLSProblem, iterations: int, *, participation: float = 1.0,
             downlink_std: float = 0.0, uplink_std: float = 0.0, runs: int = 1, seed: int = 0) -> torch.Tensor:
    """MSD of the global model at iterations 0..T, averaged over `runs` independent runs, shape (T + 1,).

    Every method run with the same seed sees the same scheduling; the link noise has its own seeded stream."""
    iterations, runs = V.integer("iterations", iterations, 1), V.integer("runs", runs, 1)
    participation = V.probability("participation", participation, zero=False)
    downlink_std, uplink_std = V.non_negative("downlink_std", downlink_std), V.non_negative("uplink_std", uplink_std)
    seed = V.seed(seed)
    schedule_seed, noise_seed = np.random.SeedSequence(seed).generate_state(2)
    schedule = torch.Generator().manual_seed(int(schedule_seed))
    links = NoisyLinks(downlink_std, uplink_std, torch.Generator().manual_seed(int(noise_seed)))
    w_star = problem.solution()
    w = torch.zeros(runs, problem.dim, dtype=problem.A.dtype)  # w_0 = 0
    state = method.init_state(problem, w)
    curve = [msd(w, w_star).mean()]
    with cpu_threads(1):  # tiny matrices: extra threads only add synchronisation
        for _ in range(iterations):
            scheduled = torch.rand(runs, problem.n_clients, generator=schedule) < participation  # (R, K)
            w, state = method.iteration(problem, state, w, scheduled, links)
            curve.append(msd(w, w_star).mean())
            if not torch.isfinite(curve[-1]):  # report where it first happens, never a NaN curve
                raise DivergenceError(f"{method.name} diverged at iteration {len(curve) - 1} (non-finite global "
                                      f"model): its steps are too large for this problem; {_advice(method)}")
    return torch.stack(curve)


def _advice(method: WLSMethod) -> str:
    """What to change when `method` diverges."""
    if isinstance(method, FedAvgWLS):
        return f"try a smaller lr than {method.lr:g} (stable below 2 / the largest eigenvalue of the A_k)"
    return "try another rho"


# ------------------------------------------------------------------------------------ closed forms (p = 1)
def single_reception_dynamics(problem: WLSProblem, rho: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Single-reception ADMM at p = 1 as e_{n+1} = F e_n + G (zeta_n + 1 (x) mean xi_n), e = v - v*; (F, G), (KL, KL).

    From v_{n+1} = (I - rho N) v_n + (2 rho N - I) w_hat_n + N b with w_hat_n = mean_k v_n + mean xi_n + zeta_{k,n}."""
    K, L = problem.n_clients, problem.dim
    N = problem.prox_inverse(rho)
    eye = torch.eye(L, dtype=N.dtype)
    G = torch.block_diag(*(2 * rho * N - eye))  # (KL, KL)
    average = torch.kron(torch.full((K, K), 1 / K, dtype=N.dtype), eye)  # (KL, KL): every block gets mean_k v_k
    return torch.block_diag(*(eye - rho * N)) + G @ average, G


def steady_state_msd(problem: WLSProblem, rho: float, downlink_std: float, uplink_std: float) -> float:
    """Closed-form steady-state MSD of single-reception ADMM at p = 1: tr(E P E^T) + L s_u^2 / K, P = F P F^T + Q."""
    K, L = problem.n_clients, problem.dim
    F, G = single_reception_dynamics(problem, rho)
    if torch.linalg.eigvals(F).abs().max() >= 1:
        raise ValueError(f"single-reception ADMM does not converge in mean for rho={rho} on this problem")
    eye = torch.eye(L, dtype=F.dtype)
    ones = torch.ones(K, K, dtype=F.dtype)
    inputs = downlink_std**2 * torch.eye(K * L, dtype=F.dtype) + uplink_std**2 / K * torch.kron(ones, eye)  # input cov
    P, power = G @ inputs @ G.T, F
    while power.abs().max() > 1e-30:  # doubling: after j steps P sums the first 2^j terms of sum_i F^i Q F^iT
        P, power = P + power @ P @ power.T, power @ power
    E = torch.kron(torch.full((1, K), 1 / K, dtype=F.dtype), eye)  # (L, KL) the server's average
    return float(torch.trace(E @ P @ E.T) + L * uplink_std**2 / K)
