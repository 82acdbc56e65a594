"""The task a Flower run trains, built from a flat config (Flower's `run_config`): dataset, partition, model,
local training, algorithm, seed. Both apps build it the same way, so every process holds the same shards."""
from __future__ import annotations

import functools
from typing import Mapping

from .. import algorithms
from ..algorithms.base import Algorithm
from ..data import load
from ..federation import Federation
from ..partition import dirichlet, iid

# Flower's config keys are kebab-case scalars; "algorithm-<field>" keys become the algorithm's hyperparameters.
DEFAULTS: dict[str, str | int | float] = {
    "dataset": "mnist1d", "clients": 100, "alpha": 0.5,  # alpha <= 0: IID shards, else Dirichlet(alpha) label skew
    "model": "mlp", "local-steps": 5, "batch-size": 32, "lr": 0.1, "clients-per-round": 10,
    "algorithm": "FedAvg", "rounds": 10, "seed": 0,
}
ALGORITHMS = {cls.name: cls for cls in (algorithms.FedAvg, algorithms.FedProx, algorithms.Scaffold,
                                        algorithms.FedAvgM, algorithms.FedAdam, algorithms.FedSpeed)}


def task_config(config: Mapping[str, object] | None = None) -> dict[str, object]:
    """DEFAULTS overridden by `config`; unknown keys are refused with the known ones named."""
    config = dict(config or {})
    unknown = [k for k in config if k not in DEFAULTS and not k.startswith("algorithm-") and k != "history"]
    if unknown:
        raise ValueError(f"unknown task settings {unknown}; known: {sorted(DEFAULTS)} and algorithm-<field>")
    return {**DEFAULTS, **config}


def build_algorithm(config: Mapping[str, object]) -> Algorithm:
    """The algorithm `config["algorithm"]` names, with its "algorithm-<field>" hyperparameters."""
    name = config["algorithm"]
    if name not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {sorted(ALGORITHMS)}, got {name!r}")
    prefix = "algorithm-"
    return ALGORITHMS[name](**{k[len(prefix):].replace("-", "_"): v for k, v in config.items()
                               if k.startswith(prefix)})


@functools.lru_cache(maxsize=4)
def _federation(items: tuple[tuple[str, object], ...], executor: str) -> Federation:
    c = dict(items)
    data = load(c["dataset"])
    alpha, n, seed = float(c["alpha"]), int(c["clients"]), int(c["seed"])
    parts = dirichlet(data.y_train, n, alpha, seed=seed) if alpha > 0 else iid(data.y_train, n, seed=seed)
    return Federation(data, parts, c["model"], local_steps=int(c["local-steps"]), batch_size=int(c["batch-size"]),
                      lr=float(c["lr"]), clients_per_round=int(c["clients-per-round"]), seed=seed, device="cpu",
                      executor=executor, batch_sampling="per_client")


def build_federation(config: Mapping[str, object], executor: str = "loop") -> Federation:
    """The in-process federation of the task (cached per process): per-client batches, on the CPU, run by the loop
    executor (as a Flower client trains: one at a time) unless `executor` says otherwise.

    A Flower client reproduces its batches from the round key alone (`Federation.client_batches`)."""
    keys = ("dataset", "clients", "alpha", "model", "local-steps", "batch-size", "lr", "clients-per-round", "seed")
    return _federation(tuple((k, config[k]) for k in keys), executor)
