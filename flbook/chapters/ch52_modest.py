"""Chapter 52: MoDeST, sampled nodes train and a few of the next sample aggregate, without a server.

The panel runs MoDeST (sample size s, aggregators a, success fraction sf), server FedAvg with s clients per
round and D-PSGD on the one-peer exponential graph, with or without a crash of a fraction of the nodes (no
LEAVE messages) and a later rejoin, and plots accuracy per round and against the bytes sent.
"""
from __future__ import annotations

from typing import Mapping

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from ..algorithms import FedAvg
from ..data import Dataset, load
from ..decentralized import Decentralized
from ..modest import AliveSample, Churn, MoDeST
from ..peer_protocol import Method, node_federation
from ..topology import one_peer_exponential
from ..widgets import knob, task_controls

DEFAULTS: dict[str, object] = {"n_nodes": 50, "sample_size": 10, "aggregators": 1, "success_fraction": 1.0,
                               "crash": True, "crash_round": 20, "crash_fraction": 0.8, "rejoin_round": 40,
                               "alpha": 1.0, "local_steps": 5, "lr": 0.1, "rounds": 60, "seed": 0}
TASK = {"hidden": (32,), "batch_size": 16}  # the card's small reproduction: MLP 64-32-10, batches of 16


def _task(dataset: Dataset, n_nodes: int, alpha: float, seed: int, lr: float, local_steps: int, **settings):
    return node_federation(dataset, n_nodes, alpha=alpha, seed=seed, lr=lr, local_steps=local_steps, **TASK,
                           **settings)


def modest_method(n_nodes: int, protocol: MoDeST, *, alpha: float, local_steps: int, eval_every: int = 5) -> Method:
    """MoDeST's sampling and aggregation with FedAvg's local SGD, as a protocol method."""
    def method(dataset: Dataset, seed: int, lr: float, rounds: int) -> pd.DataFrame:
        fed = _task(dataset, n_nodes, alpha, seed, lr, local_steps)
        return protocol.run(fed, FedAvg(), rounds, eval_every=eval_every, on_divergence="stop")
    return method


def fedavg_method(n_nodes: int, sample_size: int, churn: Churn, *, alpha: float, local_steps: int,
                  eval_every: int = 5) -> Method:
    """Server FedAvg with `sample_size` clients a round, drawn among the alive ones; 2 s models sent a round."""
    def method(dataset: Dataset, seed: int, lr: float, rounds: int) -> pd.DataFrame:
        fed = _task(dataset, n_nodes, alpha, seed, lr, local_steps, participation=AliveSample(churn, sample_size))
        history = fed.run(FedAvg(), rounds, eval_every=eval_every, progress=False, on_divergence="stop")
        return history.assign(bytes_sent=history["bytes_up"] + history["bytes_down"])
    return method


def dpsgd_method(n_nodes: int, churn: Churn, *, alpha: float, local_steps: int, eval_every: int = 5) -> Method:
    """D-PSGD on the one-peer exponential graph (the code's default baseline): every alive node trains and
    averages with one peer per round; links to crashed nodes are lost."""
    def method(dataset: Dataset, seed: int, lr: float, rounds: int) -> pd.DataFrame:
        fed = _task(dataset, n_nodes, alpha, seed, lr, local_steps)
        net = Decentralized(fed, one_peer_exponential(n_nodes), availability=churn, eval_nodes=min(10, n_nodes))
        return net.run(FedAvg(), rounds, eval_every=eval_every, progress=False, on_divergence="stop")
    return method


def churn_from(values: Mapping[str, object]) -> Churn:
    """The crash scenario the values describe (no churn when `crash` is off); seeded by the run's seed."""
    if not values["crash"]:
        return Churn()
    return Churn(int(values["crash_round"]), float(values["crash_fraction"]), int(values["rejoin_round"]),
                 seed=int(values["seed"]))


def lineup(values: Mapping[str, object]) -> dict[str, Method]:
    """MoDeST at the values' s, a, sf; server FedAvg with s clients; D-PSGD on the one-peer exponential graph."""
    v = {**DEFAULTS, **values}
    churn, n, s = churn_from(v), int(v["n_nodes"]), int(v["sample_size"])
    task = {"alpha": float(v["alpha"]), "local_steps": int(v["local_steps"]),
            "eval_every": max(1, int(v["rounds"]) // 12)}
    protocol = MoDeST(s, int(v["aggregators"]), float(v["success_fraction"]), churn=churn)
    return {f"MoDeST (s={s}, a={protocol.aggregators})": modest_method(n, protocol, **task),
            f"FedAvg (server, s={s})": fedavg_method(n, s, churn, **task),
            "D-PSGD (one-peer exp.)": dpsgd_method(n, churn, **task)}


def run(values: Mapping[str, object], progress: bool = True) -> pd.DataFrame:
    """The lineup on one seed at the panel's learning rate."""
    v = {**DEFAULTS, **values}
    dataset, seed, lr, rounds = load("digits"), int(v["seed"]), float(v["lr"]), int(v["rounds"])
    history = pd.concat([m(dataset, seed, lr, rounds).assign(algorithm=name) for name, m in lineup(v).items()],
                        ignore_index=True)
    if v["crash"]:
        history.attrs.update(crash_round=int(v["crash_round"]), rejoin_round=int(v["rejoin_round"]))
    return history


def figure(history: pd.DataFrame) -> Figure:
    """Accuracy per round (crash and rejoin marked) and against the bytes sent (log scale)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11.0, 3.8))
    for name, run in history.groupby("algorithm", sort=False):
        left.plot(run["round"], run["test_acc"], label=name)
        right.plot(run["bytes_sent"].clip(lower=1), run["test_acc"], label=name)
    for key, text in (("crash_round", "crash"), ("rejoin_round", "rejoin")):
        if history.attrs.get(key):
            left.axvline(history.attrs[key], color="0.5", ls=":")
    left.set(xlabel="round", ylabel="test accuracy", title="accuracy per round")
    right.set(xlabel="bytes sent (all nodes, cumulative)", xscale="log", title="accuracy per byte")
    left.legend(fontsize=8)
    fig.tight_layout()
    return fig


def controls(**overrides: object) -> dict:
    """MoDeST's s, a, sf; the crash scenario; the task."""
    v = {**DEFAULTS, **overrides}
    return {"n_nodes": knob("IntSlider", v["n_nodes"], "nodes N", min=4, max=200, continuous_update=False),
            "sample_size": knob("IntSlider", v["sample_size"], "sample size s", min=1, max=50,
                                continuous_update=False),
            "aggregators": knob("IntSlider", v["aggregators"], "aggregators a", min=1, max=5, continuous_update=False),
            "success_fraction": knob("FloatSlider", v["success_fraction"], "success fraction sf", min=0.1, max=1.0,
                                     step=0.1, continuous_update=False),
            "crash": knob("Checkbox", v["crash"], "crash and rejoin"),
            "crash_round": knob("IntSlider", v["crash_round"], "crash round", min=1, max=200, continuous_update=False),
            "crash_fraction": knob("FloatSlider", v["crash_fraction"], "crash fraction", min=0.0, max=0.95,
                                   step=0.05, continuous_update=False),
            "rejoin_round": knob("IntSlider", v["rejoin_round"], "rejoin round", min=2, max=200,
                                 continuous_update=False),
            **task_controls(v, steps="E")}


def sample_fill(history: pd.DataFrame, sample_size: int, start: int, end: int) -> float:
    """Models averaged per round between rounds `start` and `end`, as a fraction of s (1: every sample full)."""
    models = history.set_index("round")["models"]
    return float((models[end] - models[start]) / (sample_size * (end - start)))
