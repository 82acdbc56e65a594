"""The global loss of a round split into local, distribution-shift and aggregation terms, measured per round.

Paper: Zeng et al., "Tackling Data Heterogeneity in Federated Learning via Loss Decomposition", MICCAI 2024,
https://arxiv.org/abs/2408.12300. The paper's exact formula was not available; this is the telescoping split
its three names describe. For the clients S_t of round t, weights p_i = n_i / sum_S n_j, local models
x_i = x^t + Delta_i and the next global model x^{t+1}:

    L(x^{t+1}) =  sum_i p_i L_i(x_i)                     local loss: how well each client fits its own data
               +  sum_i p_i [L(x_i) - L_i(x_i)]          distribution-shift loss: local models on everyone's data
               +  [L(x^{t+1}) - sum_i p_i L(x_i)]        aggregation loss: what combining the local models adds

with L_i the cross-entropy on client i's shard and L the cross-entropy on all clients' data (the federated
training objective sum_i n_i L_i / n). Local-training methods (FedProx, SCAFFOLD, FedLD's margin control)
act on the shift term, aggregation methods (FedLD's principal gradient) on the aggregation term.
"""
from __future__ import annotations

from typing import Mapping

import pandas as pd
import torch
import torch.nn.functional as F

from .algorithms.base import Algorithm, Batches, LocalContext, RoundInfo, Tensors
from .federation import Federation

TERMS = ("local_loss", "shift_loss", "aggregation_loss")
COLUMNS = ("round", *TERMS, "train_loss", "step_norm", "update_norm")


class LossProbe:
    """Evaluates the three terms on a federation's client shards (all clients' data, held on the device)."""

    def __init__(self, federation: Federation):
        self.model = federation.model
        order = torch.cat([torch.as_tensor(p, device=federation.device) for p in federation.partition])
        self.x, self.y = federation.x_train[order], federation.y_train[order]  # all shards, client after client
        sizes = torch.as_tensor([len(p) for p in federation.partition], device=federation.device)
        self.owner = torch.repeat_interleave(torch.arange(len(sizes), device=federation.device), sizes)  # (n,)

    @torch.no_grad()
    def per_sample(self, theta: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of `theta` on every sample of every client, (n,)."""
        return F.cross_entropy(self.model(theta, self.x), self.y, reduction="none")

    @torch.no_grad()
    def measure(self, x: torch.Tensor, deltas: torch.Tensor, weights: torch.Tensor, clients: torch.Tensor,
                x_next: torch.Tensor) -> dict[str, float]:
        """The three terms, their sum L(x^{t+1}), the server step's norm and the mean update norm of one round."""
        own, everyone = [], []
        for delta, i in zip(deltas, clients):  # deltas (M, P), one local model x_i = x + Delta_i at a time
            losses = self.per_sample(x + delta)  # (n,)
            own.append(losses[self.owner == i].mean())  # L_i(x_i)
            everyone.append(losses.mean())  # L(x_i)
        own_loss, global_loss = torch.stack(own), torch.stack(everyone)  # (M,), (M,)
        w = weights.to(own_loss.dtype)
        total = self.per_sample(x_next).mean()  # L(x^{t+1})
        return {"local_loss": (w @ own_loss).item(), "shift_loss": (w @ (global_loss - own_loss)).item(),
                "aggregation_loss": (total - w @ global_loss).item(), "train_loss": total.item(),
                "step_norm": (x_next - x).norm().item(), "update_norm": (w @ deltas.norm(dim=1)).item()}


class Decomposed(Algorithm):
    """Wraps an algorithm whose messages carry `delta`; records the three terms at each aggregation."""

    def __init__(self, inner: Algorithm, probe: LossProbe):
        self.inner, self.probe = inner, probe
        self.name, self.batchable = inner.name, inner.batchable
        self.records: list[dict] = []

    def init_server_state(self, x: torch.Tensor, n_clients: int) -> Tensors:
        return self.inner.init_server_state(x, n_clients)

    def init_client_state(self, x: torch.Tensor) -> Tensors:
        return self.inner.init_client_state(x)

    def downlink(self, x: torch.Tensor, server_state: Tensors) -> Tensors:
        return self.inner.downlink(x, server_state)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.inner.loss(logits, y)

    def client_update(self, down: Tensors, client_state: Tensors, batches: Batches,
                      ctx: LocalContext) -> tuple[Tensors, Tensors]:
        return self.inner.client_update(down, client_state, batches, ctx)

    def aggregate(self, x: torch.Tensor, server_state: Tensors, messages: Tensors, weights: torch.Tensor,
                  info: RoundInfo) -> tuple[torch.Tensor, Tensors]:
        if "delta" not in messages:
            raise ValueError(f"algorithm must send an update 'delta'; {self.inner.name} sends {sorted(messages)}")
        x_next, server_state = self.inner.aggregate(x, server_state, messages, weights, info)
        self.records.append({"round": info.round, **self.probe.measure(x, messages["delta"], weights, info.clients,
                                                                      x_next)})
        return x_next, server_state

    def __str__(self) -> str:
        return str(self.inner)


def decompose(federation: Federation, algorithm: Algorithm, rounds: int, **run_kwargs) -> pd.DataFrame:
    """Run `algorithm` on `federation`; the history gains the three terms, the training loss and step norms."""
    wrapped = Decomposed(algorithm, LossProbe(federation))
    history = federation.run(wrapped, rounds, **run_kwargs)
    return history.merge(pd.DataFrame(wrapped.records, columns=list(COLUMNS)), on="round", how="left")


def compare(federation: Federation, algorithms: Mapping[str, Algorithm], rounds: int, **run_kwargs) -> pd.DataFrame:
    """`decompose` for several algorithms on the same federation (same partition, seed and batches)."""
    return pd.concat([decompose(federation, algo, rounds, label=name, **run_kwargs)
                      for name, algo in algorithms.items()], ignore_index=True)
