"""What every round loop shares: a run's state (the global model, the algorithm's states, the clients' states,
the generators), the reports of divergence, empty rounds and unattacked rounds, and the loop over rounds.

The synchronous federation, the lockstep runs, the asynchronous driver and the decentralized runner all keep
their run in a `RunState` and report through these functions, so a run that diverges, receives nothing or
cannot be attacked says so the same way everywhere.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import validation as V
from .algorithms.base import Algorithm, LocalContext, Tensors
from .attacks import Adversary
from .channel import Channel
from .executors import BatchedExecutor, LoopExecutor


class DivergenceError(RuntimeError):
    """Training produced non-finite parameters or loss."""


class ClientStates:
    """Per-client persistent state (e.g. SCAFFOLD's c_i), held only for the clients that have trained.

    A client that never took part reads the algorithm's initial state, so memory follows the clients that
    trained, not the federation's size (10,000 clients at 1% participation store about 100 rows per round)."""

    def __init__(self, initial: Tensors, n_clients: int, device: torch.device):
        self.initial = initial  # one client's state at round 0
        self.slot = torch.full((n_clients,), -1, dtype=torch.long, device=device)  # (N,) row in `rows`; -1: none
        self.rows = {k: v.new_empty((0, *v.shape)) for k, v in initial.items()}  # (capacity, ...) each
        self.count = 0  # clients that have a row

    def __bool__(self) -> bool:
        return bool(self.initial)

    def get(self, ids: torch.Tensor) -> Tensors:
        """The states of clients `ids` (M,), stacked (M, ...)."""
        slots = self.slot[ids]
        seen = slots >= 0
        out = {k: v.expand(len(ids), *v.shape).clone() for k, v in self.initial.items()}
        for k, v in out.items():
            v[seen] = self.rows[k][slots[seen]]
        return out

    def all_clients(self) -> Tensors:
        """Every client's state (N, ...), for inspection: clients that never trained show the initial state."""
        return self.get(torch.arange(len(self.slot), device=self.slot.device))

    def put(self, ids: torch.Tensor, states: Tensors) -> None:
        """Store the new states (M, ...) of clients `ids`, giving rows to first-time clients."""
        new = ids[self.slot[ids] < 0]
        if len(new):
            self.slot[new] = torch.arange(self.count, self.count + len(new), device=ids.device)
            self.count += len(new)
            capacity = next(iter(self.rows.values())).shape[0]
            if self.count > capacity:  # grow by doubling, so storing is amortised O(rows written)
                grow = max(self.count, 2 * capacity) - capacity
                self.rows = {k: torch.cat([v, v.new_empty((grow, *v.shape[1:]))]) for k, v in self.rows.items()}
        for k, v in states.items():
            self.rows[k][self.slot[ids]] = v


@dataclass
class RunState:
    """Everything that changes while one algorithm trains: the model, its states, generators and byte counts."""

    algorithm: Algorithm
    channel: Channel
    executor: LoopExecutor | BatchedExecutor
    ctx: LocalContext
    x: torch.Tensor  # (P,) the global model
    server_state: Tensors
    client_state: ClientStates
    rng: np.random.Generator
    generator: torch.Generator
    adversary: Adversary | None = None
    byzantine: torch.Tensor | None = None  # (f,) ids of the Byzantine clients, when there is an adversary
    y_train: torch.Tensor | None = None  # (n,) the labels clients train on (label flipping: Byzantine shards flipped)
    round: int = 0
    bits_up: int = 0
    bits_down: int = 0
    empty_rounds: int = 0  # rounds in which no update reached the server
    unattacked: int = 0  # rounds in which every sender was Byzantine: no honest message to craft an attack from


def report_divergence(history: pd.DataFrame, what: str, at: int, lr: float, on_divergence: str) -> None:
    """Raise a `DivergenceError`, or (on_divergence="stop") warn and mark `history.attrs["diverged_at"]`.

    Data and hyperparameters are checked finite where they are given, so what is left is a step too large."""
    message = (f"{what} (non-finite parameters or loss): the steps are too large; try a smaller learning rate "
               f"than lr={lr} (or a smaller server step)")
    if on_divergence == "raise":
        raise DivergenceError(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    history.attrs["diverged_at"] = at


def report_attack(history: pd.DataFrame, label: str, state: RunState) -> None:
    """Name the Byzantine clients and the attack in `history.attrs`; warn of rounds that could not be attacked."""
    if state.adversary is None:
        return
    history.attrs.update(byzantine=state.byzantine.tolist(), attack=str(state.adversary),
                         unattacked_rounds=state.unattacked)
    if state.unattacked:
        warnings.warn(f"{label}: in {state.unattacked} of {state.round} rounds every sender was Byzantine, so no "
                      f"honest message was there to craft the attack from; they sent what they trained",
                      RuntimeWarning, stacklevel=3)


def report_empty_rounds(history: pd.DataFrame, label: str, empty: int, rounds: int, what: str = "round") -> None:
    """Warn when no update reached the server in some rounds (lost links, nobody sampled); noted in `history.attrs`."""
    history.attrs["empty_rounds"] = empty
    if empty == rounds and rounds > 0:
        warnings.warn(f"{label}: no update reached the server in any of its {rounds} {what}s; the model never "
                      f"changed", RuntimeWarning, stacklevel=3)
    elif empty:
        warnings.warn(f"{label}: no update reached the server in {empty} of {rounds} {what}s", RuntimeWarning,
                      stacklevel=3)


def check_algorithm(algorithm: Algorithm) -> None:
    """An Algorithm that this synchronous loop can run (some need the asynchronous driver's facts)."""
    if not isinstance(algorithm, Algorithm):
        raise TypeError(f"algorithm must be a flbook Algorithm such as FedAvg(), got {algorithm!r}")
    if algorithm.asynchronous_only:
        raise ValueError(f"{algorithm.name} needs the asynchronous driver: run it with AsyncFederation(federation, "
                         f"devices).run(...)")


def check_run(rounds: int, eval_every: int, on_divergence: str, label: str | None, default: str) -> tuple[int, int, str]:
    """A round loop's arguments, checked: (rounds, eval_every, the run's label)."""
    rounds = V.integer("rounds", rounds, 1)
    eval_every = V.integer("eval_every", eval_every, 1)
    V.choice("on_divergence", on_divergence, ("raise", "stop"))
    if label is not None and not isinstance(label, str):
        raise TypeError(f"label must be a string or None, got {label!r}")
    return rounds, eval_every, label or default


def train_rounds(label: str, rounds: int, eval_every: int, progress: bool, step: Callable[[], None],
                 params: Callable[[], torch.Tensor], row: Callable[[float], dict]) -> tuple[list[dict], int | None]:
    """The synchronous loop of a run: `rounds` calls of `step`, a history `row(seconds)` at round 0, every
    `eval_every` rounds and after the last; it stops at the first non-finite parameter or loss.

    Returns the rows and the round at which the run diverged (None if it did not)."""
    rows, start = [row(0.0)], time.perf_counter()
    for t in tqdm(range(1, rounds + 1), desc=label, disable=not progress, leave=False):
        step()
        if not torch.isfinite(params()).all():
            return rows, t
        if t % eval_every == 0 or t == rounds:
            rows.append(row(time.perf_counter() - start))
            if not math.isfinite(rows[-1]["test_loss"]):
                return rows[:-1], t
    return rows, None
