"""Chapter 71: local learning on a tiny vision transformer, with CE-only, image- and feature-reconstruction losses.

The book's tiny ViT on digits (4 patch tokens of 4x4 pixels and a class token, width 32, 4 blocks) is cut into K
gradient-isolated modules; the panel trains end-to-end backpropagation and the three local losses and plots test
accuracy per epoch and against the activations each keeps for its backward pass.
"""
from __future__ import annotations

from typing import Mapping

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from ..centralized import Build, fit, seeded_init
from ..data import load
from ..feature_reconstruction import local_vit
from ..local_learning import LocalLearner
from ..plots import accuracy_vs_memory, learning_curves
from ..transformer import vit
from ..widgets import chosen, knob, selection

DEFAULTS: dict[str, object] = {"n_modules": 4, "lam1": 1.0, "patch": 4, "lr": 3e-3, "epochs": 8, "batch_size": 128,
                               "seeds": 1, "algorithms": ("E2E", "image reconstruction", "feature reconstruction")}
METHODS = ("E2E", "CE only", "image reconstruction", "feature reconstruction")
TARGET = {"CE only": "none", "image reconstruction": "image", "feature reconstruction": "feature"}


def build(n_modules: int, target: str = "feature", lam1: float = 1.0, patch: int = 4) -> Build:
    """The tiny ViT on `patch` x `patch` pixel patches, cut into `n_modules` modules with local loss `target`;
    lambda1 goes from lam1 to lam1/10."""
    def make(data, seed: int, lr: float) -> LocalLearner:
        net = seeded_init(seed, lambda: local_vit(vit(data.input_shape, data.n_classes, patch=patch).module, n_modules,
                                                  target, lam1=(lam1, lam1 / 10)))
        return LocalLearner(net, lr, data.x_train, data.y_train)
    return make


def methods(values: Mapping[str, object]) -> dict[str, Build]:
    """The selected methods at the values' K, lambda1 and patch size (E2E is K = 1)."""
    v = {**DEFAULTS, **values}
    k, lam1, patch = int(v["n_modules"]), float(v["lam1"]), int(v["patch"])
    return {name: build(1, patch=patch) if name == "E2E" else build(k, TARGET[name], lam1, patch)
            for name in chosen(v, METHODS)}


def run(values: Mapping[str, object], progress: bool = True) -> pd.DataFrame:
    """Every selected method at the panel's learning rate on digits, for `seeds` seeds."""
    v = {**DEFAULTS, **values}
    data = load("digits")
    runs = [(name, make, seed) for name, make in methods(v).items() for seed in range(int(v["seeds"]))]
    return pd.concat([fit(make, data, seed=seed, lr=float(v["lr"]), epochs=int(v["epochs"]),
                          batch_size=int(v["batch_size"]), label=name, progress=progress)
                      for name, make, seed in runs], ignore_index=True)


def summary(history: pd.DataFrame, last: int = 3) -> pd.DataFrame:
    """Per method: test accuracy over the last `last` epochs (mean over seeds) and activation floats per sample."""
    end = history[history["round"] > history["round"].max() - last]
    return end.groupby("algorithm", sort=False).agg(accuracy=("test_acc", "mean"), activations=("activations", "first"))


def figure(history: pd.DataFrame) -> Figure:
    """Test accuracy per epoch, and accuracy against the activation floats kept per sample."""
    fig, (curves, memory) = plt.subplots(1, 2, figsize=(11.0, 3.6), layout="constrained")
    learning_curves(history, ax=curves)
    curves.set_xlabel("epoch")
    accuracy_vs_memory(summary(history).reset_index(), 3, ax=memory)
    return fig


def controls(**overrides: object) -> dict:
    """The knobs that matter: the number of modules K and the local loss (through the selection), lambda1, and
    the patch size (4: 4 patch tokens, 2: 16)."""
    v = {**DEFAULTS, **overrides}
    return {"algorithms": selection(METHODS, v["algorithms"]),
            "n_modules": knob("Dropdown", v["n_modules"], "modules K", options=(1, 2, 4)),
            "lam1": knob("FloatSlider", v["lam1"], "λ1 (first module)", min=0.0, max=5.0, step=0.1,
                         continuous_update=False),
            "patch": knob("Dropdown", v["patch"], "patch (pixels)", options=(2, 4)),
            "lr": knob("Dropdown", v["lr"], "Adam lr", options=(1e-3, 3e-3, 1e-2)),
            "epochs": knob("IntSlider", v["epochs"], "epochs", min=1, max=60, continuous_update=False),
            "batch_size": knob("Dropdown", v["batch_size"], "batch size", options=(32, 64, 128, 256)),
            "seeds": knob("IntSlider", v["seeds"], "seeds", min=1, max=5, continuous_update=False)}
