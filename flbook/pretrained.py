"""Pre-trained weights made here: no model hub is reachable, so the tiny ViT is pre-trained in the project.

`pretrained_vit()` trains `transformer.vit` centrally on the digits of classes 0-4 (a few seconds on one core),
deterministically from a seed, and caches the parameter vector under `data/` (`vit_digits04_<config>.pt`, about
140 kB, git-ignored). A missing or unreadable cache is rebuilt; the same seed gives the same bits on the same
machine. `downstream_digits()` is the transfer task: classes 5-9, relabelled 0-4, which the backbone never saw.
"""
from __future__ import annotations

import dataclasses
import pickle
import warnings
from pathlib import Path

import torch
from torch.nn import functional as F

from . import validation as V
from .data import Dataset, digits
from .data.base import data_root
from .models import FlatModel
from .transformer import vit

PRETRAIN_CLASSES, DOWNSTREAM_CLASSES = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
CONFIG = dict(patch=2, dim=32, depth=4, heads=2, mlp=64, pool="cls")  # the card's tiny ViT on 8x8 digits
EPOCHS = 20  # of pre-training: about 96% test accuracy on digits 0-4


def class_subset(data: Dataset, classes: tuple[int, ...], name: str) -> Dataset:
    """The samples of `classes` only, relabelled 0..len(classes)-1 in the given order."""
    relabel = torch.full((data.n_classes,), -1, dtype=torch.long)
    relabel[list(classes)] = torch.arange(len(classes))
    keep_train, keep_test = relabel[data.y_train] >= 0, relabel[data.y_test] >= 0  # (n_train,), (n_test,)
    return dataclasses.replace(data, name=name, x_train=data.x_train[keep_train], y_train=relabel[data.y_train[keep_train]],
                               x_test=data.x_test[keep_test], y_test=relabel[data.y_test[keep_test]],
                               n_classes=len(classes), client_indices=None)


def pretrain_digits() -> Dataset:
    """Digits of classes 0-4: the pre-training task."""
    return class_subset(digits(), PRETRAIN_CLASSES, "digits 0-4")


def downstream_digits() -> Dataset:
    """Digits of classes 5-9, relabelled 0-4: the fine-tuning task the backbone never saw."""
    return class_subset(digits(), DOWNSTREAM_CLASSES, "digits 5-9")


def pretrain(model: FlatModel, data: Dataset, *, epochs: int = EPOCHS, batch_size: int = 64, lr: float = 3e-3,
             seed: int = 0) -> torch.Tensor:
    """Central Adam training of `model` on `data` from `model.init(seed)`: the pre-trained vector (P,).

    Adam (Kingma & Ba 2015, Alg. 1) written out on the flat vector: `torch.optim`'s first step imports the
    compiler stack, seconds of set-up for a few seconds of training."""
    epochs, batch_size, lr = V.integer("epochs", epochs, 1), V.integer("batch_size", batch_size, 1), V.positive("lr", lr)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    theta = model.init(seed)  # (P,)
    m, v = torch.zeros_like(theta), torch.zeros_like(theta)  # first and second moments (P,)
    g = torch.Generator().manual_seed(seed)
    step = 0
    for _ in range(epochs):
        for ids in torch.randperm(len(data.y_train), generator=g).split(batch_size):  # (B,)
            leaf = theta.requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(leaf, data.x_train[ids]), data.y_train[ids]), leaf)
            step += 1
            m = beta1 * m + (1 - beta1) * grad
            v = beta2 * v + (1 - beta2) * grad.square()
            theta = theta.detach() - lr * (m / (1 - beta1**step)) / ((v / (1 - beta2**step)).sqrt() + eps)
    return theta.detach()


def cache_path(seed: int = 0, root: str | Path | None = None) -> Path:
    """Where the pre-trained ViT of `seed` is cached: its name carries the configuration."""
    tag = "_".join(f"{k}{v}" for k, v in CONFIG.items())
    return data_root(root) / f"vit_digits04_{tag}_seed{seed}.pt"


def pretrained_vit(seed: int = 0, root: str | Path | None = None) -> tuple[FlatModel, torch.Tensor]:
    """The tiny ViT pre-trained on digits 0-4 (5-class head): (model, theta), from the cache or trained now."""
    seed = V.seed(seed)
    data = pretrain_digits()
    model = vit(data.input_shape, data.n_classes, **CONFIG)
    path = cache_path(seed, root)
    try:
        theta = torch.load(path, weights_only=True)
        if theta.shape != (model.n_params,):
            raise ValueError(f"cached vector has shape {tuple(theta.shape)}")
        return model, theta
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError):  # missing, unreadable, stale: train
        pass
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same bits whatever the machine's core count
    try:
        theta = pretrain(model, data, epochs=EPOCHS, seed=seed)
    finally:
        torch.set_num_threads(before)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(theta.clone(), tmp)
        tmp.replace(path)
    except OSError as err:
        warnings.warn(f"could not cache the pre-trained ViT in {path}: {err}", stacklevel=2)
    return model, theta


class PretrainedViT(FlatModel):
    """The tiny ViT for a new task: backbone from `pretrained_vit`, a fresh classifier (and prompts) from the seed.

    `init(seed)` is what a federation starts from: every pre-trained tensor copied in, the rest initialised as usual."""

    def __init__(self, n_classes: int, prompts: int = 0, pretrain_seed: int = 0, root: str | Path | None = None):
        source, theta = pretrained_vit(pretrain_seed, root)
        super().__init__(vit(pretrain_digits().input_shape, n_classes, **CONFIG, prompts=prompts).module, "pretrained vit")
        self.backbone = {k: v for k, v in source.unflatten(theta).items() if not k.startswith("head.")}

    def init(self, seed: int = 0, device: torch.device | str = "cpu") -> torch.Tensor:
        theta = super().init(seed, device)  # (P,)
        params = self.unflatten(theta)  # views into theta
        for name, value in self.backbone.items():
            params[name].copy_(value)
        return theta
