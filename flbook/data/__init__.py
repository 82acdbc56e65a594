"""Datasets for the chapters: generated or bundled ones that work offline, and real ones read from `data/`.

    >>> from flbook.data import load
    >>> load("digits")
    Dataset('digits', train=1437, test=360, classes=10, input_shape=(1, 8, 8), device=cpu)
"""
from __future__ import annotations

from pathlib import Path

import torch

from flbook import validation as V
from flbook.runtime import resolve_device
from flbook.data.base import Dataset, data_root
from flbook.data.bundled import digits, mnist1d
from flbook.data.files import cifar10, fashion_mnist, mnist
from flbook.data.synthetic import synthetic

__all__ = ["DATASETS", "Dataset", "data_root", "cifar10", "digits", "fashion_mnist", "load", "mnist", "mnist1d", "synthetic"]

_LOADERS = {"digits": digits, "mnist1d": mnist1d, "synthetic": synthetic,
            "mnist": mnist, "fashion_mnist": fashion_mnist, "cifar10": cifar10}
_SEEDED = {"digits", "mnist1d", "synthetic"}  # the others have one official split
_ON_DISK = {"mnist1d", "mnist", "fashion_mnist", "cifar10"}  # read (or cache) files under `root`
DATASETS: tuple[str, ...] = tuple(_LOADERS)


def load(name: str, *, root: str | Path | None = None, device: str | torch.device | None = None,
         seed: int | None = None, **kwargs) -> Dataset:
    """Load a dataset by name, optionally moving it to `device` (None leaves it on the CPU).

    `root` is the folder of real-dataset files and the MNIST-1D cache (None: `data_root()`). `seed` seeds the generated datasets
    and the digits split (None: each loader's default, e.g. MNIST-1D's canonical 42); the real datasets
    have one official split and ignore it. Other keyword arguments go to the loader, e.g.
    `load("synthetic", alpha=0.5, beta=0.5, n_clients=100)`.
    """
    V.choice("name", name, DATASETS)
    target = None if device is None else resolve_device(device)  # checked before any work
    if name in _ON_DISK:
        kwargs["root"] = root
    if name in _SEEDED and seed is not None:
        kwargs["seed"] = seed
    dataset = _LOADERS[name](**kwargs)
    return dataset if target is None else dataset.to(target)
