"""Chapter 22: synchronous FedAvg, asynchronous FedAvg, FedBuff and FedFix on heterogeneous devices.

Twenty Dirichlet(0.3) clients on digits run on Fraboni et al.'s F-X devices (speed_spread = X/100): the
slowest job takes one time unit. The panel compares the schemes by test loss against simulated time and
shows how stale the applied updates were.
"""
from __future__ import annotations

from typing import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..algorithms import AsyncFedAvg, FedAvg, FedBuff, FedFix
from ..algorithms.base import Algorithm
from ..asynchronous import AsyncFederation
from ..devices import linear
from ..plots.curves import learning_curves
from ..plots.staleness import staleness_histogram
from ..widgets import federation_from, knob, standard_controls

DEFAULTS = {  # 20 Dirichlet(0.3) clients on digits, Fraboni et al.'s F-80 devices
    "dataset": "digits", "model": "logistic", "partitioner": "dirichlet", "alpha": 0.3, "n_clients": 20,
    "local_steps": 5, "batch_size": 16, "lr": 0.3, "seed": 0,
    "speed_spread": 0.8, "buffer_size": 5, "period": 0.5, "time_budget": 16.0, "match_steps": False,
}
SHARED = ("dataset", "model", "alpha", "n_clients", "local_steps", "lr", "seed")  # knobs from `standard_controls`


def weight_per_time(job_time: np.ndarray, buffer_size: int, period: float) -> dict[str, float]:
    """Total aggregation weight each scheme applies per unit of simulated time (the default weights, eta_g = 1).

    Synchronous FedAvg: 1 per round, a round lasting the slowest job. Asynchronous FedAvg: client i arrives
    1/tau_i times per unit with weight (sum_j 1/tau_j) tau_i p_i, so sum_j 1/tau_j. FedBuff-c: sum_j 1/tau_j
    updates per unit at 1/c each. FedFix-dt: every client's p_i once per dt, so 1/dt."""
    arrivals = float((1 / job_time).sum())
    return {"sync": 1 / float(job_time.max()), "async": arrivals, "fedbuff": arrivals / buffer_size, "fedfix": 1 / period}


def schemes_from(values: Mapping, job_time: np.ndarray | None = None) -> dict[str, Algorithm]:
    """The contenders: synchronous FedAvg, asynchronous FedAvg, FedBuff-c and FedFix-dt.

    With values["match_steps"] (and the clients' job times), every scheme's server step size is scaled so that
    it applies FedFix's weight per time unit: what is left of a difference is the schedule, not the step."""
    v = {**DEFAULTS, **values}
    c, dt = int(v["buffer_size"]), float(v["period"])
    step = dict.fromkeys(("sync", "async", "fedbuff", "fedfix"), 1.0)
    if v["match_steps"]:
        if job_time is None:
            raise ValueError("match_steps needs the clients' job times (job_time)")
        rate = weight_per_time(np.asarray(job_time, dtype=float), c, dt)
        step = {name: rate["fedfix"] / r for name, r in rate.items()}
    label = (lambda name, s: f"{name} (η_g={s:.2g})") if v["match_steps"] else (lambda name, s: name)
    return {label("FedAvg (sync)", step["sync"]): FedAvg(server_lr=step["sync"]),
            label("Async FedAvg", step["async"]): AsyncFedAvg(server_lr=step["async"]),
            label(f"FedBuff-{c}", step["fedbuff"]): FedBuff(buffer_size=c, server_lr=step["fedbuff"]),
            label(f"FedFix-{dt:g}", step["fedfix"]): FedFix(period=dt, server_lr=step["fedfix"])}


def run(values: Mapping, progress: bool = True) -> pd.DataFrame:
    """Run `schemes_from(values)` on F-X devices (speed_spread = X/100), the slowest job taking 1 time unit.

    Returns the history (evaluated every 1/4 time unit); `history.attrs` holds the update log ("updates"),
    the client sizes ("sizes") and job times ("job_time") for the staleness and weight plots."""
    v = {**DEFAULTS, **values}
    fed = federation_from(v)
    devices = linear(fed.n_clients, float(v["speed_spread"]), step_time=1 / fed.local_steps)
    job_time = devices.job_time(np.arange(fed.n_clients), fed.local_steps)
    runner = AsyncFederation(fed, devices)
    history = runner.compare(schemes_from(v, job_time), float(v["time_budget"]), eval_every=0.25, progress=progress,
                             on_divergence="stop")
    history.attrs.update(updates=runner.update_log(), sizes=fed.client_sizes.cpu().numpy(), job_time=job_time)
    return history


def figure(history: pd.DataFrame) -> Figure:
    """Test loss against simulated time, and the staleness of applied updates."""
    fig, (curves, hist) = plt.subplots(1, 2, figsize=(10.0, 3.5), layout="constrained")
    learning_curves(history, y="test_loss", x="sim_time", ax=curves)
    curves.set(yscale="log")
    staleness_histogram(history.attrs["updates"], ax=hist)
    return fig


def controls(**overrides: object) -> dict:
    """Data and training knobs plus speed spread, FedBuff's buffer, FedFix's dt and the time budget."""
    v = {**DEFAULTS, **overrides}
    shared = standard_controls(**{k: v[k] for k in SHARED})
    return {**{k: shared[k] for k in SHARED},
            "speed_spread": knob("FloatSlider", v["speed_spread"], "speed spread", min=0.0, max=0.95, step=0.05),
            "buffer_size": knob("IntSlider", v["buffer_size"], "FedBuff buffer", min=1, max=20),
            "period": knob("FloatSlider", v["period"], "FedFix Δt", min=0.05, max=2.0, step=0.05),
            "time_budget": knob("FloatSlider", v["time_budget"], "simulated time", min=1.0, max=60.0, step=1.0),
            "match_steps": knob("Checkbox", v["match_steps"], "match step sizes")}
