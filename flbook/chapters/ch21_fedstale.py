"""Chapter 21: FedStale's stale-update memory for several betas, on frequent and rare clients.

Each seed builds a two-group participation (`participation_from`: a mean rate and the gap between the
frequent and the rare half), and FedStale gets that model's p_k. The figure plots the late test loss
minus FedAvg's (beta = 0) against beta, one dot per seed.
"""
from __future__ import annotations

import math
from typing import Iterator, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from ..algorithms import FedStale
from ..data import Dataset, load
from ..federation import Federation
from ..history import per_seed_difference, window_mean
from ..protocol import SERVER_LRS, claim_row, claims_table, compare, step_size_controls
from ..widgets import federation_from, knob, partition_from, participation_controls, participation_from, \
    standard_controls

BETAS = (0.0, 0.25, 0.5, 0.75, 1.0)  # the betas a panel offers
DEFAULTS: dict[str, object] = {"participation": 0.55, "participation_gap": 0.9, "betas": (0.0, 0.5, 1.0), "seeds": 2,
                               "known_p": True}
SETTINGS = ((0.1, 0.0), (0.1, 0.9), (10.0, 0.0), (10.0, 0.9))  # (Dirichlet alpha, participation gap)
BAND = (0.1, 0.9)  # the setting FedStale's argument is about: heterogeneous data and participation
CARD = dict(dataset="mnist1d", model="logistic", partitioner="dirichlet", n_clients=24, local_steps=5,
            batch_size=32, rounds=150, participation=0.55)  # the card's plan (5 local steps), 150 of its 300 rounds
LRS = (0.1, 0.3, 1.0)  # the local lrs every beta and control tries (extended at an edge)


def beta_label(beta: float) -> str:
    """Display name of FedStale with this beta: its two ends are FedAvg and FedVARP."""
    return {0.0: "FedAvg (β=0)", 1.0: "FedVARP (β=1)"}.get(float(beta), f"FedStale (β={beta:g})")


def stream(values: Mapping[str, object], progress: bool = True) -> Iterator[pd.DataFrame]:
    """FedStale for each of values["betas"] and values["seeds"] seeds on the two-group federation the values describe,
    yielding the history so far after each seed's betas, so a panel draws the first seed's dots while the next trains.

    FedStale divides by the known p_k (values["known_p"], default) or estimates 1/p_k online as FedAU does.
    Each history has columns beta, seed, alpha and gap added."""
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
            yield pd.concat(runs, ignore_index=True)


def run(values: Mapping[str, object], progress: bool = True) -> pd.DataFrame:
    """The whole sweep of `stream`: every beta on every seed."""
    *_, history = stream(values, progress)
    return history


def make_federation(values: Mapping[str, object]):
    """The protocol's task function (dataset, seed, lr) -> Federation for the two-group setting `values` describes."""
    v = {**values}

    def make(dataset: Dataset, seed: int, lr: float) -> Federation:
        parts = partition_from({**v, "seed": seed}, dataset.y_train)
        return Federation(dataset, parts, str(v["model"]), local_steps=int(v["local_steps"]),
                          batch_size=int(v.get("batch_size", 32)), lr=lr, participation=participation_from(v),
                          seed=seed)
    return make


def experiment(base: Mapping[str, object], settings: Sequence[tuple[float, float]] = SETTINGS,
               betas: Sequence[float] = (0.0, 0.5, 1.0), controls_at: tuple[float, float] | None = BAND,
               tune_rounds: int | None = None) -> pd.DataFrame:
    """`protocol.compare` of FedStale at each beta (known p_k) in every (alpha, gap) setting: every beta tunes its
    local lr on a validation split (score: minus the late validation loss), then runs on 3 seeds; in the setting
    `controls_at` FedAvg with a tuned server lr and FedAvgM join. One history with columns alpha and gap; the
    chosen step sizes are in `attrs["choices"]`."""
    rounds, runs, choices = int(base["rounds"]), [], []
    score = lambda h: -math.inf if h.attrs.get("diverged_at") is not None else -late_loss(h)  # noqa: E731
    for alpha, gap in settings:
        v = {**base, "alpha": alpha, "participation_gap": gap}
        p = tuple(participation_from(v).probabilities(int(v["n_clients"])))
        methods = {beta_label(b): (lambda b=b: FedStale(beta=b, probabilities=p)) for b in betas}
        controls = (alpha, gap) == controls_at  # the controls tune their server lr; the betas keep eta_s = 1
        result = compare(load(str(v["dataset"])), make_federation(v), methods, rounds=rounds, server_lrs=None,
                         grids=dict.fromkeys(step_size_controls(), SERVER_LRS) if controls else None,
                         tune_rounds=tune_rounds, controls=controls, score=score, eval_every=5, lrs=LRS)
        beta = result.history["algorithm"].map({beta_label(b): b for b in betas})  # NaN for the controls
        runs.append(result.history.assign(alpha=alpha, gap=gap, beta=beta))
        choices.append(result.choices().assign(alpha=alpha, gap=gap))
    history = pd.concat(runs, ignore_index=True)
    history.attrs["choices"] = pd.concat(choices)
    return history


def late_loss(run: pd.DataFrame) -> float:
    """Test loss averaged over the second half of a run (the card's metric)."""
    return window_mean(run, "test_loss", last=run["round"].max() / 2).mean


def stale_gain(history: pd.DataFrame, alpha: float, gap: float, beta: float = 1.0) -> pd.Series:
    """Per seed: late loss of FedStale at `beta` minus FedAvg's (beta = 0) in one setting (negative: stale helps)."""
    one = history[(history["alpha"] == alpha) & (history["gap"] == gap)]
    return per_seed_difference(one, beta_label(beta), beta_label(0.0), late_loss)


def claims(history: pd.DataFrame) -> pd.DataFrame:
    """The "paper vs this notebook" table from `experiment`'s history; verdicts from per-seed differences."""
    band = history[(history["alpha"] == BAND[0]) & (history["gap"] == BAND[1])]
    mid, avg, varp = beta_label(0.5), beta_label(0.0), beta_label(1.0)
    d = lambda h, m, b: per_seed_difference(h, m, b, late_loss)  # noqa: E731
    where = lambda a, g: f"α={a:g}, gap {g:g}"  # noqa: E731
    rows = [claim_row(f"FedStale (β=0.5) beats both FedAvg and FedVARP, {where(*s)}", "FedStale beats both in "
                      "many settings", stale_gain(history, *s, beta=0.5) - np.minimum(0, stale_gain(history, *s)),
                      kind="less", why="late test loss, β=0.5 minus the better of β=0 and β=1") for s in SETTINGS]
    rows += [claim_row(f"FedVARP (β=1) beats FedAvg (β=0), {where(*s)}", "stale updates reduce variance",
                       stale_gain(history, *s), kind="less", why="late test loss, β=1 minus β=0") for s in SETTINGS]
    rows += [claim_row(f"Stale updates help more at high data heterogeneity (gap {g:g})", "theory",
                       stale_gain(history, 0.1, g) - stale_gain(history, 10.0, g), kind="less",
                       why="FedVARP's gain over FedAvg at α=0.1 minus that at α=10 (per seed index)")
             for g in (0.0, 0.9)]
    rows += [claim_row(f"... and at low participation heterogeneity (α={a:g})", "theory",
                       stale_gain(history, a, 0.0) - stale_gain(history, a, 0.9), kind="less",
                       why="FedVARP's gain over FedAvg at gap 0 minus that at gap 0.9 (per seed index)")
             for a in (0.1, 10.0)]
    rows += [claim_row(f"FedVARP (β=1) beats {control}, {where(*BAND)}", "(step-size control)",
                       d(band, varp, control), kind="less", why="late test loss; the control's server lr is tuned")
             for control in pd.unique(band["algorithm"]) if control not in (mid, avg, varp)]
    return claims_table(rows)


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
