"""Chapter 20: FedAMD's anchor sampling against FedAvg and SCAFFOLD under partial participation.

Every client gets the same number of samples (`equal_dirichlet`), so that FedAMD's plain means over clients
and FedAvg's size weights minimize the same objective. Runs repeat over a few seeds; the figure shows the
mean and the spread from worst to best seed. `experiment` runs the comparison on `flbook.protocol` (every method
and the step-size controls tuned alike on a validation split, 3 seeds) and `claims` reads its verdicts.
"""
from __future__ import annotations

import math
from typing import Iterator, Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure

from ..algorithms import FedAMD, FedAvg, Scaffold, anchor_table
from ..data import Dataset, load
from ..federation import Federation
from ..history import per_seed_difference, window_mean
from ..partition import inner_dirichlet
from ..protocol import SERVER_LRS, Comparison, claim_row, claims_table, compare, step_size_controls
from ..widgets import chosen, knob, standard_controls

ALGORITHMS = ("FedAvg", "SCAFFOLD", "FedAMD")
DEFAULTS: dict[str, object] = {"batch_size": 14, "anchor_probability": 0.2, "warm_start": True, "seeds": 2}
HIDDEN = ("partitioner", "classes_per_client", "shards_per_client", "sigma")  # the split is always equal_dirichlet
LRS = (0.05, 0.15, 0.45, 1.35)  # the local lrs every method and control tries (extended at an edge)


def equal_dirichlet(labels: torch.Tensor | np.ndarray, n_clients: int, alpha: float, seed: int = 0) -> list[np.ndarray]:
    """Dirichlet(alpha) label mixes on equal shards of len(labels) // n_clients samples (the remainder is left out).

    With equal shards FedAMD's plain means over clients weigh them as FedAvg's size weights do."""
    shard = len(labels) // n_clients
    return inner_dirichlet(labels[: shard * n_clients], [shard] * n_clients, alpha, seed=seed)


def federation(values: Mapping[str, object], dataset: Dataset, seed: int, lr: float) -> Federation:
    """The chapter's federation: equal Dirichlet shards of `dataset` for this seed, at local learning rate lr."""
    parts = equal_dirichlet(dataset.y_train, int(values["n_clients"]), float(values["alpha"]), seed=seed)
    return Federation(dataset, parts, str(values["model"]), local_steps=int(values["local_steps"]),
                      batch_size=int(values.get("batch_size", 32)), lr=lr,
                      participation=float(values["participation"]), seed=seed)


def stream(values: Mapping[str, object], progress: bool = True) -> Iterator[pd.DataFrame]:
    """FedAvg, SCAFFOLD and FedAMD on equal Dirichlet shards for values["seeds"] seeds, yielding the history so far
    after every run, so that a panel draws the first curve while the others train.

    Keys: dataset, model, n_clients, alpha, participation (fraction per round), local_steps, batch_size, lr,
    rounds, seed, seeds, anchor_probability, warm_start (FedAMD's table at x^0, as the paper), algorithms."""
    names = chosen(values, ALGORITHMS)
    dataset, rounds, first = load(str(values["dataset"])), int(values["rounds"]), int(values.get("seed", 0))
    done: list[pd.DataFrame] = []
    for seed in range(first, first + int(values.get("seeds", 1))):
        lr = float(values["lr"])
        fed = federation(values, dataset, seed, lr)
        table = anchor_table(fed) if values.get("warm_start", True) else None
        algorithms = {"FedAvg": FedAvg(), "SCAFFOLD": Scaffold(),
                      "FedAMD": FedAMD(float(values.get("anchor_probability", 0.2)), seed=seed, initial_table=table)}
        for history in fed.compare_each({name: algorithms[name] for name in names}, rounds, progress=progress,
                                        on_divergence="stop"):
            yield pd.concat([*done, history.assign(seed=seed, lr=lr)], ignore_index=True)
        done.append(history.assign(seed=seed, lr=lr))


def run(values: Mapping[str, object], progress: bool = True) -> pd.DataFrame:
    """The last history of `stream`: every selected method on every seed."""
    history = None
    for history in stream(values, progress):
        pass
    return history


class WarmTask:
    """The protocol's task function (dataset, seed, lr) -> Federation, and a FedAMD factory that takes its anchor
    table at x^0 from the federation built last (`protocol.run` builds the federation, then the method)."""

    def __init__(self, values: Mapping[str, object], algorithm: type[FedAMD] = FedAMD) -> None:
        self.values, self.algorithm, self.last = dict(values), algorithm, None

    def __call__(self, dataset: Dataset, seed: int, lr: float) -> Federation:
        self.last = federation(self.values, dataset, seed, lr)
        return self.last

    def fedamd(self) -> FedAMD:
        """FedAMD with the paper's warm start on the federation just built."""
        if self.last is None:
            raise ValueError("WarmTask.fedamd needs a federation: call the task first")
        return self.algorithm(float(self.values.get("anchor_probability", 0.2)), seed=self.last.seed,
                              initial_table=anchor_table(self.last))


def late_loss(run: pd.DataFrame) -> float:
    """Test loss averaged over the last fifth of a run's rounds."""
    return window_mean(run, "test_loss", last=max(1, run["round"].max() / 5)).mean


def early_loss(run: pd.DataFrame) -> float:
    """Test loss at the evaluation nearest a quarter of the rounds (a speed measure)."""
    quarter = run["round"].max() / 4
    return float(run.loc[(run["round"] - quarter).abs().idxmin(), "test_loss"])


def late_accuracy(run: pd.DataFrame) -> float:
    """Test accuracy averaged over the last fifth of a run's rounds."""
    return window_mean(run, "test_acc", last=max(1, run["round"].max() / 5)).mean


def experiment(values: Mapping[str, object], *, tune_rounds: int | None = None, lrs=LRS, controls: bool = True,
               algorithm: type[FedAMD] = FedAMD) -> Comparison:
    """`protocol.compare` of FedAvg, SCAFFOLD and FedAMD (warm start), with FedAvg with a server lr and FedAvgM as
    controls: every one tunes its local lr (the controls also their server lr) on a validation split, scored by
    minus the late validation loss, then runs on 3 seeds."""
    task = WarmTask(values, algorithm)
    score = lambda h: -math.inf if h.attrs.get("diverged_at") is not None else -late_loss(h)  # noqa: E731
    methods = {"FedAvg": lambda: FedAvg(), "SCAFFOLD": lambda: Scaffold(), "FedAMD": task.fedamd}
    return compare(load(str(values["dataset"])), task, methods, rounds=int(values["rounds"]), lrs=lrs,
                   server_lrs=None, grids=dict.fromkeys(step_size_controls(), SERVER_LRS) if controls else None,
                   tune_rounds=tune_rounds, controls=controls, score=score)


def claims(tuned: pd.DataFrame, shared: pd.DataFrame) -> pd.DataFrame:
    """The "paper vs this notebook" table: `shared` from `run` (every method at one local lr, as in the paper) and
    `tuned` from `experiment` (each at its tuned step sizes); verdicts from per-seed differences."""
    lr = float(shared["lr"].iloc[0])
    def d(history, baseline, summary):
        return per_seed_difference(history, "FedAMD", baseline, summary)
    rows = [claim_row(f"Lower test loss than FedAvg at the end, both at lr {lr:g}", "fewer communication rounds",
                      d(shared, "FedAvg", late_loss), kind="less",
                      why="FedAMD minus FedAvg, last fifth of the rounds; the curves still fall: a speed claim"),
            claim_row(f"... and after a quarter of the rounds, both at lr {lr:g}", "", d(shared, "FedAvg", early_loss),
                      kind="less", why="speed claim"),
            claim_row("Lower test loss than FedAvg at the end, each at its tuned lr", "fewer communication rounds",
                      d(tuned, "FedAvg", late_loss), kind="less", why="FedAvg takes a far larger step when tuned"),
            claim_row("... and after a quarter of the rounds, each at its tuned lr", "", d(tuned, "FedAvg", early_loss),
                      kind="less", why="speed claim"),
            claim_row("Test accuracy improves significantly (by more than 0.01), tuned", "significant gains",
                      d(tuned, "FedAvg", late_accuracy), margin=0.01, why="mean over the last fifth of the rounds")]
    rows += [claim_row(f"Lower late test loss than {other}, tuned", "(baseline or step-size control)",
                       d(tuned, other, late_loss), kind="less", why="each at its tuned step sizes")
             for other in pd.unique(tuned["algorithm"]) if other not in ("FedAMD", "FedAvg")]
    return claims_table(rows)


def figure(history: pd.DataFrame) -> Figure:
    """Test loss (left) and accuracy (right) per round: mean over seeds, shaded from worst to best seed."""
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 3.5), layout="constrained")
    for ax, y, label in zip(axes, ("test_loss", "test_acc"), ("test loss", "test accuracy")):
        # the band spans the seeds (a bootstrap interval of two seeds would say little and costs seconds)
        sns.lineplot(data=history, x="round", y=y, hue="algorithm", errorbar=("pi", 100), ax=ax)
        ax.set(ylabel=label)
    axes[0].legend(fontsize="small", title=None)
    axes[1].get_legend().remove()
    return fig


def controls(**overrides: object) -> dict:
    """The federation's knobs (equal Dirichlet shards), batch size, anchor probability, warm start, seeds."""
    own = {key: overrides.pop(key, default) for key, default in DEFAULTS.items()}
    shared = standard_controls(algorithm_options=ALGORITHMS, **{"algorithms": ALGORITHMS, **overrides})
    return {**{key: widget for key, widget in shared.items() if key not in HIDDEN},
            "batch_size": knob("IntSlider", own["batch_size"], "batch size", min=1, max=128),
            "anchor_probability": knob("FloatSlider", own["anchor_probability"], "anchor prob. p", min=0.0, max=1.0,
                                       step=0.05),
            "warm_start": knob("Checkbox", own["warm_start"], "anchor table at x⁰ (paper)"),
            "seeds": knob("IntSlider", own["seeds"], "seeds", min=1, max=5)}
