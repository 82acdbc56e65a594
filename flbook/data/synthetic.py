"""Synthetic(alpha, beta): the FedProx benchmark of heterogeneous clients, each with its own softmax model.

Paper: Li et al., "Federated Optimization in Heterogeneous Networks" (MLSys 2020), Sec. 5.1,
https://arxiv.org/abs/1812.06127, following Shamir et al., "Communication-Efficient Distributed
Optimization using an Approximate Newton-type Method" (ICML 2014).
"""
from __future__ import annotations

import numpy as np
import torch

from flbook.data.base import Dataset


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
    """
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if n_clients < 1:
        raise ValueError(f"n_clients must be >= 1, got {n_clients}")
    if n_features < 1:
        raise ValueError(f"n_features must be >= 1, got {n_features}")
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")

    rng = np.random.default_rng(seed)
    sizes = rng.lognormal(4.0, 2.0, n_clients).astype(np.int64) + 50  # (K,)
    x_std = np.arange(1, n_features + 1) ** -0.6  # (D,) sqrt of Sigma_jj = j^-1.2
    if iid:
        shared = (rng.normal(0, 1, (n_classes, n_features)), rng.normal(0, 1, n_classes), rng.normal(0, 1, n_features))
        models = [shared] * n_clients
    else:
        u = rng.normal(0, alpha, n_clients)  # (K,) mean of each client's model
        mean_v = rng.normal(0, beta, n_clients)  # (K,) B_k, the mean of each client's input mean v_k
        models = [(rng.normal(u_k, 1, (n_classes, n_features)), rng.normal(u_k, 1, n_classes),
                   rng.normal(b_k, 1, n_features)) for u_k, b_k in zip(u, mean_v)]

    xs, ys = [], []
    for n_k, (w, b, v) in zip(sizes, models):
        x = v + x_std * rng.standard_normal((n_k, n_features))  # (n_k, D)
        xs.append(x)
        ys.append(np.argmax(x @ w.T + b, axis=1))  # (n_k,) softmax is monotone: argmax of the logits
    n_train = sizes - np.clip(np.round(test_fraction * sizes).astype(np.int64), 1, sizes - 1)  # (K,)
    starts = np.cumsum(n_train) - n_train  # (K,) first row of each client in x_train
    client_indices = [np.arange(s, s + n) for s, n in zip(starts, n_train)]

    def split(arrays: list[np.ndarray], train: bool) -> torch.Tensor:
        return torch.from_numpy(np.concatenate([a[:n] if train else a[n:] for a, n in zip(arrays, n_train)]))

    return Dataset(
        name="synthetic(iid)" if iid else f"synthetic({alpha:g},{beta:g})",
        x_train=split(xs, train=True).float(),
        y_train=split(ys, train=True).long(),
        x_test=split(xs, train=False).float(),
        y_test=split(ys, train=False).long(),
        n_classes=n_classes,
        input_shape=(n_features,),
        client_indices=client_indices,
    )
