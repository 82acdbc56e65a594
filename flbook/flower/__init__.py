"""Run an unchanged flbook algorithm on Flower (flwr 1.42): simulated on one machine, or across machines.

Install the optional extra (Python >= 3.11): `pip install -e '.[flower]'`. Then

    from flbook.flower import run
    history = run("local", algorithm="SCAFFOLD", rounds=20)   # in this process, no Ray
    history = run("ray", algorithm="FedAvg", rounds=20)       # Flower's Simulation Engine, one node per client

gives the same history as `Federation(..., batch_sampling="per_client", executor="loop").run(...)` on the task of
`flbook.flower.task.DEFAULTS` (MNIST-1D, 100 clients from Dirichlet(0.5), the MLP, 5 local steps of batch 32).

Across machines, the apps are `flbook.flower.apps:server_app` and `flbook.flower.apps:client_app`; they read the
task from the run config. A Flower app folder holds one pyproject.toml naming them (`[tool.flwr.app.components]`
serverapp and clientapp, `[tool.flwr.app.config]` with the task's keys, e.g. clients = 2, rounds = 5); the CLI
finds the SuperLink through `$FLWR_HOME/config.toml` (`[superlink.NAME]` with address and insecure = true).
flwr 1.42's SuperLink serves its Control and Fleet APIs on one port (8000). Then, with flbook installed everywhere:

    flower-superlink --insecure                                             # on the server
    flower-supernode --insecure --superlink <server>:8000 --node-config "partition-id=0 num-partitions=2"
    flower-supernode --insecure --superlink <server>:8000 --node-config "partition-id=1 num-partitions=2"
    flwr run <app folder> NAME --stream --run-config 'algorithm="SCAFFOLD"'

(one SuperNode per client; several on one device need distinct --port). tests/test_flower.py runs exactly this
on loopback with two SuperNodes and checks the history against `run("local", ...)`.

What crosses the wire: the server's `algorithm.downlink(x, state)` as an ArrayRecord in a "train" message with the
round and its batch key; the client's message (update, or SCAFFOLD's pair) as an ArrayRecord, plus "num-examples".
Per-client state (SCAFFOLD's c_i) stays on the device in `context.state`. A client sent Flower's standard message
("arrays" holding "x", "config" with "server-round"), e.g. by `flwr.serverapp.strategy.Krum`, replies in Flower's
form (its local model as "arrays", and "num-examples"), so Flower's own strategies aggregate flbook clients.
"""
try:
    import flwr  # noqa: F401
except ImportError as err:  # an optional extra: the workbook itself never needs Flower
    raise ImportError("flbook.flower needs Flower: pip install -e '.[flower]' (flwr 1.42, Python >= 3.11)") from err

from .apps import LocalGrid, client_app, make_apps, run, server_app, simulate
from .strategy import FlbookStrategy
from .task import ALGORITHMS, DEFAULTS, build_algorithm, build_federation, task_config

__all__ = ["FlbookStrategy", "LocalGrid", "make_apps", "run", "simulate", "server_app", "client_app", "ALGORITHMS", "DEFAULTS",
           "build_algorithm", "build_federation", "task_config"]
