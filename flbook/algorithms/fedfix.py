"""Asynchronous FedAvg, FedBuff and FedFix: FedAvg whose aggregation weights depend on when updates arrive.

Paper: Fraboni, Vidal, Kameni & Lorenzi, "A General Theory for Federated Optimization with Asynchronous and
Heterogeneous Clients Updates", JMLR 24(110), 2023, https://arxiv.org/abs/2206.10189. Every scheme is
    x^{n+1} = x^n + eta_g sum_{i in S_n} d_i (y_i - x^{rho_i})
with S_n the clients applied at aggregation n, x^{rho_i} the (possibly old) model client i started from and
d_i a stochastic aggregation weight. The schemes differ in when the server aggregates (the driver,
`flbook.asynchronous`, reads `buffer_size` or `period`) and in d_i (`aggregation_weights`), as in the
official code (Accenture/Labs-Federated-Learning, branch asynchronous_FL, FL/server.py). tau_i is client
i's job time and p_i = n_i / n its share of the data.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .. import validation as V
from .base import AsyncInfo
from .fedavg import FedAvg

POLICIES = ("weight", "identical")


def data_share(info: AsyncInfo) -> torch.Tensor:
    """p_i = n_i / n of the applied clients (M,): each client's weight in the federated objective."""
    return info.client_sizes[info.clients].double() / info.client_sizes.sum()


def _check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")


@dataclass
class AsyncFedAvg(FedAvg):
    """Apply every update the moment it arrives (a buffer of one)."""

    policy: str = "weight"  # "weight": d_i = (sum_j 1/tau_j) tau_i p_i, unbiased; "identical": d_i = 1
    name = "Async FedAvg"
    buffer_size: ClassVar[int] = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_policy(self.policy)

    def aggregation_weights(self, info: AsyncInfo) -> torch.Tensor:
        """d_i: client i arrives 1/tau_i times per time unit, so scaling by tau_i makes its rate prop. to p_i."""
        if self.policy == "identical":
            return torch.ones(len(info.clients), device=info.clients.device)
        tau = info.job_time
        return ((1 / tau).sum() * tau[info.clients] * data_share(info)).float()  # (M,)


@dataclass
class FedBuff(FedAvg):
    """Aggregate as soon as `buffer_size` updates wait (Nguyen et al. 2022's buffered asynchronous FL)."""

    buffer_size: int = 5
    policy: str = "identical"  # "identical": d_i = 1/c; "weight": d_i = p_i / freq_i
    name = "FedBuff"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_policy(self.policy)
        self.buffer_size = V.integer("buffer_size", self.buffer_size, 1)

    def aggregation_weights(self, info: AsyncInfo) -> torch.Tensor:
        """d_i; freq_i is the share of aggregations so far that included client i (the code uses the whole run's)."""
        if self.policy == "identical":
            return torch.full((len(info.clients),), 1 / self.buffer_size, device=info.clients.device)
        freq = info.applied_count[info.clients].double() / info.round  # (M,)
        return (data_share(info) / freq).float()


@dataclass
class FedFix(FedAvg):
    """Aggregate at fixed times dt, 2dt, ... with every update that has arrived; d_i = ceil(tau_i / dt) p_i."""

    period: float = 0.5  # dt, in simulated time units
    name = "FedFix"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.period = V.positive("period", self.period)

    def aggregation_weights(self, info: AsyncInfo) -> torch.Tensor:
        """Client i is applied once every ceil(tau_i / dt) aggregations, so its weight makes up for the gap."""
        gap = torch.ceil(info.job_time[info.clients] / self.period - 1e-9)  # float-safe: 1.0 / 0.2 is 5, not 6
        return (gap * data_share(info)).float()

