"""Chapter 42: FAL, federated adversarial training, against FedAvg: clean and PGD-robust test accuracy.

Both methods get the same learning-rate grid, chosen on a validation split of the clean task (`protocol.tune`);
robust accuracy is measured on the test set under PGD-10 at the training radius epsilon after the last round.
"""
from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import pandas as pd
import seaborn as sns
from matplotlib import pyplot as plt
from matplotlib.figure import Figure

from .. import protocol
from ..algorithms import FAL, FedAvg
from ..algorithms.fal import robust_accuracy
from ..data import Dataset, load
from ..federation import Federation
from ..partition import dirichlet
from ..plots import learning_curves
from ..widgets import knob

DEFAULTS: dict[str, object] = {"n_clients": 10, "alpha": 1.0, "epsilon": 0.2, "pgd_steps": 5, "local_steps": 5,
                               "rounds": 30, "lr": 0.3, "server_lr": 1.0, "seed": 0}


def make_federation(dataset: Dataset, seed: int, lr: float, *, n_clients: int = 10, alpha: float = 1.0,
                    local_steps: int = 5) -> Federation:
    """Digits over Dirichlet(alpha) clients, logistic regression, full participation, batch 32."""
    parts = dirichlet(dataset.y_train, n_clients=n_clients, alpha=alpha, seed=seed)
    return Federation(dataset, parts, "logistic", local_steps=local_steps, batch_size=32, lr=lr, seed=seed)


def methods(epsilon: float, pgd_steps: int) -> dict[str, protocol.Factory]:
    """FedAvg and FAL (PGD step epsilon / 4), each with a server step size to tune."""
    return {"FedAvg": lambda server_lr: FedAvg(server_lr=server_lr),
            "FAL": lambda server_lr: FAL(epsilon=epsilon, step_size=epsilon / 4, steps=pgd_steps, server_lr=server_lr)}


def robust_table(fed_for, histories: pd.DataFrame, epsilon: float) -> pd.DataFrame:
    """Clean and PGD-10 robust test accuracy of every run's final model: one row per (algorithm, seed)."""
    rows = []
    for (name, seed), run in histories.groupby(["algorithm", "seed"], sort=False):
        fed, theta = fed_for(name, seed)
        rows.append({"algorithm": name, "seed": seed, "clean": run["test_acc"].iloc[-1],
                     "robust": robust_accuracy(fed.model, theta, fed.x_test, fed.y_test, epsilon)})
    return pd.DataFrame(rows)


def compare(epsilon: float, pgd_steps: int, *, rounds: int, seeds: Sequence[int] = protocol.SEEDS,
            dataset: Dataset | None = None, **task) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Tune both methods alike, run them on every seed; (histories, clean/robust table, chosen step sizes)."""
    dataset = dataset or load("digits")
    make = lambda data, seed, lr: make_federation(data, seed, lr, **task)  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an optimum at the grid's edge is kept in `choices`
        tuned = {name: protocol.tune(dataset, make, factory, rounds=rounds, name=name, max_extensions=0)
                 for name, factory in methods(epsilon, pgd_steps).items()}
    runs, models = [], {}
    for seed in seeds:
        for name, t in tuned.items():
            fed = make(dataset, seed, t.lr)
            runs.append(fed.run(t.build(), rounds, progress=False, label=name).assign(seed=seed))
            models[name, seed] = (fed, fed.final_models[name])
    history = pd.concat(runs, ignore_index=True)
    choices = pd.DataFrame([t.summary() for t in tuned.values()]).set_index("method")
    return history, robust_table(lambda n, s: models[n, s], history, epsilon), choices


def run(values: Mapping[str, object], progress: bool = True) -> pd.DataFrame:
    """FedAvg and FAL on one seed at the panel's steps; the history carries clean and robust accuracy columns."""
    v = {**DEFAULTS, **values}
    eps = float(v["epsilon"])
    fed = make_federation(load("digits"), int(v["seed"]), float(v["lr"]), n_clients=int(v["n_clients"]),
                          alpha=float(v["alpha"]), local_steps=int(v["local_steps"]))
    runs = []
    for name, factory in methods(eps, int(v["pgd_steps"])).items():
        h = fed.run(factory(float(v["server_lr"])), int(v["rounds"]), progress=progress, label=name)
        robust = robust_accuracy(fed.model, fed.final_models[name], fed.x_test, fed.y_test, eps)
        runs.append(h.assign(robust_acc=robust))
    return pd.concat(runs, ignore_index=True)


def figure(history: pd.DataFrame) -> Figure:
    """Clean test accuracy per round, and clean vs PGD-robust accuracy of the final models."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    learning_curves(history, y="test_acc", ax=left)
    last = history.groupby("algorithm", sort=False).tail(1)
    bars = last.melt(id_vars="algorithm", value_vars=["test_acc", "robust_acc"], var_name="test", value_name="acc")
    bars["test"] = bars["test"].map({"test_acc": "clean", "robust_acc": "PGD-10 robust"})
    sns.barplot(bars, x="algorithm", y="acc", hue="test", ax=right)
    right.set(ylim=(0, 1), ylabel="test accuracy", xlabel="", title="final model")
    fig.tight_layout()
    return fig


def controls(**overrides: object) -> dict:
    """The adversary's radius and PGD steps, heterogeneity, local steps, server step and length."""
    v = {**DEFAULTS, **overrides}
    slider = dict(continuous_update=False)
    return {"epsilon": knob("FloatSlider", v["epsilon"], "epsilon (L-inf)", min=0.0, max=0.5, step=0.05, **slider),
            "pgd_steps": knob("IntSlider", v["pgd_steps"], "PGD steps", min=0, max=20, **slider),
            "alpha": knob("FloatLogSlider", v["alpha"], "alpha (Dirichlet)", base=10, min=-1, max=2, step=0.1,
                          readout_format=".3g", **slider),
            "local_steps": knob("IntSlider", v["local_steps"], "local steps", min=1, max=20, **slider),
            "server_lr": knob("FloatLogSlider", v["server_lr"], "server step", base=10, min=-1, max=0.5, step=0.1,
                              readout_format=".3g", **slider),
            "rounds": knob("IntSlider", v["rounds"], "rounds", min=2, max=100, **slider),
            "lr": knob("FloatLogSlider", v["lr"], "learning rate", base=10, min=-2, max=0, step=0.1,
                       readout_format=".3g", **slider),
            "n_clients": knob("IntSlider", v["n_clients"], "clients", min=2, max=40, **slider),
            "seed": knob("BoundedIntText", v["seed"], "seed", min=0, max=2**31 - 1)}


