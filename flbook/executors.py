"""Executors run one algorithm's `client_update` for a cohort of clients.

`LoopExecutor` trains clients one after another: the reference, and right for large models or algorithms
that cannot be batched. `BatchedExecutor` trains the whole cohort as one computation: client parameters
stacked along a leading client dimension and `client_update` mapped over it with `torch.func.vmap`.
Both see the same minibatches, so they give the same results up to float rounding.

Unequal client dataset sizes: with `local_steps` every client takes K steps of B samples, walking through
a shuffle of its own shard and starting it again when the shard is shorter than K*B (so every batch has
the same shape). With `local_epochs` each client takes its own number of steps, ceil(E n_i / B); the
batched executor pads to the longest and masks the padding steps (`Batches.active`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from . import validation as V
from .algorithms.base import Algorithm, Batches, LocalContext, Tensors


@dataclass(frozen=True)
class Cohort:
    """The clients of one round and the samples each will use, as indices into the dataset on the device."""

    x: torch.Tensor  # (n, *input_shape), the whole training set
    y: torch.Tensor  # (n,)
    index: torch.Tensor  # (M, K, B) sample ids per client, local step and batch position
    steps: torch.Tensor | None = None  # (M,) real steps per client when they differ (epoch mode); None: all K

    @property
    def size(self) -> int:
        return self.index.shape[0]


def _rows(tensors: Tensors, rows: slice | int) -> Tensors:
    return {k: v[rows] for k, v in tensors.items()}


def _stack(parts: list[Tensors]) -> Tensors:
    return {k: torch.stack([p[k] for p in parts]) for k in parts[0]}


def _cat(parts: list[Tensors]) -> Tensors:
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


class LoopExecutor:
    """One client at a time: `client_update` on (P,) tensors, results stacked to (M, ...)."""

    name = "loop"

    def __call__(self, algo: Algorithm, down: Tensors, client_state: Tensors, cohort: Cohort, ctx: LocalContext,
                 down_per_client: bool = False) -> tuple[Tensors, Tensors]:
        ctx = dataclasses.replace(ctx, eager=True)
        messages, states = [], []
        for m in range(cohort.size):
            n_steps = cohort.index.shape[1] if cohort.steps is None else int(cohort.steps[m])
            index = cohort.index[m, :n_steps]  # (K_m, B)
            batches = Batches(cohort.x[index], cohort.y[index])
            client_down = _rows(down, m) if down_per_client else down
            message, state = algo.client_update(client_down, _rows(client_state, m), batches, ctx)
            messages.append(message)
            states.append(state)
        return _stack(messages), (_stack(states) if client_state else {})


class BatchedExecutor:
    """The cohort at once: `vmap(client_update)` over chunks of clients, so memory stays bounded."""

    name = "batched"

    def __init__(self, chunk_size: int | None = None, memory_budget: int | None = None):
        self.chunk_size = None if chunk_size is None else V.integer("chunk_size", chunk_size, 1)
        self.memory_budget = None if memory_budget is None else V.integer("memory_budget", memory_budget, 1)  # bytes

    def chunk_for(self, cohort: Cohort, ctx: LocalContext) -> int:
        """Clients per chunk: the user's choice, else as many as fit the memory budget.

        On a GPU the budget is half the free memory. On a CPU it is 64 MiB: stacked per-client weights
        that spill out of the caches make a batched step slower than a loop over clients (measured by
        `python -m flbook.bench`), while chunks that stay small keep the batching gain."""
        if self.chunk_size is not None:
            return self.chunk_size
        budget = self.memory_budget
        if budget is None:
            if cohort.x.is_cuda:
                free, _ = torch.cuda.mem_get_info(cohort.x.device)
                budget = free // 2
            else:
                budget = 64 * 2**20
        batch = cohort.index.shape[2]
        # per client: its parameters, gradient and update, plus forward and backward activations of a batch
        floats = 3 * ctx.model.n_params + 2 * batch * ctx.model.activations_per_sample(cohort.x[0])
        return max(1, min(cohort.size, budget // (4 * floats)))

    def __call__(self, algo: Algorithm, down: Tensors, client_state: Tensors, cohort: Cohort, ctx: LocalContext,
                 down_per_client: bool = False) -> tuple[Tensors, Tensors]:
        n_steps = cohort.index.shape[1]

        def one_client(client_down, state, xb, yb, active):
            return algo.client_update(client_down, state, Batches(xb, yb, active), ctx)

        active_all = None
        if cohort.steps is not None:
            active_all = torch.arange(n_steps, device=cohort.index.device) < cohort.steps[:, None]  # (M, K)
        in_dims = (0 if down_per_client else None, 0, 0, 0, None if active_all is None else 0)
        mapped = torch.func.vmap(one_client, in_dims=in_dims)
        chunk = self.chunk_for(cohort, ctx)
        messages, states = [], []
        for start in range(0, cohort.size, chunk):
            rows = slice(start, start + chunk)
            index = cohort.index[rows]  # (m, K, B)
            active = None if active_all is None else active_all[rows]
            client_down = _rows(down, rows) if down_per_client else down
            message, state = mapped(client_down, _rows(client_state, rows), cohort.x[index], cohort.y[index], active)
            messages.append(message)
            states.append(state)
        return _cat(messages), (_cat(states) if client_state else {})
