"""Asynchronous federated training on a virtual clock: clients' updates arrive when their devices finish.

`AsyncFederation` wraps a `Federation` (its client shards, minibatch sampler, executor, channel, evaluation
and its exchange: `broadcast` sends down, `collect` trains and sends up, exactly as in a synchronous round)
and `Devices` (how long each client's job takes). Each job starts from the model the client received and
ends, in simulated time, K * step_time + latency later. When the server aggregates is the algorithm's
choice (`Algorithm.period`, `Algorithm.buffer_size`):

* `period = dt`: at every multiple of dt, with whatever has arrived (FedFix; a round deadline);
* `buffer_size = c`: as soon as c updates wait (c = 1: asynchronous FedAvg; FedBuff);
* neither (any ordinary algorithm, e.g. `FedAvg`): when every job in flight has returned (synchronous).

Who starts new jobs: with `participation=None` every client always works, and a client restarts from the
new model right after its update is applied (Fraboni et al. 2023's simulation). With a participation model,
the server sends each new model to a sampled cohort (Wang & Gao 2023's simulation: a slow client's update
lands rounds later, computed on an old model); a sampled client still computing its last job (K * step_time
not yet over) is skipped, so no client ever trains two jobs at once. Its link latency does not keep it busy.

Over a lossy channel a client whose model is lost stays idle until the next aggregation sends it the new
one, and an update lost on the way up is neither applied nor logged (`history.attrs["lost_updates"]`
counts them). The staleness of an applied update is the number of aggregations between the model it
started from and the model it is applied to (0 in synchronous FedAvg). `run` returns the history (with a
`sim_time` column, evaluated on a grid of simulated times); `updates[label]` lists every applied update
with its staleness and aggregation weight.
"""
from __future__ import annotations

import math
import time
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .algorithms.base import Algorithm, AsyncInfo, Tensors
from .attacks import Adversary
from .clock import TOLERANCE, VirtualClock
from .devices import Devices
from .executors import LoopExecutor
from .federation import Federation
from .rounds import report_attack, report_divergence, report_empty_rounds
from .history import row as history_row
from .participation import Participation
from .runtime import cpu_threads


SMALL_COHORT = 4  # fewer clients than this train one by one under executor="auto" (vmap costs ~4x for one)
MAX_EVALUATIONS = 10_000  # bound on the evaluation grid, so a tiny eval_every is an error, not a hang


@dataclass
class _Job:
    """One client's local training in flight: started from version `version` of the model, which it received."""

    client: int
    version: int
    down: Tensors  # what this client received, one message (no leading client dimension)


class AsyncFederation:
    """A federation whose clients run on simulated devices; training is driven by a virtual clock."""

    def __init__(self, federation: Federation, devices: Devices, participation: Participation | None = None,
                 metrics: Callable[[torch.Tensor], dict[str, float]] | None = None):
        if devices.n_clients != federation.n_clients:
            raise ValueError(f"devices must describe the federation's {federation.n_clients} clients, "
                             f"got {devices.n_clients}")
        self.federation = federation
        self.devices = devices
        self.participation = participation
        self.metrics = metrics  # extra history columns computed from the model, e.g. `class_accuracy(...)`
        self.final_models: dict[str, torch.Tensor] = {}  # label -> parameters after its last run
        self.server_states: dict[str, Tensors] = {}  # label -> server state after its last run
        self.updates: dict[str, pd.DataFrame] = {}  # label -> one row per applied update

    def trigger(self, algorithm: Algorithm) -> tuple[float | None, float]:
        """(period, buffer size) of an algorithm; synchronous algorithms wait for every job (buffer inf)."""
        period, buffer = algorithm.period, algorithm.buffer_size
        if period is not None and not (period > 0 and math.isfinite(period)):
            raise ValueError(f"period must be a finite number > 0, got {period}")
        n = self.federation.n_clients
        if buffer is not None and (int(buffer) != buffer or not 1 <= buffer <= n):
            raise ValueError(f"buffer_size must be an integer in [1, {n}] (the federation's clients), got {buffer}")
        return period, math.inf if buffer is None else int(buffer)

    def run(self, algorithm: Algorithm, until: float, *, adversary: Adversary | None = None,
            eval_every: float | None = None, progress: bool = True, on_divergence: str = "raise",
            label: str | None = None) -> pd.DataFrame:
        """Train until simulated time `until`, attacked by `adversary` if given (as `Federation.run`); history rows
        every `eval_every` time units (default until / 40)."""
        if not (until > 0 and math.isfinite(until)):
            raise ValueError(f"until must be a finite number > 0, got {until}")
        eval_every = until / 40 if eval_every is None else eval_every
        if not eval_every >= until / MAX_EVALUATIONS:
            raise ValueError(f"eval_every must be >= until / {MAX_EVALUATIONS} = {until / MAX_EVALUATIONS:g} "
                             f"(at most {MAX_EVALUATIONS} evaluations), got {eval_every}")
        if on_divergence not in ("raise", "stop"):
            raise ValueError(f"on_divergence must be 'raise' or 'stop', got {on_divergence!r}")
        label = label or str(algorithm)
        run = AsyncRun(self, algorithm, label, adversary)
        with cpu_threads(self.federation.thread_count()):
            diverged_at = run.loop(until, eval_every, progress)
        history = pd.DataFrame(run.rows)
        self.final_models[label] = run.state.x
        self.server_states[label] = run.state.server_state
        self.updates[label] = pd.DataFrame(run.log, columns=["algorithm", "round", "sim_time", "client", "staleness",
                                                             "weight"])
        history.attrs["lost_updates"] = run.lost
        report_attack(history, label, run.state)
        if run.state.round == 0:
            warnings.warn(f"{label}: no aggregation happened before until={until:g}; the model never changed "
                          f"(the fastest job takes {run.job_time.min().item():g} time units)", RuntimeWarning,
                          stacklevel=2)
        else:
            report_empty_rounds(history, label, run.state.empty_rounds, run.state.round, what="aggregation")
        if diverged_at is not None:
            report_divergence(history, f"{label} diverged at aggregation {diverged_at}", diverged_at,
                              self.federation.lr, on_divergence)
        return history

    def compare(self, algorithms: Mapping[str, Algorithm] | Iterable[Algorithm], until: float,
                **run_kwargs) -> pd.DataFrame:
        """Run several algorithms on the same devices, data and seed; one long history."""
        named = algorithms.items() if isinstance(algorithms, Mapping) else ((str(a), a) for a in algorithms)
        return pd.concat([self.run(a, until, label=name, **run_kwargs) for name, a in named], ignore_index=True)

    def update_log(self) -> pd.DataFrame:
        """Every applied update of every run so far (algorithm, round, sim_time, client, staleness, weight)."""
        return pd.concat(self.updates.values(), ignore_index=True)

    def __repr__(self) -> str:
        return f"AsyncFederation({self.federation}, {self.devices})"


class AsyncRun:
    """One asynchronous run: the federation's `RunState` (its round is the model version) plus clock and jobs."""

    def __init__(self, owner: AsyncFederation, algorithm: Algorithm, label: str, adversary: Adversary | None = None):
        fed = owner.federation
        self.owner, self.fed, self.label = owner, fed, label
        self.period, self.buffer_size = owner.trigger(algorithm)
        self.state = fed.start(algorithm, adversary=adversary)  # x^0, states, generators, bytes: as a synchronous run
        # vmap pays off for cohorts, not for the one or two clients an asynchronous aggregation often trains
        self.small_executor = LoopExecutor() if fed.executor_choice == "auto" else self.state.executor
        self.clock = VirtualClock()
        everyone = torch.arange(fed.n_clients, device=fed.device)
        steps = fed.steps_for(everyone)
        self.steps = np.full(fed.n_clients, fed.local_steps) if steps is None else steps.cpu().numpy()  # (N,) K_i
        self.job_time = torch.as_tensor(owner.devices.job_time(everyone, self.steps), device=fed.device)  # (N,) tau_i
        self.compute_time = self.steps * owner.devices.step_time  # (N,) the part of a job that keeps a client busy
        self.free_at = np.zeros(fed.n_clients)  # when each client's current computation ends
        self.pending = np.zeros(fed.n_clients, dtype=bool)  # a job of the client is in flight (training or sending)
        self.applied_count = torch.zeros(fed.n_clients, dtype=torch.long, device=fed.device)
        self.lost = 0  # updates lost on the uplink
        self.rows: list[dict] = []
        self.log: list[tuple] = []
        self.start = time.perf_counter()

    @property
    def in_flight(self) -> int:
        """Jobs scheduled and not yet aggregated."""
        return len(self.clock)

    # ------------------------------------------------------------------------------------------ jobs
    def dispatch(self, clients: np.ndarray) -> None:
        """Send the current model to `clients` over the channel and schedule the end of each received job."""
        if len(clients) == 0:
            return
        down, reached = self.fed.broadcast(self.state, torch.as_tensor(clients, device=self.fed.device))
        per_client = self.state.channel.down_per_client
        for row, client in enumerate(reached.tolist()):
            received = {k: v[row] for k, v in down.items()} if per_client else down
            self.clock.schedule(float(self.job_time[client]), _Job(client, self.state.round, received))
            self.free_at[client] = self.clock.now + self.compute_time[client]
            self.pending[client] = True

    def next_clients(self) -> np.ndarray:
        """Who starts from the new model: every client without a job (participation=None), else the sampled
        cohort's clients that are not computing."""
        participation = self.owner.participation
        if participation is None:
            return np.flatnonzero(~self.pending)
        cohort = np.asarray(participation.sample(self.state.round + 1, self.fed.n_clients, self.state.rng),
                            dtype=np.int64)
        return cohort[self.free_at[cohort] <= self.clock.now * (1 + TOLERANCE)]

    # ------------------------------------------------------------------------------------ aggregation
    def aggregate(self, jobs: list[_Job], sim_time: float) -> None:
        """Train the returned jobs' clients from their start models, collect what arrives, let the algorithm
        aggregate it; then send the new model to the next clients."""
        fed, state = self.fed, self.state
        if jobs:
            ids = torch.as_tensor([job.client for job in jobs], device=fed.device)
            self.pending[ids.cpu().numpy()] = False
            down = {k: torch.stack([job.down[k] for job in jobs]) for k in jobs[0].down}  # (M, ...) own start models
            executor = state.executor if len(jobs) >= SMALL_COHORT else self.small_executor
            messages, arrived = fed.collect(state, ids, down, down_per_client=True, executor=executor)
            self.lost += len(jobs) - len(arrived)
            if len(arrived):
                self.apply(messages, [jobs[i] for i in _positions(ids, arrived)], sim_time)
            else:
                state.empty_rounds += 1
        state.round += 1
        self.dispatch(self.next_clients())

    def apply(self, messages: Tensors, jobs: list[_Job], sim_time: float) -> None:
        """The algorithm's aggregation of the arrived updates (M, ...), with their staleness and start models."""
        fed, state = self.fed, self.state
        ids = torch.as_tensor([job.client for job in jobs], device=fed.device)
        self.applied_count[ids] += 1
        staleness = torch.as_tensor([state.round - job.version for job in jobs], device=fed.device)
        steps = torch.as_tensor(self.steps[ids.cpu().numpy()], device=fed.device)
        start_models = torch.stack([job.down["x"] for job in jobs])  # (M, P)
        info = AsyncInfo(state.round + 1, ids, fed.n_clients, fed.client_sizes, staleness, start_models, steps,
                         self.job_time, self.applied_count.clone(), sim_time, state.ctx,
                         tuple(fed.dataset.input_shape), fed.dataset.n_classes)
        weights = state.algorithm.aggregation_weights(info)
        state.x, state.server_state = state.algorithm.aggregate(state.x, state.server_state, messages, weights, info)
        self.log += [(self.label, state.round + 1, sim_time, job.client, int(s), float(w))
                     for job, s, w in zip(jobs, staleness.tolist(), weights.tolist())]

    # ----------------------------------------------------------------------------------- the main loop
    def next_aggregation(self, until: float) -> tuple[list[_Job], float] | None:
        """Advance the clock to the next aggregation: (the jobs it applies, its time), or None past `until`."""
        clock = self.clock
        if self.period is not None:
            tick = (self.state.round + 1) * self.period  # FedFix: aggregation n at time (n + 1) dt
            if tick > until * (1 + TOLERANCE):
                return None
            return [event.payload for event in clock.pop_until(tick)], tick
        jobs = []
        while clock.due(until):
            jobs.append(clock.pop().payload)
            if len(jobs) >= self.buffer_size or len(clock) == 0:
                return jobs, clock.now
        return None

    def loop(self, until: float, eval_every: float, progress: bool) -> int | None:
        """Run aggregations until `until`, recording history rows on the evaluation grid; a divergence round or None."""
        grid = deque(np.arange(0.0, until * (1 + TOLERANCE), eval_every).tolist())  # evaluation times
        if until - grid[-1] > TOLERANCE * until:
            grid.append(until)  # the final model is always evaluated, as the synchronous loop evaluates its last round
        self.dispatch(np.arange(self.fed.n_clients) if self.owner.participation is None else self.next_clients())
        with tqdm(total=round(until, 6), desc=self.label, disable=not progress, leave=False, unit="time") as bar:
            while (step := self.next_aggregation(until)) is not None:
                jobs, sim_time = step
                if not self.record_until(grid, sim_time * (1 - TOLERANCE)):  # rows before it see the current model
                    return self.state.round
                self.aggregate(jobs, sim_time)
                bar.update(round(sim_time - bar.n, 6))
                if not torch.isfinite(self.state.x).all():
                    return self.state.round
        return None if self.record_until(grid, math.inf) else self.state.round

    def record_until(self, grid: deque, before: float) -> bool:
        """Record the rows of the evaluation times earlier than `before`; False on a non-finite loss."""
        while grid and grid[0] < before:
            if not self.record(grid.popleft()):
                return False
        return True

    def record(self, sim_time: float) -> bool:
        """Append a history row at `sim_time`; False when the loss is not finite."""
        state = self.state
        scores = self.fed.scores(state.x)
        if self.owner.metrics is not None:
            scores.update(self.owner.metrics(state.x))
        if not math.isfinite(scores["test_loss"]):
            return False
        self.rows.append(history_row(self.label, state.round, scores, state.bits_up, state.bits_down,
                                     time.perf_counter() - self.start, sim_time=sim_time))
        return True


def _positions(ids: torch.Tensor, arrived: torch.Tensor) -> list[int]:
    """Where each arrived client id sits in `ids` (ids are distinct: a client has one job at a time)."""
    where = {client: i for i, client in enumerate(ids.tolist())}
    return [where[client] for client in arrived.tolist()]


def class_accuracy(federation: Federation, cls: int) -> Callable[[torch.Tensor], dict[str, float]]:
    """A `metrics` function: test accuracy on class `cls` alone, as column `class_acc`."""
    mask = federation.y_test == cls
    if not mask.any():
        raise ValueError(f"cls must be a class present in the test set, got {cls}")
    x, y = federation.x_test[mask], federation.y_test[mask]

    @torch.no_grad()
    def metric(theta: torch.Tensor) -> dict[str, float]:
        return {"class_acc": (federation.model(theta, x).argmax(1) == y).float().mean().item()}

    return metric
