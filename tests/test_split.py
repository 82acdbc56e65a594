"""Split learning: the U-shaped protocol's gradient is the monolithic one; parts and message bytes are exact."""
import pytest
import torch
import torch.nn.functional as F

from flbook.split import SplitModel, Trainable, messages_bytes, u_shaped_step
from flbook.transformer import vit


def _setup(prompts=4, head_blocks=1, tail_blocks=1, parts=("prompts", "tail")):
    model = vit((1, 8, 8), 5, depth=4, prompts=prompts)
    split = SplitModel(model, head_blocks, tail_blocks)
    theta = model.init(0)
    trainable = Trainable(split, parts, theta)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(6, 1, 8, 8, generator=g), torch.randint(0, 5, (6,), generator=g)
    return model, split, theta, trainable, x, y


@pytest.mark.parametrize("prompts, head_blocks, tail_blocks, parts", [
    (4, 1, 1, ("prompts", "tail")), (0, 1, 0, ("tail",)), (2, 2, 1, ("prompts", "head", "tail")), (3, 0, 0, ("prompts", "tail"))])
def test_protocol_gradient_equals_monolithic_backward(prompts, head_blocks, tail_blocks, parts):
    model, split, theta, trainable, x, y = _setup(prompts, head_blocks, tail_blocks, parts)
    w = theta[trainable.index]
    loss, g, messages = u_shaped_step(trainable, w, x, y, F.cross_entropy)
    leaf = theta.clone().requires_grad_()
    reference = F.cross_entropy(model(leaf, x), y)  # the composed model, one loss.backward()
    reference.backward()
    assert torch.allclose(loss, reference, atol=1e-6)
    assert torch.allclose(g, leaf.grad[trainable.index], atol=1e-6)
    # the split pieces compose to the model
    assert torch.allclose(split.tail(trainable.frozen, split.body(trainable.frozen, split.head(trainable.frozen, x))),
                          model(theta, x), atol=1e-6)


def test_message_bytes_are_the_exchanged_tensors():
    for prompts, parts in ((4, ("prompts", "tail")), (0, ("tail",))):
        *_, trainable, x, y = _setup(prompts, parts=parts)
        _, _, messages = u_shaped_step(trainable, trainable.split.model.init(0)[trainable.index], x, y, F.cross_entropy)
        assert all(m.shape == (6, 17 + prompts, 32) for m in messages.values())
        assert messages_bytes(messages) == trainable.split.message_bytes(6, trainable.head_trainable)
        assert ("gradients_down" in messages) == (prompts > 0)  # nothing to train before the cut: dL/dh is not sent


def test_parts_cover_the_model_once():
    model, split, *_ = _setup(prompts=4, head_blocks=1, tail_blocks=1)
    masks = torch.stack([split.mask([p]) for p in ("prompts", "head", "body", "tail")])  # (4, P)
    assert torch.equal(masks.sum(0), torch.ones(model.n_params, dtype=torch.long))
    assert split.n_params(["prompts"]) == 4 * 32
    assert split.n_params(["body"]) == 2 * sum(p.numel() for p in model.module.blocks[1].parameters())


def test_frozen_parameters_get_no_gradient_and_vmap_batches_clients():
    *_, trainable, x, y = _setup()
    w = torch.stack([trainable.split.model.init(s)[trainable.index] for s in range(3)])  # (M, P_t)
    xs, ys = x.expand(3, *x.shape), y.expand(3, -1)
    losses, grads, _ = torch.func.vmap(lambda v, a, b: u_shaped_step(trainable, v, a, b, F.cross_entropy))(w, xs, ys)
    assert grads.shape == w.shape
    assert torch.allclose(grads[1], u_shaped_step(trainable, w[1], x, y, F.cross_entropy)[1], atol=1e-6)
    assert all(not t.requires_grad for t in trainable.frozen.values())


def test_bad_cuts():
    model = vit((1, 8, 8), 5, depth=4)
    with pytest.raises(ValueError, match="head_blocks"):
        SplitModel(model, head_blocks=4)
    with pytest.raises(ValueError, match="tail_blocks"):
        SplitModel(model, head_blocks=2, tail_blocks=2)
    with pytest.raises(ValueError, match="parts"):
        SplitModel(model).mask(["server"])
    with pytest.raises(TypeError, match="vit"):
        from flbook.transformer import causal_lm
        SplitModel(causal_lm(8, 8))
