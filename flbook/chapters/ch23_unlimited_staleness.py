"""Chapter 23: updates delayed by many rounds, and gradient inversion that converts them into fresh ones.

One class per client on digits (or MNIST-1D); the clients holding `delayed_class` are `delay` rounds late.
Every client takes part in every round (one round per time unit). The oracle runs without the delay.
The experiment follows the protocol by hand (the runs are asynchronous, so `protocol.compare` does not fit):
every method picks its clients' learning rate from the same grid on a validation split, then runs on 3 seeds.
"""
from __future__ import annotations

from typing import Iterator, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from ..algorithms import GradientInversion, StaleFedAvg
from ..algorithms.base import Algorithm
from ..asynchronous import AsyncFederation, class_accuracy
from ..data import Dataset, load
from ..devices import class_share, draw
from ..federation import Federation
from ..history import is_flat, per_seed_difference, rounds_to, window_mean
from ..models import logistic, mlp
from ..participation import Uniform
from ..partition import pathological
from ..protocol import LRS, SEEDS, claim_row, claims_table, default_score, validation_split
from ..widgets import knob, standard_controls
from ..chapters import grid_search

DEFAULTS = {  # one class per client, the clients of one class delayed by tau rounds
    "dataset": "digits", "hidden": 32, "n_clients": 10, "local_steps": 5, "lr": 0.5, "seed": 0,
    "delay": 15, "delayed_class": 3, "rounds": 80, "gi_iterations": 20, "n_rec": 16,
    "seeds": len(SEEDS), "tune": True, "tune_rounds": 40,
}
PANEL = {"seeds": 1, "tune": False}  # the panel's Run: one seed at the slider's lr, a figure within seconds
SHARED = ("n_clients", "local_steps", "lr", "rounds", "seed")  # knobs from `standard_controls`
ORACLE = "no delay (oracle)"
LR_GRID = tuple(5 * lr for lr in LRS)  # (0.15, 0.5, 1.5): full-batch GD on 8x8 digits takes larger steps
TARGET = 0.5  # slow-class accuracy whose first lasting reach measures speed
TAIL = 20  # rounds of the final window (the curves oscillate: a snapshot would flatter or punish by chance)


def staleness_federation(values: Mapping, dataset: Dataset | None = None) -> tuple[Federation, np.ndarray]:
    """The task: one class per client, a small MLP (hidden=0: softmax regression), local full-batch GD.

    Also returns the ids of the slow clients: those holding `delayed_class`. `dataset` replaces the loaded one
    (a validation split, say)."""
    v = {**DEFAULTS, **values}
    if v["dataset"] not in ("digits", "mnist1d"):
        raise ValueError(f"dataset must be 'digits' or 'mnist1d' for this chapter, got {v['dataset']!r}")
    data = load(v["dataset"]) if dataset is None else dataset
    parts = pathological(data.y_train, int(v["n_clients"]), 1, seed=int(v["seed"]))
    features, hidden = int(np.prod(data.input_shape)), int(v["hidden"])
    model = mlp(features, data.n_classes, hidden=(hidden,)) if hidden else logistic(features, data.n_classes)
    fed = Federation(data, parts, model, local_steps=int(v["local_steps"]), batch_size=max(len(p) for p in parts),
                     lr=float(v["lr"]), seed=int(v["seed"]))
    slow = np.flatnonzero(class_share(parts, data.y_train, int(v["delayed_class"])) > 0)
    return fed, slow


def staleness_methods(values: Mapping, bounds: tuple[float, float] | None = None) -> dict[str, Algorithm]:
    """The contenders: the stale-update baselines and gradient-inversion conversion (dropping stale updates,
    `StaleFedAvg(policy="drop")`, never learns the slow class at all: it has no other data, so it is left out)."""
    v = {**DEFAULTS, **values}
    return {"direct": StaleFedAvg(), "weighted 2^(-τ/20)": StaleFedAvg(policy="weighted"),
            "DC-ASGD": StaleFedAvg(policy="dc-asgd"),
            "GI conversion": GradientInversion(iterations=int(v["gi_iterations"]), n_rec=int(v["n_rec"]),
                                               bounds=bounds, seed=int(v["seed"]))}


def run_one(values: Mapping, name: str, dataset: Dataset | None = None, progress: bool = False) -> pd.DataFrame:
    """One method (or the oracle) on one seed at values["lr"] for values["rounds"] rounds; columns seed and lr."""
    v = {**DEFAULTS, **values}
    fed, slow = staleness_federation(v, dataset)
    on_time = draw(fed.n_clients, "constant", step_time=0.5 / fed.local_steps)  # a job takes half a round
    devices = on_time if name == ORACLE else on_time.slowed(slow, extra_latency=float(v["delay"]))
    bounds = (float(fed.x_train.min()), float(fed.x_train.max()))  # the input box the server knows
    algorithm = StaleFedAvg() if name == ORACLE else v.get("methods", staleness_methods)(v, bounds)[name]
    runner = AsyncFederation(fed, devices, Uniform(1.0), class_accuracy(fed, int(v["delayed_class"])))
    history = runner.run(algorithm, float(v["rounds"]), eval_every=1.0, progress=progress, on_divergence="stop",
                         label=name)
    history.attrs.update(updates=runner.update_log(), slow=slow, server_states=runner.server_states)
    return history.assign(seed=int(v["seed"]), lr=float(v["lr"]))


def tune_lr(values: Mapping, name: str, lrs: Sequence[float] = LR_GRID) -> pd.DataFrame:
    """The protocol's tuning by hand (`grid_search`): `name`'s score (`protocol.default_score`, validation accuracy
    over the last fifth of `tune_rounds`) at every lr of the grid, on the validation split of seed 0."""
    v = {**DEFAULTS, **values, "seed": 0, "rounds": int({**DEFAULTS, **values}["tune_rounds"])}
    validation = validation_split(load(v["dataset"]), seed=0)[1]
    table = grid_search(lambda lr: default_score(run_one({**v, "lr": lr}, name, validation)), lrs)
    return table.rename(columns={"value": "lr"}).assign(method=name)


def stream(values: Mapping, progress: bool = True) -> Iterator[pd.DataFrame]:
    """The oracle (no delay) and `staleness_methods(values)`, the slow class's clients `delay` rounds late,
    on values["seeds"] seeds from values["seed"]; with values["tune"] each method's lr comes from `tune_lr`.
    Yields the history so far after each run, so a panel draws the oracle's curve while the others train.

    Columns add `class_acc` (test accuracy on the slow class), seed and lr; `history.attrs` holds the tuning
    ("tuning"), the first seed's update log ("updates"), its slow clients ("slow") and final server states
    ("server_states", e.g. how many updates GI converted)."""
    v = {**DEFAULTS, **values}
    names = [ORACLE, *v.get("methods", staleness_methods)(v)]
    tuning = pd.concat([tune_lr(v, name) for name in names], ignore_index=True) if v["tune"] else None
    chosen = tuning[tuning.chosen].set_index("method")["lr"] if v["tune"] else pd.Series(float(v["lr"]), names)
    seeds = range(int(v["seed"]), int(v["seed"]) + int(v["seeds"]))
    runs, first = [], []  # the histories so far; the first seed's logs and states
    for seed in seeds:
        for name in names:
            runs.append(run_one({**v, "seed": seed, "lr": chosen[name]}, name, progress=progress))
            first += [runs[-1].attrs] if seed == seeds[0] else []
            runs[-1].attrs = {}
            history = pd.concat(runs, ignore_index=True)
            history.attrs.update(slow=first[0]["slow"], tuning=tuning,
                                 updates=pd.concat([a["updates"] for a in first], ignore_index=True),
                                 server_states={k: s for a in first for k, s in a["server_states"].items()})
            yield history


def run(values: Mapping, progress: bool = True) -> pd.DataFrame:
    """The whole comparison of `stream`: every method on every seed."""
    *_, history = stream(values, progress)
    return history


def reach(run: pd.DataFrame) -> float:
    """First round from which the slow class's accuracy stays >= TARGET; a run that never gets there for good
    counts as one round past its end (a censored value: it understates that method's true time, so a claim
    that another method is faster is judged conservatively)."""
    rounds = rounds_to(run, TARGET, "class_acc")
    return float(run["round"].max()) + 1 if np.isnan(rounds) and run.attrs.get("diverged_at") is None else rounds


def tail(column: str):
    """Mean of `column` over the last TAIL rounds: a final number once the curves have flattened."""
    return lambda run: window_mean(run, column, last=TAIL).mean


def summary(history: pd.DataFrame) -> pd.DataFrame:
    """Per method (mean over seeds): rounds to a lasting slow-class accuracy >= TARGET, the tail means, how many
    seeds' slow-class curves are flat (last two windows of TAIL rounds within 0.03) and the tuned lr."""
    per_seed = lambda h, f: h.groupby("seed").apply(f, include_groups=False)  # noqa: E731
    flat = lambda run: is_flat(run, "class_acc", last=TAIL, tolerance=0.03)  # noqa: E731
    return history.groupby("algorithm", sort=False).apply(lambda h: pd.Series({
        f"rounds to slow-class acc. >= {TARGET} (lasting)": per_seed(h, reach).mean(),
        f"slow-class acc., last {TAIL} rounds": per_seed(h, tail("class_acc")).mean(),
        f"test acc., last {TAIL} rounds": per_seed(h, tail("test_acc")).mean(),
        "seeds with a flat slow-class curve": int(per_seed(h, flat).sum()), "lr": h["lr"].iloc[0]}),
        include_groups=False)


def claims(history: pd.DataFrame) -> pd.DataFrame:
    """The "paper vs this notebook" table, verdicts from per-seed differences."""
    gi, direct, weighted, dc = "GI conversion", "direct", "weighted 2^(-τ/20)", "DC-ASGD"
    d = lambda method, base, f: per_seed_difference(history, method, base, f)  # noqa: E731
    end = f"last {TAIL} of {int(history['round'].max())} rounds"
    slow, overall = tail("class_acc"), tail("test_acc")
    return claims_table([
        claim_row("Speed: GI conversion learns the slow class sooner than direct stale aggregation",
                  "up to 35% fewer epochs", d(gi, direct, reach), kind="less", digits=1,
                  why=f"rounds until the slow class's accuracy stays >= {TARGET} (never: one past the end)"),
        claim_row("Speed: GI conversion learns the slow class sooner than DC-ASGD", "DC-ASGD fails at large τ",
                  d(gi, dc, reach), kind="less", digits=1, why="rounds to the same lasting target"),
        claim_row("Final: GI conversion ends with a higher slow-class accuracy than direct aggregation",
                  "up to 20-25% higher accuracy", d(gi, direct, slow), margin=0.02,
                  why=f"{end}; direct's slow class oscillates"),
        claim_row("Final: GI conversion ends with a higher slow-class accuracy than DC-ASGD", "DC-ASGD fails",
                  d(gi, dc, slow), margin=0.02, why=end),
        claim_row("Final: GI conversion ends with a higher overall accuracy than direct aggregation",
                  "up to 20-25% higher accuracy", d(gi, direct, overall), margin=0.005, why=end),
        claim_row("Final: down-weighting stale updates starves the slow class (weighted ends below direct)",
                  "weighted is worst", d(weighted, direct, slow), kind="less", margin=0.02, why=end),
    ])


def figure(history: pd.DataFrame) -> Figure:
    """Accuracy on the slow class and overall, against rounds: mean over seeds, band from worst to best seed."""
    fig, (slow, overall) = plt.subplots(1, 2, figsize=(10.0, 3.5), layout="constrained")
    for ax, y, label in ((slow, "class_acc", "test accuracy on the slow class"),
                         (overall, "test_acc", "test accuracy, all classes")):
        sns.lineplot(data=history, x="round", y=y, hue="algorithm", errorbar=("pi", 100), ax=ax)
        ax.set(ylabel=label, title=label, ylim=(-0.02, 1.02))
    slow.legend(fontsize="small", title=None)
    overall.get_legend().remove()
    return fig


def controls(**overrides: object) -> dict:
    """Dataset, clients, local steps, lr, rounds, seed plus width, delay, slow class, the GI budget, seeds and
    whether each method tunes its lr (the panel starts at one seed without tuning, to answer in seconds)."""
    v = {**DEFAULTS, **PANEL, **overrides}
    shared = standard_controls(**{k: v[k] for k in SHARED})
    dataset = knob("Dropdown", v["dataset"], "dataset", options=("digits", "mnist1d"))
    return {"dataset": dataset, **{k: shared[k] for k in SHARED},
            "hidden": knob("IntSlider", v["hidden"], "hidden units", min=0, max=128, step=8),
            "delay": knob("IntSlider", v["delay"], "staleness τ", min=0, max=40),
            "delayed_class": knob("IntSlider", v["delayed_class"], "slow class", min=0, max=9),
            "gi_iterations": knob("IntSlider", v["gi_iterations"], "GI iterations", min=1, max=200),
            "n_rec": knob("IntSlider", v["n_rec"], "GI samples", min=1, max=64),
            "seeds": knob("IntSlider", v["seeds"], "seeds", min=1, max=5),
            "tune": knob("Checkbox", v["tune"], "tune each method's lr (validation split)")}
