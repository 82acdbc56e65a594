"""Chapter 22: synchronous FedAvg, asynchronous FedAvg, FedBuff and FedFix on heterogeneous devices.

Twenty Dirichlet(0.3) clients on digits run on Fraboni et al.'s F-X devices (speed_spread = X/100): the
slowest job takes one time unit. The panel compares the schemes by test loss against simulated time and
shows how stale the applied updates were.
"""
from __future__ import annotations

from typing import Mapping, Sequence

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
from ..data import Dataset, load
from ..federation import Federation
from ..history import per_seed_difference, rounds_to, window_mean
from ..plots.staleness import weight_shares
from ..protocol import SEEDS, claim_row, claims_table, validation_split
from ..widgets import federation_from, knob, partition_from, standard_controls
from ..chapters import grid_search

DEFAULTS = {  # 20 Dirichlet(0.3) clients on digits, Fraboni et al.'s F-80 devices
    "dataset": "digits", "model": "logistic", "partitioner": "dirichlet", "alpha": 0.3, "n_clients": 20,
    "local_steps": 5, "batch_size": 16, "lr": 0.3, "seed": 0,
    "speed_spread": 0.8, "buffer_size": 5, "period": 0.5, "time_budget": 16.0, "match_steps": False,
    "seeds": len(SEEDS), "tune": True,
}
PANEL = {"seeds": 1, "tune": False}  # the panel's Run: one seed at the slider's lr, a figure within seconds
LR_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)  # local lrs tried for every scheme (softmax regression takes large ones)
FED_KEYS = ("local_steps", "batch_size", "lr", "seed")  # the federation's settings besides data and partition
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


def run_one(values: Mapping, name: str, dataset: Dataset | None = None, progress: bool = False) -> pd.DataFrame:
    """One scheme of `schemes_from(values)` on one seed (values["seed"]) at values["lr"]; columns seed and lr.

    `history.attrs` holds the update log ("updates", with a seed column), the client sizes ("sizes") and the
    job times ("job_time")."""
    v = {**DEFAULTS, **values}
    fed = federation_from(v) if dataset is None else Federation(dataset, partition_from(v, dataset.y_train),
                                                                 v["model"], **{k: v[k] for k in FED_KEYS})
    devices = linear(fed.n_clients, float(v["speed_spread"]), step_time=1 / fed.local_steps)
    job_time = devices.job_time(np.arange(fed.n_clients), fed.local_steps)
    runner = AsyncFederation(fed, devices)
    history = runner.run(schemes_from(v, job_time)[name], float(v["time_budget"]), eval_every=0.25,
                         progress=progress, on_divergence="stop", label=name)
    history.attrs.update(updates=runner.update_log().assign(seed=int(v["seed"])),
                         sizes=fed.client_sizes.cpu().numpy(), job_time=job_time)
    return history.assign(seed=int(v["seed"]), lr=float(v["lr"]))


def tune_lr(values: Mapping, name: str, lrs: Sequence[float] = LR_GRID) -> pd.DataFrame:
    """The protocol's tuning by hand (`grid_search`): `name`'s validation accuracy over the last fifth of the
    time budget (`protocol.default_score` measured in simulated time; -inf if diverged) at every local lr of the
    grid, on the validation split of seed 0."""
    v = {**DEFAULTS, **values, "seed": 0}
    validation = validation_split(load(v["dataset"]), seed=0)[1]
    late = float(v["time_budget"]) / 5

    def score(lr: float) -> float:
        run = run_one({**v, "lr": lr}, name, validation)
        return -np.inf if run.attrs.get("diverged_at") is not None else window_mean(
            run, "test_acc", last=late, x="sim_time").mean

    table = grid_search(score, lrs)
    return table.rename(columns={"value": "lr"}).assign(method=name)


def run(values: Mapping, progress: bool = True) -> pd.DataFrame:
    """Run `schemes_from(values)` on F-X devices (speed_spread = X/100), the slowest job taking 1 time unit, on
    values["seeds"] seeds from values["seed"]; with values["tune"] each scheme's local lr comes from `tune_lr`.

    Returns the history (evaluated every 1/4 time unit; columns seed and lr); `history.attrs` holds the tuning
    ("tuning"), every seed's update log ("updates"), the first seed's client sizes ("sizes", a dict by seed in
    "sizes_by_seed") and the job times ("job_time") for the staleness and weight plots."""
    v = {**DEFAULTS, **values}
    n, steps = int(v["n_clients"]), int(v["local_steps"])
    job_time = linear(n, float(v["speed_spread"]), step_time=1 / steps).job_time(np.arange(n), steps)
    names = list(schemes_from(v, job_time))
    tuning = pd.concat([tune_lr(v, name) for name in names], ignore_index=True) if v["tune"] else None
    chosen = tuning[tuning.chosen].set_index("method")["lr"] if v["tune"] else pd.Series(float(v["lr"]), names)
    seeds = range(int(v["seed"]), int(v["seed"]) + int(v["seeds"]))
    runs = [run_one({**v, "seed": seed, "lr": chosen[name]}, name, progress=progress) for seed in seeds
            for name in names]
    attrs = [r.attrs for r in runs]
    for r in runs:
        r.attrs = {}
    history = pd.concat(runs, ignore_index=True)
    history.attrs.update(tuning=tuning, updates=pd.concat([a["updates"] for a in attrs], ignore_index=True),
                         sizes=attrs[0]["sizes"], job_time=job_time,
                         sizes_by_seed={seed: a["sizes"] for seed, a in zip(seeds, attrs[:: len(names)])})
    return history


def tail(column: str = "test_loss", statistic: str = "mean"):
    """`statistic` of `column` over the last quarter of the time budget (a final number once curves are flat)."""
    def summary(run: pd.DataFrame) -> float:
        end = run["sim_time"].max()
        return float(run.loc[run["sim_time"] >= 0.75 * end, column].agg(statistic))
    return summary


def loss_at(time: float):
    """Test loss at simulated time `time` (an early-speed measure)."""
    return lambda run: float(run.loc[np.isclose(run["sim_time"], time), "test_loss"].iloc[0])


def time_to(run: pd.DataFrame, accuracy: float = 0.85) -> float:
    """Simulated time from which test accuracy stays >= `accuracy` (NaN: never for good)."""
    return rounds_to(run, accuracy, "test_acc", x="sim_time")


def bias(history: pd.DataFrame, name: str) -> pd.Series:
    """Per seed: the largest |share of aggregation weight / data share - 1| over clients (0 = unbiased)."""
    updates = history.attrs["updates"]
    return pd.Series({seed: float((weight_shares(log[log.algorithm == name], history.attrs["sizes_by_seed"][seed])
                                   ["ratio"] - 1).abs().max()) for seed, log in updates.groupby("seed")})


def summary(history: pd.DataFrame) -> pd.DataFrame:
    """Per scheme, the mean over seeds of: aggregations, loss at t = 1, the late (last-quarter) loss and its
    fluctuation, the time from which accuracy stays >= 85%, staleness, weight per time unit; and its lr."""
    updates, end = history.attrs["updates"], history["sim_time"].max()
    per_seed = lambda f: history.groupby(["algorithm", "seed"], sort=False).apply(f, include_groups=False)  # noqa: E731
    logs = updates.groupby(["algorithm", "seed"], sort=False)
    table = pd.DataFrame({
        "aggregations": per_seed(lambda run: run["round"].max()), "loss at t=1": per_seed(loss_at(1.0)),
        "tail loss": per_seed(tail()), "tail loss std": per_seed(tail(statistic="std")),
        "time to 85%": per_seed(time_to), "mean staleness": logs["staleness"].mean(),
        "max staleness": logs["staleness"].max(), "weight per time unit": logs["weight"].sum() / end,
        "lr": per_seed(lambda run: run["lr"].iloc[0])})
    return table.groupby("algorithm", sort=False).mean()


def claims(history: pd.DataFrame, matched: pd.DataFrame) -> pd.DataFrame:
    """The "paper vs this notebook" table: `history` with each scheme at its tuned lr and η_g = 1 (the paper's
    protocol), `matched` with each scheme's η_g scaled to FedFix's weight per time unit, its lr tuned again."""
    sync, asyn, buff, fix = pd.unique(history["algorithm"])
    m_sync, _, _, m_fix = pd.unique(matched["algorithm"])
    d = lambda method, base, f, h=history: per_seed_difference(h, method, base, f)  # noqa: E731
    return claims_table([
        claim_row("Asynchronous FedAvg is unstable (larger late fluctuations than FedFix)", "Async oscillates",
                  d(asyn, fix, tail(statistic="std")), why="std of the test loss over the last quarter"),
        claim_row("... but fast early (lower loss than synchronous FedAvg at t = 1)", "Async fastest early",
                  d(asyn, sync, loss_at(1.0)), kind="less", why="test loss at t = 1"),
        claim_row("FedFix reaches 85% test accuracy sooner than synchronous FedAvg", "FedFix improves on FL",
                  d(fix, sync, time_to), kind="less", digits=2, why="simulated time from which accuracy stays >= 0.85"),
        claim_row("FedFix ends with a lower loss than synchronous FedAvg", "FedFix improves on FL",
                  d(fix, sync, tail()), kind="less", why="mean test loss over the last quarter, each at its tuned lr"),
        claim_row("... because of its schedule, not its larger step (matched weight per time unit)",
                  "FedFix improves on FL", d(m_fix, m_sync, tail(), matched), kind="less",
                  why="sync FedAvg's η_g scaled to FedFix's weight per time unit, both lrs tuned"),
        claim_row("With matched steps, FedFix and synchronous FedAvg end within 0.015", "(this notebook's control)",
                  d(m_fix, m_sync, tail(), matched), kind="within", margin=0.015, why="mean test loss, last quarter"),
        claim_row("FedFix is more stable than asynchronous FedAvg (lower late loss)", "FedFix is stable",
                  d(fix, asyn, tail()), kind="less", why="mean test loss over the last quarter"),
        claim_row("FedFix ends below FedBuff (card pre-check)", "FedFix-0.5 lowest", d(fix, buff, tail()), kind="less",
                  why="mean test loss over the last quarter, each at its tuned lr"),
        claim_row("FedFix's weights are unbiased (weight share / data share within 10% of 1)", "E[ω_i] ∝ p_i",
                  bias(history, fix), kind="within", margin=0.1, why="largest |ratio - 1| over clients"),
        claim_row("FedBuff's identical weights are biased towards fast clients (some ratio > 2)", "FedBuff is biased",
                  bias(history, buff), margin=1.0, why="largest |ratio - 1| over clients"),
    ])


def figure(history: pd.DataFrame) -> Figure:
    """Test loss against simulated time, and the staleness of applied updates."""
    fig, (curves, hist) = plt.subplots(1, 2, figsize=(10.0, 3.5), layout="constrained")
    learning_curves(history, y="test_loss", x="sim_time", ax=curves)
    curves.set(yscale="log")
    staleness_histogram(history.attrs["updates"], ax=hist)
    return fig


def controls(**overrides: object) -> dict:
    """Data and training knobs plus speed spread, FedBuff's buffer, FedFix's dt, the time budget, the step
    matching, seeds and tuning (the panel starts at one seed without tuning, to answer in seconds)."""
    v = {**DEFAULTS, **PANEL, **overrides}
    shared = standard_controls(**{k: v[k] for k in SHARED})
    return {**{k: shared[k] for k in SHARED},
            "speed_spread": knob("FloatSlider", v["speed_spread"], "speed spread", min=0.0, max=0.95, step=0.05),
            "buffer_size": knob("IntSlider", v["buffer_size"], "FedBuff buffer", min=1, max=20),
            "period": knob("FloatSlider", v["period"], "FedFix Δt", min=0.05, max=2.0, step=0.05),
            "time_budget": knob("FloatSlider", v["time_budget"], "simulated time", min=1.0, max=60.0, step=1.0),
            "match_steps": knob("Checkbox", v["match_steps"], "match step sizes"),
            "seeds": knob("IntSlider", v["seeds"], "seeds", min=1, max=5),
            "tune": knob("Checkbox", v["tune"], "tune each scheme's lr (validation split)")}
