"""The Flower bridge: an unchanged flbook algorithm run through Flower gives the in-process federation's numbers."""
import json
import subprocess
import sys

import pytest
import torch

flwr = pytest.importorskip("flwr")

from flwr.app import ArrayRecord  # noqa: E402

from flbook.flower import (FlbookStrategy, LocalGrid, build_algorithm, build_federation, make_apps,  # noqa: E402
                           run, task_config)

SMALL = {"clients": 12, "clients-per-round": 4, "rounds": 3, "alpha": 0.5}  # Dirichlet: unequal shards


def through_flower(settings: dict) -> FlbookStrategy:
    config = task_config(settings)
    _, client = make_apps(**settings)
    strategy = FlbookStrategy(build_federation(config), build_algorithm(config))
    strategy.start(LocalGrid(client, config["clients"]), ArrayRecord({"x": strategy.x}),
                   num_rounds=config["rounds"], evaluate_fn=strategy.evaluate)
    return strategy


@pytest.mark.parametrize("algorithm, extra", [("FedAvg", {}), ("SCAFFOLD", {}), ("FedAdam", {"algorithm-server-lr": 0.02}),
                                              ("FedProx", {"algorithm-mu": 0.1}), ("FedAvgM", {}), ("FedSpeed", {})])
def test_flower_gives_the_federations_model(algorithm, extra):
    settings = {**SMALL, "algorithm": algorithm, **extra}
    strategy = through_flower(settings)
    config = task_config(settings)
    fed, method = build_federation(config), build_algorithm(config)
    history = fed.run(method, config["rounds"], progress=False, label="reference")
    assert torch.equal(strategy.x, fed.final_models["reference"])  # the same model, to the last bit
    assert history.test_loss.tolist() == strategy.history().test_loss.tolist()
    assert sorted(strategy.node_of) == list(range(config["clients"]))


def test_scaffold_needs_the_client_state_kept_on_the_node():
    settings = {**SMALL, "algorithm": "SCAFFOLD", "clients-per-round": 12}
    config = task_config(settings)
    _, client = make_apps(**settings)
    grid = LocalGrid(client, config["clients"])
    strategy = FlbookStrategy(build_federation(config), build_algorithm(config))
    forgetful = type(grid)(client, config["clients"])
    forgetful.send_and_receive = lambda messages, timeout=None: [  # a fresh Context each message: c_i forgotten
        client(m, type(grid)(client, config["clients"]).contexts[m.metadata.dst_node_id]) for m in messages]
    strategy.start(forgetful, ArrayRecord({"x": strategy.x}), num_rounds=3, evaluate_fn=strategy.evaluate)
    assert not torch.equal(strategy.x, through_flower(settings).x)


def test_history_has_the_federations_columns_and_counts_bytes():
    history = run("local", **SMALL)
    assert list(history.columns) == ["algorithm", "round", "test_acc", "test_loss", "bytes_up", "bytes_down",
                                     "wall_time"]
    assert history["round"].tolist() == [0, 1, 2, 3]
    per_round = history.bytes_down.diff().iloc[1:]
    params = build_federation(task_config(SMALL)).model.n_params
    assert (per_round >= 4 * 4 * params).all() and (per_round < 4 * 4 * params * 1.01).all()  # 4 clients, float32


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="unknown task settings"):
        make_apps(client=3)
    with pytest.raises(ValueError, match="algorithm must be one of"):
        run("local", algorithm="FedNothing")
    with pytest.raises(ValueError, match="backend must be"):
        run("grpc")


def test_the_ray_simulation_engine_gives_the_same_history():
    pytest.importorskip("ray")
    settings = {**SMALL, "clients": 4, "clients-per-round": 2, "rounds": 2, "algorithm": "SCAFFOLD"}
    code = (f"import json; from flbook.flower import run; "
            f"print('HISTORY', json.dumps(run('ray', **{settings!r}).test_loss.tolist()))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("HISTORY")]
    assert lines, done.stdout[-2000:] + done.stderr[-2000:]
    assert json.loads(lines[0].split(" ", 1)[1]) == pytest.approx(run("local", **settings).test_loss.tolist(),
                                                                 abs=1e-6)


def test_round_key_is_the_strategys_draw():
    from flbook.flower.apps import round_key
    generator = torch.Generator().manual_seed(5)
    draws = [int(torch.randint(-2**63, 2**63 - 1, (), generator=generator)) for _ in range(3)]
    assert [round_key(5, t) for t in (1, 2, 3)] == draws


@pytest.mark.parametrize("name", ["FedAvg", "FedMedian", "FedTrimmedAvg", "Krum"])
def test_flowers_own_strategies_aggregate_flbook_clients_as_flbooks_rules_do(name):
    """One round: flbook FedAvg clients reply in Flower's form; Flower's rule equals flbook's where both define it."""
    from flwr.app import ConfigRecord, Message, RecordDict
    from flwr.serverapp import strategy as flower_strategies

    from flbook import robust

    settings = {**SMALL, "clients": 6}
    config = task_config(settings)
    _, client = make_apps(**settings)
    grid = LocalGrid(client, config["clients"])
    fed = build_federation(config)
    x = fed.initial_model()
    content = RecordDict({"arrays": ArrayRecord({"x": x}), "config": ConfigRecord({"server-round": 1})})
    replies = grid.send_and_receive([Message(content, dst_node_id=node, message_type="train")
                                     for node in grid.get_node_ids()])
    models = torch.stack([r.content["arrays"].to_torch_state_dict()["x"] for r in replies])  # (M, P)
    sizes = fed.client_sizes[[int(r.content["metrics"]["partition-id"]) for r in replies]].double()
    made = {"FedAvg": lambda: flower_strategies.FedAvg(), "FedMedian": lambda: flower_strategies.FedMedian(),
            "FedTrimmedAvg": lambda: flower_strategies.FedTrimmedAvg(beta=0.2),
            "Krum": lambda: flower_strategies.Krum(num_malicious_nodes=1)}[name]()
    theirs = made.aggregate_train(1, replies)[0].to_torch_state_dict()["x"]
    ours = {"FedAvg": lambda: robust.mean(models.double(), sizes / sizes.sum()), "FedMedian": lambda: robust.coordinate_median(models),
            "FedTrimmedAvg": lambda: robust.trimmed_mean(models, 1), "Krum": lambda: robust.krum(models, 1)}[name]()
    assert torch.allclose(theirs.double(), ours.double(), atol=1e-6)
    assert not torch.allclose(models[0], models[1])  # the clients trained on their own batches


APP = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "flbookapp"
version = "1.0.0"
dependencies = ["flwr>=1.42,<1.43"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "flbook"

[tool.flwr.app.components]
serverapp = "flbook.flower.apps:server_app"
clientapp = "flbook.flower.apps:client_app"

[tool.flwr.app.config]
clients = 2
clients-per-round = 2
rounds = 2
algorithm = "FedAvg"
history = "{history}"
"""


def test_a_superlink_and_two_supernodes_on_loopback_give_the_local_history(tmp_path):
    """Deployment: flower-superlink, two flower-supernode --node-config partition-id=k, then flwr run."""
    import os
    from pathlib import Path

    import pandas as pd

    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "flower-superlink").exists():
        pytest.skip("flower-superlink is not installed beside this Python")
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "pyproject.toml").write_text(APP.format(history=tmp_path / "history.csv"))
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "config.toml").write_text(
        '[superlink]\ndefault = "loop"\n\n[superlink.loop]\naddress = "127.0.0.1:8000"\ninsecure = true\n')
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "home"), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    log = open(tmp_path / "processes.log", "w")
    started = [subprocess.Popen([str(bin_dir / "flower-superlink"), "--insecure", "--database", ":flwr-in-memory:"],
                                env=env, stdout=log, stderr=log)]
    try:
        for k in range(2):
            started.append(subprocess.Popen([str(bin_dir / "flower-supernode"), "--insecure", "--superlink",
                                             "127.0.0.1:8000", "--node-config", f"partition-id={k} num-partitions=2",
                                             "--port", str(9094 + k)], env=env, stdout=log, stderr=log))
        done = subprocess.run([str(bin_dir / "flwr"), "run", ".", "loop", "--stream"], cwd=tmp_path / "app", env=env,
                              capture_output=True, text=True, timeout=400)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    finally:
        for process in reversed(started):
            process.terminate()
            process.wait(timeout=30)
        log.close()
    deployed = pd.read_csv(tmp_path / "history.csv")
    local = run("local", clients=2, **{"clients-per-round": 2}, rounds=2)
    assert deployed.test_loss.tolist() == pytest.approx(local.test_loss.tolist(), abs=1e-6)
