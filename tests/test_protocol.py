"""The experiment protocol: validation splits, seeds, fair tuning with grid extension, the cache and verdicts."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from flbook import Federation
from flbook.algorithms import FedAvg, Scaffold
from flbook.data import Dataset
from flbook.history import per_seed_difference, window_mean
from flbook.partition import dirichlet
from flbook.protocol import (FAILS, HOLDS, INCONCLUSIVE, RunConfig, claim_row, claims_table, clear_cache, compare,
                             compare_channels,
                             federations, run, run_all, step_size_controls, tune, validation_split, verdict,
                             with_channel)


def numbered(n_train=120, n_test=30, clients=None) -> Dataset:
    """A dataset whose samples carry their own ids as features, so a split can be traced sample by sample."""
    x = torch.arange(n_train + n_test, dtype=torch.float32)[:, None]
    y = torch.arange(n_train + n_test) % 3
    return Dataset("numbered", x[:n_train], y[:n_train], x[n_train:], y[n_train:], 3, (1,), clients)


def ids(x: torch.Tensor) -> set:
    return set(x[:, 0].long().tolist())


def test_validation_split_holds_out_training_samples_only_and_loses_none():
    data = numbered()
    train, val = validation_split(data, 0.25, seed=3)
    held, kept = ids(val.x_test), ids(train.x_train)
    assert held.isdisjoint(kept) and held | kept == ids(data.x_train)  # nothing lost, nothing in both
    assert len(val.x_test) == len(held) == 30 and len(train.x_train) == len(kept) == 90  # nothing duplicated
    assert torch.equal(train.x_test, data.x_test) and held.isdisjoint(ids(data.x_test))  # the test set untouched
    assert torch.equal(val.x_train, train.x_train) and torch.equal(val.y_train, train.y_train)  # one training pool
    assert torch.equal(val.y_test, val.x_test[:, 0].long() % 3) and set(val.y_test.tolist()) == {0, 1, 2}
    assert ids(validation_split(data, 0.25, seed=4)[1].x_test) != held  # the seed changes the split
    with pytest.raises(ValueError, match="fraction"):
        validation_split(data, 1.0)


def test_validation_split_remaps_natural_clients():
    data = numbered(clients=[np.arange(0, 50), np.arange(50, 60), np.arange(60, 120)])
    train, val = validation_split(data, 0.2, seed=0)
    shards = [ids(train.x_train[torch.as_tensor(p)]) for p in train.client_indices]
    assert [len(s) for s in shards] == [40, 8, 48]
    assert all(s <= set(range(a, b)) for s, (a, b) in zip(shards, [(0, 50), (50, 60), (60, 120)]))
    assert set().union(*shards) | ids(val.x_test) == set(range(120))


@pytest.fixture
def tiny(digits_data):
    """A cheap task: logistic regression, 4 Dirichlet clients, one local step."""
    def make(dataset, seed, lr, steps=1):
        return Federation(dataset, dirichlet(dataset.y_train, 4, 0.5, seed=seed), "logistic", local_steps=steps,
                          batch_size=16, lr=lr, seed=seed)
    return digits_data, make


def test_seeds_must_reach_the_federation_and_the_partition(tiny):
    data, make = tiny
    assert list(federations(lambda s: make(data, s, 0.1))) == [0, 1, 2]
    with pytest.raises(ValueError, match="seed=0"):
        federations(lambda s: Federation(data, dirichlet(data.y_train, 4, 0.5, seed=s), "logistic"))
    with pytest.raises(ValueError, match="same partition"):
        federations(lambda s: Federation(data, dirichlet(data.y_train, 4, 0.5), "logistic", seed=s))
    def unseeded_partition(dataset, seed, lr):
        return Federation(dataset, dirichlet(dataset.y_train, 4, 0.5), "logistic", lr=lr, seed=seed)
    with pytest.raises(ValueError, match="same partition"):
        run_all([RunConfig(data, unseeded_partition, FedAvg, seed, 0.1, None, 1, "a") for seed in (0, 1)])
    with pytest.raises(ValueError, match="pass both"):
        run(RunConfig(data, lambda d, s, lr: make(d, 0, lr), FedAvg, 1, 0.1, None, 1, "a"))


def test_runs_are_cached_by_their_full_configuration(tiny, monkeypatch):
    data, make = tiny
    calls = []
    real = Federation.run
    monkeypatch.setattr(Federation, "run", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    clear_cache()
    config = RunConfig(data, make, FedAvg, 0, 0.1, None, 2, "FedAvg")
    first = run(config)
    again = run(config)
    assert len(calls) == 1 and first.equals(again) and {"seed", "lr", "server_lr"} <= set(first.columns)
    again.loc[0, "test_acc"] = -1.0  # a caller's edit does not reach the cache
    assert run(config).equals(first)
    run(RunConfig(data, lambda d, s, lr: make(d, s, lr, steps=2), FedAvg, 0, 0.1, None, 2, "FedAvg"))
    run(RunConfig(data, make, lambda: FedAvg(server_lr=0.5), 0, 0.1, None, 2, "FedAvg"))
    run(RunConfig(data, make, FedAvg, 1, 0.1, None, 2, "FedAvg"))
    assert len(calls) == 4  # local steps, a method's field and the seed are all part of the key
    same_run = run(RunConfig(data, make, lambda server_lr: FedAvg(server_lr=server_lr), 0, 0.1, 1.0, 2, "FedAvg"))
    assert len(calls) == 4 and list(same_run.server_lr.unique()) == [1.0]  # the run is shared, its labels are not
    renamed = run(RunConfig(data, make, FedAvg, 0, 0.1, None, 2, "control"))
    assert len(calls) == 4 and set(renamed.algorithm) == {"control"}


def peaked(best_lr, best_server_lr=1.0):
    """A score with one peak in (log lr, log server_lr): tuning must find it, whatever the grid."""
    def score(history):
        lr, server_lr = history["lr"].iloc[0], history["server_lr"].iloc[0]
        return -abs(math.log(lr / best_lr)) - (0 if server_lr is None else abs(math.log(server_lr / best_server_lr)))
    return score


def test_tuning_extends_the_grid_when_the_best_value_sits_at_its_edge(tiny):
    data, make = tiny
    inside = tune(data, make, FedAvg, rounds=1, lrs=(0.01, 0.1, 1.0), server_lrs=None, score=peaked(0.1))
    assert inside.lr == 0.1 and inside.extended == () and inside.at_edge == () and inside.server_lr is None
    up = tune(data, make, FedAvg, rounds=1, lrs=(0.01, 0.1, 1.0), server_lrs=None, score=peaked(10.0))
    assert up.lr == pytest.approx(10.0) and up.extended == ("lr up to 10", "lr up to 100") and up.at_edge == ()
    assert len(up.scores) == 5
    with pytest.warns(RuntimeWarning, match="still at the edge"):
        far = tune(data, make, FedAvg, rounds=1, lrs=(0.01, 0.1, 1.0), server_lrs=None, score=peaked(1e4),
                   max_extensions=2)
    assert far.at_edge == ("lr",) and far.lr == pytest.approx(100.0)
    both = tune(data, make, lambda server_lr: FedAvg(server_lr=server_lr), rounds=1, lrs=(0.1, 1.0),
                server_lrs=(0.5, 1.0, 2.0), score=peaked(0.1, 0.25))
    assert (both.lr, both.server_lr) == pytest.approx((0.1, 0.25))
    assert both.extended == ("lr down to 0.01", "server_lr down to 0.25", "server_lr down to 0.125")
    assert both.build().server_lr == pytest.approx(0.25)


def test_tuning_scores_on_the_validation_split_never_the_test_set(tiny):
    data, make = tiny
    seen = []
    def spy(dataset, seed, lr):
        seen.append(dataset)
        return make(dataset, seed, lr)
    tune(data, spy, FedAvg, rounds=1, lrs=(0.1,), server_lrs=None, seeds=(0, 1))
    assert seen and all(d.name.endswith("(validation)") and len(d.y_test) < len(data.y_train) for d in seen)


def test_step_size_controls_take_a_server_learning_rate():
    controls = step_size_controls(momentum=0.5)
    assert [str(f(2.0)) for f in controls.values()] == ["FedAvg(server_lr=2.0)", "FedAvgM(server_lr=2.0, momentum=0.5)"]


@pytest.mark.parametrize("differences, claim, margin, expected", [
    ([0.03, 0.02, 0.04], "greater", 0.0, HOLDS),
    ([0.03, 0.02, 0.04], "greater", 0.025, INCONCLUSIVE),  # one seed below the margin
    ([0.05, -0.01, 0.04], "greater", 0.0, INCONCLUSIVE),  # the sign does not agree
    ([0.001, 0.03, 0.002], "greater", 0.0, INCONCLUSIVE),  # same sign, but the mean does not exceed the spread
    ([0.0, 0.0, 0.0], "greater", 0.0, FAILS),  # a tie is no gain
    ([-0.03, -0.02, 0.001], "greater", 0.0, FAILS),  # mean below minus the spread
    ([-3.0, -5.0, -4.0], "less", 0.0, HOLDS),  # e.g. fewer rounds to a target
    ([-3.0, np.nan, -4.0], "less", 0.0, INCONCLUSIVE),  # one seed never reached it
    ([0.03, 0.02], "greater", 0.0, INCONCLUSIVE),  # two seeds are not enough
    ([0.005, -0.004, 0.001], "within", 0.015, HOLDS),
    ([0.05, 0.04, 0.06], "within", 0.015, FAILS),
    ([0.02, -0.01, 0.0], "within", 0.015, INCONCLUSIVE),
])
def test_verdict_rule(differences, claim, margin, expected):
    assert verdict(differences, claim, margin) == expected


def test_claims_table_states_the_measurement_and_its_verdict():
    table = claims_table([claim_row("A beats B", "+4.8", [0.03, 0.02, 0.04]),
                          claim_row("C ties D", "same", [0.005, -0.004, 0.001], kind="within", margin=0.015)])
    assert list(table.columns) == ["claim", "paper", "this notebook", "verdict"]
    assert list(table.verdict) == [HOLDS, HOLDS]
    assert table["this notebook"][0] == "+0.030 ± 0.010 (3 seeds) (needs > 0)"
    with pytest.raises(ValueError, match="claim"):
        verdict([1, 2, 3], "bigger")


class WithoutCorrection(Scaffold):
    """SCAFFOLD with its key ingredient switched off: local steps see c = c_i = 0 (so it is FedAvg)."""

    def client_update(self, down, client_state, batches, ctx):
        zero = {"x": down["x"], "c": torch.zeros_like(down["c"])}
        message, _ = super().client_update(zero, {"c_i": torch.zeros_like(client_state["c_i"])}, batches, ctx)
        return message, client_state


def test_scaffold_claim_holds_and_fails_once_its_correction_is_switched_off(digits_data):
    """The pattern for assertions that can fail: the chapter's claim holds for the method and does not hold for
    the method with its key ingredient broken, on the same seeds and task (drift-heavy: Dir(0.1), 10 local steps)."""
    def make(dataset, seed, lr):
        return Federation(dataset, dirichlet(dataset.y_train, 10, 0.1, seed=seed), "logistic", local_steps=10,
                          batch_size=32, lr=lr, seed=seed)
    methods = {"FedAvg": FedAvg, "SCAFFOLD": Scaffold, "SCAFFOLD without correction": WithoutCorrection}
    history = pd.concat(run_all(RunConfig(digits_data, make, factory, seed, 0.1, None, 10, name)
                                for name, factory in methods.items() for seed in (0, 1, 2)))
    lower_loss = lambda h: -window_mean(h, "test_loss", last=5).mean  # noqa: E731  (higher is better)
    assert verdict(per_seed_difference(history, "SCAFFOLD", "FedAvg", lower_loss)) == HOLDS
    assert verdict(per_seed_difference(history, "SCAFFOLD without correction", "FedAvg", lower_loss)) == FAILS


def test_a_field_the_repr_hides_still_keys_the_run_cache(tiny):
    import dataclasses as dc

    from flbook.protocol import _describe

    @dc.dataclass
    class Guided(FedAvg):
        guide: torch.Tensor = dc.field(default=None, repr=False)

    one, other = Guided(guide=torch.zeros(3)), Guided(guide=torch.ones(3))
    assert repr(one) == repr(other) and _describe(one) != _describe(other)
    assert _describe(Guided(guide=torch.zeros(3))) == _describe(one)


def test_tune_without_a_server_grid_keeps_the_server_step_at_one(tiny):
    data, make = tiny
    tuned = tune(data, make, lambda server_lr: FedAvg(server_lr=server_lr), rounds=1, lrs=(0.1,), server_lrs=None)
    assert tuned.server_lr == 1.0 and list(tuned.scores["server_lr"]) == [1.0]


@pytest.mark.filterwarnings("ignore:.*edge of the grid")
def test_a_variant_brings_its_own_task_a_compressed_channel_built_afresh_for_every_run(tiny):
    from flbook.channel import CompressedChannel, top_k

    data, make = tiny
    clear_cache()
    built = []
    sparse = with_channel(make, lambda fed: built.append(1) or CompressedChannel(top_k(0.1), layers=fed.model))
    methods = {"FedAvg": lambda: FedAvg(), "FedAvg + top-k": lambda: FedAvg()}
    result = compare(data, make, methods, rounds=2, lrs=(0.1, 0.3), max_extensions=0, controls=False,
                     tasks={"FedAvg + top-k": sparse})
    assert len(built) == 2 + 3  # its two grid points on the validation split, then its three seeds: all compressed
    up = result.history.groupby("algorithm").bytes_up.last()
    assert up["FedAvg + top-k"] < up["FedAvg"] / 3  # same algorithm and step: the cache keys the channel too
    with pytest.raises(ValueError, match="tasks names methods"):
        compare(data, make, methods, rounds=1, lrs=(0.1,), controls=False, tasks={"top-k": sparse})
    links = compare_channels(data, make, {"FedAvg": None, "FedAvg + top-k": lambda fed: CompressedChannel(
        top_k(0.1), layers=fed.model)}, rounds=2, lrs=(0.1, 0.3), max_extensions=0)
    assert links.history.equals(result.history)  # the same comparison, from the cache


def test_dirichlet_task_builds_one_federation_per_seed_at_the_given_lr(digits_data):
    from flbook.protocol import dirichlet_task
    make = dirichlet_task(alpha=0.3, n_clients=6, local_steps=2, model="logistic")
    a, b = make(digits_data, 0, 0.2), make(digits_data, 1, 0.2)
    assert a.n_clients == 6 and a.lr == 0.2 and a.local_steps == 2 and a.seed == 0
    assert not all(np.array_equal(p, q) for p, q in zip(a.partition, b.partition))  # each seed its own split
    assert all(np.array_equal(p, q) for p, q in zip(a.partition, make(digits_data, 0, 0.5).partition))
