"""Robust FedAvg: FedAvg's local SGD, then a robust rule over the clients' deltas, a server step and momentum.

The server replaces FedAvg's weighted average sum_i p_i Delta_i by a Byzantine-robust rule (coordinate median,
trimmed mean, geometric median, Krum, Multi-Krum, centered clipping; optionally preceded by NNM or bucketing,
see `flbook.robust`), then steps x <- x + eta_g v with server momentum v <- beta v + Delta (beta = 0: no memory).
Momentum before robust aggregation is what Karimireddy, He, Jaggi, ICML 2021 (https://arxiv.org/abs/2012.10333)
and Allouah et al., AISTATS 2023 (https://arxiv.org/abs/2302.01772) analyse; here it is applied after the rule,
as FedAvgM does, so that the rule sees the round's deltas (the messages an attack would replace).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..robust import RobustRule
from .base import RoundInfo, Tensors
from .fedavg import FedAvg


@dataclass(kw_only=True)
class RobustFedAvg(FedAvg):
    """FedAvg whose server aggregates the deltas with `rule` (after the pre-aggregators `pre`), then momentum."""

    rule: str = "mean"
    f: int = 0  # Byzantine messages the rule is asked to tolerate
    pre: tuple[str, ...] = ()  # pre-aggregators applied first, in order: "nnm", "bucketing"
    bucket_size: int = 2
    options: dict | None = None  # the rule's own keywords, e.g. {"tau": 0.5} for centered clipping
    momentum: float = 0.0
    seed: int = 0  # bucketing's shuffles: seed and round number give each round its own permutation
    name = "RobustFedAvg"

    def __post_init__(self) -> None:
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if not self.server_lr > 0:
            raise ValueError(f"server_lr must be > 0, got {self.server_lr}")
        self.aggregator = RobustRule(self.rule, self.f, tuple(self.pre), self.bucket_size, dict(self.options or {}))

    def init_server_state(self, x: torch.Tensor, n_clients: int) -> Tensors:
        state = {"v": torch.zeros_like(x)} if self.momentum else {}
        if self.rule == "centered_clipping":  # CC starts from the previous aggregate (Karimireddy et al. 2021)
            state["center"] = torch.zeros_like(x)
        return state

    def aggregate(self, x: torch.Tensor, server_state: Tensors, messages: Tensors, weights: torch.Tensor,
                  info: RoundInfo) -> tuple[torch.Tensor, Tensors]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + info.round)
        extra = {"center": server_state["center"]} if "center" in server_state else {}
        delta = self.aggregator(messages["delta"], weights, generator, **extra)  # (M, P) -> (P,)
        state = {**server_state, "center": delta} if extra else dict(server_state)
        return self.server_step(x, delta, state)

    def server_step(self, x: torch.Tensor, delta: torch.Tensor, server_state: Tensors) -> tuple[torch.Tensor, Tensors]:
        """x <- x + eta_g v, v <- beta v + Delta (without momentum: FedAvg's step x + eta_g Delta)."""
        if not self.momentum:
            return x + self.server_lr * delta, server_state
        v = self.momentum * server_state["v"] + delta
        return x + self.server_lr * v, {**server_state, "v": v}
