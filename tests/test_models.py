import pytest
import torch

from flbook.models import FlatModel, cnn, logistic, make_model, mlp


@pytest.mark.parametrize("name, shape", [("logistic", (1, 8, 8)), ("mlp", (40,)), ("cnn", (1, 8, 8)), ("cnn", (3, 32, 32))])
def test_flat_model_round_trip_and_forward(name, shape):
    model = make_model(name, shape, 10)
    theta = model.init(seed=0)
    assert theta.shape == (model.n_params,)
    assert model.n_params == sum(p.numel() for p in model.module.parameters())
    logits = model(theta, torch.randn(5, *shape))
    assert logits.shape == (5, 10)
    # unflatten gives views in parameter order: flattening them again is the identity
    assert torch.equal(torch.cat([t.reshape(-1) for t in model.unflatten(theta).values()]), theta)


def test_init_is_seeded_and_leaves_global_rng_alone():
    model = mlp(64, 10)
    state = torch.random.get_rng_state()
    assert torch.equal(model.init(3), model.init(3))
    assert not torch.equal(model.init(3), model.init(4))
    assert torch.equal(state, torch.random.get_rng_state())


def test_functional_call_matches_module():
    model = logistic(64, 10)
    theta = model.init(0)
    x = torch.randn(7, 64)
    for p, t in zip(model.module.parameters(), model.unflatten(theta).values()):
        p.data.copy_(t)
    assert torch.allclose(model(theta, x), model.module(x))


def test_vmap_over_stacked_parameters():
    model = mlp(10, 3, hidden=(8,))
    thetas = torch.stack([model.init(s) for s in range(4)])  # (4, P)
    x = torch.randn(4, 6, 10)
    batched = torch.func.vmap(model)(thetas, x)
    assert torch.allclose(batched[2], model(thetas[2], x[2]), atol=1e-6)


def test_cnn_uses_group_norm_not_batch_norm():
    model = cnn((1, 28, 28), 10)
    kinds = {type(m).__name__ for m in model.module.modules()}
    assert "GroupNorm" in kinds and not any("BatchNorm" in k for k in kinds)


def test_bad_inputs():
    with pytest.raises(ValueError, match="model must be one of"):
        make_model("resnet", (1, 8, 8), 10)
    with pytest.raises(ValueError, match="input_shape"):
        cnn((64,), 10)
    with pytest.raises(ValueError, match="hidden"):
        mlp(64, 10, hidden=())
    with pytest.raises(ValueError, match="buffers"):
        FlatModel(torch.nn.BatchNorm1d(4), "bn")


@pytest.mark.parametrize("make, message", [
    (lambda: make_model("mlp", (64,), 0), "n_classes must be an integer >= 1, got 0"),
    (lambda: make_model("logistic", (64,), 2.5), "n_classes must be an integer, got 2.5"),
    (lambda: make_model("cnn", (1, 2, 2), 10), "at least 4x4 pixels"),
])
def test_models_that_cannot_work_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_a_perceptron_is_called_layer_by_layer_with_the_modules_bits():
    from torch.func import functional_call
    for model in (mlp(64, 10, hidden=(32, 16)), logistic(64, 10)):
        theta = model.init(3)
        x = torch.randn(7, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        assert model._linears is not None
        assert torch.equal(model(theta, x), functional_call(model.module, model.unflatten(theta), (x,)))
    assert cnn((1, 8, 8), 10)._linears is None  # anything else goes through functional_call
