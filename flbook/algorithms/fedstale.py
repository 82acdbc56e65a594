"""FedStale: the server remembers every client's last update and mixes a fraction beta of these stale updates in.

Under partial participation the server sees only the clients S_t of round t. FedVARP (beta = 1) replaces
each missing update by the client's last one, h_k; FedAvg (beta = 0) uses fresh updates only. FedStale
takes the convex combination: with alpha_k = n_k / n and p_k = P(k in S_t),

    d = beta * sum_{k=1..N} alpha_k h_k + sum_{k in S_t} (alpha_k / p_k) (Delta_k - beta * h_k),
    x <- x + eta_g d,      then h_k <- Delta_k for k in S_t.

For every beta, E_{S_t}[d] = sum_k alpha_k Delta_k. A memory h_k cancels the sampling noise of client k's
term as far as its update has not changed since it was sent; for a rarely participating client, whose
memory was computed on a model many rounds old, it adds error instead.

The weights need p_k. Pass the participation model's `probabilities(N)` (known p_k), or leave them None
to estimate 1/p_k online as FedAU does: the running mean of the intervals between a client's
participations (1 until it has taken part once).

The rest of the module is the chapter's experiment: `beta_sweep` (FedStale for several betas and seeds on a
two-group participation), `staleness_gain`, `plot_beta_sweep` and `panel_controls` for its control panel.

Papers: Rodio & Neglia, "FedStale: leveraging stale client updates in federated learning", 2024,
https://arxiv.org/abs/2405.04171 (Alg. 1; code github.com/arodio/FedStale, `HistorySGD`);
Jhunjhunwala et al., "FedVARP", UAI 2022, https://arxiv.org/abs/2207.14130 (Alg. 1);
Wang & Ji, "A Lightweight Method for Tackling Unknown Participation Statistics in FL" (FedAU), ICLR 2024,
https://arxiv.org/abs/2306.03401.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .. import validation as V
from .base import RoundInfo, Tensors
from .fedavg import FedAvg

if TYPE_CHECKING:
    import ipywidgets as W
    from matplotlib.figure import Figure


@dataclass
class FedStale(FedAvg):
    """FedAvg clients; the server mixes in beta times the stale updates h_k of all N clients (FedVARP at beta = 1)."""

    beta: float = 0.5  # weight of the stale updates: 0 is FedAvg with alpha_k / p_k weights, 1 is FedVARP
    probabilities: tuple[float, ...] | None = field(default=None, repr=False)  # p_k per client; None: FedAU estimate
    name = "FedStale"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.beta = V.probability("beta", self.beta)
        if self.probabilities is not None:
            p = np.asarray(self.probabilities, dtype=float)
            if p.ndim != 1 or len(p) == 0 or not ((p > 0) & (p <= 1)).all():
                raise ValueError(f"probabilities must be a 1-D sequence of values in (0, 1], got {self.probabilities}")
            self.probabilities = tuple(p.tolist())

    def init_server_state(self, x: torch.Tensor, n_clients: int) -> Tensors:
        if self.probabilities is not None and len(self.probabilities) != n_clients:
            raise ValueError(f"probabilities must have one entry per client ({n_clients}), "
                             f"got {len(self.probabilities)}")
        h = torch.zeros(n_clients, *x.shape, dtype=x.dtype, device=x.device)  # (N, P) last update of each client
        if self.probabilities is None:  # FedAU: 1/p_k starts at 1; open interval and closed-interval count per client
            ones = torch.ones(n_clients, dtype=x.dtype, device=x.device)
            return {"h": h, "inv_p": ones, "waiting": torch.zeros_like(ones), "intervals": torch.zeros_like(ones)}
        return {"h": h, "inv_p": 1 / torch.tensor(self.probabilities, dtype=x.dtype, device=x.device)}  # (N,) 1 / p_k

    def aggregate(self, x: torch.Tensor, server_state: Tensors, messages: Tensors, weights: torch.Tensor,
                  info: RoundInfo) -> tuple[torch.Tensor, Tensors]:
        ids, delta, h = info.clients, messages["delta"], server_state["h"]  # (M,), (M, P), (N, P)
        alpha = info.client_sizes.to(x.dtype) / info.client_sizes.sum()  # (N,) alpha_k = n_k / n
        fresh = alpha[ids] * server_state["inv_p"][ids]  # (M,) alpha_k / p_k replaces the federation's weights
        d = self.beta * (alpha @ h) + fresh @ (delta - self.beta * h[ids])  # (P,) FedStale's direction
        state = {**server_state, "h": h.index_copy(0, ids, delta)}  # memory refreshed after d is computed
        if self.probabilities is None:
            state.update(fedau_update(server_state, ids))
        return self.server_step(x, d, state)


def fedau_update(state: Tensors, ids: torch.Tensor) -> Tensors:
    """FedAU's estimate of 1/p_k after a round in which `ids` took part: the mean interval between participations.

    Every client's open interval grows by one round; those in `ids` close it and fold its length into the mean."""
    waiting = state["waiting"] + 1  # (N,) rounds since the last participation, this one included
    took_part = torch.zeros_like(waiting, dtype=torch.bool).index_fill(0, ids, True)  # (N,)
    intervals = state["intervals"] + took_part  # (N,) closed intervals so far
    mean = state["inv_p"] + (waiting - state["inv_p"]) / intervals.clamp(min=1)  # running mean with the new interval
    return {"inv_p": torch.where(took_part, mean, state["inv_p"]), "waiting": torch.where(took_part, 0, waiting),
            "intervals": intervals}


@dataclass
class FedVARP(FedStale):
    """FedVARP: every missing update replaced by the client's last one, i.e. FedStale with beta = 1."""

    beta: float = field(default=1.0, init=False)
    name = "FedVARP"


# ------------------------------------------------------------------------------------- the chapter's experiment
BETAS = (0.0, 0.25, 0.5, 0.75, 1.0)  # the betas a panel offers


def beta_label(beta: float) -> str:
    """Display name of FedStale with this beta: its two ends are FedAvg and FedVARP."""
    return {0.0: "FedAvg (β=0)", 1.0: "FedVARP (β=1)"}.get(float(beta), f"FedStale (β={beta:g})")


def beta_sweep(values: Mapping[str, object], progress: bool = True) -> pd.DataFrame:
    """FedStale for each of values["betas"] and values["seeds"] seeds on the two-group federation the values describe.

    The federation comes from `flbook.widgets.federation_from`, its participation from
    `participation_from(values)` (rate and gap), and FedStale gets that model's p_k. Returns one history
    with columns beta, seed, alpha and gap added (the panel's `run`)."""
    from ..participation import participation_from
    from ..widgets import federation_from  # imported here: the widgets module imports the algorithms

    betas, seeds = tuple(values.get("betas", (0.0, 0.5, 1.0))), int(values.get("seeds", 1))
    first = int(values.get("seed", 0))
    if not betas or seeds < 1:
        raise ValueError(f"betas must be a non-empty selection and seeds >= 1, got {betas} and {seeds}")
    runs = []
    with tqdm(total=len(betas) * seeds, desc="FedStale runs", disable=not progress, leave=False) as bar:
        for seed in range(first, first + seeds):
            participation = participation_from({**values, "seed": seed})
            fed = federation_from({**values, "seed": seed, "participation": participation})
            p = tuple(participation.probabilities(fed.n_clients))
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


def plot_beta_sweep(history: pd.DataFrame) -> Figure:
    """Late test loss minus FedAvg's against beta: colour for alpha, line style for the gap, a dot per seed.

    The panel's `plot`; the seeds' dots show how much of a difference is noise."""
    import matplotlib.pyplot as plt  # plotting libraries load only when a figure is drawn
    import seaborn as sns

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


def beta_controls(betas: tuple[float, ...] = (0.0, 0.5, 1.0), seeds: int = 2) -> dict[str, W.Widget]:
    """Widgets for the betas to compare and the number of seeds (keys "betas", "seeds")."""
    import ipywidgets as W  # imported here so that the algorithm does not load the widget library

    common = {"style": {"description_width": "110px"}, "layout": W.Layout(width="auto")}
    return {"betas": W.SelectMultiple(options=BETAS, value=betas, rows=5, description="β values", **common),
            "seeds": W.IntSlider(value=seeds, min=1, max=5, description="seeds", **common)}


def panel_controls(**defaults: object) -> dict[str, W.Widget]:
    """The chapter's panel: the federation's knobs, participation rate and gap, the betas and seeds."""
    from ..participation import participation_controls
    from ..widgets import standard_controls

    rate, gap = defaults.pop("participation", 0.55), defaults.pop("participation_gap", 0.9)
    betas, seeds = defaults.pop("betas", (0.0, 0.5, 1.0)), defaults.pop("seeds", 2)
    controls = {key: widget for key, widget in standard_controls(**defaults).items() if key != "algorithms"}
    return {**controls, **participation_controls(rate, gap), **beta_controls(betas, seeds)}
