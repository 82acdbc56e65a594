"""Decentralized learning: no server; every node trains its own model and then mixes it with its neighbours'.

All node models are stacked as X (N, P), one row per node (a node is a client of the `Federation`: its data
shard, its minibatches). A round t:

1. the available nodes A_t are drawn (`availability`, seeded);
2. each available node i trains from its own model x_i with the algorithm's `client_update`, through the
   federation's executor (the whole cohort batched under vmap where the algorithm allows), giving the
   half-step model x_i^{t+1/2} = x_i + delta_i; unavailable nodes keep x_i and their state;
3. a `Mixer` turns the half-step models into the next X. The default `Gossip(steps=Q)` applies
   X <- W(t) X Q times, W(t) restricted to the available nodes (`topology.restrict`).

The local-update contract is the federated one: `client_update(down, client_state, batches, ctx)` gets
down = {"x": x_i} (the node's own model) and returns a message with "delta" (its local update) and the
node's new persistent state (e.g. momentum). So FedAvg's local SGD is DFedAvg's local step (with one local
step, D-PSGD in its "train, then average" form X <- W (X - eta G)); a SAM local step gives DFedSAM, and Q
gossip steps DFedSAM-MGS. A robust rule such as MoNNA's nearest-neighbour average over received sets is a
`Mixer` of its own: it sees the half-step models, the round's W and a seeded generator. A mixer whose attackers
poison data (`poisons_data`, MoNNA's label flipping) also gets `MixInfo.flipped`: each node's update by plain SGD
on its round's batches with flipped labels y -> (C - 1) - y, from its model x_i^t (no momentum, as the MoNNA code).

Step sizes: constant, or gamma_t = gamma_0 * lr_schedule(t) (e.g. `InverseTimeDecay`, the MoNNA code's
gamma_0 / (t / tau + 1) recomputed every few steps), for the local step and the flipped-label update alike.

Equivalence with FedAvg: FedAvg averages with size weights p_j = n_j / n. On the complete graph with
W = `uniform_weights(complete(N), sizes=client_sizes)` every row of W is p, so one gossip step sets every
node to sum_j p_j (x + delta_j), FedAvg's x + sum_j p_j delta_j; with full participation and Q = 1 the run
equals `Federation.run(FedAvg())` up to float rounding (a test). Uniform weights 1/N on the complete graph
give the unweighted average instead, which is FedAvg only when all clients hold the same amount of data.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Protocol

import numpy as np
import pandas as pd
import torch

from .algorithms.base import Algorithm, Batches, LocalContext, Tensors
from .attacks import flip_labels
from .executors import BatchedExecutor, LoopExecutor
from .federation import Federation
from .rounds import check_run, report_divergence, train_rounds
from .participation import Participation, Uniform
from .runtime import cpu_threads
from .topology import TimeVarying, as_schedule, check_mixing, consensus_distance, gossip, gossip_bytes, restrict


@dataclass(frozen=True)
class MixInfo:
    """What a mixing rule may use in round t besides the models: who is available, and seeded randomness."""

    round: int
    active: torch.Tensor  # (N,) bool, the nodes that trained and communicate this round
    rng: np.random.Generator  # e.g. random received sets or attacks; seeded from the federation's seed
    flipped: torch.Tensor | None = None  # (N, P) plain-SGD updates on flipped labels, for a mixer that `poisons_data`


class Mixer(Protocol):
    """How the nodes combine their half-step models (N, P) into the next X, and the bytes that costs."""

    def __call__(self, X: torch.Tensor, W: torch.Tensor, info: MixInfo) -> torch.Tensor: ...

    def bytes_sent(self, W: torch.Tensor, n_params: int, dtype: torch.dtype) -> int: ...

    # optional: counted(n) -> the ids of the nodes whose models are evaluated (default all; MoNNA's honest nodes)
    # optional: poisons_data, True when the mixer needs `MixInfo.flipped` (label flipping)


@dataclass(frozen=True)
class InverseTimeDecay:
    """gamma_t / gamma_0 = 1 / (s / tau + 1), s the step count at the last multiple of `every` (rounds t = 1, 2, ...
    are steps s = 0, 1, ...): the MoNNA code's schedule (tau = every = 50 on MNIST: gamma_0 / (floor(s / 50) + 1))."""

    tau: float = 50.0
    every: int = 50

    def __post_init__(self) -> None:
        if not self.tau > 0 or isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise ValueError(f"tau must be > 0 and every an integer >= 1, got tau={self.tau!r}, every={self.every!r}")

    def __call__(self, t: int) -> float:
        s = (t - 1) // self.every * self.every  # the step at which gamma was last recomputed
        return 1.0 / (s / self.tau + 1.0)


@dataclass(frozen=True)
class Gossip:
    """Linear gossip: Q steps X <- W X (Q = 1 in D-PSGD, DFedAvg and DFedSAM; Q > 1 in DFedSAM-MGS)."""

    steps: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps (gossip steps per round, Q) must be an integer >= 1, got {self.steps!r}")

    def __call__(self, X: torch.Tensor, W: torch.Tensor, info: MixInfo) -> torch.Tensor:
        return gossip(X, W, self.steps)  # z^(q+1) = W z^(q), q = 0..Q-1

    def bytes_sent(self, W: torch.Tensor, n_params: int, dtype: torch.dtype) -> int:
        """Every node sends its model to every neighbour with w_ij != 0, once per gossip step."""
        return gossip_bytes(W, n_params, self.steps, dtype)


@dataclass
class NetworkState:
    """Everything that changes while one algorithm trains on the network."""

    algorithm: Algorithm
    executor: LoopExecutor | BatchedExecutor
    ctx: LocalContext
    X: torch.Tensor  # (N, P) node models
    client_state: Tensors  # each (N, ...): one row per node
    rng: np.random.Generator  # availability and the mixer's randomness
    generator: torch.Generator  # minibatches, drawn as the federation draws them
    round: int = 0
    bytes_sent: int = 0
    active: int = 0  # nodes available in the last round (all at round 0)


class Decentralized:
    """A decentralized task: the federation's nodes (data, model, local settings) on a mixing schedule W(t)."""

    def __init__(self, federation: Federation, mixing: torch.Tensor | TimeVarying, *, mixer: Mixer | None = None,
                 gossip_steps: int = 1, availability: float | Participation = 1.0, eval_nodes: int | None = None,
                 shared_init: bool = True, lr_schedule: Callable[[int], float] | None = None):
        self.fed = federation
        self.schedule = as_schedule(mixing)
        if self.schedule.n != federation.n_clients:
            raise ValueError(f"mixing must be over the federation's {federation.n_clients} nodes, "
                             f"got {self.schedule.n}")
        if mixer is not None and gossip_steps != 1:
            raise ValueError(f"gossip_steps applies to the default Gossip mixer; set it on the mixer, "
                             f"got {gossip_steps}")
        self.mixer = mixer if mixer is not None else Gossip(gossip_steps)
        self.availability = Uniform(fraction=availability) if isinstance(availability, (int, float)) else availability
        if eval_nodes is not None and not 1 <= eval_nodes <= federation.n_clients:
            raise ValueError(f"eval_nodes must be in [1, {federation.n_clients}] or None (all), got {eval_nodes}")
        # the nodes whose models count (a mixer with Byzantine nodes counts only the honest ones: `counted(n)`)
        counted = getattr(self.mixer, "counted", None)
        self.counted = np.arange(federation.n_clients) if counted is None else np.asarray(counted(federation.n_clients))
        # the nodes whose models are evaluated for the mean local accuracy: all counted, or evenly spaced ones
        count = len(self.counted) if eval_nodes is None else min(eval_nodes, len(self.counted))
        self.eval_ids = self.counted[np.unique(np.linspace(0, len(self.counted) - 1, count).round().astype(int))]
        self.final_models: dict[str, torch.Tensor] = {}  # label -> (N, P) node models after its last run
        self.shared_init = shared_init  # False: node i starts from its own x_i^0 (model init seeded seed + 1 + i)
        if lr_schedule is not None and not callable(lr_schedule):
            raise TypeError(f"lr_schedule must be a function of the round t (e.g. InverseTimeDecay()), "
                            f"got {lr_schedule!r}")
        self.lr_schedule = lr_schedule  # gamma_t = lr * lr_schedule(t); None: constant

    def start(self, algorithm: Algorithm) -> NetworkState:
        """Round 0: every node holds the federation's x^0 (or its own, without a shared init) and the algorithm's
        initial state."""
        fed = self.fed
        x = fed.initial_model()
        X = (x.expand(fed.n_clients, -1).clone() if self.shared_init else  # (N, P)
             torch.stack([fed.model.init(fed.seed + 1 + i, fed.device) for i in range(fed.n_clients)]))
        state = {k: v.expand(fed.n_clients, *v.shape).clone() for k, v in algorithm.init_client_state(x).items()}
        return NetworkState(algorithm, fed.executor_for(algorithm),
                            fed.context(algorithm),
                            X, state, np.random.default_rng(fed.seed),
                            torch.Generator(device=fed.device).manual_seed(fed.seed), active=fed.n_clients)

    def train_round(self, state: NetworkState) -> None:
        """One round: the available nodes train locally, then all models mix over W(t) (updates `state`)."""
        fed, n = self.fed, self.fed.n_clients
        state.round = t = state.round + 1
        ids = torch.as_tensor(self.availability.sample(t, n, state.rng), device=fed.device)  # (M,) sorted
        active = torch.zeros(n, dtype=torch.bool, device=fed.device)
        active[ids] = True
        W = self.schedule(t)
        check_mixing(W, n)
        if len(ids) < n:
            W = restrict(W, active)  # links to unavailable nodes dropped, their weight kept at home
        steps = fed.steps_for(ids)
        index = fed.sample_batches(ids, steps, state.generator)  # (M, K, B)
        rows = {k: v[ids] for k, v in state.client_state.items()}
        down = {"x": state.X if len(ids) == n else state.X[ids]}  # (M, P): each node starts from its own model
        ctx = state.ctx if self.lr_schedule is None else dataclasses.replace(state.ctx,
                                                                            lr=state.ctx.lr * self.lr_schedule(t))
        flipped = self.flipped_updates(state, ids, down["x"], index, steps, ctx) if getattr(
            self.mixer, "poisons_data", False) else None
        messages, rows = fed.train_cohort(state.algorithm, down, index, steps, rows, True, state.executor, ctx)
        if "delta" not in messages:
            raise ValueError(f"{state.algorithm.name}.client_update must return a message with 'delta' (the local "
                             f"update) to run on a network, got keys {sorted(messages)}")
        for k, v in rows.items():
            state.client_state[k][ids] = v
        if len(ids) == n:
            half = state.X + messages["delta"]  # (N, P) x_i^{t+1/2}
        else:
            half = state.X.index_add(0, ids, messages["delta"].to(state.X.dtype))  # (N, P), idle rows unchanged
        state.X = self.mixer(half, W, MixInfo(t, active, state.rng, flipped))
        state.bytes_sent += self.mixer.bytes_sent(W, half.shape[1], half.dtype)
        state.active = len(ids)

    def flipped_updates(self, state: NetworkState, ids: torch.Tensor, X: torch.Tensor, index: torch.Tensor,
                        steps: torch.Tensor | None, ctx: LocalContext) -> torch.Tensor:
        """(N, P): what nodes `ids` would move by plain SGD from their models X (M, P) on their round's batches
        `index` (M, K, B) with labels (C - 1) - y; zero rows for idle nodes. Label flipping's raw material."""
        fed = self.fed
        y = flip_labels(fed.y_train, fed.dataset.n_classes)  # (n,)
        active = None if steps is None else torch.arange(index.shape[1], device=fed.device) < steps[:, None]  # (M, K)

        def one(x: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor, on: torch.Tensor | None) -> torch.Tensor:
            return ctx.sgd(x, Batches(xb, yb, on)) - x

        delta = torch.func.vmap(one, in_dims=(0, 0, 0, None if active is None else 0))(
            X, fed.x_train[index], y[index], active)  # (M, P)
        return torch.zeros_like(state.X).index_copy(0, ids, delta.to(state.X.dtype))

    def run(self, algorithm: Algorithm, rounds: int, *, eval_every: int = 1, progress: bool = True,
            on_divergence: str = "raise", label: str | None = None) -> pd.DataFrame:
        """Train `algorithm` on every node for `rounds` rounds; the history, one row per evaluation.

        Columns: test_acc and test_loss of the averaged model x_bar = (1/N) sum_i x_i; local_acc, the mean test
        accuracy of the node models (over `eval_nodes`); consensus_distance (1/N) sum_i ||x_i - x_bar||^2;
        bytes_sent (cumulative, all node-to-node transfers); active, the nodes available in that round."""
        fed = self.fed
        rounds, eval_every, label = check_run(rounds, eval_every, on_divergence, label, str(algorithm))
        state = self.start(algorithm)
        # evaluation under the same threads: a digits-MLP node model took 2.3 ms on one thread, 58 ms on two
        with cpu_threads(fed.thread_count()):
            rows, diverged_at = train_rounds(label, rounds, eval_every, progress, lambda: self.train_round(state),
                                             lambda: state.X, lambda seconds: self._row(label, state, seconds))
        history = pd.DataFrame(rows)
        self.final_models[label] = state.X
        if diverged_at is not None:
            report_divergence(history, f"{label} diverged at round {diverged_at}", diverged_at, fed.lr, on_divergence)
        return history

    def _row(self, label: str, state: NetworkState, seconds: float) -> dict:
        fed, X = self.fed, state.X[self.counted]  # (N_counted, P)
        averaged = fed.scores(X.mean(0))  # the federation's metrics too, on the averaged model
        local = np.mean([fed.evaluate(state.X[i])["test_acc"] for i in self.eval_ids])
        return {"algorithm": label, "round": state.round, **averaged, "local_acc": float(local),
                "consensus_distance": consensus_distance(X), "bytes_sent": state.bytes_sent,
                "active": state.active, "wall_time": seconds}

    def compare(self, algorithms: Mapping[str, Algorithm] | Iterable[Algorithm], rounds: int,
                **run_kwargs) -> pd.DataFrame:
        """Run several algorithms on this network (same graph, availability, seed and batches); one long history."""
        named = algorithms.items() if isinstance(algorithms, Mapping) else ((str(a), a) for a in algorithms)
        return pd.concat([self.run(algo, rounds, label=name, **run_kwargs) for name, algo in named], ignore_index=True)

    def __repr__(self) -> str:
        return f"Decentralized({self.fed!r}, {self.schedule.name}, {self.mixer})"
