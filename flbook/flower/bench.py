"""Side by side: one FedAvg task in flbook, on Flower's Simulation Engine, in a hand-written PyTorch loop over
per-client `nn.Module` copies (one thread) and as centralized training over the same minibatches.

    python -m flbook.bench --flower            # in an environment with the extra: pip install -e '.[flower]'

The task is `task.DEFAULTS`: MNIST-1D, 100 clients from Dirichlet(0.5), the MLP, 5 local steps of batch 32, FedAvg.
Every way draws the same clients (the federation's participation model, seeded) and the same minibatches (the
per-client batch mode: one round key, then (key, client) alone), so the three FedAvg ways train the same model up
to float rounding; centralized training takes the round's M*K minibatches one after another in one module.
Start-up is the time from the call (the task built from scratch: data, partition, model, workers) to the end of
round 1; the round statistics are over rounds 2..R, each including the server-side evaluation.
"""
from __future__ import annotations

import copy
import statistics
import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from ..algorithms import FedAvg
from ..federation import Federation
from ..runtime import cpu_threads
from .apps import simulate
from .task import _federation, build_federation, task_config


def _row(way: str, config: dict, start: float, ends: list[float], accuracy: float) -> dict:
    """A table row from the call's start and the end time of each round."""
    rounds = np.diff(ends)  # rounds 2..R
    return {"way": way, "clients": config["clients"], "per_round": config["clients-per-round"],
            "startup_s": ends[0] - start, "round_median_s": statistics.median(rounds), "round_min_s": rounds.min(),
            "round_max_s": rounds.max(), "final_test_acc": accuracy}


def _rounds(fed: Federation, rounds: int):
    """(round, client ids (M,), sample ids (M, K, B)) drawn as `Federation.run` draws them in the per-client mode."""
    rng, generator = np.random.default_rng(fed.seed), torch.Generator().manual_seed(fed.seed)
    for t in range(1, rounds + 1):
        ids = torch.as_tensor(fed.participation.sample(t, fed.n_clients, rng))
        yield t, ids, fed.sample_batches(ids, None, generator)


def flbook_way(config: dict) -> dict:
    """flbook's Federation with its default executor choice (batched for the MLP)."""
    start = time.perf_counter()
    _federation.cache_clear()
    fed = build_federation(config, executor="auto")
    state, ends = fed.start(FedAvg()), []
    with cpu_threads(fed.thread_count()):
        for _ in range(config["rounds"]):
            fed.train_round(state)
            fed.evaluate(state.x)
            ends.append(time.perf_counter())
    return _row(f"flbook ({state.executor.name})", config, start, ends, fed.evaluate(state.x)["test_acc"])


def flower_way(config: dict) -> dict:
    """The same algorithm as a Flower app on the Simulation Engine (Ray), one virtual SuperNode per client."""
    start = time.perf_counter()
    _federation.cache_clear()
    strategy = simulate("ray", **config)
    ends = [strategy.started + row["wall_time"] for row in strategy.rows[1:]]
    return _row("Flower simulation (Ray)", config, start, ends, strategy.rows[-1]["test_acc"])


def module_loop_way(config: dict) -> dict:
    """What one writes by hand: for each sampled client a copy of the global nn.Module, SGD, then the average."""
    start = time.perf_counter()
    _federation.cache_clear()
    fed = build_federation(config)
    module, ends = copy.deepcopy(fed.model.module), []
    x = fed.initial_model()  # (P,)
    with cpu_threads(1):
        for _, ids, index in _rounds(fed, config["rounds"]):
            sizes = fed.client_sizes[ids].float()
            average = torch.zeros_like(x)
            for client_index, weight in zip(index, sizes / sizes.sum()):  # (K, B) each
                local = copy.deepcopy(module)
                vector_to_parameters(x.clone(), local.parameters())  # its own copy: the parameters become views
                optimizer = torch.optim.SGD(local.parameters(), lr=fed.lr)
                for batch in client_index:
                    optimizer.zero_grad(set_to_none=True)
                    F.cross_entropy(local(fed.x_train[batch]), fed.y_train[batch]).backward()
                    optimizer.step()
                average += weight * parameters_to_vector(local.parameters()).detach()
            x = average
            fed.evaluate(x)
            ends.append(time.perf_counter())
    return _row("PyTorch loop over nn.Module copies", config, start, ends, fed.evaluate(x)["test_acc"])


def centralized_way(config: dict) -> dict:
    """One module, one optimizer, the round's M*K minibatches in turn: the reference for speed, not for accuracy."""
    start = time.perf_counter()
    _federation.cache_clear()
    fed = build_federation(config)
    module, ends = copy.deepcopy(fed.model.module), []
    vector_to_parameters(fed.initial_model().clone(), module.parameters())
    optimizer = torch.optim.SGD(module.parameters(), lr=fed.lr)
    with cpu_threads(1):
        for _, _, index in _rounds(fed, config["rounds"]):
            for batch in index.reshape(-1, index.shape[-1]):  # (M*K, B)
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(module(fed.x_train[batch]), fed.y_train[batch]).backward()
                optimizer.step()
            fed.evaluate(parameters_to_vector(module.parameters()).detach())
            ends.append(time.perf_counter())
    accuracy = fed.evaluate(parameters_to_vector(module.parameters()).detach())["test_acc"]
    return _row("centralized SGD, same minibatches", config, start, ends, accuracy)


WAYS = {"flbook": flbook_way, "flower": flower_way, "loop": module_loop_way, "centralized": centralized_way}


def side_by_side(cohorts: tuple[tuple[int, int], ...] = ((10, 100), (100, 100)), rounds: int = 30, seed: int = 0,
                 ways: tuple[str, ...] = tuple(WAYS)) -> pd.DataFrame:
    """One row per (way, clients per round of clients): start-up, seconds per round, final accuracy."""
    rows = []
    for per_round, clients in cohorts:
        config = task_config({"clients": clients, "clients-per-round": per_round, "rounds": rounds, "seed": seed,
                              "algorithm": "FedAvg"})
        for way in ways:
            rows.append(WAYS[way](config))
            print(f"  {rows[-1]['way']:36s} {per_round:4d} of {clients:4d}: start-up {rows[-1]['startup_s']:6.2f} s, "
                  f"round {rows[-1]['round_median_s']:.3f} s, acc {rows[-1]['final_test_acc']:.3f}", flush=True)
    table = pd.DataFrame(rows)
    flower = table[table.way.str.startswith("Flower")].set_index(["per_round", "clients"]).round_median_s
    table["flower/this"] = [flower.get((r.per_round, r.clients), np.nan) / r.round_median_s
                            for r in table.itertuples()]
    return table
