"""Chapter 50: decentralized learning without a server: topologies, gossip, consensus, D-PSGD and DFedAvg.

The panel builds a graph (topology, nodes, degree), its Metropolis-Hastings mixing W, Q gossip steps per round
and node availability, trains D-PSGD (one local step, then gossip) and DFedAvg (K local steps, then gossip)
on it, with server FedAvg as the reference, and shows the graph coloured by each node's distance to the
average, the accuracy of the averaged model and of the node models, and the consensus distance.
"""
from __future__ import annotations

from typing import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..algorithms import FedAvg
from ..data import Dataset, load
from ..peer_protocol import Method, gossip_method, node_federation
from ..plots.topology import peer_curves, plot_graph
from ..topology import TOPOLOGIES, graph_by_name
from ..widgets import knob, task_controls

DEFAULTS: dict[str, object] = {"topology": "ring", "n_nodes": 16, "degree": 3, "gossip_steps": 1, "availability": 1.0,
                               "alpha": 0.1, "local_steps": 10, "lr": 0.1, "rounds": 40, "seed": 0}


def server_method(n_nodes: int, *, alpha: float, local_steps: int, participation: float = 1.0,
                  eval_every: int = 5) -> Method:
    """FedAvg with a server on the same nodes: the reference a decentralized run is measured against."""
    def method(dataset: Dataset, seed: int, lr: float, rounds: int) -> pd.DataFrame:
        fed = node_federation(dataset, n_nodes, alpha=alpha, seed=seed, lr=lr, local_steps=local_steps,
                              participation=participation)
        history = fed.run(FedAvg(), rounds, eval_every=eval_every, progress=False, on_divergence="stop")
        return history.assign(local_acc=history["test_acc"], consensus_distance=0.0)  # one model, every node
    return method


def run(values: Mapping[str, object], progress: bool = True) -> pd.DataFrame:
    """D-PSGD, DFedAvg and server FedAvg on the graph the values describe (one seed, the panel's lr)."""
    v = {**DEFAULTS, **values}
    topology, n, k = str(v["topology"]), int(v["n_nodes"]), int(v["local_steps"])
    graph = graph_by_name(topology, n, int(v["degree"]), int(v["seed"]))  # checks the graph before training
    shared = dict(alpha=float(v["alpha"]), degree=int(v["degree"]), gossip_steps=int(v["gossip_steps"]),
                  availability=float(v["availability"]), eval_every=max(1, int(v["rounds"]) // 20))
    methods = {"D-PSGD": gossip_method(topology, n, local_steps=1, **shared),
               f"DFedAvg (K={k})": gossip_method(topology, n, local_steps=k, **shared),
               "FedAvg (server)": server_method(n, alpha=shared["alpha"], local_steps=k,
                                                participation=shared["availability"],
                                                eval_every=shared["eval_every"])}
    dataset, seed, lr, rounds = load("digits"), int(v["seed"]), float(v["lr"]), int(v["rounds"])
    runs = {name: method(dataset, seed, lr, rounds).assign(algorithm=name) for name, method in methods.items()}
    history = pd.concat(runs.values(), ignore_index=True)
    history.attrs.update(graph=graph, distances=np.array(runs[f"DFedAvg (K={k})"].attrs["distances"]))
    return history


def figure(history: pd.DataFrame) -> Figure:
    """The graph coloured by each node's ‖x_i − x̄‖² after training, then the three curves per round."""
    fig, axes = plt.subplots(1, 4, figsize=(15.0, 3.6))
    if "graph" in history.attrs:
        plot_graph(history.attrs["graph"], history.attrs["distances"], ax=axes[0], label="‖x_i − x̄‖² (end)")
    peer_curves(history, axes[1:])
    fig.tight_layout()
    return fig


def controls(**overrides: object) -> dict:
    """The graph (topology, nodes, degree of the random regular graph), Q, availability, and the training task."""
    v = {**DEFAULTS, **overrides}
    return {"topology": knob("Dropdown", v["topology"], "topology", options=TOPOLOGIES),
            "n_nodes": knob("IntSlider", v["n_nodes"], "nodes N", min=4, max=64, continuous_update=False),
            "degree": knob("IntSlider", v["degree"], "degree (random)", min=2, max=16, continuous_update=False),
            "gossip_steps": knob("IntSlider", v["gossip_steps"], "gossip steps Q", min=1, max=10,
                                 continuous_update=False),
            "availability": knob("FloatSlider", v["availability"], "availability", min=0.1, max=1.0, step=0.05,
                                 continuous_update=False),
            **task_controls(v)}

