"""Pre-training made here: deterministic, cached under data/, rebuilt when the cache is missing, reused by tasks."""
import dataclasses

import torch
import torch.nn.functional as F

from flbook import pretrained as P
from flbook.transformer import vit


def test_pretraining_is_deterministic_and_learns():
    data = P.pretrain_digits()
    small = dataclasses.replace(data, x_train=data.x_train[:192], y_train=data.y_train[:192])
    model = vit(data.input_shape, data.n_classes, **P.CONFIG)
    a, b = (P.pretrain(model, small, epochs=6, lr=1e-2, seed=0) for _ in range(2))
    assert torch.equal(a, b)
    loss = [F.cross_entropy(model(theta, small.x_train), small.y_train) for theta in (model.init(0), a)]
    assert loss[1] < loss[0] - 0.01


def test_cache_is_rebuilt_when_missing_and_reused(tmp_path, monkeypatch):
    monkeypatch.setattr(P, "EPOCHS", 1)  # the shipped 20 epochs take seconds; the mechanism is the same
    path = P.cache_path(0, tmp_path)
    assert not path.exists()
    model, theta = P.pretrained_vit(0, tmp_path)
    assert path.exists() and path.stat().st_size < 1_000_000
    assert torch.equal(theta, P.pretrain(model, P.pretrain_digits(), epochs=1, seed=0))  # the script's output
    path.write_bytes(b"corrupt")
    assert torch.equal(P.pretrained_vit(0, tmp_path)[1], theta)  # unreadable: rebuilt, same bits


def test_downstream_model_starts_from_the_backbone(tmp_path, monkeypatch):
    monkeypatch.setattr(P, "EPOCHS", 1)
    source, theta = P.pretrained_vit(0, tmp_path)
    model = P.PretrainedViT(5, prompts=4, root=tmp_path)
    start = model.unflatten(model.init(3))
    for name, value in source.unflatten(theta).items():
        if not name.startswith("head."):
            assert torch.equal(start[name], value)
    assert not torch.equal(start["head.weight"], model.unflatten(model.init(4))["head.weight"])
    assert start["tokens.prompts"].shape == (1, 4, 32)
    down = P.downstream_digits()
    assert set(down.y_train.tolist()) == set(range(5)) and down.n_classes == 5
