"""FedAMD: each sampled client is an anchor (one large-batch gradient) or a miner (variance-reduced local steps).

The server keeps a table of one anchor gradient g_i per client; their mean y, the "bullseye", is a
global descent direction that is at most a few rounds stale. In round t each participant is an anchor
with probability p, else a miner:

    anchor:  g_i <- grad f_i(x^t; B'_i)               (B' a large batch; enters y from the next round)
    miner:   x_0 = x^t, v_0 = y;  for k < K:  x_{k+1} = x_k - eta_l v_k,
                                             v_{k+1} = v_k + grad f_i(x_{k+1}; B_k) - grad f_i(x_k; B_k)
             Delta_i = x_K - x^t                      (a SARAH-style recursion started from the bullseye)
    server:  x^{t+1} = x^t + eta_g mean_{miners} Delta_i   (x^{t+1} = x^t when there is no miner)

How this maps onto the federation (documented choices):
- The large batch B' is the client's K x B samples of the round taken together. The federation deals them
  from a fresh shuffle of the shard, each sample once before any repeats, so when K*B >= n_i the batch
  covers the whole shard and the repeats are a random subset: an unbiased estimate of the full local
  gradient, exact when K*B is a multiple of n_i (the paper's code uses the full shard, `fullbsz=0`).
- The paper's server flips each participant's coin; here each participant flips it from a generator seeded
  by `seed` and reset at the start of every run, and tells the server its role in the message. Hence
  `batchable = False` (a coin flip and a branch per client are not vmap-able), and every participant
  receives y, anchors included, so the downlink counts 2P numbers per participant.
- The paper computes every client's anchor gradient at x^0 before training (`anchor_table(fed)` gives that
  table; pass it as `initial_table`). Without it the table starts empty and y averages the entries
  filled so far: miners stay put until the first anchor reports.
- y and the miners' updates are plain means, as in the paper's code (not weighted by client size); the
  chapter's experiment gives every client the same number of samples (`equal_dirichlet`), so that FedAMD
  and FedAvg minimize the same objective.

Paper: Wu, Guo, Qu, He, Liu, Gao, "Anchor Sampling for Federated Learning with Partial Client
Participation", ICML 2023, https://arxiv.org/abs/2206.05891 (Alg. 1; code github.com/HarliWu/FedAMD,
`algo/fedamd.py`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..models import cross_entropy
from ..runtime import cpu_threads
from .. import validation as V
from .base import Algorithm, Batches, LocalContext, RoundInfo, Tensors, descend

if TYPE_CHECKING:
    from ..federation import Federation


@dataclass
class FedAMD(Algorithm):
    """Anchors refresh the server's table of large-batch gradients; miners run SARAH steps from its mean y."""

    anchor_probability: float = 0.2  # p: chance that a participant is an anchor in a round
    server_lr: float = 1.0  # eta_g
    seed: int = 0  # seeds the participants' role coins
    initial_table: torch.Tensor | None = field(default=None, repr=False, compare=False)  # (N, P) g_i at x^0
    name = "FedAMD"
    batchable = False  # each participant flips a coin and branches on it

    def __post_init__(self) -> None:
        self.anchor_probability = V.probability("anchor_probability", self.anchor_probability)
        self.server_lr = V.positive("server_lr", self.server_lr)
        self.seed = V.seed(self.seed)

    def init_server_state(self, x: torch.Tensor, n_clients: int) -> Tensors:
        self._coins = np.random.default_rng(self.seed)  # role coins, the same sequence in every run
        if self.initial_table is None:
            return {"table": torch.zeros(n_clients, *x.shape, dtype=x.dtype, device=x.device),
                    "filled": torch.zeros(n_clients, dtype=torch.bool, device=x.device)}
        if self.initial_table.shape != (n_clients, *x.shape):
            raise ValueError(f"initial_table must have shape {(n_clients, *x.shape)} (clients, parameters), "
                             f"got {tuple(self.initial_table.shape)}")
        return {"table": self.initial_table.to(x), "filled": torch.ones(n_clients, dtype=torch.bool, device=x.device)}

    def downlink(self, x: torch.Tensor, server_state: Tensors) -> Tensors:
        filled = server_state["filled"].to(x.dtype)  # (N,)
        y = filled @ server_state["table"] / filled.sum().clamp(min=1)  # (P,) the bullseye: mean anchor gradient
        return {"x": x, "y": y}

    def client_update(self, down: Tensors, client_state: Tensors, batches: Batches,
                      ctx: LocalContext) -> tuple[Tensors, Tensors]:
        x, y = down["x"], down["y"]
        if self._coins.random() < self.anchor_probability:  # anchor: one large-batch gradient at x^t
            grad = ctx.grad(x, batches.x.flatten(0, 1), batches.y.flatten(0, 1))  # B' = the K*B samples at once
            return {"update": grad, "anchor": torch.tensor(True)}, client_state

        def sarah(state: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:  # state (2, P): x_k, v_k
            x_k, v = state
            x_next = descend(x_k, v, ctx.lr)
            return torch.stack([x_next, v + ctx.grad(x_next, xb, yb) - ctx.grad(x_k, xb, yb)])

        x_local, _ = self.local_sgd(torch.stack([x, y]), sarah, batches)  # miner: K steps from v_0 = y
        return {"update": x_local - x, "anchor": torch.tensor(False)}, client_state

    def aggregate(self, x: torch.Tensor, server_state: Tensors, messages: Tensors, weights: torch.Tensor,
                  info: RoundInfo) -> tuple[torch.Tensor, Tensors]:
        anchor, update = messages["anchor"], messages["update"]  # (M,), (M, P)
        anchors = info.clients[anchor]
        state = {"table": server_state["table"].index_copy(0, anchors, update[anchor]),  # used from the next round
                 "filled": server_state["filled"].index_fill(0, anchors, True)}
        miner = (~anchor).to(x.dtype)  # (M,)
        step = miner @ update / miner.sum().clamp(min=1)  # (P,) mean miner update; zero when all were anchors
        return x + self.server_lr * step, state


def anchor_table(fed: Federation, theta: torch.Tensor | None = None) -> torch.Tensor:
    """Every client's full local gradient at `theta` (default x^0), shape (N, P): FedAMD's initial table."""
    theta = fed.initial_model() if theta is None else theta
    ctx = LocalContext(fed.model, fed.lr, fed.weight_decay, cross_entropy, eager=True)
    shards = (torch.as_tensor(ids, device=fed.device) for ids in fed.partition)
    with cpu_threads(fed.thread_count()):  # the federation's thread count: one for small models on a CPU
        return torch.stack([ctx.grad(theta, fed.x_train[ids], fed.y_train[ids]) for ids in shards])
