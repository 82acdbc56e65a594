"""FRUGAL: the split is exact, rho = 1 without resets is AdamW, the state-free rule and the state it keeps."""
import pytest
import torch
from torch import nn

from flbook.frugal import FRUGAL, PROJECTIONS, Subspace, projectable_matrices
from flbook.transformer import causal_lm, next_token_loss


def lm(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return causal_lm(12, 8, dim=16, depth=2, heads=2, mlp=24).module


def tokens(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 12, (6, 8), generator=torch.Generator().manual_seed(seed))


def train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 5) -> None:
    for step in range(steps):
        x = tokens(step)
        optimizer.zero_grad()
        next_token_loss(model(x), x).backward()
        optimizer.step()


def weights(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("kind", PROJECTIONS)
@pytest.mark.parametrize("active", [True, False])
def test_the_split_is_exact(kind, active):
    grad = torch.randn(10, 6, generator=torch.Generator().manual_seed(0))
    subspace = Subspace(kind, grad, 0.5, active, torch.Generator().manual_seed(1))
    inside, outside = subspace.split(grad)
    assert torch.allclose(subspace.back(inside) + outside, grad, atol=1e-6)
    if kind == "svd":
        assert abs(float((subspace.back(inside) * outside).sum())) < 1e-4  # P P^T G is orthogonal to G - P P^T G
        assert inside.shape == (3, 6)
    if kind == "column":
        assert inside.shape == (10, 3) and int((outside.abs().sum(0) == 0).sum()) == 3


@pytest.mark.parametrize("kind", ["block", "column"])
def test_rho_one_without_resets_is_adamw(kind):
    a, b = lm(), lm()
    matrices, others = projectable_matrices(a)
    # eps 1e-4: the key bias gets gradients of ~1e-10 (it cannot change a softmax), and Adam would turn their
    # rounding noise into full-size steps in either implementation
    frugal = FRUGAL(matrices, others, 1e-2, rho=1.0, projection=kind, update_gap=1000, weight_decay=0.1, eps=1e-4)
    adamw = torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=0.1, eps=1e-4)
    train(a, frugal), train(b, adamw)
    assert torch.allclose(weights(a), weights(b), atol=1e-5)


def test_no_state_free_update_leaves_inactive_blocks_unchanged():
    model = lm()
    matrices, others = projectable_matrices(model)
    before = [p.detach().clone() for p in matrices]
    optimizer = FRUGAL(matrices, others, 1e-2, rho=0.5, projection="block", free="none", update_gap=100)
    train(model, optimizer, steps=3)
    moved = [not torch.equal(p, q) for p, q in zip(matrices, before)]
    assert sum(moved) == round(0.5 * len(matrices))


def test_the_state_free_update_is_a_sign():
    model = lm()
    matrices, others = projectable_matrices(model)
    before = [p.detach().clone() for p in matrices]
    train(model, FRUGAL(matrices, others, 1e-2, rho=0.0, free_scale=0.5), steps=1)
    steps = torch.cat([(p.detach() - q).flatten() for p, q in zip(matrices, before)])
    assert set(torch.unique(torch.round(steps / 5e-3, decimals=3)).tolist()) <= {-1.0, 0.0, 1.0}


def test_state_is_rho_times_adam_for_projectable_weights():
    model = lm()
    matrices, others = projectable_matrices(model)
    optimizer = FRUGAL(matrices, others, 1e-2, rho=0.25, projection="column")
    train(model, optimizer, steps=1)
    expected = sum(2 * p.shape[0] * round(0.25 * p.shape[1]) for p in matrices) + sum(2 * p.numel() for p in others)
    assert optimizer.state_floats() == expected
    assert all(p.ndim == 2 for p in matrices) and len(matrices) == 2 * 4  # qkv, proj, mlp in, mlp out per block


def test_the_subspace_changes_only_every_update_gap_steps_and_resets_the_moments():
    model = lm()
    matrices, others = projectable_matrices(model)
    optimizer = FRUGAL(matrices, others, 1e-2, rho=0.5, projection="column", update_gap=3)
    seen = []
    for step in range(7):
        x = tokens(step)
        optimizer.zero_grad()
        next_token_loss(model(x), x).backward()
        optimizer.step()
        seen.append((optimizer.subspaces[matrices[0]].columns.clone(), optimizer.state[matrices[0]]["t"]))
    assert [t for _, t in seen] == [1, 2, 3, 1, 2, 3, 1]  # Adam's step count restarts with each new subspace
    assert all(torch.equal(seen[i][0], seen[0][0]) for i in (1, 2)) and not torch.equal(seen[3][0], seen[0][0])


def test_bad_arguments_name_the_parameter():
    matrices, others = projectable_matrices(lm())
    with pytest.raises(ValueError, match="projection must be one of"):
        FRUGAL(matrices, others, 1e-2, projection="rows")
    with pytest.raises(ValueError, match=r"rho must be in \[0, 1\]"):
        FRUGAL(matrices, others, 1e-2, rho=1.5)


def test_without_the_state_free_remainder_the_chapter_claim_fails():
    """Chapter 72's claim at small scale: FRUGAL (columns, rho = 0.25) reaches a lower validation loss than BAdam-like
    blocks at the same state budget; without its signSGD remainder (free="none") the gain is gone."""
    from flbook.centralized import fit, seeded_init
    from flbook.chapters.ch72_frugal import LENGTH, VOCAB, LMLearner, corpus
    from flbook.protocol import verdict

    data = corpus(n_sequences=400)

    def loss(**settings) -> list[float]:
        def make(data, seed, lr):
            model = seeded_init(seed, lambda: causal_lm(VOCAB, LENGTH, dim=32, depth=2, heads=2, mlp=64).module)
            return LMLearner(model, FRUGAL(*projectable_matrices(model), lr, rho=0.25, update_gap=5, seed=seed,
                                           **settings))
        return [fit(make, data, seed=s, lr=3e-3, epochs=1, batch_size=32)["test_loss"].iloc[-1] for s in range(3)]

    badam = loss(projection="block", free="none")
    assert verdict([a - b for a, b in zip(loss(projection="column"), badam)], "less") == "holds"
    assert verdict([a - b for a, b in zip(loss(projection="column", free="none"), badam)], "less") != "holds"
