"""MoDeST: federated-style sampling without a server (de Vos et al., 2023), as a synchronous round simulator.

Paper: de Vos, Dhasade, Kermarrec, Lavoie, Pouwelse, Sharma, "MoDeST: Bridging the Gap between Federated and
Decentralized Learning with Decentralized Sampling", arXiv:2302.13837 (later "Plexus"); roles and defaults
from the authors' code (github.com/devos50/decentralized-learning, `accdfl/dfl/community.py`,
`sample_manager.py`, `peer_manager.py`).

Round k: every node derives the same order of the candidates by hashing (node id, k) (`sample_order`); the
participants S_k are the first s of that order that are considered active and answer a ping (`available`).
Each participant trains E local steps from the model it received, then sends it to the a aggregators
A_{k+1} = the first a available nodes of round k+1's order. An aggregator averages, uniformly, the first
floor(s * sf) models to arrive (on a timeout, what it has if that is at least `LIVENESS` = 3 models, else
the round is lost), and sends the average to S_{k+1}. A node that crashed (no LEAVE message) simply stops
answering pings; a node whose last activity is older than the inactivity threshold I leaves the candidates.

Simplifications, stated: all nodes share one population view (the code gossips views on every model transfer,
so live views agree within a round or two); time is rounds, so "arrival order" is a seeded random speed per
node and round; an aggregator that crashed after being chosen costs the participants a timeout and a resend
to the recomputed A_{k+1} (the code's ack mechanism), counted in `transfers` and `timeouts`.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from . import validation as V
from .algorithms.base import Algorithm
from .federation import Federation
from .rounds import check_run, report_divergence, train_rounds
from .runtime import cpu_threads

LIVENESS = 3  # models an aggregator needs to proceed after its timeout (the code's fixed threshold)


def sample_order(candidates: np.ndarray, round: int) -> np.ndarray:
    """The candidates sorted by MD5(id | round): the same permutation on every node, a new one every round."""
    keys = [hashlib.md5(f"{int(p)}|{round}".encode()).hexdigest() for p in candidates]
    return np.asarray(candidates, dtype=np.int64)[np.argsort(keys, kind="stable")]


@dataclass(frozen=True)
class Churn:
    """Who is alive in each round: a fraction of the nodes crash (without LEAVE) at `crash_round`, and a
    fraction of the crashed rejoin at `rejoin_round` (seeded choice). No crash by default."""

    crash_round: int | None = None
    crash_fraction: float = 0.8
    rejoin_round: int | None = None
    rejoin_fraction: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        V.probability("crash_fraction", self.crash_fraction)
        V.probability("rejoin_fraction", self.rejoin_fraction)
        if self.rejoin_round is not None and (self.crash_round is None or self.rejoin_round <= self.crash_round):
            raise ValueError(f"rejoin_round must come after crash_round, got {self.rejoin_round} "
                             f"and {self.crash_round}")

    def crashed(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(the nodes that crash, the crashed nodes that rejoin), fixed by the seed."""
        rng = np.random.default_rng(self.seed)
        crash = rng.choice(n, size=round(self.crash_fraction * n), replace=False)
        return crash, rng.choice(crash, size=round(self.rejoin_fraction * len(crash)), replace=False)

    def alive(self, round: int, n: int) -> np.ndarray:
        """(N,) bool: the nodes that answer in `round`."""
        up = np.ones(n, dtype=bool)
        if self.crash_round is not None and round >= self.crash_round:
            crash, rejoin = self.crashed(n)
            up[crash] = False
            if self.rejoin_round is not None and round >= self.rejoin_round:
                up[rejoin] = True
        return up

    def sample(self, round: int, n_clients: int, rng: np.random.Generator) -> np.ndarray:
        """A `Participation`: every alive node (D-PSGD's availability under this churn)."""
        return np.flatnonzero(self.alive(round, n_clients))

    def probabilities(self, n_clients: int) -> np.ndarray:
        return np.ones(n_clients)


@dataclass(frozen=True)
class AliveSample:
    """A `Participation` for server FedAvg under churn: `count` nodes uniformly among the alive ones."""

    churn: Churn
    count: int

    def sample(self, round: int, n_clients: int, rng: np.random.Generator) -> np.ndarray:
        alive = np.flatnonzero(self.churn.alive(round, n_clients))
        return np.sort(rng.choice(alive, size=min(self.count, len(alive)), replace=False))

    def probabilities(self, n_clients: int) -> np.ndarray:
        return np.full(n_clients, min(1.0, self.count / n_clients))


@dataclass
class View:
    """The population view: each node's last active round; candidates exclude nodes inactive for > I rounds."""

    last_active: np.ndarray  # (N,) int
    inactivity: int
    pings: int = 0

    def candidates(self, k: int) -> np.ndarray:
        return np.flatnonzero(self.last_active >= k - self.inactivity)

    def available(self, k: int, count: int, alive: np.ndarray, ping: bool = True) -> np.ndarray:
        """avail(k, c): walk round k's order over the candidates, ping each, keep the first `count` that answer.

        ping=False skips the liveness check (the first `count` of the order, alive or not): the broken rule."""
        order = sample_order(self.candidates(k), k)
        if not ping:
            return order[:count]
        answered = []
        for p in order:
            self.pings += 1
            if alive[p]:
                answered.append(p)
                if len(answered) == count:
                    break
        return np.asarray(answered, dtype=np.int64)


@dataclass(frozen=True)
class MoDeST:
    """MoDeST's parameters: sample size s, aggregators a, success fraction sf, inactivity threshold I."""

    sample_size: int = 10
    aggregators: int = 1
    success_fraction: float = 1.0
    inactivity: int = 50
    ping: bool = True  # False breaks the sampling rule: participants are taken from the order without a ping
    churn: Churn = field(default_factory=Churn)

    def __post_init__(self) -> None:
        V.integer("sample_size", self.sample_size, 1)
        V.integer("aggregators", self.aggregators, 1, self.sample_size)
        V.probability("success_fraction", self.success_fraction, zero=False)
        V.integer("inactivity", self.inactivity, 0)

    @property
    def threshold(self) -> int:
        """Models an aggregator waits for: floor(s * sf), at least one."""
        return max(1, int(self.sample_size * self.success_fraction))

    def run(self, fed: Federation, algorithm: Algorithm, rounds: int, *, eval_every: int = 1,
            progress: bool = False, on_divergence: str = "raise", label: str = "MoDeST") -> pd.DataFrame:
        """Train `algorithm`'s local update under MoDeST's sampling on the federation's nodes; the history has
        test_acc/test_loss of the current model, transfers (models sent, cumulative), bytes_sent, pings,
        aggregated (models averaged in the last round), models (averaged so far), lost_rounds and timeouts
        (cumulative)."""
        rounds, eval_every, label = check_run(rounds, eval_every, on_divergence, label, label)
        n, device = fed.n_clients, fed.device
        view = View(np.zeros(n, dtype=np.int64), self.inactivity)
        rng, generator = np.random.default_rng(fed.seed), torch.Generator(device=device).manual_seed(fed.seed)
        x, executor, ctx = fed.initial_model(), fed.executor_for(algorithm), fed.context(algorithm)
        stats = {"transfers": 0, "aggregated": 0, "models": 0, "lost_rounds": 0, "timeouts": 0}
        model_bytes = fed.model.n_params * x.element_size()
        state = {"x": x, "round": 0}

        def step() -> None:
            k = state["round"] = state["round"] + 1
            alive = self.churn.alive(k, n)
            # the participants of round k: the first s available nodes of its order (they received the model)
            sample = np.sort(view.available(k, self.sample_size, alive, self.ping))
            live = sample[alive[sample]]  # a node taken without a ping may be dead: it never trains
            view.last_active[live] = k
            aggregators = view.available(k + 1, self.aggregators, alive)  # chosen now, by ping, for round k+1
            stats["transfers"] += len(live) * len(aggregators)  # every participant sends to every aggregator
            if not self.churn.alive(k + 1, n)[aggregators].any():  # all crashed in between: timeout and resend
                stats["timeouts"] += 1
                aggregators = view.available(k + 1, self.aggregators, self.churn.alive(k + 1, n))
                stats["transfers"] += len(live) * len(aggregators)
            arrived = live[np.argsort(rng.random(len(live)), kind="stable")][:self.threshold]  # first to arrive
            if len(arrived) < min(LIVENESS, self.threshold) or len(aggregators) == 0:
                stats["lost_rounds"] += 1  # timeout with too few models: the aggregation is aborted
                stats["aggregated"] = 0
                return
            ids = torch.as_tensor(np.sort(arrived), device=device)
            index = fed.sample_batches(ids, fed.steps_for(ids), generator)  # (M, K, B)
            down = {"x": state["x"].expand(len(ids), -1)}  # (M, P) the model each participant received
            messages, _ = fed.train_cohort(algorithm, down, index, fed.steps_for(ids), None, True, executor, ctx)
            state["x"] = state["x"] + messages["delta"].mean(0)  # uniform mean of the received models (FedAvg)
            stats["aggregated"] = len(ids)
            stats["models"] += len(ids)
            stats["transfers"] += len(aggregators) * self.sample_size  # each aggregator to S_{k+1}

        def row(seconds: float) -> dict:
            return {"algorithm": label, "round": state["round"], **fed.evaluate(state["x"]), **stats,
                    "bytes_sent": stats["transfers"] * model_bytes, "pings": view.pings, "wall_time": seconds}

        with cpu_threads(fed.thread_count()):
            rows, diverged_at = train_rounds(label, rounds, eval_every, progress, step, lambda: state["x"], row)
        history = pd.DataFrame(rows)
        if diverged_at is not None:
            report_divergence(history, f"{label} diverged at round {diverged_at}", diverged_at, fed.lr, on_divergence)
        return history
