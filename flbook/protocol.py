"""The experiment protocol every chapter's claims rest on: seeds, fair step sizes, step-size controls, verdicts.

- Seeds: a claim rests on at least 3 seeds; each seed changes the partition, the initial model and the sampling.
- Fair step sizes: every method, baselines included, gets the same small grid over its local learning rate and,
  where it has one, its server learning rate, scored on a validation split carved from the training data (never
  the test set); a best value at the grid's edge extends the grid (a bounded number of times, recorded).
- Controls: FedAvg with a tuned server learning rate and FedAvgM appear whenever a gain could be a step size.
- Verdicts: per-seed differences say "holds", "does not hold" or "inconclusive" by one documented rule, and the
  "paper vs this notebook" table is built from them.
- Speed: seeds and grid points batch like clients: `run_all` trains the uncached runs of one task shape in
  lockstep (`flbook.lockstep`), with the same histories as one by one.

A chapter describes its task by one function `make_federation(dataset, seed, lr) -> Federation` and each method
by a factory: `lambda server_lr: FedAvg(server_lr=server_lr)` when it has a server learning rate to tune,
`lambda: FedProx(mu=0.01)` when it has none. A variant that differs by its federation, not its algorithm (FedAvg
over a compressed uplink), brings its own task: `compare(..., tasks={"FedAvg + top-k": with_channel(make, ...)})`.

    >>> methods = {"FedAvg": lambda: FedAvg(), "SCAFFOLD": lambda server_lr: Scaffold(server_lr=server_lr)}
    >>> result = compare(load("digits"), make, methods, rounds=30)
    >>> verdict(result.difference("SCAFFOLD", "FedAvg", lambda h: window_mean(h, last=10).mean))
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import math
import warnings
import weakref
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from . import lockstep
from .algorithms import FedAvg, FedAvgM
from .algorithms.base import Algorithm
from .channel import Channel
from .data import Dataset
from .federation import Federation
from .history import is_flat, mean_spread, per_run, per_seed_difference, window_mean
from .partition import partition

SEEDS: tuple[int, ...] = (0, 1, 2)  # the seeds a claim rests on
MIN_SEEDS = 3  # fewer seeds than this make every verdict "inconclusive"
LRS: tuple[float, ...] = (0.03, 0.1, 0.3)  # local learning rates tried for every method
SERVER_LRS: tuple[float, ...] = (0.5, 1.0, 2.0)  # server learning rates tried for every method that has one
HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
LOCKSTEP = True  # run_all trains the runs of one task shape together; False: one by one (the benchmark's reference)

MakeFederation = Callable[[Dataset, int, float], Federation]
Factory = Callable[..., Algorithm]


# ------------------------------------------------------------------------------------------------ data splits
def _held_out(groups: Sequence[np.ndarray], fraction: float, rng: np.random.Generator) -> np.ndarray:
    """round(fraction * size) random members of every group (one group keeps at least one member), sorted."""
    picks = [rng.choice(g, size=min(int(fraction * len(g) + 0.5), len(g) - 1), replace=False) for g in groups]
    return np.sort(np.concatenate(picks)).astype(np.int64)


def validation_split(dataset: Dataset, fraction: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset]:
    """(train, validation): both train on the same training samples minus a held-out `fraction` of them;
    `train` evaluates on the test set, `validation` on the held-out training samples (so tuning never sees the
    test set). Held out per class (per client when the dataset has natural clients, whose shards are remapped)."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    labels = dataset.y_train.cpu().numpy()
    natural = dataset.client_indices
    groups = natural if natural is not None else [np.flatnonzero(labels == c) for c in np.unique(labels)]
    held = _held_out(groups, fraction, np.random.default_rng(seed))
    keep = np.setdiff1d(np.arange(len(labels)), held)  # sorted, disjoint from `held`
    clients = None
    if natural is not None:
        new_id = np.full(len(labels), -1, dtype=np.int64)
        new_id[keep] = np.arange(len(keep))
        clients = [new_id[np.setdiff1d(np.asarray(p, dtype=np.int64), held)] for p in natural]
    keep_t, held_t = (torch.as_tensor(a, device=dataset.device) for a in (keep, held))
    pool = dict(x_train=dataset.x_train[keep_t], y_train=dataset.y_train[keep_t], client_indices=clients)
    train = dataclasses.replace(dataset, name=f"{dataset.name} (train)", **pool)
    validation = dataclasses.replace(dataset, name=f"{dataset.name} (validation)", x_test=dataset.x_train[held_t],
                                     y_test=dataset.y_train[held_t], **pool)
    return train, validation


# ------------------------------------------------------------------------------------------------------ seeds
def _partition_key(fed: Federation) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for part in fed.partition:
        digest.update(np.asarray(part, dtype=np.int64).tobytes() + b"|")
    return digest.hexdigest()


def _check_seeded(feds: Mapping[int, Federation], natural_clients: bool) -> None:
    """Each seed must reach the Federation (initial model, sampling) and, unless clients are natural, the partition."""
    for seed, fed in feds.items():
        if fed.seed != seed:
            raise ValueError(f"the federation for seed {seed} has seed={fed.seed}: build it with Federation(..., "
                             f"seed=seed) so the seed changes the initial model and the sampling")
    if natural_clients:
        return
    seen: dict[str, int] = {}
    for seed, fed in feds.items():
        other = seen.setdefault(_partition_key(fed), seed)
        if other != seed:
            raise ValueError(f"seeds {other} and {seed} give the same partition: pass the seed to the partitioner")


def federations(make: Callable[[int], Federation], seeds: Sequence[int] = SEEDS) -> dict[int, Federation]:
    """{seed: make(seed)}, checked: the seed must change the partition, the initial model and the sampling."""
    if len(set(seeds)) < len(seeds):
        raise ValueError(f"seeds must be distinct, got {list(seeds)}")
    feds = {seed: make(seed) for seed in seeds}
    _check_seeded(feds, natural_clients=all(f.dataset.client_indices is not None for f in feds.values()))
    return feds


# ---------------------------------------------------------------------------------------- one run, and a cache
@dataclass(frozen=True)
class RunConfig:
    """One training run: the task, the method and its step sizes, the seed and the length."""

    dataset: Dataset
    make_federation: MakeFederation
    algorithm: Factory  # called with server_lr when that is not None, else with no argument
    seed: int
    lr: float
    server_lr: float | None
    rounds: int
    label: str
    eval_every: int = 1

    def build(self) -> Algorithm:
        return self.algorithm() if self.server_lr is None else self.algorithm(self.server_lr)


_CACHE: dict[tuple, pd.DataFrame] = {}
_DATA_KEYS: "weakref.WeakKeyDictionary[Dataset, tuple]" = weakref.WeakKeyDictionary()


def clear_cache() -> None:
    """Forget every cached run."""
    _CACHE.clear()


def _describe(obj) -> str | None:
    """A full description of a configuration object, or None when its repr could hide a difference."""
    if type(obj).__repr__ is object.__repr__:
        return f"{type(obj).__qualname__}()" if not vars(obj) else None
    text = f"{type(obj).__module__}.{type(obj).__qualname__}:{obj!r}"
    if " at 0x" in text or "..." in text:
        return None
    for f in dataclasses.fields(obj) if dataclasses.is_dataclass(obj) else ():
        if f.repr:
            continue
        value = getattr(obj, f.name)  # a field the repr hides (FedLEx's guidance matrix): its bytes or no caching
        if isinstance(value, torch.Tensor):
            digest = hashlib.blake2b(value.detach().cpu().contiguous().numpy().tobytes(), digest_size=16).hexdigest()
            text += f"|{f.name}:{value.dtype}{tuple(value.shape)}:{digest}"
        elif value is None or isinstance(value, (bool, int, float, str)) or (
                isinstance(value, tuple) and all(isinstance(v, (bool, int, float, str)) for v in value)):
            text += f"|{f.name}:{value!r}"
        else:
            return None
    return text


def _data_key(dataset: Dataset) -> tuple:
    """A hash of the dataset's four tensors, remembered per dataset object (and refreshed after in-place edits)."""
    tensors = (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test)
    versions = tuple(t._version for t in tensors)
    known = _DATA_KEYS.get(dataset)
    if known is None or known[0] != versions:
        digest = hashlib.blake2b(digest_size=16)
        for t in tensors:
            digest.update(str((t.dtype, tuple(t.shape))).encode() + t.detach().cpu().contiguous().numpy().tobytes())
        known = _DATA_KEYS[dataset] = (versions, digest.hexdigest())
    return known[1]


def _run_key(config: RunConfig, fed: Federation, algorithm: Algorithm) -> tuple | None:
    """Everything that decides a run's numbers, as built; None (no caching) when some part cannot be described."""
    parts = [_describe(algorithm), _describe(fed.model), _describe(fed.participation), _describe(fed.channel),
             fed.executor_choice if isinstance(fed.executor_choice, str) else _describe(fed.executor_choice)]
    if any(p is None for p in parts):
        return None
    x0 = hashlib.blake2b(fed.initial_model().detach().cpu().numpy().tobytes(), digest_size=16).hexdigest()
    return (_data_key(fed.dataset), _partition_key(fed), x0, *parts, fed.seed, fed.lr, fed.local_steps,
            fed.local_epochs, fed.batch_size, fed.weight_decay, str(fed.device), fed.threads, config.rounds,
            config.eval_every)


def _built(config: RunConfig) -> tuple[Federation, Algorithm, tuple | None]:
    """The configuration's federation and method, checked, with its cache key."""
    fed = config.make_federation(config.dataset, config.seed, config.lr)
    if fed.seed != config.seed or fed.lr != config.lr:
        raise ValueError(f"make_federation(dataset, seed={config.seed}, lr={config.lr}) built a federation with "
                         f"seed={fed.seed}, lr={fed.lr}: pass both to Federation(...)")
    algorithm = config.build()
    return fed, algorithm, _run_key(config, fed, algorithm)


def _trained(fed: Federation, key: tuple | None, history: pd.DataFrame) -> pd.DataFrame:
    """A freshly trained history, marked with its partition and cached under `key` (None: not cached)."""
    history.attrs["partition"] = _partition_key(fed)
    if key is not None:
        _CACHE[key] = history
    return history


def _labelled(config: RunConfig, history: pd.DataFrame) -> pd.DataFrame:
    """A copy of a (possibly cached) history under the configuration's label, with its seed and step sizes."""
    attrs = dict(history.attrs)
    history = history.assign(algorithm=config.label, seed=config.seed, lr=config.lr, server_lr=config.server_lr)
    history.attrs = attrs
    return history


def run(config: RunConfig) -> pd.DataFrame:
    """Train one configuration (or return its cached history); `run_all` trains several in lockstep.

    The history gains the columns seed, lr and server_lr; a diverged run stops with a warning and keeps its
    rows (`attrs["diverged_at"]`). Runs are cached in this process, keyed by the built federation's full
    configuration (data, partition, initial model, seed, step sizes, participation, channel) and the method's
    fields; the label is not part of the key, so a control that equals a baseline reuses its run."""
    fed, algorithm, key = _built(config)
    history = _CACHE.get(key) if key is not None else None
    if history is None:
        history = _trained(fed, key, fed.run(algorithm, config.rounds, eval_every=config.eval_every, progress=False,
                                             on_divergence="stop", label=config.label))
    return _labelled(config, history)


def _train(configs: list[RunConfig],
           built: list[tuple[Federation, Algorithm, tuple | None]]) -> dict[int, pd.DataFrame]:
    """Train the configurations `run` would not find in its cache, each distinct run once: those of one task shape
    (`lockstep.shape_key`) together in lockstep, in groups that fit `lockstep.fits`, the rest one by one."""
    todo: dict[object, int] = {}  # a run's cache key (or its position, when it has none) -> its first config
    for i, (_, _, key) in enumerate(built):
        if key is None or key not in _CACHE:
            todo.setdefault(("uncached", i) if key is None else key, i)
    groups: dict[tuple, list[int]] = {}
    for i in todo.values():
        c, (fed, algorithm, _) = configs[i], built[i]
        shape = lockstep.shape_key(fed, algorithm) if LOCKSTEP else None
        group = ("alone", i) if shape is None else (id(c.dataset), c.rounds, c.eval_every, shape)
        groups.setdefault(group, []).append(i)
    trained = {}
    for members in groups.values():
        size = lockstep.fits(*built[members[0]][:2])
        for part in (members[k:k + size] for k in range(0, len(members), size)):
            c = configs[part[0]]
            if len(part) == 1:
                fed, algorithm, _ = built[part[0]]
                histories = [fed.run(algorithm, c.rounds, eval_every=c.eval_every, progress=False, on_divergence="stop",
                                     label=c.label)]
            else:
                histories = lockstep.lockstep([lockstep.Run(built[i][0], built[i][1], label=configs[i].label)
                                               for i in part], c.rounds, eval_every=c.eval_every, progress=False,
                                              on_divergence="stop")
            trained.update({i: _trained(built[i][0], built[i][2], h) for i, h in zip(part, histories)})
    return trained


def run_all(configs: Iterable[RunConfig]) -> list[pd.DataFrame]:
    """`run` for each configuration, the uncached ones trained together: seeds and grid points of one task shape
    advance in lockstep, their cohorts stacked like clients (the same histories as one by one, up to float rounding).
    Checks that the seed changes the partition of a task."""
    configs = list(configs)
    built = [_built(c) for c in configs]
    trained = _train(configs, built)
    histories = [_labelled(c, trained[i] if key is None else _CACHE[key])
                 for i, (c, (_, _, key)) in enumerate(zip(configs, built))]
    by_task: dict[tuple, dict[str, int]] = {}
    for c, h in zip(configs, histories):
        if c.dataset.client_indices is not None:
            continue
        seen = by_task.setdefault((id(c.dataset), c.make_federation, c.lr), {})
        other = seen.setdefault(h.attrs["partition"], c.seed)
        if other != c.seed:
            raise ValueError(f"seeds {other} and {c.seed} give the same partition: pass the seed to the partitioner")
    return histories


# ---------------------------------------------------------------------------------------------- fair tuning
def takes_server_lr(algorithm: Factory) -> bool:
    """Whether a method factory takes a server learning rate: a positional parameter without a default value.

    `lambda server_lr: FedAvg(server_lr=server_lr)` does; `lambda: FedProx(mu=0.01)` and the class `FedAvg` don't."""
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
               for p in inspect.signature(algorithm).parameters.values())


def default_score(history: pd.DataFrame) -> float:
    """Validation accuracy averaged over the last fifth of the rounds (at least one); -inf for a diverged run."""
    if history.attrs.get("diverged_at") is not None:
        return -math.inf
    return window_mean(history, "test_acc", last=max(1, int(history["round"].max()) // 5)).mean


@dataclass(frozen=True)
class Tuned:
    """The step sizes chosen for one method on the validation split, with every grid point's score."""

    name: str
    algorithm: Factory
    lr: float
    server_lr: float | None
    scores: pd.DataFrame  # one row per grid point: lr, server_lr, score (mean over tuning seeds), diverged (seeds)
    extended: tuple[str, ...] = ()  # grid extensions made because the best value sat at an edge
    at_edge: tuple[str, ...] = ()  # axes whose best value is still at the edge after the allowed extensions

    def build(self) -> Algorithm:
        """The method at its chosen server learning rate."""
        return self.algorithm() if self.server_lr is None else self.algorithm(self.server_lr)

    def summary(self) -> dict:
        """One row for a table of choices."""
        return {"method": self.name, "lr": self.lr, "server_lr": self.server_lr,
                "grid extended": "; ".join(self.extended) or "no", "still at edge": ", ".join(self.at_edge) or "no"}


def _best(scores: pd.DataFrame, grid: Mapping[str, list]) -> pd.Series:
    """The best grid point; among ties one off the edges, then the smallest step; the smallest if all diverged."""
    table = scores.assign(edge=sum(scores[a].isin([v[0], v[-1]]) for a, v in grid.items() if len(v) > 1))
    top = table[table.score == table.score.max()] if np.isfinite(table.score.max()) else table
    order = ["edge", "lr", "server_lr"] if np.isfinite(table.score.max()) else ["lr", "server_lr"]
    return top.sort_values(order).iloc[0]


def tune(dataset: Dataset, make_federation: MakeFederation, algorithm: Factory, *, rounds: int,
         lrs: Sequence[float] = LRS, server_lrs: Sequence[float] | None = SERVER_LRS, seeds: Sequence[int] = (0,),
         fraction: float = 0.2, score: Callable[[pd.DataFrame], float] = default_score, max_extensions: int = 2,
         name: str | None = None, eval_every: int = 1) -> Tuned:
    """Choose a method's local (and server) learning rate on validation splits of the training data.

    Every grid point runs on each tuning seed's `validation_split(dataset, fraction, seed)`; its score is the
    mean of `score` over those seeds. While the best point sits at an edge of an axis with two or more values,
    that axis grows by one geometric step beyond the edge, at most `max_extensions` times per axis; an axis
    still at its edge afterwards is recorded in `at_edge` with a warning. The server grid applies only to
    factories that take a server learning rate; `server_lrs=None` keeps their server step at 1."""
    if not lrs or (server_lrs is not None and not server_lrs):
        raise ValueError("lrs and server_lrs must hold at least one value each (server_lrs may be None)")
    if max_extensions < 0:
        raise ValueError(f"max_extensions must be >= 0, got {max_extensions}")
    name = name or str(algorithm(1.0) if takes_server_lr(algorithm) else algorithm())
    grid = {"lr": sorted(set(lrs)),
            "server_lr": ([None] if not takes_server_lr(algorithm) else [1.0] if server_lrs is None
                          else sorted(set(server_lrs)))}  # server_lrs=None: a server step of 1, not tuned
    splits = {seed: validation_split(dataset, fraction, seed)[1] for seed in seeds}
    rows: dict[tuple, dict] = {}
    extended, grown = [], {"lr": 0, "server_lr": 0}
    while True:
        todo = [(lr, s) for lr in grid["lr"] for s in grid["server_lr"] if (lr, s) not in rows]
        configs = [RunConfig(splits[seed], make_federation, algorithm, seed, lr, s, rounds, name, eval_every)
                   for lr, s in todo for seed in seeds]
        histories = iter(run_all(configs))
        for lr, s in todo:
            runs = [next(histories) for _ in seeds]
            rows[lr, s] = {"lr": lr, "server_lr": s, "score": float(np.mean([score(h) for h in runs])),
                           "diverged": sum(h.attrs.get("diverged_at") is not None for h in runs)}
        scores = pd.DataFrame(list(rows.values()))
        best = _best(scores, grid)
        at_edge, grew = [], False
        for axis, values in grid.items():
            if len(values) < 2 or best[axis] not in (values[0], values[-1]):
                continue
            if grown[axis] == max_extensions:
                at_edge.append(axis)
                continue
            low = best[axis] == values[0]
            new = values[0] ** 2 / values[1] if low else values[-1] ** 2 / values[-2]  # one geometric step further
            values.insert(0 if low else len(values), new)
            grown[axis] += 1
            extended.append(f"{axis} {'down' if low else 'up'} to {new:.3g}")
            grew = True
        if not grew:
            break
    if at_edge:
        warnings.warn(f"{name}: the best {' and '.join(at_edge)} is still at the edge of the grid after "
                      f"{max_extensions} extensions; widen the grid", RuntimeWarning, stacklevel=2)
    server_lr = None if pd.isna(best["server_lr"]) else float(best["server_lr"])
    return Tuned(name, algorithm, float(best["lr"]), server_lr,
                 scores.sort_values(["lr", "server_lr"], ignore_index=True), tuple(extended), tuple(at_edge))


# ------------------------------------------------------------------------------------------ step-size controls
def step_size_controls(momentum: float = 0.9) -> dict[str, Factory]:
    """The controls for a gain that could be a step size: FedAvg with a server learning rate, and FedAvgM."""
    return {"FedAvg (server lr)": lambda server_lr: FedAvg(server_lr=server_lr),
            f"FedAvgM ({momentum:g})": lambda server_lr: FedAvgM(server_lr=server_lr, momentum=momentum)}


def tuned_controls(dataset: Dataset, make_federation: MakeFederation, *, rounds: int, momentum: float = 0.9,
                   **tune_kwargs) -> dict[str, Tuned]:
    """`step_size_controls`, each tuned by `tune` on the same grid as the methods they control."""
    return {name: tune(dataset, make_federation, factory, rounds=rounds, name=name, **tune_kwargs)
            for name, factory in step_size_controls(momentum).items()}


# ---------------------------------------------------------------------------------------------- comparisons
def dirichlet_task(alpha: float = 0.5, n_clients: int = 10, local_steps: int = 5, batch_size: int = 32,
                   model: str = "mlp") -> MakeFederation:
    """The book's usual task as the protocol wants it: (dataset, seed, lr) -> `n_clients` clients from a
    Dirichlet(alpha) label split, each seed its own partition, initial model and sampling."""
    def make(dataset: Dataset, seed: int, lr: float) -> Federation:
        parts = partition("dirichlet", dataset.y_train, n_clients, seed=seed, alpha=alpha)
        return Federation(dataset, parts, model, local_steps=local_steps, batch_size=batch_size, lr=lr, seed=seed)
    return make


def with_channel(make_federation: MakeFederation, channel: Callable[[Federation], Channel]) -> MakeFederation:
    """The task of `make_federation` over another link: `channel(federation)` builds it afresh for every run, so
    a compressor (with its error-feedback memory) is compared as what it is, a channel, not an algorithm."""
    def make(dataset: Dataset, seed: int, lr: float) -> Federation:
        federation = make_federation(dataset, seed, lr)
        federation.channel = channel(federation)
        return federation
    return make


@dataclass(frozen=True)
class Comparison:
    """Methods tuned on validation splits, then run at their chosen step sizes on every seed (test set)."""

    history: pd.DataFrame  # all runs: one row per evaluation, with the columns algorithm, seed, lr, server_lr
    tuned: dict[str, Tuned]

    def difference(self, method: str, baseline: str, summary: Callable[[pd.DataFrame], float]) -> pd.Series:
        """summary(method) - summary(baseline) per seed."""
        return per_seed_difference(self.history, method, baseline, summary)

    def choices(self) -> pd.DataFrame:
        """The chosen step sizes of every method, with the grid extensions that were needed."""
        return pd.DataFrame([t.summary() for t in self.tuned.values()]).set_index("method")


def compare(dataset: Dataset, make_federation: MakeFederation, methods: Mapping[str, Factory], *, rounds: int,
            seeds: Sequence[int] = SEEDS, lrs: Sequence[float] = LRS, server_lrs: Sequence[float] | None = SERVER_LRS,
            grids: Mapping[str, Sequence[float]] | None = None, tune_rounds: int | None = None,
            tune_seeds: Sequence[int] = (0,), controls: bool = True, momentum: float = 0.9,
            fraction: float = 0.2, score: Callable[[pd.DataFrame], float] = default_score,
            max_extensions: int = 2, eval_every: int = 1, tasks: Mapping[str, MakeFederation] | None = None
            ) -> Comparison:
    """Tune every method (and, with controls=True, FedAvg with a server lr and FedAvgM) on the same grid, then run
    each at its choice on every seed of `dataset` (full training set, test set).

    `grids` gives a method a server grid of its own scale (FedAdam's eta ~ 0.01), to be kept the same size.
    `tasks` gives a method a federation of its own (`with_channel`: the same task over a compressed link), used for
    its tuning and its runs alike; the others, controls included, run on `make_federation`."""
    if len(seeds) < MIN_SEEDS:
        warnings.warn(f"{len(seeds)} seeds: every verdict will be inconclusive (a claim needs {MIN_SEEDS})",
                      RuntimeWarning, stacklevel=2)
    everything = dict(methods)
    if controls:
        everything.update({k: v for k, v in step_size_controls(momentum).items() if k not in everything})
    for option, names in (("grids", grids), ("tasks", tasks)):
        unknown = set(names or {}) - set(everything)
        if unknown:
            raise ValueError(f"{option} names methods that are not compared: {sorted(unknown)}")
    task = {name: (tasks or {}).get(name, make_federation) for name in everything}
    tuned = {name: tune(dataset, task[name], factory, rounds=tune_rounds or rounds, lrs=lrs,
                        server_lrs=(grids or {}).get(name, server_lrs), seeds=tune_seeds, fraction=fraction,
                        score=score, max_extensions=max_extensions, name=name, eval_every=eval_every)
             for name, factory in everything.items()}
    configs = [RunConfig(dataset, task[name], t.algorithm, seed, t.lr, t.server_lr, rounds, name, eval_every)
               for name, t in tuned.items() for seed in seeds]
    return Comparison(pd.concat(run_all(configs), ignore_index=True), tuned)


def compare_channels(dataset: Dataset, make_federation: MakeFederation,
                     channels: Mapping[str, Callable[[Federation], Channel] | None], *,
                     algorithm: Factory = FedAvg, controls: bool = False, **compare_kwargs) -> Comparison:
    """One algorithm over several links, by `compare`: each entry of `channels` (a builder `federation -> Channel`,
    or None for the task's own link) is a variant with its own task (`with_channel`), tuned on the same grid and run
    on the same seeds; without step-size controls by default, since every variant runs the same server rule."""
    tasks = {name: with_channel(make_federation, build) for name, build in channels.items() if build is not None}
    return compare(dataset, make_federation, dict.fromkeys(channels, algorithm), controls=controls, tasks=tasks,
                   **compare_kwargs)


# -------------------------------------------------------------------------------------------------- verdicts
def verdict(differences: Sequence[float] | pd.Series, claim: str = "greater", margin: float = 0.0) -> str:
    """"holds", "does not hold" or "inconclusive" for a claim about per-seed differences d = method - baseline.

    claim="greater" (the method is better by more than `margin`): with e_i = d_i - margin, mean e and standard
    deviation s (ddof=1) over the seeds, it holds when every e_i > 0 and mean e > s (the sign agrees on every seed
    and the effect exceeds its spread); it does not hold when no e_i > 0, or when mean e <= -s; otherwise it is
    inconclusive. claim="less" is the same for -d (e.g. rounds to a target, a loss). claim="within" (|d| <=
    margin, e.g. "the matched-step runs end within 0.015") holds when every |d_i| <= margin and |mean d| + s <=
    margin, does not hold when |mean d| - s > margin, else inconclusive. Fewer than MIN_SEEDS seeds, or any NaN
    (a run that never reached a target), is inconclusive."""
    if claim not in ("greater", "less", "within"):
        raise ValueError(f"claim must be 'greater', 'less' or 'within', got {claim!r}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    d = np.asarray(differences, dtype=float)
    if len(d) < MIN_SEEDS or not np.isfinite(d).all():
        return INCONCLUSIVE
    spread = d.std(ddof=1)
    if claim == "within":
        if (np.abs(d) <= margin).all() and abs(d.mean()) + spread <= margin:
            return HOLDS
        return FAILS if abs(d.mean()) - spread > margin else INCONCLUSIVE
    effect = (d if claim == "greater" else -d) - margin
    if (effect > 0).all() and effect.mean() > spread:
        return HOLDS
    if not (effect > 0).any() or effect.mean() <= -spread:
        return FAILS
    return INCONCLUSIVE


def claim_row(claim: str, paper: str, differences: Sequence[float] | pd.Series, *, kind: str = "greater",
              margin: float = 0.0, digits: int = 3, why: str = "") -> dict:
    """One row of a "paper vs this notebook" table: the claim, the paper's number, the measured per-seed
    difference as mean ± spread, and the verdict on it."""
    target = {"greater": f" (needs > {margin:g})", "less": f" (needs < {0.0 - margin:g})",
              "within": f" (needs |d| <= {margin:g})"}.get(kind, "")
    return {"claim": claim, "paper": paper,
            "this notebook": mean_spread(differences, digits, signed=True) + target,
            "verdict": verdict(differences, kind, margin), "why": why}


def claims_table(rows: Iterable[dict]) -> pd.DataFrame:
    """The "paper vs this notebook" table from `claim_row`s."""
    table = pd.DataFrame(list(rows), columns=["claim", "paper", "this notebook", "verdict", "why"])
    return table if table["why"].astype(bool).any() else table.drop(columns="why")


def window_claims(result: Comparison, claims: Iterable[tuple], *, last: int, column: str = "test_acc",
                  tolerance: float = 0.01) -> pd.DataFrame:
    """The claims table of (claim, paper, method, baseline, kind, margin) rows on a comparison's `column` over the
    last `last` evaluations, per-seed differences; a row on a method the comparison lacks is left out, and each
    row says whether both curves had flattened (else the claim holds at this budget, as speed)."""
    history, rows = result.history, []
    for claim, paper, method, baseline, kind, margin in claims:
        if not {method, baseline} <= set(history.algorithm):
            continue
        pair = history[history.algorithm.isin([method, baseline])]
        flat = per_run(pair, lambda h: is_flat(h, column, last=last, tolerance=tolerance)).all()
        end = int(history["round"].max())
        why = (f"{'test accuracy' if column == 'test_acc' else column} over rounds {end - last + 1}-{end}; "
               + ("both curves flat on every seed" if flat else "a curve still moves: a difference at this budget"))
        rows.append(claim_row(claim, paper, result.difference(method, baseline,
                                                              lambda h: window_mean(h, column, last=last).mean),
                              kind=kind, margin=margin, why=why))
    return claims_table(rows)
