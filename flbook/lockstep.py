"""Lockstep runs: several runs of one task shape advance round by round together, all cohorts in one executor call.

Seeds and grid points batch like clients. Runs that share a task shape (the training tensors, the model's
architecture, local steps or epochs, batch size, weight decay, device, executor, the algorithm's class and every
attribute its clients may read) may still differ in their seed (partition, initial model, sampling), local learning
rate, server learning rate (`SERVER_FIELDS`), channel and adversary. Each round every run samples its cohort and
broadcasts; then the cohorts of all runs train in one executor call, their rows stacked (sum_r M_r, P), each row
with its own downlink and local learning rate; then each run sends up over its own channel, meets its adversary and
aggregates. Each run's history equals what `Federation.run` gives for it alone, up to float rounding (its wall
times count the group's seconds), and a run that diverges stops while the others go on.

    >>> runs = [Run(make(seed, lr), FedAvg(server_lr=s)) for seed in (0, 1, 2) for lr in (0.03, 0.1) for s in (1, 2)]
    >>> histories = lockstep(runs, rounds=30, on_divergence="stop")

Memory: the stacked rows hold R runs' downlinks, client states and messages (sum_r M_r x P each), R times one
run's; the executor still trains them in its memory-bounded chunks. `fits` tells how many runs of a shape to group.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from .algorithms.base import Algorithm, Tensors
from .attacks import Adversary
from .channel import Channel
from .federation import Federation
from .rounds import RunState, check_run, report_attack, report_divergence, report_empty_rounds
from .runtime import cpu_threads

SERVER_FIELDS = frozenset({"server_lr"})  # algorithm attributes only `aggregate` reads: runs may differ in them
_PLAIN = (bool, int, float, str, type(None))
STACK_BUDGET = 2**30  # bytes of stacked per-client tensors a group may hold on a CPU (on a GPU: a quarter free)


@dataclass(frozen=True)
class Run:
    """One run of a lockstep group: `algorithm` on `federation`, over `channel` (default: the federation's), attacked
    by `adversary` (default: none), labelled `label` (default: the algorithm's name)."""

    federation: Federation
    algorithm: Algorithm
    channel: Channel | None = None
    adversary: Adversary | None = None
    label: str | None = None


def task_shape(federation: Federation, algorithm: Algorithm) -> dict[str, object]:
    """The facts that runs must share to train in one executor call, by name; a ValueError when this run cannot be
    batched with any other: a Federation subclass (its round may differ), an algorithm that is not `batchable` (a
    branch per client, hidden state) or whose client-side attributes are not plain values."""
    if type(federation) is not Federation:
        raise ValueError(f"lockstep runs need plain Federations (their round is the one lockstep repeats), got "
                         f"{type(federation).__name__}")
    if not isinstance(algorithm, Algorithm):
        raise TypeError(f"algorithm must be a flbook Algorithm such as FedAvg(), got {algorithm!r}")
    if not algorithm.batchable or algorithm.asynchronous_only:
        raise ValueError(f"{algorithm.name} cannot run in lockstep (not batchable, or asynchronous only); use "
                         f"Federation.run")
    client_side = tuple(sorted((k, v) for k, v in vars(algorithm).items() if k not in SERVER_FIELDS))
    if not all(isinstance(v, _PLAIN) for _, v in client_side):
        raise ValueError(f"{algorithm.name} holds attributes that are not plain values; lockstep cannot tell that "
                         f"its runs' clients compute alike: use Federation.run")
    fed = federation
    return {"algorithm class": type(algorithm), "client-side hyperparameters": client_side,
            "model": (fed.model.kind, repr(fed.model.module)), "local_steps": fed.local_steps,
            "local_epochs": fed.local_epochs, "batch_size": fed.batch_size, "weight_decay": fed.weight_decay,
            "device": fed.device, "executor": type(fed.executor_for(algorithm)), "threads": fed.thread_count(),
            "context": type(fed.context(algorithm)),
            "training data": (tuple(fed.x_train.shape), fed.x_train.dtype, tuple(fed.y_train.shape))}


def shape_key(federation: Federation, algorithm: Algorithm) -> tuple | None:
    """`task_shape` as a hashable key for grouping runs, or None when the run cannot be batched."""
    try:
        return tuple(task_shape(federation, algorithm).values())
    except (TypeError, ValueError):
        return None


def fits(federation: Federation, algorithm: Algorithm) -> int:
    """How many runs of this shape one lockstep group may hold: their stacked rows (every client, a downlink, a
    state and a message per row) within `STACK_BUDGET` on a CPU, a quarter of the free memory on a GPU."""
    x = federation.initial_model()
    server = algorithm.init_server_state(x, federation.n_clients)  # e.g. FedStale's (N, P) memory: once per run
    per_row = sum(v.numel() for v in algorithm.downlink(x, server).values())
    per_row += 2 * sum(v.numel() for v in algorithm.init_client_state(x).values()) + 2 * x.numel()  # states, messages
    per_run = per_row * federation.n_clients + sum(v.numel() for v in server.values())
    budget = STACK_BUDGET
    if federation.device.type == "cuda":
        budget = torch.cuda.mem_get_info(federation.device)[0] // 4
    return max(1, budget // (per_run * x.element_size()))


def _checked(runs: Sequence[Run]) -> list[Run]:
    """The runs, checked to share one task shape and the same training tensors."""
    if isinstance(runs, Run) or not isinstance(runs, Sequence):
        raise TypeError(f"runs must be a sequence of lockstep.Run, got {type(runs).__name__}")
    runs = list(runs)
    if not runs:
        raise ValueError("runs must hold at least one Run, got none")
    for r, run in enumerate(runs):
        if not isinstance(run, Run):
            raise TypeError(f"runs[{r}] must be a lockstep.Run, got {type(run).__name__}")
    first = task_shape(runs[0].federation, runs[0].algorithm)
    lead = runs[0].federation
    for r, run in enumerate(runs[1:], 1):
        shape = task_shape(run.federation, run.algorithm)
        for name, value in first.items():
            if shape[name] != value:
                raise ValueError(f"runs[{r}] differs from runs[0] in its {name} ({shape[name]!r} vs {value!r}); "
                                 f"lockstep runs share a task shape")
        fed = run.federation
        if not (fed.x_train is lead.x_train or torch.equal(fed.x_train, lead.x_train)) or not (
                fed.y_train is lead.y_train or torch.equal(fed.y_train, lead.y_train)):
            raise ValueError(f"runs[{r}] trains on other data than runs[0]; lockstep runs share the training tensors")
    return runs


def _own_channels(runs: list[Run]) -> list[Channel]:
    """Each run's channel, copied where runs would otherwise share one (a channel may keep per-run memory)."""
    seen, out = set(), []
    for run in runs:
        channel = run.federation.channel if run.channel is None else run.channel
        out.append(copy.deepcopy(channel) if id(channel) in seen else channel)
        seen.add(id(channel))
    return out


def _pad_steps(index: torch.Tensor, steps: int) -> torch.Tensor:
    """Sample ids (M, K, B) padded to `steps` local steps with copies of the first (masked: they are not taken)."""
    extra = steps - index.shape[1]
    return index if extra == 0 else torch.cat([index, index[:, :1].expand(-1, extra, -1)], dim=1)


def train_round(runs: list[Run], states: list[RunState]) -> None:
    """One round of every run: each samples and broadcasts, all cohorts train in one executor call, each sends up
    and aggregates (updates `states`)."""
    cohorts = []  # (federation, state, ids, down, steps, index (M, K, B)) of the runs whose broadcast arrived
    for run, state in zip(runs, states):
        fed = run.federation
        down, ids = fed.open_round(state)
        if len(ids) == 0:
            fed.close_round(state, {}, ids)
            continue
        steps = fed.steps_for(ids)
        cohorts.append((fed, state, ids, down, steps, fed.sample_batches(ids, steps, state.generator)))
    if not cohorts:
        return
    lead, lead_state = cohorts[0][0], cohorts[0][1]
    per_client = any(state.channel.down_per_client for _, state, *_ in cohorts)
    if per_client:  # one downlink row per client (M, ...), shared messages repeated
        down = _cat([d if state.channel.down_per_client else {k: v.expand(len(ids), *v.shape) for k, v in d.items()}
                     for _, state, ids, d, *_ in cohorts])
    else:  # one downlink row per run (G, ...)
        down = {k: torch.stack([d[k] for *_, d, _, _ in cohorts]) for k in cohorts[0][3]}
    lrs = [state.ctx.lr for _, state, *_ in cohorts]
    lr = None if len(set(lrs)) == 1 else torch.cat([  # (sum M,) each row's local learning rate
        torch.full((len(ids),), state.ctx.lr, dtype=torch.float64, device=lead.device)
        for _, state, ids, *_ in cohorts])
    n_steps = max(index.shape[1] for *_, index in cohorts)
    messages, client_state = lead.train_cohort(
        lead_state.algorithm, down, torch.cat([_pad_steps(index, n_steps) for *_, index in cohorts]),  # (sum M, K, B)
        None if cohorts[0][4] is None else torch.cat([steps for *_, steps, _ in cohorts]),
        _cat([state.client_state.get(ids) for _, state, ids, *_ in cohorts]), per_client, lead_state.executor,
        lead_state.ctx, lead_state.y_train, lr, tuple(len(ids) for _, _, ids, *_ in cohorts))
    start = 0
    for fed, state, ids, *_ in cohorts:
        rows = slice(start, start + len(ids))
        start += len(ids)
        arrived, senders = fed.send_up(state, ids, _rows(messages, rows), _rows(client_state, rows))
        fed.close_round(state, arrived, senders)


def _cat(parts: list[Tensors]) -> Tensors:
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _rows(tensors: Tensors, rows: slice) -> Tensors:
    return {k: v[rows] for k, v in tensors.items()}


def lockstep(runs: Sequence[Run], rounds: int, *, eval_every: int = 1, progress: bool = True,
             on_divergence: str = "raise") -> list[pd.DataFrame]:
    """Train `runs` for `rounds` rounds together; one history per run, as `Federation.run` gives it for that run.

    on_divergence: "raise" a `DivergenceError` at the first run that diverges, or "stop" that run with a warning
    (its history's `attrs["diverged_at"]` names the round) while the others go on."""
    runs = _checked(runs)
    rounds, eval_every, _ = check_run(rounds, eval_every, on_divergence, None, "lockstep")
    labels = [run.label or str(run.algorithm) for run in runs]
    states = [run.federation.start(run.algorithm, channel, run.adversary)
              for run, channel in zip(runs, _own_channels(runs))]
    labels_trained = [state.y_train for state in states]  # label flipping poisons a run's own copy of the labels
    if any(y is not labels_trained[0] and (y is None or labels_trained[0] is None or not torch.equal(y, labels_trained[0]))
           for y in labels_trained):
        raise ValueError("lockstep runs must train on the same labels; a data-poisoning adversary (label flipping) "
                         "gives its run labels of its own: run it alone with Federation.run")
    rows = [[run.federation._row(label, state, 0.0)] for run, label, state in zip(runs, labels, states)]
    diverged: list[int | None] = [None] * len(runs)
    live, start = list(range(len(runs))), time.perf_counter()
    with cpu_threads(runs[0].federation.thread_count()):
        for t in tqdm(range(1, rounds + 1), desc=f"lockstep ({len(runs)} runs)", disable=not progress, leave=False):
            train_round([runs[i] for i in live], [states[i] for i in live])
            evaluate = t % eval_every == 0 or t == rounds
            seconds = time.perf_counter() - start
            for i in live:
                if not torch.isfinite(states[i].x).all():
                    diverged[i] = t
                elif evaluate:
                    row = runs[i].federation._row(labels[i], states[i], seconds)
                    if math.isfinite(row["test_loss"]):
                        rows[i].append(row)
                    else:
                        diverged[i] = t
                if diverged[i] is not None and on_divergence == "raise":
                    report_divergence(pd.DataFrame(rows[i]), f"{labels[i]} diverged at round {t}", t,
                                      runs[i].federation.lr, on_divergence)
            live = [i for i in live if diverged[i] is None]
            if not live:
                break
    return [_history(run, label, state, run_rows, at, on_divergence)
            for run, label, state, run_rows, at in zip(runs, labels, states, rows, diverged)]


def _history(run: Run, label: str, state: RunState, rows: list[dict], diverged_at: int | None,
             on_divergence: str) -> pd.DataFrame:
    """One run's history with the attributes and warnings `Federation.run` gives it."""
    history = pd.DataFrame(rows)
    run.federation.final_models[label] = state.x
    report_attack(history, label, state)
    report_empty_rounds(history, label, state.empty_rounds, state.round)
    if diverged_at is not None:
        report_divergence(history, f"{label} diverged at round {diverged_at}", diverged_at, run.federation.lr,
                          on_divergence)
    return history
