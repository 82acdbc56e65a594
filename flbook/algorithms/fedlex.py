"""FedLEx: a one-time federated loss exploration builds a guidance matrix G that scales every local gradient.

Paper: Interno, Olhofer, Jin, Hammer, "Federated Loss Exploration for Improved Convergence on Non-IID Data",
IJCNN 2024, https://doi.org/10.1109/IJCNN60899.2024.10651455, https://arxiv.org/abs/2506.18640; official
code https://github.com/ChristianInterno/FedLEx (src/GTL_utils.py::create_mask, src/client/fedlexclient.py).

Exploration (once, before round 1): explorer clients train the base model alone for many epochs; the server
averages their squared parameter deviations D = mean_k (theta_k - theta_base)^2 and min-max normalises D per
parameter tensor into G in [0, 1]. Training: FedAvg whose local step is y <- y - eta_l (G * grad f_i(y)).

Choices where the card marks the paper UNCONFIRMED or the code differs:
- theta_base is the federation's x^0 (the code first trains one epoch on one explorer), so FedLEx and its
  baselines start from the same model and the exploration gives no warm start.
- Explorers train with the federation's local optimizer (SGD, its lr and batch size), not the code's Adam:
  under Adam's per-coordinate normalisation a constant rescaling G * g would nearly cancel.
- No early stopping during exploration; G is computed once, not recomputed each round as in the code's HEAD.
- Only the default MinMax normalisation; the code's RobustScaler option gives negative multipliers.
- The server is the plain FedAvg average (the code adds server momentum), so the comparison isolates G.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd
import torch

from ..runtime import cpu_threads
from .. import validation as V
from .base import Batches, LocalContext, Tensors, descend
from .fedavg import FedAvg

if TYPE_CHECKING:
    from ..federation import Federation


@dataclass(eq=False)
class FedLEx(FedAvg):
    """FedAvg with guided local steps y <- y - eta_l (G * grad); G = 1 everywhere is FedAvg exactly."""

    guidance: torch.Tensor | None = field(default=None, repr=False)  # G (P,) in [0, 1], required: explore(fed).guidance
    name = "FedLEx"

    def __post_init__(self) -> None:
        super().__post_init__()
        G = self.guidance
        if not isinstance(G, torch.Tensor) or G.ndim != 1:
            shape = tuple(G.shape) if isinstance(G, torch.Tensor) else ""
            raise ValueError("guidance must be a 1-D tensor (P,) with values in [0, 1], e.g. "
                             f"explore(federation).guidance; got {type(G).__name__}{shape}")
        if not bool(((G >= 0) & (G <= 1)).all()):
            raise ValueError(f"guidance must lie in [0, 1], got values in [{G.min().item()}, {G.max().item()}]")

    def init_server_state(self, x: torch.Tensor, n_clients: int) -> Tensors:
        if self.guidance.shape != x.shape:
            raise ValueError(f"guidance must have one entry per model parameter, shape {tuple(x.shape)}, "
                             f"got {tuple(self.guidance.shape)}")
        return super().init_server_state(x, n_clients)

    def client_update(self, down: Tensors, client_state: Tensors, batches: Batches,
                      ctx: LocalContext) -> tuple[Tensors, Tensors]:
        x, G = down["x"], self.guidance.to(down["x"])
        # guided SGD: every local gradient is scaled elementwise by the global guidance matrix G   (P,)
        y = self.local_sgd(x, lambda y, xb, yb: descend(y, G * ctx.grad(y, xb, yb), ctx.lr), batches)
        return {"delta": y - x}, client_state


def guidance_matrix(deviation: torch.Tensor, numels: Sequence[int]) -> torch.Tensor:
    """G: the squared deviations D (P,) min-max normalised within each parameter tensor (sizes `numels`).

    A tensor whose deviations are all equal carries no information and gets G = 1 (plain steps), which
    also guards the division when explorers did not move it at all."""
    if deviation.ndim != 1 or sum(numels) != deviation.numel():
        raise ValueError(f"numels must sum to the length of deviation ({deviation.numel()}), got {sum(numels)}")
    parts = []
    for d in torch.split(deviation, list(numels)):  # one parameter tensor l at a time
        span = d.max() - d.min()
        # G_l = (D_l - min D_l) / (max D_l - min D_l)
        parts.append((d - d.min()) / span if span > 0 else torch.ones_like(d))
    return torch.cat(parts)


@dataclass(frozen=True, eq=False)
class Exploration:
    """The loss-exploration phase's result: the guidance matrix, the deviations behind it, and its cost."""

    guidance: torch.Tensor  # (P,) G in [0, 1]
    deviation: torch.Tensor  # (P,) D = mean_k (theta_k - theta_base)^2
    explorers: np.ndarray  # ids of the exploring clients
    steps: np.ndarray  # local SGD steps each explorer took
    bytes_up: int  # explorers' models sent to the server
    bytes_down: int  # theta_base to the explorers, then G to every client

    def charge(self, history: pd.DataFrame) -> pd.DataFrame:
        """The history with the exploration's bytes added to every row, so accuracy per byte is honest."""
        return history.assign(bytes_up=history.bytes_up + self.bytes_up,
                              bytes_down=history.bytes_down + self.bytes_down)


def exploration_batches(federation: Federation, explorers: np.ndarray, epochs: float, data_fraction: float,
                        rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ids (E, K, B) and real step counts (E,): each explorer runs `epochs` passes over a fixed random
    `data_fraction` of its shard, reshuffled every pass."""
    batch = federation.batch_size
    shards = [federation.partition[k] for k in explorers]
    subsets = [rng.permutation(shard)[:max(1, math.ceil(data_fraction * len(shard)))] for shard in shards]
    steps = [max(1, math.ceil(epochs * len(s) / batch)) for s in subsets]
    n_ids = max(steps) * batch  # padding steps after a client's own are masked out by `steps`
    if len(subsets) * n_ids > V.MAX_SAMPLES_DRAWN:
        raise ValueError(f"epochs={epochs:g} makes {len(subsets)} explorers draw {len(subsets) * n_ids:.3g} samples, "
                         f"more than {V.MAX_SAMPLES_DRAWN:.0e}; lower epochs, data_fraction or explorer_fraction")
    rows = [np.concatenate([rng.permutation(s) for _ in range(math.ceil(n_ids / len(s)))])[:n_ids] for s in subsets]
    index = torch.as_tensor(np.stack(rows), device=federation.device).view(len(subsets), max(steps), batch)
    return index, torch.as_tensor(steps, device=federation.device)


MAX_EXPLORE_EPOCHS = 1e4  # local passes per explorer (the samples drawn are bounded as in a round, too)


def explore(federation: Federation, epochs: float = 10, data_fraction: float = 1.0,
            explorer_fraction: float = 1.0) -> Exploration:
    """Run FedLEx's loss exploration on `federation` from its x^0 and return the guidance matrix G.

    epochs: local passes of each explorer; data_fraction: share of its shard it explores with;
    explorer_fraction: share of the clients that explore (at least one)."""
    epochs = V.in_range("epochs", epochs, 0, MAX_EXPLORE_EPOCHS, lo_inclusive=False)
    for key, value in (("data_fraction", data_fraction), ("explorer_fraction", explorer_fraction)):
        V.probability(key, value, zero=False)
    rng = np.random.default_rng(federation.seed)
    n_clients = federation.n_clients
    explorers = np.sort(rng.choice(n_clients, max(1, round(explorer_fraction * n_clients)), replace=False))
    index, steps = exploration_batches(federation, explorers, epochs, data_fraction, rng)
    local = FedAvg()  # an explorer's training is plain local SGD from theta_base
    base = federation.initial_model()  # theta_base = x^0, shared with every method run on this federation
    with cpu_threads(federation.thread_count()):
        messages, _ = federation.train_cohort(local, {"x": base}, index, steps)
    deviation = messages["delta"].square().mean(0)  # D = mean_k (theta_k - theta_base)^2   (E, P) -> (P,)
    model_bytes = base.numel() * base.element_size()
    return Exploration(guidance=guidance_matrix(deviation, federation.model.numels), deviation=deviation,
                       explorers=explorers, steps=steps.cpu().numpy(), bytes_up=len(explorers) * model_bytes,
                       bytes_down=(len(explorers) + n_clients) * model_bytes)
