"""Chapter 11: FedLD's margin control and principal gradient, with the global loss split into three terms.

The panel trains a one-hidden-layer MLP of a chosen width on the federation the standard controls describe,
and measures the local, distribution-shift and aggregation terms of every round (`flbook.loss_decomposition`).
"""
from __future__ import annotations

import math
from typing import Mapping

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from .. import loss_decomposition
from ..algorithms import FedAvg, FedLD, FedProx, Scaffold
from ..algorithms.base import Algorithm
from ..federation import Federation
from ..models import FlatModel, mlp
from ..plots import accuracy_vs_bytes, learning_curves
from ..widgets import chosen, federation_from, knob, standard_controls

LINEUP = ("FedAvg", "FedProx", "SCAFFOLD", "FedLD", "margin only", "principal gradient only")
DEFAULTS: dict[str, object] = {"hidden": 64, "margin": 0.1, "k_prop": 0.8, "mu": 0.01}


def lineup(model: FlatModel, margin: float = 0.1, k_prop: float = 0.8, mu: float = 0.01) -> dict[str, Algorithm]:
    """The comparison: the baselines, FedLD, and FedLD with one of its two parts switched off."""
    return {"FedAvg": FedAvg(), "FedProx": FedProx(mu=mu), "SCAFFOLD": Scaffold(),
            "FedLD": FedLD.for_model(model, margin=margin, k_prop=k_prop),
            "margin only": FedLD(margin=margin, principal_gradient=False),
            "principal gradient only": FedLD.for_model(model, margin=0.0, k_prop=k_prop)}


def small_mlp_federation(values: Mapping[str, object]) -> Federation:
    """`widgets.federation_from(values)` with a one-hidden-layer MLP of width `values["hidden"]`."""
    hidden = int(values.get("hidden", DEFAULTS["hidden"]))
    if hidden < 1:
        raise ValueError(f"hidden must be >= 1, got {hidden}")
    dataset = federation_from(values).dataset
    model = mlp(math.prod(dataset.input_shape), dataset.n_classes, hidden=(hidden,))
    return federation_from({**values, "model": model})


def run(values: Mapping[str, object], progress: bool = True) -> pd.DataFrame:
    """`lineup` at the panel's knobs, with the three terms; "algorithms" selects which names run."""
    v = {**DEFAULTS, **values}
    fed = small_mlp_federation(v)
    table = lineup(fed.model, float(v["margin"]), float(v["k_prop"]), float(v["mu"]))
    return loss_decomposition.compare(fed, {name: table[name] for name in chosen(v, LINEUP)}, int(v["rounds"]),
                                      progress=progress, on_divergence="stop")


def plot_terms(history: pd.DataFrame, axes=None) -> Figure:
    """The three terms and their sum per round, one panel each, one line per algorithm."""
    columns = [*loss_decomposition.TERMS, "train_loss"]
    if axes is None:
        _, axes = plt.subplots(1, len(columns), figsize=(14.0, 3.0), sharex=True, layout="constrained")
    rows = history.dropna(subset=list(loss_decomposition.TERMS))
    for ax, column in zip(axes, columns):
        for label, part in rows.groupby("algorithm", sort=False):
            ax.plot(part["round"], part[column], label=label)
        ax.set(title=column.replace("_", " "), xlabel="round")
    axes[-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small")  # outside, right of the panels
    return axes[0].figure


def figure(history: pd.DataFrame) -> Figure:
    """Accuracy per round and per MB (top), the three terms and the training loss (bottom)."""
    fig = plt.figure(figsize=(14.0, 6.0), layout="constrained")
    top, bottom = fig.subfigures(2, 1)
    by_round, by_bytes = top.subplots(1, 2)
    learning_curves(history, ax=by_round)
    accuracy_vs_bytes(history, ax=by_bytes)
    by_bytes.get_legend().remove()
    plot_terms(history, axes=bottom.subplots(1, 4, sharex=True))
    return fig


def controls(**overrides: object) -> dict:
    """The standard knobs without the model (this chapter's model is the small MLP), its width, FedLD's margin
    lambda and k_prop, and FedProx's mu."""
    own = {key: overrides.pop(key, default) for key, default in DEFAULTS.items()}
    shared = standard_controls(algorithm_options=LINEUP, **overrides)
    del shared["model"]
    return {**shared,
            "hidden": knob("IntSlider", own["hidden"], "MLP width", min=4, max=256),
            "margin": knob("FloatSlider", own["margin"], "FedLD lambda", min=0.0, max=2.0, step=0.05),
            "k_prop": knob("FloatSlider", own["k_prop"], "FedLD k_prop", min=0.05, max=1.0, step=0.05),
            "mu": knob("FloatLogSlider", own["mu"], "FedProx mu", base=10, min=-4, max=0, step=0.25,
                       readout_format=".3g")}
