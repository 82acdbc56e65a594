"""Chapter 12: FedLEx's one-time loss exploration and its guidance matrix, against FedAvg, FedProx and SCAFFOLD.

The panel explores with the chosen budget when FedLEx is selected, then trains the selected algorithms on
the federation the controls describe; FedLEx's rows include the exploration's bytes.
"""
from __future__ import annotations

from typing import Mapping

import pandas as pd
from matplotlib.figure import Figure

from ..algorithms import FedLEx, explore
from ..plots import accuracy_figure
from ..widgets import baseline_controls, baselines_from, chosen, federation_from, knob, standard_controls

ALGORITHMS = ("FedAvg", "FedProx", "SCAFFOLD", "FedLEx")
DEFAULTS: dict[str, object] = {"model": "logistic", "partitioner": "pathological", "classes_per_client": 2,
                               "n_clients": 10, "participation": 0.3, "local_steps": 20, "lr": 0.1, "rounds": 40,
                               "algorithms": ALGORITHMS}
EXPLORATION = {"explore_epochs": ("epochs", 10), "data_fraction": ("data_fraction", 1.0),
               "explorer_fraction": ("explorer_fraction", 1.0)}  # panel key -> (explore() argument, default)


def controls(**overrides: object) -> dict:
    """The federation's knobs (`standard_controls`), FedProx's mu and the exploration budget."""
    budget = {key: overrides.pop(key, default) for key, (_, default) in EXPLORATION.items()}
    controls = standard_controls(algorithm_options=ALGORITHMS, **{**DEFAULTS, **overrides})
    controls["mu"] = baseline_controls(mu=0.1)["mu"]
    return {**controls,
            "explore_epochs": knob("IntSlider", budget["explore_epochs"], "explore epochs", min=1, max=100),
            "data_fraction": knob("FloatSlider", budget["data_fraction"], "explore data", min=0.05, max=1.0,
                                  step=0.05),
            "explorer_fraction": knob("FloatSlider", budget["explorer_fraction"], "explorers", min=0.1, max=1.0,
                                      step=0.1)}


def run(values: Mapping[str, object], progress: bool = True) -> pd.DataFrame:
    """Explore with the panel's budget if FedLEx is selected, then train the selected algorithms."""
    names = chosen(values, ALGORITHMS)
    fed = federation_from({**DEFAULTS, **values})
    rounds = int(values.get("rounds", DEFAULTS["rounds"]))
    settings = {"progress": progress, "on_divergence": "stop"}
    histories = []
    for name in names:
        if name == "FedLEx":
            budget = {arg: values[key] for key, (arg, _) in EXPLORATION.items() if key in values}
            exploration = explore(fed, **budget)
            history = fed.run(FedLEx(guidance=exploration.guidance), rounds, label=name, **settings)
            histories.append(exploration.charge(history))
        else:
            histories.append(fed.run(baselines_from(values)[name], rounds, label=name, **settings))
    return pd.concat(histories, ignore_index=True)


def figure(history: pd.DataFrame) -> Figure:
    """Test accuracy per round and per byte."""
    return accuracy_figure(history)
