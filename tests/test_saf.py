"""SAF, MESA and SAM: the card's invariants, the flatness proxies, and the trajectory loss behind chapter 73's claim."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from flbook.saf import LogitMemory, MESALearner, SAFLearner, trajectory_loss
from flbook.sharpness import SAMLearner, SGDLearner, perturbed_loss_increase, top_hessian_eigenvalue


def model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def data(n: int = 24):
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def train(learner, epochs: int = 4, batch: int = 8):
    x, y = data()
    losses = []
    for epoch in range(1, epochs + 1):
        for index in torch.arange(len(y)).split(batch):
            losses.append(learner.step(x[index], y[index], index, epoch))
    return losses


def weights(learner) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in learner.model.parameters()])


def test_lambda_zero_is_the_base_optimiser():
    sgd, saf = SGDLearner(model(), 0.1), SAFLearner(model(), 0.1, 24, 3, lam=0.0, lookback=1, start=0)
    train(sgd), train(saf)
    assert torch.equal(weights(sgd), weights(saf))


def test_before_the_start_epoch_the_loss_is_cross_entropy():
    x, y = data()
    saf = SAFLearner(model(), 0.1, 24, 3, lam=1.0, lookback=1, start=3)
    index = torch.arange(24)
    for epoch in (1, 2, 3):
        assert torch.equal(saf.loss(x, y, index, epoch), F.cross_entropy(saf.model(x), y))
    with torch.no_grad():
        saf.model[2].bias.add_(torch.tensor([1.0, 0.0, -1.0]))  # the model moved since epoch 3
    assert saf.loss(x, y, index, 4) > F.cross_entropy(saf.model(x), y) + 1e-3  # now compared with epoch 3's logits


def test_the_trajectory_loss_vanishes_with_its_gradient_when_nothing_moved():
    z = torch.randn(5, 4, requires_grad=True)
    loss = trajectory_loss(z, z.detach().clone(), tau=5.0)
    loss.backward()
    assert abs(float(loss.detach())) < 1e-6 and z.grad.abs().max() < 1e-6
    moved = trajectory_loss(z, z.detach() + torch.randn(5, 4), tau=5.0)
    assert moved > 0


def test_the_ring_buffer_returns_the_logits_of_lookback_epochs_ago():
    memory = LogitMemory(n_samples=4, lookback=2, n_classes=3)
    assert memory.floats == 4 * 3 * 3
    index = torch.tensor([0, 2])
    for epoch in range(1, 8):
        if epoch > 2:
            assert torch.equal(memory.read(index, epoch), torch.full((2, 3), float(epoch - 2)))
        memory.write(index, epoch, torch.full((2, 3), float(epoch)))


def test_forward_passes_per_step():
    learners = {"SGD": SGDLearner(model(), 0.1), "SAM": SAMLearner(model(), 0.1, rho=0.05),
                "SAF": SAFLearner(model(), 0.1, 24, 3, lookback=1, start=0),
                "MESA": MESALearner(model(), 0.1, start=0)}
    x, y = data()
    for name, learner in learners.items():
        train(learner, epochs=2)
        assert learner.final(type("D", (), {"x_train": x, "y_train": y})())["forwards_per_step"] == \
            {"SGD": 1, "SAM": 2, "SAF": 1, "MESA": 2}[name]


def test_mesa_with_decay_zero_has_the_current_model_as_teacher():
    sgd, mesa = SGDLearner(model(), 0.1), MESALearner(model(), 0.1, decay=0.0, start=0)
    train(sgd), train(mesa)
    assert torch.allclose(weights(sgd), weights(mesa), atol=1e-6)
    assert all(torch.equal(t, p) for t, p in zip(mesa.teacher.parameters(), mesa.model.parameters()))


def test_sam_steps_from_the_unperturbed_weights():
    x, y = data()
    sam = SAMLearner(model(), 0.1, rho=0.05, momentum=0.0, weight_decay=0.0)
    reference = model()
    start = weights(sam)
    sam.step(x, y, torch.arange(24), 1)
    grads = torch.autograd.grad(F.cross_entropy(reference(x), y), list(reference.parameters()))
    norm = torch.sqrt(sum((g * g).sum() for g in grads))
    with torch.no_grad():
        for p, g in zip(reference.parameters(), grads):
            p.add_(0.05 * g / norm)
    perturbed = torch.autograd.grad(F.cross_entropy(reference(x), y), list(reference.parameters()))
    expected = start - 0.1 * torch.cat([g.flatten() for g in perturbed])
    assert torch.allclose(weights(sam), expected, atol=1e-6)


def test_power_iteration_finds_the_top_eigenvalue_of_a_quadratic():
    x = torch.randn(200, 2) * torch.tensor([3.0, 1.0])  # the exact Hessian of a linear model's CE is at hand
    net = nn.Linear(2, 2, bias=False)
    y = torch.randint(0, 2, (200,))
    hessian = torch.autograd.functional.hessian(lambda v: F.cross_entropy(x @ v.view(2, 2).T, y),
                                                net.weight.detach().flatten())
    top = float(torch.linalg.eigvalsh(hessian)[-1])
    assert top_hessian_eigenvalue(net, x, y, iterations=50) == pytest.approx(top, rel=1e-3)


def test_random_perturbations_raise_the_loss_of_a_trained_model_and_restore_it():
    learner = SGDLearner(model(), 0.1)
    train(learner, epochs=20)
    x, y = data()
    before = weights(learner)
    assert perturbed_loss_increase(learner.model, x, y, radius=0.2, samples=20) > 0
    assert torch.equal(weights(learner), before)
    with pytest.raises(ValueError, match="radius must be a finite number > 0"):
        perturbed_loss_increase(learner.model, x, y, radius=0.0)


def test_without_the_trajectory_loss_the_chapter_claim_fails():
    """Chapter 73's claim (SAF beats SGD on clean test accuracy under 20% label noise) at the same learning rate;
    with lambda = 0 SAF is SGD, and the claim fails."""
    from flbook.centralized import fit
    from flbook.chapters.ch73_saf import build, noisy_labels
    from flbook.data import load
    from flbook.protocol import verdict

    data = noisy_labels(load("digits"), 0.2)

    def accuracy(method: str, **values) -> list[float]:
        runs = [fit(build(method, values), data, seed=s, lr=0.05, epochs=12, batch_size=64, final=False)
                for s in range(3)]
        return [run["test_acc"].tail(3).mean() for run in runs]

    sgd = accuracy("SGD")
    assert verdict([a - b for a, b in zip(accuracy("SAF"), sgd)]) == "holds"
    assert verdict([a - b for a, b in zip(accuracy("SAF", lam=0.0), sgd)]) == "does not hold"


def test_chapter_stream_yields_after_each_run_and_run_is_its_last():
    import matplotlib.pyplot as plt
    import pandas as pd
    from flbook.chapters import ch73_saf as chapter
    values = {"epochs": 2, "start": 0, "lookback": 1, "batch_size": 256, "algorithms": ("SGD", "SAF")}
    steps = list(chapter.stream(values, progress=False))
    assert [list(h["algorithm"].unique()) for h in steps] == [["SGD"], ["SGD", "SAF"]]
    assert steps[0].equals(steps[1].iloc[:len(steps[0])])
    plt.close(chapter.figure(steps[0]))  # the first method alone draws
    keep = [c for c in steps[-1].columns if c != "wall_time"]
    pd.testing.assert_frame_equal(steps[-1][keep], chapter.run(values, progress=False)[keep])
