"""Flower's ServerApp and ClientApp for a flbook task, an in-process grid, and one call to run them.

The apps read the task from `context.run_config` (so `flwr run --run-config 'algorithm="SCAFFOLD"'` chooses it)
over the settings `make_apps` closes over (what `run_simulation` needs, as it passes no run config)."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import pandas as pd
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.task_identity import TaskIdentity  # not public: why pyproject pins flwr<1.43

from ..executors import LoopExecutor
from ..runtime import cpu_threads
from .strategy import FlbookStrategy, from_record, to_record
from .task import build_algorithm, build_federation, task_config


def _config(settings: Mapping[str, object], context: Context) -> dict[str, object]:
    return task_config({**settings, **context.run_config})


def _partition(context: Context) -> int:
    if "partition-id" not in context.node_config:
        raise ValueError("this node holds no partition: start it with --node-config 'partition-id=<client id>'")
    return int(context.node_config["partition-id"])


def _query(settings: Mapping[str, object], message: Message, context: Context) -> Message:
    """Answer the server's "query": which partition (client id) this node holds."""
    record = ConfigRecord({"partition-id": _partition(context)})
    return Message(RecordDict({"partition": record}), reply_to=message)


def round_key(seed: int, server_round: int) -> int:
    """The batch key `Federation.sample_batches` draws in round t of a run seeded `seed` (per-client mode)."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(server_round):  # one scalar draw per round, as the strategy and the federation draw it
        key = torch.randint(-2**63, 2**63 - 1, (), generator=generator)
    return int(key)


def _train(settings: Mapping[str, object], message: Message, context: Context) -> Message:
    """One client's local training: the unchanged `client_update` on batches drawn from (round key, client).

    A message from FlbookStrategy ("down", "config" with the batch key) gets the algorithm's message ("update").
    A message from one of Flower's own strategies ("arrays" holding "x", "config" with "server-round") gets
    Flower's standard reply: the local model x + delta as "arrays" and "num-examples", for algorithms whose
    message is a model difference (FedAvg, FedProx): Flower then aggregates flbook clients with its own rules."""
    config = _config(settings, context)
    fed, algorithm = build_federation(config), build_algorithm(config)
    client = torch.tensor([_partition(context)])
    standard = "arrays" in message.content
    settings_in = message.content["config"]
    if standard:
        down = {"x": from_record(message.content["arrays"])["x"]}
        key = round_key(int(config["seed"]), int(settings_in["server-round"]))
    else:
        down, key = from_record(message.content["down"]), int(settings_in["batch-key"])
    if "client-state" in context.state:  # this client's state from its previous round (e.g. SCAFFOLD's c_i)
        state = from_record(context.state["client-state"])
    else:
        state = algorithm.init_client_state(fed.initial_model())
    steps = fed.steps_for(client)
    index = fed.client_batches(client, steps, key)  # (1, K, B)
    stacked = {k: v[None] for k, v in state.items()}  # (1, ...)
    with cpu_threads(fed.thread_count()):  # as Federation.run: extra intra-op threads only slow a small model
        update, state = fed.train_cohort(algorithm, down, index, steps, stacked, executor=LoopExecutor())
    if state:
        context.state["client-state"] = to_record({k: v[0] for k, v in state.items()})
    metrics = MetricRecord({"partition-id": int(client), "num-examples": int(fed.client_sizes[client])})
    if not standard:
        return Message(RecordDict({"update": to_record({k: v[0] for k, v in update.items()}), "metrics": metrics}),
                       reply_to=message)
    if set(update) != {"delta"}:
        raise ValueError(f"{algorithm.name} sends {sorted(update)}, not a model difference: Flower's own strategies "
                         f"cannot aggregate it; run it with FlbookStrategy")
    model = ArrayRecord({"x": down["x"] + update["delta"][0]})
    return Message(RecordDict({"arrays": model, "metrics": metrics}), reply_to=message)


def _main(settings: Mapping[str, object], grid: Grid, context: Context,
          on_done: Callable[[FlbookStrategy], None] | None = None) -> FlbookStrategy:
    """The server's run: a FlbookStrategy through Flower's round loop, evaluated on the server every round.

    The history goes to the CSV file the "history" setting names, if any, and the strategy to `on_done`."""
    config = _config(settings, context)
    strategy = FlbookStrategy(build_federation(config), build_algorithm(config))
    strategy.start(grid, ArrayRecord({"x": strategy.x}), num_rounds=int(config["rounds"]),
                   evaluate_fn=strategy.evaluate)
    if config.get("history"):
        strategy.history().to_csv(str(config["history"]), index=False)
    if on_done is not None:
        on_done(strategy)
    return strategy


def make_apps(on_done: Callable[[FlbookStrategy], None] | None = None,
              **settings: object) -> tuple[ServerApp, ClientApp]:
    """A (ServerApp, ClientApp) pair for the task `settings` (keys of `task.DEFAULTS`), run config on top;
    `on_done` receives the finished strategy where the ServerApp runs in this process (simulation)."""
    task_config(settings)  # refuse unknown settings now, not inside a worker
    server, client = ServerApp(), ClientApp()
    server.main()(lambda grid, context: _main(settings, grid, context, on_done) and None)
    client.train()(lambda message, context: _train(settings, message, context))
    client.query()(lambda message, context: _query(settings, message, context))
    return server, client


_apps = make_apps()  # for `flwr run`: the task comes from the run config alone
server_app = _apps[0]  # one name per line: `flwr run` finds the components by reading this file
client_app = _apps[1]


class LocalGrid(Grid):
    """Flower's Grid in this process: each message goes straight to `client_app` with its node's Context.

    No SuperLink, no Ray: what the equality tests and the side-by-side benchmark's "in-process" row use."""

    def __init__(self, client_app: ClientApp, n_nodes: int, run_config: Mapping[str, object] | None = None):
        self.client_app = client_app
        self.contexts = {1000 + k: Context(run_id=1, node_id=1000 + k, state=RecordDict(),
                                           node_config={"partition-id": k, "num-partitions": n_nodes},
                                           run_config=dict(run_config or {})) for k in range(n_nodes)}
        self._run = None
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0  # what a SuperLink's task is given

    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("LocalGrid answers at once: use send_and_receive")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("LocalGrid answers at once: use send_and_receive")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return [self.client_app(m, self.contexts[m.metadata.dst_node_id]) for m in messages]


def simulate(backend: str = "local", **settings: object) -> FlbookStrategy:
    """Run the task `settings` on Flower and return the finished strategy (its model, history, round times).

    backend: "local" (LocalGrid, in this process) or "ray" (Flower's Simulation Engine, one virtual SuperNode
    per client, through `flwr.simulation.run_simulation`, deprecated in 1.42 in favour of `flwr run` but the one
    call that runs the engine from Python)."""
    config = task_config(settings)
    done: list[FlbookStrategy] = []
    server, client = make_apps(done.append, **settings)
    if backend == "local":
        return _main(settings, LocalGrid(client, int(config["clients"])), Context(1, 0, {}, RecordDict(), {}))
    if backend != "ray":
        raise ValueError(f"backend must be 'local' or 'ray', got {backend!r}")
    from flwr.simulation import run_simulation
    run_simulation(server, client, num_supernodes=int(config["clients"]),
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    if not done:
        raise RuntimeError("the Flower simulation ended before its last round: see its log above")
    return done[0]


def run(backend: str = "local", **settings: object) -> pd.DataFrame:
    """The history (one row per round, as `Federation.run`) of `simulate(backend, **settings)`."""
    return simulate(backend, **settings).history()
