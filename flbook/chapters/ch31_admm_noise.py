"""Chapter 31: ADMM-based federated weighted least squares over noisy links, against FedAvg.

`flbook.admm` simulates R Monte Carlo runs of every client in one tensor; this module runs the chapter's
sweeps over noise levels (on both links, or on one), measures floors and convergence per noise/scheduling seed
for the protocol's verdicts, tunes each method's step on a held-out seed, and draws the MSD curves.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..admm import (DoubleReceptionADMM, DualFreeADMM, FedAvgWLS, StandardADMM, WLSMethod, WLSProblem, simulate,
                    wls_problem)
from ..plots import learning_curves
from ..protocol import SEEDS
from ..widgets import chosen, knob, selection

METHODS = ("FedAvg", "ADMM, double reception", "ADMM, single reception", "ADMM + continual updates")
VALIDATION_SEED = 100  # the noise/scheduling seed steps are tuned on; claims use protocol.SEEDS
NOISE_OPTIONS = (0.0, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3)
LINKS = ("both", "down", "up")  # which links carry the noise
DEFAULTS: dict[str, object] = {"downlink_std": 0.01, "uplink_std": 0.01, "participation": 0.3, "rho": 30.0,
                               "heterogeneity": 0.5, "n_clients": 20, "iterations": 300, "runs": 10,
                               "algorithms": METHODS, "seed": 0}


def msd_curves(methods: Mapping[str, WLSMethod], problem: WLSProblem, iterations: int,
               noise_levels: Sequence[float | tuple[float, float]], *, links: str = "both", participation: float = 1.0,
               runs: int = 10, seed: int = 0) -> pd.DataFrame:
    """MSD curves of several methods at several noise levels; one tidy row per point. A level is a std on the
    chosen links, or a pair (downlink std, uplink std); the column noise_std holds the larger of the two."""
    if links not in LINKS:
        raise ValueError(f"links must be one of {LINKS}, got {links!r}")
    frames = []
    for level in noise_levels:
        down, up = level if isinstance(level, tuple) else (level * (links != "up"), level * (links != "down"))
        for label, method in methods.items():
            curve = simulate(method, problem, iterations, participation=participation, runs=runs, seed=seed,
                             downlink_std=down, uplink_std=up)
            frames.append(pd.DataFrame({"algorithm": label, "noise_std": max(down, up), "downlink_std": down,
                                        "uplink_std": up, "participation": participation,
                                        "iteration": np.arange(iterations + 1), "msd": curve.numpy()}))
    history = pd.concat(frames, ignore_index=True)
    return history.assign(msd_db=10 * np.log10(history["msd"]))


def error_floors(history: pd.DataFrame, last: int = 100) -> pd.DataFrame:
    """Steady-state MSD in dB: the mean MSD of the `last` iterations, one row per noise level, one column per method."""
    tail = history[history["iteration"] > history["iteration"].max() - last]
    floors = tail.groupby(["noise_std", "algorithm"], sort=False)["msd"].mean().unstack("algorithm")
    return 10 * np.log10(floors)


def methods_from(values: Mapping[str, object]) -> dict[str, WLSMethod]:
    """The methods that control values select, with their rho / FedAvg settings."""
    rho = float(values.get("rho", DEFAULTS["rho"]))
    table = {"FedAvg": FedAvgWLS(float(values.get("fedavg_lr", 0.002)), int(values.get("local_steps", 5))),
             "ADMM, double reception": DoubleReceptionADMM(rho), "ADMM, single reception": StandardADMM(rho),
             "ADMM + continual updates": DualFreeADMM(rho, continual=True)}
    return {name: table[name] for name in chosen(values, METHODS)}


def floors_per_seed(method: WLSMethod, problem: WLSProblem, iterations: int, *, seeds: Sequence[int] = SEEDS,
                    last: int = 100, **links: float) -> pd.Series:
    """Steady-state MSD in dB (mean of the `last` iterations) per noise/scheduling seed; `links` go to `simulate`."""
    return pd.Series({seed: float(10 * np.log10(simulate(method, problem, iterations, seed=seed, **links)[-last:]
                                                .mean())) for seed in seeds}, name=method.name)


def iterations_to(method: WLSMethod, problem: WLSProblem, level_db: float, iterations: int, *,
                  seeds: Sequence[int] = SEEDS, **links: float) -> pd.Series:
    """Per seed, the first iteration from which the MSD stays below `level_db` (NaN if it is not below at the end)."""
    def first_staying(curve: np.ndarray) -> float:
        above = np.flatnonzero(10 * np.log10(curve) >= level_db)
        return np.nan if len(above) and above[-1] == len(curve) - 1 else float(above[-1] + 1 if len(above) else 0)
    return pd.Series({seed: first_staying(simulate(method, problem, iterations, seed=seed, **links).numpy())
                      for seed in seeds}, name=method.name)


def tune(build: Callable[[float], WLSMethod], grid: Sequence[float], problem: WLSProblem, iterations: int,
         **links: float) -> tuple[float, pd.Series]:
    """The grid value with the lowest floor on the held-out `VALIDATION_SEED`, and every value's floor (dB).

    Raises if the best value sits at an edge of the grid, so that a caller extends the grid instead."""
    scores = pd.Series({value: floors_per_seed(build(value), problem, iterations, seeds=(VALIDATION_SEED,),
                                               **links).iloc[0] for value in grid})
    best = float(scores.idxmin())
    if len(grid) > 2 and best in (min(grid), max(grid)):
        raise ValueError(f"the best value {best:g} sits at the edge of the grid {list(grid)}: extend the grid")
    return best, scores


def run(values: Mapping[str, object], progress: bool = True) -> pd.DataFrame:
    """The problem and methods the values describe, without noise and at the chosen downlink and uplink noise."""
    v = {**DEFAULTS, **values}
    problem = wls_problem(n_clients=int(v["n_clients"]), heterogeneity=float(v["heterogeneity"]), seed=int(v["seed"]))
    noisy = (float(v["downlink_std"]), float(v["uplink_std"]))
    return msd_curves(methods_from(v), problem, int(v["iterations"]), sorted({(0.0, 0.0), noisy}),
                      participation=float(v["participation"]), runs=int(v["runs"]), seed=int(v["seed"]))


def figure(history: pd.DataFrame) -> Figure:
    """MSD (dB) against iterations, one panel per (downlink, uplink) noise level, one line per method."""
    levels = list(dict.fromkeys(zip(history["downlink_std"], history["uplink_std"])))
    fig, axes = plt.subplots(1, len(levels), figsize=(3.6 * len(levels), 3.2), layout="constrained", squeeze=False)
    for ax, (down, up) in zip(axes[0], levels):
        one = history[(history["downlink_std"] == down) & (history["uplink_std"] == up)]
        learning_curves(one, y="msd_db", x="iteration", ax=ax)
        title = f"noise std {down:g}" if down == up else f"noise std down {down:g}, up {up:g}"
        ax.set(title=title, ylabel="MSD (dB)" if ax is axes[0][0] else None)
        ax.set_ylim(bottom=max(ax.get_ylim()[0], -150))  # noiseless ADMM falls to float64 precision, -300 dB
        ax.get_legend().remove()
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside lower center", ncols=4 if len(levels) > 2 else 2,
               fontsize="small")
    return fig


def controls(**overrides: object) -> dict:
    """Downlink and uplink noise, scheduling probability, rho, heterogeneity, size, methods and seed.

    The sliders stop where a run still takes seconds: 100 clients, 1000 iterations, 30 Monte Carlo runs."""
    v = {**DEFAULTS, **overrides}
    return {
        **{key: knob("SelectionSlider", v[key], f"{link} noise std", options=sorted({*NOISE_OPTIONS, v[key]}))
           for key, link in (("downlink_std", "downlink"), ("uplink_std", "uplink"))},
        "participation": knob("FloatSlider", v["participation"], "scheduling p", min=0.05, max=1.0, step=0.05),
        "rho": knob("FloatLogSlider", v["rho"], "ADMM rho", base=10, min=0, max=2.5, step=0.1),
        "heterogeneity": knob("FloatSlider", v["heterogeneity"], "heterogeneity", min=0.0, max=2.0, step=0.1),
        "n_clients": knob("IntSlider", v["n_clients"], "clients", min=2, max=100),
        "iterations": knob("IntSlider", v["iterations"], "iterations", min=50, max=1000, step=50),
        "runs": knob("IntSlider", v["runs"], "runs (average)", min=1, max=30),
        "algorithms": selection(METHODS, v["algorithms"], "methods"),
        "seed": knob("IntText", v["seed"], "seed"),
    }
