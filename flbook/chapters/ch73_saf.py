"""Chapter 73: SAF (sharpness-aware training for free) against SGD, SAM and MESA on digits with noisy labels.

The book's MLP (64-256-256-10) trains with SGD-momentum on digits whose training labels are partly replaced by
random classes; the panel plots clean test accuracy per epoch and per second of training, and each method's
top Hessian eigenvalue of the training loss at the end.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator, Mapping

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure

from ..centralized import Build, fit, seeded_init
from ..data import Dataset, load
from ..models import mlp
from ..plots import learning_curves
from ..saf import MESALearner, SAFLearner
from ..sharpness import SAMLearner, SGDLearner
from ..validation import probability
from ..widgets import chosen, knob, selection

DEFAULTS: dict[str, object] = {"noise": 0.2, "lam": 1.0, "lookback": 5, "start": 3, "rho": 0.05, "mesa_decay": 0.99,
                               "lr": 0.05, "epochs": 24, "batch_size": 64, "seeds": 1,
                               "algorithms": ("SGD", "SAM", "SAF", "MESA")}
METHODS = ("SGD", "SAM", "SAF", "MESA")
HIDDEN = (256, 256)


def noisy_labels(data: Dataset, rate: float, seed: int = 0) -> Dataset:
    """`data` with a `rate` fraction of its training labels replaced by a uniformly random *other* class."""
    rate = probability("rate", rate)
    g = torch.Generator().manual_seed(seed)
    y = data.y_train.clone()
    flip = torch.rand(len(y), generator=g) < rate  # (n,)
    shift = torch.randint(1, data.n_classes, (len(y),), generator=g)  # (n,) never 0: the label really changes
    y[flip] = (y[flip] + shift[flip]) % data.n_classes
    return dataclasses.replace(data, name=f"{data.name} ({rate:.0%} label noise)", y_train=y)


def build(method: str, values: Mapping[str, object]) -> Build:
    """One method on the book's MLP, with the values' SAM rho, SAF lambda, look-back and start, MESA decay."""
    v = {**DEFAULTS, **values}

    def make(data: Dataset, seed: int, lr: float) -> SGDLearner:
        model = seeded_init(seed, lambda: mlp(data.n_features, data.n_classes, HIDDEN).module)
        if method == "SAM":
            return SAMLearner(model, lr, rho=float(v["rho"]))
        if method == "SAF":
            return SAFLearner(model, lr, len(data.y_train), data.n_classes, lam=float(v["lam"]),
                              lookback=int(v["lookback"]), start=int(v["start"]))
        if method == "MESA":
            return MESALearner(model, lr, lam=0.8, decay=float(v["mesa_decay"]), start=int(v["start"]))
        return SGDLearner(model, lr)
    return make


def methods(values: Mapping[str, object]) -> dict[str, Build]:
    """The selected methods at the values' settings."""
    return {name: build(name, values) for name in chosen({**DEFAULTS, **values}, METHODS)}


def stream(values: Mapping[str, object], progress: bool = True) -> Iterator[pd.DataFrame]:
    """Every selected method at the panel's learning rate on digits with `noise` label noise, for `seeds` seeds;
    yields the history so far after each run, so a panel draws the first method's curve while the others train."""
    v = {**DEFAULTS, **values}
    data = noisy_labels(load("digits"), float(v["noise"]))
    histories = []
    for name, make in methods(v).items():
        for seed in range(int(v["seeds"])):
            histories.append(fit(make, data, seed=seed, lr=float(v["lr"]), epochs=int(v["epochs"]),
                                 batch_size=int(v["batch_size"]), label=name, progress=progress))
            yield pd.concat(histories, ignore_index=True)


def run(values: Mapping[str, object], progress: bool = True) -> pd.DataFrame:
    """The whole comparison of `stream`."""
    *_, history = stream(values, progress)
    return history


def summary(history: pd.DataFrame, last: int = 5) -> pd.DataFrame:
    """Per method (means over seeds): clean test accuracy over the last `last` epochs, seconds per epoch, forward
    passes per step and the top Hessian eigenvalue of the training loss."""
    end = history[history["round"] > history["round"].max() - last]
    final = history[history["round"] == history["round"].max()]
    by = final.groupby("algorithm", sort=False)
    return pd.DataFrame({"accuracy": end.groupby("algorithm", sort=False)["test_acc"].mean(),
                         "s / epoch": by["wall_time"].mean() / history["round"].max(),
                         "forwards / step": by["forwards_per_step"].mean(),
                         "top Hessian eigenvalue": by["hessian_top"].mean()})


def figure(history: pd.DataFrame) -> Figure:
    """Clean test accuracy per epoch and per second of training; top Hessian eigenvalue at the end."""
    fig, (curves, clock, sharp) = plt.subplots(1, 3, figsize=(14.0, 3.6), layout="constrained")
    learning_curves(history, ax=curves)
    curves.set(xlabel="epoch", ylabel="clean test accuracy")
    learning_curves(history, x="wall_time", ax=clock)
    clock.set(ylabel="clean test accuracy")
    clock.get_legend().remove()
    table = summary(history).reset_index()
    sns.barplot(data=table, x="algorithm", y="top Hessian eigenvalue", hue="algorithm", ax=sharp, legend=False)
    sharp.set(xlabel="", ylabel="top Hessian eigenvalue (train loss)")
    return fig


def controls(**overrides: object) -> dict:
    """The knobs that matter: SAF's lambda and trajectory length (look-back), the label noise, then the rest."""
    v = {**DEFAULTS, **overrides}
    return {"algorithms": selection(METHODS, v["algorithms"]),
            "lam": knob("FloatSlider", v["lam"], "SAF λ", min=0.0, max=3.0, step=0.1, continuous_update=False),
            "lookback": knob("IntSlider", v["lookback"], "look-back Ẽ", min=0, max=10, continuous_update=False),
            "start": knob("IntSlider", v["start"], "start epoch", min=0, max=20, continuous_update=False),
            "noise": knob("FloatSlider", v["noise"], "label noise", min=0.0, max=0.6, step=0.05,
                          continuous_update=False),
            "rho": knob("FloatSlider", v["rho"], "SAM ρ", min=0.01, max=0.2, step=0.01, continuous_update=False),
            "mesa_decay": knob("Dropdown", v["mesa_decay"], "MESA EMA decay", options=(0.9, 0.99, 0.999)),
            "lr": knob("Dropdown", v["lr"], "SGD lr", options=(0.01, 0.02, 0.05, 0.1)),
            "epochs": knob("IntSlider", v["epochs"], "epochs", min=1, max=80, continuous_update=False),
            "batch_size": knob("Dropdown", v["batch_size"], "batch size", options=(32, 64, 128)),
            "seeds": knob("IntSlider", v["seeds"], "seeds", min=1, max=5, continuous_update=False)}
