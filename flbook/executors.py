"""Executors run one algorithm's `client_update` for a cohort of clients.

`LoopExecutor` trains clients one after another: the reference, and right for large models or algorithms
that cannot be batched. `BatchedExecutor` trains the whole cohort as one computation: client parameters
stacked along a leading client dimension and `client_update` mapped over it with `torch.func.vmap`.
Both see the same minibatches, so they give the same results up to float rounding. For Linear/ReLU models
under the default cross-entropy (the CPU's batched case) the batched executor backpropagates explicitly
(`BackpropContext`): the same bits as `torch.func.grad`, without its one-time set-up of about a second.

Unequal client dataset sizes: with `local_steps` every client takes K steps of B samples, walking through
a shuffle of its own shard and starting it again when the shard is shorter than K*B (so every batch has
the same shape). With `local_epochs` each client takes its own number of steps, ceil(E n_i / B); the
batched executor pads to the longest and masks the padding steps (`Batches.active`).

Lockstep runs (`flbook.lockstep`) stack several runs' cohorts into one: `Cohort.lr` gives each row its own local
learning rate and `Cohort.blocks` marks each run's rows, so a shared downlink is sent as one row per run and chunks
keep a run's clients together (a chunk inside one run computes exactly what that run alone would).
"""
from __future__ import annotations

import dataclasses
import functools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import nn

from . import validation as V
from .algorithms.base import Algorithm, Batches, LocalContext, Tensors, descend
from .models import cross_entropy, is_perceptron, log_softmax


@dataclass(frozen=True)
class Cohort:
    """The clients of one round and the samples each will use, as indices into the dataset on the device."""

    x: torch.Tensor  # (n, *input_shape), the whole training set
    y: torch.Tensor  # (n,)
    index: torch.Tensor  # (M, K, B) sample ids per client, local step and batch position
    steps: torch.Tensor | None = None  # (M,) real steps per client when they differ (epoch mode); None: all K
    lr: torch.Tensor | None = None  # (M,) local learning rate per client (lockstep runs); None: the context's
    # sizes of consecutive row blocks (one per lockstep run): a shared `down` then holds one row per block (G, ...)
    blocks: tuple[int, ...] | None = None

    @property
    def size(self) -> int:
        return self.index.shape[0]


def _rows(tensors: Tensors, rows: slice | int) -> Tensors:
    return {k: v[rows] for k, v in tensors.items()}


def _stack(parts: list[Tensors]) -> Tensors:
    return {k: torch.stack([p[k] for p in parts]) for k in parts[0]}


def _cat(parts: list[Tensors]) -> Tensors:
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def chunks(sizes: tuple[int, ...], chunk: int) -> list[slice]:
    """Row ranges of at most `chunk` rows over consecutive blocks of `sizes` rows: whole blocks are packed together,
    and a block is split only when it alone holds more than `chunk` rows (so a block's clients train as one cohort)."""
    out, start, end = [], 0, 0
    for size in sizes:
        if end > start and end - start + size > chunk:
            out.append(slice(start, end))
            start = end
        if size > chunk:
            out += [slice(a, min(a + chunk, end + size)) for a in range(end, end + size, chunk)]
            start = end + size
        end += size
    if end > start:
        out.append(slice(start, end))
    return out


# multiply-adds per local step (clients x batch x parameters) below which a cohort is not split over the cores: the
# extra chunk's per-op interpreter cost outweighs the second core (a 10-client digits logistic round: 2x slower
# split; a 10-client MNIST-1D MLP round, 16M multiply-adds: 20% faster split)
SHARE_WORK = 2**22


@functools.lru_cache(maxsize=None)
def _threads(workers: int) -> ThreadPoolExecutor:
    """A pool of `workers` threads for chunks (tensor ops release the interpreter lock while they compute)."""
    return ThreadPoolExecutor(workers, thread_name_prefix="flbook-chunks")


def _owners(cohort: Cohort) -> list[int] | None:
    """The block of each row (M,), or None when the cohort has no blocks."""
    return None if cohort.blocks is None else [g for g, n in enumerate(cohort.blocks) for _ in range(n)]


def _uses_cross_entropy(loss_fn) -> bool:
    """True when the local loss is the default mean cross-entropy (no method-specific term)."""
    return getattr(loss_fn, "__func__", None) is Algorithm.loss or loss_fn is cross_entropy


@dataclass(frozen=True)
class BackpropContext(LocalContext):
    """A `LocalContext` whose gradient is explicit backpropagation through Linear and ReLU layers.

    The same operations autograd runs for `torch.func.grad` of the mean cross-entropy (so the same bits), written
    as plain tensor functions: under `vmap` no autograd transform is involved. That removes the batched executor's
    one-time set-up (the first `torch.func.grad` imports torch._dynamo, about a second) and the transform's
    per-step overhead. Any other loss falls back to `LocalContext.grad`."""

    def grad(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not _uses_cross_entropy(self.loss_fn):
            return super().grad(theta, x, y)
        return self._flat(self._backprop(self.model.unflatten(theta), x, y))  # (P,)

    def sgd_step(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The step layer by layer, W_l - eta_l dW_l, so the flat gradient (P,) is never written (the same bits)."""
        if not _uses_cross_entropy(self.loss_fn):
            return super().sgd_step(theta, x, y)
        return self._flat(self._step(self.model.unflatten(theta), x, y))

    def sgd(self, theta: torch.Tensor, batches: Batches) -> torch.Tensor:
        """All K steps on the layers' own tensors, flattened once at the end (the same bits as K `sgd_step`s)."""
        if not _uses_cross_entropy(self.loss_fn):
            return super().sgd(theta, batches)
        params = self.model.unflatten(theta)
        for k in range(batches.n_steps):
            new = self._step(params, batches.x[k], batches.y[k])
            params = new if batches.active is None else {n: torch.where(batches.active[k], new[n], params[n])
                                                         for n in new}  # a padding step keeps the parameters
        return self._flat(params)

    def _step(self, params: Tensors, x: torch.Tensor, y: torch.Tensor) -> Tensors:
        grads = self._backprop(params, x, y)
        return {name: descend(params[name], grads[name], self.lr) for name in self.model.names}

    def _flat(self, params: Tensors) -> torch.Tensor:
        return torch.cat([params[name].reshape(-1) for name in self.model.names])  # (P,)

    def _backprop(self, params: Tensors, x: torch.Tensor, y: torch.Tensor) -> Tensors:
        """The gradient of each parameter (weight decay included), by name."""
        linears = [name for name, m in self.model.module.named_children() if isinstance(m, nn.Linear)]
        h = x.flatten(1)  # (B, D)
        inputs = []
        for i, name in enumerate(linears):  # forward: z_l = h_{l-1} W_l^T + b_l, h_l = relu(z_l)
            inputs.append(h)
            z = torch.addmm(params[f"{name}.bias"], h, params[f"{name}.weight"].t())  # (B, out_l)
            h = z.relu() if i + 1 < len(linears) else z
        # d mean CE / d logits = (softmax(z) - onehot(y)) / B, as autograd computes it through `models.log_softmax`,
        # whose kernel runs on the transposed view (classes along the first axis)
        d_log_p = torch.where(y[:, None] == torch.arange(h.shape[1], device=h.device), -1.0 / h.shape[0], 0.0)
        log_p = log_softmax(h).t()  # (C, B)
        dz = torch.ops.aten._log_softmax_backward_data(d_log_p.t(), log_p, 0, h.dtype).t()  # (B, C)
        grads = {}
        for i in reversed(range(len(linears))):  # backward: dW_l = dz_l^T h_{l-1}, db_l = sum_b dz_l
            name = linears[i]
            grads[f"{name}.weight"] = dz.t() @ inputs[i]  # (out_l, in_l)
            grads[f"{name}.bias"] = dz.sum(0)  # (out_l,)
            if i > 0:  # dz_{l-1} = dz_l W_l where h_{l-1} > 0: ReLU's backward, as autograd runs it
                dz = torch.ops.aten.threshold_backward(dz @ params[f"{name}.weight"], inputs[i], 0)  # (B, in_l)
        if self.weight_decay:
            grads = {name: g + self.weight_decay * params[name] for name, g in grads.items()}
        return grads


class LoopExecutor:
    """One client at a time: `client_update` on (P,) tensors, results stacked to (M, ...)."""

    name = "loop"

    def __call__(self, algo: Algorithm, down: Tensors, client_state: Tensors, cohort: Cohort, ctx: LocalContext,
                 down_per_client: bool = False) -> tuple[Tensors, Tensors]:
        ctx = dataclasses.replace(ctx, eager=True)
        owner = _owners(cohort)
        messages, states = [], []
        for m in range(cohort.size):
            n_steps = cohort.index.shape[1] if cohort.steps is None else int(cohort.steps[m])
            index = cohort.index[m, :n_steps]  # (K_m, B)
            batches = Batches(cohort.x[index], cohort.y[index])
            client_down = _rows(down, m) if down_per_client else down if owner is None else _rows(down, owner[m])
            client_ctx = ctx if cohort.lr is None else dataclasses.replace(ctx, lr=float(cohort.lr[m]))
            message, state = algo.client_update(client_down, _rows(client_state, m), batches, client_ctx)
            messages.append(message)
            states.append(state)
        return _stack(messages), (_stack(states) if client_state else {})


class BatchedExecutor:
    """The cohort at once: `vmap(client_update)` over chunks of clients, so memory stays bounded."""

    name = "batched"

    def __init__(self, chunk_size: int | None = None, memory_budget: int | None = None, workers: int | None = None):
        self.chunk_size = None if chunk_size is None else V.integer("chunk_size", chunk_size, 1)
        self.memory_budget = None if memory_budget is None else V.integer("memory_budget", memory_budget, 1)  # bytes
        self.workers = None if workers is None else V.integer("workers", workers, 1, 1024)

    def workers_for(self, cohort: Cohort, ctx: LocalContext) -> int:
        """CPU threads that train chunks side by side: the user's choice, else every core when each op runs on one
        thread (`Federation.thread_count`) and either the chunks are lockstep runs' or the gradient is the explicit
        backpropagation (`BackpropContext`: large tensor ops, little interpreter time per op, so threads do not
        wait on each other). Chunks are independent and give the same bits in any order. On an idle 2-core machine
        a 100-client MLP round of several chunks takes 0.65 of its one-thread time; when another process keeps the
        other core busy, about 1.1 of it (`python -m flbook.bench`)."""
        if self.workers is not None:
            return self.workers
        if cohort.x.device.type != "cpu" or torch.get_num_threads() > 1:
            return 1
        if cohort.blocks is None and not isinstance(ctx, BackpropContext):
            return 1
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    def chunk_for(self, cohort: Cohort, ctx: LocalContext) -> int:
        """Clients per chunk: the user's choice, else as many as fit the memory budget, and at most an equal share
        per core when chunks train on several cores and each share's step is large work (`SHARE_WORK`).

        On a GPU the budget is half the free memory. On a CPU it is 32 MiB, about a last-level cache: stacked
        per-client weights that spill out of it make every elementwise pass of a step run at memory speed and
        fault in fresh pages (the MNIST MLP at 100 clients: chunks of 8 take 10-30% less time per round than
        chunks of 23), while chunks that stay small keep the batching gain (`python -m flbook.bench`)."""
        if self.chunk_size is not None:
            return self.chunk_size
        budget = self.memory_budget
        if budget is None:
            if cohort.x.is_cuda:
                free, _ = torch.cuda.mem_get_info(cohort.x.device)
                budget = free // 2
            else:
                budget = 32 * 2**20
        batch = cohort.index.shape[2]
        # per client, about six parameter-sized tensors live in a step (parameters, gradient pieces and their flat
        # copy, the scaled step, the update, the message), plus forward and backward activations of a batch
        floats = 6 * ctx.model.n_params + 2 * batch * ctx.model.activations_per_sample(cohort.x[0])
        fit = max(1, min(cohort.size, budget // (4 * floats)))
        workers = self.workers_for(cohort, ctx)
        share = -(-cohort.size // workers)  # a small cohort of large steps still gives every core a share
        return min(fit, share) if workers > 1 and share * batch * ctx.model.n_params >= SHARE_WORK else fit

    @staticmethod
    def context_for(ctx: LocalContext) -> LocalContext:
        """The context clients train with: explicit backpropagation for a Linear/ReLU chain (`BackpropContext`);
        a subclass of `LocalContext` keeps its own gradient."""
        if is_perceptron(ctx.model.module) and type(ctx) is LocalContext:
            return BackpropContext(**{f.name: getattr(ctx, f.name) for f in dataclasses.fields(ctx)})
        return ctx

    def __call__(self, algo: Algorithm, down: Tensors, client_state: Tensors, cohort: Cohort, ctx: LocalContext,
                 down_per_client: bool = False) -> tuple[Tensors, Tensors]:
        n_steps = cohort.index.shape[1]
        ctx = self.context_for(ctx)

        def one_client(chunk_ctx, client_down, state, xb, yb, active, lr):
            client_ctx = chunk_ctx if lr is None else dataclasses.replace(chunk_ctx, lr=lr)  # lr: this client's row
            return algo.client_update(client_down, state, Batches(xb, yb, active), client_ctx)

        active_all = None
        if cohort.steps is not None:
            active_all = torch.arange(n_steps, device=cohort.index.device) < cohort.steps[:, None]  # (M, K)
        owner, lrs = _owners(cohort), None if cohort.lr is None else cohort.lr.tolist()

        def train(rows: slice) -> tuple[Tensors, Tensors]:
            index = cohort.index[rows]  # (m, K, B)
            active = None if active_all is None else active_all[rows]
            client_down, down_dim = (_rows(down, rows), 0) if down_per_client else (down, None)
            if owner is not None and not down_per_client:  # one downlink row per block: shared within the chunk's block
                first, last = owner[rows.start], owner[rows.stop - 1]
                client_down, down_dim = ((_rows(down, first), None) if first == last else
                                         (_rows(down, torch.as_tensor(owner[rows], device=index.device)), 0))
            chunk_ctx, lr = ctx, None
            if lrs is not None and len(set(lrs[rows])) == 1:  # one learning rate in the chunk: a plain float
                chunk_ctx = dataclasses.replace(ctx, lr=lrs[rows.start])
            elif lrs is not None:
                lr = cohort.lr[rows]  # (m,)
            in_dims = (down_dim, 0, 0, 0, None if active is None else 0, None if lr is None else 0)
            mapped = torch.func.vmap(functools.partial(one_client, chunk_ctx), in_dims=in_dims)
            return mapped(client_down, _rows(client_state, rows), cohort.x[index], cohort.y[index], active, lr)

        parts = chunks(cohort.blocks or (cohort.size,), self.chunk_for(cohort, ctx))
        workers = min(len(parts), self.workers_for(cohort, ctx))
        done = list(_threads(workers).map(train, parts)) if workers > 1 else [train(rows) for rows in parts]
        messages, states = [m for m, _ in done], [s for _, s in done]
        return _cat(messages), (_cat(states) if client_state else {})
