"""MoNNA (Farhadkhani et al. 2023): the card's invariants on the decentralized runner, and its robustness."""
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from flbook import Federation
from flbook.algorithms import FedAvg, MomentumSGD, NNAMixer
from flbook.decentralized import Decentralized
from flbook.partition import dirichlet
from flbook.topology import complete, uniform_weights

N = 10


def _fed(digits_data, seed=0):
    parts = dirichlet(digits_data.y_train, n_clients=N, alpha=0.5, seed=seed)
    return Federation(digits_data, parts, "logistic", local_steps=1, batch_size=25, lr=0.3, seed=seed)


def _run(fed, mixer, beta, rounds=3, **kw):
    net = Decentralized(fed, uniform_weights(complete(N)), mixer=mixer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        history = net.run(MomentumSGD(beta=beta), rounds, progress=False, on_divergence="stop", **kw)
    return net, history


def test_without_attackers_monna_is_dsgd_with_momentum_on_the_complete_graph(digits_data):
    """f = 0: every node receives all n models and keeps all, so NNA is the exact mean (uniform gossip)."""
    fed = _fed(digits_data)
    dsgd, _ = _run(fed, None, 0.9)
    monna, _ = _run(fed, NNAMixer(f=0), 0.9)
    X, Y = dsgd.final_models["MomentumSGD(beta=0.9)"], monna.final_models["MomentumSGD(beta=0.9)"]
    torch.testing.assert_close(Y, X, rtol=1e-5, atol=1e-6)
    assert torch.allclose(Y, Y[0].expand_as(Y), atol=1e-6)  # all honest models identical after every step


def test_beta_zero_is_plain_sgd(digits_data):
    fed = _fed(digits_data)
    W = uniform_weights(complete(N))
    a = Decentralized(fed, W)
    a.run(FedAvg(), 3, progress=False, label="sgd")
    b = Decentralized(fed, W)
    b.run(MomentumSGD(beta=0.0), 3, progress=False, label="m0")
    torch.testing.assert_close(b.final_models["m0"], a.final_models["sgd"], rtol=0, atol=0)


def test_nna_returns_v_when_every_honest_model_is_v():
    mixer = NNAMixer(f=2, attack="sign_flipping")
    v = torch.randn(6)
    X = v.expand(N, 6).clone()
    X[mixer.byzantine(N)] = 100.0  # their own rows are ignored; the attack is crafted from the honest ones
    out = mixer(X, torch.eye(N), SimpleNamespace(rng=np.random.default_rng(0)))
    honest = torch.as_tensor(mixer.counted(N))
    torch.testing.assert_close(out[honest], v.expand(len(honest), 6))
    assert len(honest) == N - 2 and not set(honest.tolist()) & set(mixer.byzantine(N).tolist())


def test_the_line_search_targets_the_honest_nna_outputs():
    mixer = NNAMixer(f=2, attack="foe")
    honest = torch.randn(8, 5, generator=torch.Generator().manual_seed(0)) + 3.0  # seeded: a test's own draw
    b = mixer._attack(honest)
    assert b.shape == (2, 5) and torch.equal(b[0], b[1])
    assert not torch.allclose(b[0], honest.mean(0))  # some scale moved the outputs


def test_nna_survives_sign_flipping_that_breaks_the_mean(digits_data):
    """The key ingredient: the same attack with the mean in NNA's place ruins the honest nodes."""
    fed = _fed(digits_data)
    _, nna = _run(fed, NNAMixer(f=2), 0.0, rounds=30, eval_every=30)
    _, mean = _run(fed, NNAMixer(f=2, rule="mean"), 0.0, rounds=30, eval_every=30)
    assert nna["local_acc"].iloc[-1] > 0.7 and nna["local_acc"].iloc[-1] > mean["local_acc"].iloc[-1] + 0.3


@pytest.mark.parametrize("make, match", [
    (lambda: NNAMixer(f=4).byzantine(N), r"3 f < n"),
    (lambda: NNAMixer(rule="krum"), r"rule must be one of"),
    (lambda: NNAMixer(attack="inf"), r"attack must be one of"),
    (lambda: NNAMixer(f=-1), r"f must be an integer >= 0"),
    (lambda: MomentumSGD(beta=1.0), r"beta \(momentum\) must be in \[0, 1\)"),
])
def test_bad_settings_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_label_flipping_without_attackers_leaves_the_run_unchanged_and_flipping_is_an_involution(digits_data):
    from flbook.attacks import flip_labels

    fed = _fed(digits_data)
    plain, _ = _run(fed, NNAMixer(f=0), 0.9)
    flipping, _ = _run(fed, NNAMixer(f=0, attack="label_flipping"), 0.9)
    name = "MomentumSGD(beta=0.9)"
    assert torch.equal(flipping.final_models[name], plain.final_models[name])
    assert torch.equal(flip_labels(flip_labels(fed.y_train, 10), 10), fed.y_train)
    assert not torch.equal(flip_labels(fed.y_train, 10), fed.y_train)


class _Recording(NNAMixer):
    """An NNAMixer that keeps what the runner handed it."""

    def __call__(self, X, W, info):
        object.__setattr__(self, "seen", (X.clone(), info.flipped.clone()))
        return super().__call__(X, W, info)


def test_label_flipping_sends_the_honest_mean_minus_gamma_t_times_the_flipped_gradient(digits_data):
    """The runner's flipped updates are -gamma_t grad at theta_i^t on node i's own batch with labels (C-1) - y."""
    from flbook.attacks import flip_labels

    fed = _fed(digits_data)
    mixer = _Recording(f=2, attack="label_flipping")
    net = Decentralized(fed, uniform_weights(complete(N)), mixer=mixer, lr_schedule=lambda t: 0.5)
    net.run(MomentumSGD(beta=0.9), 1, progress=False)
    half, flipped = mixer.seen
    x0 = fed.initial_model()
    index = fed.sample_batches(torch.arange(N), None, torch.Generator().manual_seed(fed.seed))[:, 0]  # (N, B)
    y = flip_labels(fed.y_train, 10)
    expected = torch.stack([-0.5 * fed.lr * torch.func.grad(fed.context(MomentumSGD()).loss)(x0, fed.x_train[i], y[i])
                            for i in index])
    torch.testing.assert_close(flipped, expected, rtol=1e-5, atol=1e-7)
    good = torch.as_tensor(mixer.counted(N))
    b = mixer._attack(half[good], flipped[good])
    torch.testing.assert_close(b, (half[good].mean(0) + flipped[good].mean(0)).expand(2, -1))
    with pytest.raises(ValueError, match="label_flipping needs the honest nodes' updates"):
        mixer._attack(half[good])


def test_the_step_size_schedule_scales_gamma_and_decays_as_the_code(digits_data):
    from flbook.decentralized import InverseTimeDecay

    fed, half_lr = _fed(digits_data), _fed(digits_data)
    half_lr.lr = fed.lr / 2
    W = uniform_weights(complete(N))
    a = Decentralized(fed, W, lr_schedule=lambda t: 0.5)
    a.run(MomentumSGD(beta=0.9), 3, progress=False, label="m")
    b = Decentralized(half_lr, W)
    b.run(MomentumSGD(beta=0.9), 3, progress=False, label="m")
    assert torch.equal(a.final_models["m"], b.final_models["m"])
    decay = InverseTimeDecay()  # gamma_0 / (floor(s / 50) + 1) at steps s = t - 1
    assert [decay(t) for t in (1, 50, 51, 100, 101, 151)] == [1.0, 1.0, 0.5, 0.5, 1 / 3, 0.25]
    assert InverseTimeDecay(tau=167, every=1500)(1501) == pytest.approx(1 / (1500 / 167 + 1))
    with pytest.raises(ValueError, match="every an integer >= 1"):
        InverseTimeDecay(every=0)
