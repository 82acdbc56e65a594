"""DFedSAM: Sharpness-Aware Minimization as the local optimizer of decentralized FedAvg, then gossip.

Paper: Shi, Shen, Wei, Sun, Yuan, Wang, Tao, "Improving the Model Consistency of Decentralized Federated
Learning", ICML 2023, https://arxiv.org/abs/2302.04083 (Algorithm 1: DFedSAM; DFedSAM-MGS adds Q gossip steps).

Each node i starts the round from its own model y = x_i^t and takes K SAM steps on its minibatches,

    g = grad F_i(y; xi),   eps = rho g / ||g||_2,   y <- y - eta grad F_i(y + eps; xi)   (same minibatch),

then every node averages with its neighbours over W, Q times (Q = 1: DFedSAM; Q > 1: DFedSAM-MGS). The order
is the paper's: local training first, then gossip (one third-party port aggregates the neighbours before
training, the reverse order). The gossip is the decentralized runner's (`Decentralized(..., gossip_steps=Q)`);
this class is the local step. Choices where the card is UNCONFIRMED: plain SGD with the SAM gradient, no local
momentum; weight decay only if the federation sets one; the norm is over all parameters at once. On a server
(`Federation.run`) the same object is FedSAM: SAM local steps, then FedAvg's aggregation.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import validation as V
from .base import Batches, LocalContext, Tensors, descend
from .fedavg import FedAvg


@dataclass(kw_only=True)
class DFedSAM(FedAvg):
    """K local SAM steps of radius rho (rho = 0 is DFedAvg's local SGD, bit for bit)."""

    rho: float = 0.05  # SAM radius: the ascent step's length ||eps||
    name = "DFedSAM"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.rho = V.non_negative("rho", self.rho)

    def sam_grad(self, y: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor, ctx: LocalContext) -> torch.Tensor:
        """grad F_i(y + eps; xi) with eps = rho g / ||g||, the gradient at the worst nearby point (SAM)."""
        g = ctx.grad(y, xb, yb)  # (P,)
        if self.rho == 0:
            return g
        eps = self.rho * g / g.norm().clamp_min(1e-12)  # ascent step of norm rho (global L2 norm)
        return ctx.grad(y + eps, xb, yb)  # the same minibatch, at the perturbed point; the step updates y

    def client_update(self, down: Tensors, client_state: Tensors, batches: Batches,
                      ctx: LocalContext) -> tuple[Tensors, Tensors]:
        x = down["x"]
        # y <- y - eta_t grad F_i(y + eps; xi), K times from y = x_i^t (Alg. 1, local update)
        y = self.local_sgd(x, lambda y, xb, yb: descend(y, self.sam_grad(y, xb, yb, ctx), ctx.lr), batches)
        return {"delta": y - x}, client_state
