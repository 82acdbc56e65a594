import numpy as np
import pandas as pd
import pytest
import torch

from conftest import equal_parts, two_class_split
from flbook import DivergenceError, Federation
from flbook.algorithms import FedAdam, FedAvg, FedAvgM, FedProx, Scaffold
from flbook.executors import BatchedExecutor, LoopExecutor


@pytest.fixture
def skewed(digits_data):
    return two_class_split(digits_data.y_train.numpy(), 6)


def test_history_columns_and_bytes(digits_data, skewed):
    fed = Federation(digits_data, skewed, "logistic", local_steps=2, clients_per_round=4, seed=1)
    hist = fed.run(FedAvg(), 3, progress=False)
    assert list(hist["round"]) == [0, 1, 2, 3]
    assert {"algorithm", "round", "test_acc", "test_loss", "bytes_up", "bytes_down"} <= set(hist.columns)
    per_message = fed.model.n_params * 4  # float32
    assert list(hist.bytes_up) == [t * 4 * per_message for t in range(4)]
    assert list(hist.bytes_down) == list(hist.bytes_up)
    scaffold = fed.run(Scaffold(), 3, progress=False)
    assert list(scaffold.bytes_up) == [2 * b for b in hist.bytes_up]  # Delta y and Delta c
    assert list(scaffold.bytes_down) == [2 * b for b in hist.bytes_down]  # x and c


def test_same_seed_same_numbers(digits_data, skewed):
    runs = [Federation(digits_data, skewed, "mlp", participation=0.5, seed=3).run(FedAvg(), 3, progress=False)
            for _ in range(2)]
    cols = ["round", "test_acc", "test_loss", "bytes_up"]
    pd.testing.assert_frame_equal(runs[0][cols], runs[1][cols])
    other = Federation(digits_data, skewed, "mlp", participation=0.5, seed=4).run(FedAvg(), 3, progress=False)
    assert not np.allclose(other.test_loss, runs[0].test_loss)


def test_fedavg_one_full_batch_step_equals_centralized_gradient_step(digits_data):
    parts = equal_parts(len(digits_data.y_train), n_clients=5, per_client=40)
    lr = 0.3
    fed = Federation(digits_data, parts, "mlp", local_steps=1, batch_size=40, lr=lr, executor="loop")
    fed.run(FedAvg(), 1, progress=False)
    x0 = fed.initial_model()
    union = torch.as_tensor(np.concatenate(parts))
    leaf = x0.clone().requires_grad_()
    loss = torch.nn.functional.cross_entropy(fed.model(leaf, digits_data.x_train[union]), digits_data.y_train[union])
    (grad,) = torch.autograd.grad(loss, leaf)
    assert torch.allclose(fed.final_models["FedAvg"], x0 - lr * grad, atol=1e-6)


def test_fedprox_with_mu_zero_equals_fedavg(digits_data, skewed):
    fed = Federation(digits_data, skewed, "mlp", local_steps=3, participation=0.5)
    fed.run(FedAvg(), 3, progress=False, label="a")
    fed.run(FedProx(mu=0.0), 3, progress=False, label="b")
    assert torch.equal(fed.final_models["a"], fed.final_models["b"])
    fed.run(FedProx(mu=0.5), 3, progress=False, label="c")
    assert not torch.allclose(fed.final_models["a"], fed.final_models["c"])


def test_scaffold_one_step_full_batch_equals_fedavg(digits_data):
    """With one full-batch local step and equal weights, SCAFFOLD's corrections cancel in the average."""
    parts = equal_parts(len(digits_data.y_train), n_clients=4, per_client=50)
    fed = Federation(digits_data, parts, "logistic", local_steps=1, batch_size=50, lr=0.5)
    a = fed.run(FedAvg(), 4, progress=False)
    b = fed.run(Scaffold(), 4, progress=False)
    assert np.allclose(a.test_loss, b.test_loss, atol=1e-5)
    # with several local steps the control variates change the trajectory
    fed.local_steps = 3
    c = fed.run(FedAvg(), 4, progress=False)
    d = fed.run(Scaffold(), 4, progress=False)
    assert not np.allclose(c.test_loss, d.test_loss, atol=1e-4)


@pytest.mark.parametrize("algorithm", [FedAvg(), FedProx(mu=0.1), Scaffold(), FedAvgM(), FedAdam()], ids=str)
@pytest.mark.parametrize("epochs", [None, 1.0])
def test_loop_and_batched_executors_agree(digits_data, skewed, algorithm, epochs):
    results = []
    for executor in (LoopExecutor(), BatchedExecutor(chunk_size=4)):
        fed = Federation(digits_data, skewed, "mlp", local_steps=3, local_epochs=epochs, batch_size=16,
                         participation=0.5, executor=executor, seed=2)
        results.append(fed.run(algorithm, 3, progress=False).test_loss.to_numpy())
        results.append(fed.final_models[str(algorithm)])
    assert np.allclose(results[0], results[2], atol=1e-5)
    assert torch.allclose(results[1], results[3], atol=1e-5)


def test_batch_sampling_stays_in_each_shard(digits_data, skewed):
    fed = Federation(digits_data, skewed, "logistic", local_steps=4, batch_size=8)
    clients = torch.tensor([0, 3, 5])
    index = fed.sample_batches(clients, None, torch.Generator().manual_seed(0))
    assert index.shape == (3, 4, 8)
    for row, k in zip(index, clients):
        ids = row.reshape(-1).numpy()
        assert set(ids) <= set(skewed[int(k)])
        if len(skewed[int(k)]) >= ids.size:
            assert len(set(ids)) == ids.size  # no repeats within a round while the shard lasts


def test_local_epochs_gives_each_client_its_own_step_count(digits_data, skewed):
    fed = Federation(digits_data, skewed, "logistic", local_epochs=2, batch_size=32)
    steps = fed.steps_for(torch.arange(6))
    expected = np.ceil(2 * np.array([len(p) for p in skewed]) / 32)
    assert steps.tolist() == expected.tolist()


def test_client_accuracy_matches_train_accuracy(digits_data, skewed):
    fed = Federation(digits_data, skewed, "logistic")
    fed.run(FedAvg(), 2, progress=False)
    theta = fed.final_models["FedAvg"]
    per_client = fed.client_accuracy(theta)
    assert per_client.shape == (6,) and ((0 <= per_client) & (per_client <= 1)).all()
    sizes = np.array([len(p) for p in skewed])
    union = np.concatenate(skewed)
    pred = fed.model(theta, digits_data.x_train[union]).argmax(1)
    overall = (pred == digits_data.y_train[union]).float().mean().item()
    assert np.isclose((per_client * sizes).sum() / sizes.sum(), overall)


def test_divergence_is_reported_with_its_round(digits_data, skewed):
    fed = Federation(digits_data, skewed, "mlp", lr=1e6)
    with pytest.raises(DivergenceError, match=r"diverged at round \d+"):
        fed.run(FedAvg(), 5, progress=False)
    with pytest.warns(RuntimeWarning, match="diverged"):
        hist = fed.run(FedAvg(), 5, progress=False, on_divergence="stop")
    assert hist.attrs["diverged_at"] >= 1
    assert np.isfinite(hist.test_loss).all()


@pytest.mark.parametrize("kwargs, message", [
    ({"lr": 0}, "lr must be a finite number > 0, got 0"),
    ({"local_steps": 0}, "local_steps must be"),
    ({"batch_size": 2.5}, "batch_size must be an integer, got 2.5"),
    ({"participation": 0.0}, r"participation must be in \(0, 1\], got 0.0"),
    ({"participation": 1.5}, r"participation must be in \(0, 1\], got 1.5"),
    ({"clients_per_round": 0}, r"clients_per_round must be an integer in \[1, 6\], got 0"),
    ({"weight_decay": -1}, "weight_decay must be a finite number >= 0"),
    ({"model": "resnet"}, "model must be one of"),
])
def test_bad_settings_are_rejected(digits_data, skewed, kwargs, message):
    kwargs = {"model": "logistic", **kwargs}
    with pytest.raises(ValueError, match=message):
        Federation(digits_data, skewed, **kwargs)


def test_bad_runs_and_partitions_are_rejected(digits_data, skewed):
    with pytest.raises(ValueError, match=r"clients_per_round must be an integer in \[1, 6\], got 7"):
        Federation(digits_data, skewed, "logistic", clients_per_round=7)
    with pytest.raises(ValueError, match="rounds must be"):
        Federation(digits_data, skewed, "logistic").run(FedAvg(), 0)
    with pytest.raises(ValueError, match="executor must be"):
        Federation(digits_data, skewed, "logistic", executor="gpu")
    with pytest.raises(ValueError, match=r"partition\[1\] is empty"):
        Federation(digits_data, [skewed[0], np.array([], dtype=int)], "logistic")
    with pytest.raises(ValueError, match="partition is required"):
        Federation(digits_data, None, "logistic")
    with pytest.raises(ValueError, match="mu must be a finite number >= 0"):
        FedProx(mu=-1)


def test_fedavg_on_digits_reaches_85_percent(digits_data):
    """The foundation's acceptance run, at the federation's defaults: 20 skewed clients, 30 rounds."""
    from flbook.partition import dirichlet

    parts = dirichlet(digits_data.y_train, 20, 0.3, seed=0)
    hist = Federation(digits_data, parts, "mlp").run(FedAvg(), 30, progress=False)
    assert hist.test_acc.max() > 0.85


def test_lost_messages_drop_clients_and_executors_still_agree(digits_data, skewed):
    from flbook.channel import NoisyChannel

    finals = []
    for executor in ("loop", "batched"):
        channel = NoisyChannel(snr_db=20.0, drop_prob=0.3, links="both")
        fed = Federation(digits_data, skewed, "logistic", executor=executor, channel=channel)
        hist = fed.run(FedAvg(), 4, progress=False)
        finals.append(fed.final_models["FedAvg"])
    assert torch.allclose(finals[0], finals[1], atol=1e-5)
    assert hist.test_acc.iloc[-1] > hist.test_acc.iloc[0]


def test_a_round_where_nothing_arrives_keeps_the_model(digits_data, skewed):
    from flbook.channel import NoisyChannel

    fed = Federation(digits_data, skewed, "logistic", channel=NoisyChannel(drop_prob=1.0, links="up"))
    with pytest.warns(RuntimeWarning, match="no update reached the server in any of its 2 rounds"):
        hist = fed.run(FedAvg(), 2, progress=False)
    assert hist.attrs["empty_rounds"] == 2
    assert torch.equal(fed.final_models["FedAvg"], fed.initial_model())
    assert hist.bytes_up.iloc[-1] == 2 * 6 * fed.model.n_params * 4  # lost messages were still sent


# --- bad input: a clear error where the value is given ------------------------------------------------------------

ALGORITHMS_WITH_SERVER_LR = ["FedAvg", "FedProx", "Scaffold", "FedAvgM", "FedAdam", "FedLD", "FedStale", "FedVARP",
                             "AsyncFedAvg", "FedBuff", "FedFix", "FedAMD", "StaleFedAvg"]


@pytest.mark.parametrize("name", ALGORITHMS_WITH_SERVER_LR)
@pytest.mark.parametrize("server_lr", [-1.0, 0.0, float("nan"), float("inf")])
def test_every_algorithm_checks_its_server_lr(name, server_lr):
    import flbook.algorithms as algorithms

    with pytest.raises(ValueError, match="server_lr must be a finite number > 0"):
        getattr(algorithms, name)(server_lr=server_lr)


@pytest.mark.parametrize("make, message", [
    (lambda A: A.FedProx(mu=float("nan")), "mu must be a finite number >= 0, got nan"),
    (lambda A: A.FedAdam(tau=float("nan")), "tau must be a finite number > 0, got nan"),
    (lambda A: A.FedLD(margin=float("nan")), "margin must be a finite number >= 0, got nan"),
    (lambda A: A.FedSpeed(mu=float("inf")), "mu must be a finite number >= 0, got inf"),
    (lambda A: A.FedSpeed(rho=float("nan")), "rho must be a finite number >= 0, got nan"),
    (lambda A: A.StaleFedAvg(dc_lambda=-1), "dc_lambda must be a finite number >= 0, got -1"),
    (lambda A: A.StaleFedAvg(dc_lambda=float("nan")), "dc_lambda .* got nan"),
    (lambda A: A.StaleFedAvg(period=0), "period must be a finite number > 0, got 0"),
    (lambda A: A.FedFix(period=float("inf")), "period must be a finite number > 0, got inf"),
    (lambda A: A.FedBuff(buffer_size=2.5), "buffer_size must be an integer, got 2.5"),
    (lambda A: A.FedBuff(buffer_size=float("nan")), "buffer_size must be an integer, got nan"),
    (lambda A: A.GradientInversion(step_size=0), "step_size must be a finite number > 0, got 0"),
    (lambda A: A.GradientInversion(step_size=float("nan")), "step_size .* got nan"),
    (lambda A: A.GradientInversion(bounds=(1.0, 0.0)), "bounds must be .* low < high"),
    (lambda A: A.GradientInversion(n_rec=2.5), "n_rec must be an integer, got 2.5"),
    (lambda A: A.GradientInversion(period=0), "period must be a finite number > 0"),
    (lambda A: A.FedStale(probabilities=()), "probabilities must be a 1-D sequence"),
])
def test_bad_hyperparameters_are_rejected_at_construction(make, message):
    import flbook.algorithms as algorithms

    with pytest.raises(ValueError, match=message):
        make(algorithms)


def test_explore_bounds_its_epochs(digits_data, skewed):
    from flbook.algorithms import explore

    fed = Federation(digits_data, skewed, "logistic")
    for epochs in (1e6, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="epochs must be in"):
            explore(fed, epochs=epochs)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"local_epochs": float("inf")}, ValueError, r"local_epochs must be in \(0, 1e\+08\], got inf"),
    ({"weight_decay": float("nan")}, ValueError, "weight_decay must be a finite number >= 0, got nan"),
    ({"lr": "0.1"}, TypeError, "lr must be a real number"),
    ({"seed": 2**64}, ValueError, "seed must be an integer in"),
    ({"seed": 1.5}, ValueError, "seed must be an integer, got 1.5"),
    ({"clients_per_round": 2.5}, ValueError, "clients_per_round must be an integer, got 2.5"),
    ({"participation": "0.5"}, TypeError, "participation must be a fraction in"),
    ({"participation": 0.5, "clients_per_round": 2}, ValueError, "give participation or clients_per_round"),
    ({"device": "cuda:99" if torch.cuda.is_available() else "cuda"}, ValueError, "device='cuda"),
    ({"device": "tpu"}, ValueError, "device must name a torch device"),
    ({"device": 3}, TypeError, "device must be a device name"),
    ({"threads": 0}, ValueError, r"threads must be an integer in \[1, "),
    ({"threads": 1000}, ValueError, r"threads must be an integer in \[1, "),
    ({"batch_size": 10**7}, ValueError, "a round would draw up to .* samples"),
    ({"local_steps": 10**7}, ValueError, "a round would draw up to"),
    ({"local_epochs": 1e5}, ValueError, "a round would draw up to"),
    ({"local_epochs": 1e18}, ValueError, r"local_epochs must be in \(0, 1e\+08\], got 1e\+18"),
    ({"local_steps": 1.87e306}, ValueError, r"local_steps must be an integer in \[1, 100000000\], got 1.87e\+306"),
    ({"batch_size": 2**70}, ValueError, r"batch_size must be an integer in \[1, 100000000\]"),
    ({"model": None}, TypeError, "model must be one of"),
])
def test_bad_settings_are_rejected_at_construction(digits_data, skewed, kwargs, error, message):
    with pytest.raises(error, match=message):
        Federation(digits_data, skewed, "logistic" if "model" not in kwargs else kwargs.pop("model"), **kwargs)


def test_settings_that_need_the_clients_are_checked_at_construction(digits_data, skewed):
    from flbook.participation import Bernoulli

    with pytest.raises(ValueError, match="n_clients must equal len"):
        Federation(digits_data, skewed, "logistic", participation=Bernoulli((0.5,) * 3))
    with pytest.raises(ValueError, match="executor must be one of"):
        Federation(digits_data, skewed, "logistic", executor="gpu")


def test_numpy_integer_seed_is_the_same_seed(digits_data, skewed):
    a = Federation(digits_data, skewed, "logistic", seed=np.int64(3)).run(FedAvg(), 2, progress=False)
    b = Federation(digits_data, skewed, "logistic", seed=3).run(FedAvg(), 2, progress=False)
    pd.testing.assert_frame_equal(a.drop(columns="wall_time"), b.drop(columns="wall_time"))


@pytest.mark.parametrize("bad, error, message", [
    (lambda P: [P[0], P[0]] + P[2:], ValueError, r"each sample at most once; sample \d+ is held 2 times, by clients \[0, 1\]"),
    (lambda P: [np.array([0, 0, 0, 1])] + P[1:], ValueError, "each sample at most once"),
    (lambda P: [np.array([0.5, 1.7])] + P[1:], TypeError, r"partition\[0\] must hold integer indices"),
    (lambda P: [np.arange(1437) < 10] + P[1:], TypeError, "boolean mask"),
    (lambda P: [np.arange(10).reshape(2, 5)] + P[1:], ValueError, r"partition\[0\] must be a 1-D array"),
    (lambda P: [np.array([5000])] + P[1:], ValueError, r"indices in \[0, 1437\)"),
])
def test_a_partition_is_checked_once(digits_data, skewed, bad, error, message):
    skewed = [p[p >= 10] for p in skewed]  # free samples 0..9 for the cases that use them
    with pytest.raises(error, match=message):
        Federation(digits_data, bad(skewed), "logistic")


def test_a_model_that_does_not_fit_the_data_fails_at_construction(digits_data, skewed):
    from flbook.models import mlp

    with pytest.raises(ValueError, match=r"does not fit the data: inputs of shape \(1, 8, 8\)"):
        Federation(digits_data, skewed, mlp(10, 10))
    with pytest.raises(ValueError, match=r"one logit per class \(10\), got outputs of shape \(3,\)"):
        Federation(digits_data, skewed, mlp(64, 3))


def test_malformed_datasets_are_refused_where_they_are_made(digits_data, skewed):
    from flbook.data import Dataset

    d = digits_data
    with pytest.raises(ValueError, match=r"y_train must hold class ids in \[0, 3\)"):
        Dataset("bad", d.x_train, d.y_train, d.x_test, d.y_test, 3, (1, 8, 8))
    with pytest.raises(TypeError, match="y_train must hold int64 class ids"):
        Dataset("bad", d.x_train, d.y_train.float(), d.x_test, d.y_test, 10, (1, 8, 8))
    x = d.x_train.clone()
    x[5, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match=r"x_train must hold only finite values, got 1 NaN .* index \(5, 0, 3, 3\)"):
        Dataset("nan", x, d.y_train, d.x_test, d.y_test, 10, (1, 8, 8))
    empty_test = Dataset("e", d.x_train, d.y_train, d.x_test[:0], d.y_test[:0], 10, (1, 8, 8))
    with pytest.raises(ValueError, match="no test samples"):
        Federation(empty_test, skewed, "mlp")
    with pytest.raises(TypeError, match="dataset must be a flbook.data.Dataset"):
        Federation({}, skewed, "mlp")


def test_algorithms_for_the_asynchronous_driver_are_refused_by_run(digits_data, skewed):
    from flbook.algorithms import GradientInversion, StaleFedAvg

    fed = Federation(digits_data, skewed, "logistic")
    for algorithm in (StaleFedAvg(policy="dc-asgd"), GradientInversion()):
        with pytest.raises(ValueError, match="needs the asynchronous driver"):
            fed.run(algorithm, 2, progress=False)
    with pytest.raises(TypeError, match="algorithm must be a flbook Algorithm"):
        fed.run("FedAvg", 2)


def test_compare_names_the_runs_that_diverged(digits_data, skewed):
    fed = Federation(digits_data, skewed, "mlp")
    with pytest.warns(RuntimeWarning, match=r"bad diverged at round \d+"):
        h = fed.compare({"ok": FedAvg(), "bad": FedAvg(server_lr=1e20)}, 5, progress=False,
                        on_divergence="stop")
    assert list(h.attrs["diverged"]) == ["bad"] and h.attrs["diverged"]["bad"] >= 1
    with pytest.raises(ValueError, match="distinct labels"):
        fed.compare([FedAvg(), FedAvg()], 1, progress=False)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"partition": 5}, TypeError, "partition must be a list of index arrays, one per client, got 5"),
    ({"partition": "abc"}, TypeError, "partition must be a list of index arrays"),
    ({"device": "meta"}, ValueError, "device='meta' holds no data"),
])
def test_partition_that_is_no_list_and_meta_device_are_refused(digits_data, skewed, kwargs, error, message):
    with pytest.raises(error, match=message):
        Federation(digits_data, **{"partition": skewed, "model": "logistic", **kwargs})


def test_a_participation_model_too_large_for_the_federation_names_its_own_parameter(digits_data):
    from flbook.participation import Uniform
    with pytest.raises(ValueError, match=r"participation=Uniform\(fraction=1.0, count=5\) does not fit 3 clients: Uniform: count must be <= n_clients=3"):
        Federation(digits_data, equal_parts(len(digits_data.y_train), 3, 20), "logistic",
                   participation=Uniform(count=5))


@pytest.fixture
def unequal():
    ids = np.random.default_rng(1).permutation(300)
    return np.split(ids, np.cumsum([5, 17, 40, 90, 33, 3, 70]))[:7]  # sizes 5 ... 90, 42 samples left unheld


def test_per_client_batches_do_not_depend_on_the_cohort(digits_data, unequal):
    fed = Federation(digits_data, unequal, "logistic", local_steps=3, batch_size=8, batch_sampling="per_client")
    cohort = torch.tensor([6, 1, 3, 0])
    together = fed.client_batches(cohort, None, key=7)  # (4, 3, 8)
    for row, k in zip(together, cohort):
        assert torch.equal(fed.client_batches(torch.tensor([k]), None, key=7)[0], row)
    assert not torch.equal(fed.client_batches(cohort, None, key=8), together)  # a new round, new batches
    # sample_batches draws one round key from the generator: the same seed gives the same batches
    a = fed.sample_batches(cohort, None, torch.Generator().manual_seed(3))
    assert torch.equal(a, fed.sample_batches(cohort, None, torch.Generator().manual_seed(3)))
    assert not torch.equal(a, fed.sample_batches(cohort, None, torch.Generator().manual_seed(4)))


@pytest.mark.parametrize("sampling", ["cohort", "per_client"])
def test_every_sample_of_a_shard_is_seen_once_per_pass(digits_data, unequal, sampling):
    fed = Federation(digits_data, unequal, "logistic", local_steps=6, batch_size=7, batch_sampling=sampling)
    clients = torch.arange(len(unequal))
    index = fed.sample_batches(clients, None, torch.Generator().manual_seed(0)).reshape(len(unequal), -1)  # (M, K*B)
    for row, part in zip(index, unequal):
        n = len(part)
        for start in range(0, len(row) - n + 1, n):  # each full pass through the shard is a permutation of it
            assert sorted(row[start:start + n].tolist()) == sorted(part.tolist())
        assert set(row.tolist()) <= set(part.tolist())


def test_per_client_sampling_keeps_the_executors_equal(digits_data, unequal):
    models = []
    for executor in (LoopExecutor(), BatchedExecutor(chunk_size=3)):
        fed = Federation(digits_data, unequal, "mlp", local_steps=3, batch_size=16, participation=0.5, seed=2,
                         executor=executor, batch_sampling="per_client")
        fed.run(Scaffold(), 3, progress=False)
        models.append(fed.final_models["SCAFFOLD"])
    assert torch.allclose(models[0], models[1], atol=1e-5)


def test_batch_sampling_is_checked(digits_data, unequal):
    with pytest.raises(ValueError, match="batch_sampling must be one of"):
        Federation(digits_data, unequal, "logistic", batch_sampling="per-client")


def test_a_round_whose_every_sender_is_byzantine_is_reported_not_silently_unattacked(digits_data):
    from flbook.attacks import Adversary, Attack

    parts = equal_parts(len(digits_data.y_train), 4, 20)
    fed = Federation(digits_data, parts, "logistic", clients_per_round=1, seed=0)
    with pytest.warns(RuntimeWarning, match=r"rounds every sender was Byzantine"):
        history = fed.run(FedAvg(), 8, adversary=Adversary(Attack("sign_flipping"), f=2, seed=0), progress=False)
    assert 0 < history.attrs["unattacked_rounds"] < 8 and len(history.attrs["byzantine"]) == 2


def test_auto_executor_batches_the_models_it_wins_for_on_a_cpu(digits_data, skewed):
    from flbook.transformer import vit
    picks = {kind: Federation(digits_data, skewed, model, device="cpu").executor_for(FedAvg()).name
             for kind, model in (("mlp", "mlp"), ("cnn", "cnn"), ("vit", vit(digits_data.input_shape, 10)))}
    assert picks == {"mlp": "batched", "cnn": "loop", "vit": "batched"}
