"""Statistics of a partition: per-client class counts, label entropy and sizes."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from flbook.partition.partitioners import _as_labels, _class_ids


def _label_ids(labels: np.ndarray) -> np.ndarray:
    """Integer labels as they are; whole-number floats as ints; strings and other objects renumbered 0..C-1."""
    if labels.dtype.kind in "iub":
        return labels.astype(np.int64)
    if labels.dtype.kind == "f":
        if not (np.isfinite(labels).all() and (labels == np.round(labels)).all()):
            raise ValueError(f"labels must be whole-number class ids, got non-integral values such as "
                             f"{labels[(labels != np.round(labels)) | ~np.isfinite(labels)][0]}")
        return labels.astype(np.int64)
    return _class_ids(labels)  # e.g. string labels, in sorted order as the partitioners number them


def counts_matrix(
    labels: np.ndarray | torch.Tensor, parts: list[np.ndarray], n_classes: int | None = None
) -> np.ndarray:
    """(clients, classes) int matrix of how many samples of each class every client holds."""
    labels = _label_ids(_as_labels(labels))
    if labels.size and labels.min() < 0:
        raise ValueError(f"labels must be class ids >= 0, got {labels.min()}")
    n_classes = int(labels.max()) + 1 if n_classes is None else n_classes
    if labels.size and not n_classes > labels.max():
        raise ValueError(f"n_classes must be > the largest label ({labels.max()}), got {n_classes}")
    return np.stack([np.bincount(labels[p], minlength=n_classes) for p in parts]).astype(np.int64)


def label_entropy(
    labels: np.ndarray | torch.Tensor, parts: list[np.ndarray], n_classes: int | None = None
) -> np.ndarray:
    """Shannon entropy (bits) of each client's label distribution: 0 for one class, log2(C) for uniform."""
    counts = counts_matrix(labels, parts, n_classes)
    p = counts / np.maximum(counts.sum(1, keepdims=True), 1)  # empty clients get entropy 0
    return (p * np.log2(1.0 / np.where(p > 0, p, 1.0))).sum(1)  # sum p log(1/p): no -0.0 for one class


def sizes(parts: list[np.ndarray]) -> np.ndarray:
    """Number of samples per client."""
    return np.array([len(p) for p in parts], dtype=np.int64)


def summary(labels: np.ndarray | torch.Tensor, parts: list[np.ndarray]) -> pd.DataFrame:
    """One row per client: client, size, entropy (bits), n_classes_present; a tidy table for seaborn."""
    counts = counts_matrix(labels, parts)
    return pd.DataFrame(
        {
            "client": np.arange(len(parts)),
            "size": sizes(parts),
            "entropy": label_entropy(labels, parts),
            "n_classes_present": (counts > 0).sum(1),
        }
    )
