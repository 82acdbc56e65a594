"""Chapter 42: FAL, federated adversarial training, against FedAvg: clean and PGD-robust test accuracy.

Both methods get the same learning-rate grid, chosen on a validation split of the clean task (`protocol.tune`);
robust accuracy is measured on the test set under PGD-10 at the training radius epsilon at every evaluation
(`fal.RobustAccuracy`, the history's `robust_acc` column beside `test_acc`).
"""
from __future__ import annotations

import warnings
from typing import Iterator, Mapping, Sequence

import pandas as pd
from matplotlib import pyplot as plt
from matplotlib.figure import Figure

from .. import protocol
from ..algorithms import FAL, FedAvg
from ..algorithms.fal import RobustAccuracy
from ..data import Dataset, load
from ..federation import Federation
from ..partition import dirichlet
from ..plots import learning_curves
from ..widgets import knob

DEFAULTS: dict[str, object] = {"n_clients": 10, "alpha": 1.0, "epsilon": 0.2, "pgd_steps": 5, "local_steps": 5,
                               "rounds": 30, "lr": 0.3, "server_lr": 1.0, "seed": 0}


def make_federation(dataset: Dataset, seed: int, lr: float, *, n_clients: int = 10, alpha: float = 1.0,
                    local_steps: int = 5, robust: float | None = None) -> Federation:
    """Digits over Dirichlet(alpha) clients, logistic regression, full participation, batch 32; with `robust` = eps
    every evaluation also records the PGD-10 test accuracy at eps (column robust_acc)."""
    parts = dirichlet(dataset.y_train, n_clients=n_clients, alpha=alpha, seed=seed)
    metrics = [] if robust is None else [RobustAccuracy(robust, steps=10)]
    return Federation(dataset, parts, "logistic", local_steps=local_steps, batch_size=32, lr=lr, seed=seed,
                      metrics=metrics)


def methods(epsilon: float, pgd_steps: int) -> dict[str, protocol.Factory]:
    """FedAvg and FAL (PGD step epsilon / 4), each with a server step size to tune."""
    return {"FedAvg": lambda server_lr: FedAvg(server_lr=server_lr),
            "FAL": lambda server_lr: FAL(epsilon=epsilon, step_size=epsilon / 4, steps=pgd_steps, server_lr=server_lr)}


def final_table(histories: pd.DataFrame) -> pd.DataFrame:
    """Clean and PGD-10 robust test accuracy at every run's last evaluation: one row per (algorithm, seed)."""
    last = histories.groupby(["algorithm", "seed"], sort=False).tail(1)
    return last[["algorithm", "seed", "test_acc", "robust_acc"]].rename(
        columns={"test_acc": "clean", "robust_acc": "robust"}).reset_index(drop=True)


def compare(epsilon: float, pgd_steps: int, *, rounds: int, seeds: Sequence[int] = protocol.SEEDS,
            dataset: Dataset | None = None, **task) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Tune both methods alike on the clean task, run them on every seed with robust accuracy recorded every round;
    (histories, final clean/robust table, chosen step sizes)."""
    dataset = dataset or load("digits")
    make = lambda data, seed, lr: make_federation(data, seed, lr, **task)  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an optimum at the grid's edge is kept in `choices`
        tuned = {name: protocol.tune(dataset, make, factory, rounds=rounds, name=name, max_extensions=0)
                 for name, factory in methods(epsilon, pgd_steps).items()}
    runs = [make_federation(dataset, seed, t.lr, robust=epsilon, **task).run(t.build(), rounds, progress=False,
                                                                             label=name).assign(seed=seed)
            for seed in seeds for name, t in tuned.items()]
    history = pd.concat(runs, ignore_index=True)
    choices = pd.DataFrame([t.summary() for t in tuned.values()]).set_index("method")
    return history, final_table(history), choices


def stream(values: Mapping[str, object], progress: bool = True) -> Iterator[pd.DataFrame]:
    """FedAvg, then FAL, on one seed at the panel's steps, yielding the history after each run (clean and robust
    accuracy at every round), so the panel draws FedAvg's curves while FAL trains."""
    v = {**DEFAULTS, **values}
    eps = float(v["epsilon"])
    fed = make_federation(load("digits"), int(v["seed"]), float(v["lr"]), n_clients=int(v["n_clients"]),
                          alpha=float(v["alpha"]), local_steps=int(v["local_steps"]), robust=eps)
    algorithms = {name: factory(float(v["server_lr"])) for name, factory in methods(eps, int(v["pgd_steps"])).items()}
    yield from fed.compare_each(algorithms, int(v["rounds"]), progress=progress)


def run(values: Mapping[str, object], progress: bool = True) -> pd.DataFrame:
    """The last history of `stream`: FedAvg and FAL, with columns test_acc and robust_acc."""
    *_, history = stream(values, progress)
    return history


def figure(history: pd.DataFrame) -> Figure:
    """Clean (left) and PGD-10 robust (right) test accuracy per round; several seeds give a mean and a band."""
    fig, (clean, robust) = plt.subplots(1, 2, figsize=(10, 3.5), sharey=True, layout="constrained")
    learning_curves(history, y="test_acc", ax=clean)
    learning_curves(history, y="robust_acc", ax=robust)
    clean.set(ylim=(0, 1), ylabel="test accuracy", title="clean test inputs")
    robust.set(title="PGD-10 at the training epsilon")
    robust.get_legend().remove()
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


