"""Chapter 11: FedLD's margin control and principal gradient, with the global loss split into three terms.

The panel trains a one-hidden-layer MLP of a chosen width on the federation the standard controls describe,
and measures the local, distribution-shift and aggregation terms of every round (`flbook.loss_decomposition`).
`claims` gathers the chapter's evidence: the terms on the same updates, and FedLD against its baselines by the
experiment protocol.
"""
from __future__ import annotations

import math
from typing import Mapping

import matplotlib.pyplot as plt
import pandas as pd
import torch
from matplotlib.figure import Figure

from .. import drift, loss_decomposition, protocol
from ..algorithms import FedAvg, FedLD, FedProx, Scaffold
from ..algorithms.base import Algorithm
from ..algorithms.fedld import principal_gradient
from ..data import Dataset
from ..federation import Federation
from ..history import is_flat, per_run, window_mean
from ..models import FlatModel, mlp
from ..partition import dirichlet
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


# ------------------------------------------------------------------------------------ the chapter's claims
TASK: dict[str, object] = {"alpha": 0.1, "n_clients": 10, "local_steps": 10, "batch_size": 32, "hidden": 64}
ROUNDS, TUNE_ROUNDS, LAST, WARM_ROUNDS = 20, 8, 5, 10
TERMS = (*loss_decomposition.TERMS, "train_loss", "step_norm")


def make_federation(alpha: float = 0.1, n_clients: int = 10, local_steps: int = 10, batch_size: int = 32,
                    hidden: int = 64) -> protocol.MakeFederation:
    """The comparison's task as the protocol wants it: (dataset, seed, lr) -> a Dirichlet(alpha) federation of a
    one-hidden-layer MLP, every client in every round."""
    def make(dataset: Dataset, seed: int, lr: float) -> Federation:
        model = mlp(math.prod(dataset.input_shape), dataset.n_classes, hidden=(hidden,))
        return Federation(dataset, dirichlet(dataset.y_train, n_clients, alpha=alpha, seed=seed), model,
                          local_steps=local_steps, batch_size=batch_size, lr=lr, seed=seed, executor="batched")
    return make


def same_updates(fed: Federation, theta: torch.Tensor, margin: float = 0.1, k_prop: float = 0.8) -> pd.DataFrame:
    """One round from `theta` on the same minibatches, three ways: FedAvg (plain local steps, averaged), margin
    control (margin local steps, averaged) and the principal gradient (plain local steps, FedLD's aggregation);
    the three loss terms, L(x^{t+1}) and the server step's norm of each."""
    probe = loss_decomposition.LossProbe(fed)
    weights = (fed.client_sizes / fed.client_sizes.sum()).to(theta.dtype)  # (N,) p_i
    plain = drift.client_updates(fed, FedAvg(), theta, seed=fed.seed)  # (N, P)
    margined = drift.client_updates(fed, FedLD(margin=margin, principal_gradient=False), theta, seed=fed.seed)
    pg = torch.cat([principal_gradient(block, weights, k_prop) if block.shape[1] > 1 else weights @ block
                    for block in plain.split(fed.model.numels, dim=1)])  # (P,), per tensor as FedLD.for_model
    rules = {"FedAvg": (plain, weights @ plain), "margin control": (margined, weights @ margined),
             "principal gradient": (plain, pg)}
    clients = torch.arange(fed.n_clients)
    rows = {rule: probe.measure(theta, deltas, weights, clients, theta + step)
            for rule, (deltas, step) in rules.items()}
    return pd.DataFrame(rows).T[list(TERMS)]


def decomposition(dataset: Dataset, seeds=protocol.SEEDS, *, margin: float = 0.1, lr: float = 0.1,
                  warm_rounds: int = WARM_ROUNDS, task: Mapping[str, object] | None = None) -> pd.DataFrame:
    """`same_updates` on every seed's federation, from x^0 and from FedAvg's model after `warm_rounds` rounds."""
    make = make_federation(**{**TASK, **(task or {})})
    frames = {}
    for seed in seeds:
        fed = make(dataset, seed, lr)
        fed.run(FedAvg(), warm_rounds, progress=False, label="warm")
        for start, theta in (("x^0", fed.initial_model()), (f"round {warm_rounds}", fed.final_models["warm"])):
            frames[seed, start] = same_updates(fed, theta, margin)
    return pd.concat(frames, names=["seed", "start", "rule"]).reset_index()


def decomposition_rows(terms: pd.DataFrame) -> list[dict]:
    """Claim rows on the same updates: margin control against FedAvg's local steps, the principal gradient
    against FedAvg's average; per seed, at each start."""
    def diff(rule: str, column: str, start: str) -> pd.Series:
        part = terms[terms.start == start].pivot(index="seed", columns="rule", values=column)
        return part[rule] - part["FedAvg"]
    rows = []
    for start in terms.start.unique():
        at = f" (same model and batches, from {start})"
        rows += [protocol.claim_row("margin control lowers the distribution-shift term" + at, "Zeng et al. 2024",
                                    diff("margin control", "shift_loss", start), kind="less"),
                 protocol.claim_row("... but raises the aggregation term" + at, "(the trade-off)",
                                    diff("margin control", "aggregation_loss", start)),
                 protocol.claim_row("... so the new global model's loss falls" + at, "(what the terms add up to)",
                                    diff("margin control", "train_loss", start), kind="less"),
                 protocol.claim_row("the principal gradient lowers the aggregation term" + at, "Zeng et al. 2024",
                                    diff("principal gradient", "aggregation_loss", start), kind="less")]
    return rows


def shortening(terms: pd.DataFrame) -> float:
    """How much the principal gradient shortens the server step on the same updates: mean ||PG|| / ||average||."""
    step = terms.pivot_table(index=["seed", "start"], columns="rule", values="step_norm")
    return float((step["principal gradient"] / step["FedAvg"]).mean())


def protocol_lineup(layers: tuple[int, ...], margin: float = 0.1) -> dict[str, protocol.Factory]:
    """The accuracy comparison's methods as protocol factories: FedLD with its server lr tuned (so the step its
    aggregation takes away can be given back) and the baselines."""
    return {"FedAvg": lambda: FedAvg(), "FedProx": lambda: FedProx(mu=0.01),
            "SCAFFOLD": lambda server_lr: Scaffold(server_lr=server_lr),
            "FedLD": lambda server_lr: FedLD(layers=layers, margin=margin, server_lr=server_lr)}


ACCURACY_CLAIMS = (  # (claim, paper, method, baseline)
    ("FedLD is more accurate than FedAvg (FedLD's server step tuned, so a shorter step can be given back)",
     "Zeng et al. 2024: better than FedAvg, FedProx and the other baselines", "FedLD", "FedAvg"),
    ("FedLD is more accurate than FedProx", "as above", "FedLD", "FedProx"),
    ("FedLD is more accurate than SCAFFOLD", "as above", "FedLD", "SCAFFOLD"),
)


def claims(dataset: Dataset, *, rounds: int = ROUNDS, tune_rounds: int = TUNE_ROUNDS, margin: float = 0.1,
           task: Mapping[str, object] | None = None, terms: pd.DataFrame | None = None,
           **compare_kwargs: object) -> tuple[protocol.Comparison, pd.DataFrame, pd.DataFrame]:
    """The chapter's evidence: the same-updates decomposition (or `terms` given), then FedLD against its tuned
    baselines by the protocol; returns (comparison, terms, "paper vs this notebook" table)."""
    task = {**TASK, **(task or {})}
    terms = decomposition(dataset, margin=margin, task=task) if terms is None else terms
    layers = tuple(mlp(math.prod(dataset.input_shape), dataset.n_classes, hidden=(int(task["hidden"]),)).numels)
    result = protocol.compare(dataset, make_federation(**task), protocol_lineup(layers, margin),
                              rounds=rounds, tune_rounds=tune_rounds, controls=False, **compare_kwargs)
    late = lambda h: window_mean(h, last=LAST).mean  # noqa: E731
    flat = per_run(result.history, lambda h: is_flat(h, last=LAST, tolerance=0.01))
    def why(method: str, baseline: str) -> str:
        n_flat, n = int(flat[[method, baseline]].sum()), 2 * len(flat[method])
        return (f"accuracy over rounds {rounds - LAST + 1}-{rounds}; " + ("flat: a final number" if n_flat == n else
                f"only {n_flat} of {n} curves flat: a claim about accuracy by round {rounds}, i.e. speed"))
    rows = [protocol.claim_row(claim + f", rounds {rounds - LAST + 1}-{rounds}", paper,
                               result.difference(method, baseline, late), why=why(method, baseline))
            for claim, paper, method, baseline in ACCURACY_CLAIMS]
    return result, terms, protocol.claims_table(rows + decomposition_rows(terms))
