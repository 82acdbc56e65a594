"""Server optimizers: FedAvg's averaged update Delta used as a pseudo-gradient by momentum or Adam.

Paper: Reddi et al., "Adaptive Federated Optimization", ICLR 2021, https://arxiv.org/abs/2003.00295
(Algorithm 2); server momentum (FedAvgM) as in Hsu et al. 2019, https://arxiv.org/abs/1909.06335.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import validation as V
from .base import Tensors
from .fedavg import FedAvg


@dataclass
class FedAvgM(FedAvg):
    """Server momentum: v <- beta v + Delta, x <- x + eta_g v."""

    momentum: float = 0.9
    name = "FedAvgM"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.momentum = V.in_range("momentum", self.momentum, 0, 1, hi_inclusive=False)

    def init_server_state(self, x: torch.Tensor, n_clients: int) -> Tensors:
        return {"v": torch.zeros_like(x)}

    def server_step(self, x: torch.Tensor, delta: torch.Tensor, server_state: Tensors) -> tuple[torch.Tensor, Tensors]:
        v = self.momentum * server_state["v"] + delta
        return x + self.server_lr * v, {"v": v}


@dataclass
class FedAdam(FedAvg):
    """FedAdam (Reddi et al., Alg. 2): m <- b1 m + (1-b1) Delta; v <- b2 v + (1-b2) Delta^2; x <- x + eta m / (sqrt v + tau).

    As in Alg. 2: m_{-1} = 0, v_{-1} = tau^2 (the smallest start Alg. 2 allows) and no bias correction. The start
    bounds the first step by eta (1-b1) |Delta| / ((1 + sqrt b2) tau), so coordinates with |Delta| below about tau
    move in proportion to Delta; larger ones still move by about eta (1-b1) / sqrt(1-b2) sign(Delta), which is
    eta sign(Delta) at the defaults. Delta is the size-weighted average sum_S p_i Delta_i of the book's objective,
    where Alg. 2 takes the plain mean over S; with equal client sizes the two agree."""

    server_lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3  # adaptivity: larger tau makes the step closer to momentum SGD
    name = "FedAdam"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.beta1 = V.in_range("beta1", self.beta1, 0, 1, hi_inclusive=False)
        self.beta2 = V.in_range("beta2", self.beta2, 0, 1, hi_inclusive=False)
        self.tau = V.positive("tau", self.tau)

    def init_server_state(self, x: torch.Tensor, n_clients: int) -> Tensors:
        return {"m": torch.zeros_like(x), "v": torch.full_like(x, self.tau ** 2)}  # v_{-1} >= tau^2   (Alg. 2, input)

    def server_step(self, x: torch.Tensor, delta: torch.Tensor, server_state: Tensors) -> tuple[torch.Tensor, Tensors]:
        m = self.beta1 * server_state["m"] + (1 - self.beta1) * delta
        v = self.beta2 * server_state["v"] + (1 - self.beta2) * delta.square()
        return x + self.server_lr * m / (v.sqrt() + self.tau), {"m": m, "v": v}
