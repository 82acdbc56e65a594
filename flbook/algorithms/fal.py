"""FAL: federated adversarial learning, FedAvg whose clients train on PGD adversarial examples of their data.

Paper: Li, Song, Yang, "Federated Adversarial Learning: A Framework with Convergence Analysis", ICML 2023,
https://arxiv.org/abs/2208.03635 (no official code). Each local step k of client c first maximises the loss
inside the L-infinity ball B(x, epsilon) by S steps of projected gradient ascent (Madry et al., ICLR 2018),

    x~ <- clip_[lo, hi]( Pi_B(x, eps)( x~ + alpha sign(grad_x l(f_U(x~), y)) ) ),   x~ starting at x,

then takes the SGD step U <- U - eta_l grad_U l(f_U(x~), y); the server applies the mean client change with a
global step (FedAvg's `server_lr`). Choices (UNCONFIRMED in the card): PGD starts at x (no random start), so
epsilon = 0 or S = 0 is FedAvg bit for bit; inputs live in [lo, hi] = [0, 1]. Everything is a pure tensor
function, so the federation batches the clients, PGD included, under vmap. `RobustAccuracy` is the evaluation
side: a federation metric that records the PGD test accuracy of any run at every evaluation.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Batches, LocalContext, Tensors
from .fedavg import FedAvg


def pgd(loss, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, epsilon: float, step_size: float, steps: int,
        lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """L-infinity PGD from x: `steps` signed-gradient ascent steps of `step_size`, projected on B(x, epsilon) and
    the input range [lo, hi]; `loss(theta, x, y)` is the mean loss. Returns x~ of x's shape."""
    x_adv = x
    for _ in range(steps):
        g = torch.func.grad(lambda z: loss(theta, z, y))(x_adv)  # (B, *input_shape)
        x_adv = torch.clamp(x + torch.clamp(x_adv + step_size * g.sign() - x, -epsilon, epsilon), lo, hi)
    return x_adv


@dataclass(kw_only=True)
class FAL(FedAvg):
    """FedAvg with PGD adversarial training inside every local step (epsilon = 0: FedAvg)."""

    epsilon: float = 0.1
    step_size: float = 0.025  # alpha = epsilon / 4 (the card's choice)
    steps: int = 5  # S, PGD steps per local step
    lo: float = 0.0
    hi: float = 1.0
    name = "FAL"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.epsilon >= 0 or not self.step_size >= 0:
            raise ValueError(f"epsilon and step_size must be >= 0, got {self.epsilon} and {self.step_size}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"steps (PGD steps per local step) must be an integer >= 0, got {self.steps!r}")

    def client_update(self, down: Tensors, client_state: Tensors, batches: Batches,
                      ctx: LocalContext) -> tuple[Tensors, Tensors]:
        if self.epsilon == 0 or self.steps == 0:
            return super().client_update(down, client_state, batches, ctx)  # no adversary: FedAvg's local SGD
        x = down["x"]

        def step(u: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
            x_adv = pgd(ctx.loss, u, xb, yb, self.epsilon, self.step_size, self.steps, self.lo, self.hi)  # inner max
            return ctx.sgd_step(u, x_adv, yb)  # outer min at the adversarial points

        return {"delta": self.local_sgd(x, step, batches) - x}, client_state


@torch.no_grad()
def robust_accuracy(model, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, epsilon: float,
                    step_size: float | None = None, steps: int = 10, loss=None, chunk: int = 4096) -> float:
    """Test accuracy of `theta` on PGD-`steps` adversarial examples at radius epsilon (step epsilon / 4 by default),
    crafted `chunk` samples at a time (each sample's attack depends on that sample only)."""
    loss = loss or (lambda t, xb, yb: torch.nn.functional.cross_entropy(model(t, xb), yb))
    step_size = epsilon / 4 if step_size is None else step_size
    hits = 0
    for i in range(0, len(y), chunk):
        xb, yb = x[i:i + chunk], y[i:i + chunk]
        with torch.enable_grad():
            x_adv = pgd(loss, theta, xb, yb, epsilon, step_size, steps)  # (b, *input_shape)
        hits += int((model(theta, x_adv).argmax(1) == yb).sum())
    return hits / len(y)


@dataclass(frozen=True)
class RobustAccuracy:
    """A history metric (`Federation(..., metrics=[RobustAccuracy(eps)])`): the test accuracy under PGD-`steps` at
    radius epsilon, as column `robust_acc` beside `test_acc` at every evaluation, whatever algorithm trains."""

    epsilon: float
    steps: int = 10
    step_size: float | None = None  # None: epsilon / 4
    column: str = "robust_acc"

    def __post_init__(self) -> None:
        if not self.epsilon >= 0 or not (self.step_size is None or self.step_size >= 0):
            raise ValueError(f"epsilon and step_size must be >= 0, got {self.epsilon} and {self.step_size}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"steps (PGD steps of the test attack) must be an integer >= 0, got {self.steps!r}")

    def __call__(self, federation, theta: torch.Tensor) -> dict[str, float]:
        return {self.column: robust_accuracy(federation.model, theta, federation.x_test, federation.y_test,
                                             self.epsilon, self.step_size, self.steps)}
