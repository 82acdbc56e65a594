"""Partitioners: split a centralized dataset into federated clients, as sorted index arrays, one per client.

Every partitioner is a pure function of the labels and an explicit `seed`; it returns `list[np.ndarray]`
(one sorted int64 index array per client) and assigns every sample to exactly one client unless its
docstring says otherwise. Labels may be a NumPy array or a torch tensor of any hashable class ids.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .. import validation as V


def _as_labels(labels: np.ndarray | torch.Tensor) -> np.ndarray:
    """Labels as a 1-D NumPy array (torch tensors are moved to the CPU first)."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu()
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D (one label per sample), got shape {labels.shape}")
    return labels


def _class_ids(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0..C-1 in sorted order of the classes present."""
    try:
        return np.unique(labels, return_inverse=True)[1].reshape(-1)
    except TypeError as err:  # e.g. object labels mixing str and float
        raise TypeError(f"labels must be mutually comparable class ids (all numbers or all strings): {err}") from err


def _check_n_clients(n_clients: int, n_samples: int) -> int:
    """Every client must be able to hold at least one sample."""
    if n_samples == 0:
        raise ValueError("labels must hold at least one sample, got an empty array")
    return V.integer("n_clients", n_clients, 1, n_samples)


def _check_alpha(alpha: float) -> float:
    """Dirichlet concentration: positive and finite (alpha = inf would be an exact even split, not a draw)."""
    return V.positive("alpha", alpha)


def _rng(seed: int | np.random.Generator) -> np.random.Generator:
    """The partitioner's generator: from a seed (int >= 0), or the Generator given."""
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(V.seed(seed))


def _even_sizes(total: int, parts: int) -> np.ndarray:
    """`total` split into `parts` sizes that differ by at most one."""
    return total // parts + (np.arange(parts) < total % parts)


def _apportion(total: int, weights: np.ndarray) -> np.ndarray:
    """`total` split into integers proportional to `weights` (largest-remainder rounding)."""
    exact = total * weights / weights.sum()
    counts = np.floor(exact).astype(np.int64)
    counts[np.argsort(counts - exact, kind="stable")[: total - counts.sum()]] += 1
    return counts


def _group(owner: np.ndarray, n_clients: int) -> list[np.ndarray]:
    """Sample indices grouped by owning client, each sorted; owner -1 means the sample is left out."""
    order = np.argsort(owner, kind="stable")  # by client, then by index
    bounds = np.searchsorted(owner[order], np.arange(n_clients + 1))
    return [order[lo:hi].astype(np.int64) for lo, hi in zip(bounds[:-1], bounds[1:])]


def _scatter(sizes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Owner of each sample when client k draws sizes[k] samples uniformly at random."""
    return rng.permutation(np.repeat(np.arange(len(sizes)), sizes))


def _deal(classes: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Owner of each sample: client k gets counts[c, k] random samples of class c; the rest get owner -1."""
    n_classes, n_clients = counts.shape
    order = rng.permutation(len(classes))
    order = order[np.argsort(classes[order], kind="stable")]  # grouped by class, shuffled within
    left_out = np.bincount(classes, minlength=n_classes) - counts.sum(1)
    blocks = np.column_stack([counts, left_out]).ravel()  # (C * (K + 1),) in class-major order
    owner = np.empty(len(classes), dtype=np.int64)
    owner[order] = np.repeat(np.tile(np.append(np.arange(n_clients), -1), n_classes), blocks)
    return owner


def iid(labels: np.ndarray | torch.Tensor, n_clients: int, *, seed: int = 0) -> list[np.ndarray]:
    """Uniformly random split into clients whose sizes differ by at most one: the IID baseline.

    Paper: McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data",
    AISTATS 2017, https://arxiv.org/abs/1602.05629 (the IID setting of Sec. 3).

    Examples:
        >>> parts = iid(np.arange(10) % 2, n_clients=3, seed=0)
        >>> [len(p) for p in parts]
        [4, 3, 3]
    """
    n = len(_as_labels(labels))
    n_clients = _check_n_clients(n_clients, n)
    return _group(_scatter(_even_sizes(n, n_clients), _rng(seed)), n_clients)


def _top_up(counts: np.ndarray, min_size: int) -> np.ndarray:
    """Move single-class blocks from the largest clients to clients below `min_size` (columns are clients)."""
    counts = counts.copy()
    sizes = counts.sum(0)
    for k in np.flatnonzero(sizes < min_size):
        while sizes[k] < min_size:
            donor = np.argmax(sizes)  # holds more than min_size while any client holds less
            c = np.argmax(counts[:, donor])  # its most frequent class
            moved = min(min_size - sizes[k], sizes[donor] - min_size, counts[c, donor])
            counts[c, donor] -= moved
            counts[c, k] += moved
            sizes[donor] -= moved
            sizes[k] += moved
    return counts


def dirichlet(
    labels: np.ndarray | torch.Tensor,
    n_clients: int,
    alpha: float,
    *,
    min_size: int | None = None,
    max_redraws: int = 100,
    top_up: bool = True,
    seed: int = 0,
) -> list[np.ndarray]:
    """Label skew: each class is spread over the clients with proportions drawn from Dir(alpha).

    Small `alpha` (0.1) gives each client few classes, large `alpha` (100) is close to IID. The class
    proportions are redrawn until every client holds at least `min_size` samples (default
    min(10, n // n_clients)), at most `max_redraws` times. If no draw succeeds, `top_up=True` keeps the
    last draw and moves single-class blocks of samples from the largest clients to the clients below
    `min_size` (deterministic given the draw, so still seeded); `top_up=False` raises ValueError instead.
    A ValueError is raised at once when `min_size * n_clients` exceeds the number of samples.

    Papers: Yurochkin et al., "Bayesian Nonparametric Federated Learning of Neural Networks", ICML 2019,
    https://arxiv.org/abs/1905.12022; Hsu, Qi and Brown, "Measuring the Effects of Non-Identical Data
    Distribution for Federated Visual Classification", 2019, https://arxiv.org/abs/1909.06335.

    Examples:
        >>> y = np.repeat(np.arange(4), 50)
        >>> parts = dirichlet(y, n_clients=5, alpha=0.5, seed=0)
        >>> len(parts), sum(len(p) for p in parts), min(len(p) for p in parts) >= 10
        (5, 200, True)
    """
    classes = _class_ids(_as_labels(labels))
    n = len(classes)
    n_clients = _check_n_clients(n_clients, n)
    alpha = _check_alpha(alpha)
    min_size = min(10, n // n_clients) if min_size is None else V.integer("min_size", min_size)
    if not 0 <= min_size <= n // n_clients:
        raise ValueError(
            f"min_size must be in [0, {n // n_clients}] (n_samples // n_clients = {n} // {n_clients}), "
            f"got {min_size}: {n_clients} clients cannot each hold {min_size} of {n} samples"
        )
    max_redraws = V.integer("max_redraws", max_redraws, 0, 10_000)  # a bound, so nothing runs for hours
    rng = _rng(seed)
    class_sizes = np.bincount(classes)
    for _ in range(max_redraws + 1):
        proportions = rng.dirichlet(np.full(n_clients, float(alpha)), size=len(class_sizes))  # (C, K)
        counts = rng.multinomial(class_sizes, proportions)  # (C, K)
        if counts.sum(0).min() >= min_size:
            break
    else:
        if not top_up:
            raise ValueError(
                f"min_size={min_size} is unattainable for alpha={alpha} and n_clients={n_clients}: no Dirichlet "
                f"draw in {max_redraws + 1} gave every client {min_size} samples; lower min_size, raise alpha, "
                f"use fewer clients, or pass top_up=True"
            )
        counts = _top_up(counts, min_size)
    return _group(_deal(classes, counts, rng), n_clients)


def _class_sets(n_clients: int, classes_per_client: int, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """(classes, clients) bool: random class sets of equal size that together cover every class when they can."""
    keys = rng.random((n_clients, n_classes))
    slots = np.arange(min(n_classes, n_clients * classes_per_client))  # one slot per class to cover
    forced_client = rng.permutation(n_clients)[slots // classes_per_client]
    keys[forced_client, rng.permutation(n_classes)[: len(slots)]] = -1.0  # forced classes sort first
    chosen = np.argsort(keys, axis=1)[:, :classes_per_client]  # (K, classes_per_client)
    holds = np.zeros((n_classes, n_clients), dtype=bool)
    holds[chosen, np.arange(n_clients)[:, None]] = True
    return holds


def _even_split(class_sizes: np.ndarray, holds: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(classes, clients) counts: each class split evenly among its holders, remainders to random holders."""
    base, extra = np.divmod(class_sizes, np.maximum(holds.sum(1), 1))
    rank = np.argsort(np.argsort(np.where(holds, rng.random(holds.shape), np.inf), axis=1), axis=1)
    return holds * (base[:, None] + (rank < extra[:, None]))


def pathological(
    labels: np.ndarray | torch.Tensor, n_clients: int, classes_per_client: int, *, seed: int = 0
) -> list[np.ndarray]:
    """Each client holds exactly `classes_per_client` classes ("#C=k"); a class is split evenly among its holders.

    Class sets are random, but chosen so that every class has a holder whenever
    `n_clients * classes_per_client >= n_classes`. Otherwise the samples of classes that no client holds
    are left out (the only case where not every sample is assigned). A client sees all its classes as
    long as every class has at least as many samples as clients holding it.

    Papers: McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data",
    AISTATS 2017, https://arxiv.org/abs/1602.05629; Li et al., "Federated Learning on Non-IID Data Silos:
    An Experimental Study", ICDE 2022, https://arxiv.org/abs/2102.02079 (the "#C=k" label skew).

    Examples:
        >>> y = np.repeat(np.arange(5), 20)
        >>> parts = pathological(y, n_clients=4, classes_per_client=2, seed=0)
        >>> [len(np.unique(y[p])) for p in parts]
        [2, 2, 2, 2]
    """
    classes = _class_ids(_as_labels(labels))
    n_clients = _check_n_clients(n_clients, len(classes))
    class_sizes = np.bincount(classes)
    classes_per_client = V.integer("classes_per_client", classes_per_client, 1, len(class_sizes))  # at most C
    rng = _rng(seed)
    holds = _class_sets(n_clients, classes_per_client, len(class_sizes), rng)
    return _group(_deal(classes, _even_split(class_sizes, holds, rng), rng), n_clients)


def shards(
    labels: np.ndarray | torch.Tensor, n_clients: int, shards_per_client: int = 2, *, seed: int = 0
) -> list[np.ndarray]:
    """Sort by label, cut into `n_clients * shards_per_client` equal shards, deal each client random shards.

    With two shards per client most clients see one or two classes (a shard may straddle a class border).

    Paper: McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data",
    AISTATS 2017, https://arxiv.org/abs/1602.05629 (pathological non-IID MNIST, Sec. 3).

    Examples:
        >>> y = np.repeat(np.arange(10), 30)
        >>> parts = shards(y, n_clients=10, shards_per_client=2, seed=0)
        >>> max(len(np.unique(y[p])) for p in parts) <= 2
        True
    """
    classes = _class_ids(_as_labels(labels))
    n = len(classes)
    n_clients = _check_n_clients(n_clients, n)
    V.integer("shards_per_client", shards_per_client)
    if not 1 <= shards_per_client <= n // n_clients:
        raise ValueError(
            f"shards_per_client must be in [1, {n // n_clients}] (n_samples // n_clients, so no shard is empty), "
            f"got {shards_per_client}"
        )
    shards_per_client = int(shards_per_client)
    rng = _rng(seed)
    n_shards = n_clients * shards_per_client
    order = rng.permutation(n)
    order = order[np.argsort(classes[order], kind="stable")]  # sorted by label, shuffled within a label
    client_of_shard = rng.permutation(np.arange(n_shards) // shards_per_client)
    owner = np.empty(n, dtype=np.int64)
    owner[order] = np.repeat(client_of_shard, _even_sizes(n, n_shards))
    return _group(owner, n_clients)


def quantity_skew(
    labels: np.ndarray | torch.Tensor,
    n_clients: int,
    *,
    distribution: str = "lognormal",
    sigma: float = 1.0,
    exponent: float = 1.5,
    min_size: int = 1,
    seed: int = 0,
) -> list[np.ndarray]:
    """Unequal client sizes, labels IID within each client: only the amount of data differs.

    Sizes are proportional to draws from a log-normal LN(0, sigma^2) (larger `sigma`, more spread) or a
    Pareto power law with tail index `exponent` (smaller `exponent`, heavier tail), after giving every
    client `min_size` samples. Only the length of `labels` matters.

    Papers: log-normal sizes as in Zeng et al., "FedLab: A Flexible Federated Learning Framework", 2021,
    https://arxiv.org/abs/2107.11621; power-law sizes as in Li et al., "Federated Optimization in
    Heterogeneous Networks" (FedProx), MLSys 2020, https://arxiv.org/abs/1812.06127.

    Examples:
        >>> parts = quantity_skew(np.zeros(1000), n_clients=5, sigma=1.0, seed=0)
        >>> sum(len(p) for p in parts), min(len(p) for p in parts) >= 1
        (1000, True)
    """
    n = len(_as_labels(labels))
    n_clients = _check_n_clients(n_clients, n)
    min_size = V.integer("min_size", min_size, 0, n // n_clients)  # at most n_samples // n_clients
    # beyond ~50 one client takes every sample, and 1e308 would overflow; abs: numpy refuses a scale of -0.0
    sigma = abs(V.in_range("sigma", sigma, 0.0, 1e3))
    exponent = V.in_range("exponent", exponent, 1e-3, math.inf)  # below 1e-3 one client takes every sample anyway
    rng = _rng(seed)
    # log-weights, so heavy tails cannot overflow: log LN(0, sigma^2) = N(0, sigma^2), log(Pareto + 1) = Exp(1) / a
    log_draws = {
        "lognormal": lambda: rng.normal(0.0, sigma, n_clients),
        "powerlaw": lambda: rng.standard_exponential(n_clients) / exponent,
    }
    V.choice("distribution", distribution, sorted(log_draws))
    log_weights = log_draws[distribution]()
    sizes = min_size + _apportion(n - min_size * n_clients, np.exp(log_weights - log_weights.max()))
    return _group(_scatter(sizes, rng), n_clients)


def _fill(size: int, mix: np.ndarray, available: np.ndarray) -> np.ndarray:
    """Per-class counts for one client of `size` samples, following `mix` over the classes still available."""
    take = np.zeros_like(available)
    while take.sum() < size:  # each pass fills the client or empties at least one class
        left = available - take
        weights = np.where(left > 0, mix, 0.0)
        if weights.sum() == 0:  # the client's own classes ran dry: take whatever is left
            weights = (left > 0).astype(float)
        take += np.minimum(_apportion(size - take.sum(), weights), left)
    return take


def inner_dirichlet(
    labels: np.ndarray | torch.Tensor, sizes: np.ndarray | list[int], alpha: float, *, seed: int = 0
) -> list[np.ndarray]:
    """Given client sizes, each client's class mix is drawn from Dir(alpha) and filled from the class pools.

    Clients are filled one at a time in random order, without replacement. When a class runs dry its share
    of the client's mix is renormalized over the classes that still have samples, so late clients may
    deviate from their drawn mix; it always terminates because `sizes` sums to the number of samples.

    Paper: Acar et al., "Federated Learning Based on Dynamic Regularization" (FedDyn), ICLR 2021,
    https://arxiv.org/abs/2111.04263.

    Examples:
        >>> y = np.repeat(np.arange(3), 40)
        >>> parts = inner_dirichlet(y, sizes=[60, 40, 20], alpha=0.5, seed=0)
        >>> [len(p) for p in parts]
        [60, 40, 20]
    """
    classes = _class_ids(_as_labels(labels))
    n = len(classes)
    given = np.asarray(sizes)
    if given.dtype.kind not in "iu" and not (given.dtype.kind == "f" and np.isfinite(given).all()
                                             and (given == np.round(given)).all()):
        raise ValueError(f"sizes must be whole numbers of samples, got {sizes!r}")
    sizes = given.astype(np.int64)
    if sizes.ndim != 1 or len(sizes) == 0 or sizes.min() < 0 or sizes.sum() != n:
        raise ValueError(
            f"sizes must be a non-empty 1-D list of sizes >= 0 summing to {n} (the number of samples), "
            f"got {len(sizes.reshape(-1))} sizes summing to {sizes.sum()}"
        )
    alpha = _check_alpha(alpha)
    rng = _rng(seed)
    remaining = np.bincount(classes)
    mixes = rng.dirichlet(np.full(len(remaining), float(alpha)), size=len(sizes))  # (K, C)
    counts = np.zeros((len(remaining), len(sizes)), dtype=np.int64)  # (C, K)
    for k in rng.permutation(len(sizes)):
        counts[:, k] = _fill(sizes[k], mixes[k], remaining)
        remaining -= counts[:, k]
    return _group(_deal(classes, counts, rng), len(sizes))


def _noise_shift(x: torch.Tensor, gen: torch.Generator) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """Shift of level s: add Gaussian noise N(0, s^2) to every feature."""
    return lambda xs, s: xs + s * torch.randn(xs.shape, generator=gen, dtype=xs.dtype).to(xs.device)


def _rotate_images(xs: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate images (..., H, W) counterclockwise about their centre by `degrees`, zero padding outside."""
    h, w = xs.shape[-2:]
    t = math.radians(degrees)
    theta = torch.tensor([[[math.cos(t), -math.sin(t), 0.0], [math.sin(t), math.cos(t), 0.0]]], dtype=xs.dtype)
    flat = xs.reshape(len(xs), -1, h, w)  # (m, channels, H, W)
    grid = F.affine_grid(theta.to(xs.device), [1, flat.shape[1], h, w], align_corners=False)  # (1, H, W, 2)
    return F.grid_sample(flat, grid.expand(len(xs), -1, -1, -1), align_corners=False).reshape(xs.shape)


def _rotation_shift(x: torch.Tensor, gen: torch.Generator) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """Shift of level s: rotate by s degrees, images in their plane, vectors by one fixed random rotation."""
    if x.ndim >= 3:
        return _rotate_images
    g = torch.randn(x.shape[1], x.shape[1], generator=gen, dtype=torch.float64)
    skew = g - g.T  # generator of rotations; scaled so its largest plane turns by exactly s degrees
    skew = (skew / torch.linalg.matrix_norm(skew, ord=2).clamp_min(1e-12)).to(x)
    return lambda xs, s: xs @ torch.linalg.matrix_exp(math.radians(s) * skew).T


_SHIFTS = {"noise": _noise_shift, "rotation": _rotation_shift}


def feature_skew(
    x: torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    n_clients: int,
    *,
    kind: str = "noise",
    strength: float = 1.0,
    seed: int = 0,
) -> tuple[list[np.ndarray], torch.Tensor]:
    """Covariate shift: an IID split, then client k's inputs get a transform of level strength * k / (K - 1).

    `kind="noise"` adds Gaussian noise of that standard deviation (client 0 is clean, the last client gets
    std `strength`). `kind="rotation"` rotates by that many degrees: inputs with 3+ dims are images,
    rotated counterclockwise in their last two (H, W) dims; flat vectors (n, d) are turned by one random
    rotation exp(t A) shared by all clients, A scaled so that its largest rotation plane turns by t.
    Returns the client indices and a new tensor shaped like `x` (same dtype and device); `x` is unchanged.

    Papers: Li et al., "Federated Learning on Non-IID Data Silos: An Experimental Study", ICDE 2022,
    https://arxiv.org/abs/2102.02079 (noise-based feature imbalance); Ghosh et al., "An Efficient
    Framework for Clustered Federated Learning", NeurIPS 2020, https://arxiv.org/abs/2006.04088 (rotated inputs).

    Examples:
        >>> x = torch.zeros(6, 3)
        >>> parts, x_shift = feature_skew(x, np.zeros(6), n_clients=2, kind="noise", strength=1.0, seed=0)
        >>> bool(x_shift[parts[0]].eq(0).all()), bool(x_shift[parts[1]].ne(0).any())
        (True, True)
    """
    V.choice("kind", kind, sorted(_SHIFTS))
    strength = V.non_negative("strength", strength)
    x = torch.as_tensor(x)
    if x.ndim < 2 or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor of shape (n, ...features), got {x.dtype} {tuple(x.shape)}")
    rng = _rng(seed)
    parts = iid(labels, n_clients, seed=rng)
    if len(x) != sum(len(p) for p in parts):
        raise ValueError(f"x must have one row per label ({sum(len(p) for p in parts)}), got {len(x)}")
    torch_seed = seed if not isinstance(seed, np.random.Generator) else int(rng.integers(2**63 - 1))
    shift = _SHIFTS[kind](x, torch.Generator().manual_seed(torch_seed))
    shifted = x.clone()
    for k, idx in enumerate(parts):
        rows = torch.as_tensor(idx, device=x.device)
        shifted[rows] = shift(x[rows], strength * k / max(n_clients - 1, 1))
    if not torch.isfinite(shifted).all():
        raise ValueError(f"strength={strength:g} overflows the inputs' {x.dtype} range; use a smaller strength")
    return parts, shifted


PARTITIONERS: dict[str, Callable[..., list[np.ndarray]]] = {
    "iid": iid,
    "dirichlet": dirichlet,
    "pathological": pathological,
    "shards": shards,
    "quantity_skew": quantity_skew,
}
"""Partitioners callable as f(labels, n_clients, seed=..., **params). `inner_dirichlet` (takes client sizes)
and `feature_skew` (also returns shifted inputs) do not fit that signature and are called directly."""


def partition(
    name: str, labels: np.ndarray | torch.Tensor, n_clients: int, *, seed: int = 0, **params: object
) -> list[np.ndarray]:
    """Partition by name from `PARTITIONERS`, e.g. partition("dirichlet", y, 10, alpha=0.3): for widgets and configs."""
    V.choice("name", name, sorted(PARTITIONERS))
    return PARTITIONERS[name](labels, n_clients, seed=seed, **params)
