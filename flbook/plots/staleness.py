"""Pictures of asynchronous runs: how stale the applied updates were, who got how much weight, curves in time."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .curves import learning_curves


def _axes(ax: Axes | None) -> Axes:
    return plt.subplots()[1] if ax is None else ax


def _require(frame: pd.DataFrame, columns: tuple[str, ...], name: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name} must have columns {missing}; it has {list(frame.columns)}")
    if frame.empty:
        raise ValueError(f"{name} is empty: no update was applied in these runs (is the run shorter than one job?)")


def staleness_histogram(updates: pd.DataFrame, ax: Axes | None = None, hue: str = "algorithm") -> Axes:
    """Share of each run's applied updates by staleness (aggregations since their start model), one colour per run."""
    _require(updates, ("staleness", hue), "updates")
    ax = _axes(ax)
    order = list(pd.unique(updates[hue]))
    sns.histplot(updates, x="staleness", hue=hue, hue_order=order, discrete=True, stat="proportion",
                 common_norm=False, element="step", fill=False, ax=ax)
    ax.set(xlabel="staleness of an applied update (aggregations)", ylabel="share of updates")
    return ax


def weight_shares(updates: pd.DataFrame, sizes: np.ndarray) -> pd.DataFrame:
    """Each client's share of all aggregation weight in each run, against its data share p_i = n_i / n.

    Fraboni et al.: the run optimises the surrogate objective sum_i q_i L_i with q_i this share; q_i = p_i
    (ratio 1) means unbiased."""
    _require(updates, ("algorithm", "client", "weight"), "updates")
    sizes = np.asarray(sizes, dtype=float)
    totals = updates.groupby(["algorithm", "client"], sort=False)["weight"].sum()
    frames = []
    for name in pd.unique(updates["algorithm"]):
        q = totals[name].reindex(range(len(sizes)), fill_value=0.0).to_numpy()
        p = sizes / sizes.sum()
        frames.append(pd.DataFrame({"algorithm": name, "client": np.arange(len(sizes)), "share": q / q.sum(),
                                    "p": p, "ratio": q / q.sum() / p}))
    return pd.concat(frames, ignore_index=True)


def plot_weight_shares(updates: pd.DataFrame, sizes: np.ndarray, job_time: np.ndarray,
                       ax: Axes | None = None) -> Axes:
    """Aggregation-weight share over data share (1 = unbiased) per client, against the client's job time."""
    shares = weight_shares(updates, sizes).assign(job_time=lambda d: np.asarray(job_time)[d["client"]])
    ax = _axes(ax)
    sns.lineplot(shares, x="job_time", y="ratio", hue="algorithm", marker="o", ax=ax)
    ax.axhline(1.0, color="grey", lw=1, ls="--")
    ax.set(xlabel="client's job time τ_i", ylabel="weight share / data share")
    ax.legend(fontsize="small")
    return ax


def time_and_round_curves(history: pd.DataFrame, y: str = "test_acc") -> Figure:
    """`y` against simulated time (left) and against aggregations (right, log scale): the same runs, two clocks."""
    fig, (by_time, by_round) = plt.subplots(1, 2, figsize=(10.0, 3.5), sharey=True, layout="constrained")
    learning_curves(history, y=y, x="sim_time", ax=by_time)
    learning_curves(history[history["round"] > 0], y=y, x="round", ax=by_round)
    by_round.set(xscale="log", xlabel="aggregations (log scale)")
    by_round.get_legend().remove()
    return fig
