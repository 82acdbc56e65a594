"""Datasets that need no files from the user: scikit-learn's digits and the generated MNIST-1D."""
from __future__ import annotations

import random
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from flbook import validation as V
from flbook.data.base import Dataset, data_root


def digits(*, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1797 images), scaled to [0, 1], with a fixed stratified 80/20 split.

    Pixels are divided by 16 (their maximum) and not standardized further. `seed` picks the split; the
    default gives the same split on every call.
    """
    seed = V.seed(seed, hi=2**32 - 1)  # scikit-learn's random_state range
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]  # (n, 1, 8, 8)
    x_train, x_test, y_train, y_test = train_test_split(
        x, bunch.target, test_size=0.2, stratify=bunch.target, random_state=seed)
    return Dataset(name="digits", x_train=torch.from_numpy(x_train), y_train=torch.from_numpy(y_train).long(),
                   x_test=torch.from_numpy(x_test), y_test=torch.from_numpy(y_test).long(),
                   n_classes=10, input_shape=(1, 8, 8))


def mnist1d(*, root: str | Path | None = None, n_samples: int = 5000, seed: int = 42) -> Dataset:
    """MNIST-1D (Greydanus 2020): ten 1D digit templates, randomly padded, sheared, translated and noised.

    Paper: Greydanus & Kobak, "Scaling Down Deep Learning with MNIST-1D" (ICML 2024),
    https://arxiv.org/abs/2011.14439. Generated locally with the `mnist1d` package (never downloaded) and
    cached in `root/mnist1d_<n_samples>_<seed>.npz`; the defaults reproduce the original 5000-sample
    dataset. Its own split: the first 80% of the shuffled samples train, the rest test. The generator is
    standardized to mean 0 and std 1 overall. Global RNG states are left as they were.
    """
    n_samples = V.integer("n_samples", n_samples, 10)  # one per class at least
    seed = V.seed(seed, hi=2**32 - 1)  # the generator seeds NumPy's legacy global state
    cache = data_root(root) / f"mnist1d_{n_samples}_{seed}.npz"
    try:
        with np.load(cache) as f:
            arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile):  # missing or unreadable: regenerate
        arrays = _generate_mnist1d(n_samples, seed)
        _save_npz(cache, arrays)
    x_train, y_train, x_test, y_test = (torch.from_numpy(arrays[k]) for k in ("x_train", "y_train", "x_test", "y_test"))
    return Dataset(name="mnist1d", x_train=x_train.float(), y_train=y_train.long(), x_test=x_test.float(),
                   y_test=y_test.long(), n_classes=10, input_shape=(x_train.shape[1],))


def _generate_mnist1d(n_samples: int, seed: int) -> dict[str, np.ndarray]:
    """Run the MNIST-1D generator, restoring the global NumPy and Python RNGs it reseeds."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = n_samples, seed
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(args)
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    return {"x_train": data["x"], "y_train": data["y"], "x_test": data["x_test"], "y_test": data["y_test"]}


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write `arrays` to `path` atomically; warn (and carry on) when the folder is not writable."""
    tmp = path.with_name(path.name + ".tmp.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, **arrays)
        tmp.replace(path)
    except OSError as err:
        warnings.warn(f"could not cache MNIST-1D in {path}: {err}", stacklevel=3)
