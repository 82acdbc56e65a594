"""Chapter 61: EDiT and A-EDiT, local SGD with a pseudo-gradient penalty for language-model training.

The task: a tiny causal LM learns a second-order Markov chain over 8 tokens (entropy rate well below the unigram
loss, so the model must use its context). M workers train stacked copies; the methods are synchronous data
parallel (gradients averaged every step), Local SGD (local AdamW, the plain average of the workers every tau
steps), DiLoCo (the same with an outer Nesterov step), EDiT (DiLoCo plus the penalty: anomaly elimination, softmax
weights, clipping) and A-EDiT (EDiT synchronised on the clock, so a slow worker does fewer steps instead of
stalling the others). Every method's inner learning rate is chosen
from the same grid on a validation split (seed 0, clean setting, half the syncs); the runs then use 3 seeds
stacked like workers, on a clean and on a corrupted setting (worker 0 with `corrupt_scale` times the learning
rate at a few syncs).
"""
from __future__ import annotations

import warnings
from typing import Iterator, Mapping

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from .. import protocol
from ..local_sgd import Method, Penalty, markov_corpus, train
from ..runtime import cpu_threads
from ..transformer import causal_lm
from ..widgets import knob

METHODS = ("data parallel", "Local SGD", "DiLoCo", "EDiT", "A-EDiT")
ROBUST = ("Local SGD", "DiLoCo", "EDiT")  # the methods run again with a corrupted worker
DEFAULTS: dict[str, object] = {"n_workers": 4, "interval": 8, "syncs": 12, "slow_speed": 0.25, "corrupt": True,
                               "corrupt_at": (6, 9), "corrupt_scale": 30.0, "clip": 1.0, "outer_lr": 0.7,
                               "momentum": 0.8, "penalty": True, "batch_size": 8, "seeds": 3, "tune": True, "lr": 1e-2,
                               "target": 0.25, "methods": METHODS}
PANEL = {"seeds": 1, "tune": False}  # the panel's quick look: one seed at a fixed learning rate
LRS = (1e-3, 3e-3, 1e-2, 3e-2)  # stacked like workers, so a wide grid costs little
VOCAB, LENGTH, CONCENTRATION = 8, 16, 0.1  # the corpus: 8 tokens, sequences of 16, peaked transitions


def corpus(seed: int = 0) -> dict[str, object]:
    """Train / validation (the last 20% of train, for tuning) / test sequences, entropy rate and unigram loss."""
    tokens, entropy = markov_corpus(640, LENGTH, VOCAB, concentration=CONCENTRATION, seed=seed)
    train_tokens, test = tokens[:512], tokens[512:]
    freq = torch.bincount(train_tokens.flatten(), minlength=VOCAB).double() / train_tokens.numel()  # (V,)
    unigram = float(-(freq * freq.clamp(min=1e-30).log()).sum())  # the best context-free loss
    return {"train": train_tokens, "fit": train_tokens[:410], "validation": train_tokens[410:], "test": test,
            "entropy": entropy, "unigram": unigram}


def model():
    """1 causal block of width 32, 2 heads, tied head, token embeddings ~ N(0, 0.02^2) (initial loss ~ log 8)."""
    return causal_lm(VOCAB, LENGTH, dim=32, depth=1, heads=2, mlp=64, embed_std=0.02)


def methods(v: Mapping[str, object]) -> dict[str, Method]:
    """The chosen methods with the panel's sync interval, outer optimizer and clip threshold; values["penalty"]
    False switches EDiT's and A-EDiT's penalty off (EDiT is then DiLoCo). Local SGD keeps outer lr 1, momentum 0
    and no penalty whatever the knobs: its outer step is the plain average of the workers' models."""
    chosen = tuple(v["methods"])
    if not chosen or set(chosen) - set(METHODS):
        raise ValueError(f"methods must be a non-empty selection of {METHODS}, got {chosen}")
    tau, outer = int(v["interval"]), {"outer_lr": float(v["outer_lr"]), "momentum": float(v["momentum"])}
    penalty = Penalty(clip=None if v["clip"] is None else float(v["clip"])) if v["penalty"] else None
    table = {"data parallel": Method("data parallel", data_parallel=True),
             "Local SGD": Method("Local SGD", interval=tau),  # theta_hat <- theta_hat - (theta_hat - mean_m theta_m)
             "DiLoCo": Method("DiLoCo", interval=tau, **outer),
             "EDiT": Method("EDiT", interval=tau, penalty=penalty, **outer),
             "A-EDiT": Method("A-EDiT", time_interval=float(tau), penalty=penalty, **outer)}
    return {name: table[name] for name in METHODS if name in chosen}


def speeds(v: Mapping[str, object]) -> torch.Tensor:
    """Steps per time unit of each worker: all 1 except the last, the straggler, at values["slow_speed"]."""
    s = torch.ones(int(v["n_workers"]), dtype=torch.float64)
    s[-1] = float(v["slow_speed"])
    return s


def _run(method: Method, v: Mapping[str, object], data: dict, held_out: str, train_on: str, *, syncs: int,
         seeds, lrs, slow: bool, corrupt: bool) -> pd.DataFrame:
    """One stacked call of `train`; data parallel runs `interval` times as many (one-step) syncs."""
    tau = int(v["interval"])
    n = syncs * tau if method.data_parallel else syncs
    corrupt_at = tuple(c * (tau if method.data_parallel else 1) for c in v["corrupt_at"]) if corrupt else ()
    with cpu_threads(1):  # many tiny products: extra intra-op threads only add synchronisation
        h = train(method, model(), data[train_on], data[held_out], n_workers=int(v["n_workers"]), syncs=n,
                  batch_size=int(v["batch_size"]), lr=lrs, seed=seeds, speeds=speeds(v) if slow else None,
                  corrupt_at=corrupt_at, corrupt_scale=float(v["corrupt_scale"]))
    h["inner_steps"] = h["sync"] * (1 if method.data_parallel else tau)  # steps of a full-speed worker
    return h


def choose_lrs(v: Mapping[str, object], data: dict) -> pd.DataFrame:
    """Each method's inner lr: the grid point with the lowest validation loss (mean of its last 3 syncs) after half
    the syncs, seed 0, no corruption, equal speeds (where A-EDiT is EDiT, so it shares EDiT's choice)."""
    chosen, rows = {}, []
    for name, method in methods(v).items():
        key = "EDiT" if name == "A-EDiT" else name
        if key not in chosen:
            tuned = methods({**v, "methods": (key,)})[key]
            h = _run(tuned, v, data, "validation", "fit", syncs=max(3, int(v["syncs"]) // 2), seeds=0, lrs=LRS,
                     slow=False, corrupt=False)
            scores = h.groupby("lr").apply(lambda r: final_loss(r, int(v["interval"])), include_groups=False)
            chosen[key] = float(scores.idxmin())
            if chosen[key] in (LRS[0], LRS[-1]):
                warnings.warn(f"{key}: the chosen lr {chosen[key]} sits at the edge of the grid {LRS}")
            rows += [{"method": key, "lr": lr, "validation loss": s, "chosen": lr == chosen[key]}
                     for lr, s in scores.items()]
    return pd.DataFrame(rows)


def final_loss(run: pd.DataFrame, interval: int) -> float:
    """Mean held-out loss over the last 3 syncs of a local-SGD run (data parallel: at the same inner steps)."""
    last = run["inner_steps"].max()
    window = run[run["inner_steps"].isin([last - k * interval for k in range(3)])]
    return float(window["loss"].mean())


def stream(values: Mapping[str, object], progress: bool = True) -> Iterator[pd.DataFrame]:
    """Every chosen method on values["seeds"] stacked seeds, with the straggler ("clean"), and Local SGD, DiLoCo and
    EDiT again with a corrupted worker 0 ("corrupted", when values["corrupt"]). Synchronous methods wait for the
    straggler; A-EDiT does not. Yields the history so far after each run, so a panel draws the first curve while
    the others train. attrs: the lr choices, the entropy rate, the unigram loss and the target loss."""
    v = {**DEFAULTS, **values}
    data = corpus()
    seeds = tuple(range(int(v["seeds"])))
    if v["tune"]:
        choices = choose_lrs(v, data)
        lr = dict(zip(choices[choices.chosen].method, choices[choices.chosen].lr))
        lr["A-EDiT"] = lr.get("EDiT")
    else:
        choices = pd.DataFrame(columns=["method", "lr", "validation loss", "chosen"])
        lr = {name: float(v["lr"]) for name in METHODS}
    todo = [(name, m, False) for name, m in methods(v).items()]
    if v["corrupt"]:
        todo += [(name, m, True) for name, m in methods(v).items() if name in ROBUST]
    target = data["unigram"] - float(v["target"]) * (data["unigram"] - data["entropy"])
    runs = []
    for name, method, corrupt in tqdm(todo, desc="EDiT runs", disable=not progress, leave=False):
        h = _run(method, v, data, "test", "train", syncs=int(v["syncs"]), seeds=seeds, lrs=lr[name], slow=True,
                 corrupt=corrupt)
        runs.append(h.assign(scenario="corrupted" if corrupt else "clean"))
        history = pd.concat(runs, ignore_index=True)
        history.attrs = {"choices": choices, "entropy": data["entropy"], "unigram": data["unigram"], "target": target,
                         "interval": int(v["interval"]), "n_workers": int(v["n_workers"])}
        yield history


def run(values: Mapping[str, object], progress: bool = True) -> pd.DataFrame:
    """The whole comparison of `stream`."""
    *_, history = stream(values, progress)
    return history


def time_to_target(run: pd.DataFrame, target: float) -> float:
    """Simulated time of the first sync whose held-out loss is at most `target` (NaN if never)."""
    hit = run[run["loss"] <= target]
    return float(hit["time"].iloc[0]) if len(hit) else float("nan")


def differences(history: pd.DataFrame, scenario: str, method: str, baseline: str, summary) -> pd.Series:
    """summary(method) - summary(baseline) per seed in one scenario."""
    h = history[history.scenario == scenario]
    per = {name: h[h.method == name].groupby("seed").apply(summary, include_groups=False)
           for name in (method, baseline)}
    return per[method] - per[baseline]


def claims(history: pd.DataFrame, margin: float = 0.05) -> pd.DataFrame:
    """The "paper vs this notebook" table (losses in nats; times in simulated time units)."""
    tau, target = history.attrs["interval"], history.attrs["target"]
    loss = lambda r: final_loss(r, tau)  # noqa: E731
    rows = []
    have = set(history.method)
    if {"EDiT", "DiLoCo"} <= have and "corrupted" in set(history.scenario):
        rows.append(protocol.claim_row("with a corrupted worker, EDiT's loss is lower than DiLoCo's",
                                       "penalty suppresses loss spikes", differences(
                                           history, "corrupted", "EDiT", "DiLoCo", loss), kind="less"))
    if {"EDiT", "Local SGD"} <= have and "corrupted" in set(history.scenario):
        rows.append(protocol.claim_row("with a corrupted worker, EDiT's loss is lower than Local SGD's",
                                       "penalty suppresses loss spikes", differences(
                                           history, "corrupted", "EDiT", "Local SGD", loss), kind="less"))
    if {"EDiT", "DiLoCo"} <= have:
        rows.append(protocol.claim_row("without corruption, EDiT is within a margin of DiLoCo", "EDiT >= DiLoCo",
                                       differences(history, "clean", "EDiT", "DiLoCo", loss), kind="within",
                                       margin=margin))
    if {"EDiT", "Local SGD"} <= have:
        rows.append(protocol.claim_row("on clean data, EDiT's loss is lower than Local SGD's",
                                       "EDiT beats other Local SGD methods", differences(
                                           history, "clean", "EDiT", "Local SGD", loss), kind="less"))
    if {"DiLoCo", "Local SGD"} <= have:
        rows.append(protocol.claim_row("on clean data, DiLoCo's outer Nesterov step beats the plain average",
                                       "(DiLoCo's premise)", differences(
                                           history, "clean", "DiLoCo", "Local SGD", loss), kind="less",
                                       why="Local SGD is DiLoCo at outer lr 1, momentum 0"))
    if {"DiLoCo", "data parallel"} <= have:
        rows.append(protocol.claim_row(f"DiLoCo with {tau}x fewer syncs is within a margin of data parallel",
                                       "Local SGD ~ synchronous", differences(
                                           history, "clean", "DiLoCo", "data parallel", loss), kind="within",
                                       margin=margin))
    if {"A-EDiT", "EDiT"} <= have:
        rows.append(protocol.claim_row(f"with a straggler, A-EDiT reaches loss {target:.2f} in less time than EDiT",
                                       "A-EDiT handles stragglers", differences(
                                           history, "clean", "A-EDiT", "EDiT",
                                           lambda r: time_to_target(r, target)), kind="less", digits=1,
                                       why="a speed claim: simulated time to the target loss"))
    return protocol.claims_table(rows)


def figure(history: pd.DataFrame) -> Figure:
    """Held-out loss against simulated time (with the straggler), against inner steps with a corrupted worker,
    and the weight EDiT gives the corrupted worker at each sync; means over seeds."""
    fig, axes = plt.subplots(1, 3, figsize=(13.0, 3.6), layout="constrained")
    clean = history[history.scenario == "clean"].groupby(["method", "time"], as_index=False)["loss"].mean()
    sns.lineplot(data=clean, x="time", y="loss", hue="method", ax=axes[0])
    axes[0].axhline(history.attrs["target"], color="grey", ls=":", lw=1, label="target")
    axes[0].axhline(history.attrs["unigram"], color="grey", ls="--", lw=1, label="unigram loss")
    axes[0].legend(fontsize="small")
    axes[0].set(xscale="log", xlabel="simulated time (a full-speed step = 1)", ylabel="held-out loss (nats)",
                title="clean, one slow worker")
    bad = history[history.scenario == "corrupted"]
    if len(bad):
        mean = bad.groupby(["method", "inner_steps"], as_index=False)[["loss", "weight_0"]].mean()
        sns.lineplot(data=mean, x="inner_steps", y="loss", hue="method", marker="o", ax=axes[1])
        for s in bad[bad.corrupted].inner_steps.unique():
            axes[1].axvline(s, color="red", alpha=0.3, lw=4)
        edit = mean[mean.method == "EDiT"]
        axes[2].plot(edit.inner_steps, edit.weight_0, marker="o", label="EDiT: worker 0")
        axes[2].axhline(1 / history.attrs["n_workers"], color="grey", ls=":", label="uniform 1/M")
        axes[2].legend(fontsize="small")
    axes[1].set(xlabel="inner steps", ylabel="held-out loss (nats)", title="worker 0 corrupted at the red syncs")
    axes[2].set(xlabel="inner steps", ylabel="weight of worker 0", title="EDiT's weight on the corrupted worker",
                ylim=(-0.02, 1.0))
    return fig


def controls(**overrides: object) -> dict:
    """Workers, sync interval, corruption, straggler speed, methods, learning rate and seeds."""
    v = {**DEFAULTS, **PANEL, **overrides}
    return {"methods": knob("SelectMultiple", tuple(v["methods"]), "methods", options=METHODS, rows=5),
            "n_workers": knob("IntSlider", v["n_workers"], "workers", min=2, max=8),
            "interval": knob("IntSlider", v["interval"], "sync interval τ", min=1, max=16),
            "syncs": knob("IntSlider", v["syncs"], "syncs", min=3, max=30),
            "corrupt": knob("Checkbox", v["corrupt"], "corrupt worker 0"),
            "penalty": knob("Checkbox", v["penalty"], "EDiT's penalty"),
            "corrupt_scale": knob("FloatLogSlider", v["corrupt_scale"], "corruption lr ×", min=0, max=2, step=0.25),
            "slow_speed": knob("FloatSlider", v["slow_speed"], "straggler speed", min=0.1, max=1.0, step=0.05),
            "lr": knob("FloatLogSlider", v["lr"], "lr (no tuning)", min=-3, max=-1, step=0.25),
            "tune": knob("Checkbox", v["tune"], "tune lr on validation"),
            "seeds": knob("IntSlider", v["seeds"], "seeds", min=1, max=5)}
