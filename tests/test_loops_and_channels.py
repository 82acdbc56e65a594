"""Every channel under both round loops: the synchronous federation and the asynchronous driver share one
exchange (`Federation.broadcast` / `collect`), so a channel means the same thing in both."""
import dataclasses
import warnings

import numpy as np
import pytest
import torch

from conftest import equal_parts
from flbook import Federation
from flbook.algorithms import FedAvg, FedBuff, Scaffold
from flbook.asynchronous import AsyncFederation
from flbook.channel import ARRIVED, Channel, CompressedChannel, NoisyChannel, top_k
from flbook.devices import linear
from flbook.participation import Uniform

N = 4
CHANNELS = {
    "lossless": lambda: Channel(),
    "lossy uplink": lambda: NoisyChannel(drop_prob=0.5, links="up"),
    "lossy downlink": lambda: NoisyChannel(drop_prob=0.5, links="down"),
    "noisy uplink": lambda: NoisyChannel(snr_db=20.0, links="up"),
    "noisy downlink": lambda: NoisyChannel(snr_db=20.0, links="down"),
    "noisy both": lambda: NoisyChannel(snr_db=20.0, links="both"),
    "top-k": lambda: CompressedChannel(top_k(0.1)),
    "top-k with error feedback": lambda: CompressedChannel(top_k(0.1), error_feedback=True),
}


@dataclasses.dataclass(kw_only=True)
class Spy(FedAvg):
    """FedAvg that records what reaches `aggregate`: the message keys, the clients and the start models."""

    seen: list = dataclasses.field(default_factory=list, repr=False, compare=False)

    def aggregate(self, x, server_state, messages, weights, info):
        self.seen.append((tuple(sorted(messages)), info.clients.tolist(), float(weights.sum())))
        return super().aggregate(x, server_state, messages, weights, info)


def _federation(digits_data, channel):
    parts = [p[: 30 + 15 * i] for i, p in enumerate(equal_parts(len(digits_data.y_train), N, 90))]  # unequal sizes
    return Federation(digits_data, parts, "logistic", local_steps=2, batch_size=10, lr=0.2, seed=1, executor="loop",
                      channel=channel)


def _run(fed, loop, algorithm):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # rounds in which every message was lost are reported
        if loop == "sync":
            return fed.run(algorithm, 3, progress=False), None
        runner = AsyncFederation(fed, linear(N, 0.5, step_time=0.5))
        return runner.run(algorithm, 3.0, progress=False), runner


@pytest.mark.parametrize("loop", ["sync", "async"])
@pytest.mark.parametrize("name", list(CHANNELS))
def test_every_channel_runs_under_both_loops(digits_data, name, loop):
    fed = _federation(digits_data, CHANNELS[name]())
    spy = Spy()
    history, runner = _run(fed, loop, spy)
    assert {"algorithm", "round", "test_acc", "test_loss", "bytes_up", "bytes_down", "wall_time"} <= set(history)
    assert np.isfinite(history["test_loss"]).all()
    for keys, clients, total in spy.seen:
        assert ARRIVED not in keys  # lost messages never reach the aggregation as zero updates
        assert len(set(clients)) == len(clients)
        if loop == "sync":
            assert total == pytest.approx(1.0, abs=1e-6)  # size weights over what arrived
    if runner is not None:  # the update log lists exactly what was applied
        assert len(runner.update_log()) == sum(len(clients) for _, clients, _ in spy.seen)


def test_lost_uploads_are_neither_applied_nor_logged(digits_data):
    fed = _federation(digits_data, NoisyChannel(drop_prob=0.5, links="up"))
    spy = Spy()
    history, runner = _run(fed, "async", spy)
    assert history.attrs["lost_updates"] > 0
    assert len(runner.update_log()) == sum(len(clients) for _, clients, _ in spy.seen)


def test_a_noisy_downlink_gives_each_async_client_its_own_start_model(digits_data):
    fed = _federation(digits_data, NoisyChannel(snr_db=10.0, links="down"))
    starts = []

    @dataclasses.dataclass(kw_only=True)
    class Starts(FedAvg):
        def aggregate(self, x, server_state, messages, weights, info):
            starts.append(info.start_models)
            return super().aggregate(x, server_state, messages, weights, info)

    _run(fed, "async", Starts())
    several = [s for s in starts if len(s) > 1]
    assert several and all(not torch.equal(s[0], s[1]) for s in several)  # independent noise per receiver


def test_a_lossless_channel_gives_the_same_model_in_both_loops(digits_data):
    """F-0 devices (every job takes one time unit): the asynchronous loop with FedAvg is the synchronous one."""
    fed = _federation(digits_data, CompressedChannel(top_k(0.2), error_feedback=True))
    fed.run(Scaffold(), 3, progress=False, label="sync")
    runner = AsyncFederation(fed, linear(N, 0.0, step_time=0.5))
    runner.run(Scaffold(), 3.0, progress=False, eval_every=1.0, label="async")
    assert torch.allclose(runner.final_models["async"], fed.final_models["sync"], atol=1e-6)


@pytest.mark.parametrize("algorithm", [FedBuff(buffer_size=1), FedBuff(buffer_size=3), FedAvg()])
def test_no_client_trains_two_jobs_at_once(digits_data, algorithm):
    """With a participation model the server samples a cohort per aggregation; a client still computing is skipped."""
    from flbook.asynchronous import AsyncRun

    fed = _federation(digits_data, Channel())
    runner = AsyncFederation(fed, linear(N, 0.9, step_time=0.1), participation=Uniform(fraction=0.5))
    run = AsyncRun(runner, algorithm, "probe")
    most, original = [], run.dispatch

    def dispatch(clients):
        assert (run.free_at[clients] <= run.clock.now + 1e-9).all()  # none of them is still computing
        original(clients)
        most.append(run.in_flight)

    run.dispatch = dispatch
    run.loop(4.0, 0.5, progress=False)
    # computing (at most N) plus finished updates waiting for the buffer (at most N); without the rule: hundreds
    assert max(most) <= 2 * N and run.state.round > 3


def test_a_buffer_larger_than_the_federation_is_refused(digits_data):
    runner = AsyncFederation(_federation(digits_data, Channel()), linear(N, 0.5))
    with pytest.raises(ValueError, match=r"buffer_size must be an integer in \[1, 4\].*got 5"):
        runner.run(FedBuff(buffer_size=5), 2.0, progress=False)


def test_a_tiny_eval_every_is_refused_at_once(digits_data):
    runner = AsyncFederation(_federation(digits_data, Channel()), linear(N, 0.5))
    with pytest.raises(ValueError, match="eval_every must be >= until / 10000"):
        runner.run(FedAvg(), 2.0, eval_every=1e-9, progress=False)


def test_a_run_with_no_aggregation_says_so(digits_data):
    runner = AsyncFederation(_federation(digits_data, Channel()), linear(N, 0.5, step_time=10.0))
    with pytest.warns(RuntimeWarning, match="no aggregation happened before until=1"):
        history = runner.run(FedAvg(), 1.0, progress=False)
    assert history["round"].max() == 0


def test_a_round_in_which_nothing_arrives_is_reported(digits_data):
    fed = _federation(digits_data, NoisyChannel(drop_prob=0.9, links="up"))
    with pytest.warns(RuntimeWarning, match=r"no update reached the server in \d+ of 6 rounds"):
        history = fed.run(FedAvg(), 6, progress=False)
    assert history.attrs["empty_rounds"] > 0


def test_client_state_is_held_only_for_clients_that_trained(digits_data):
    """SCAFFOLD's c_i: memory follows the clients that took part, not the federation's size."""
    parts = [np.array([i]) for i in range(1000)]  # 1000 clients of one sample each
    fed = Federation(digits_data, parts, "logistic", local_steps=1, batch_size=1, participation=0.01, seed=0)
    state = fed.start(Scaffold())
    for _ in range(3):
        fed.train_round(state)
    trained = state.client_state.count
    assert 10 <= trained <= 30
    assert next(iter(state.client_state.rows.values())).shape[0] < 64  # rows allocated: about the clients seen


# ------------------------------------------------------------------------------------------- an adversary
def _recorded_run(digits_data, loop: str, rounds: int, adversary):
    """FedAvg for `rounds` rounds (or time units) in the "sync" or "async" loop, recording the senders and the update
    messages of every aggregation: ([(clients, deltas)], history)."""
    seen = []

    @dataclasses.dataclass(kw_only=True)
    class Seen(FedAvg):
        def aggregate(self, x, server_state, messages, weights, info):
            seen.append((info.clients.clone(), messages["delta"].clone()))
            return super().aggregate(x, server_state, messages, weights, info)

    fed = _federation(digits_data, Channel())
    if loop == "sync":
        return seen, fed.run(Seen(), rounds, adversary=adversary, progress=False)
    runner = AsyncFederation(fed, linear(N, 0.0, step_time=0.5))
    return seen, runner.run(Seen(), float(rounds), adversary=adversary, eval_every=1.0, progress=False)


def test_byzantine_messages_replace_the_senders_own_in_both_loops(digits_data):
    """Sign flipping: each Byzantine client's update is minus the mean of the honest updates that arrived."""
    from flbook.attacks import Adversary, Attack

    adversary = Adversary(Attack("sign_flipping"), f=1, seed=3)
    for loop in ("sync", "async"):
        seen, history = _recorded_run(digits_data, loop, 2, adversary)
        byzantine = history.attrs["byzantine"]
        assert len(byzantine) == 1 and history.attrs["attack"] == "sign_flipping by f=1"
        for clients, delta in seen:
            bad = torch.isin(clients, torch.tensor(byzantine))
            assert bad.sum() == 1
            assert torch.allclose(delta[bad][0], -delta[~bad].mean(0), atol=1e-6)


def test_label_flipping_poisons_only_the_byzantine_clients_data_in_both_loops(digits_data):
    """Byzantine clients train on (C - 1) - y and send what they trained: in the first round the honest clients'
    updates equal those of the clean run bit for bit, the flipped clients' differ, and a rerun repeats them."""
    from flbook.attacks import Adversary, Attack, flip_labels

    adversary = Adversary(Attack("label_flipping"), f=2, seed=1)
    for loop in ("sync", "async"):
        def first_round(attack):
            seen, history = _recorded_run(digits_data, loop, 1, attack)
            return seen[0], history

        (clients, clean), _ = first_round(None)
        (clients_attacked, poisoned), history = first_round(adversary)
        assert torch.equal(clients, clients_attacked)
        assert history.attrs["attack"] == "label_flipping by f=2" and len(history.attrs["byzantine"]) == 2
        bad = torch.isin(clients, torch.tensor(history.attrs["byzantine"]))
        assert bad.any() and (~bad).any()
        assert torch.equal(poisoned[~bad], clean[~bad])
        assert all(not torch.allclose(p, c) for p, c in zip(poisoned[bad], clean[bad]))
        assert torch.equal(first_round(adversary)[0][1], poisoned)  # reproducible
    fed = _federation(digits_data, Channel())
    byzantine = adversary.clients(N)
    y = fed.poisoned_labels(adversary, byzantine)
    for k in range(N):
        shard = torch.as_tensor(fed.partition[k])
        expected = flip_labels(fed.y_train[shard], 10) if k in byzantine else fed.y_train[shard]
        assert torch.equal(y[shard], expected)
    assert fed.poisoned_labels(Adversary(Attack("sign_flipping"), f=2), byzantine) is fed.y_train
    with pytest.raises(ValueError, match="poisons the clients' data and crafts no message"):
        Attack("label_flipping")(torch.ones(3, 2), 1)


def test_a_robust_rule_survives_an_attack_that_breaks_fedavg(digits_data):
    from flbook.algorithms import RobustFedAvg
    from flbook.attacks import Adversary, Attack

    parts = equal_parts(len(digits_data.y_train), 8, 100)
    fed = Federation(digits_data, parts, "logistic", local_steps=2, batch_size=20, lr=0.2, seed=1)
    adversary = Adversary(Attack("gaussian", {"sigma": 30.0}), f=2, seed=0)

    def final(algorithm, attack):
        return fed.run(algorithm, 10, adversary=attack, progress=False, on_divergence="stop").test_acc.iloc[-1]

    fedavg, median = FedAvg(), RobustFedAvg(rule="median")
    assert final(fedavg, adversary) < 0.2 < final(fedavg, None) - 0.5  # 2 of 8 clients sending noise ruin the average
    assert final(median, adversary) > final(fedavg, adversary) + 0.4  # the coordinate median is shifted, not broken


def test_the_final_model_is_evaluated_whatever_eval_every(digits_data):
    runner = AsyncFederation(_federation(digits_data, Channel()), linear(N, 0.8, step_time=0.5))
    history = runner.run(FedAvg(), 2.0, eval_every=0.75, progress=False, label="a")
    assert history["sim_time"].tolist() == [0.0, 0.75, 1.5, 2.0]
    assert history["test_acc"].iloc[-1] == pytest.approx(runner.federation.evaluate(runner.final_models["a"])["test_acc"])


def test_plots_say_what_they_cannot_draw():
    import matplotlib
    import pandas as pd

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from flbook.plots import learning_curves
    from flbook.plots.staleness import staleness_histogram

    history = pd.DataFrame({"algorithm": ["a"] * 3, "round": [0, 1, 2], "test_acc": [0.1, float("nan"), 0.3]})
    with pytest.warns(RuntimeWarning, match=r"test_acc is not finite in 1 of 3 rows, first at algorithm='a', round=1"):
        learning_curves(history)
    with pytest.raises(ValueError, match="updates is empty: no update was applied"):
        staleness_histogram(pd.DataFrame(columns=["algorithm", "staleness"]))
    plt.close("all")
