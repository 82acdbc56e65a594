"""The server-based federation: client shards on the device, the round loop, evaluation and the history.

The federation knows nothing about any particular algorithm. Each round it samples clients, sends them
`algorithm.downlink(...)` over the channel, lets an executor run `algorithm.client_update` for the cohort,
carries the messages back and calls `algorithm.aggregate`. Every algorithm run by one federation sees the
same initial model, the same sampled clients and the same minibatches (all drawn from `seed`).
"""
from __future__ import annotations

import math
import numbers
import os
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from . import validation as V
from .algorithms.base import Algorithm, LocalContext, RoundInfo, Tensors
from .attacks import Adversary, flip_labels
from .channel import Channel, delivered
from .data import Dataset
from .executors import BatchedExecutor, Cohort, LoopExecutor
from .history import row as history_row
from .models import MODELS, FlatModel, cross_entropy, make_model
from .participation import Participation, Uniform
from .rounds import (ClientStates, RunState, check_algorithm, check_run, report_attack, report_divergence,
                     report_empty_rounds, train_rounds)
from .runtime import cpu_threads, resolve_device

EXECUTORS = ("auto", "loop", "batched")
BATCHED_ON_CPU = ("logistic", "mlp", "vit", "pretrained vit")  # model kinds `executor_for` batches on a CPU
BATCH_SAMPLING = ("cohort", "per_client")
# an extra history metric: metric(federation, theta) -> {column: value}, evaluated with test_acc at every evaluation
Metric = Callable[["Federation", torch.Tensor], Mapping[str, float]]
_GOLDEN = -0x61C8864680B583EB  # 0x9E3779B97F4A7C15, the 64-bit golden ratio, as a signed int64


def _mix64(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser on int64 tensors (wrapping products, logical shifts): a counter-based hash."""
    for shift, factor in ((30, -0x40A7B892E31B1A47), (27, -0x6B2FB644ECCEEE15)):  # 0xbf58476d1ce4e5b9, 0x94d049bb133111eb
        z = (z ^ ((z >> shift) & ((1 << (64 - shift)) - 1))) * factor
    return z ^ ((z >> 31) & ((1 << 33) - 1))


def _participation(participation: float | Participation, clients_per_round: int | None, n_clients: int) -> Participation:
    """The participation model the arguments describe, checked against the number of clients now, not at run time."""
    if clients_per_round is not None:
        if not (isinstance(participation, numbers.Real) and participation == 1.0):
            raise ValueError(f"give participation or clients_per_round, not both; got participation={participation!r} "
                             f"and clients_per_round={clients_per_round!r}")
        model: Participation = Uniform(count=V.integer("clients_per_round", clients_per_round, 1, n_clients))
    elif isinstance(participation, numbers.Real) and not isinstance(participation, bool):
        model = Uniform(fraction=V.probability("participation", participation, zero=False))
    elif callable(getattr(participation, "sample", None)) and callable(getattr(participation, "probabilities", None)):
        model = participation
    else:
        raise TypeError(f"participation must be a fraction in (0, 1] or a participation model such as Bernoulli, "
                        f"got {participation!r}")
    try:
        model.probabilities(n_clients)  # raises when the model does not fit n_clients
    except ValueError as err:
        raise ValueError(f"participation={model!r} does not fit {n_clients} clients: {err}") from err
    return model


class Federation:
    """A federated task: data split over clients, a model, local-training settings and a round loop."""

    def __init__(self, dataset, partition: Sequence[np.ndarray] | None = None, model: FlatModel | str = "mlp", *,
                 local_steps: int = 5, local_epochs: float | None = None, batch_size: int = 32, lr: float = 0.1,
                 weight_decay: float = 0.0, participation: float | Participation = 1.0,
                 clients_per_round: int | None = None, seed: int = 0, device: str | torch.device | None = None,
                 executor: str | LoopExecutor | BatchedExecutor = "auto", channel: Channel | None = None,
                 threads: int | str | None = "auto", batch_sampling: str = "cohort",
                 metrics: Sequence[Metric] = ()):
        if not isinstance(dataset, Dataset):
            raise TypeError(f"dataset must be a flbook.data.Dataset (e.g. load('digits')), got {type(dataset).__name__}")
        # A round draws clients x steps x batch_size <= V.MAX_SAMPLES_DRAWN ids (see _check_round_size), which
        # bounds each of these on its own too: refused here first, with the parameter's name.
        local_steps = V.integer("local_steps", local_steps, 1, V.MAX_SAMPLES_DRAWN)
        batch_size = V.integer("batch_size", batch_size, 1, V.MAX_SAMPLES_DRAWN)
        lr = V.positive("lr", lr)
        local_epochs = None if local_epochs is None else V.in_range("local_epochs", local_epochs, 0,
                                                                    V.MAX_SAMPLES_DRAWN, lo_inclusive=False)
        weight_decay = V.non_negative("weight_decay", weight_decay)
        seed = V.seed(seed)
        if threads not in ("auto", None):
            threads = V.integer("threads", threads, 1, os.cpu_count() or 1)
        if isinstance(executor, str):
            V.choice("executor", executor, EXECUTORS)
        elif not callable(executor):
            raise TypeError(f"executor must be one of {EXECUTORS} or an executor object, got {executor!r}")
        self.batch_sampling = V.choice("batch_sampling", batch_sampling, BATCH_SAMPLING)
        if not isinstance(metrics, (list, tuple)) or not all(callable(m) for m in metrics):
            raise TypeError(f"metrics must be a list of functions metric(federation, theta) -> dict, got {metrics!r}")
        self.metrics = tuple(metrics)  # extra history columns, e.g. fal.RobustAccuracy(epsilon)'s robust_acc
        if channel is not None and not isinstance(channel, Channel):
            raise TypeError(f"channel must be a flbook.channel.Channel or None, got {type(channel).__name__}")
        self.device = resolve_device(device)
        if self.device.type == "meta":
            raise ValueError("device='meta' holds no data to train on; use 'cpu' or 'cuda'")
        self.dataset = dataset
        parts = dataset.client_indices if partition is None else partition
        if parts is None:
            raise ValueError(f"partition is required: dataset {dataset.name!r} has no natural client split")
        self._set_partition(parts, len(dataset.y_train))
        if len(dataset.y_test) == 0:
            raise ValueError(f"dataset {dataset.name!r} has no test samples to evaluate on")
        if isinstance(model, str):
            model = make_model(model, dataset.input_shape, dataset.n_classes)
        elif not isinstance(model, FlatModel):
            raise TypeError(f"model must be one of {MODELS} or a FlatModel, got {type(model).__name__}")
        self.model = model.to(self.device)
        self.local_steps, self.local_epochs, self.batch_size = local_steps, local_epochs, batch_size
        self.lr, self.weight_decay, self.seed = lr, weight_decay, seed
        self.participation = _participation(participation, clients_per_round, self.n_clients)
        self.channel = channel or Channel()
        self.executor_choice = executor
        self.final_models: dict[str, torch.Tensor] = {}  # label -> parameters after its last run
        self.threads = threads
        self._check_round_size()
        # Data moves to the device once; rounds only index these tensors.
        self.x_train = dataset.x_train.to(self.device)
        self.y_train = dataset.y_train.to(self.device)
        self.x_test = dataset.x_test.to(self.device)
        self.y_test = dataset.y_test.to(self.device)
        self._check_model_fits()

    def _set_partition(self, parts: Sequence[np.ndarray], n_samples: int) -> None:
        """Check the partition once: integer indices in range, no empty client, no sample held twice."""
        if isinstance(parts, (str, bytes, dict)) or not isinstance(parts, Iterable):
            raise TypeError(f"partition must be a list of index arrays, one per client, got {parts!r}")
        parts = [V.index_array(f"partition[{k}]", p, n_samples) for k, p in enumerate(parts)]
        if len(parts) == 0:
            raise ValueError("partition must hold at least one client")
        sizes = np.array([len(p) for p in parts])
        if (sizes == 0).any():
            raise ValueError(f"partition must give every client at least one sample; partition[{int(np.argmin(sizes))}] "
                             f"is empty")
        order = np.concatenate(parts)
        held = np.bincount(order, minlength=n_samples)
        if (held > 1).any():
            sample = int(np.argmax(held > 1))
            owners = [k for k, p in enumerate(parts) if (p == sample).any()]
            raise ValueError(f"partition must hold each sample at most once; sample {sample} is held "
                             f"{int(held[sample])} times, by clients {owners}")
        self.partition = parts
        self.n_clients = len(parts)
        device = self.device
        self.client_sizes = torch.as_tensor(sizes, device=device)  # (N,)
        self._order = torch.as_tensor(order, device=device)  # client shards, concatenated
        self._offsets = torch.as_tensor(np.concatenate([[0], np.cumsum(sizes)[:-1]]), device=device)  # (N,)

    def _check_round_size(self) -> None:
        """A round draws at most V.MAX_SAMPLES_DRAWN sample ids (M, K, B): refuse settings that would exhaust memory."""
        largest = int(self.client_sizes.max())
        steps = self.local_steps if self.local_epochs is None else math.ceil(self.local_epochs * largest / self.batch_size)
        drawn = self.n_clients * steps * self.batch_size
        if drawn > V.MAX_SAMPLES_DRAWN:
            raise ValueError(f"a round would draw up to {drawn:.3g} samples ({self.n_clients} clients x {steps} local "
                             f"steps x batch_size={self.batch_size}), more than {V.MAX_SAMPLES_DRAWN:.0e}; lower "
                             f"local_steps, local_epochs or batch_size")

    def _check_model_fits(self) -> None:
        """One forward pass on a training sample: the model must take the inputs and give one logit per class."""
        theta = self.initial_model()
        try:
            with torch.no_grad():
                logits = self.model(theta, self.x_train[:1])
        except RuntimeError as err:
            raise ValueError(f"model {self.model} does not fit the data: inputs of shape {self.dataset.input_shape} "
                             f"give: {str(err).splitlines()[0]}") from err
        if tuple(logits.shape) != (1, self.dataset.n_classes):
            raise ValueError(f"model {self.model} must give one logit per class ({self.dataset.n_classes}), "
                             f"got outputs of shape {tuple(logits.shape[1:])}")

    # ----------------------------------------------------------------------------------- one round's pieces
    def steps_for(self, clients: torch.Tensor) -> torch.Tensor | None:
        """Local steps per sampled client: None when all take `local_steps`, else ceil(E n_i / B) each."""
        if self.local_epochs is None:
            return None
        sizes = self.client_sizes[clients].double()
        return torch.ceil(self.local_epochs * sizes / self.batch_size).long().clamp(min=1)

    def sample_batches(self, clients: torch.Tensor, steps: torch.Tensor | None,
                       generator: torch.Generator) -> torch.Tensor:
        """Sample ids (M, K, B): each client walks through a fresh shuffle of its shard, wrapping around.

        Within a round a client sees each of its samples once before any repeats (an epoch-like pass);
        clients with fewer than K*B samples start the same shuffle again. With batch_sampling="cohort" the
        cohort's shuffles come from one draw of `generator`, so a client's batches depend on who else was sampled;
        with "per_client" the call draws one round key from `generator` and each client's shuffle depends on
        (round key, client) only (`client_batches`), as a client on its own device can reproduce it."""
        if self.batch_sampling == "per_client":
            key = int(torch.randint(-2**63, 2**63 - 1, (), generator=generator, device=generator.device))
            return self.client_batches(clients, steps, key)
        sizes = self.client_sizes[clients]  # (M,)
        keys = torch.rand(len(clients), int(sizes.max()), generator=generator, device=self.device)  # (M, n_max)
        return self._walk(clients, steps, keys, 2.0)

    def client_batches(self, clients: torch.Tensor, steps: torch.Tensor | None, key: int) -> torch.Tensor:
        """Sample ids (M, K, B) of the per-client mode: client i's shuffle sorts its positions j by
        hash(hash(key + i * golden) + j * golden), so its batches are the same whoever else is sampled."""
        clients = clients.to(self.device)
        width = int(self.client_sizes[clients].max())
        client_key = _mix64(clients.long() * _GOLDEN + key)  # (M,)
        keys = _mix64(client_key[:, None] + torch.arange(width, device=self.device) * _GOLDEN)  # (M, n_max)
        return self._walk(clients, steps, keys, torch.iinfo(torch.long).max)

    def _walk(self, clients: torch.Tensor, steps: torch.Tensor | None, keys: torch.Tensor,
              past_end: float | int) -> torch.Tensor:
        """Sample ids (M, K, B) from sort keys (M, n_max): positions past a client's size get `past_end` (last)."""
        n_steps = self.local_steps if steps is None else int(steps.max())
        sizes = self.client_sizes[clients]  # (M,)
        keys.masked_fill_(torch.arange(keys.shape[1], device=self.device) >= sizes[:, None], past_end)
        shuffle = keys.argsort(dim=1, stable=True)  # (M, n_max), a client's own positions come first
        slot = torch.arange(n_steps * self.batch_size, device=self.device)  # (K*B,)
        position = shuffle.gather(1, slot[None, :] % sizes[:, None])  # (M, K*B)
        index = self._order[self._offsets[clients][:, None] + position]
        return index.view(len(clients), n_steps, self.batch_size)  # (M, K, B)

    def executor_for(self, algorithm: Algorithm) -> LoopExecutor | BatchedExecutor:
        """The executor to use: the user's choice, else the faster one for this model and device.

        Measured by `python -m flbook.bench`: on a GPU batching wins for every model; on a CPU it wins for
        logistic regression and MLPs (in cache-sized chunks of clients) and is at least even for the tiny
        ViT, whose many small ops merge across clients (FedAvg 1.0-1.1x at 10-50 clients per round; chapter 60's
        split steps, run through torch.func either way, about 1.5x), but not for the CNN, whose
        convolutions are already large per client."""
        choice = self.executor_choice
        if not isinstance(choice, str):
            return choice
        if choice == "loop":
            return LoopExecutor()
        if choice == "batched":
            if not algorithm.batchable:
                raise ValueError(f"{algorithm.name} cannot run under the batched executor; use executor='loop'")
            return BatchedExecutor()
        if choice != "auto":
            raise ValueError(f"executor must be 'auto', 'loop', 'batched' or an executor object, got {choice!r}")
        fast = self.device.type == "cuda" or self.model.kind in BATCHED_ON_CPU
        return BatchedExecutor() if algorithm.batchable and fast else LoopExecutor()

    def thread_count(self) -> int | None:
        """Intra-op CPU threads for training: one for small models (threads only add overhead there)."""
        if self.threads != "auto":
            return self.threads
        if self.device.type != "cpu":
            return None
        return 1 if self.model.n_params < 500_000 else None

    # ------------------------------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def _predict(self, theta: torch.Tensor, x: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
        return torch.cat([self.model(theta, x[i:i + chunk]) for i in range(0, len(x), chunk)])

    @torch.no_grad()
    def evaluate(self, theta: torch.Tensor) -> dict[str, float]:
        """Global test accuracy and loss of parameters `theta`."""
        logits = self._predict(theta, self.x_test)
        loss = cross_entropy(logits, self.y_test).item()
        acc = (logits.argmax(1) == self.y_test).float().mean().item()
        return {"test_acc": acc, "test_loss": loss}

    def scores(self, theta: torch.Tensor) -> dict[str, float]:
        """What a history row records of `theta`, in every round loop: `evaluate`, then each of `metrics`."""
        scores = self.evaluate(theta)
        for metric in self.metrics:
            scores.update(metric(self, theta))
        return scores

    @torch.no_grad()
    def client_accuracy(self, theta: torch.Tensor) -> np.ndarray:
        """Accuracy of `theta` on each client's own training data, shape (N,)."""
        correct = (self._predict(theta, self.x_train[self._order]).argmax(1) == self.y_train[self._order]).double()
        owner = torch.repeat_interleave(torch.arange(self.n_clients, device=self.device), self.client_sizes)
        hits = torch.zeros(self.n_clients, dtype=torch.double, device=self.device).index_add_(0, owner, correct)
        return (hits / self.client_sizes).cpu().numpy()

    def initial_model(self) -> torch.Tensor:
        """x^0, the same for every algorithm run on this federation."""
        return self.model.init(self.seed, self.device)

    def context(self, algorithm: Algorithm) -> LocalContext:
        """What `algorithm`'s clients know while training: this federation's model, learning rate and loss."""
        return LocalContext(self.model, self.lr, self.weight_decay, algorithm.loss)

    # ---------------------------------------------------------------------------------------- the round loop
    def start(self, algorithm: Algorithm, channel: Channel | None = None,
              adversary: Adversary | None = None) -> RunState:
        """Round 0 of a run over `channel` (default: the federation's), attacked by `adversary` if given: x^0, the
        algorithm's initial states, the channel's memory cleared, the Byzantine clients drawn, seeded generators."""
        channel = self.channel if channel is None else channel
        channel.reset()
        x = self.initial_model()
        byzantine = None if adversary is None else adversary.clients(self.n_clients).to(self.device)
        return RunState(algorithm=algorithm, channel=channel, executor=self.executor_for(algorithm),
                        ctx=self.context(algorithm), x=x, adversary=adversary, byzantine=byzantine,
                        y_train=self.poisoned_labels(adversary, byzantine),
                        server_state=algorithm.init_server_state(x, self.n_clients),
                        client_state=ClientStates(algorithm.init_client_state(x), self.n_clients, self.device),
                        rng=np.random.default_rng(self.seed),  # client sampling and channel randomness
                        generator=torch.Generator(device=self.device).manual_seed(self.seed))  # minibatches

    def poisoned_labels(self, adversary: Adversary | None, byzantine: torch.Tensor | None) -> torch.Tensor:
        """The training labels as the clients hold them: under label flipping the Byzantine clients' shards carry
        (C - 1) - y (`attacks.flip_labels`); otherwise the dataset's labels (the same tensor, not a copy)."""
        if adversary is None or not adversary.attack.poisons_data or len(byzantine) == 0:
            return self.y_train
        owner = torch.repeat_interleave(torch.arange(self.n_clients, device=self.device), self.client_sizes)  # (n,)
        owned = self._order[torch.isin(owner, byzantine)]  # the sample ids the Byzantine clients hold
        y = self.y_train.clone()
        y[owned] = flip_labels(y[owned], self.dataset.n_classes)  # (n,)
        return y

    def broadcast(self, state: RunState, ids: torch.Tensor) -> tuple[Tensors, torch.Tensor]:
        """Send the current `downlink` to clients `ids` over the channel: (what arrived, the ids it reached).

        What arrived is one shared message, or one row per receiver (M, ...) when the channel's `down_per_client`."""
        down, bits = state.channel.downlink(state.algorithm.downlink(state.x, state.server_state), len(ids), state.rng)
        state.bits_down += bits
        return delivered(down, ids)

    def collect(self, state: RunState, ids: torch.Tensor, down: Tensors, *, down_per_client: bool | None = None,
                executor: LoopExecutor | BatchedExecutor | None = None) -> tuple[Tensors, torch.Tensor]:
        """Train clients `ids` from what they received and send their messages up: (what arrived, its senders).

        `down` holds one row per client when `down_per_client` (default: as the channel delivers it). Client
        states are written back for every client that trained, whether or not its message then arrives."""
        steps = self.steps_for(ids)
        per_client = state.channel.down_per_client if down_per_client is None else down_per_client
        index = self.sample_batches(ids, steps, state.generator)  # (M, K, B)
        messages, client_state = self.train_cohort(state.algorithm, down, index, steps, state.client_state.get(ids),
                                                   per_client, executor or state.executor, state.ctx, state.y_train)
        return self.send_up(state, ids, messages, client_state)

    def send_up(self, state: RunState, ids: torch.Tensor, messages: Tensors,
                client_state: Tensors) -> tuple[Tensors, torch.Tensor]:
        """After clients `ids` trained: store their new states, carry their messages (M, ...) up over the channel and
        let the adversary replace the Byzantine ones: (what the server holds, its senders)."""
        if client_state:
            state.client_state.put(ids, client_state)
        messages, bits = state.channel.uplink(messages, state.rng, clients=ids)
        state.bits_up += bits
        messages, ids = delivered(messages, ids)
        attacked = state.adversary is not None and not state.adversary.attack.poisons_data
        return (self.corrupt(state, messages, ids) if attacked else messages), ids

    def corrupt(self, state: RunState, messages: Tensors, ids: torch.Tensor) -> Tensors:
        """What the server holds once the round's Byzantine senders have replaced their messages by the adversary's,
        each crafted from the honest messages that arrived (every floating message (M, P) of the algorithm)."""
        bad = torch.isin(ids, state.byzantine)  # (M,)
        f = int(bad.sum())
        if f == 0 or f == len(ids):  # no attacker, or no honest message to craft an attack from: sent as trained
            state.unattacked += f > 0
            return messages
        generator = torch.Generator().manual_seed(state.adversary.seed * 1_000_003 + state.round)  # fresh per round
        out = dict(messages)
        for k, v in messages.items():
            if v.is_floating_point() and v.dim() == 2:
                out[k] = v.clone()
                out[k][bad] = state.adversary(v[~bad], f, generator).to(v.device, v.dtype)  # (f, P)
        return out

    def train_cohort(self, algorithm: Algorithm, down: Tensors, index: torch.Tensor, steps: torch.Tensor | None = None,
                     client_state: Tensors | None = None, down_per_client: bool = False,
                     executor: LoopExecutor | BatchedExecutor | None = None, ctx: LocalContext | None = None,
                     y_train: torch.Tensor | None = None, lr: torch.Tensor | None = None,
                     blocks: tuple[int, ...] | None = None) -> tuple[Tensors, Tensors]:
        """Local training of one cohort on sample ids `index` (M, K, B): (messages (M, ...), new client states).

        The piece of a round that trains; also what pre-phases such as FedLEx's exploration and the drift
        measures call. `steps` (M,) marks each client's real steps; states default to the algorithm's initial;
        `y_train` (n,) replaces the labels (a run's poisoned labels). `lr` (M,) gives each client its own local
        learning rate (default: the context's); `blocks` stacks several cohorts (lockstep runs, see
        `executors.Cohort`)."""
        if client_state is None:
            x = self.initial_model()
            client_state = {k: v.expand(len(index), *v.shape) for k, v in algorithm.init_client_state(x).items()}
        cohort = Cohort(self.x_train, self.y_train if y_train is None else y_train, index, steps, lr, blocks)
        executor = executor or self.executor_for(algorithm)
        return executor(algorithm, down, client_state, cohort, ctx or self.context(algorithm),
                        down_per_client=down_per_client)

    def train_round(self, state: RunState) -> None:
        """One round: sample clients, send down, train the cohort, send up, aggregate (updates `state`).

        Clients whose download or upload is lost on the channel drop out of the round; the server averages
        what arrived, weights renormalised. A round in which nothing arrives leaves the model unchanged and is
        counted in `state.empty_rounds`."""
        down, ids = self.open_round(state)
        messages, ids = self.collect(state, ids, down) if len(ids) else ({}, ids)
        self.close_round(state, messages, ids)

    def open_round(self, state: RunState) -> tuple[Tensors, torch.Tensor]:
        """A round's start: its clients sampled and sent the downlink: (what arrived, the ids it reached)."""
        state.round = t = state.round + 1
        ids = torch.as_tensor(self.participation.sample(t, self.n_clients, state.rng), device=self.device)
        return self.broadcast(state, ids)

    def close_round(self, state: RunState, messages: Tensors, ids: torch.Tensor) -> None:
        """A round's end: aggregate the messages that arrived from senders `ids` (none: an empty round)."""
        if len(ids) == 0:
            state.empty_rounds += 1
            return
        sizes = self.client_sizes[ids].to(state.x.dtype)
        weights = sizes / sizes.sum()  # (M,) p_i = n_i / sum_S n_j
        info = RoundInfo(state.round, ids, self.n_clients, self.client_sizes)
        state.x, state.server_state = state.algorithm.aggregate(state.x, state.server_state, messages, weights, info)

    def run(self, algorithm: Algorithm, rounds: int, *, channel: Channel | None = None,
            adversary: Adversary | None = None, eval_every: int = 1, progress: bool = True,
            on_divergence: str = "raise", label: str | None = None) -> pd.DataFrame:
        """Train `algorithm` for `rounds` rounds over `channel` (default: the federation's), attacked by `adversary`
        (none by default); returns the history, one row per evaluation. With an adversary, `history.attrs` names
        the Byzantine clients ("byzantine") and the attack ("attack").

        on_divergence: "raise" a `DivergenceError`, or "stop" with a warning and return the rows so far
        (the history's `attrs["diverged_at"]` names the round)."""
        check_algorithm(algorithm)
        rounds, eval_every, label = check_run(rounds, eval_every, on_divergence, label, str(algorithm))
        state = self.start(algorithm, channel, adversary)
        with cpu_threads(self.thread_count()):
            rows, diverged_at = train_rounds(label, rounds, eval_every, progress, lambda: self.train_round(state),
                                             lambda: state.x, lambda seconds: self._row(label, state, seconds))
        history = pd.DataFrame(rows)
        self.final_models[label] = state.x
        report_attack(history, label, state)
        report_empty_rounds(history, label, state.empty_rounds, state.round)
        if diverged_at is not None:
            report_divergence(history, f"{label} diverged at round {diverged_at}", diverged_at, self.lr, on_divergence)
        return history

    def _row(self, label: str, state: RunState, seconds: float) -> dict:
        return history_row(label, state.round, self.scores(state.x), state.bits_up, state.bits_down, seconds)

    def compare(self, algorithms: Mapping[str, Algorithm | tuple[Algorithm, Channel]] | Iterable[Algorithm],
                rounds: int, **run_kwargs) -> pd.DataFrame:
        """Run several algorithms on this federation (same partition, seed and batches); one long history.

        A value may be an (algorithm, channel) pair, to compare one algorithm over several channels.
        `history.attrs["diverged"]` names the runs that diverged, with their rounds."""
        *_, history = self.compare_each(algorithms, rounds, **run_kwargs)
        return history

    def compare_each(self, algorithms: Mapping[str, Algorithm | tuple[Algorithm, Channel]] | Iterable[Algorithm],
                     rounds: int, **run_kwargs) -> Iterator[pd.DataFrame]:
        """`compare` one run at a time: yields the history so far after each algorithm, so a panel can draw the
        first curve while the others train. The arguments are checked before anything trains."""
        named = list(algorithms.items() if isinstance(algorithms, Mapping) else ((str(a), a) for a in algorithms))
        if not named:
            raise ValueError("algorithms must name at least one algorithm, got none")
        labels = [name for name, _ in named]
        if len(set(labels)) < len(labels):
            raise ValueError(f"algorithms must have distinct labels, got {labels}")
        runs = [entry if isinstance(entry, tuple) else (entry, None) for _, entry in named]  # (algorithm, channel)
        for algorithm, _ in runs:
            check_algorithm(algorithm)
        return self._each_run(labels, runs, rounds, run_kwargs)

    def _each_run(self, labels: list[str], runs: list[tuple[Algorithm, Channel | None]], rounds: int,
                  run_kwargs: dict) -> Iterator[pd.DataFrame]:
        histories: list[pd.DataFrame] = []
        for name, (algorithm, channel) in zip(labels, runs):
            histories.append(self.run(algorithm, rounds, channel=channel, label=name, **run_kwargs))
            history = pd.concat(histories, ignore_index=True)
            diverged = {n: h.attrs["diverged_at"] for n, h in zip(labels, histories) if "diverged_at" in h.attrs}
            history.attrs = {"diverged": diverged} if diverged else {}  # which runs diverged, and at which round
            yield history

    def __repr__(self) -> str:
        return (f"Federation({self.dataset.name}, {self.n_clients} clients, {self.model}, "
                f"local_steps={self.local_steps}, batch_size={self.batch_size}, lr={self.lr}, device={self.device})")
