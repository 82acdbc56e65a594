"""FedStale: the server remembers every client's last update and mixes a fraction beta of these stale updates in.

Under partial participation the server sees only the clients S_t of round t. FedVARP (beta = 1) replaces
each missing update by the client's last one, h_k; FedAvg (beta = 0) uses fresh updates only. FedStale
takes the convex combination: with alpha_k = n_k / n and p_k = P(k in S_t),

    d = beta * sum_{k=1..N} alpha_k h_k + sum_{k in S_t} (alpha_k / p_k) (Delta_k - beta * h_k),
    x <- x + eta_g d,      then h_k <- Delta_k for k in S_t.

For every beta, E_{S_t}[d] = sum_k alpha_k Delta_k. A memory h_k cancels the sampling noise of client k's
term as far as its update has not changed since it was sent; for a rarely participating client, whose
memory was computed on a model many rounds old, it adds error instead.

The weights need p_k. Pass the participation model's `probabilities(N)` (known p_k), or leave them None
to estimate 1/p_k online as FedAU does: the running mean of the intervals between a client's
participations (1 until it has taken part once).

Papers: Rodio & Neglia, "FedStale: leveraging stale client updates in federated learning", 2024,
https://arxiv.org/abs/2405.04171 (Alg. 1; code github.com/arodio/FedStale, `HistorySGD`);
Jhunjhunwala et al., "FedVARP", UAI 2022, https://arxiv.org/abs/2207.14130 (Alg. 1);
Wang & Ji, "A Lightweight Method for Tackling Unknown Participation Statistics in FL" (FedAU), ICLR 2024,
https://arxiv.org/abs/2306.03401.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .. import validation as V
from .base import RoundInfo, Tensors
from .fedavg import FedAvg


@dataclass
class FedStale(FedAvg):
    """FedAvg clients; the server mixes in beta times the stale updates h_k of all N clients (FedVARP at beta = 1)."""

    beta: float = 0.5  # weight of the stale updates: 0 is FedAvg with alpha_k / p_k weights, 1 is FedVARP
    probabilities: tuple[float, ...] | None = field(default=None, repr=False)  # p_k per client; None: FedAU estimate
    name = "FedStale"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.beta = V.probability("beta", self.beta)
        if self.probabilities is not None:
            p = np.asarray(self.probabilities, dtype=float)
            if p.ndim != 1 or len(p) == 0 or not ((p > 0) & (p <= 1)).all():
                raise ValueError(f"probabilities must be a 1-D sequence of values in (0, 1], got {self.probabilities}")
            self.probabilities = tuple(p.tolist())

    def init_server_state(self, x: torch.Tensor, n_clients: int) -> Tensors:
        if self.probabilities is not None and len(self.probabilities) != n_clients:
            raise ValueError(f"probabilities must have one entry per client ({n_clients}), "
                             f"got {len(self.probabilities)}")
        h = torch.zeros(n_clients, *x.shape, dtype=x.dtype, device=x.device)  # (N, P) last update of each client
        if self.probabilities is None:  # FedAU: 1/p_k starts at 1; open interval and closed-interval count per client
            ones = torch.ones(n_clients, dtype=x.dtype, device=x.device)
            return {"h": h, "inv_p": ones, "waiting": torch.zeros_like(ones), "intervals": torch.zeros_like(ones)}
        return {"h": h, "inv_p": 1 / torch.tensor(self.probabilities, dtype=x.dtype, device=x.device)}  # (N,) 1 / p_k

    def aggregate(self, x: torch.Tensor, server_state: Tensors, messages: Tensors, weights: torch.Tensor,
                  info: RoundInfo) -> tuple[torch.Tensor, Tensors]:
        ids, delta, h = info.clients, messages["delta"], server_state["h"]  # (M,), (M, P), (N, P)
        alpha = info.client_sizes.to(x.dtype) / info.client_sizes.sum()  # (N,) alpha_k = n_k / n
        fresh = alpha[ids] * server_state["inv_p"][ids]  # (M,) alpha_k / p_k replaces the federation's weights
        d = self.beta * (alpha @ h) + fresh @ (delta - self.beta * h[ids])  # (P,) FedStale's direction
        state = {**server_state, "h": h.index_copy(0, ids, delta)}  # memory refreshed after d is computed
        if self.probabilities is None:
            state.update(fedau_update(server_state, ids))
        return self.server_step(x, d, state)


def fedau_update(state: Tensors, ids: torch.Tensor) -> Tensors:
    """FedAU's estimate of 1/p_k after a round in which `ids` took part: the mean interval between participations.

    Every client's open interval grows by one round; those in `ids` close it and fold its length into the mean."""
    waiting = state["waiting"] + 1  # (N,) rounds since the last participation, this one included
    took_part = torch.zeros_like(waiting, dtype=torch.bool).index_fill(0, ids, True)  # (N,)
    intervals = state["intervals"] + took_part  # (N,) closed intervals so far
    mean = state["inv_p"] + (waiting - state["inv_p"]) / intervals.clamp(min=1)  # running mean with the new interval
    return {"inv_p": torch.where(took_part, mean, state["inv_p"]), "waiting": torch.where(took_part, 0, waiting),
            "intervals": intervals}


@dataclass
class FedVARP(FedStale):
    """FedVARP: every missing update replaced by the client's last one, i.e. FedStale with beta = 1."""

    beta: float = field(default=1.0, init=False)
    name = "FedVARP"
