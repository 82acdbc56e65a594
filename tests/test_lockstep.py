"""Lockstep runs: each run's history equals its single run; divergence, grouping in the protocol, bad input."""
import dataclasses
import os
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from flbook import Federation, lockstep as L, protocol
from flbook.algorithms import FedAdam, FedAMD, FedAvg, FedAvgM, FedProx, Scaffold
from flbook.channel import CompressedChannel, NoisyChannel, top_k
from flbook.executors import BackpropContext, BatchedExecutor, Cohort, LoopExecutor, chunks
from flbook.rounds import DivergenceError
from flbook.runtime import cpu_threads
from flbook.partition import dirichlet

ROUNDS = 4


def make(data, seed, lr, **kwargs):
    """Unequal Dirichlet clients (sizes differ several-fold), so size weights and epoch step counts matter."""
    kwargs = {"local_steps": 2, "batch_size": 16, **kwargs}
    return Federation(data, dirichlet(data.y_train, 6, 0.5, seed=seed), "mlp", lr=lr, seed=seed, **kwargs)


def assert_same(single: pd.DataFrame, stepped: pd.DataFrame) -> None:
    assert list(single.columns) == list(stepped.columns) and len(single) == len(stepped)
    assert single.attrs == stepped.attrs
    assert (single["algorithm"] == stepped["algorithm"]).all() and (single["round"] == stepped["round"]).all()
    numbers = [c for c in single.columns if c not in ("algorithm", "wall_time")]
    assert np.allclose(single[numbers].to_numpy(float), stepped[numbers].to_numpy(float), rtol=1e-5, atol=1e-6)


def both(data, grid, algorithm, rounds=ROUNDS, channel=None, **fed_kwargs):
    """(single-run histories, lockstep histories, final models of each) for every (seed, lr, server_lr) of `grid`."""
    single, feds = [], []
    for seed, lr, s in grid:
        fed = make(data, seed, lr, **fed_kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            single.append(fed.run(algorithm(s), rounds, channel=channel and channel(), progress=False,
                                  on_divergence="stop", label=f"run{len(single)}"))
        feds.append(fed.final_models[f"run{len(feds)}"])
    runs = [L.Run(make(data, seed, lr, **fed_kwargs), algorithm(s), channel and channel(), label=f"run{k}")
            for k, (seed, lr, s) in enumerate(grid)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stepped = L.lockstep(runs, rounds, progress=False, on_divergence="stop")
    return single, stepped, feds, [r.federation.final_models[r.label] for r in runs]


GRID = [(0, 0.05, 1.0), (1, 0.05, 2.0), (0, 0.2, 0.5), (2, 0.1, 1.0)]
ALGORITHMS = {"FedAvg": lambda s: FedAvg(server_lr=s), "FedAvgM": lambda s: FedAvgM(server_lr=s, momentum=0.5),
              "SCAFFOLD": lambda s: Scaffold(server_lr=s), "FedProx": lambda s: FedProx(server_lr=s, mu=0.1),
              "FedAdam": lambda s: FedAdam(server_lr=0.01 * s)}


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_each_run_equals_its_single_run(digits_data, name):
    single, stepped, x_single, x_stepped = both(digits_data, GRID, ALGORITHMS[name])
    for a, b, xa, xb in zip(single, stepped, x_single, x_stepped):
        assert_same(a, b)
        assert torch.allclose(xa, xb, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(x_stepped[0], x_stepped[1])  # the runs did differ


@pytest.mark.parametrize("fed_kwargs", [{"local_epochs": 0.5}, {"clients_per_round": 3},
                                        {"executor": "loop"}, {"executor": BatchedExecutor(chunk_size=4)}],
                         ids=["epochs", "sampled", "loop", "chunks"])
def test_epochs_sampling_and_executors_match_single_runs(digits_data, fed_kwargs):
    for a, b, xa, xb in zip(*both(digits_data, GRID, ALGORITHMS["SCAFFOLD"], **fed_kwargs)):
        assert_same(a, b)


@pytest.mark.parametrize("channel", [lambda: CompressedChannel(up=top_k(0.1), error_feedback=True),
                                     lambda: NoisyChannel(snr_db=20, drop_prob=0.3, links="both")],
                         ids=["top-k with error feedback", "noisy lossy both ways"])
def test_lossy_and_compressing_channels_match_single_runs(digits_data, channel):
    single, stepped, *_ = both(digits_data, GRID, ALGORITHMS["FedAvg"], channel=channel)
    for a, b in zip(single, stepped):
        assert_same(a, b)
    assert single[0]["bytes_up"].iloc[-1] != single[-1]["bytes_up"].iloc[-1] or "noisy" in str(channel())


def test_a_shared_channel_object_is_not_shared_between_runs(digits_data):
    channel = CompressedChannel(up=top_k(0.1), error_feedback=True)  # per-client memory: must not mix runs
    fed = make(digits_data, 0, 0.1, channel=channel)
    alone = [make(digits_data, 0, 0.1, channel=CompressedChannel(up=top_k(0.1), error_feedback=True)).run(
        FedAvg(server_lr=s), ROUNDS, progress=False) for s in (1.0, 2.0)]
    stepped = L.lockstep([L.Run(fed, FedAvg(server_lr=s), label=str(FedAvg(server_lr=s))) for s in (1.0, 2.0)],
                         ROUNDS, progress=False)
    for a, b in zip(alone, stepped):
        assert_same(a, b)


def test_a_diverging_run_stops_while_the_others_go_on(digits_data):
    grid = [(0, 0.1, 1.0), (0, 1e20, 4.0), (1, 0.1, 1.0)]
    single, stepped, *_ = both(digits_data, grid, ALGORITHMS["FedAvg"], rounds=8)
    assert single[1].attrs.get("diverged_at") is not None and len(single[1]) < 9
    for a, b in zip(single, stepped):
        assert_same(a, b)
    assert len(stepped[0]) == len(stepped[2]) == 9
    runs = [L.Run(make(digits_data, seed, lr), FedAvg(server_lr=s)) for seed, lr, s in grid]
    with pytest.warns(RuntimeWarning, match="diverged at round"):
        L.lockstep(runs, 8, progress=False, on_divergence="stop")
    runs = [L.Run(make(digits_data, seed, lr), FedAvg(server_lr=s)) for seed, lr, s in grid]
    with pytest.raises(DivergenceError, match="smaller learning rate"):
        L.lockstep(runs, 8, progress=False)


def test_per_row_learning_rates_reach_client_update(digits_data):
    fed = make(digits_data, 0, 0.1)
    ids = torch.arange(4)
    index = fed.sample_batches(ids, None, torch.Generator().manual_seed(0))
    x = fed.initial_model()
    lrs = [0.05, 0.05, 0.2, 0.4]
    for executor in (LoopExecutor(), BatchedExecutor(chunk_size=3)):
        stacked, _ = executor(FedAvg(), {"x": x}, {}, Cohort(fed.x_train, fed.y_train, index,
                                                              lr=torch.tensor(lrs, dtype=torch.float64)),
                              fed.context(FedAvg()))
        for m, lr in enumerate(lrs):
            alone, _ = make(digits_data, 0, lr).train_cohort(FedAvg(), {"x": x}, index[m:m + 1], executor=executor)
            assert torch.allclose(stacked["delta"][m], alone["delta"][0], rtol=1e-5, atol=1e-7)


def test_chunks_pack_whole_blocks_and_split_only_large_ones():
    assert chunks((10,), 4) == [slice(0, 4), slice(4, 8), slice(8, 10)]  # one cohort: as before
    assert chunks((3, 3, 3), 6) == [slice(0, 6), slice(6, 9)]
    assert chunks((2, 7, 1), 4) == [slice(0, 2), slice(2, 6), slice(6, 9), slice(9, 10)]
    rows = [r for c in chunks((5, 1, 8, 2), 3) for r in range(c.start, c.stop)]
    assert rows == list(range(16)) and all(c.stop - c.start <= 3 for c in chunks((5, 1, 8, 2), 3))


def test_bad_input_names_what_is_wrong(digits_data):
    fed = make(digits_data, 0, 0.1)
    with pytest.raises(ValueError, match="at least one Run"):
        L.lockstep([], 3)
    with pytest.raises(TypeError, match=r"runs\[0\] must be a lockstep.Run"):
        L.lockstep([(fed, FedAvg())], 3)
    with pytest.raises(TypeError, match="sequence of lockstep.Run"):
        L.lockstep(L.Run(fed, FedAvg()), 3)
    with pytest.raises(ValueError, match="rounds"):
        L.lockstep([L.Run(fed, FedAvg())], 0)
    with pytest.raises(ValueError, match="on_divergence"):
        L.lockstep([L.Run(fed, FedAvg())], 2, on_divergence="ignore")
    with pytest.raises(ValueError, match=r"runs\[1\] differs from runs\[0\] in its batch_size"):
        L.lockstep([L.Run(fed, FedAvg()), L.Run(make(digits_data, 1, 0.1, batch_size=8), FedAvg())], 2)
    with pytest.raises(ValueError, match="algorithm class"):
        L.lockstep([L.Run(fed, FedAvg()), L.Run(make(digits_data, 1, 0.1), Scaffold())], 2)
    with pytest.raises(ValueError, match="client-side hyperparameters"):
        L.lockstep([L.Run(fed, FedProx(mu=0.1)), L.Run(make(digits_data, 1, 0.1), FedProx(mu=0.2))], 2)
    with pytest.raises(ValueError, match="cannot run in lockstep"):
        L.lockstep([L.Run(fed, FedAMD())], 2)
    assert L.shape_key(fed, FedAMD()) is None and L.shape_key(fed, FedAvg()) == L.shape_key(fed, FedAvg(server_lr=2))


# ---------------------------------------------------------------------------------------------------- protocol
def tiny(dataset, seed, lr):
    return Federation(dataset, dirichlet(dataset.y_train, 4, 0.5, seed=seed), "logistic", local_steps=2,
                      batch_size=16, lr=lr, seed=seed)


def configs(data, method=lambda server_lr: FedAvg(server_lr=server_lr), name="FedAvg", server_lrs=(1.0, 2.0)):
    return [protocol.RunConfig(data, tiny, method, seed, lr, s, 3, name) for seed in (0, 1) for lr in (0.05, 0.2)
            for s in server_lrs]


def test_run_all_groups_compatible_runs_and_equals_running_them_one_by_one(digits_data, monkeypatch):
    protocol.clear_cache()
    todo = configs(digits_data) + configs(digits_data, lambda server_lr: Scaffold(server_lr=server_lr), "SCAFFOLD")
    alone = [protocol.run(c) for c in todo]
    protocol.clear_cache()
    groups = []
    real = L.lockstep
    monkeypatch.setattr(L, "lockstep", lambda runs, *a, **k: groups.append(len(runs)) or real(runs, *a, **k))
    together = protocol.run_all(todo)
    assert sorted(groups) == [8, 8]  # one group per method: seeds, lrs and server lrs stacked
    for a, b in zip(alone, together):
        assert_same(a.drop(columns=["seed", "lr", "server_lr"]), b.drop(columns=["seed", "lr", "server_lr"]))
        assert (a[["seed", "lr", "server_lr"]].to_numpy() == b[["seed", "lr", "server_lr"]].to_numpy()).all()
    groups.clear()
    again = protocol.run_all(todo)  # all cached now
    assert groups == [] and all(a.equals(b) for a, b in zip(together, again))


def test_run_all_runs_a_configuration_once_and_shares_it_between_labels(digits_data, monkeypatch):
    protocol.clear_cache()
    base = configs(digits_data, server_lrs=(1.0,))
    twin = [protocol.RunConfig(c.dataset, c.make_federation, lambda: FedAvg(), c.seed, c.lr, None, 3, "plain")
            for c in base]  # FedAvg() equals FedAvg(server_lr=1.0): the same run under another label
    sizes = []
    real = L.lockstep
    monkeypatch.setattr(L, "lockstep", lambda runs, *a, **k: sizes.append(len(runs)) or real(runs, *a, **k))
    histories = protocol.run_all(base + twin)
    assert sizes == [4]
    for a, b in zip(histories[:4], histories[4:]):
        assert (b["algorithm"] == "plain").all() and np.allclose(a["test_acc"], b["test_acc"])


def test_run_all_falls_back_to_single_runs_for_what_cannot_be_batched(digits_data, monkeypatch):
    protocol.clear_cache()
    amd = [protocol.RunConfig(digits_data, tiny, lambda: FedAMD(), seed, 0.1, None, 3, "FedAMD") for seed in (0, 1)]
    lone = configs(digits_data, server_lrs=(1.0,))[:1]
    sizes = []
    real = L.lockstep
    monkeypatch.setattr(L, "lockstep", lambda runs, *a, **k: sizes.append(len(runs)) or real(runs, *a, **k))
    histories = protocol.run_all(amd + lone)
    assert sizes == [] and [h["algorithm"].iloc[0] for h in histories] == ["FedAMD", "FedAMD", "FedAvg"]
    protocol.clear_cache()
    assert np.allclose(protocol.run(amd[1])["test_acc"], histories[1]["test_acc"])


def test_chunks_of_stacked_runs_train_side_by_side_to_the_same_bits(digits_data):
    fed = make(digits_data, 0, 0.1)
    ids = torch.arange(6)
    index = fed.sample_batches(ids, None, torch.Generator().manual_seed(0))
    x = torch.stack([fed.initial_model(), make(digits_data, 1, 0.1).initial_model()])  # (G, P) a downlink per run
    cohort = Cohort(fed.x_train, fed.y_train, index, lr=torch.tensor([0.1] * 3 + [0.3] * 3, dtype=torch.float64),
                    blocks=(3, 3))
    one, _ = BatchedExecutor(workers=1)(FedAvg(), {"x": x}, {}, cohort, fed.context(FedAvg()))
    two, _ = BatchedExecutor(workers=2)(FedAvg(), {"x": x}, {}, cohort, fed.context(FedAvg()))
    assert torch.equal(one["delta"], two["delta"])
    alone, _ = make(digits_data, 1, 0.3).train_cohort(FedAvg(), {"x": x[1]}, index[3:])
    assert torch.equal(one["delta"][3:], alone["delta"])  # a chunk inside one run computes what that run would
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    ctx, cohort = fed.context(FedAvg()), Cohort(fed.x_train, fed.y_train, index)
    explicit = BackpropContext(**{f.name: getattr(ctx, f.name) for f in dataclasses.fields(ctx)})
    with cpu_threads(1):  # ops on one thread each: every core trains the MLP's explicit-backprop chunks...
        assert BatchedExecutor().workers_for(cohort, explicit) == cores
        assert BatchedExecutor().workers_for(cohort, ctx) == 1  # ...one at a time through autograd transforms
    with cpu_threads(2):  # ops that already spread over cores: one chunk at a time
        assert BatchedExecutor().workers_for(cohort, explicit) == 1
    with pytest.raises(ValueError, match="workers"):
        BatchedExecutor(workers=0)


def test_an_attacked_run_matches_its_single_run(digits_data):
    from flbook.attacks import Adversary, Attack

    def adversary():
        return Adversary(Attack("gaussian"), f=2, seed=3)
    alone = make(digits_data, 1, 0.1).run(FedAvg(), ROUNDS, adversary=adversary(), progress=False)
    clean = make(digits_data, 0, 0.1).run(FedAvg(), ROUNDS, progress=False)
    stepped = L.lockstep([L.Run(make(digits_data, 0, 0.1), FedAvg()),
                          L.Run(make(digits_data, 1, 0.1), FedAvg(), adversary=adversary())], ROUNDS, progress=False)
    assert_same(clean, stepped[0])
    assert_same(alone, stepped[1])
    assert stepped[1].attrs["byzantine"] == alone.attrs["byzantine"] and "byzantine" not in stepped[0].attrs


def test_runs_that_train_on_labels_of_their_own_are_refused(digits_data):
    from flbook.attacks import Adversary, Attack

    flipping = Adversary(Attack("label_flipping"), f=2, seed=3)
    with pytest.raises(ValueError, match="same labels; a data-poisoning adversary"):
        L.lockstep([L.Run(make(digits_data, 0, 0.1), FedAvg()),
                    L.Run(make(digits_data, 1, 0.1), FedAvg(), adversary=flipping)], ROUNDS, progress=False)


def test_a_group_size_counts_server_state_held_per_client(digits_data):
    from flbook.algorithms import FedStale

    fed = make(digits_data, 0, 0.1)
    known = FedStale(beta=0.5, probabilities=(0.5,) * fed.n_clients)  # its server state is (N, P)
    assert 1 <= L.fits(fed, known) < L.fits(fed, FedAvg())
