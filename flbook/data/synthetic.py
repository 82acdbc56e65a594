"""Synthetic(alpha, beta): the FedProx benchmark of heterogeneous clients, each with its own softmax model.

Paper: Li et al., "Federated Optimization in Heterogeneous Networks" (MLSys 2020), Sec. 5.1,
https://arxiv.org/abs/1812.06127, following Shamir et al., "Communication-Efficient Distributed
Optimization using an Approximate Newton-type Method" (ICML 2014).
"""
from __future__ import annotations

import numpy as np
import torch

from flbook import validation as V
from flbook.data.base import Dataset

MAX_STD = 1e6  # alpha and beta: larger standard deviations overflow the float32 inputs or the logits
MAX_CLIENTS = 100_000
MAX_FEATURES = 10_000
MAX_CLASSES = 1_000
MAX_MODEL_ENTRIES = 5 * 10**7  # n_clients x n_classes x n_features: the clients' softmax models, 400 MB of float64
MAX_DATA_ENTRIES = 2**29  # samples x n_features in x_train and x_test: 2 GiB of float32


def synthetic(alpha: float = 1.0, beta: float = 1.0, *, n_clients: int = 30, iid: bool = False,
              n_features: int = 60, n_classes: int = 10, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Generate FedProx's Synthetic(alpha, beta): `alpha` sets how much client models differ, `beta` their inputs.

    For client k: u_k ~ N(0, alpha^2), W_k ~ N(u_k, 1) (n_classes x n_features), b_k ~ N(u_k, 1);
    B_k ~ N(0, beta^2), v_k ~ N(B_k, 1) (n_features); x ~ N(v_k, Sigma) with Sigma diagonal,
    Sigma_jj = j^(-1.2); y = argmax(W_k x + b_k). As in the FedProx code, alpha and beta are standard
    deviations; alpha = 0 (beta = 0) means the client models (input means) share one prior mean, so that
    kind of heterogeneity comes only from the unit-variance draws around it (Synthetic(0, 0) is still
    non-IID). `iid=True` draws one W, b, v ~ N(0, 1) shared by every client (alpha and beta are then
    unused): all clients sample the same distribution (FedProx's IID variant still shifted each client's
    inputs by B_k; this one has no covariate shift). Client sizes are lognormal, as in the FedProx code:
    floor(LogNormal(4, 2)) + 50, so a few clients hold most of the data. Each client's samples are split
    train/test by `test_fraction`; the test set is the union of the clients' test parts, and
    `client_indices[k]` indexes client k's rows of x_train.

    Bounds, so that memory stays bounded and a too-large request fails at once with a clear error:
    alpha, beta <= 1e6 (larger ones overflow the float32 inputs);
    n_clients <= 100,000, n_features <= 10,000, n_classes <= 1,000; the client models hold at most
    n_clients x n_classes x n_features = 5e7 numbers (400 MB), and the data (the drawn client sizes times
    n_features) at most 2**29 numbers (2 GiB of float32; 10,000 clients of 60 features take about 1 GB).
    """
    alpha, beta = V.in_range("alpha", alpha, 0, MAX_STD), V.in_range("beta", beta, 0, MAX_STD)
    n_clients = V.integer("n_clients", n_clients, 1, MAX_CLIENTS)
    n_features = V.integer("n_features", n_features, 1, MAX_FEATURES)
    n_classes = V.integer("n_classes", n_classes, 2, MAX_CLASSES)
    if n_clients * n_classes * n_features > MAX_MODEL_ENTRIES:
        raise ValueError(f"n_clients x n_classes x n_features must be <= {MAX_MODEL_ENTRIES:.0e} (the clients' models), "
                         f"got {n_clients} x {n_classes} x {n_features}; lower one of them")
    test_fraction = V.in_range("test_fraction", test_fraction, 0, 1, lo_inclusive=False, hi_inclusive=False)
    seed = V.seed(seed)
    if not isinstance(iid, (bool, np.bool_)):
        raise TypeError(f"iid must be True or False, got {iid!r}")

    rng = np.random.default_rng(seed)
    sizes = rng.lognormal(4.0, 2.0, n_clients).astype(np.int64) + 50  # (K,)
    if int(sizes.sum()) * n_features > MAX_DATA_ENTRIES:
        raise ValueError(f"n_clients={n_clients} clients hold {int(sizes.sum())} samples of n_features={n_features}: "
                         f"more than {MAX_DATA_ENTRIES} numbers (2 GiB); lower n_clients or n_features")
    x_std = np.arange(1, n_features + 1) ** -0.6  # (D,) sqrt of Sigma_jj = j^-1.2
    if iid:
        shared = (rng.normal(0, 1, (n_classes, n_features)), rng.normal(0, 1, n_classes), rng.normal(0, 1, n_features))
        models = [shared] * n_clients
    else:
        u = rng.normal(0, alpha, n_clients)  # (K,) mean of each client's model
        mean_v = rng.normal(0, beta, n_clients)  # (K,) B_k, the mean of each client's input mean v_k
        models = [(rng.normal(u_k, 1, (n_classes, n_features)), rng.normal(u_k, 1, n_classes),
                   rng.normal(b_k, 1, n_features)) for u_k, b_k in zip(u, mean_v)]

    n_train = sizes - np.clip(np.round(test_fraction * sizes).astype(np.int64), 1, sizes - 1)  # (K,)
    starts = np.cumsum(n_train) - n_train  # (K,) first row of each client in x_train
    test_starts = np.cumsum(sizes - n_train) - (sizes - n_train)  # (K,) first row of each client in x_test
    client_indices = [np.arange(s, s + n) for s, n in zip(starts, n_train)]
    # Written client by client into the float32 outputs: memory is the data itself plus one client's draws.
    x_train = np.empty((int(n_train.sum()), n_features), dtype=np.float32)
    x_test = np.empty((int((sizes - n_train).sum()), n_features), dtype=np.float32)
    y_train = np.empty(len(x_train), dtype=np.int64)
    y_test = np.empty(len(x_test), dtype=np.int64)
    for n_k, m_k, s_k, t_k, (w, b, v) in zip(sizes, n_train, starts, test_starts, models):
        x = v + x_std * rng.standard_normal((n_k, n_features))  # (n_k, D)
        y = np.argmax(x @ w.T + b, axis=1)  # (n_k,) softmax is monotone: argmax of the logits
        x_train[s_k:s_k + m_k], y_train[s_k:s_k + m_k] = x[:m_k], y[:m_k]
        x_test[t_k:t_k + n_k - m_k], y_test[t_k:t_k + n_k - m_k] = x[m_k:], y[m_k:]

    return Dataset(
        name="synthetic(iid)" if iid else f"synthetic({alpha:g},{beta:g})",
        x_train=torch.from_numpy(x_train),
        y_train=torch.from_numpy(y_train),
        x_test=torch.from_numpy(x_test),
        y_test=torch.from_numpy(y_test),
        n_classes=n_classes,
        input_shape=(n_features,),
        client_indices=client_indices,
    )
