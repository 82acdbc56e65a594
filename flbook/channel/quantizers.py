"""The lossy stages of a compressor: a sparsifier (`TopK`) and the quantizers (`UniformQuantizer`, `QSGD`, `KMeans`).

Each works on a batch of layers (M, n) at once and turns values into symbols plus a small table (a scale or a
codebook) that `compression.Compressor` writes to the wire; `dequantize` is what the receiver computes from them.
QSGD: Alistarh et al., NeurIPS 2017. K-means weight quantization: Han et al., "Deep Compression", ICLR 2016.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from .. import validation as V


# ------------------------------------------------------------------------------------------ sparsifier
@dataclass(frozen=True)
class TopK:
    """Keep the largest-magnitude entries of each layer: a `fraction` of them (top-z) or `k` of them (top-k)."""

    fraction: float | None = None
    k: int | None = None

    def __post_init__(self) -> None:
        if (self.fraction is None) == (self.k is None):
            raise ValueError(f"give exactly one of fraction and k, got fraction={self.fraction}, k={self.k}")
        if self.fraction is not None:
            object.__setattr__(self, "fraction", V.probability("fraction", self.fraction, zero=False))
        if self.k is not None:
            object.__setattr__(self, "k", V.integer("k", self.k, 1))

    def count(self, n: int) -> int:
        """Entries kept out of n: min(k, n), or round(fraction n) but at least one."""
        if n == 0:
            return 0
        return min(self.k, n) if self.k is not None else max(1, round(self.fraction * n))

    def mask(self, v: torch.Tensor) -> torch.Tensor:
        """(M, n) bool: True at each row's `count(n)` largest |v| (ties broken by position)."""
        keep = torch.topk(v.abs(), self.count(v.shape[1]), dim=1).indices  # (M, k)
        return torch.zeros_like(v, dtype=torch.bool).scatter_(1, keep, True)


# ------------------------------------------------------------------------------------------- quantizers
class Quantizer(ABC):
    """Maps each row of values to integer symbols in [0, alphabet) plus a small float table (scale or codebook)."""

    stochastic: ClassVar[bool] = False  # True: quantize draws random numbers from its generator

    @property
    @abstractmethod
    def zero(self) -> int | None:
        """The symbol that decodes to exactly 0 (None: no such symbol)."""

    @property
    @abstractmethod
    def alphabet(self) -> int:
        """Number of distinct symbols A."""

    @property
    @abstractmethod
    def table_size(self) -> int:
        """Floats sent per layer besides the symbols."""

    @abstractmethod
    def quantize(self, v: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, n) values -> symbols (M, n) int64 and table (M, table_size) float32."""

    @abstractmethod
    def dequantize(self, symbols: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """Symbols (M, n) and table (M, T) -> the values the receiver reconstructs (M, n)."""


class _Grid(Quantizer):
    """A symmetric grid {-s, ..., s} * scale / s; symbol = level + s, so symbol s decodes to exactly 0."""

    @property
    @abstractmethod
    def s(self) -> int:
        """Levels per sign."""

    @property
    def zero(self) -> int:
        return self.s

    @property
    def alphabet(self) -> int:
        return 2 * self.s + 1

    @property
    def table_size(self) -> int:
        return 1

    @abstractmethod
    def scale(self, v: torch.Tensor) -> torch.Tensor:
        """(M, 1) the magnitude that level s stands for."""

    @abstractmethod
    def round(self, r: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Integer levels for magnitudes r in [0, s]."""

    def quantize(self, v: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        scale = self.scale(v)  # (M, 1)
        r = v.abs() / torch.where(scale > 0, scale, 1) * self.s  # (M, n) in [0, s]
        level = self.round(r, generator).clamp(max=self.s)
        return (torch.sign(v) * level).long() + self.s, scale

    def dequantize(self, symbols: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return (symbols - self.s).float() * (table / self.s)  # (M, n) * (M, 1)


@dataclass(frozen=True)
class UniformQuantizer(_Grid):
    """Deterministic rounding to 2^bits - 1 evenly spaced levels spanning [-max|v|, max|v|] (zero included)."""

    bits: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "bits", V.integer("bits", self.bits, 2, 16))

    @property
    def s(self) -> int:
        return 2 ** (self.bits - 1) - 1

    def scale(self, v: torch.Tensor) -> torch.Tensor:
        return v.abs().amax(dim=1, keepdim=True) if v.shape[1] else v.new_zeros(v.shape[0], 1)

    def round(self, r: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return torch.round(r)


@dataclass(frozen=True)
class QSGD(_Grid):
    """Unbiased stochastic rounding of |v_i| / ||v||_2 to `levels` levels, times sign(v_i): QSGD's Q_s(v)."""

    levels: int = 4
    stochastic = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "levels", V.integer("levels", self.levels, 1, 2**15 - 1))

    @property
    def s(self) -> int:
        return self.levels

    def scale(self, v: torch.Tensor) -> torch.Tensor:
        norm = torch.linalg.vector_norm(v, dim=1, keepdim=True)  # (M, 1)
        if not torch.isfinite(norm).all():  # squares of entries near float32's limit overflow: sum in float64
            norm = torch.linalg.vector_norm(v.double(), dim=1, keepdim=True)
            if not torch.isfinite(norm.float()).all():
                raise ValueError(f"QSGD needs each row's norm within float32's range, got {norm.max().item():.3g}")
            norm = norm.float()
        return norm

    def round(self, r: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        # level l + 1 with probability r - l, else l: E[level] = r   (QSGD, xi_i(v, s))
        u = torch.rand(r.shape, generator=generator, device=r.device, dtype=r.dtype)
        return torch.floor(r) + (u < r - torch.floor(r)).to(r.dtype)


def nearest(v: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """(M, n) index of each value's nearest centroid (M, k); of equally near ones, the smaller centroid wins.

    In one dimension a value's nearest centroid is the sorted centroid whose rank is the number of midpoints
    between consecutive sorted centroids that lie below the value."""
    order = centroids.argsort(dim=1, stable=True)  # (M, k)
    ordered = centroids.gather(1, order)
    midpoints = (ordered[:, 1:] + ordered[:, :-1]) / 2  # (M, k - 1)
    rank = torch.zeros_like(v, dtype=torch.long)  # (M, n) midpoints below each value
    for j in range(midpoints.shape[1]):
        rank += v > midpoints[:, j:j + 1]
    return order.gather(1, rank)


@dataclass(frozen=True)
class KMeans(Quantizer):
    """Lloyd's k-means over a layer's values; each value becomes its centroid (the codebook is sent).

    Centroids start evenly spaced over [min, max] (FEDZIP's initialisation) and take `iterations` Lloyd
    steps. With `pin_zero`, centroid 0 stays at exactly 0, so entries a sparsifier dropped stay dropped.
    A row with no more distinct values than free centroids uses them as its codebook: lossless."""

    clusters: int = 3
    iterations: int = 4
    pin_zero: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "clusters", V.integer("clusters", self.clusters, 2, 256))
        object.__setattr__(self, "iterations", V.integer("iterations", self.iterations, 0))

    @property
    def zero(self) -> int | None:
        return 0 if self.pin_zero else None

    @property
    def alphabet(self) -> int:
        return self.clusters

    @property
    def table_size(self) -> int:
        return self.clusters

    def _initial(self, v: torch.Tensor, free: int) -> torch.Tensor:
        """(M, free) starting centroids: the distinct values when few enough, else evenly spaced over [min, max]."""
        lo, hi = v.amin(1, keepdim=True), v.amax(1, keepdim=True)
        spaced = lo + (hi - lo) * torch.linspace(0, 1, free, device=v.device)  # (M, free)
        distinct = [lo]
        for _ in range(free):  # the next larger value, free + 1 of them (inf once a row has no more)
            distinct.append(torch.where(v > distinct[-1], v, torch.inf).amin(1, keepdim=True))
        few = torch.isinf(distinct[-1])  # (M, 1) rows with at most `free` distinct values: use them as they are
        exact = torch.cat(distinct[:-1], dim=1)  # (M, free)
        return torch.where(few, torch.where(torch.isinf(exact), hi, exact), spaced)

    def quantize(self, v: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        pinned = int(self.pin_zero)
        # with a pinned zero, the free centroids start from the non-zero values (zeros stand in as the row's max)
        nonzero = v if not self.pin_zero else torch.where(v == 0, v.amax(1, keepdim=True), v)
        c = self._initial(nonzero, self.clusters - pinned)  # (M, k - pinned) free centroids
        if self.pin_zero:
            c = torch.cat([torch.zeros_like(c[:, :1]), c], dim=1)  # (M, k)
        free = torch.arange(self.clusters, device=v.device) >= pinned  # (k,)
        for _ in range(self.iterations):  # Lloyd: assign to the nearest centroid, move centroids to their means
            symbols = nearest(v, c)  # (M, n)
            sums = torch.zeros_like(c).scatter_add_(1, symbols, v)  # (M, k)
            counts = torch.zeros_like(c).scatter_add_(1, symbols, torch.ones_like(v))
            c = torch.where(free & (counts > 0), sums / counts.clamp(min=1), c)
        return nearest(v, c), c

    def dequantize(self, symbols: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        return table.gather(1, symbols)  # (M, n): each entry's centroid
