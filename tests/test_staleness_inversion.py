import numpy as np
import pytest
import torch

from conftest import equal_parts
from flbook import Federation
from flbook.algorithms.base import Batches, LocalContext
from flbook.algorithms.fedavg import FedAvg
from flbook.algorithms.staleness_inversion import GradientInversion, StaleFedAvg, invert_update, \
    label_logits_from_update, unrolled_update, update_distance
from flbook.algorithms.base import AsyncInfo
from flbook.asynchronous import AsyncFederation, class_accuracy
from flbook.devices import draw
from flbook.models import logistic, mlp
from flbook.participation import Uniform

M, K = 6, 2
ONE_HOT = 1e4  # label logits this large give exactly one-hot soft labels in float32


@pytest.fixture
def fed(digits_data):
    return Federation(digits_data, equal_parts(len(digits_data.y_train), M, 20), "logistic", local_steps=K,
                      batch_size=20, lr=0.5, seed=0, executor="loop")


def _info(fed, staleness, start_models):
    ids = torch.arange(len(staleness))
    return AsyncInfo(1, ids, fed.n_clients, fed.client_sizes, torch.as_tensor(staleness), start_models,
                     torch.full((len(ids),), K), torch.ones(fed.n_clients, dtype=torch.float64),
                     torch.ones(fed.n_clients, dtype=torch.long), 1.0,
                     LocalContext(fed.model, fed.lr, 0.0, torch.nn.functional.cross_entropy), (1, 8, 8), 10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_inversion_of_one_sample_on_a_linear_model_recovers_it(seed):
    model = logistic(8, 3)
    theta = model.init(0)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 8, generator=g)
    labels = torch.tensor([[0.0, 0.0, ONE_HOT]])
    delta = unrolled_update(model, theta, x, labels, lr=0.5, steps=1).detach()
    start = label_logits_from_update(model, delta, 3)
    assert start.argmax() == 2  # iDLG: the output bias rises for the sample's label
    x_rec, y_rec, losses = invert_update(model, theta, delta, torch.randn(1, 8, generator=g), start[None], lr=0.5,
                                         steps=1, iterations=300, step_size=0.1, cost="l2")
    assert losses[-1] < 0.02 * losses[0]
    assert torch.allclose(x_rec, x, atol=0.03)
    assert y_rec.softmax(-1)[0, 2] > 0.99


def test_true_data_give_the_true_fresh_update(fed):
    """Oracle D_rec: K full-batch GD steps on the client's own data are exactly its FedAvg update."""
    theta = fed.initial_model() + 0.1
    shard = torch.as_tensor(fed.partition[0])
    x, y = fed.x_train[shard], fed.y_train[shard]
    ctx = LocalContext(fed.model, fed.lr, 0.0, torch.nn.functional.cross_entropy, eager=True)
    message, _ = FedAvg().client_update({"x": theta}, {}, Batches(x.expand(K, *x.shape), y.expand(K, *y.shape)), ctx)
    labels = ONE_HOT * torch.nn.functional.one_hot(y, 10).float()
    assert torch.allclose(unrolled_update(fed.model, theta, x, labels, fed.lr, K), message["delta"], atol=1e-6)


def test_unrolled_update_is_differentiable_end_to_end():
    model = mlp(3, 2, hidden=(4,))
    theta = model.init(0).double()
    x = torch.randn(2, 3, dtype=torch.double, requires_grad=True)
    labels = torch.randn(2, 2, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: unrolled_update(model, theta, a, b, 0.3, 2), (x, labels))


def test_reconstruction_loss_decreases(fed):
    shard = torch.as_tensor(fed.partition[1])
    labels = ONE_HOT * torch.nn.functional.one_hot(fed.y_train[shard], 10).float()
    theta = fed.initial_model()
    delta = unrolled_update(fed.model, theta, fed.x_train[shard], labels, fed.lr, K).detach()
    g = torch.Generator().manual_seed(0)
    _, _, losses = invert_update(fed.model, theta, delta, torch.rand(8, 1, 8, 8, generator=g),
                                 torch.randn(8, 10, generator=g), lr=fed.lr, steps=K, iterations=40,
                                 bounds=(0.0, 1.0))
    assert losses[-1] < 0.5 * losses[0]
    assert update_distance(delta, delta) == 0


def test_without_delay_every_method_is_fedavg(fed):
    """tau = 0: direct, weighted, DC-ASGD, drop and GI conversion all coincide with synchronous FedAvg."""
    runner = AsyncFederation(fed, draw(M, "constant", step_time=0.1), participation=Uniform(1.0))
    fed.run(FedAvg(), 3, progress=False)
    for algo in (StaleFedAvg(), StaleFedAvg(policy="weighted"), StaleFedAvg(policy="dc-asgd"),
                 StaleFedAvg(policy="drop"), GradientInversion(iterations=2)):
        runner.run(algo, 3.0, progress=False, label="run")
        assert torch.allclose(runner.final_models["run"], fed.final_models["FedAvg"], atol=1e-6), str(algo)


def test_stale_policies_weights(fed):
    x = fed.initial_model()
    info = _info(fed, [0, 20, 0], x.expand(3, -1))
    assert torch.allclose(StaleFedAvg().aggregation_weights(info), torch.full((3,), 1 / 3))
    assert torch.allclose(StaleFedAvg(policy="weighted").aggregation_weights(info),
                          torch.tensor([1 / 3, 1 / 6, 1 / 3]))  # 2^{-20/20} = 1/2
    assert torch.allclose(StaleFedAvg(policy="drop").aggregation_weights(info), torch.tensor([0.5, 0.0, 0.5]))
    with pytest.raises(ValueError, match="policy must be one of"):
        StaleFedAvg(policy="ignore")


def test_unchanged_model_makes_corrections_vanish(fed):
    """x^t = x^{t-tau}: DC-ASGD equals direct, and GI conversion returns (about) the stale update."""
    x = fed.initial_model()
    deltas = []
    for m in range(2):
        shard = torch.as_tensor(fed.partition[m])
        labels = ONE_HOT * torch.nn.functional.one_hot(fed.y_train[shard], 10).float()
        deltas.append(unrolled_update(fed.model, x, fed.x_train[shard], labels, fed.lr, K).detach())
    messages, weights = {"delta": torch.stack(deltas)}, torch.full((2,), 0.5)
    info = _info(fed, [3, 3], x.expand(2, -1))
    direct, _ = StaleFedAvg().aggregate(x, {}, messages, weights, info)
    dc, _ = StaleFedAvg(policy="dc-asgd").aggregate(x, {}, messages, weights, info)
    assert torch.equal(direct, dc)
    gi, state = GradientInversion(iterations=60, n_rec=8, bounds=(0.0, 1.0), guard=False).aggregate(
        x, {}, messages, weights, info)
    assert update_distance(gi - x, direct - x) < 0.3  # what is left is the inversion's own fitting error
    assert int(state["converted"]) == 2 and state["x_rec"].shape == (M, 8, 1, 8, 8)
    assert state["fitted"].tolist() == [1, 1] + [0] * (M - 2)


def test_class_accuracy_metric(fed):
    metric = class_accuracy(fed, 0)
    value = metric(fed.initial_model())["class_acc"]
    mask = fed.y_test == 0
    assert value == pytest.approx(
        (fed.model(fed.initial_model(), fed.x_test[mask]).argmax(1) == 0).float().mean().item())
    assert np.isfinite(value)


@pytest.mark.parametrize("broken", [False, True])
def test_the_speed_claim_needs_the_inversion_step(broken):
    """Chapter 23's speed claim holds with the inversion and fails when it does no work (a step of 1e-9 leaves
    random surrogate inputs), through the chapter's own run and verdict on a tiny setting."""
    from flbook.chapters import ch23_unlimited_staleness as chapter
    from flbook.history import per_seed_difference
    from flbook.protocol import HOLDS, verdict

    def methods(values, bounds=None):
        step = {"step_size": 1e-9} if broken else {}
        return {"direct": StaleFedAvg(), "GI conversion": GradientInversion(iterations=10, n_rec=16, bounds=bounds,
                                                                            seed=int(values["seed"]), **step)}

    history = chapter.run({"rounds": 24, "delay": 6, "hidden": 16, "tune": False, "seeds": 3, "methods": methods},
                          progress=False)
    speed = verdict(per_seed_difference(history, "GI conversion", "direct", chapter.reach), "less")
    assert (speed == HOLDS) != broken


def test_chapter_stream_yields_after_every_run_and_run_is_its_last():
    """Chapter 23's panel draws the oracle's curve first; the last history streamed is `run`'s, attrs included."""
    import pandas as pd
    from flbook.chapters import ch23_unlimited_staleness as chapter

    values = {"n_clients": 10, "rounds": 3, "delay": 1, "gi_iterations": 2, "n_rec": 2, "hidden": 8, "tune": False,
              "seeds": 2}
    steps = list(chapter.stream(values, progress=False))
    names = [chapter.ORACLE, *chapter.staleness_methods(values)]
    assert len(steps) == 2 * len(names)
    assert [list(pd.unique(h["algorithm"])) for h in steps[:2]] == [names[:1], names[:2]]
    assert steps[0].attrs["server_states"].keys() == {chapter.ORACLE}
    final, whole = steps[-1], chapter.run(values, progress=False)
    pd.testing.assert_frame_equal(final.drop(columns="wall_time"), whole.drop(columns="wall_time"))
    pd.testing.assert_frame_equal(final.attrs["updates"], whole.attrs["updates"])
    assert final.attrs["server_states"].keys() == whole.attrs["server_states"].keys() == set(names)
    assert sorted(set(final["seed"])) == [0, 1]
