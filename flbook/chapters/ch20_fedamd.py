"""Chapter 20: FedAMD's anchor sampling against FedAvg and SCAFFOLD under partial participation.

Every client gets the same number of samples (`equal_dirichlet`), so that FedAMD's plain means over clients
and FedAvg's size weights minimize the same objective. Runs repeat over a few seeds; the figure shows the
mean and the spread from worst to best seed.
"""
from __future__ import annotations

from typing import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure

from ..algorithms import FedAMD, FedAvg, Scaffold, anchor_table
from ..data import load
from ..federation import Federation
from ..partition import inner_dirichlet
from ..widgets import chosen, knob, standard_controls

ALGORITHMS = ("FedAvg", "SCAFFOLD", "FedAMD")
DEFAULTS: dict[str, object] = {"batch_size": 14, "anchor_probability": 0.2, "warm_start": True, "seeds": 2}
HIDDEN = ("partitioner", "classes_per_client", "shards_per_client", "sigma")  # the split is always equal_dirichlet


def equal_dirichlet(labels: torch.Tensor | np.ndarray, n_clients: int, alpha: float, seed: int = 0) -> list[np.ndarray]:
    """Dirichlet(alpha) label mixes on equal shards of len(labels) // n_clients samples (the remainder is left out).

    With equal shards FedAMD's plain means over clients weigh them as FedAvg's size weights do."""
    shard = len(labels) // n_clients
    return inner_dirichlet(labels[: shard * n_clients], [shard] * n_clients, alpha, seed=seed)


def run(values: Mapping[str, object], progress: bool = True) -> pd.DataFrame:
    """FedAvg, SCAFFOLD and FedAMD on equal Dirichlet shards for values["seeds"] seeds.

    Keys: dataset, model, n_clients, alpha, participation (fraction per round), local_steps, batch_size, lr,
    rounds, seed, seeds, anchor_probability, warm_start (FedAMD's table at x^0, as the paper), algorithms."""
    names = chosen(values, ALGORITHMS)
    dataset, rounds, first = load(str(values["dataset"])), int(values["rounds"]), int(values.get("seed", 0))
    runs = []
    for seed in range(first, first + int(values.get("seeds", 1))):
        parts = equal_dirichlet(dataset.y_train, int(values["n_clients"]), float(values["alpha"]), seed=seed)
        fed = Federation(dataset, parts, str(values["model"]), local_steps=int(values["local_steps"]),
                         batch_size=int(values.get("batch_size", 32)), lr=float(values["lr"]),
                         participation=float(values["participation"]), seed=seed)
        table = anchor_table(fed) if values.get("warm_start", True) else None
        algorithms = {"FedAvg": FedAvg(), "SCAFFOLD": Scaffold(),
                      "FedAMD": FedAMD(float(values.get("anchor_probability", 0.2)), seed=seed, initial_table=table)}
        history = fed.compare({name: algorithms[name] for name in names}, rounds, progress=progress,
                              on_divergence="stop")
        runs.append(history.assign(seed=seed))
    return pd.concat(runs, ignore_index=True)


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
