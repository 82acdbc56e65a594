"""FedProx: FedAvg whose local objective adds a proximal term (mu/2)||y - x||^2 to limit client drift.

Paper: Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020,
https://arxiv.org/abs/1812.06127 (Eq. 2; Algorithm 2).
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import validation as V
from .base import Batches, LocalContext, Tensors, descend
from .fedavg import FedAvg


@dataclass
class FedProx(FedAvg):
    """FedAvg with the proximal term; mu = 0 is exactly FedAvg."""

    mu: float = 0.01
    name = "FedProx"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.mu = V.non_negative("mu", self.mu)

    def client_update(self, down: Tensors, client_state: Tensors, batches: Batches,
                      ctx: LocalContext) -> tuple[Tensors, Tensors]:
        x = down["x"]
        # SGD on h_i(y) = f_i(y) + mu/2 ||y - x||^2  (Eq. 2): y <- y - eta_l (grad f_i(y) + mu (y - x))
        y = self.local_sgd(x, lambda y, xb, yb: descend(y, ctx.grad(y, xb, yb) + self.mu * (y - x), ctx.lr), batches)
        return {"delta": y - x}, client_state
