"""SCAFFOLD: control variates c (server) and c_i (client) correct each local step for client drift.

Paper: Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated Learning", ICML 2020,
https://arxiv.org/abs/1910.06378 (Algorithm 1, option II for the control-variate update).

Weights. The paper weights clients uniformly: x moves by the mean over S of Delta y_i and c by
(1/N) sum_{i in S} Delta c_i (Alg. 1, lines 16-17), which keeps c = (1/N) sum_i c_i over all N clients. The book's
objective is f = sum_i p_i f_i with p_i = n_i / n (n: samples of all N clients), and FedAvg averages with those
weights. SCAFFOLD here uses the same p_i in both averages: x moves by the cohort-normalised weights p_i / sum_S p_j
(the federation's `weights`) and c <- c + sum_{i in S} p_i Delta c_i, which keeps the invariant c = sum_i p_i c_i
over all N clients under any participation. Since c_i ~ grad f_i, a corrected step grad f_i - c_i + c then points
along grad f, the objective FedAvg optimises; with uniform p_i = 1/N both lines are the paper's. (Averaging x with
p_i but c uniformly would make every corrected step follow grad of (1/N) sum_i f_i instead.)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import validation as V
from .base import Algorithm, Batches, LocalContext, RoundInfo, Tensors, descend


@dataclass(kw_only=True)  # hyperparameters by name only
class Scaffold(Algorithm):
    """SCAFFOLD with global step size eta_g; sends the model and c down, Delta y and Delta c up."""

    server_lr: float = 1.0
    name = "SCAFFOLD"

    def __post_init__(self) -> None:
        self.server_lr = V.positive("server_lr", self.server_lr)

    def init_server_state(self, x: torch.Tensor, n_clients: int) -> Tensors:
        return {"c": torch.zeros_like(x)}

    def init_client_state(self, x: torch.Tensor) -> Tensors:
        return {"c_i": torch.zeros_like(x)}

    def downlink(self, x: torch.Tensor, server_state: Tensors) -> Tensors:
        return {"x": x, "c": server_state["c"]}

    def client_update(self, down: Tensors, client_state: Tensors, batches: Batches,
                      ctx: LocalContext) -> tuple[Tensors, Tensors]:
        x, c, c_i = down["x"], down["c"], client_state["c_i"]
        # y <- y - eta_l (g_i(y) - c_i + c)   (Alg. 1, line 10)
        y = self.local_sgd(x, lambda y, xb, yb: descend(y, ctx.grad(y, xb, yb) - c_i + c, ctx.lr), batches)
        # option II: c_i+ = c_i - c + (x - y) / (K eta_l)   (Alg. 1, line 12)
        c_new = c_i - c + (x - y) / (batches.steps_taken() * ctx.lr)
        return {"delta": y - x, "delta_c": c_new - c_i}, {"c_i": c_new}

    def aggregate(self, x: torch.Tensor, server_state: Tensors, messages: Tensors, weights: torch.Tensor,
                  info: RoundInfo) -> tuple[torch.Tensor, Tensors]:
        # x <- x + eta_g sum_S w_i Delta y_i, w_i = p_i / sum_S p_j;  c <- c + sum_S p_i Delta c_i   (Alg. 1, l. 16-17)
        share = (info.client_sizes[info.clients] / info.client_sizes.sum()).to(x.dtype)  # (M,) p_i = n_i / n
        x_new = x + self.server_lr * (weights @ messages["delta"])  # (M,) @ (M, P)
        c_new = server_state["c"] + share @ messages["delta_c"]  # keeps c = sum_i p_i c_i over all N clients
        return x_new, {"c": c_new}
