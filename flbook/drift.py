"""Client drift: how far one round of local training moves each client from the global model, and apart.

With non-IID data every client descends its own objective, so the local updates Delta_i = y_i - x point
in different directions and partly cancel when averaged (Karimireddy et al., "SCAFFOLD", ICML 2020,
https://arxiv.org/abs/1910.06378, Sec. 3 calls this client drift). These helpers measure it for any
algorithm whose clients send an update `delta`.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .algorithms.base import Algorithm
from .federation import Federation
from .runtime import cpu_threads


def client_updates(fed: Federation, algorithm: Algorithm, theta: torch.Tensor,
                   clients: Sequence[int] | None = None, seed: int = 0) -> torch.Tensor:
    """Updates Delta_i = y_i - theta (M, P) of one round of `algorithm`'s local training from `theta`, per client.

    Clients start from the algorithm's initial server and client state (e.g. SCAFFOLD's zero control
    variates). `clients` lists the client ids (default: all); `seed` seeds the minibatches (the
    federation's round 1 uses `fed.seed`)."""
    ids = torch.arange(fed.n_clients) if clients is None else torch.as_tensor(clients, dtype=torch.long)
    ids = ids.to(fed.device)
    if ids.numel() == 0 or ids.min() < 0 or ids.max() >= fed.n_clients:
        raise ValueError(f"clients must be a non-empty list of ids in [0, {fed.n_clients}), got {ids.tolist()}")
    theta = theta.to(fed.device)
    generator = torch.Generator(device=fed.device).manual_seed(seed)
    steps = fed.steps_for(ids)
    down = algorithm.downlink(theta, algorithm.init_server_state(theta, fed.n_clients))
    state = {k: v.expand(len(ids), *v.shape) for k, v in algorithm.init_client_state(theta).items()}  # (M, ...)
    with cpu_threads(fed.thread_count()):
        messages, _ = fed.train_cohort(algorithm, down, fed.sample_batches(ids, steps, generator), steps, state)
    if "delta" not in messages:
        raise ValueError(f"algorithm must send an update 'delta'; {algorithm.name} sends {sorted(messages)}")
    return messages["delta"]


def drift(updates: torch.Tensor, weights: torch.Tensor | None = None) -> dict[str, float]:
    """Summaries of client updates (M, P) with weights p_i (default equal): how big they are and how much they disagree.

    update_norm = sum_i p_i ||Delta_i||, the mean distance a client moves from the global model;
    average_norm = ||Delta||, the length of the averaged update Delta = sum_i p_i Delta_i;
    drift = sum_i p_i ||Delta_i - Delta||^2 / sum_i p_i ||Delta_i||^2 in [0, 1], the share of the clients'
    update energy that averaging cancels (0: all clients agree; near 1: their updates mostly cancel);
    cosine = sum_i p_i cos(Delta_i, Delta), how well each client's direction matches the average."""
    if updates.ndim != 2 or len(updates) == 0:
        raise ValueError(f"updates must have shape (M, P) with M >= 1, got {tuple(updates.shape)}")
    updates = updates.double()
    p = torch.full((len(updates),), 1.0 / len(updates), dtype=torch.double, device=updates.device) if weights is None \
        else weights.to(updates).div(weights.sum())  # (M,)
    mean = p @ updates  # (P,)
    norms = updates.norm(dim=1)  # (M,)
    spread = p @ (updates - mean).square().sum(1)
    energy = p @ norms.square()
    cosine = p @ (updates @ mean / (norms * mean.norm()).clamp_min(1e-12))
    return {"update_norm": float(p @ norms), "average_norm": float(mean.norm()),
            "drift": float(spread / energy.clamp_min(1e-24)), "cosine": float(cosine)}
