"""Centralized training for the appendix chapters: one minibatch loop, history rows, and the protocol applied by hand.

The appendix trains one model on one machine (local learning, memory-efficient optimisers, sharpness), so there is
no Federation; the experiment rules stay the book's: every method gets the same small learning-rate grid, scored
on a validation split of the training data (`protocol.validation_split`), extended at its edge, then runs at its
choice on every seed; claims are verdicts on per-seed differences (`protocol.verdict`).

A method is a `Build`: `(dataset, seed, lr) -> Learner`, where a learner takes one optimisation step on a minibatch
and scores a held-out set:

    >>> result = compare(data, {"SGD": sgd_build, "SAF": saf_build}, epochs=30)
    >>> verdict(result.difference("SAF", "SGD", lambda h: window_mean(h, last=5).mean))
"""
from __future__ import annotations

import math
import time
import warnings
from typing import Callable, Mapping, Protocol, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from . import validation as V
from .data import Dataset
from .history import row, window_mean
from .protocol import MIN_SEEDS, SEEDS, Comparison, Tuned, validation_split
from .runtime import cpu_threads

LRS: tuple[float, ...] = (1e-3, 3e-3, 1e-2)  # the Adam-scale grid every appendix method is tuned on


class Learner(Protocol):
    """One model and its optimiser: `step` trains on a minibatch, `evaluate` scores a held-out set."""

    def step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, epoch: int) -> float:
        """One optimisation step on samples `index` of the training set (x, y); returns the training loss."""

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """At least test_acc and test_loss on (x, y), plus any method-specific measures.

    A learner may also define `final(dataset) -> dict`: measures of the trained model (a Hessian eigenvalue, ...)
    that `fit` adds to the last row only."""


Build = Callable[[Dataset, int, float], Learner]


def classifier_scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Accuracy and mean cross-entropy of `model` on (x, y), in evaluation mode without gradients."""
    with torch.no_grad():
        logits = model(x)  # (N, C)
        return {"test_acc": float((logits.argmax(1) == y).float().mean()),
                "test_loss": float(F.cross_entropy(logits, y))}


def seeded_init(seed: int, make: Callable[[], nn.Module]) -> nn.Module:
    """`make()` with torch's global generator set to `seed` inside, restored afterwards (same seed, same weights)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def fit(build: Build, dataset: Dataset, *, seed: int, lr: float, epochs: int, batch_size: int = 64,
        label: str = "", eval_every: int = 1, progress: bool = False, threads: int | None = 1,
        final: bool = True) -> pd.DataFrame:
    """Train `build(dataset, seed, lr)` for `epochs` passes over shuffled minibatches; one history row per evaluation.

    `round` counts epochs (0: before training); `wall_time` sums the seconds spent in `step` only, so evaluation
    does not blur a speed comparison; the learner's `final` measures, if any, join the last row. A non-finite
    training loss stops the run with a warning (`attrs["diverged_at"]` = epoch), keeping the rows so far.
    `threads` intra-op CPU threads (the appendix's models are tiny: more threads only add synchronisation);
    `final=False` skips the final measures (tuning scores only the held-out accuracy or loss)."""
    with cpu_threads(threads):
        return _fit(build, dataset, seed, lr, epochs, batch_size, label, eval_every, progress, final)


def _fit(build: Build, dataset: Dataset, seed: int, lr: float, epochs: int, batch_size: int, label: str,
         eval_every: int, progress: bool, final: bool) -> pd.DataFrame:
    seed, epochs = V.seed(seed), V.integer("epochs", epochs, 1)
    batch_size, eval_every = V.integer("batch_size", batch_size, 1), V.integer("eval_every", eval_every, 1)
    lr = V.positive("lr", lr)
    learner = build(dataset, seed, lr)
    generator = torch.Generator().manual_seed(seed)
    n = len(dataset.y_train)
    extra = {"seed": seed, "lr": lr}
    rows = [row(label, 0, learner.evaluate(dataset.x_test, dataset.y_test), 0, 0, 0.0, **extra)]
    seconds, diverged = 0.0, None
    for epoch in tqdm(range(1, epochs + 1), desc=label, disable=not progress, leave=False):
        order = torch.randperm(n, generator=generator).to(dataset.device)  # (n,)
        start = time.perf_counter()
        for index in order.split(batch_size):
            loss = learner.step(dataset.x_train[index], dataset.y_train[index], index, epoch)
            if not math.isfinite(loss):
                diverged = epoch
                break
        seconds += time.perf_counter() - start
        if diverged is not None:
            warnings.warn(f"{label or 'run'} (seed {seed}, lr {lr:g}) diverged in epoch {epoch}: the training loss "
                          f"is {loss}; its history stops there", RuntimeWarning, stacklevel=3)
            break
        if epoch % eval_every == 0 or epoch == epochs:
            rows.append(row(label, epoch, learner.evaluate(dataset.x_test, dataset.y_test), 0, 0, seconds, **extra))
    if final and diverged is None and hasattr(learner, "final"):  # measures taken once, on the trained model
        rows[-1].update(learner.final(dataset))
    history = pd.DataFrame(rows)
    history.attrs["diverged_at"] = diverged
    return history


def accuracy_score(history: pd.DataFrame) -> float:
    """Validation accuracy averaged over the last fifth of the epochs (at least one); -inf for a diverged run."""
    if history.attrs.get("diverged_at") is not None:
        return -math.inf
    return window_mean(history, "test_acc", last=max(1, int(history["round"].max()) // 5)).mean


def loss_score(history: pd.DataFrame) -> float:
    """Minus the validation loss averaged over the last fifth of the epochs; -inf for a diverged run."""
    if history.attrs.get("diverged_at") is not None:
        return -math.inf
    return -window_mean(history, "test_loss", last=max(1, int(history["round"].max()) // 5)).mean


def tune(dataset: Dataset, build: Build, *, epochs: int, name: str, lrs: Sequence[float] = LRS,
         seeds: Sequence[int] = (0,), fraction: float = 0.2, batch_size: int = 64,
         score: Callable[[pd.DataFrame], float] = accuracy_score, max_extensions: int = 2) -> Tuned:
    """The learning rate of `build` chosen on validation splits, as `protocol.tune` chooses a federated one.

    Every grid point trains on each seed's `validation_split(dataset, fraction, seed)` and scores the held-out
    samples; while the best lies at an edge of the grid, the grid grows one geometric step beyond it (at most
    `max_extensions` times, then a warning); ties go to the point off the edge, then to the smaller step."""
    grid = sorted(set(V.positive("lrs entries", lr) for lr in lrs))
    if not grid:
        raise ValueError("lrs must hold at least one learning rate")
    splits = {seed: validation_split(dataset, fraction, seed)[1] for seed in seeds}
    scores: dict[float, float] = {}
    extended: list[str] = []
    while True:
        for lr in grid:
            if lr not in scores:
                scores[lr] = float(np.mean([score(fit(build, splits[s], seed=s, lr=lr, epochs=epochs,
                                                      batch_size=batch_size, label=name, final=False))
                                            for s in seeds]))
        top = max(scores.values())
        best = min((lr for lr in grid if scores[lr] == top), key=lambda lr: (lr in (grid[0], grid[-1]), lr))
        if len(grid) < 2 or best not in (grid[0], grid[-1]) or len(extended) == max_extensions:
            break
        new = grid[0] ** 2 / grid[1] if best == grid[0] else grid[-1] ** 2 / grid[-2]
        grid = sorted([*grid, new])
        extended.append(f"lr {'down' if new < best else 'up'} to {new:.3g}")
    at_edge = ("lr",) if len(grid) > 1 and best in (grid[0], grid[-1]) else ()
    if at_edge:
        warnings.warn(f"{name}: the best lr {best:g} is still at the edge of the grid after {len(extended)} "
                      "extensions; widen the grid", RuntimeWarning, stacklevel=2)
    table = pd.DataFrame({"lr": list(scores), "server_lr": None, "score": list(scores.values())}).sort_values("lr")
    return Tuned(name, build, best, None, table.reset_index(drop=True), tuple(extended), at_edge)


def compare(dataset: Dataset, builds: Mapping[str, Build], *, epochs: int, lrs: Sequence[float] = LRS,
            seeds: Sequence[int] = SEEDS, tune_seeds: Sequence[int] = (0,), tune_epochs: int | None = None,
            batch_size: int = 64, score: Callable[[pd.DataFrame], float] = accuracy_score,
            fixed_lr: Mapping[str, float] | None = None, progress: bool = True) -> Comparison:
    """Tune every method's learning rate on the same grid (`tune`), then train each at its choice on every seed.

    `fixed_lr` names methods that skip tuning and keep a given rate (the panel uses it to stay fast; the
    notebooks' claims tune every method). The history holds every run with the columns seed and lr."""
    if len(set(seeds)) < len(seeds):
        raise ValueError(f"seeds must be distinct, got {list(seeds)}")
    if len(seeds) < MIN_SEEDS:
        warnings.warn(f"{len(seeds)} seeds: every verdict will be inconclusive (a claim needs {MIN_SEEDS})",
                      RuntimeWarning, stacklevel=2)
    fixed = dict(fixed_lr or {})
    tuned = {name: (Tuned(name, build, float(fixed[name]), None, pd.DataFrame(columns=["lr", "server_lr", "score"]))
                    if name in fixed else
                    tune(dataset, build, epochs=tune_epochs or epochs, name=name, lrs=lrs, seeds=tune_seeds,
                         batch_size=batch_size, score=score))
             for name, build in tqdm(builds.items(), desc="tuning", disable=not progress or not builds, leave=False)}
    runs = [(name, t, seed) for name, t in tuned.items() for seed in seeds]
    histories = [fit(t.algorithm, dataset, seed=seed, lr=t.lr, epochs=epochs, batch_size=batch_size, label=name)
                 for name, t, seed in tqdm(runs, desc="runs", disable=not progress, leave=False)]
    return Comparison(pd.concat(histories, ignore_index=True), tuned)
