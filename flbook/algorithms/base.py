"""What every federated algorithm is made of: a client update and a server aggregation over flat tensors.

An algorithm is a small object of hyperparameters with pure tensor functions (no module copies, no Python
side effects in `client_update`), so an executor can run `client_update` for one client at a time or for a
whole cohort at once under `torch.func.vmap`. State is explicit: `server_state` (e.g. momentum, control
variate) and per-client `client_state` (e.g. SCAFFOLD's c_i), which the federation stores for every client
and hands to the clients it samples.

Every contract and hook a round loop may call is declared here: `RoundInfo` for the synchronous loop,
`AsyncInfo` for the asynchronous one, and on `Algorithm` the asynchronous trigger (`period`, `buffer_size`)
and `aggregation_weights`.
"""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch

from ..models import FlatModel, cross_entropy

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Batches:
    """The minibatches a client trains on in one round: K local steps of B samples."""

    x: torch.Tensor  # (K, B, *input_shape)
    y: torch.Tensor  # (K, B)
    active: torch.Tensor | None = None  # (K,) bool; False marks padding steps when clients take unequal step counts

    @property
    def n_steps(self) -> int:
        return self.y.shape[0]

    def steps_taken(self) -> torch.Tensor | int:
        """Number of real (not padding) local steps: K in the paper's formulas."""
        return self.n_steps if self.active is None else self.active.sum()


@dataclass(frozen=True)
class LocalContext:
    """What a client knows while training: the model, its local learning rate and its loss."""

    model: FlatModel
    lr: float
    weight_decay: float
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    eager: bool = False  # True: gradients by plain autograd (faster one client at a time); False: torch.func (vmap-able)

    def loss(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean minibatch loss f_i(theta; xi)."""
        return self.loss_fn(self.model(theta, x), y)

    def grad(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Stochastic gradient of the local objective (plus L2 weight decay), as a flat vector (P,)."""
        if self.eager:
            leaf = theta.detach().requires_grad_()
            (g,) = torch.autograd.grad(self.loss(leaf, x, y), leaf)
        else:
            g = torch.func.grad(self.loss)(theta, x, y)
        return g + self.weight_decay * theta if self.weight_decay else g

    def sgd_step(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One plain local SGD step, theta - eta_l * grad f_i(theta; xi) (P,), as one fused pass over theta."""
        return descend(theta, self.grad(theta, x, y), self.lr)

    def sgd(self, theta: torch.Tensor, batches: Batches) -> torch.Tensor:
        """Plain local SGD over every local step of `batches` from theta (P,): `sgd_step` applied K times."""
        return Algorithm.local_sgd(theta, self.sgd_step, batches)


def descend(theta: torch.Tensor, g: torch.Tensor, lr: float | torch.Tensor) -> torch.Tensor:
    """theta - lr * g in one fused multiply-add (the arithmetic of `torch.optim.SGD`); `lr` may be a batched scalar
    (a lockstep row's own rate), which gives the same bits as the float."""
    return torch.addcmul(theta, g, -lr.to(g.dtype)) if torch.is_tensor(lr) else torch.add(theta, g, alpha=-lr)


@dataclass(frozen=True)
class RoundInfo:
    """Facts about the current round that an aggregation rule may need."""

    round: int
    clients: torch.Tensor  # (M,) ids of the clients whose messages are aggregated
    n_clients: int  # N, all clients of the federation
    client_sizes: torch.Tensor  # (N,) samples per client


@dataclass(frozen=True)
class AsyncInfo(RoundInfo):
    """`RoundInfo` plus what rules for late updates need: staleness, start models and device times."""

    staleness: torch.Tensor  # (M,) aggregations between each update's start model and now
    start_models: torch.Tensor  # (M, P) the model each client started from, x^{rho_i}
    steps: torch.Tensor  # (M,) local steps each client took
    job_time: torch.Tensor  # (N,) float64, tau_i: simulated time of one job (its usual local steps) on client i
    applied_count: torch.Tensor  # (N,) aggregations so far (this one included) that applied an update of client i
    sim_time: float  # when this aggregation happens
    ctx: LocalContext  # the clients' model, learning rate and loss, for server-side recomputation
    input_shape: tuple[int, ...]  # shape of one sample
    n_classes: int


def size_weights(info: RoundInfo) -> torch.Tensor:
    """n_i / sum_S n_j over the clients being aggregated (M,): the round's FedAvg weights."""
    sizes = info.client_sizes[info.clients].double()
    return sizes / sizes.sum()


class Algorithm(ABC):
    """Base class: define `client_update` and `aggregate`; the rest has sensible defaults."""

    name: ClassVar[str] = "Algorithm"
    batchable: ClassVar[bool] = True  # client_update is a pure tensor function that vmap can batch
    asynchronous_only: ClassVar[bool] = False  # True: aggregate needs the asynchronous driver's staleness facts
    # When the asynchronous loop aggregates: every `period` time units (FedFix), as soon as `buffer_size`
    # updates wait (FedBuff; 1 is asynchronous FedAvg), or, with neither, once every job in flight has returned.
    period: ClassVar[float | None] = None
    buffer_size: ClassVar[int | None] = None

    def aggregation_weights(self, info: AsyncInfo) -> torch.Tensor:
        """The asynchronous loop's weights d_i (M,) for this aggregation's updates; default n_i / sum_S n_j."""
        return size_weights(info).float()

    def init_server_state(self, x: torch.Tensor, n_clients: int) -> Tensors:
        """Server-side state at round 0 (e.g. momentum buffers)."""
        return {}

    def init_client_state(self, x: torch.Tensor) -> Tensors:
        """One client's persistent state at round 0 (the federation stores one copy per client)."""
        return {}

    def downlink(self, x: torch.Tensor, server_state: Tensors) -> Tensors:
        """What the server sends each sampled client; its size is the downlink cost."""
        return {"x": x}

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The local training loss; cross-entropy unless a method changes it."""
        return cross_entropy(logits, y)

    @abstractmethod
    def client_update(self, down: Tensors, client_state: Tensors, batches: Batches,
                      ctx: LocalContext) -> tuple[Tensors, Tensors]:
        """Local training from the received `down`; returns (message sent up, new client state)."""

    @abstractmethod
    def aggregate(self, x: torch.Tensor, server_state: Tensors, messages: Tensors, weights: torch.Tensor,
                  info: RoundInfo) -> tuple[torch.Tensor, Tensors]:
        """Combine the stacked messages (M, ...) with weights (M,) summing to 1 into the next global model."""

    @staticmethod
    def local_sgd(y: torch.Tensor, step: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                  batches: Batches) -> torch.Tensor:
        """Apply `y <- step(y, x_k, y_k)` for each local step k, skipping padding steps."""
        for k in range(batches.n_steps):
            y_next = step(y, batches.x[k], batches.y[k])
            y = y_next if batches.active is None else torch.where(batches.active[k], y_next, y)
        return y

    def __str__(self) -> str:
        """The method's name and the hyperparameters that differ from their defaults, e.g. 'FedProx(mu=0.1)'."""
        fields = dataclasses.fields(self) if dataclasses.is_dataclass(self) else ()
        args = ", ".join(f"{f.name}={getattr(self, f.name)}" for f in fields
                         if f.repr and getattr(self, f.name) != f.default)
        return f"{self.name}({args})" if args else self.name
