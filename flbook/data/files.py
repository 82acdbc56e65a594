"""Real image datasets read from their standard files: MNIST and Fashion-MNIST (IDX), CIFAR-10 (pickled batches).

Files live under `root` (default `data/`): `root/mnist/`, `root/fashion_mnist/` hold the four IDX files,
each plain or gzipped; `root/cifar-10-batches-py/` holds CIFAR-10's python batches. When files are missing
they are downloaded (`download=True`, or `download=None` when the mirror is reachable); otherwise a
`FileNotFoundError` says which files to put where. Pixels are scaled to [0, 1], then standardized with
each dataset's usual training-set mean and std (the constants below).
"""
from __future__ import annotations

import codecs
import gzip
import math
import pickle
import shutil
import socket
import struct
import tarfile
import urllib.parse
import urllib.request
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from flbook.data.base import Dataset, data_root

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR10_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
# Per-channel mean and std of the training pixels in [0, 1].
MNIST_STATS = ((0.1307,), (0.3081,))
FASHION_MNIST_STATS = ((0.2860,), (0.3530,))
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
TIMEOUT_S = 10.0  # per network operation, so an offline machine fails fast


def mnist(root: str | Path | None = None, *, download: bool | None = None) -> Dataset:
    """MNIST (LeCun et al. 1998): 60,000 + 10,000 handwritten digits, 1x28x28, from `root/mnist/`."""
    return _idx_dataset("mnist", data_root(root) / "mnist", MNIST_URL, MNIST_STATS, download)


def fashion_mnist(root: str | Path | None = None, *, download: bool | None = None) -> Dataset:
    """Fashion-MNIST (Xiao et al. 2017): 60,000 + 10,000 clothing images, 1x28x28, from `root/fashion_mnist/`."""
    return _idx_dataset("fashion_mnist", data_root(root) / "fashion_mnist", FASHION_MNIST_URL, FASHION_MNIST_STATS, download)


def cifar10(root: str | Path | None = None, *, download: bool | None = None) -> Dataset:
    """CIFAR-10 (Krizhevsky 2009): 50,000 + 10,000 colour images, 3x32x32, from `root/cifar-10-batches-py/`."""
    root = data_root(root)
    folder = root / "cifar-10-batches-py"
    _require_files(
        folder, [n for n in CIFAR10_FILES if not (folder / n).is_file()], CIFAR10_URL, download,
        fetch=lambda: _fetch_cifar10(root),
        how=f"Download {CIFAR10_URL} and extract it in {root.absolute()}/ (it unpacks to cifar-10-batches-py/)")
    train = [read_cifar_batch(folder / n) for n in CIFAR10_FILES[:-1]]
    x_test, y_test = read_cifar_batch(folder / CIFAR10_FILES[-1])
    x_train, y_train = np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])
    return Dataset(name="cifar10", x_train=_standardize(x_train, CIFAR10_STATS), y_train=torch.from_numpy(y_train),
                   x_test=_standardize(x_test, CIFAR10_STATS), y_test=torch.from_numpy(y_test),
                   n_classes=10, input_shape=(3, 32, 32))


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file of unsigned bytes (plain or gzipped) into an array of the shape its header states."""
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08" or raw[3] == 0:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes (magic number {raw[:4].hex() or 'missing'})")
    header = 4 + 4 * raw[3]
    if len(raw) < header:
        raise ValueError(f"{path}: IDX header is truncated")
    shape = struct.unpack(f">{raw[3]}I", raw[4:header])
    if len(raw) - header != math.prod(shape):
        raise ValueError(f"{path}: header says shape {shape} ({math.prod(shape)} bytes), file has {len(raw) - header}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one pickled CIFAR-10 batch: images (n, 3, 32, 32) uint8 and labels (n,) int64."""
    with open(path, "rb") as f:
        try:
            batch = _BatchUnpickler(f, encoding="bytes").load()
        except Exception as err:  # unpickling garbage can raise almost anything
            raise ValueError(f"{path}: not a CIFAR-10 batch ({type(err).__name__}: {err})") from err
    try:
        batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
        data, labels = np.asarray(batch["data"]), np.asarray(batch["labels"], dtype=np.int64)
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not a CIFAR-10 batch, expected a dict with 'data' and 'labels' ({err!r})") from err
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: data must be uint8 of shape (n, 3072), got {data.dtype} {data.shape}")
    _check_labels(path, labels, len(data))
    return data.reshape(-1, 3, 32, 32), labels


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds only NumPy arrays, lists, dicts and bytes, so a batch file cannot run code."""

    SAFE = {"ndarray": np.ndarray, "dtype": np.dtype, "encode": codecs.encode,  # how NumPy pickles an array
            "_reconstruct": np.zeros(1).__reduce__()[0], "_frombuffer": np.zeros(1).__reduce_ex__(5)[0]}

    def find_class(self, module: str, name: str) -> object:
        if module.split(".")[0] in ("numpy", "_codecs") and name in self.SAFE:
            return self.SAFE[name]
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _idx_dataset(name: str, folder: Path, url: str, stats: tuple[tuple[float, ...], ...],
                 download: bool | None) -> Dataset:
    """Load a 28x28 IDX dataset (MNIST's format) from `folder`, downloading missing files if allowed."""
    _require_files(folder, [n for n in IDX_FILES if _find_idx(folder, n) is None], url, download,
                   fetch=lambda: _fetch_idx(folder, url),
                   how=f"Download them from {url} (each plain or .gz) and put them in {folder.absolute()}/")
    x_train, y_train = _read_idx_pair(folder, "train")
    x_test, y_test = _read_idx_pair(folder, "t10k")
    return Dataset(name=name, x_train=_standardize(x_train[:, None], stats), y_train=torch.from_numpy(y_train),
                   x_test=_standardize(x_test[:, None], stats), y_test=torch.from_numpy(y_test),
                   n_classes=10, input_shape=(1, 28, 28))


def _read_idx_pair(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read `<split>-images` (n, 28, 28) and `<split>-labels` (n,) and check that they match."""
    images_path = _find_idx(folder, f"{split}-images-idx3-ubyte")
    labels_path = _find_idx(folder, f"{split}-labels-idx1-ubyte")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"{images_path}: images must have shape (n, 28, 28), got {images.shape}")
    if labels.ndim != 1:
        raise ValueError(f"{labels_path}: labels must have shape (n,), got {labels.shape}")
    _check_labels(labels_path, labels, len(images))
    return images, labels.astype(np.int64)


def _check_labels(path: Path, labels: np.ndarray, n_images: int, n_classes: int = 10) -> None:
    """Labels must be as many as the images and lie in 0 .. n_classes - 1."""
    if len(labels) != n_images:
        raise ValueError(f"{path}: {len(labels)} labels for {n_images} images")
    if len(labels) and not 0 <= labels.min() <= labels.max() < n_classes:
        raise ValueError(f"{path}: labels must lie in 0..{n_classes - 1}, got {labels.min()}..{labels.max()}")


def _find_idx(folder: Path, name: str) -> Path | None:
    """The plain or gzipped file `name` in `folder`, or None when neither exists."""
    return next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None)


def _read_bytes(path: Path) -> bytes:
    """The file's content, decompressed when it is gzipped (recognized by its magic bytes, not its name)."""
    raw = Path(path).read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path}: corrupt gzip file ({err})") from err


def _standardize(images: np.ndarray, stats: tuple[tuple[float, ...], ...]) -> torch.Tensor:
    """uint8 images (n, C, H, W) -> float32 scaled to [0, 1], minus the channel mean, over the channel std."""
    mean, std = (torch.tensor(s).view(-1, 1, 1) for s in stats)  # (C, 1, 1)
    x = torch.from_numpy(images.astype(np.float32))  # (n, C, H, W) a writable copy
    return x.div_(255).sub_(mean).div_(std)


def _require_files(folder: Path, missing: list[str], url: str, download: bool | None,
                   fetch: Callable[[], None], how: str) -> None:
    """Return when nothing is missing or `fetch` got it; otherwise raise FileNotFoundError saying what to do."""
    if not missing:
        return
    if download is False:
        reason = "not downloaded: download=False"
    elif download is None and not _reachable(url):
        reason = f"{urllib.parse.urlsplit(url).hostname} is not reachable"
    else:
        try:
            fetch()
            return
        except (OSError, ValueError, tarfile.TarError) as err:  # URLError and timeouts are OSErrors
            reason = f"download failed: {err}"
    raise FileNotFoundError(f"missing {', '.join(missing)} in {folder.absolute()}/ ({reason}). {how}.")


def _reachable(url: str) -> bool:
    """Whether a TCP connection to the URL's host opens within a few seconds."""
    parts = urllib.parse.urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)), 3):
            return True
    except OSError:
        return False


def _download(url: str, dest: Path, check: Callable[[Path], object]) -> None:
    """Download `url` to `dest` through a temporary file that must pass `check`, so failures leave nothing."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out)
        check(tmp)
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)


def _fetch_idx(folder: Path, url: str) -> None:
    """Download the missing gzipped IDX files from the mirror at `url`, checking each parses."""
    for name in IDX_FILES:
        if _find_idx(folder, name) is None:
            _download(f"{url}{name}.gz", folder / f"{name}.gz", check=read_idx)


def _fetch_cifar10(root: Path) -> None:
    """Download CIFAR-10's archive and extract its six batches (and nothing else) into `root/cifar-10-batches-py/`."""
    archive = root / "cifar-10-python.tar.gz"
    _download(CIFAR10_URL, archive, check=lambda p: tarfile.open(p).close())
    folder = root / "cifar-10-batches-py"
    folder.mkdir(exist_ok=True)
    try:
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                name = Path(member.name).name
                if member.isfile() and name in CIFAR10_FILES:
                    with tar.extractfile(member) as src, open(folder / name, "wb") as dst:
                        shutil.copyfileobj(src, dst)
    finally:
        archive.unlink(missing_ok=True)
