"""Module-wise training: K = 1 is backpropagation, no gradient crosses a cut, and the kept activations are counted."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from flbook.auglocal import local_network, residual_mlp
from flbook.local_learning import AuxClassifier, LocalLearner, ModuleWise, linear_probe_accuracy, saved_floats


def net(n_modules: int, aux: str = "linear", seed: int = 0) -> ModuleWise:
    torch.manual_seed(seed)
    return local_network(residual_mlp(12, 8, 4), nn.Linear(8, 3), n_modules, aux, width=8, n_classes=3, depth=2)


def batch(n: int = 10):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 12, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_one_module_is_backpropagation():
    x, y = batch()
    local = net(1)
    local.backward(x, y)
    plain = net(1)
    F.cross_entropy(plain(x), y).backward()
    for a, b in zip(local.parameters(), plain.parameters()):
        assert torch.equal(a.grad, b.grad)


def test_no_gradient_crosses_a_cut():
    """Each module's gradient after the full module-wise backward equals the gradient of its own loss alone:
    the losses of later modules add nothing to earlier ones."""
    x, y = batch()
    model = net(4, "auglocal")
    model.backward(x, y)
    together = [[p.grad.clone() for p in block.parameters()] for block in model.blocks]
    h = x
    for k, block in enumerate(model.blocks):
        model.zero_grad(set_to_none=True)
        h_in = h.detach()
        h = block(h_in)
        own = F.cross_entropy(model.head(h), y) if k == 3 else model.objectives[k](h, h_in, x, y)
        own.backward()
        assert all(torch.equal(a, p.grad) for a, p in zip(together[k], block.parameters()))
        assert all(p.grad is None for earlier in model.blocks[:k] for p in earlier.parameters())


def test_saved_floats_are_counted_exactly():
    x, y = batch(4)
    stem = nn.Sequential(nn.Linear(12, 8), nn.ReLU())
    model = ModuleWise([nn.Sequential(stem), nn.Sequential(nn.Linear(8, 3))], [AuxClassifier(nn.Linear(8, 3))],
                       nn.Identity())
    # module 1: input x (12), relu output (8, read by relu's and the head's backward), log-softmax (3)
    # module 2: its input (8) and log-softmax (3); cross-entropy keeps one scalar per module
    assert saved_floats(model, x, y) == [4 * (12 + 8 + 3) + 1, 4 * (8 + 3) + 1]
    assert all(p.grad is None for p in model.parameters())


def test_local_modules_keep_fewer_activations_than_backpropagation():
    x, y = batch(16)
    bp, local = max(saved_floats(net(1), x, y)), max(saved_floats(net(4), x, y))
    assert local < bp / 2


def test_bad_module_counts_are_rejected():
    with pytest.raises(ValueError, match="K - 1 local objectives"):
        ModuleWise([nn.Sequential(nn.Linear(2, 2))], [AuxClassifier(nn.Linear(2, 2))], nn.Identity())
    with pytest.raises(ValueError, match=r"n_modules must be an integer in \[1, 4\]"):
        net(5)


def test_learner_steps_and_reports_probes():
    x, y = batch(64)
    learner = LocalLearner(net(2), 1e-2, x, y, probes=True)
    before = learner.evaluate(x, y)
    for _ in range(20):
        learner.step(x, y, torch.arange(64), 1)
    after = learner.evaluate(x, y)
    assert after["test_loss"] < before["test_loss"] and after["activations"] == before["activations"]
    data = type("D", (), {"x_train": x, "y_train": y, "x_test": x, "y_test": y, "n_classes": 3})()
    assert set(learner.final(data)) == {f"probe_{l}" for l in range(4)}


def test_a_linear_probe_separates_separable_features():
    y = torch.arange(40) % 2
    features = torch.stack([y.float() * 2 - 1, torch.randn(40, generator=torch.Generator().manual_seed(0))], 1)
    noise = torch.randn(40, 2, generator=torch.Generator().manual_seed(1))
    assert linear_probe_accuracy([features, noise], y, [features, noise], y, 2)[0] == 1.0
