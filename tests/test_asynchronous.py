import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from conftest import equal_parts  # noqa: E402
from flbook import Federation  # noqa: E402
from flbook.algorithms.fedavg import FedAvg  # noqa: E402
from flbook.algorithms.fedfix import AsyncFedAvg, FedBuff, FedFix  # noqa: E402
from flbook.asynchronous import AsyncFederation, class_accuracy  # noqa: E402
from flbook.devices import draw, linear  # noqa: E402
from flbook.participation import Uniform  # noqa: E402
from flbook.plots.staleness import plot_weight_shares, staleness_histogram, time_and_round_curves, \
    weight_shares  # noqa: E402

M, K = 6, 2


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def fed(digits_data):
    return Federation(digits_data, equal_parts(len(digits_data.y_train), M, 30), "logistic", local_steps=K,
                      batch_size=10, lr=0.2, seed=1, executor="loop")


def _run(fed, algo, devices, until, **kwargs):
    runner = AsyncFederation(fed, devices)
    history = runner.run(algo, until, progress=False, label="run", **kwargs)
    return runner, history


@pytest.mark.parametrize("algo", [FedAvg(), FedBuff(buffer_size=M, policy="weight"), FedFix(period=1.0)],
                             ids=["sync", "FedBuff-M", "FedFix-1"])
def test_zero_spread_equals_synchronous_fedavg(fed, algo):
    """F-0 (every job takes 1): FedBuff-M and FedFix with dt = 1 are FedAvg, round for round."""
    reference = fed.run(FedAvg(), 4, progress=False)
    runner, history = _run(fed, algo, linear(M, 0.0, step_time=1 / K), 4.0, eval_every=1.0)
    assert torch.allclose(runner.final_models["run"], fed.final_models["FedAvg"], atol=1e-6)
    assert list(history["round"]) == [0, 1, 2, 3, 4] and list(history["sim_time"]) == [0, 1, 2, 3, 4]
    assert np.allclose(history["test_loss"], reference["test_loss"], atol=1e-6)
    assert list(history["bytes_up"]) == list(reference["bytes_up"])
    assert (runner.updates["run"]["staleness"] == 0).all()


def test_one_client_is_sequential_local_sgd(digits_data):
    one = Federation(digits_data, equal_parts(len(digits_data.y_train), 1, 30), "logistic", local_steps=K,
                     batch_size=10, lr=0.2, seed=1, executor="loop")
    one.run(FedAvg(), 3, progress=False)
    for algo in (AsyncFedAvg(), FedBuff(buffer_size=1, policy="weight"), FedFix(period=1.0)):
        runner, _ = _run(one, algo, draw(1, "constant", step_time=0.5), 3.0)
        assert torch.allclose(runner.final_models["run"], one.final_models["FedAvg"], atol=1e-6), str(algo)


def test_aggregation_counts(fed):
    spread = linear(M, 0.8, step_time=1 / K)  # tau from 1 down to 0.2
    _, sync = _run(fed, FedAvg(), spread, 5.5)
    _, fix = _run(fed, FedFix(period=0.3), spread, 5.5)
    assert sync["round"].iloc[-1] == math.floor(5.5 / 1.0)
    assert fix["round"].iloc[-1] == math.floor(5.5 / 0.3)


def test_fedfix_applies_each_client_every_ceil_tau_over_dt(fed):
    devices = linear(M, 0.8, step_time=1 / K)
    period = 0.3
    runner, _ = _run(fed, FedFix(period=period), devices, 9.0)
    log = runner.updates["run"]
    gap = np.ceil(devices.job_time(np.arange(M), K) / period - 1e-9).astype(int)  # [4, 3, 3, 2, 1, 1]
    for client, rows in log.groupby("client"):
        assert (np.diff(rows["round"]) == gap[client]).all()
        assert (rows["staleness"] == gap[client] - 1).all()
        assert np.allclose(rows["weight"], gap[client] / M)  # ceil(tau_i / dt) p_i with equal sizes
    assert np.allclose(log["sim_time"] / period, np.round(log["sim_time"] / period))  # only at multiples of dt


def test_async_identical_favours_fast_clients_and_weight_policy_undoes_it(fed):
    devices = linear(M, 0.8, step_time=1 / K)
    tau = devices.job_time(np.arange(M), K)
    runner = AsyncFederation(fed, devices)
    runner.compare({"identical": AsyncFedAvg(policy="identical"), "weight": AsyncFedAvg()}, 12.0, progress=False)
    counts = runner.updates["identical"]["client"].value_counts().sort_index().to_numpy()
    assert np.allclose(counts / counts.sum(), (1 / tau) / (1 / tau).sum(), atol=0.01)  # arrivals prop. to 1/tau_i
    shares = weight_shares(runner.update_log(), fed.client_sizes.numpy()).set_index(["algorithm", "client"])
    assert np.allclose(shares.loc["weight", "ratio"], 1.0, atol=0.05)  # surrogate weights = p_i: unbiased
    assert shares.loc["identical", "ratio"].iloc[-1] > 3 * shares.loc["identical", "ratio"].iloc[0]


def test_fedfix_weights_are_unbiased_per_unit_time(fed):
    runner, _ = _run(fed, FedFix(period=0.3), linear(M, 0.8, step_time=1 / K), 12.0)
    ratio = weight_shares(runner.updates["run"], fed.client_sizes.numpy())["ratio"]
    assert np.allclose(ratio, 1.0, atol=0.1)


def test_fedbuff_staleness_and_buffer(fed):
    runner, history = _run(fed, FedBuff(buffer_size=2), linear(M, 0.8, step_time=1 / K), 6.0)
    log = runner.updates["run"]
    assert (log.groupby("round").size() == 2).all()
    assert np.allclose(log["weight"], 0.5)  # identical policy: 1 / c
    assert log["staleness"].max() > 0 and "sim_time" in history


def test_same_seed_same_run_other_seed_other_run(digits_data, fed):
    devices = draw(M, "lognormal", 0.7, latency=0.2, seed=3)
    a, ha = _run(fed, FedBuff(buffer_size=2), devices, 4.0)
    b, hb = _run(fed, FedBuff(buffer_size=2), devices, 4.0)
    cols = ["round", "sim_time", "test_acc", "test_loss", "bytes_up", "bytes_down"]
    pd.testing.assert_frame_equal(ha[cols], hb[cols])
    pd.testing.assert_frame_equal(a.updates["run"], b.updates["run"])
    other = Federation(digits_data, fed.partition, "logistic", local_steps=K, batch_size=10, lr=0.2, seed=2)
    _, hc = _run(other, FedBuff(buffer_size=2), devices, 4.0)
    assert not np.allclose(hc["test_loss"], ha["test_loss"])


def test_sampled_cohorts_give_the_slow_clients_fixed_staleness(fed):
    late = draw(M, "constant", step_time=0.1).slowed([0, 1], extra_latency=3.0)  # 3.2 time units: 3 rounds late
    runner = AsyncFederation(fed, late, participation=Uniform(1.0), metrics=class_accuracy(fed, 0))
    history = runner.run(FedFix(period=1.0), 8.0, eval_every=1.0, progress=False, label="run")
    log = runner.updates["run"]
    assert set(log.loc[log.client < 2, "staleness"]) == {3} and set(log.loc[log.client >= 2, "staleness"]) == {0}
    assert log.loc[log.client < 2, "round"].min() == 4  # nothing from the slow clients before round 4
    assert (log.groupby("round").size().loc[4:] == M).all()  # afterwards one update per client per round
    assert history["class_acc"].between(0, 1).all()


def test_bad_arguments(fed):
    with pytest.raises(ValueError, match="devices must describe"):
        AsyncFederation(fed, linear(M + 1, 0.5))
    runner = AsyncFederation(fed, linear(M, 0.5))
    with pytest.raises(ValueError, match="until must be a finite number > 0"):
        runner.run(FedAvg(), 0.0)
    with pytest.raises(ValueError, match="period must be a finite number > 0"):
        FedFix(period=0.0)
    with pytest.raises(ValueError, match="policy must be one of"):
        AsyncFedAvg(policy="fair")
    with pytest.raises(ValueError, match="cls must be a class"):
        class_accuracy(fed, 42)


def test_plots_accept_a_run(fed):
    runner = AsyncFederation(fed, linear(M, 0.8, step_time=1 / K))
    history = runner.compare({"FedAvg": FedAvg(), "FedBuff-2": FedBuff(buffer_size=2)}, 3.0, progress=False)
    log = runner.update_log()
    assert staleness_histogram(log).get_xlabel().startswith("staleness")
    ax = plot_weight_shares(log, fed.client_sizes.numpy(), runner.devices.job_time(np.arange(M), K))
    assert len(ax.get_lines()) >= 2
    assert len(time_and_round_curves(history).axes) == 2


@pytest.mark.parametrize("broken", [False, True])
def test_fedfix_unbiasedness_claim_needs_its_gap_weighting(broken, monkeypatch):
    """Chapter 22's "FedFix's weights are unbiased" holds, and fails once the ceil(tau_i / dt) factor is dropped
    (d_i = p_i), through the chapter's own runs and claims table on a tiny setting."""
    from flbook.algorithms.fedfix import FedFix, data_share
    from flbook.chapters import ch22_async_fedfix as chapter

    if broken:
        monkeypatch.setattr(FedFix, "aggregation_weights", lambda self, info: data_share(info).float())
    values = {"n_clients": 6, "time_budget": 3.0, "local_steps": 2, "buffer_size": 2, "tune": False, "seeds": 3}
    history = chapter.run(values, progress=False)
    matched = chapter.run({**values, "match_steps": True}, progress=False)
    table = chapter.claims(history, matched).set_index("claim")["verdict"]
    assert (table.filter(like="FedFix's weights are unbiased").iloc[0] == "holds") != broken
