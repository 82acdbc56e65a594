"""Shared fixtures: small, fast federations on scikit-learn's bundled digits."""
import os

import numpy as np
import pytest
import torch

from flbook.data import digits

# Unit tests compare exact numbers on the CPU; tests/test_cuda.py checks the GPU explicitly when one exists.
os.environ.setdefault("FLBOOK_DEVICE", "cpu")


@pytest.fixture(scope="session")
def digits_data():
    return digits()


def equal_parts(n_samples: int, n_clients: int, per_client: int, seed: int = 0) -> list[np.ndarray]:
    """Disjoint equal-size client shards, so a batch of `per_client` is exactly one full local batch."""
    ids = np.random.default_rng(seed).permutation(n_samples)[: n_clients * per_client]
    return [np.sort(chunk) for chunk in ids.reshape(n_clients, per_client)]


def two_class_split(labels: np.ndarray, n_clients: int, seed: int = 0) -> list[np.ndarray]:
    """A skewed split without the partition module: each client takes mostly two classes."""
    rng = np.random.default_rng(seed)
    owner = (labels * 2 // 3 + rng.integers(0, 2, len(labels))) % n_clients
    return [np.flatnonzero(owner == k) for k in range(n_clients)]


@pytest.fixture(autouse=True)
def _same_random_state():
    """Every test starts from one global random state, so a draw a test does not seed itself is the same whatever
    ran before it (the suite's outcome does not depend on the order of the tests)."""
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(autouse=True)
def _one_thread():
    """Unit tests use one intra-op thread: tiny models, two cores, several processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
