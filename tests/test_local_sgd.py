"""Local SGD and EDiT's pseudo-gradient penalty: the card's invariants."""
import pytest
import torch

from flbook.local_sgd import (Method, Penalty, detector_init, markov_corpus, outer_step, penalized_average, train,
                              unit_norms)
from flbook.transformer import causal_lm

UNITS = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])  # (P,) three synchronised units of sizes 3, 2, 4


def _deltas(m=4, seed=0):
    return torch.randn(m, len(UNITS), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_outer_sgd_lr_one_without_momentum_is_plain_local_sgd():
    anchor = torch.randn(len(UNITS), dtype=torch.float64)
    workers = anchor - _deltas()  # theta_m = theta_hat - Delta_m
    delta, weights, _ = penalized_average(anchor - workers, UNITS, 3, detector_init(4, 3), None)
    new, _ = outer_step(anchor, delta, torch.zeros_like(anchor), lr=1.0, momentum=0.0)
    assert torch.allclose(new, workers.mean(0)) and torch.allclose(weights, torch.full((4, 3), 0.25))


def test_equal_pseudo_gradient_norms_give_uniform_weights():
    base = _deltas(1)[0]
    deltas = torch.stack([base, -base, base.abs(), -base.abs()])  # in every unit: equal norms
    _, weights, _ = penalized_average(deltas, UNITS, 3, detector_init(4, 3), Penalty(anomaly=False, clip=None))
    assert torch.allclose(weights, torch.full((4, 3), 0.25, dtype=weights.dtype))


def test_clipping_is_a_no_op_below_phi_and_bounds_the_norm_above():
    deltas = _deltas() * 10
    loose, _, _ = penalized_average(deltas, UNITS, 3, detector_init(4, 3), Penalty(anomaly=False, clip=1e6))
    free, _, _ = penalized_average(deltas, UNITS, 3, detector_init(4, 3), Penalty(anomaly=False, clip=None))
    assert torch.equal(loose, free)
    clipped, _, _ = penalized_average(deltas, UNITS, 3, detector_init(4, 3), Penalty(anomaly=False, clip=0.5))
    assert (unit_norms(clipped[None], UNITS, 3) <= 0.5 + 1e-6).all()


def test_detector_waits_for_its_warmup_then_drops_a_spiking_worker():
    penalty = Penalty(warmup=5, clip=None)
    state = detector_init(4, 3)
    for s in range(8):  # steady norms with a little noise; a spike of worker 0 at sync 3 (in the warm-up) and 7
        deltas = _deltas(seed=s) * 0.1
        if s in (3, 7):
            deltas[0] *= 100
        _, weights, state = penalized_average(deltas, UNITS, 3, state, penalty)
        if s == 3:
            assert (weights[0] > 0).all()  # the detector never flags during its warm-up
    assert (weights[0] < 1e-6).all() and torch.allclose(weights.sum(0), torch.ones(3, dtype=weights.dtype))
    off = Penalty(warmup=5, clip=None, anomaly=False)
    _, plain, _ = penalized_average(deltas, UNITS, 3, detector_init(4, 3), off)
    assert (plain[0] > 0).all()  # breaking the anomaly test lets the spike in (with a small softmax weight)


def test_layer_wise_sync_equals_syncing_every_layer_at_once():
    deltas = _deltas()
    joint, _, _ = penalized_average(deltas, UNITS, 3, detector_init(4, 3), Penalty(anomaly=False, clip=1.0))
    for u in range(3):
        cols = UNITS == u
        alone, _, _ = penalized_average(deltas[:, cols], torch.zeros(int(cols.sum()), dtype=torch.long), 1,
                                        detector_init(4, 1), Penalty(anomaly=False, clip=1.0))
        assert torch.allclose(joint[cols], alone)


def test_tau_one_with_inner_sgd_and_outer_lr_one_is_data_parallel_sgd():
    tokens, _ = markov_corpus(64, 8, 8, seed=0)
    model = causal_lm(8, 8, dim=16, depth=1)
    local = train(Method("local", interval=1, inner="sgd"), model, tokens, tokens[:16], n_workers=3, syncs=4,
                  batch_size=4, lr=0.1)
    dp = train(Method("dp", data_parallel=True, inner="sgd"), model, tokens, tokens[:16], n_workers=3, syncs=4,
               batch_size=4, lr=0.1)
    assert torch.allclose(torch.tensor(local.loss.to_numpy()), torch.tensor(dp.loss.to_numpy()), atol=1e-5)
    assert local.loss.iloc[-1] < local.loss.iloc[0]


def test_time_based_sync_lets_fast_workers_step_more():
    tokens, _ = markov_corpus(64, 8, 8, seed=0)
    model = causal_lm(8, 8, dim=16, depth=1)
    speeds = torch.tensor([1.0, 1.0, 0.25])
    sync = train(Method("EDiT", interval=4), model, tokens, tokens[:16], n_workers=3, syncs=2, batch_size=4,
                 speeds=speeds)
    timed = train(Method("A-EDiT", time_interval=4.0), model, tokens, tokens[:16], n_workers=3, syncs=2, batch_size=4,
                  speeds=speeds)
    assert sync.time.iloc[-1] == 2 * 16.0 and sync.steps.iloc[-1] == 2 * 12  # waits for the straggler
    assert timed.time.iloc[-1] == 2 * 4.0 and timed.steps.iloc[-1] == 2 * 9  # 4 + 4 + 1 steps per window


def test_markov_corpus_is_seeded_and_bad_inputs_are_named():
    a, h = markov_corpus(16, 10, 6, seed=1)
    assert torch.equal(a, markov_corpus(16, 10, 6, seed=1)[0]) and a.max() < 6 and 0 < h < torch.log(torch.tensor(6.0))
    with pytest.raises(ValueError, match="inner"):
        Method("x", inner="adam")
    with pytest.raises(ValueError, match="speeds"):
        train(Method("x"), causal_lm(6, 10), a, a, n_workers=2, syncs=1, speeds=torch.tensor([1.0]))


def test_stacked_runs_equal_separate_runs():
    tokens, _ = markov_corpus(64, 8, 8, seed=0)
    model = causal_lm(8, 8, dim=16, depth=1)
    method = Method("EDiT", interval=2, outer_lr=0.7, momentum=0.8, penalty=Penalty(warmup=1))
    kw = dict(n_workers=3, syncs=3, batch_size=4, corrupt_at=(2,), corrupt_scale=30.0)
    both = train(method, model, tokens, tokens[:16], seed=(0, 1), lr=(3e-3, 1e-2), **kw)
    for seed, lr in ((0, 3e-3), (1, 1e-2)):
        alone = train(method, model, tokens, tokens[:16], seed=seed, lr=lr, **kw)
        mine = both[both.seed == seed].reset_index(drop=True)
        assert torch.allclose(torch.tensor(mine.loss.to_numpy()), torch.tensor(alone.loss.to_numpy()), atol=1e-5)
    with pytest.raises(ValueError, match="seed and lr"):
        train(method, model, tokens, tokens[:16], seed=(0, 1), lr=(1e-3, 2e-3, 3e-3), **kw)
