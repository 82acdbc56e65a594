"""FedAvg: local SGD on each sampled client, then a size-weighted average of the models.

Paper: McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data",
AISTATS 2017, https://arxiv.org/abs/1602.05629 (Algorithm 1).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import validation as V
from .base import Algorithm, Batches, LocalContext, RoundInfo, Tensors


@dataclass(kw_only=True)  # by name only, so a subclass call like FedFix(0.5) cannot set server_lr by accident
class FedAvg(Algorithm):
    """FedAvg with an optional server learning rate (eta_g = 1 is the paper's plain average)."""

    server_lr: float = 1.0
    name = "FedAvg"

    def __post_init__(self) -> None:
        self.server_lr = V.positive("server_lr", self.server_lr)  # eta_g <= 0 would stall or ascend

    def client_update(self, down: Tensors, client_state: Tensors, batches: Batches,
                      ctx: LocalContext) -> tuple[Tensors, Tensors]:
        x = down["x"]
        # K steps of y <- y - eta_l * grad f_i(y; xi_k), starting from the global model (Alg. 1, ClientUpdate)
        y = ctx.sgd(x, batches)
        return {"delta": y - x}, client_state

    def aggregate(self, x: torch.Tensor, server_state: Tensors, messages: Tensors, weights: torch.Tensor,
                  info: RoundInfo) -> tuple[torch.Tensor, Tensors]:
        delta = weights @ messages["delta"]  # sum_i p_i Delta_i, p_i = n_i / sum_{j in S} n_j   (M,) @ (M, P)
        return self.server_step(x, delta, server_state)

    def server_step(self, x: torch.Tensor, delta: torch.Tensor, server_state: Tensors) -> tuple[torch.Tensor, Tensors]:
        """x <- x + eta_g * Delta; server optimizers (FedAvgM, FedAdam) override this step only."""
        return x + self.server_lr * delta, server_state
