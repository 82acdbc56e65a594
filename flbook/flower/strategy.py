"""A Flower `Strategy` that runs an unchanged flbook `Algorithm`'s server side: sampling, downlink, aggregation."""
from __future__ import annotations

import time
from collections.abc import Iterable
from logging import INFO

import numpy as np
import pandas as pd
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from ..algorithms.base import Algorithm, RoundInfo, Tensors
from ..federation import Federation
from ..history import row as history_row
from ..runtime import cpu_threads


def to_record(tensors: Tensors) -> ArrayRecord:
    """Tensors as an ArrayRecord (one array per key, bytes copied off the device)."""
    return ArrayRecord({k: v.detach().cpu().contiguous() for k, v in tensors.items()})


def from_record(record: ArrayRecord) -> Tensors:
    """An ArrayRecord back as tensors."""
    return dict(record.to_torch_state_dict())


class FlbookStrategy(Strategy):
    """The server of `federation` running `algorithm`: it holds the global model x and the server state, samples
    clients with the federation's participation model and draws the round's batch key as `Federation.run` does
    (the same seed gives the same clients and batches), sends `algorithm.downlink(x, state)` in a "train"
    message and aggregates the replies, stacked in the sampled order, with `algorithm.aggregate`.

    Flower's node ids are opaque: the first round asks every node its "partition-id" (a "query" message)."""

    def __init__(self, federation: Federation, algorithm: Algorithm, label: str | None = None):
        self.fed, self.algorithm, self.label = federation, algorithm, label or str(algorithm)
        self.x = federation.initial_model()  # (P,)
        self.server_state = algorithm.init_server_state(self.x, federation.n_clients)
        self.rng = np.random.default_rng(federation.seed)  # client sampling, as in Federation.start
        self.generator = torch.Generator().manual_seed(federation.seed)  # one batch key per round
        self.node_of: dict[int, int] = {}  # partition id -> Flower node id
        self.sampled = torch.empty(0, dtype=torch.long)
        self.bytes_up = self.bytes_down = 0
        self.rows: list[dict] = []
        self.started = time.perf_counter()
        self.round_starts: list[float] = []  # perf_counter() as each round's configure_train begins

    def _map_nodes(self, grid: Grid) -> None:
        """Ask each node once which partition it holds."""
        queries = [Message(RecordDict(), dst_node_id=node, message_type="query") for node in grid.get_node_ids()]
        for reply in grid.send_and_receive(queries):
            self.node_of[int(reply.content["partition"]["partition-id"])] = reply.metadata.src_node_id
        missing = sorted(set(range(self.fed.n_clients)) - set(self.node_of))
        if missing:
            raise RuntimeError(f"no Flower node holds partitions {missing[:10]} of {self.fed.n_clients}; start one "
                               f"node per client (num_supernodes={self.fed.n_clients}, or --node-config partition-id=k)")

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.round_starts.append(time.perf_counter())
        if not self.node_of:
            self._map_nodes(grid)
        ids = self.fed.participation.sample(server_round, self.fed.n_clients, self.rng)
        self.sampled = torch.as_tensor(ids, dtype=torch.long)  # (M,)
        key = int(torch.randint(-2**63, 2**63 - 1, (), generator=self.generator))  # as Federation.sample_batches
        down = to_record(self.algorithm.downlink(self.x, self.server_state))
        self.bytes_down += down.count_bytes() * len(ids)
        settings = ConfigRecord({"round": server_round, "batch-key": key})
        return [Message(RecordDict({"down": down, "config": settings}), dst_node_id=self.node_of[int(i)],
                        message_type="train") for i in ids]

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        by_client = {}
        for reply in replies:
            if reply.has_error():
                raise RuntimeError(f"a client failed in round {server_round}: {reply.error.reason}")
            by_client[int(reply.content["metrics"]["partition-id"])] = reply.content["update"]
            self.bytes_up += reply.content["update"].count_bytes()
        ids = self.sampled[[int(i) in by_client for i in self.sampled]]
        if len(ids) == 0:
            return None, None
        updates = [from_record(by_client[int(i)]) for i in ids]
        messages = {k: torch.stack([u[k] for u in updates]) for k in updates[0]}  # (M, ...)
        sizes = self.fed.client_sizes[ids].to(self.x.dtype)
        weights = sizes / sizes.sum()  # (M,) p_i = n_i / sum_S n_j
        info = RoundInfo(server_round, ids, self.fed.n_clients, self.fed.client_sizes)
        self.x, self.server_state = self.algorithm.aggregate(self.x, self.server_state, messages, weights, info)
        if not torch.isfinite(self.x).all():
            raise RuntimeError(f"{self.label} diverged at round {server_round}: try a smaller learning rate")
        return ArrayRecord({"x": self.x}), MetricRecord({"clients": len(ids)})

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return []  # evaluation runs on the server (`evaluate`), on the federation's test set

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None

    def evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Server-side evaluation (Strategy.start's `evaluate_fn`): a history row of the current model."""
        with cpu_threads(self.fed.thread_count()):  # as Federation.run
            scores = self.fed.evaluate(self.x)
        self.rows.append(history_row(self.label, server_round, scores, 8 * self.bytes_up, 8 * self.bytes_down,
                                     time.perf_counter() - self.started))
        return MetricRecord(scores)

    def history(self) -> pd.DataFrame:
        """The run's history in `Federation.run`'s form; bytes are the ArrayRecords' own counts."""
        return pd.DataFrame(self.rows)

    def summary(self) -> None:
        log(INFO, "\t├──> flbook %s on %d clients, %s", self.label, self.fed.n_clients, self.fed.participation)
