"""Who takes part in a round. Each model is a small object with `sample(round, n_clients, rng) -> ids`.

Besides sampling, a model tells an aggregation rule how likely each client is to take part:
`probabilities(n_clients)[k]` is P(k in S_t), the p_k that unbiased rules such as FedVARP and FedStale
divide by.

- `Uniform`: a fixed number of clients drawn uniformly without replacement (McMahan et al.'s C-fraction).
- `Bernoulli`: client k takes part independently with its own probability p_k (heterogeneous
  participation, as in FedVARP and FedStale). `two_groups` builds frequent and rare halves;
  `data_correlated` ties p_k to a per-client score of the data, e.g. the share of one class.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from . import validation as V

MAX_CLIENTS = 10**6  # clients a model samples from: its (N,) arrays stay a few MB
MAX_COIN_FLIPS = 10**8  # random numbers one Bernoulli round may draw over all its redraws (about a second)


def _n_clients(n_clients: int) -> int:
    """The federation size a model samples from, checked: an integer in [1, MAX_CLIENTS]."""
    return V.integer("n_clients", n_clients, 1, MAX_CLIENTS)


class Participation(Protocol):
    """A participation model: which clients report in round `round` (sorted ids), and how likely each is to."""

    def sample(self, round: int, n_clients: int, rng: np.random.Generator) -> np.ndarray: ...

    def probabilities(self, n_clients: int) -> np.ndarray: ...


@dataclass(frozen=True)
class Uniform:
    """A fixed number of clients drawn uniformly without replacement each round (McMahan et al.'s C-fraction).

    `count` (the Federation's clients_per_round) and the federation size are at most MAX_CLIENTS = 10**6."""

    fraction: float | None = 1.0
    count: int | None = None

    def __post_init__(self) -> None:
        if self.count is not None:
            object.__setattr__(self, "count", V.integer("count", self.count, 1, MAX_CLIENTS))
        elif self.fraction is None:
            raise ValueError("give a participation fraction in (0, 1] or a count, got neither")
        else:
            object.__setattr__(self, "fraction", V.probability("participation fraction", self.fraction, zero=False))

    def cohort_size(self, n_clients: int) -> int:
        """Clients per round among `n_clients`: the count (at most n_clients), else the fraction's share (>= 1)."""
        n_clients = _n_clients(n_clients)
        if self.count is not None:
            if self.count > n_clients:
                raise ValueError(f"Uniform: count must be <= n_clients={n_clients} (clients per round), got {self.count}")
            return self.count
        return max(1, round(self.fraction * n_clients))

    def sample(self, round: int, n_clients: int, rng: np.random.Generator) -> np.ndarray:
        m = self.cohort_size(n_clients)
        n_clients = int(n_clients)
        if m == n_clients:
            return np.arange(n_clients)
        return np.sort(rng.choice(n_clients, size=m, replace=False))

    def probabilities(self, n_clients: int) -> np.ndarray:
        """P(client k takes part in a round) = m / N for every client, shape (N,)."""
        return np.full(int(n_clients), self.cohort_size(n_clients) / n_clients)


@dataclass(frozen=True)
class Bernoulli:
    """Client k takes part in each round independently with probability p[k]: heterogeneous participation.

    A round needs at least one client, so a draw in which nobody reports is drawn again. The sample is
    then conditioned on being non-empty and client k takes part with probability
    p_k / (1 - prod_j (1 - p_j)), which `probabilities` returns; the factor is exactly 1 when some p_j = 1
    and negligible unless every p_j is small (24 clients at p = 0.1: 1.08; at p = 0.5: 1 + 6e-8).

    Papers: Jhunjhunwala et al., "FedVARP", UAI 2022, https://arxiv.org/abs/2207.14130; Rodio & Neglia,
    "FedStale", 2024, https://arxiv.org/abs/2405.04171 (independent per-client participation).

    Bounds, so that a round takes bounded time and memory: at most MAX_CLIENTS = 10**6 clients, and at most
    min(max_redraws, MAX_COIN_FLIPS // N) draws per round (MAX_COIN_FLIPS = 10**8 random numbers in all).
    """

    p: tuple[float, ...]
    max_redraws: int = 10_000  # empty draws tolerated in a row before giving up (a bound, so nothing hangs)

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_redraws", V.integer("max_redraws", self.max_redraws, 1))
        try:
            p = np.asarray(self.p, dtype=float)
        except (TypeError, ValueError) as err:
            raise TypeError(f"p must be a sequence of probabilities, got {self.p!r}") from err
        if p.ndim != 1 or len(p) == 0 or len(p) > MAX_CLIENTS:
            raise ValueError(f"p must be a non-empty 1-D sequence of at most {MAX_CLIENTS} probabilities, got shape "
                             f"{p.shape}")
        if not ((p > 0) & (p <= 1)).all():
            raise ValueError(f"p must lie in (0, 1] for every client, got min {p.min()} and max {p.max()}")
        object.__setattr__(self, "p", tuple(p.tolist()))

    def _check(self, n_clients: int) -> np.ndarray:
        """p as an array, after checking it has one entry per client."""
        n_clients = _n_clients(n_clients)
        if n_clients != len(self.p):
            raise ValueError(f"n_clients must equal len(p) = {len(self.p)}, got {n_clients}")
        return np.asarray(self.p)

    def sample(self, round: int, n_clients: int, rng: np.random.Generator) -> np.ndarray:
        """Each client flips its own coin; an empty round is drawn again (at most MAX_COIN_FLIPS coins in all)."""
        p = self._check(n_clients)
        draws = min(self.max_redraws, max(1, MAX_COIN_FLIPS // len(p)))
        for _ in range(draws):
            ids = np.flatnonzero(rng.random(len(p)) < p)  # sorted
            if len(ids):
                return ids
        raise ValueError(f"no client took part in {draws} draws: with p in [{p.min():.3g}, {p.max():.3g}] "
                         f"a round is empty with probability {np.exp(np.log1p(-p).sum()):.6g}; raise p")

    def probabilities(self, n_clients: int) -> np.ndarray:
        """P(client k takes part in a round), empty rounds excluded: p_k / (1 - prod_j (1 - p_j)), shape (N,)."""
        p = self._check(n_clients)
        with np.errstate(divide="ignore"):  # log1p(-1) = -inf when some p_j = 1: the factor is then exactly 1
            return p / -np.expm1(np.log1p(-p).sum())  # 1 - prod(1 - p_j), without underflow for tiny p


def two_groups(n_clients: int, rate: float, gap: float) -> Bernoulli:
    """Frequent and rare clients: the first half takes part with probability rate + gap/2, the rest rate - gap/2.

    gap = 0 is homogeneous Bernoulli(rate) participation; FedStale's (1.0, 0.1) groups are rate 0.55, gap 0.9.
    n_clients is at most MAX_CLIENTS = 10**6."""
    n_clients = _n_clients(n_clients)
    rate = V.probability("rate", rate, zero=False)
    gap = V.finite("gap", gap)
    high, low = rate + gap / 2, rate - gap / 2
    if not (gap >= 0 and low > 0 and high <= 1 + 1e-12):  # the tolerance absorbs rounding, e.g. 0.55 + 0.9/2
        raise ValueError(f"gap must be >= 0, below 2 * rate = {2 * rate:.3g} and at most 2 * (1 - rate) = "
                         f"{2 * (1 - rate):.3g}, so that both groups' probabilities lie in (0, 1]; got {gap}")
    frequent = n_clients // 2
    return Bernoulli(tuple([min(high, 1.0)] * frequent + [low] * (n_clients - frequent)))


def data_correlated(score: Sequence[float] | np.ndarray, rate: float, strength: float) -> Bernoulli:
    """Availability tied to the data: p_k = rate * (1 - strength * score_k), for a score in [0, 1] per client.

    With score_k the share of some classes in client k's data (e.g. `flbook.devices.class_share`), the
    clients holding those classes report rarely, so their classes are under-represented in most rounds."""
    try:
        score = np.asarray(score, dtype=float)
    except (TypeError, ValueError) as err:
        raise TypeError(f"score must be a sequence of numbers in [0, 1], got {score!r}") from err
    if score.ndim != 1 or not 0 < len(score) <= MAX_CLIENTS or not ((score >= 0) & (score <= 1)).all():
        raise ValueError(f"score must be a non-empty 1-D sequence of at most {MAX_CLIENTS} values in [0, 1], got "
                         f"{score}")
    rate = V.probability("rate", rate, zero=False)
    strength = V.in_range("strength", strength, 0, 1, hi_inclusive=False)
    p = rate * (1 - strength * score)  # (N,)
    if not (p > 0).all():  # a subnormal rate times a factor below 1 rounds to 0
        raise ValueError(f"rate={rate:g} x (1 - strength x score) underflows to 0 for some client; use a larger rate")
    return Bernoulli(tuple(p))
