"""Chapter 60: SFPrompt, split federated prompt tuning of a pre-trained ViT, against full and partial fine-tuning.

The task: the tiny ViT pre-trained here on digits 0-4 (`flbook.pretrained`) is fine-tuned federatedly on digits
5-9 over Dirichlet-split clients. Federated full fine-tuning and linear probing run the whole model on the client
(no prompts); SplitFed (SFL) and SFPrompt cut it into client head, server body and client tail and learn soft
prompts and the tail. Every method's local learning rate is tuned alike on a validation split (`protocol.compare`);
the costs (trainable parameters, client FLOPs and bytes per round, smashed data included) are counted exactly.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch.func import grad, vjp
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from .. import protocol
from ..algorithms import FedAvg, PartialFedAvg, SFPrompt
from ..algorithms.sfprompt import n_kept
from ..data import Dataset
from ..federation import Federation
from ..history import per_seed_difference, window_mean
from ..partition import dirichlet
from ..pretrained import PretrainedViT, downstream_digits
from ..split import SplitModel, Trainable
from ..widgets import knob

METHODS = ("FL full fine-tuning", "FL linear probe", "SFL", "SFPrompt")
DEFAULTS: dict[str, object] = {"n_clients": 10, "alpha": 0.5, "rounds": 8, "local_steps": 2, "batch_size": 32,
                               "prompts": 8, "head_blocks": 1, "keep": 0.5, "local_loss": True, "seeds": 3,
                               "tune": True, "lr": 0.1, "algorithms": METHODS}
PANEL = {"seeds": 1, "tune": False}  # the panel's quick look: one seed at a fixed learning rate
LRS = (0.03, 0.1, 0.3)


@dataclass(frozen=True)
class Task:
    """One model variant (with or without prompts), its cut and the federation maker the protocol calls."""

    model: PretrainedViT
    split: SplitModel
    make_federation: Callable[[Dataset, int, float], Federation]

    def trainable(self, parts: tuple[str, ...]) -> Trainable:
        return Trainable(self.split, parts, self.model.init(0))


def task(v: Mapping[str, object], prompts: int) -> Task:
    """The pre-trained ViT with `prompts` soft prompts, cut after values["head_blocks"] blocks (tail: norm + head)."""
    model = PretrainedViT(5, prompts=prompts)
    split = SplitModel(model, int(v["head_blocks"]), 0)

    def make(dataset: Dataset, seed: int, lr: float) -> Federation:
        parts = dirichlet(dataset.y_train.cpu().numpy(), int(v["n_clients"]), float(v["alpha"]), seed=seed)
        return Federation(dataset, parts, model, local_steps=int(v["local_steps"]), batch_size=int(v["batch_size"]),
                          lr=lr, seed=seed, device="cpu")
    return Task(model, split, make)


def lineup(v: Mapping[str, object]) -> dict[str, tuple[Task, Callable[[], object]]]:
    """Each method with its task: the baselines on the plain ViT, the split methods with prompts."""
    plain, prompted = task(v, 0), task(v, int(v["prompts"]))
    keep, local_loss = float(v["keep"]), bool(v["local_loss"])
    tail, prompts_tail = plain.trainable(("tail",)), prompted.trainable(("prompts", "tail"))
    table = {"FL full fine-tuning": (plain, lambda: FedAvg()),
             "FL linear probe": (plain, lambda: PartialFedAvg(trainable=tail)),
             "SFL": (prompted, lambda: SFPrompt(trainable=prompts_tail, keep=1.0, local_loss=False)),
             "SFPrompt": (prompted, lambda: SFPrompt(trainable=prompts_tail, keep=keep, local_loss=local_loss))}
    chosen = tuple(v["algorithms"])
    if not chosen or set(chosen) - set(METHODS):
        raise ValueError(f"algorithms must be a non-empty selection of {METHODS}, got {chosen}")
    return {name: table[name] for name in METHODS if name in chosen}


class _FlopCount(TorchDispatchMode):
    """Counts the FLOPs of every matrix product run under it (`torch.utils.flop_counter`'s formulas); unlike
    `FlopCounterMode` it tracks no modules, so it also counts inside nested `torch.func` transforms."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func._overloadpacket in flop_registry:
            self.total += flop_registry[func._overloadpacket](*args, **(kwargs or {}), out=out)
        return out


def _flops(fn: Callable[[], object]) -> int:
    with _FlopCount() as counter:
        fn()
    return counter.total


def costs(v: Mapping[str, object]) -> pd.DataFrame:
    """Per method: trainable parameters, one client's FLOPs per round, and bytes per round (all clients, both ways).

    FLOPs are counted by `FlopCounterMode` on the client's own computations (the server's body excluded); bytes are
    the parameters exchanged plus, for the split methods, the smashed activations and gradients (`message_bytes`)."""
    x, y = downstream_digits().x_train[:8], downstream_digits().y_train[:8]
    n = int(v["local_steps"]) * int(v["batch_size"])  # samples a client walks through per round
    m = int(v["n_clients"])
    rows = {}
    for name, (t, factory) in lineup(v).items():
        algo, theta = factory(), t.model.init(0)
        if isinstance(algo, FedAvg):
            per_sample = _flops(lambda: grad(lambda th: F.cross_entropy(t.model(th, x), y))(theta)) / len(y)
            trainable, smashed = t.model.n_params, 0
            client = n * per_sample
        else:
            tr = algo.trainable
            w = theta[tr.index]
            trainable = len(tr.index)
            if isinstance(algo, PartialFedAvg):
                client, smashed = n * _flops(lambda: grad(lambda u: F.cross_entropy(tr.full(u, x), y))(w)) / len(y), 0
            else:
                h = t.split.head(tr.frozen, x)  # (B, T, D)

                def head_pass() -> None:  # forward, and backward into prompts/head weights when they learn
                    out, back = vjp(lambda u: t.split.head(tr.params(u), x), w)
                    back(torch.ones_like(out))

                def tail_pass() -> None:  # forward and backward of the tail, down to dL/dz
                    grad(lambda u, a: F.cross_entropy(t.split.tail(tr.params(u), a), y), argnums=(0, 1))(w, h)
                step = (_flops(head_pass) if tr.head_trainable else _flops(lambda: t.split.head(tr.frozen, x)))
                step += _flops(tail_pass)
                kept = n_kept(n, algo.keep)
                client = kept * step / len(y)
                if algo.local_loss:  # phase A's SGD and phase B's EL2N forward pass, on every sample
                    client += n * _flops(lambda: grad(lambda u: F.cross_entropy(tr.local(u, x), y))(w)) / len(y)
                if algo.keep < 1:
                    client += n * _flops(lambda: tr.local(w, x)) / len(y)
                smashed = m * sum(tr.message_bytes(kept).values())
        params = 2 * m * trainable * 4  # float32 down and up for every client
        rows[name] = {"trainable parameters": trainable, "client GFLOPs per round": client / 1e9,
                      "parameter MB per round": params / 1e6, "smashed MB per round": smashed / 1e6,
                      "MB per round": (params + smashed) / 1e6}
    table = pd.DataFrame(rows).T
    if "FL full fine-tuning" in table.index:
        full = table.loc["FL full fine-tuning"]
        table["compute vs full FT"] = table["client GFLOPs per round"] / full["client GFLOPs per round"]
        table["trainable vs full FT"] = table["trainable parameters"] / full["trainable parameters"]
        table["bytes vs full FT"] = table["MB per round"] / full["MB per round"]
    return table


def stream(values: Mapping[str, object], progress: bool = True) -> Iterator[pd.DataFrame]:
    """Every chosen method, tuned alike on a validation split (or at values["lr"]), on values["seeds"] seeds; yields
    the history so far after the methods of each task (split point and prompt length), so a panel draws early.

    The history gains `MB` (cumulative bytes both ways, smashed data included); attrs hold the costs table and
    the step sizes chosen."""
    v = {**DEFAULTS, **values}
    seeds = tuple(range(int(v["seeds"])))
    rounds = int(v["rounds"])
    table = costs(v)
    histories, choices = [], []
    groups: dict[int, dict[str, Callable[[], object]]] = {}
    tasks = {}
    for name, (t, factory) in lineup(v).items():
        groups.setdefault(id(t), {})[name] = factory
        tasks[id(t)] = t
    for key, methods in groups.items():
        lrs = LRS if v["tune"] else (float(v["lr"]),)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # fewer than 3 seeds in the panel's quick look
            result = protocol.compare(downstream_digits(), tasks[key].make_federation, methods, rounds=rounds,
                                      seeds=seeds, lrs=lrs, server_lrs=None, controls=False, max_extensions=1,
                                      tune_rounds=max(2, rounds // 2), eval_every=2)
        histories.append(result.history)
        choices.append(result.choices())
        history = pd.concat(histories, ignore_index=True)
        smashed = history.algorithm.map(table["smashed MB per round"]) * history["round"]  # (rows,)
        history["MB"] = (history.bytes_up + history.bytes_down) / 1e6 + smashed
        history.attrs = {"costs": table, "choices": pd.concat(choices)}
        yield history


def run(values: Mapping[str, object], progress: bool = True) -> pd.DataFrame:
    """The whole comparison of `stream`: every chosen method on every seed."""
    *_, history = stream(values, progress)
    return history


def final_accuracy(history: pd.DataFrame) -> float:
    """Mean test accuracy over the last three rounds (evaluations every second round: rounds R-2 and R)."""
    return window_mean(history, "test_acc", last=3).mean


def claims(history: pd.DataFrame) -> pd.DataFrame:
    """The "paper vs this notebook" table: accuracy against full FT, linear probe and SFL; compute and bytes."""
    def diff(method: str, baseline: str) -> pd.Series:
        return per_seed_difference(history, method, baseline, final_accuracy)
    table = history.attrs["costs"]
    seeds = sorted(history.seed.unique())
    compute = table.loc["SFPrompt", "compute vs full FT"]
    saving = 1 - table.loc["SFPrompt", "bytes vs full FT"]
    rows = [
        protocol.claim_row("SFPrompt's accuracy is competitive with federated full fine-tuning", "competitive",
                           diff("SFPrompt", "FL full fine-tuning"), kind="within", margin=0.05),
        protocol.claim_row("SFPrompt beats federated linear probing", "higher (UNCONFIRMED numbers)",
                           diff("SFPrompt", "FL linear probe")),
        protocol.claim_row("local loss and pruning keep SFL's accuracy", "competitive", diff("SFPrompt", "SFL"),
                           kind="within", margin=0.03),
        protocol.claim_row("client compute at most 0.46% of full fine-tuning's", "0.46%",
                           pd.Series([compute - 0.0046] * len(seeds), index=seeds), kind="less", digits=4,
                           why=f"counted: {compute:.1%} (deterministic)"),
        protocol.claim_row("at least 53% less communication than full fine-tuning", "-53%",
                           pd.Series([saving - 0.53] * len(seeds), index=seeds),
                           why=f"counted: {1 - saving:.2f}x full fine-tuning's bytes per round (deterministic)"),
    ]
    return protocol.claims_table(rows)


def figure(history: pd.DataFrame) -> Figure:
    """Test accuracy against rounds and against cumulative megabytes (smashed data included), mean over seeds."""
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 3.6), layout="constrained")
    mean = history.groupby(["algorithm", "round"], as_index=False)[["test_acc", "MB"]].mean()
    sns.lineplot(data=mean, x="round", y="test_acc", hue="algorithm", marker="o", ax=axes[0])
    sns.lineplot(data=mean, x="MB", y="test_acc", hue="algorithm", marker="o", ax=axes[1], legend=False)
    axes[0].set(ylabel="test accuracy (digits 5-9)", title="accuracy per round")
    axes[1].set(xscale="log", xlabel="MB exchanged (both ways, smashed data included)", ylabel="",
                title="accuracy per byte")
    axes[0].legend(fontsize="small", title=None)
    return fig


def controls(**overrides: object) -> dict:
    """Split point, prompt length, keep ratio, local loss on or off, heterogeneity, rounds and seeds."""
    v = {**DEFAULTS, **PANEL, **overrides}
    return {"algorithms": knob("SelectMultiple", tuple(v["algorithms"]), "methods", options=METHODS, rows=4),
            "head_blocks": knob("IntSlider", v["head_blocks"], "blocks in head", min=0, max=3),
            "prompts": knob("IntSlider", v["prompts"], "prompt length", min=0, max=16),
            "keep": knob("FloatSlider", v["keep"], "keep ratio γ", min=0.1, max=1.0, step=0.1),
            "local_loss": knob("Checkbox", v["local_loss"], "local-loss phase"),
            "alpha": knob("FloatLogSlider", v["alpha"], "Dirichlet α", min=-1, max=1, step=0.25),
            "n_clients": knob("IntSlider", v["n_clients"], "clients", min=2, max=20),
            "rounds": knob("IntSlider", v["rounds"], "rounds", min=2, max=30),
            "lr": knob("FloatLogSlider", v["lr"], "lr (no tuning)", min=-2, max=0, step=0.25),
            "tune": knob("Checkbox", v["tune"], "tune lr on validation"),
            "seeds": knob("IntSlider", v["seeds"], "seeds", min=1, max=5)}
