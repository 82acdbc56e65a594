"""Tests for flbook.data: shapes, ranges, seeding, natural partitions, file readers and their errors (offline)."""
from __future__ import annotations

import gzip
import io
import os
import pickle
import random
import struct
import tarfile
from pathlib import Path
import urllib.error

import numpy as np
import pytest
import torch

import flbook.data.files as files
from flbook.data import DATASETS, Dataset, cifar10, digits, fashion_mnist, load, mnist, mnist1d, synthetic


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Fail loudly if anything tries to open a connection."""
    def refuse(*args, **kwargs):
        raise AssertionError("tests must not touch the network")
    monkeypatch.setattr(files.socket, "create_connection", refuse)
    monkeypatch.setattr(files.urllib.request, "urlopen", refuse)


def label_skew(ds: Dataset) -> float:
    """Mean total-variation distance between each client's label distribution and the global one."""
    y = ds.y_train.numpy()
    overall = np.bincount(y, minlength=ds.n_classes) / len(y)
    per_client = np.stack([np.bincount(y[idx], minlength=ds.n_classes) / len(idx) for idx in ds.client_indices])
    return float(0.5 * np.abs(per_client - overall).sum(axis=1).mean())


def input_mean_spread(ds: Dataset) -> float:
    """Standard deviation across clients of each client's average input feature (covariate shift)."""
    return float(np.std([ds.x_train[idx].mean().item() for idx in ds.client_indices]))


def assert_same(a: Dataset, b: Dataset) -> None:
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field


# --- digits --------------------------------------------------------------------------------------------

def test_digits_shapes_dtypes_range_and_stratified_split():
    ds = digits()
    assert ds.x_train.shape == (1437, 1, 8, 8) and ds.x_test.shape == (360, 1, 8, 8)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.x_train.min() == 0 and ds.x_train.max() == 1
    assert (ds.n_classes, ds.input_shape, ds.n_features, ds.client_indices) == (10, (1, 8, 8), 64, None)
    test_counts = torch.bincount(ds.y_test, minlength=10)
    assert test_counts.max() - test_counts.min() <= 2  # stratified: about 36 per class


def test_digits_split_is_fixed_and_seed_changes_it():
    assert_same(digits(), digits())
    assert not torch.equal(digits(seed=1).y_test, digits().y_test)


# --- synthetic -----------------------------------------------------------------------------------------

def test_synthetic_shapes_and_clients_partition_train_exactly_once():
    ds = synthetic(n_clients=12, seed=3)
    n_train, n_test = len(ds.y_train), len(ds.y_test)
    assert ds.x_train.shape == (n_train, 60) and ds.x_test.shape == (n_test, 60)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert 0 <= ds.y_train.min() and ds.y_train.max() < 10 and ds.n_classes == 10
    assert len(ds.client_indices) == 12 and all(len(idx) > 0 for idx in ds.client_indices)
    np.testing.assert_array_equal(np.sort(np.concatenate(ds.client_indices)), np.arange(n_train))
    assert n_test / (n_train + n_test) == pytest.approx(0.2, abs=0.01)


def test_synthetic_same_seed_same_tensors_other_seed_differs():
    a, b = synthetic(0.5, 0.5, n_clients=5, seed=7), synthetic(0.5, 0.5, n_clients=5, seed=7)
    assert_same(a, b)
    assert all(np.array_equal(i, j) for i, j in zip(a.client_indices, b.client_indices))
    assert len(a.y_train) != len(synthetic(0.5, 0.5, n_clients=5, seed=8).y_train)


def test_synthetic_iid_clients_share_a_distribution_and_non_iid_ones_do_not():
    iid = synthetic(n_clients=20, iid=True, seed=0)
    assert label_skew(iid) < 0.1
    assert input_mean_spread(iid) < 0.1
    heterogeneous = synthetic(1.0, 1.0, n_clients=20, seed=0)
    assert label_skew(heterogeneous) > 0.4
    assert input_mean_spread(synthetic(0.0, 5.0, n_clients=20, seed=0)) > 10 * input_mean_spread(
        synthetic(0.0, 0.0, n_clients=20, seed=0))  # beta drives covariate shift


def test_synthetic_respects_shape_options():
    ds = synthetic(n_clients=3, n_features=7, n_classes=3, test_fraction=0.5, seed=1)
    assert ds.input_shape == (7,) and ds.x_test.shape[1:] == (7,) and ds.y_train.max() < 3


@pytest.mark.parametrize("kwargs, parameter", [
    ({"alpha": -1.0}, "alpha"), ({"beta": -0.1}, "beta"), ({"n_clients": 0}, "n_clients"),
    ({"test_fraction": 0.0}, "test_fraction"), ({"test_fraction": 1.0}, "test_fraction"),
    ({"n_classes": 1}, "n_classes"), ({"n_features": 0}, "n_features"),
])
def test_synthetic_rejects_bad_input(kwargs, parameter):
    with pytest.raises(ValueError, match=parameter):
        synthetic(**kwargs)


# --- load and Dataset ------------------------------------------------------------------------------------

def test_load_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as err:
        load("nope")
    assert all(name in str(err.value) for name in DATASETS)


def test_load_forwards_seed_and_kwargs_and_moves_to_device():
    assert_same(load("synthetic", seed=4, n_clients=5, alpha=0.2), synthetic(0.2, n_clients=5, seed=4))
    assert_same(load("digits", seed=2), digits(seed=2))
    ds = load("synthetic", n_clients=5, device="meta")
    assert {t.device.type for t in (ds.x_train, ds.y_train, ds.x_test, ds.y_test)} == {"meta"}
    assert "device=meta" in repr(ds)


def test_dataset_to_returns_a_moved_copy():
    ds = synthetic(n_clients=3)
    moved = ds.to("meta")
    assert ds.x_train.device.type == "cpu" and moved.x_train.device.type == "meta"
    assert moved.x_test.shape == ds.x_test.shape and moved.client_indices is ds.client_indices


def test_dataset_repr_and_validation():
    ds = synthetic(n_clients=4)
    assert repr(ds).startswith("Dataset('synthetic(1,1)', train=") and "clients=4" in repr(ds)
    with pytest.raises(ValueError, match="y_train"):
        Dataset("bad", ds.x_train, ds.y_train[:-1], ds.x_test, ds.y_test, 10, (60,))
    with pytest.raises(ValueError, match="x_test"):
        Dataset("bad", ds.x_train, ds.y_train, ds.x_test[:, :10], ds.y_test, 10, (60,))


# --- MNIST-1D ----------------------------------------------------------------------------------------------

def test_mnist1d_generates_caches_and_leaves_global_rngs_alone(tmp_path, monkeypatch):
    np.random.seed(123)
    random.seed(123)
    expected = (np.random.random(), random.random())
    np.random.seed(123)
    random.seed(123)
    ds = mnist1d(root=tmp_path / "cache", n_samples=200, seed=5)
    assert (np.random.random(), random.random()) == expected
    assert ds.x_train.shape == (160, 40) and ds.x_test.shape == (40, 40) and ds.input_shape == (40,)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert set(torch.cat([ds.y_train, ds.y_test]).tolist()) == set(range(10))
    assert (tmp_path / "cache" / "mnist1d_200_5.npz").is_file()

    monkeypatch.setattr("flbook.data.bundled._generate_mnist1d", lambda *a: pytest.fail("cache not used"))
    assert_same(mnist1d(root=tmp_path / "cache", n_samples=200, seed=5), ds)


def test_mnist1d_regenerates_an_unreadable_cache(tmp_path):
    cache = tmp_path / "mnist1d_100_42.npz"
    cache.write_bytes(b"not an npz file")
    ds = mnist1d(root=tmp_path, n_samples=100)
    assert ds.x_train.shape == (80, 40)
    with np.load(cache) as f:
        np.testing.assert_array_equal(f["y_test"], ds.y_test.numpy())
    assert_same(load("mnist1d", root=tmp_path, n_samples=100), ds)  # the cache, at the canonical seed 42


def test_mnist1d_rejects_too_few_samples(tmp_path):
    with pytest.raises(ValueError, match="n_samples"):
        mnist1d(root=tmp_path, n_samples=5)


# --- MNIST / Fashion-MNIST (IDX files) ----------------------------------------------------------------------

def idx_bytes(array: np.ndarray) -> bytes:
    """An array of uint8 in the IDX format: magic (0, 0, 0x08, ndim), big-endian dims, then the data."""
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_idx_dataset(folder, n_train=20, n_test=10, gz=False) -> dict[str, np.ndarray]:
    """Write the four MNIST-format files (small) into `folder`; return the arrays written, by file name."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test)[::-1] % 10).astype(np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        data = idx_bytes(array)
        (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_reads_idx_files_and_standardizes(tmp_path, gz):
    arrays = write_idx_dataset(tmp_path / "mnist", gz=gz)
    ds = mnist(tmp_path, download=False)
    assert ds.x_train.shape == (20, 1, 28, 28) and ds.x_test.shape == (10, 1, 28, 28)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    np.testing.assert_array_equal(ds.y_test.numpy(), arrays["t10k-labels-idx1-ubyte"])
    pixels = ds.x_train[:, 0] * 0.3081 + 0.1307
    np.testing.assert_allclose(pixels.numpy(), arrays["train-images-idx3-ubyte"] / 255, atol=1e-6)


def test_fashion_mnist_reads_its_own_folder_through_load(tmp_path):
    arrays = write_idx_dataset(tmp_path / "fashion_mnist", gz=True)
    ds = load("fashion_mnist", root=tmp_path, download=False)
    assert ds.name == "fashion_mnist" and ds.input_shape == (1, 28, 28)
    pixels = ds.x_test[:, 0] * 0.3530 + 0.2860
    np.testing.assert_allclose(pixels.numpy(), arrays["t10k-images-idx3-ubyte"] / 255, atol=1e-6)


@pytest.mark.parametrize("name, content, message", [
    ("train-labels-idx1-ubyte", b"\x00\x00\x0d\x01\x00\x00\x00\x14" + bytes(20), "magic number"),
    ("train-images-idx3-ubyte", idx_bytes(np.zeros((20, 28, 28), np.uint8))[:-5], "header says shape"),
    ("train-images-idx3-ubyte.gz", gzip.compress(idx_bytes(np.zeros((20, 28, 28), np.uint8)))[:-10], "corrupt gzip"),
    ("train-images-idx3-ubyte", idx_bytes(np.zeros((20, 27, 27), np.uint8)), r"\(n, 28, 28\)"),
    ("train-labels-idx1-ubyte", idx_bytes(np.full(20, 10, np.uint8)), r"labels must lie in 0\.\.9"),
    ("t10k-labels-idx1-ubyte", idx_bytes(np.zeros(9, np.uint8)), "9 labels for 10 images"),
], ids=["magic", "truncated", "gzip", "image-size", "label-range", "label-count"])
def test_mnist_corrupt_file_gives_an_error_naming_it(tmp_path, name, content, message):
    folder = tmp_path / "mnist"
    write_idx_dataset(folder)
    (folder / name.removesuffix(".gz")).unlink()
    (folder / name).write_bytes(content)
    with pytest.raises(ValueError, match=message) as err:
        mnist(tmp_path, download=False)
    assert str(folder / name) in str(err.value)


def test_mnist_missing_files_message_names_files_folder_and_url(tmp_path):
    folder = tmp_path / "mnist"
    write_idx_dataset(folder)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (folder / name).unlink()
    with pytest.raises(FileNotFoundError) as err:
        mnist(tmp_path, download=False)
    message = str(err.value)
    assert "t10k-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert "train-images" not in message
    assert str(folder) in message and files.MNIST_URL in message


def test_download_none_skips_an_unreachable_mirror(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "_reachable", lambda url: False)
    with pytest.raises(FileNotFoundError, match="not reachable"):
        fashion_mnist(tmp_path)
    assert not (tmp_path / "fashion_mnist").exists()


def fake_urlopen(payloads: dict[str, bytes]):
    """A stand-in for urllib.request.urlopen serving `payloads` by URL, and 404 for anything else."""
    def urlopen(url, timeout):
        assert timeout <= 30
        if url not in payloads:
            raise urllib.error.URLError(f"404 {url}")
        return io.BytesIO(payloads[url])
    return urlopen


def test_mnist_download_fetches_checks_and_stores_missing_files(tmp_path, monkeypatch):
    source = tmp_path / "mirror"
    arrays = write_idx_dataset(source, gz=True)
    payloads = {files.MNIST_URL + p.name: p.read_bytes() for p in source.iterdir()}
    monkeypatch.setattr(files.urllib.request, "urlopen", fake_urlopen(payloads))
    ds = mnist(tmp_path / "data", download=True)
    np.testing.assert_array_equal(ds.y_train.numpy(), arrays["train-labels-idx1-ubyte"])
    assert sorted(p.name for p in (tmp_path / "data" / "mnist").iterdir()) == sorted(f + ".gz" for f in files.IDX_FILES)


def test_failed_download_raises_file_not_found_and_leaves_no_partial_file(tmp_path, monkeypatch):
    corrupt = {files.MNIST_URL + f + ".gz": b"\x1f\x8b garbage" for f in files.IDX_FILES}
    monkeypatch.setattr(files.urllib.request, "urlopen", fake_urlopen(corrupt))
    with pytest.raises(FileNotFoundError, match="download failed") as err:
        mnist(tmp_path, download=True)
    assert "train-images-idx3-ubyte" in str(err.value)
    assert list((tmp_path / "mnist").iterdir()) == []


# --- CIFAR-10 (pickled batches) ------------------------------------------------------------------------------

def cifar_batch_bytes(n: int, seed: int) -> tuple[bytes, np.ndarray, list[int]]:
    """One CIFAR-10 batch as the Python 2 pickles ship it: bytes keys, uint8 (n, 3072) data, list labels."""
    data = np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [(i + seed) % 10 for i in range(n)]
    batch = {b"batch_label": b"fixture", b"labels": labels, b"data": data, b"filenames": [b"x.png"] * n}
    return pickle.dumps(batch, protocol=2), data, labels


def write_cifar10(folder, n=4) -> dict[str, tuple[np.ndarray, list[int]]]:
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for seed, name in enumerate(files.CIFAR10_FILES):
        content, data, labels = cifar_batch_bytes(n, seed)
        (folder / name).write_bytes(content)
        written[name] = (data, labels)
    return written


def test_cifar10_reads_batches_and_standardizes_per_channel(tmp_path):
    written = write_cifar10(tmp_path / "cifar-10-batches-py")
    ds = cifar10(tmp_path, download=False)
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
    assert ds.input_shape == (3, 32, 32) and ds.y_train.dtype == torch.int64
    assert ds.y_train.tolist() == sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    mean, std = (torch.tensor(s).view(3, 1, 1) for s in files.CIFAR10_STATS)
    pixels = ds.x_test * std + mean
    np.testing.assert_allclose(pixels.numpy(), written["test_batch"][0].reshape(4, 3, 32, 32) / 255, atol=1e-6)


class RunsCode:
    def __reduce__(self):
        return (os.getcwd, ())


@pytest.mark.parametrize("content, message", [
    (b"garbage", "not a CIFAR-10 batch"),
    (pickle.dumps({b"data": RunsCode(), b"labels": []}, protocol=2), "refusing to load"),
    (pickle.dumps({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}, protocol=2), r"\(n, 3072\)"),
    (pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0] * 3}, protocol=2), "3 labels for 4 images"),
    (pickle.dumps([1, 2], protocol=2), "expected a dict"),
], ids=["garbage", "code", "data-shape", "label-count", "not-a-dict"])
def test_cifar10_corrupt_batch_gives_an_error_naming_it(tmp_path, content, message):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    (folder / "data_batch_3").write_bytes(content)
    with pytest.raises(ValueError, match=message) as err:
        cifar10(tmp_path, download=False)
    assert str(folder / "data_batch_3") in str(err.value)


def test_cifar10_missing_files_message_names_files_folder_and_url(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        cifar10(tmp_path, download=False)
    message = str(err.value)
    assert all(name in message for name in files.CIFAR10_FILES)
    assert str(tmp_path / "cifar-10-batches-py") in message and files.CIFAR10_URL in message


def test_cifar10_download_extracts_only_the_batches(tmp_path, monkeypatch):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for seed, name in enumerate((*files.CIFAR10_FILES, "readme.html")):
            content = cifar_batch_bytes(2, seed)[0]
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    monkeypatch.setattr(files.urllib.request, "urlopen", fake_urlopen({files.CIFAR10_URL: buffer.getvalue()}))
    ds = cifar10(tmp_path, download=True)
    assert ds.x_train.shape == (10, 3, 32, 32)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(files.CIFAR10_FILES)


def test_data_root_prefers_argument_then_environment(monkeypatch, tmp_path):
    from flbook.data import data_root

    monkeypatch.setenv("FLBOOK_DATA", str(tmp_path))
    assert data_root() == tmp_path
    assert data_root("elsewhere") == Path("elsewhere")
    monkeypatch.delenv("FLBOOK_DATA")
    assert data_root().name == "data"


@pytest.mark.parametrize("call, error, message", [
    (lambda: synthetic(alpha=float("nan")), ValueError, r"alpha must be in \[0, 1e\+06\], got nan"),
    (lambda: synthetic(beta=float("inf")), ValueError, r"beta must be in \[0, 1e\+06\], got inf"),
    (lambda: synthetic(n_clients=2.5), ValueError, "n_clients must be an integer, got 2.5"),
    (lambda: load("digits", seed=-1), ValueError, r"seed must be an integer in \[0, 4294967295\], got -1"),
    (lambda: load("digits", device="tpu"), ValueError, "device must name a torch device"),
    (lambda: load("digits", device=3), TypeError, "device must be a device name"),
    (lambda: mnist1d(n_samples=100.5), ValueError, "n_samples must be an integer"),
])
def test_loaders_name_the_bad_parameter(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_cpu_machine_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available on this machine"):
        load("digits", device="cuda")


def test_synthetic_at_scale_costs_about_its_data():
    """10,000 clients used to peak at 4.6 GB for 0.8 GB of data: now the float32 outputs are written in place."""
    import tracemalloc

    tracemalloc.start()
    data = synthetic(n_clients=2000, n_features=10, seed=1)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    made = sum(t.numel() * t.element_size() for t in (data.x_train, data.y_train, data.x_test, data.y_test))
    assert peak < 2.5 * made


@pytest.mark.parametrize("kwargs, message", [
    ({"n_clients": 2**70}, r"n_clients must be an integer in \[1, 100000\]"),
    ({"beta": 2.6e38}, r"beta must be in \[0, 1e\+06\]"),  # used to overflow the float32 inputs to inf
    ({"n_features": 10**9}, r"n_features must be an integer in \[1, 10000\]"),
    ({"n_classes": 10**6}, r"n_classes must be an integer in \[2, 1000\]"),
    ({"n_clients": 1000, "n_features": 10_000}, r"n_clients x n_classes x n_features must be <= 5e\+07"),
    ({"n_clients": 20_000, "n_features": 1_000, "n_classes": 2}, "more than 536870912 numbers .*lower n_clients or n_features"),
])
def test_synthetic_refuses_sizes_that_would_exhaust_memory(kwargs, message):
    import time

    start = time.perf_counter()
    with pytest.raises(ValueError, match=message):
        synthetic(**kwargs)
    assert time.perf_counter() - start < 1.0
