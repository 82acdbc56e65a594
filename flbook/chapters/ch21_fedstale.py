"""Chapter 21: FedStale's stale-update memory for several betas, on frequent and rare clients.

Each seed builds a two-group participation (`participation_from`: a mean rate and the gap between the
frequent and the rare half), and FedStale gets that model's p_k. The figure plots the late test loss
minus FedAvg's (beta = 0) against beta, one dot per seed.
"""
from __future__ import annotations

from typing import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from ..algorithms import FedStale
from ..widgets import federation_from, knob, participation_controls, participation_from, standard_controls

BETAS = (0.0, 0.25, 0.5, 0.75, 1.0)  # the betas a panel offers
DEFAULTS: dict[str, object] = {"participation": 0.55, "participation_gap": 0.9, "betas": (0.0, 0.5, 1.0), "seeds": 2,
                               "known_p": True}


def beta_label(beta: float) -> str:
    """Display name of FedStale with this beta: its two ends are FedAvg and FedVARP."""
    return {0.0: "FedAvg (β=0)", 1.0: "FedVARP (β=1)"}.get(float(beta), f"FedStale (β={beta:g})")


def run(values: Mapping[str, object], progress: bool = True) -> pd.DataFrame:
    """FedStale for each of values["betas"] and values["seeds"] seeds on the two-group federation the values describe.

    FedStale divides by the known p_k (values["known_p"], default) or estimates 1/p_k online as FedAU does.
    Returns one history with columns beta, seed, alpha and gap added."""
    betas, seeds = tuple(values.get("betas", DEFAULTS["betas"])), int(values.get("seeds", 1))
    first = int(values.get("seed", 0))
    if not betas or seeds < 1:
        raise ValueError(f"betas must be a non-empty selection and seeds >= 1, got {betas} and {seeds}")
    runs = []
    with tqdm(total=len(betas) * seeds, desc="FedStale runs", disable=not progress, leave=False) as bar:
        for seed in range(first, first + seeds):
            participation = participation_from({**values, "seed": seed})
            fed = federation_from({**values, "seed": seed, "participation": participation})
            # known p_k (the participation model's), or estimated online from the gaps between participations
            p = tuple(participation.probabilities(fed.n_clients)) if values.get("known_p", True) else None
            for beta in betas:
                history = fed.run(FedStale(beta=beta, probabilities=p), int(values.get("rounds", 200)), eval_every=5,
                                  progress=False, on_divergence="stop", label=beta_label(beta))
                runs.append(history.assign(beta=beta, seed=seed, alpha=values.get("alpha"),
                                           gap=values.get("participation_gap", 0.0)))
                bar.update()
    return pd.concat(runs, ignore_index=True)


def staleness_gain(history: pd.DataFrame) -> pd.DataFrame:
    """Mean test loss over the second half of the rounds per (alpha, gap, beta, seed), and its gain over beta = 0."""
    if not (history["beta"] == 0).any():
        raise ValueError(f"betas must include 0 (FedAvg, the reference of the gains), "
                         f"got {sorted(set(history['beta']))}")
    late = history[history["round"] > history["round"].max() / 2]
    table = late.groupby(["alpha", "gap", "beta", "seed"], as_index=False)["test_loss"].mean()
    fedavg = table[table["beta"] == 0].set_index(["alpha", "gap", "seed"])["test_loss"]
    baseline = table.set_index(["alpha", "gap", "seed"]).index.map(fedavg)
    return table.assign(vs_fedavg=table["test_loss"].to_numpy() - np.asarray(baseline, dtype=float))


def figure(history: pd.DataFrame) -> Figure:
    """Late test loss minus FedAvg's against beta: colour for alpha, line style for the gap, a dot per seed."""
    gain = staleness_gain(history)
    gain["data"] = [f"Dirichlet α={a:g}" for a in gain["alpha"]]
    gain["participation"] = [f"p gap {g:g}" for g in gain["gap"]]
    fig, ax = plt.subplots(figsize=(7.0, 3.5), layout="constrained")
    sns.lineplot(data=gain, x="beta", y="vs_fedavg", hue="data", style="participation", errorbar=None, markers=True,
                 ax=ax)
    sns.scatterplot(data=gain, x="beta", y="vs_fedavg", hue="data", legend=False, alpha=0.4, s=18, ax=ax)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(xlabel="β (0 = FedAvg, 1 = FedVARP)", ylabel="late test loss − FedAvg's",
           title="below 0: stale updates help")
    ax.legend(fontsize="small", title=None, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def controls(**overrides: object) -> dict:
    """The federation's knobs, participation rate and gap, the betas and seeds."""
    own = {key: overrides.pop(key, default) for key, default in DEFAULTS.items()}
    shared = {key: widget for key, widget in standard_controls(**overrides).items() if key != "algorithms"}
    return {**shared, **participation_controls(own["participation"], own["participation_gap"]),
            "betas": knob("SelectMultiple", tuple(own["betas"]), "β values", options=BETAS, rows=5),
            "seeds": knob("IntSlider", own["seeds"], "seeds", min=1, max=5),
            "known_p": knob("Checkbox", own["known_p"], "known p_k (else estimated)")}
