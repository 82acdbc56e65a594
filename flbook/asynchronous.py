"""Asynchronous federated training on a virtual clock: clients' updates arrive when their devices finish.

`AsyncFederation` wraps a `Federation` (its client shards, minibatch sampler, executor, channel and
evaluation) and `Devices` (how long each client's job takes). Each job starts from the model the client
received and ends, in simulated time, K * step_time + latency later. When the server aggregates is the
algorithm's choice:

* `period = dt`: at every multiple of dt, with whatever has arrived (FedFix; a round deadline);
* `buffer_size = c`: as soon as c updates wait (c = 1: asynchronous FedAvg; FedBuff);
* neither (any ordinary algorithm, e.g. `FedAvg`): when every job in flight has returned (synchronous).

Who starts new jobs: with `participation=None` every client always works, and a client restarts from the
new model right after its update is applied (Fraboni et al. 2023's simulation). With a participation model,
the server sends each new model to a sampled cohort, whatever the clients still have in flight (Wang & Gao
2023's simulation: a slow client's update lands rounds later, computed on an old model).

The staleness of an applied update is the number of aggregations between the model it started from and
the model it is applied to (0 in synchronous FedAvg). `run` returns the history (with a `sim_time`
column, evaluated on a grid of simulated times); `updates[label]` lists every applied update with its
staleness and aggregation weight.
"""
from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Mapping

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .algorithms.base import Algorithm, LocalContext, RoundInfo, Tensors
from .clock import TOLERANCE, VirtualClock
from .runtime import cpu_threads
from .devices import Devices
from .executors import Cohort, LoopExecutor
from .federation import Federation, report_divergence
from .participation import Participation

if TYPE_CHECKING:
    import ipywidgets as W
    from matplotlib.figure import Figure


SMALL_COHORT = 4  # fewer clients than this train one by one under executor="auto" (vmap costs ~4x for one)


@dataclass(frozen=True)
class AsyncInfo(RoundInfo):
    """`RoundInfo` plus what rules for late updates need: staleness, start models and device times."""

    staleness: torch.Tensor  # (M,) aggregations between each update's start model and now
    start_models: torch.Tensor  # (M, P) the model each client started from, x^{rho_i}
    steps: torch.Tensor  # (M,) local steps each client took
    job_time: torch.Tensor  # (N,) float64, tau_i: simulated time of one job (its usual local steps) on client i
    applied_count: torch.Tensor  # (N,) aggregations so far (this one included) that applied an update of client i
    sim_time: float  # when this aggregation happens
    ctx: LocalContext  # the clients' model, learning rate and loss, for server-side recomputation
    input_shape: tuple[int, ...]  # shape of one sample
    n_classes: int


@dataclass
class _Job:
    """One client's local training in flight: started from version `version` of the model, which it received."""

    client: int
    version: int
    down: Tensors
    steps: int


def aggregation_weights(algorithm: Algorithm, info: AsyncInfo) -> torch.Tensor:
    """The weights d_i (M,) the algorithm gives this aggregation's updates: its own rule, else n_i / sum_S n_j."""
    rule = getattr(algorithm, "aggregation_weights", None)
    if rule is not None:
        return rule(info)
    sizes = info.client_sizes[info.clients].double()
    return (sizes / sizes.sum()).float()


def _stack(downs: list[Tensors]) -> Tensors:
    return {k: torch.stack([d[k] for d in downs]) for k in downs[0]}


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

    @staticmethod
    def trigger(algorithm: Algorithm) -> tuple[float | None, float]:
        """(period, buffer size) of an algorithm; synchronous algorithms wait for every job (buffer inf)."""
        period = getattr(algorithm, "period", None)
        buffer = getattr(algorithm, "buffer_size", None)
        if period is not None and not period > 0:
            raise ValueError(f"period must be > 0, got {period}")
        if buffer is not None and (int(buffer) != buffer or buffer < 1):
            raise ValueError(f"buffer_size must be a positive integer, got {buffer}")
        return period, math.inf if buffer is None else int(buffer)

    def run(self, algorithm: Algorithm, until: float, *, eval_every: float | None = None, progress: bool = True,
            on_divergence: str = "raise", label: str | None = None) -> pd.DataFrame:
        """Train until simulated time `until`; history rows every `eval_every` time units (default until / 40)."""
        if not until > 0:
            raise ValueError(f"until must be > 0, got {until}")
        eval_every = until / 40 if eval_every is None else eval_every
        if not eval_every > 0:
            raise ValueError(f"eval_every must be > 0, got {eval_every}")
        if on_divergence not in ("raise", "stop"):
            raise ValueError(f"on_divergence must be 'raise' or 'stop', got {on_divergence!r}")
        label = label or str(algorithm)
        run = AsyncRun(self, algorithm, label)
        with cpu_threads(self.federation.thread_count()):
            diverged_at = run.loop(until, eval_every, progress)
        history = pd.DataFrame(run.rows)
        self.final_models[label] = run.x
        self.server_states[label] = run.server_state
        self.updates[label] = pd.DataFrame(run.log, columns=["algorithm", "round", "sim_time", "client", "staleness",
                                                             "weight"])
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
    """The state of one asynchronous run: model, server and client state, clock, counters and records."""

    def __init__(self, owner: AsyncFederation, algorithm: Algorithm, label: str):
        fed = owner.federation
        self.owner, self.fed, self.algorithm, self.label = owner, fed, algorithm, label
        self.period, self.buffer_size = owner.trigger(algorithm)
        self.executor = fed.executor_for(algorithm)
        # vmap pays off for cohorts, not for the one or two clients an asynchronous aggregation often trains
        self.small_executor = LoopExecutor() if fed.executor_choice == "auto" else self.executor
        self.ctx = LocalContext(fed.model, fed.lr, fed.weight_decay, algorithm.loss)
        self.rng = np.random.default_rng(fed.seed)  # cohorts and channel randomness
        self.generator = torch.Generator(device=fed.device).manual_seed(fed.seed)  # minibatches
        self.x = fed.initial_model()
        self.server_state = algorithm.init_server_state(self.x, fed.n_clients)
        self.client_state = {k: v.expand(fed.n_clients, *v.shape).clone()
                             for k, v in algorithm.init_client_state(self.x).items()}
        self.clock = VirtualClock()
        self.version = 0  # aggregations so far; the current model is x^version
        self.bits_up = self.bits_down = 0
        self.applied_count = torch.zeros(fed.n_clients, dtype=torch.long, device=fed.device)
        everyone = torch.arange(fed.n_clients, device=fed.device)
        steps = fed.steps_for(everyone)
        self.job_time = torch.as_tensor(owner.devices.job_time(everyone, fed.local_steps if steps is None else steps),
                                        device=fed.device)  # (N,) float64, tau_i
        self.rows: list[dict] = []
        self.log: list[tuple] = []
        self.start = time.perf_counter()

    # ------------------------------------------------------------------------------------------ jobs
    def dispatch(self, clients: np.ndarray) -> None:
        """Send the current model to `clients` and schedule the end of each one's job."""
        if len(clients) == 0:
            return
        ids = torch.as_tensor(clients, device=self.fed.device)
        down, bits = self.fed.channel.downlink(self.algorithm.downlink(self.x, self.server_state), len(ids), self.rng)
        self.bits_down += bits
        steps = self.fed.steps_for(ids)
        steps = [self.fed.local_steps] * len(ids) if steps is None else steps.tolist()
        for client, k, duration in zip(clients.tolist(), steps, self.owner.devices.job_time(clients, steps)):
            self.clock.schedule(float(duration), _Job(client, self.version, down, k))

    def next_clients(self, applied: list[_Job]) -> np.ndarray:
        """Who starts from the new model: the clients just applied, or a fresh cohort when sampling."""
        participation = self.owner.participation
        if participation is None:
            return np.array(sorted(job.client for job in applied), dtype=np.int64)
        return np.asarray(participation.sample(self.version + 1, self.fed.n_clients, self.rng), dtype=np.int64)

    # ------------------------------------------------------------------------------------ aggregation
    def aggregate(self, jobs: list[_Job], sim_time: float) -> None:
        """Train the returned jobs' clients from their start models, then let the algorithm aggregate."""
        fed = self.fed
        if jobs:
            ids = torch.as_tensor([job.client for job in jobs], device=fed.device)
            steps = torch.as_tensor([job.steps for job in jobs], device=fed.device)
            uneven = bool((steps != steps[0]).any())
            index = fed.sample_batches(ids, steps if uneven else None, self.generator)  # (M, K, B)
            down = _stack([job.down for job in jobs])  # (M, ...) each client's own start model
            executor = self.executor if len(jobs) >= SMALL_COHORT else self.small_executor
            messages, new_state = executor(self.algorithm, down, {k: v[ids] for k, v in self.client_state.items()},
                                           Cohort(fed.x_train, fed.y_train, index, steps if uneven else None),
                                           self.ctx, down_per_client=True)
            for k, v in new_state.items():
                self.client_state[k][ids] = v
            messages, bits = fed.channel.uplink(messages, self.rng)
            self.bits_up += bits
            self.applied_count[ids] += 1
            staleness = torch.as_tensor([self.version - job.version for job in jobs], device=fed.device)
            info = AsyncInfo(self.version + 1, ids, fed.n_clients, fed.client_sizes, staleness, down["x"], steps,
                             self.job_time, self.applied_count.clone(), sim_time, self.ctx,
                             tuple(fed.dataset.input_shape), fed.dataset.n_classes)
            weights = aggregation_weights(self.algorithm, info)
            self.x, self.server_state = self.algorithm.aggregate(self.x, self.server_state, messages, weights, info)
            self.log += [(self.label, self.version + 1, sim_time, job.client, int(s), float(w))
                         for job, s, w in zip(jobs, staleness.tolist(), weights.tolist())]
        self.version += 1
        self.dispatch(self.next_clients(jobs))

    # ----------------------------------------------------------------------------------- the main loop
    def next_aggregation(self, until: float) -> tuple[list[_Job], float] | None:
        """Advance the clock to the next aggregation: (the jobs it applies, its time), or None past `until`."""
        clock = self.clock
        if self.period is not None:
            tick = (self.version + 1) * self.period  # FedFix: aggregation n at time (n + 1) dt
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
        self.dispatch(np.arange(self.fed.n_clients) if self.owner.participation is None else self.next_clients([]))
        with tqdm(total=round(until, 6), desc=self.label, disable=not progress, leave=False, unit="time") as bar:
            while (step := self.next_aggregation(until)) is not None:
                jobs, sim_time = step
                if not self.record_until(grid, sim_time * (1 - TOLERANCE)):  # rows before it see the current model
                    return self.version
                self.aggregate(jobs, sim_time)
                bar.update(round(sim_time - bar.n, 6))
                if not torch.isfinite(self.x).all():
                    return self.version
        return None if self.record_until(grid, math.inf) else self.version

    def record_until(self, grid: deque, before: float) -> bool:
        """Record the rows of the evaluation times earlier than `before`; False on a non-finite loss."""
        while grid and grid[0] < before:
            if not self.record(grid.popleft()):
                return False
        return True

    def record(self, sim_time: float) -> bool:
        """Append a history row at `sim_time`; False when the loss is not finite."""
        scores = self.fed.evaluate(self.x)
        if self.owner.metrics is not None:
            scores.update(self.owner.metrics(self.x))
        if not math.isfinite(scores["test_loss"]):
            return False
        self.rows.append({"algorithm": self.label, "round": self.version, "sim_time": sim_time, **scores,
                          "bytes_up": self.bits_up // 8, "bytes_down": self.bits_down // 8,
                          "wall_time": time.perf_counter() - self.start})
        return True


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


# ------------------------------------------------------------------------ chapter experiments and panels
KNOBS = {  # key -> (widget class name, options): the asynchronous knobs a control panel can expose
    "speed_spread": ("FloatSlider", dict(min=0.0, max=0.95, step=0.05, description="speed spread")),
    "buffer_size": ("IntSlider", dict(min=1, max=50, description="FedBuff buffer")),
    "period": ("FloatSlider", dict(min=0.05, max=2.0, step=0.05, description="FedFix Δt")),
    "time_budget": ("FloatSlider", dict(min=1.0, max=60.0, step=1.0, description="simulated time")),
    "delay": ("IntSlider", dict(min=0, max=40, description="staleness τ")),
    "delayed_class": ("IntSlider", dict(min=0, max=9, description="slow class")),
    "gi_iterations": ("IntSlider", dict(min=1, max=200, description="GI iterations")),
    "n_rec": ("IntSlider", dict(min=1, max=64, description="GI samples")),
    "hidden": ("IntSlider", dict(min=0, max=128, step=8, description="hidden units")),
}
SCHEME_DEFAULTS = {  # chapter 22: 20 Dirichlet(0.3) clients on digits, Fraboni et al.'s F-80 devices
    "dataset": "digits", "model": "logistic", "partitioner": "dirichlet", "alpha": 0.3, "n_clients": 20,
    "local_steps": 5, "batch_size": 16, "lr": 0.3, "seed": 0,
    "speed_spread": 0.8, "buffer_size": 5, "period": 0.5, "time_budget": 16.0,
}
STALENESS_DEFAULTS = {  # chapter 23: one class per client, the clients of one class delayed by tau rounds
    "dataset": "digits", "hidden": 32, "n_clients": 20, "local_steps": 5, "lr": 0.5, "seed": 0,
    "delay": 15, "delayed_class": 3, "rounds": 45, "gi_iterations": 20, "n_rec": 16,
}


def controls(**defaults: float) -> dict[str, "W.Widget"]:
    """Widgets for the asynchronous knobs named in `defaults` (keys of `KNOBS`), set to those values."""
    import ipywidgets as W

    unknown = sorted(set(defaults) - set(KNOBS))
    if unknown:
        raise ValueError(f"defaults must be among {sorted(KNOBS)}, got unknown {unknown}")
    made = {}
    for key, value in defaults.items():
        kind, options = KNOBS[key]
        made[key] = getattr(W, kind)(value=value, style={"description_width": "110px"},
                                     layout=W.Layout(width="auto"), **options)
    return made


def _values(defaults: dict, values: Mapping) -> dict:
    """The chapter's defaults overridden by the given values (None keeps the default)."""
    return {**defaults, **{k: v for k, v in values.items() if v is not None}}


def schemes_from(values: Mapping) -> dict[str, Algorithm]:
    """Chapter 22's contenders: synchronous FedAvg, asynchronous FedAvg, FedBuff-c and FedFix-dt."""
    from .algorithms.fedavg import FedAvg
    from .algorithms.fedfix import AsyncFedAvg, FedBuff, FedFix

    v = _values(SCHEME_DEFAULTS, values)
    return {"FedAvg (sync)": FedAvg(), "Async FedAvg": AsyncFedAvg(),
            f"FedBuff-{v['buffer_size']}": FedBuff(buffer_size=int(v["buffer_size"])),
            f"FedFix-{v['period']:g}": FedFix(period=float(v["period"]))}


def compare_schemes(values: Mapping, progress: bool = True) -> pd.DataFrame:
    """Run `schemes_from(values)` on F-X devices (speed_spread = X/100), the slowest job taking 1 time unit.

    Returns the history (evaluated every 1/4 time unit); `history.attrs` holds the update log ("updates"),
    the client sizes ("sizes") and job times ("job_time") for the staleness and weight plots."""
    from .devices import linear
    from .widgets import federation_from

    v = _values(SCHEME_DEFAULTS, values)
    fed = federation_from(v)
    devices = linear(fed.n_clients, float(v["speed_spread"]), step_time=1 / fed.local_steps)
    runner = AsyncFederation(fed, devices)
    history = runner.compare(schemes_from(v), float(v["time_budget"]), eval_every=0.25, progress=progress,
                             on_divergence="stop")
    history.attrs.update(updates=runner.update_log(), sizes=fed.client_sizes.cpu().numpy(),
                         job_time=devices.job_time(np.arange(fed.n_clients), fed.local_steps))
    return history


def scheme_figure(history: pd.DataFrame) -> "Figure":
    """Chapter 22's panel figure: test loss against simulated time, and the staleness of applied updates."""
    import matplotlib.pyplot as plt

    from .plots.curves import learning_curves
    from .plots.staleness import staleness_histogram

    fig, (curves, hist) = plt.subplots(1, 2, figsize=(10.0, 3.5), layout="constrained")
    learning_curves(history, y="test_loss", x="sim_time", ax=curves)
    curves.set(yscale="log")
    staleness_histogram(history.attrs["updates"], ax=hist)
    return fig


def scheme_controls(**defaults: object) -> dict[str, "W.Widget"]:
    """Chapter 22's panel: data and training knobs (`flbook.widgets`) plus speed spread, buffer, dt, time budget."""
    from .widgets import standard_controls

    v = _values(SCHEME_DEFAULTS, defaults)
    shared = standard_controls(**{k: v[k] for k in ("dataset", "model", "alpha", "n_clients", "local_steps", "lr",
                                                     "seed")})
    return {**{k: shared[k] for k in ("dataset", "model", "alpha", "n_clients", "local_steps", "lr", "seed")},
            **controls(**{k: v[k] for k in ("speed_spread", "buffer_size", "period", "time_budget")})}


def staleness_federation(values: Mapping) -> tuple[Federation, np.ndarray]:
    """Chapter 23's task: one class per client, a small MLP (hidden=0: softmax regression), local full-batch GD.

    Also returns the ids of the slow clients: those holding `delayed_class`."""
    from .data import load
    from .devices import class_share
    from .models import logistic, mlp
    from .partition import pathological

    v = _values(STALENESS_DEFAULTS, values)
    if v["dataset"] not in ("digits", "mnist1d"):
        raise ValueError(f"dataset must be 'digits' or 'mnist1d' for this chapter, got {v['dataset']!r}")
    data = load(v["dataset"])
    parts = pathological(data.y_train, int(v["n_clients"]), 1, seed=int(v["seed"]))
    features, hidden = int(np.prod(data.input_shape)), int(v["hidden"])
    model = mlp(features, data.n_classes, hidden=(hidden,)) if hidden else logistic(features, data.n_classes)
    fed = Federation(data, parts, model, local_steps=int(v["local_steps"]), batch_size=max(len(p) for p in parts),
                     lr=float(v["lr"]), seed=int(v["seed"]))
    slow = np.flatnonzero(class_share(parts, data.y_train, int(v["delayed_class"])) > 0)
    return fed, slow


def staleness_methods(values: Mapping, bounds: tuple[float, float] | None = None) -> dict[str, Algorithm]:
    """Chapter 23's contenders: the stale-update baselines and gradient-inversion conversion."""
    from .algorithms.staleness_inversion import GradientInversion, StaleFedAvg

    v = _values(STALENESS_DEFAULTS, values)
    return {"direct": StaleFedAvg(), "weighted 2^(-τ/20)": StaleFedAvg(policy="weighted"),
            "DC-ASGD": StaleFedAvg(policy="dc-asgd"), "drop stale": StaleFedAvg(policy="drop"),
            "GI conversion": GradientInversion(iterations=int(v["gi_iterations"]), n_rec=int(v["n_rec"]),
                                               bounds=bounds, seed=int(v["seed"]))}


def compare_staleness(values: Mapping, progress: bool = True) -> pd.DataFrame:
    """Run the oracle (no delay) and `staleness_methods(values)` with the slow class's clients `delay` rounds late.

    Every client takes part every round (one round per time unit). Columns add `class_acc` (test accuracy
    on the slow class); `history.attrs` holds the update log ("updates"), the slow clients ("slow") and
    the final server states ("server_states", e.g. how many updates GI converted)."""
    from .algorithms.staleness_inversion import StaleFedAvg
    from .devices import draw
    from .participation import Uniform

    v = _values(STALENESS_DEFAULTS, values)
    fed, slow = staleness_federation(v)
    on_time = draw(fed.n_clients, "constant", step_time=0.5 / fed.local_steps)  # a job takes half a round
    late = on_time.slowed(slow, extra_latency=float(v["delay"]))
    metric = class_accuracy(fed, int(v["delayed_class"]))
    bounds = (float(fed.x_train.min()), float(fed.x_train.max()))  # the input box the server knows
    rounds, kwargs = float(v["rounds"]), dict(eval_every=1.0, progress=progress, on_divergence="stop")
    oracle = AsyncFederation(fed, on_time, Uniform(1.0), metric)
    delayed = AsyncFederation(fed, late, Uniform(1.0), metric)
    history = pd.concat([oracle.run(StaleFedAvg(), rounds, label="no delay (oracle)", **kwargs),
                         delayed.compare(staleness_methods(v, bounds), rounds, **kwargs)], ignore_index=True)
    history.attrs.update(updates=delayed.update_log(), slow=slow, server_states=delayed.server_states)
    return history


def staleness_figure(history: pd.DataFrame) -> "Figure":
    """Chapter 23's panel figure: accuracy on the slow class and overall, against rounds."""
    import matplotlib.pyplot as plt

    from .plots.curves import learning_curves

    fig, (slow, overall) = plt.subplots(1, 2, figsize=(10.0, 3.5), sharey=True, layout="constrained")
    learning_curves(history, y="class_acc", x="round", ax=slow)
    learning_curves(history, y="test_acc", x="round", ax=overall)
    slow.set(ylabel="test accuracy on the slow class")
    overall.get_legend().remove()
    return fig


def staleness_controls(**defaults: object) -> dict[str, "W.Widget"]:
    """Chapter 23's panel: dataset, clients, local steps, lr, seed plus delay, slow class and GI budget."""
    from .widgets import standard_controls

    v = _values(STALENESS_DEFAULTS, defaults)
    shared = standard_controls(**{k: v[k] for k in ("n_clients", "local_steps", "lr", "rounds", "seed")})
    shared["dataset"].options = ("digits", "mnist1d")
    shared["dataset"].value = v["dataset"]
    return {**{k: shared[k] for k in ("dataset", "n_clients", "local_steps", "lr", "rounds", "seed")},
            **controls(**{k: v[k] for k in ("hidden", "delay", "delayed_class", "gi_iterations", "n_rec")})}
