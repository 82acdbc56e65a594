"""Tiny transformers: shapes, the causal mask, vmap over stacked parameters, and rounds through the executors."""
import math

import numpy as np
import pytest
import torch

from flbook.algorithms import FedAvg
from flbook.data import Dataset
from flbook.federation import Federation
from flbook.transformer import causal_lm, next_token_loss, vit


@pytest.mark.parametrize("shape, patch, pool", [((1, 8, 8), 2, "cls"), ((3, 8, 8), 4, "mean"), ((40,), 4, "cls")])
def test_vit_shapes_and_round_trip(shape, patch, pool):
    model = vit(shape, 5, patch=patch, dim=16, depth=2, heads=2, mlp=32, pool=pool)
    theta = model.init(0)
    assert theta.shape == (model.n_params,) == (sum(p.numel() for p in model.module.parameters()),)
    assert model(theta, torch.randn(7, *shape)).shape == (7, 5)
    assert model.activations_per_sample(torch.randn(*shape)) > 0


def test_init_is_seeded_including_class_token_and_positions():
    model = vit((1, 8, 8), 5)
    a, b = model.unflatten(model.init(1)), model.unflatten(model.init(2))
    assert torch.equal(model.init(1), model.init(1))
    assert not torch.equal(a["tokens.pos"], b["tokens.pos"]) and not torch.equal(a["tokens.cls"], b["tokens.cls"])
    lm = causal_lm(16, 12)
    assert not torch.equal(lm.unflatten(lm.init(1))["pos.weight"], lm.unflatten(lm.init(2))["pos.weight"])


def test_vit_patches_cover_the_image_in_order():
    model = vit((1, 4, 4), 2, patch=2, dim=8, depth=1, heads=1, mlp=8)
    x = torch.arange(16.0).view(1, 1, 4, 4)
    patches = model.module.tokens.patches(x)  # (1, 4, 4)
    assert torch.equal(patches[0, 0], torch.tensor([0.0, 1, 4, 5])) and torch.equal(patches[0, 3], torch.tensor([10.0, 11, 14, 15]))


@pytest.mark.parametrize("tied", [True, False])
def test_lm_shapes_and_tied_head(tied):
    model = causal_lm(16, 12, dim=16, tied=tied)
    tokens = torch.randint(0, 16, (3, 10))
    logits = model(model.init(0), tokens)
    assert logits.shape == (3, 10, 16)
    assert ("head.weight" in model.names) is not tied
    assert model.n_params == causal_lm(16, 12, dim=16, tied=True).n_params + (0 if tied else 16 * 16)
    assert next_token_loss(logits, tokens).shape == ()
    with pytest.raises(ValueError, match="max_len=12"):
        model(model.init(0), torch.randint(0, 16, (1, 13)))


def test_logits_at_t_do_not_depend_on_later_tokens():
    model = causal_lm(16, 12, depth=2)
    theta = model.init(0)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 16, (4, 12), generator=g)
    t = 5
    changed = tokens.clone()
    changed[:, t + 1:] = torch.randint(0, 16, (4, 12 - t - 1), generator=g)
    a, b = model(theta, tokens), model(theta, changed)
    assert torch.allclose(a[:, : t + 1], b[:, : t + 1], atol=1e-6)
    assert not torch.allclose(a[:, t + 1:], b[:, t + 1:], atol=1e-3)  # later positions do see the change


def test_bidirectional_vit_attention_sees_every_token():
    model = vit((1, 8, 8), 5, pool="cls")
    theta = model.init(0)
    x = torch.rand(2, 1, 8, 8)
    y = x.clone()
    y[..., 6:, 6:] = 0.0  # the last patch only: the class token's logits still change
    assert not torch.allclose(model(theta, x), model(theta, y))


@pytest.mark.parametrize("make, inputs", [
    (lambda: vit((1, 8, 8), 5, depth=2), lambda g: torch.rand(4, 6, 1, 8, 8, generator=g)),
    (lambda: causal_lm(16, 10), lambda g: torch.randint(0, 16, (4, 6, 10), generator=g)),
])
def test_vmap_over_stacked_parameters_equals_a_loop(make, inputs):
    model = make()
    thetas = torch.stack([model.init(s) for s in range(4)])  # (M, P)
    x = inputs(torch.Generator().manual_seed(0))  # (M, B, ...)
    batched = torch.func.vmap(model)(thetas, x)
    looped = torch.stack([model(thetas[m], x[m]) for m in range(4)])
    assert torch.allclose(batched, looped, atol=1e-5)
    grads = torch.func.vmap(torch.func.grad(lambda th, xb: model(th, xb).square().mean()))(thetas, x)  # (M, P)
    assert torch.allclose(grads[1], torch.func.grad(lambda th: model(th, x[1]).square().mean())(thetas[1]), atol=1e-5)


def _token_dataset(vocab: int = 8, context: int = 6, n: int = 300) -> Dataset:
    """(context, next token) pairs of a cyclic sequence with noise: a classification Dataset of float token ids."""
    g = torch.Generator().manual_seed(0)
    start = torch.randint(0, vocab, (n, 1), generator=g)
    seq = (start + torch.arange(context + 1)) % vocab  # (n, context + 1)
    x, y = seq[:, :-1].float(), seq[:, -1]
    return Dataset("cyclic", x[:240], y[:240], x[240:], y[240:], n_classes=vocab, input_shape=(context,))


@pytest.mark.parametrize("which", ["vit", "lm"])
def test_models_run_under_both_executors_alike(which, digits_data):
    if which == "vit":
        data, model = digits_data, vit((1, 8, 8), 10, depth=1)
    else:
        data, model = _token_dataset(), causal_lm(8, 6, depth=1, readout="last")
    sizes = np.array([30, 50, 70, 90])  # unequal clients
    ids = np.random.default_rng(0).permutation(len(data.y_train))[: sizes.sum()]
    parts = np.split(ids, np.cumsum(sizes)[:-1])
    histories = [Federation(data, parts, model, executor=kind, local_epochs=1.0, batch_size=16, lr=0.05)
                 .run(FedAvg(), 2, progress=False) for kind in ("loop", "batched")]
    assert np.allclose(histories[0].test_loss, histories[1].test_loss, atol=1e-4)
    assert histories[0].test_loss.iloc[-1] < histories[0].test_loss.iloc[0] or which == "vit"


def test_bad_arguments_name_the_parameter():
    with pytest.raises(ValueError, match="multiple of heads"):
        vit((1, 8, 8), 5, dim=30, heads=4)
    with pytest.raises(ValueError, match="patch must divide"):
        vit((1, 8, 8), 5, patch=3)
    with pytest.raises(ValueError, match="pool"):
        vit((1, 8, 8), 5, pool="max")
    with pytest.raises(ValueError, match="input_shape"):
        vit((2, 8), 5)
    with pytest.raises(ValueError, match="readout"):
        causal_lm(16, 8, readout="first")
    with pytest.raises(ValueError, match="vocab"):
        causal_lm(1, 8)


def test_small_token_embeddings_start_a_tied_lm_near_log_vocab():
    tokens = torch.randint(0, 16, (8, 12), generator=torch.Generator().manual_seed(0))
    default, small = causal_lm(16, 12), causal_lm(16, 12, embed_std=0.02)
    assert next_token_loss(default(default.init(0), tokens), tokens) > 5  # N(0, 1) rows: logits of size ~ dim
    assert abs(float(next_token_loss(small(small.init(0), tokens), tokens)) - math.log(16)) < 0.05
    assert small.unflatten(small.init(0))["embed.weight"].std() < 0.03
    with pytest.raises(ValueError, match="embed_std"):
        causal_lm(16, 12, embed_std=0.0)
