"""Stale updates converted into fresh ones by gradient inversion, and the usual ways of living with them.

Paper: Wang & Gao, "Tackling the Unlimited Staleness in Federated Learning with Intertwined Data and Device
Heterogeneities", 2023, https://arxiv.org/abs/2309.13536; code github.com/pittisl/FL-with-intertwined-heterogeneity
(fixed.py, inversefed/reconstruction_algorithms.py). A client that trained on x^{t-tau} sends
Delta_stale = y_i - x^{t-tau}. The server finds a surrogate dataset D_rec = (X, Y~) whose local training from
x^{t-tau} reproduces Delta_stale,
    min_{X, Y~} || U(x^{t-tau}; X, Y~) - Delta_stale ||_1,   U(w; D) = K full-batch GD steps on D from w, minus w,
then applies the fresh estimate U(x^t; D_rec) instead. Baselines (the code's `dc` switch): apply Delta_stale
directly, scale it by 2^{-tau/20}, correct it to first order (DC-ASGD), or drop it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import validation as V
from ..models import FlatModel
from .base import AsyncInfo, Tensors, size_weights
from .fedavg import FedAvg

STALE_POLICIES = ("direct", "weighted", "dc-asgd", "drop")
COSTS = ("l1", "l2")


def unrolled_update(model: FlatModel, theta: torch.Tensor, x: torch.Tensor, label_logits: torch.Tensor,
                    lr: float, steps: int) -> torch.Tensor:
    """U(theta; X, Y~): `steps` full-batch GD steps on soft labels softmax(Y~) from theta, minus theta (P,).

    Differentiable with respect to theta, X and Y~ (the code's `loss_steps`)."""
    targets = label_logits.softmax(-1)  # (n_rec, C)
    w = theta if theta.requires_grad else theta.detach().requires_grad_()
    y = w
    for _ in range(steps):
        loss = F.cross_entropy(model(y, x), targets)
        (g,) = torch.autograd.grad(loss, y, create_graph=True)  # keep the graph: we differentiate through GD
        y = y - lr * g
    return y - w


def update_distance(u: torch.Tensor, delta: torch.Tensor, cost: str = "l1") -> torch.Tensor:
    """Relative distance ||u - delta|| / ||delta|| in the l1 (the code's choice) or l2 norm."""
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {COSTS}, got {cost!r}")
    order = 1 if cost == "l1" else 2
    return torch.linalg.vector_norm(u - delta, order) / torch.linalg.vector_norm(delta, order).clamp_min(1e-12)


def invert_update(model: FlatModel, theta_old: torch.Tensor, delta: torch.Tensor, x_rec: torch.Tensor,
                  label_logits: torch.Tensor, *, lr: float, steps: int, iterations: int = 100,
                  step_size: float = 0.1, cost: str = "l1", bounds: tuple[float, float] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Gradient inversion: fit (X, Y~), from the given start, so that U(theta_old; X, Y~) matches `delta`.

    Adam on X and Y~, X projected back into `bounds` (the input box, e.g. (0, 1) for pixels) after each
    step; the code also signs X's gradient and decays the step. Returns the fitted X, Y~ and the relative
    distance before each iteration."""
    x = x_rec.detach().clone().requires_grad_()
    y = label_logits.detach().clone().requires_grad_()
    theta_old, delta = theta_old.detach(), delta.detach()
    optimizer = torch.optim.Adam([x, y], lr=step_size)
    losses = []
    for _ in range(iterations):
        optimizer.zero_grad()
        loss = update_distance(unrolled_update(model, theta_old, x, y, lr, steps), delta, cost)
        loss.backward()
        optimizer.step()
        if bounds is not None:
            with torch.no_grad():
                x.clamp_(*bounds)
        losses.append(loss.item())
    return x.detach(), y.detach(), losses


def label_logits_from_update(model: FlatModel, delta: torch.Tensor, n_classes: int, scale: float = 4.0) -> torch.Tensor:
    """A start for Y~ (C,): the output bias rises for the labels a client holds (iDLG, Zhao et al. 2020).

    Needs the model's last parameter to be the output layer's bias, as in flbook's models; zeros otherwise."""
    if not model.names[-1].endswith("bias") or tuple(model.shapes[-1]) != (n_classes,):
        return delta.new_zeros(n_classes)
    bias = delta[-n_classes:]  # -lr * sum_k mean_j (softmax_j - onehot_j): positive for the held classes
    return scale * bias / bias.abs().max().clamp_min(1e-12)


@dataclass
class StaleFedAvg(FedAvg):
    """FedAvg that applies late updates when they arrive, handled by `policy` (the paper's baselines)."""

    policy: str = "direct"  # direct | weighted: 2^(-tau/half_life) | dc-asgd | drop
    half_life: float = 20.0  # the code's 2^{-tau/20}
    dc_lambda: float = 4.0  # DC-ASGD: Delta - lambda Delta * Delta * (x^t - x^{t-tau}), the code's lambda
    period: float = 1.0  # one round per time unit: the server aggregates what has arrived by each deadline
    name = "Stale FedAvg"
    asynchronous_only = True  # staleness and start models come from the asynchronous driver

    def __post_init__(self) -> None:
        super().__post_init__()
        V.choice("policy", self.policy, STALE_POLICIES)
        self.half_life = V.positive("half_life", self.half_life)
        self.dc_lambda = V.non_negative("dc_lambda", self.dc_lambda)
        self.period = V.positive("period", self.period)

    def aggregation_weights(self, info: AsyncInfo) -> torch.Tensor:
        """Plain average over the round's updates; stale ones shrunk ('weighted') or left out ('drop')."""
        p = size_weights(info)
        stale = info.staleness.to(p.dtype)
        if self.policy == "weighted":
            p = p * 2.0 ** (-stale / self.half_life)
        if self.policy == "drop":
            fresh = p * (stale == 0)
            p = fresh / fresh.sum().clamp_min(1e-12)
        return p.float()

    def aggregate(self, x: torch.Tensor, server_state: Tensors, messages: Tensors, weights: torch.Tensor,
                  info: AsyncInfo) -> tuple[torch.Tensor, Tensors]:
        """x + sum_i d_i Delta_i, each Delta_i first corrected to first order under 'dc-asgd'."""
        delta = messages["delta"]  # (M, P)
        if self.policy == "dc-asgd":  # first-order delay compensation, Zheng et al. 2017, as in fixed.py
            delta = delta - self.dc_lambda * delta * delta * (x - info.start_models)
        return super().aggregate(x, server_state, {**messages, "delta": delta}, weights, info)


@dataclass
class GradientInversion(FedAvg):
    """Convert each stale update into a fresh one through a surrogate dataset recovered by gradient inversion."""

    n_rec: int = 16  # surrogate samples per client (the code: 256)
    iterations: int = 20  # Adam steps per conversion, warm-started from the client's previous D_rec
    step_size: float = 0.05
    cost: str = "l1"
    bounds: tuple[float, float] | None = None  # the input box the surrogate samples must stay in
    guard: bool = True  # keep the stale update when the conversion changes it less than the inversion's own error
    period: float = 1.0
    seed: int = 0
    name = "GI conversion"
    asynchronous_only = True

    def __post_init__(self) -> None:
        super().__post_init__()
        V.choice("cost", self.cost, COSTS)
        self.n_rec = V.integer("n_rec", self.n_rec, 1)
        self.iterations = V.integer("iterations", self.iterations, 1)
        self.step_size = V.positive("step_size", self.step_size)
        self.period = V.positive("period", self.period)
        self.seed = V.seed(self.seed)
        if self.bounds is not None:
            low, high = (V.finite(f"bounds[{i}]", b) for i, b in enumerate(self.bounds))
            if not low < high:
                raise ValueError(f"bounds must be (low, high) with low < high, got {self.bounds}")
            self.bounds = (low, high)

    def surrogates(self, server_state: Tensors, info: AsyncInfo) -> Tensors:
        """Every client's surrogate data X (N, n_rec, ...), uniform in `bounds` (else N(0, 1)), labels Y~ and counts."""
        if "x_rec" in server_state:
            return server_state
        g = torch.Generator(device=info.clients.device).manual_seed(self.seed)
        shape = (info.n_clients, self.n_rec)
        x_rec = torch.randn(*shape, *info.input_shape, generator=g, device=g.device)
        if self.bounds is not None:
            low, high = self.bounds
            x_rec = low + (high - low) * torch.rand(*shape, *info.input_shape, generator=g, device=g.device)
        return {**server_state, "x_rec": x_rec,
                "y_rec": torch.randn(*shape, info.n_classes, generator=g, device=g.device),
                "fitted": torch.zeros(info.n_clients, dtype=torch.long, device=g.device),  # inversions per client
                "converted": torch.zeros((), dtype=torch.long, device=g.device)}

    def convert(self, x: torch.Tensor, start: torch.Tensor, delta: torch.Tensor, x_rec: torch.Tensor,
                y_rec: torch.Tensor, info: AsyncInfo, steps: int
                ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """Fit D_rec to one stale update from `start`; (U(x^t; D_rec) or None when guarded off, fitted X, fitted Y~)."""
        model, lr = info.ctx.model, info.ctx.lr
        x_rec, y_rec, _ = invert_update(model, start, delta, x_rec, y_rec, lr=lr, steps=steps,
                                        iterations=self.iterations, step_size=self.step_size, cost=self.cost,
                                        bounds=self.bounds)
        fresh = unrolled_update(model, x, x_rec, y_rec, lr, steps).detach()  # U(x^t; D_rec)
        residual = update_distance(unrolled_update(model, start, x_rec, y_rec, lr, steps), delta, self.cost)
        keep_stale = self.guard and update_distance(fresh, delta, self.cost) <= residual
        return (None if keep_stale else fresh), x_rec, y_rec

    def aggregate(self, x: torch.Tensor, server_state: Tensors, messages: Tensors, weights: torch.Tensor,
                  info: AsyncInfo) -> tuple[torch.Tensor, Tensors]:
        """x + sum_i d_i Delta_i, with every stale Delta_i replaced by its conversion U(x^t; D_rec)."""
        state = self.surrogates(server_state, info)
        x_rec, y_rec, fitted = state["x_rec"].clone(), state["y_rec"].clone(), state["fitted"].clone()
        converted = state["converted"]
        delta = messages["delta"].clone()  # (M, P)
        for m in (info.staleness > 0).nonzero().flatten().tolist():
            i = int(info.clients[m])
            if fitted[i] == 0:  # first inversion of this client: start the labels where its update points
                y_rec[i] = y_rec[i] + label_logits_from_update(info.ctx.model, delta[m], info.n_classes)
            fitted[i] += 1
            fresh, x_rec[i], y_rec[i] = self.convert(x, info.start_models[m], delta[m], x_rec[i], y_rec[i], info,
                                                     int(info.steps[m]))
            if fresh is not None:
                delta[m] = fresh
                converted = converted + 1
        state = {**state, "x_rec": x_rec, "y_rec": y_rec, "fitted": fitted, "converted": converted}
        return super().aggregate(x, state, {**messages, "delta": delta}, weights, info)
