"""The experiment protocol for runs without a server's round loop (gossip, sampled peers, a final merge).

`protocol.compare` tunes and runs `Federation.run`; peer-to-peer runs have other shapes, so the same rules are
applied here to any method given as `method(dataset, seed, lr, rounds) -> history`: every method gets the same
learning-rate grid, scored on `protocol.validation_split` of the training data (never the test set), the grid
grows by one geometric step while the best value sits at an edge (at most `max_extensions` times), and the
chosen rate then runs on every seed on the test set. Verdicts come from `protocol.verdict` on per-seed
differences (`PeerComparison.difference`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .algorithms import FedAvg
from .algorithms.base import Algorithm
from .data import Dataset
from .decentralized import Decentralized
from .federation import Federation
from .history import per_seed_difference, window_mean
from .models import make_model
from .partition import partition
from .protocol import LRS, SEEDS, validation_split
from .topology import mixing_by_name

Method = Callable[[Dataset, int, float, int], pd.DataFrame]  # (dataset, seed, lr, rounds) -> history


def last_fifth(column: str = "test_acc") -> Callable[[pd.DataFrame], float]:
    """A score: `column` averaged over the last fifth of the rounds; -inf for a run that diverged."""
    def score(history: pd.DataFrame) -> float:
        if history.attrs.get("diverged_at") is not None:
            return -math.inf
        return window_mean(history, column, last=max(1, int(history["round"].max()) // 5)).mean
    return score


def run_seed(method: Method, dataset: Dataset, seed: int, lr: float, rounds: int, label: str) -> pd.DataFrame:
    """One run, labelled, with its seed and learning rate as columns (attrs kept, a final `measure` as a column)."""
    history = method(dataset, seed, lr, rounds)
    attrs = dict(history.attrs)
    history = history.assign(algorithm=label, seed=seed, lr=lr)
    if "measure" in attrs:  # a number measured on the final models, kept as a column through concatenation
        history["measure"] = attrs["measure"]
    history.attrs = attrs
    return history


def tune_lr(method: Method, dataset: Dataset, *, rounds: int, lrs: Sequence[float] = LRS,
            seeds: Sequence[int] = (0,), fraction: float = 0.2, score: Callable[[pd.DataFrame], float] | None = None,
            max_extensions: int = 2, name: str = "method") -> tuple[float, pd.DataFrame]:
    """(chosen lr, scores per grid point): the mean validation score over `seeds`, grid extended at its edges."""
    if not lrs:
        raise ValueError("lrs must hold at least one learning rate")
    score = score or last_fifth()
    grid, scores, grown = sorted(set(lrs)), {}, 0
    splits = {seed: validation_split(dataset, fraction, seed)[1] for seed in seeds}
    while True:
        for lr in grid:
            if lr not in scores:
                scores[lr] = float(np.mean([score(run_seed(method, splits[s], s, lr, rounds, name)) for s in seeds]))
        finite = [lr for lr in grid if np.isfinite(scores[lr])]
        best = max(finite, key=lambda lr: (scores[lr], -lr)) if finite else grid[0]  # ties: the smaller step
        if len(grid) < 2 or best not in (grid[0], grid[-1]) or grown == max_extensions or not finite:
            break
        if best == grid[0]:
            grid.insert(0, grid[0] ** 2 / grid[1])  # one geometric step below the edge
        else:
            grid.append(grid[-1] ** 2 / grid[-2])
        grown += 1
    table = pd.DataFrame({"lr": list(scores), "score": list(scores.values())}).sort_values("lr", ignore_index=True)
    return best, table


@dataclass(frozen=True)
class PeerComparison:
    """Methods tuned alike on validation splits, then run at their chosen rate on every seed (test set)."""

    history: pd.DataFrame  # one row per evaluation, with the columns algorithm, seed, lr
    choices: pd.DataFrame  # method -> chosen lr and the grid's scores

    def difference(self, method: str, baseline: str, summary: Callable[[pd.DataFrame], float]) -> pd.Series:
        """summary(method) - summary(baseline) per seed."""
        return per_seed_difference(self.history, method, baseline, summary)


def compare(dataset: Dataset, methods: Mapping[str, Method], *, rounds: int, seeds: Sequence[int] = SEEDS,
            lrs: Sequence[float] = LRS, tune_seeds: Sequence[int] = (0,), tune_rounds: int | None = None,
            fraction: float = 0.2, score: Callable[[pd.DataFrame], float] | None = None,
            fixed_lr: float | None = None) -> PeerComparison:
    """Tune every method on the same grid (or give all `fixed_lr`, e.g. when the claim is about the graph at one
    step size), then run each at its choice on every seed."""
    chosen, rows = {}, []
    for name, method in methods.items():
        if fixed_lr is None:
            lr, table = tune_lr(method, dataset, rounds=tune_rounds or rounds, lrs=lrs, seeds=tune_seeds,
                                fraction=fraction, score=score, name=name)
        else:
            lr, table = fixed_lr, pd.DataFrame({"lr": [fixed_lr], "score": [float("nan")]})
        chosen[name] = lr
        rows.append({"method": name, "lr": lr, "grid": ", ".join(f"{g:.3g}: {s:.3f}" for g, s in
                                                                zip(table.lr, table.score))})
    history = pd.concat([run_seed(m, dataset, seed, chosen[name], rounds, name) for name, m in methods.items()
                         for seed in seeds], ignore_index=True)
    return PeerComparison(history, pd.DataFrame(rows).set_index("method"))


def node_federation(dataset: Dataset, n_nodes: int, *, alpha: float, seed: int, lr: float, local_steps: int,
                    batch_size: int = 16, hidden: tuple[int, ...] = (64,), **settings) -> Federation:
    """The nodes of a peer-to-peer task: `dataset` split by Dirichlet(alpha) labels over n_nodes (seeded), an MLP."""
    parts = partition("dirichlet", dataset.y_train, n_nodes, seed=seed, alpha=alpha)
    model = make_model("mlp", dataset.input_shape, dataset.n_classes, hidden=hidden)
    return Federation(dataset, parts, model, local_steps=local_steps, batch_size=batch_size, lr=lr, seed=seed,
                      **settings)


def gossip_method(topology: str, n_nodes: int, *, alpha: float, local_steps: int, algorithm: Callable[[], Algorithm]
                  = FedAvg, degree: int = 3, gossip_steps: int = 1, availability: float = 1.0,
                  eval_every: int = 5, measure: Callable[[Federation, torch.Tensor], float] | None = None) -> Method:
    """`algorithm`'s local update, then Q gossip steps on a named graph (Metropolis-Hastings W), as a method
    (dataset, seed, lr, rounds) -> history: FedAvg's local SGD is DFedAvg (D-PSGD with local_steps=1).

    The random regular graph is drawn with the run's seed, like the partition. attrs["distances"] holds each
    node's ||x_i - x_bar||^2 at the end, attrs["measure"] `measure(federation, X)` of the final models X (N, P)."""
    def method(dataset: Dataset, seed: int, lr: float, rounds: int) -> pd.DataFrame:
        fed = node_federation(dataset, n_nodes, alpha=alpha, seed=seed, lr=lr, local_steps=local_steps)
        net = Decentralized(fed, mixing_by_name(topology, n_nodes, degree, seed), gossip_steps=gossip_steps,
                            availability=availability)
        history = net.run(algorithm(), rounds, eval_every=eval_every, progress=False, on_divergence="stop",
                          label="run")
        X = net.final_models["run"]  # (N, P)
        history.attrs["distances"] = tuple((X - X.mean(0)).pow(2).sum(1).tolist())
        if measure is not None:
            history.attrs["measure"] = float(measure(fed, X))
        return history
    return method
