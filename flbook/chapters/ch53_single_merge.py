"""Chapter 53: a single global merge: sparse random gossip (or none) during training, one exact average at the end.

The panel runs, on one seed, the communication schedules of Zhu et al.: constant sparse gossip, no
communication, the complete graph every round, and a dense window early or late (each with its final merge,
the average of the node models), and plots the node models' mean accuracy, the merged model's accuracy and
the consensus distance.
"""
from __future__ import annotations

from typing import Mapping

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from ..algorithms import FedAvg
from ..data import Dataset, load
from ..decentralized import Decentralized
from ..peer_protocol import Method, node_federation
from ..plots.topology import peer_curves
from ..topology import scheduled_gossip
from ..widgets import knob, task_controls

DEFAULTS: dict[str, object] = {"n_nodes": 16, "alpha": 0.1, "r": 0.2, "window": 0.05, "early": 0.1, "late": 0.9,
                               "local_steps": 10, "lr": 0.1, "rounds": 60, "shared_init": True, "seed": 0}
TASK = {"hidden": (64,), "batch_size": 32}  # MLP 64-64-10: a hidden layer, so that merging can fail


def merge_method(n_nodes: int, schedule: str, r_start: float, r_end: float | None = None, *, point: float = 1.0,
                 window: float = 0.0, alpha: float, local_steps: int, shared_init: bool = True,
                 eval_every: int = 10) -> Method:
    """DFedAvg (local SGD, then one gossip step) on random row-stochastic W(t) with r(t) from `schedule`
    (`topology.communication_rate`; r_end defaults to N - 1, the exact average), as a protocol method."""
    def method(dataset: Dataset, seed: int, lr: float, rounds: int) -> pd.DataFrame:
        fed = node_federation(dataset, n_nodes, alpha=alpha, seed=seed, lr=lr, local_steps=local_steps, **TASK)
        mixing = scheduled_gossip(n_nodes, rounds, schedule, r_start, r_end, point, window, seed=seed)
        net = Decentralized(fed, mixing, shared_init=shared_init)
        return net.run(FedAvg(), rounds, eval_every=eval_every, progress=False, on_divergence="stop")
    return method


def lineup(values: Mapping[str, object]) -> dict[str, Method]:
    """(A) sparse r, (C) no communication, (D) complete every round, (E) a dense window early and late (same
    total budget), at the values' heterogeneity and initialisation. The single global merge of a run is its
    averaged model x_bar = (1/N) sum_i x_i after the last round (the history's test_acc)."""
    v = {**DEFAULTS, **values}
    n, r, w = int(v["n_nodes"]), float(v["r"]), float(v["window"])
    task = {"alpha": float(v["alpha"]), "local_steps": int(v["local_steps"]), "shared_init": bool(v["shared_init"]),
            "eval_every": max(1, int(v["rounds"]) // 10)}
    return {f"sparse r={r:g}": merge_method(n, "fixed", r, **task),
            "no communication": merge_method(n, "fixed", 0.0, **task),
            "complete every round": merge_method(n, "fixed", n - 1, **task),
            "dense window early": merge_method(n, "truncate_v2", r, point=float(v["early"]), window=w, **task),
            "dense window late": merge_method(n, "truncate_v2", r, point=float(v["late"]), window=w, **task)}


def run(values: Mapping[str, object], progress: bool = True) -> pd.DataFrame:
    """The lineup on one seed at the panel's learning rate."""
    v = {**DEFAULTS, **values}
    dataset, seed, lr, rounds = load("digits"), int(v["seed"]), float(v["lr"]), int(v["rounds"])
    return pd.concat([m(dataset, seed, lr, rounds).assign(algorithm=name) for name, m in lineup(v).items()],
                     ignore_index=True)


def figure(history: pd.DataFrame) -> Figure:
    """The node models' mean accuracy, the merged model's accuracy and the consensus distance per round."""
    fig, axes = plt.subplots(1, 3, figsize=(13.0, 3.6))
    peer_curves(history, axes, (("local_acc", "mean accuracy of the node models"),
                                ("test_acc", "accuracy of the merged model x̄"),
                                ("consensus_distance", "consensus distance")), legend_size=7)
    fig.tight_layout()
    return fig


def controls(**overrides: object) -> dict:
    """Heterogeneity, the sparse rate r, the dense window's length and positions, initialisation, the task."""
    v = {**DEFAULTS, **overrides}
    slider = {"continuous_update": False}
    return {"n_nodes": knob("IntSlider", v["n_nodes"], "nodes N", min=2, max=64, **slider),
            "r": knob("FloatSlider", v["r"], "sparse r", min=0.0, max=3.0, step=0.1, **slider),
            "window": knob("FloatSlider", v["window"], "dense window", min=0.01, max=0.5, step=0.01, **slider),
            "early": knob("FloatSlider", v["early"], "early window at", min=0.0, max=0.5, step=0.05, **slider),
            "late": knob("FloatSlider", v["late"], "late window at", min=0.5, max=0.95, step=0.05, **slider),
            "shared_init": knob("Checkbox", v["shared_init"], "shared initialisation"),
            **task_controls(v, steps="k", min_rounds=2)}
