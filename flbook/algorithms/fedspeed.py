"""FedSpeed: a proximal term whose bias is removed by a per-client prox-correction, plus a SAM-like ascent step.

Paper: Sun, Shen, Huang, Ding, Tao, "FedSpeed: Larger Local Interval, Less Communication Round, and Higher
Generalization Accuracy", ICLR 2023, https://arxiv.org/abs/2302.10429 (Algorithm 1); official code
https://github.com/woodenchild95/FL-Simulator (client/fedspeed.py, server/FedSpeed.py, optimizer/ESAM.py).

Notation: mu = 1/lambda in the paper (the code's `lamb`). The paper's dual variable lambda_hat_i is stored as
h_i = -lambda * lambda_hat_i = sum over the client's past rounds of (x_{i,K} - x^t), as in the official code;
with h_i the correction term -lambda_hat_i + mu (y - x) of the paper reads mu (y - x + h_i).

Choices where the paper text could not be checked (UNCONFIRMED in the card):
- `server="simulator"` (default) is the official code's rule x+ = avg_S x_{i,K} + avg_all h_i, which stays
  stable under partial participation; `server="paper"` averages the corrected models x_hat_i = x_{i,K} + h_i
  over the round's clients only. Both are the same rule when every client takes part.
- `normalize_ascent=True` is the official ESAM step x + rho g / ||g||; False is the paper's x + rho g.
- Averages are weighted by n_i (over the round's clients, and over all N clients for h), as the federation
  does for every method; with equal client sizes this is the paper's plain mean.
- Omitted: the code's gradient clipping at norm 10 and its learning-rate decay (0.998 per round).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import validation as V
from .base import Algorithm, Batches, LocalContext, RoundInfo, Tensors, descend

SERVER_RULES = ("simulator", "paper")


@dataclass
class FedSpeed(Algorithm):
    """FedSpeed; correction=False, rho=0 is FedProx(mu), and additionally mu=0 is FedAvg, exactly."""

    mu: float = 0.1  # prox coefficient 1/lambda (code: lamb); pulls the local model towards x^t
    rho: float = 0.1  # radius of the extra gradient-ascent step
    alpha: float = 1.0  # mix of the perturbed gradient: g~ = (1 - alpha) g1 + alpha g2 (official code: 1)
    normalize_ascent: bool = True  # official ESAM x + rho g/||g||; False: the paper's x + rho g
    correction: bool = True  # keep the prox-correction h_i; False: a plain proximal term, as in FedProx
    server: str = "simulator"  # "simulator": avg_S x_{i,K} + avg_all h_i;  "paper": avg_S (x_{i,K} + h_i)
    name = "FedSpeed"

    def __post_init__(self) -> None:
        self.mu = V.non_negative("mu", self.mu)
        self.rho = V.non_negative("rho", self.rho)
        self.alpha = V.probability("alpha", self.alpha)
        V.choice("server", self.server, SERVER_RULES)

    def init_server_state(self, x: torch.Tensor, n_clients: int) -> Tensors:
        return {"h_bar": torch.zeros_like(x)}  # sum_i p_i h_i over all N clients, p_i = n_i / n

    def init_client_state(self, x: torch.Tensor) -> Tensors:
        return {"h": torch.zeros_like(x)}  # h_i = -lambda * lambda_hat_i, zero before the first round

    def perturbed_grad(self, y: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor, ctx: LocalContext) -> torch.Tensor:
        """g~ = (1 - alpha) g1 + alpha g2, with g2 the gradient after an ascent step from y (same minibatch)."""
        g1 = ctx.grad(y, xb, yb)  # (P,)
        if self.rho == 0 or self.alpha == 0:
            return g1
        step = g1 / (g1.norm() + 1e-12) if self.normalize_ascent else g1
        g2 = ctx.grad(y + self.rho * step, xb, yb)  # gradient at the perturbed point x~ = y + rho * step
        return g2 if self.alpha == 1 else (1 - self.alpha) * g1 + self.alpha * g2

    def client_update(self, down: Tensors, client_state: Tensors, batches: Batches,
                      ctx: LocalContext) -> tuple[Tensors, Tensors]:
        x, h = down["x"], client_state["h"]

        def step(y, xb, yb):
            # y <- y - eta_l (g~ - lambda_hat_i + (1/lambda)(y - x)) = y - eta_l (g~ + mu (y - x + h_i))  (Alg. 1)
            drift = y - x + h if self.correction else y - x
            return descend(y, self.perturbed_grad(y, xb, yb, ctx) + self.mu * drift, ctx.lr)

        y = self.local_sgd(x, step, batches)
        delta = y - x  # x_{i,K} - x^t
        h_new = h + delta if self.correction else h  # lambda_hat_i <- lambda_hat_i - (1/lambda)(x_{i,K} - x^t)
        # "paper" sends x_hat_i - x^t = (x_{i,K} + h_i) - x^t; "simulator" sends x_{i,K} - x^t, the server keeps avg h
        message = delta + h_new if self.server == "paper" else delta
        return {"delta": message}, {"h": h_new}

    def aggregate(self, x: torch.Tensor, server_state: Tensors, messages: Tensors, weights: torch.Tensor,
                  info: RoundInfo) -> tuple[torch.Tensor, Tensors]:
        averaged = x + weights @ messages["delta"]  # avg_S x_{i,K} (simulator) or avg_S x_hat_i (paper)  (M,)@(M, P)
        if self.server == "paper" or not self.correction:
            return averaged, server_state
        share = (info.client_sizes[info.clients] / info.client_sizes.sum()).to(x.dtype)  # (M,) p_i = n_i / n
        h_bar = server_state["h_bar"] + share @ messages["delta"]  # h_i += x_{i,K} - x^t for the round's clients
        return averaged + h_bar, {"h_bar": h_bar}  # x^{t+1} = avg_S x_{i,K} + avg_all h_i
