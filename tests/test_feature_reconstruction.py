"""Local learning on a ViT: K = 1 is end-to-end, lambda1 = 0 is greedy CE, the reconstruction target is detached."""
import copy

import pytest
import torch
from torch.nn import functional as F

from flbook.feature_reconstruction import local_vit
from flbook.local_learning import saved_floats
from flbook.transformer import vit


def tiny_vit(seed: int = 0):
    torch.manual_seed(seed)
    return vit((1, 8, 8), 10, dim=16, depth=4, heads=2, mlp=16).module


def batch(n: int = 6):
    g = torch.Generator().manual_seed(2)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def grads(net) -> list[torch.Tensor]:
    return [p.grad.clone() for p in net.primary]


def test_one_module_is_end_to_end_training():
    x, y = batch()
    model = tiny_vit()
    reference = copy.deepcopy(model)
    net = local_vit(model, 1, "feature")
    net.backward(x, y)
    F.cross_entropy(reference(x), y).backward()
    assert torch.allclose(net(x), reference(x))
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(model.parameters(), reference.parameters()))


def test_lambda1_zero_is_greedy_cross_entropy():
    x, y = batch()
    feature = local_vit(tiny_vit(), 4, "feature", lam1=(0.0, 0.0))
    greedy = local_vit(tiny_vit(), 4, "none")
    for a, b in zip(feature.objectives, greedy.objectives):
        b.classifier.load_state_dict(a.classifier.state_dict())
    feature.backward(x, y), greedy.backward(x, y)
    assert all(torch.equal(a, b) for a, b in zip(grads(feature), grads(greedy)))


def test_the_reconstruction_target_is_detached():
    x, y = batch()
    net = local_vit(tiny_vit(), 4, "feature")
    h_in = net.blocks[0](x)  # not detached here: only the objective can keep a gradient from flowing back
    net.objectives[1](net.blocks[1](h_in.detach()), h_in, x, y).backward()
    assert all(p.grad is None for p in net.blocks[0].parameters())
    assert all(p.grad is not None for p in net.blocks[1].parameters())


@pytest.mark.parametrize("target", ["image", "feature"])
def test_decoder_output_matches_its_target(target):
    x, y = batch()
    net = local_vit(tiny_vit(), 4, target)
    h = x
    for k, (block, objective) in enumerate(zip(net.blocks, net.objectives)):
        h_in, h = h, block(h)
        assert objective.reconstruction(h).shape == objective.reconstruction_target(h_in, x).shape
        expected = (6, 16, 4) if target == "image" or k == 0 else (6, 17, 16)
        assert objective.reconstruction_target(h_in, x).shape == expected


def test_more_modules_keep_fewer_activations():
    x, y = batch(8)
    kept = [max(saved_floats(local_vit(tiny_vit(), k, "feature"), x, y)) for k in (1, 2, 4)]
    assert kept[0] > kept[1] > kept[2]


def test_bad_module_counts_are_rejected():
    with pytest.raises(ValueError, match="n_modules must divide the number of blocks"):
        local_vit(tiny_vit(), 3)


def test_without_the_cuts_the_chapter_memory_claim_fails():
    """Chapter 71's claim that holds: four gradient-isolated modules keep less than 60% of end-to-end training's
    activations (a saving above the claim's margin of 0.4 on every seed); without the cuts (K = 1) it fails."""
    from flbook.chapters.ch71_local_transformers import build
    from flbook.data import load
    from flbook.protocol import verdict

    data = load("digits")

    def kept(make) -> list[float]:
        return [make(data, seed, 1e-3).activations for seed in range(3)]

    e2e = kept(build(1))

    def saved(make) -> list[float]:
        return [1 - a / b for a, b in zip(kept(make), e2e)]

    assert verdict(saved(build(4, "feature")), margin=0.4) == "holds"
    assert verdict(saved(build(1, "feature")), margin=0.4) == "does not hold"
