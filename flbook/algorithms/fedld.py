"""FedLD: margin control on the clients, principal-gradient aggregation on the server.

Paper: Zeng, Guo, Wang, Wang, Zhou and Qu, "Tackling Data Heterogeneity in Federated Learning via Loss
Decomposition", MICCAI 2024, https://arxiv.org/abs/2408.12300; code https://github.com/Zeng-Shuang/FedLD
(`methods/fedld.py::MarginalLogLoss`, `svd_tools.py::pcgrad_svd`), which this file follows.

The global loss splits into a local loss, a distribution-shift loss and an aggregation loss
(`flbook.loss_decomposition` measures them). Margin control targets the shift term: the local loss adds
lambda * log(1 + ||softmax(Z)||_F^2) over the batch's logits Z (B, C), which penalises over-confident local
fits. Principal-gradient aggregation targets the aggregation term: each client's update is replaced by its
projection onto the top k = max(1, floor(k_prop * M)) principal directions of the cohort's updates, each
direction weighted by its share of the spectrum s_j / sum(s), then averaged.

Choices where the code is silent or cannot apply here (the paper text was not available):
* weights: the code averages with 1/M (all its clients had similar sizes); here the Gram matrix and the
  average use p_i = n_i / sum_S n_j, as FedAvg does. With equal sizes this is the code's rule exactly.
* the first round aggregates by FedAvg's average (the code's empty-history gate); later rounds use the
  principal gradient. The code's per-tensor history is only that gate and is not kept.
* per tensor: pass `layers` (the flat vector's block sizes, `FedLD.for_model(model)`), as the code
  projects each state_dict tensor separately and averages 1-element tensors; `layers=None` is one block.
* guards the code lacks: k >= 1 (M = 1 would give k = 0), directions with ||u_j|| ~ 0 are skipped (identical
  updates gave 0/0 there), and sign(<Delta_i, u_j>) = 0 contributes nothing. The code's sign calibration of
  u_j is dropped: the projection does not depend on the sign of u_j.
* local optimiser: plain SGD as for every baseline of the workbook (the code uses momentum 0.5 and weight
  decay 5e-4), so that the comparison isolates FedLD's two changes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..models import FlatModel, cross_entropy
from .. import validation as V
from .base import RoundInfo, Tensors
from .fedavg import FedAvg


def margin_penalty(logits: torch.Tensor) -> torch.Tensor:
    """log(1 + ||softmax(Z)||_F^2) over the whole batch (B, C): large for confident (one-hot) predictions."""
    return torch.log1p(torch.softmax(logits, dim=1).square().sum())


def principal_gradient(deltas: torch.Tensor, weights: torch.Tensor, k_prop: float) -> torch.Tensor:
    """Aggregate updates (M, d) along the top principal directions of their weighted Gram matrix; returns (d,).

    r_i = sum_{j<=k} (s_j / sum s) ||Delta_i|| sign(<Delta_i, u_j>) u_j / ||u_j||,  g = sum_i p_i r_i."""
    m = deltas.shape[0]
    k = max(1, int(k_prop * m))
    g64 = deltas.double()
    gw = weights.double().sqrt()[:, None] * g64  # (M, d) rows sqrt(p_i) Delta_i
    s, e = torch.linalg.eigh(gw @ gw.T)  # H = sum_i p_i Delta_i Delta_i^T seen from the M x M side; s ascending
    s, e = s.flip(0).clamp(min=0), e.flip(1)  # (M,), (M, M) descending
    u = gw.T @ e[:, :k]  # (d, k) principal directions, ||u_j||^2 = s_j
    kept = s[:k] > 1e-12 * s[0].clamp(min=1e-300)  # skip directions of (numerically) zero variance
    u_hat = u / u.norm(dim=0).clamp(min=1e-300)  # (d, k)
    share = torch.where(kept, s[:k] / s.sum().clamp(min=1e-300), torch.zeros_like(s[:k]))  # (k,) s_j / sum s
    coef = share * g64.norm(dim=1, keepdim=True) * torch.sign(g64 @ u_hat)  # (M, k)
    return (weights.double() @ coef @ u_hat.T).to(deltas.dtype)  # sum_i p_i r_i   (d,)


@dataclass
class FedLD(FedAvg):
    """FedAvg with a margin-control loss (margin = lambda) and principal-gradient aggregation (k_prop)."""

    margin: float = 0.1  # lambda, the code's margin_loss_penalty (README 0.1)
    k_prop: float = 0.8  # share of the M principal directions kept
    principal_gradient: bool = True  # False: FedAvg's weighted average on the server
    layers: tuple[int, ...] | None = field(default=None, repr=False)  # flat parameters' block sizes; None: one
    name = "FedLD"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.margin = V.non_negative("margin", self.margin)
        self.k_prop = V.probability("k_prop", self.k_prop, zero=False)
        if self.layers is not None and (not self.layers or any(int(n) < 1 for n in self.layers)):
            raise ValueError(f"layers must be a non-empty tuple of positive block sizes or None, got {self.layers}")

    @classmethod
    def for_model(cls, model: FlatModel, **hyper) -> "FedLD":
        """FedLD that projects each of `model`'s parameter tensors separately, as the official code does."""
        return cls(layers=tuple(model.numels), **hyper)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # CE(Z, y) + lambda * log(1 + ||softmax(Z)||_F^2)   (margin control, MarginalLogLoss)
        ce = cross_entropy(logits, y)
        return ce + self.margin * margin_penalty(logits) if self.margin else ce

    def aggregate(self, x: torch.Tensor, server_state: Tensors, messages: Tensors, weights: torch.Tensor,
                  info: RoundInfo) -> tuple[torch.Tensor, Tensors]:
        if not self.principal_gradient or info.round <= 1:
            return super().aggregate(x, server_state, messages, weights, info)
        deltas = messages["delta"]  # (M, P)
        sizes = list(self.layers) if self.layers is not None else [deltas.shape[1]]
        if sum(sizes) != deltas.shape[1]:
            raise ValueError(f"layers must sum to the parameter count {deltas.shape[1]}, got {sum(sizes)}")
        blocks = torch.split(deltas, sizes, dim=1)
        g = torch.cat([principal_gradient(b, weights, self.k_prop) if b.shape[1] > 1 else weights @ b
                       for b in blocks])  # (P,) 1-element tensors are averaged, as in the code
        return self.server_step(x, g, server_state)
