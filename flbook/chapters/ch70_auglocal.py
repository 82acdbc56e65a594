"""Chapter 70: AugLocal against end-to-end backpropagation and greedy local learning with linear heads.

A residual MLP on MNIST-1D is cut into K gradient-isolated modules; the panel trains backpropagation, greedy local
learning (a linear classifier per local layer) and AugLocal (auxiliary nets copied from later layers) and plots
test accuracy per epoch, accuracy against the activations each method keeps for its backward pass, and the
per-layer linear-probe accuracy.
"""
from __future__ import annotations

from typing import Mapping

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from torch import nn

from ..auglocal import local_network, residual_mlp
from ..centralized import Build, fit, seeded_init
from ..data import load
from ..local_learning import LocalLearner
from ..plots import accuracy_vs_memory, learning_curves
from ..widgets import chosen, knob, selection

DEFAULTS: dict[str, object] = {"n_layers": 8, "width": 32, "n_modules": 8, "depth": 3, "tau": 0.5, "lr": 3e-3,
                               "epochs": 12, "batch_size": 256, "seeds": 1,
                               "algorithms": ("BP", "local (linear heads)", "AugLocal")}
METHODS = ("BP", "local (linear heads)", "AugLocal")


def build(n_layers: int, width: int, n_modules: int, aux: str = "auglocal", depth: int = 3, tau: float = 0.5,
          probes: bool = True) -> Build:
    """A method of the chapter: the residual MLP of `n_layers` layers cut into `n_modules` modules, with `aux`
    auxiliary objectives, trained by Adam (`LocalLearner`)."""
    def make(data, seed: int, lr: float) -> LocalLearner:
        net = seeded_init(seed, lambda: local_network(
            residual_mlp(data.n_features, width, n_layers), nn.Linear(width, data.n_classes), n_modules, aux,
            width=width, n_classes=data.n_classes, depth=depth, tau=tau))
        return LocalLearner(net, lr, data.x_train, data.y_train, probes=probes)
    return make


def methods(values: Mapping[str, object]) -> dict[str, Build]:
    """The selected methods at the values' depth, width, number of modules K, auxiliary depth d and pyramid tau."""
    v = {**DEFAULTS, **values}
    shape = dict(n_layers=int(v["n_layers"]), width=int(v["width"]))
    table = {"BP": build(**shape, n_modules=1),
             "local (linear heads)": build(**shape, n_modules=int(v["n_modules"]), aux="linear"),
             "AugLocal": build(**shape, n_modules=int(v["n_modules"]), depth=int(v["depth"]), tau=float(v["tau"]))}
    label = {"AugLocal": f"AugLocal (d={int(v['depth'])})"}
    return {label.get(name, name): table[name] for name in chosen(v, METHODS)}


def run(values: Mapping[str, object], progress: bool = True) -> pd.DataFrame:
    """Every selected method at the panel's learning rate on MNIST-1D, for `seeds` seeds."""
    v = {**DEFAULTS, **values}
    if int(v["n_modules"]) > int(v["n_layers"]):
        raise ValueError(f"n_modules must be an integer in [1, {v['n_layers']}] (one layer per module at most), "
                         f"got {v['n_modules']}")
    data = load("mnist1d")
    runs = [(name, make, seed) for name, make in methods(v).items() for seed in range(int(v["seeds"]))]
    return pd.concat([fit(make, data, seed=seed, lr=float(v["lr"]), epochs=int(v["epochs"]),
                          batch_size=int(v["batch_size"]), label=name, progress=progress)
                      for name, make, seed in runs], ignore_index=True)


def probes(history: pd.DataFrame) -> pd.DataFrame:
    """Per method and layer: linear-probe test accuracy at the last epoch, averaged over seeds (long format)."""
    last = history[history["round"] == history["round"].max()]
    columns = [c for c in history.columns if c.startswith("probe_")]  # filled in the last row of each run
    long = last.melt(id_vars=["algorithm"], value_vars=columns, var_name="layer", value_name="probe accuracy")
    long["layer"] = long["layer"].str.removeprefix("probe_").astype(int)
    return long.groupby(["algorithm", "layer"], sort=False, as_index=False)["probe accuracy"].mean()


def summary(history: pd.DataFrame, last: int = 5) -> pd.DataFrame:
    """Per method: test accuracy over the last `last` epochs (mean over seeds) and activation floats per sample."""
    end = history[history["round"] > history["round"].max() - last]
    table = end.groupby("algorithm", sort=False).agg(accuracy=("test_acc", "mean"),
                                                     activations=("activations", "first"))
    table["activation share of BP"] = table["activations"] / table.loc["BP", "activations"] if "BP" in table.index \
        else float("nan")
    return table


def figure(history: pd.DataFrame) -> Figure:
    """Test accuracy per epoch; accuracy against activation floats kept per sample; per-layer probe accuracy."""
    fig, (curves, memory, layers) = plt.subplots(1, 3, figsize=(14.0, 3.6), layout="constrained")
    learning_curves(history, ax=curves)
    curves.set_xlabel("epoch")
    accuracy_vs_memory(summary(history).reset_index(), 5, ax=memory)
    sns.lineplot(data=probes(history), x="layer", y="probe accuracy", hue="algorithm", marker="o", ax=layers,
                 legend=False)
    layers.set(xlabel="layer l", ylabel="linear-probe test accuracy")
    return fig


def controls(**overrides: object) -> dict:
    """The knobs that matter: number of modules K and auxiliary depth d (with tau), then depth, lr and length."""
    v = {**DEFAULTS, **overrides}
    return {"algorithms": selection(METHODS, v["algorithms"]),
            "n_modules": knob("IntSlider", v["n_modules"], "modules K", min=1, max=16, continuous_update=False),
            "depth": knob("IntSlider", v["depth"], "aux depth d", min=1, max=8, continuous_update=False),
            "tau": knob("FloatSlider", v["tau"], "pyramid τ", min=0.0, max=1.0, step=0.25, continuous_update=False),
            "n_layers": knob("IntSlider", v["n_layers"], "layers L", min=2, max=16, continuous_update=False),
            "width": knob("Dropdown", v["width"], "width", options=(16, 32, 64)),
            "lr": knob("Dropdown", v["lr"], "Adam lr", options=(1e-3, 3e-3, 1e-2)),
            "epochs": knob("IntSlider", v["epochs"], "epochs", min=1, max=60, continuous_update=False),
            "batch_size": knob("Dropdown", v["batch_size"], "batch size", options=(32, 64, 128, 256)),
            "seeds": knob("IntSlider", v["seeds"], "seeds", min=1, max=5, continuous_update=False)}
