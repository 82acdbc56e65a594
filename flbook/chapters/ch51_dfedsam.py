"""Chapter 51: DFedSAM and DFedSAM-MGS: SAM local steps, then Q gossip steps, against DFedAvg and D-PSGD.

The panel trains, on one graph and seed, DFedAvg and DFedSAM with one gossip step and with Q steps
(DFedAvg-MGS as the control for the extra gossip, DFedSAM-MGS), and plots the averaged model's accuracy, the
node models' mean accuracy and the consensus distance.
"""
from __future__ import annotations

import dataclasses
from functools import partial
from typing import Mapping

import matplotlib.pyplot as plt
import pandas as pd
import torch
from matplotlib.figure import Figure

from ..algorithms import DFedSAM, FedAvg
from ..data import load
from ..federation import Federation
from ..peer_protocol import Method, gossip_method
from ..plots.topology import peer_curves
from ..runtime import cpu_threads
from ..topology import TOPOLOGIES, graph_by_name
from ..widgets import knob, task_controls

DEFAULTS: dict[str, object] = {"topology": "ring", "n_nodes": 16, "rho": 0.05, "gossip_steps": 4, "alpha": 0.1,
                               "local_steps": 10, "lr": 0.3, "rounds": 30, "seed": 0}


def lineup(topology: str, n_nodes: int, *, rho: float, gossip_steps: int, alpha: float, local_steps: int,
           degree: int = 3, eval_every: int = 5, d_psgd: bool = False, measure=None) -> dict[str, Method]:
    """DFedAvg and DFedSAM with Q = 1 and with Q = gossip_steps (the -MGS variants), optionally D-PSGD (K = 1)."""
    make = partial(gossip_method, topology, n_nodes, alpha=alpha, degree=degree, eval_every=eval_every,
                   measure=measure)
    sam = partial(DFedSAM, rho=rho)
    methods = {"D-PSGD": make(local_steps=1)} if d_psgd else {}
    methods |= {"DFedAvg": make(local_steps=local_steps), "DFedSAM": make(local_steps=local_steps, algorithm=sam)}
    if gossip_steps > 1:
        methods |= {f"DFedAvg-MGS (Q={gossip_steps})": make(local_steps=local_steps, gossip_steps=gossip_steps),
                    f"DFedSAM-MGS (Q={gossip_steps})": make(local_steps=local_steps, gossip_steps=gossip_steps,
                                                            algorithm=sam)}
    return methods


def run(values: Mapping[str, object], progress: bool = True) -> pd.DataFrame:
    """The lineup on the graph the values describe, one seed, at the panel's learning rate."""
    v = {**DEFAULTS, **values}
    graph_by_name(str(v["topology"]), int(v["n_nodes"]), seed=int(v["seed"]))  # a bad graph fails before training
    methods = lineup(str(v["topology"]), int(v["n_nodes"]), rho=float(v["rho"]), gossip_steps=int(v["gossip_steps"]),
                     alpha=float(v["alpha"]), local_steps=int(v["local_steps"]),
                     eval_every=max(1, int(v["rounds"]) // 15))
    dataset, seed, lr, rounds = load("digits"), int(v["seed"]), float(v["lr"]), int(v["rounds"])
    return pd.concat([m(dataset, seed, lr, rounds).assign(algorithm=name) for name, m in methods.items()],
                     ignore_index=True)


def figure(history: pd.DataFrame) -> Figure:
    """Averaged-model accuracy, node-model accuracy and consensus distance per round, one line per method."""
    fig, axes = plt.subplots(1, 3, figsize=(13.0, 3.6))
    peer_curves(history, axes, dashed=lambda name: "Avg" in name)
    fig.tight_layout()
    return fig


def controls(**overrides: object) -> dict:
    """The graph, SAM's radius rho, the gossip steps Q of the MGS variants, and the training task."""
    v = {**DEFAULTS, **overrides}
    return {"topology": knob("Dropdown", v["topology"], "topology", options=TOPOLOGIES),
            "n_nodes": knob("IntSlider", v["n_nodes"], "nodes N", min=4, max=64, continuous_update=False),
            "rho": knob("FloatSlider", v["rho"], "SAM radius ρ", min=0.0, max=0.5, step=0.01,
                        continuous_update=False),
            "gossip_steps": knob("IntSlider", v["gossip_steps"], "gossip steps Q", min=1, max=10,
                                 continuous_update=False),
            **task_controls(v)}


def sharpness(fed: Federation, X: torch.Tensor, rho: float = 0.05) -> float:
    """SAM's sharpness of the node models, mean over nodes of F_i(x_i + rho g/||g||) - F_i(x_i), g = grad F_i(x_i),
    each on its node's own training data: how much the loss rises at the worst nearby point (first order)."""
    ctx = dataclasses.replace(fed.context(FedAvg()), eager=True)  # plain autograd: no vmap here
    rises = []
    with cpu_threads(fed.thread_count()):
        for i, ids in enumerate(fed.partition):
            xb, yb = fed.x_train[torch.as_tensor(ids)], fed.y_train[torch.as_tensor(ids)]
            g = ctx.grad(X[i], xb, yb)  # (P,)
            up = ctx.loss(X[i] + rho * g / g.norm().clamp_min(1e-12), xb, yb)  # F_i at the worst nearby point
            rises.append((up - ctx.loss(X[i], xb, yb)).item())
    return float(sum(rises) / len(rises))
