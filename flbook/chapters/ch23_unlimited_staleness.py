"""Chapter 23: updates delayed by many rounds, and gradient inversion that converts them into fresh ones.

One class per client on digits (or MNIST-1D); the clients holding `delayed_class` are `delay` rounds late.
Every client takes part in every round (one round per time unit). The oracle runs without the delay.
"""
from __future__ import annotations

from typing import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..algorithms import GradientInversion, StaleFedAvg
from ..algorithms.base import Algorithm
from ..asynchronous import AsyncFederation, class_accuracy
from ..data import load
from ..devices import class_share, draw
from ..federation import Federation
from ..models import logistic, mlp
from ..participation import Uniform
from ..partition import pathological
from ..plots.curves import learning_curves
from ..widgets import knob, standard_controls

DEFAULTS = {  # one class per client, the clients of one class delayed by tau rounds
    "dataset": "digits", "hidden": 32, "n_clients": 20, "local_steps": 5, "lr": 0.5, "seed": 0,
    "delay": 15, "delayed_class": 3, "rounds": 45, "gi_iterations": 20, "n_rec": 16,
}
SHARED = ("n_clients", "local_steps", "lr", "rounds", "seed")  # knobs from `standard_controls`


def staleness_federation(values: Mapping) -> tuple[Federation, np.ndarray]:
    """The task: one class per client, a small MLP (hidden=0: softmax regression), local full-batch GD.

    Also returns the ids of the slow clients: those holding `delayed_class`."""
    v = {**DEFAULTS, **values}
    if v["dataset"] not in ("digits", "mnist1d"):
        raise ValueError(f"dataset must be 'digits' or 'mnist1d' for this chapter, got {v['dataset']!r}")
    data = load(v["dataset"])
    parts = pathological(data.y_train, int(v["n_clients"]), 1, seed=int(v["seed"]))
    features, hidden = int(np.prod(data.input_shape)), int(v["hidden"])
    model = mlp(features, data.n_classes, hidden=(hidden,)) if hidden else logistic(features, data.n_classes)
    fed = Federation(data, parts, model, local_steps=int(v["local_steps"]), batch_size=max(len(p) for p in parts),
                     lr=float(v["lr"]), seed=int(v["seed"]))
    slow = np.flatnonzero(class_share(parts, data.y_train, int(v["delayed_class"])) > 0)
    return fed, slow


def staleness_methods(values: Mapping, bounds: tuple[float, float] | None = None) -> dict[str, Algorithm]:
    """The contenders: the stale-update baselines and gradient-inversion conversion."""
    v = {**DEFAULTS, **values}
    return {"direct": StaleFedAvg(), "weighted 2^(-τ/20)": StaleFedAvg(policy="weighted"),
            "DC-ASGD": StaleFedAvg(policy="dc-asgd"), "drop stale": StaleFedAvg(policy="drop"),
            "GI conversion": GradientInversion(iterations=int(v["gi_iterations"]), n_rec=int(v["n_rec"]),
                                               bounds=bounds, seed=int(v["seed"]))}


def run(values: Mapping, progress: bool = True) -> pd.DataFrame:
    """Run the oracle (no delay) and `staleness_methods(values)` with the slow class's clients `delay` rounds late.

    Columns add `class_acc` (test accuracy on the slow class); `history.attrs` holds the update log
    ("updates"), the slow clients ("slow") and the final server states ("server_states", e.g. how many
    updates GI converted)."""
    v = {**DEFAULTS, **values}
    fed, slow = staleness_federation(v)
    on_time = draw(fed.n_clients, "constant", step_time=0.5 / fed.local_steps)  # a job takes half a round
    late = on_time.slowed(slow, extra_latency=float(v["delay"]))
    metric = class_accuracy(fed, int(v["delayed_class"]))
    bounds = (float(fed.x_train.min()), float(fed.x_train.max()))  # the input box the server knows
    rounds, kwargs = float(v["rounds"]), dict(eval_every=1.0, progress=progress, on_divergence="stop")
    oracle = AsyncFederation(fed, on_time, Uniform(1.0), metric)
    delayed = AsyncFederation(fed, late, Uniform(1.0), metric)
    history = pd.concat([oracle.run(StaleFedAvg(), rounds, label="no delay (oracle)", **kwargs),
                         delayed.compare(staleness_methods(v, bounds), rounds, **kwargs)], ignore_index=True)
    history.attrs.update(updates=delayed.update_log(), slow=slow, server_states=delayed.server_states)
    return history


def figure(history: pd.DataFrame) -> Figure:
    """Accuracy on the slow class and overall, against rounds."""
    fig, (slow, overall) = plt.subplots(1, 2, figsize=(10.0, 3.5), sharey=True, layout="constrained")
    learning_curves(history, y="class_acc", x="round", ax=slow)
    learning_curves(history, y="test_acc", x="round", ax=overall)
    slow.set(ylabel="test accuracy on the slow class")
    overall.get_legend().remove()
    return fig


def controls(**overrides: object) -> dict:
    """Dataset, clients, local steps, lr, rounds, seed plus width, delay, slow class and the GI budget."""
    v = {**DEFAULTS, **overrides}
    shared = standard_controls(**{k: v[k] for k in SHARED})
    dataset = knob("Dropdown", v["dataset"], "dataset", options=("digits", "mnist1d"))
    return {"dataset": dataset, **{k: shared[k] for k in SHARED},
            "hidden": knob("IntSlider", v["hidden"], "hidden units", min=0, max=128, step=8),
            "delay": knob("IntSlider", v["delay"], "staleness τ", min=0, max=40),
            "delayed_class": knob("IntSlider", v["delayed_class"], "slow class", min=0, max=9),
            "gi_iterations": knob("IntSlider", v["gi_iterations"], "GI iterations", min=1, max=200),
            "n_rec": knob("IntSlider", v["n_rec"], "GI samples", min=1, max=64)}
