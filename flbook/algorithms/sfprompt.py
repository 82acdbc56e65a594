"""SFPrompt: split federated prompt tuning with a local-loss phase and EL2N data pruning.

Paper: Cao, Zhu & Gong, "SFPrompt: Communication-Efficient Split Federated Fine-Tuning for Large Pre-Trained Models
over Resource-Limited Devices", arXiv:2407.17533 (2024). The pre-trained ViT is cut into a client head (patch
tokens with soft prompts p, first blocks), a server body and a client tail; only p and the tail W_t learn.
Per round, each sampled client runs three phases (the paper's order of phases is UNCONFIRMED; we follow the
card's reconstruction: A, then B, then C):
  A  local-loss update: logits = W_t(W_h(x; p)), the server's body bypassed; SGD on (p, W_t), no communication;
  B  EL2N pruning (Paul et al. 2021): score(x, y) = ||softmax(W_t(W_h(x; p))) - onehot(y)||_2 on that same path;
     keep the ceil(gamma n) highest-scoring samples;
  C  split training on the kept samples over the U-shaped protocol (smashed data and gradients exchanged);
then the server FedAvg-averages p and W_t. Plain SGD at the federation's local learning rate in both phases (the
third-party code uses Adam; SGD keeps the protocol's step-size tuning alike across methods). With
`local_loss=False` and `keep=1` it is SplitFed (SFL) on the same trainable parameters.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .. import validation as V
from .base import Algorithm, Batches, LocalContext, RoundInfo, Tensors, descend


def n_kept(n: int | torch.Tensor, keep: float) -> int | torch.Tensor:
    """ceil(gamma n): the samples EL2N pruning keeps out of n (a hair below the product, so 0.3 * 70 keeps 21)."""
    if isinstance(n, torch.Tensor):
        return torch.ceil(n * keep - 1e-6).long()
    return math.ceil(n * keep - 1e-6)


def el2n(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """EL2N scores ||softmax(logits) - onehot(y)||_2, in [0, sqrt(2)]: (B, C), (B,) -> (B,)."""
    return (logits.softmax(-1) - F.one_hot(y, logits.shape[-1]).to(logits.dtype)).norm(dim=-1)


def masked_cross_entropy(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the samples where `mask` holds (0 when none does): (B, C), (B,), (B,) -> ()."""
    ce = F.cross_entropy(logits, y, reduction="none")  # (B,)
    return (ce * mask).sum() / mask.sum().clamp(min=1)


@dataclass(kw_only=True)
class SFPrompt(Algorithm):
    """Prompts and tail learn on the client: local-loss phase, EL2N pruning to keep ratio gamma, split training."""

    trainable: Any  # a flbook.split.Trainable: the split model, its trainable coordinates and the frozen rest
    keep: float = 1.0  # gamma, the share of each client's samples kept for split training
    local_loss: bool = True  # phase A on or off
    name = "SFPrompt"

    def __post_init__(self) -> None:
        self.keep = V.in_range("keep", self.keep, 0.0, 1.0, lo_inclusive=False)

    def downlink(self, x: torch.Tensor, server_state: Tensors) -> Tensors:
        return {"w": x[self.trainable.index]}  # only (p, W_t) travel; the frozen backbone is on both sides already

    def prune(self, w: torch.Tensor, batches: Batches) -> tuple[Batches, torch.Tensor]:
        """Phase B: (batches with the kept samples first, in their shuffled order; (K, B) mask of kept samples)."""
        k, b = batches.y.shape
        x, y = batches.x.reshape(k * b, *batches.x.shape[2:]), batches.y.reshape(k * b)  # (n, ...), (n,)
        real = self.real(batches).reshape(k * b)  # (n,) False on padding steps
        with torch.no_grad():
            score = torch.where(real, el2n(self.trainable.local(w, x), y), -1.0)  # (n,) padding ranks last
        rank = torch.argsort(torch.argsort(score, descending=True, stable=True), stable=True)  # (n,) 0 = hardest
        kept = rank < n_kept(real.sum(), self.keep)  # (n,)
        position = torch.arange(k * b, device=y.device)
        order = torch.argsort(torch.where(kept, position, position + k * b))  # (n,) kept first, order kept
        return Batches(x[order].view(batches.x.shape), y[order].view(k, b)), kept[order].view(k, b)

    @staticmethod
    def real(batches: Batches) -> torch.Tensor:
        """(K, B) True for the samples of real (not padding) steps."""
        ones = torch.ones_like(batches.y, dtype=torch.bool)  # (K, B)
        return ones if batches.active is None else ones & batches.active[:, None]

    def client_update(self, down: Tensors, client_state: Tensors, batches: Batches,
                      ctx: LocalContext) -> tuple[Tensors, Tensors]:
        t = self.trainable
        w0 = w = down["w"]  # (P_t,) prompts and tail
        if self.local_loss:  # phase A: SGD on CE(W_t(W_h(x; p)), y), no communication
            local_grad = torch.func.grad(lambda v, xb, yb: ctx.loss_fn(t.local(v, xb), yb))
            w = self.local_sgd(w, lambda v, xb, yb: descend(v, local_grad(v, xb, yb), ctx.lr), batches)
        # phase B (gamma = 1: nothing to prune)
        batches, kept = self.prune(w, batches) if self.keep < 1 else (batches, self.real(batches))  # kept (K, B)
        for k in range(batches.n_steps):  # phase C: split training, one step per batch of kept samples
            _, g, _ = t.split_step(w, batches.x[k], batches.y[k], lambda z, yb: masked_cross_entropy(z, yb, kept[k]))
            w = torch.where(kept[k].any(), descend(w, g, ctx.lr), w)  # a batch without kept samples is never sent
        return {"delta": w - w0}, client_state

    def aggregate(self, x: torch.Tensor, server_state: Tensors, messages: Tensors, weights: torch.Tensor,
                  info: RoundInfo) -> tuple[torch.Tensor, Tensors]:
        delta = weights @ messages["delta"]  # FedAvg of (p, W_t): sum_i p_i Delta_i   (M,) @ (M, P_t)
        return x.index_add(0, self.trainable.index, delta), server_state  # frozen coordinates unchanged


@dataclass(kw_only=True)
class PartialFedAvg(Algorithm):
    """FedAvg on a subset of the parameters, the whole model run on the client: linear probing when it is the tail."""

    trainable: Any  # a flbook.split.Trainable: which coordinates learn, the frozen rest
    name = "PartialFedAvg"

    def downlink(self, x: torch.Tensor, server_state: Tensors) -> Tensors:
        return {"w": x[self.trainable.index]}

    def client_update(self, down: Tensors, client_state: Tensors, batches: Batches,
                      ctx: LocalContext) -> tuple[Tensors, Tensors]:
        t, w0 = self.trainable, down["w"]
        grad = torch.func.grad(lambda v, xb, yb: ctx.loss_fn(t.full(v, xb), yb))
        w = self.local_sgd(w0, lambda v, xb, yb: descend(v, grad(v, xb, yb), ctx.lr), batches)  # (P_t,)
        return {"delta": w - w0}, client_state

    def aggregate(self, x: torch.Tensor, server_state: Tensors, messages: Tensors, weights: torch.Tensor,
                  info: RoundInfo) -> tuple[torch.Tensor, Tensors]:
        return x.index_add(0, self.trainable.index, weights @ messages["delta"]), server_state
