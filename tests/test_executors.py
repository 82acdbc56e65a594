"""Executors: the batched executor's explicit backpropagation gives autograd's gradient, bit for bit."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flbook.algorithms import FedAvg, FedLD
from flbook.algorithms.base import Batches, LocalContext
from flbook.executors import BackpropContext, BatchedExecutor, Cohort
from flbook.federation import Federation
from flbook.models import FlatModel, cnn, is_perceptron, logistic, mlp


def _stacked_grads(ctx: LocalContext, n_clients: int, batch: int, n_features: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    theta = torch.stack([ctx.model.init(seed) for seed in range(n_clients)])  # (M, P)
    x = torch.randn(n_clients, batch, n_features, generator=g)  # (M, B, D)
    y = torch.randint(0, 10, (n_clients, batch), generator=g)  # (M, B)
    return torch.func.vmap(ctx.grad)(theta, x, y)  # (M, P)


def test_backprop_gradient_is_torch_func_gradient_exactly():
    for model, weight_decay, batch in ((mlp(64, 10, hidden=(16, 8)), 0.0, 7), (mlp(64, 10, hidden=(32,)), 1e-3, 32),
                                       (logistic(64, 10), 0.0, 5)):
        fields = (model, 0.1, weight_decay, FedAvg().loss)
        reference = _stacked_grads(LocalContext(*fields), 5, batch, 64)
        assert torch.equal(_stacked_grads(BackpropContext(*fields), 5, batch, 64), reference)


def test_other_losses_fall_back_to_autograd():
    def smoothed(logits, y):
        return F.cross_entropy(logits, y, label_smoothing=0.1)
    fields = (mlp(64, 10, hidden=(16,)), 0.1, 0.0, smoothed)
    plain = _stacked_grads(LocalContext(*fields[:3], F.cross_entropy), 3, 8, 64)
    reference = _stacked_grads(LocalContext(*fields), 3, 8, 64)
    assert not torch.equal(plain, reference)  # the smoothing changes the gradient...
    assert torch.equal(_stacked_grads(BackpropContext(*fields), 3, 8, 64), reference)  # ...and is kept


def test_only_flatten_linear_relu_chains_take_the_explicit_path():
    assert is_perceptron(mlp(64, 10).module) and is_perceptron(logistic(64, 10).module)
    assert not is_perceptron(cnn((1, 8, 8), 10).module)
    assert not is_perceptron(nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Linear(3, 2)))  # no ReLU between
    assert not is_perceptron(nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)))
    assert not is_perceptron(nn.Sequential(nn.Flatten(), nn.Linear(4, 2, bias=False)))
    assert not is_perceptron(FlatModel(nn.Sequential(nn.Flatten(0), nn.Linear(4, 2)), "custom").module)


def test_batched_mlp_round_needs_no_torch_func_grad(digits_data, monkeypatch):
    """The first torch.func.grad of a process imports torch._dynamo (about a second): a default round avoids it."""
    parts = [torch.arange(k, len(digits_data.y_train), 7).numpy() for k in range(7)]  # unequal sizes
    fed = Federation(digits_data, parts, "mlp", executor="batched", local_epochs=1.0, batch_size=64)
    expected = fed.run(FedAvg(), 2, progress=False).test_loss.to_numpy()

    def refuse(*args, **kwargs):
        raise AssertionError("torch.func.grad was called")
    monkeypatch.setattr(torch.func, "grad", refuse)
    assert np.array_equal(fed.run(FedAvg(), 2, progress=False).test_loss.to_numpy(), expected)
    with pytest.raises(AssertionError, match="torch.func.grad was called"):  # a method's own loss still uses it
        fed.run(FedLD(margin=0.1, principal_gradient=False), 1, progress=False)


def test_chunks_trained_side_by_side_through_functional_call_give_the_same_bits(digits_data):
    """`functional_call` swaps the module's parameters while it runs: each worker thread gets its own module."""
    parts = [torch.arange(k, len(digits_data.y_train), 6).numpy() for k in range(6)]
    fed = Federation(digits_data, parts, cnn((1, 8, 8), 10), local_steps=3, batch_size=16, executor="batched")
    ids = torch.arange(6)
    index = fed.sample_batches(ids, None, torch.Generator().manual_seed(0))  # (6, K, B)
    down = {"x": fed.initial_model()}
    one, _ = BatchedExecutor(chunk_size=2, workers=1)(FedAvg(), down, {}, Cohort(fed.x_train, fed.y_train, index),
                                                       fed.context(FedAvg()))
    for _ in range(3):
        two, _ = BatchedExecutor(chunk_size=2, workers=2)(FedAvg(), down, {},
                                                           Cohort(fed.x_train, fed.y_train, index),
                                                           fed.context(FedAvg()))
        assert torch.equal(one["delta"], two["delta"])


def test_k_steps_on_the_layers_are_k_flat_steps_exactly():
    """`BackpropContext.sgd` keeps each layer's tensor between steps; padding steps (active False) change nothing."""
    ctx = BackpropContext(mlp(64, 10, hidden=(16, 8)), 0.1, 1e-3, FedAvg().loss)
    g = torch.Generator().manual_seed(4)
    theta = torch.stack([ctx.model.init(seed) for seed in range(3)])  # (M, P)
    x, y = torch.randn(3, 4, 6, 64, generator=g), torch.randint(0, 10, (3, 4, 6), generator=g)  # (M, K, B, ...)
    active = torch.tensor([[True] * 4, [True, True, False, False], [True, False, False, False]])  # (M, K)

    def flat_steps(t, xb, yb, on):
        return FedAvg.local_sgd(t, ctx.sgd_step, Batches(xb, yb, on))

    def layer_steps(t, xb, yb, on):
        return ctx.sgd(t, Batches(xb, yb, on))
    for on, dims in ((None, (0, 0, 0, None)), (active, (0, 0, 0, 0))):
        expected = torch.func.vmap(flat_steps, in_dims=dims)(theta, x, y, on)  # (M, P)
        assert torch.equal(torch.func.vmap(layer_steps, in_dims=dims)(theta, x, y, on), expected)
    single = FedAvg.local_sgd(theta[2], ctx.sgd_step, Batches(x[2, :1], y[2, :1]))  # client 2 took one real step
    assert torch.equal(expected[2], single)


def test_a_small_cohort_of_large_steps_is_shared_among_the_cores(monkeypatch):
    """Ten clients fit one chunk; on two chunk threads the MLP's 5 x 32 x 50k multiply-adds per share are worth a
    second core, a logistic regression's 5 x 32 x 650 are not (the extra chunk's per-op cost outweighs it)."""
    monkeypatch.setattr(BatchedExecutor, "workers_for", lambda self, cohort, ctx: 2)

    def cohort(features: int) -> Cohort:
        return Cohort(torch.zeros(100, features), torch.zeros(100, dtype=torch.long),
                      torch.zeros(10, 5, 32, dtype=torch.long))
    big, small = mlp(40, 10), logistic(64, 10)
    assert BatchedExecutor().chunk_for(cohort(40), BackpropContext(big, 0.1, 0.0, FedAvg().loss)) == 5
    assert BatchedExecutor().chunk_for(cohort(64), BackpropContext(small, 0.1, 0.0, FedAvg().loss)) == 10
    assert BatchedExecutor(chunk_size=10).chunk_for(cohort(40), BackpropContext(big, 0.1, 0.0, FedAvg().loss)) == 10
