"""Partitioners that split a dataset into federated clients, and statistics of the resulting partition."""
from flbook.partition.partitioners import (
    PARTITIONERS,
    dirichlet,
    feature_skew,
    iid,
    inner_dirichlet,
    partition,
    pathological,
    quantity_skew,
    shards,
)
from flbook.partition.stats import counts_matrix, label_entropy, sizes, summary

__all__ = [
    "PARTITIONERS",
    "counts_matrix",
    "dirichlet",
    "feature_skew",
    "iid",
    "inner_dirichlet",
    "label_entropy",
    "partition",
    "pathological",
    "quantity_skew",
    "shards",
    "sizes",
    "summary",
]
