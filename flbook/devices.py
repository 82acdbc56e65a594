"""Device heterogeneity: how long each client takes for a local step and for a round trip over its link.

A `Devices` object holds, per client, the simulated time of one local SGD step and the link latency of
one job (model down, update up). A job of K local steps on client i takes K * step_time_i + latency_i.
Times are drawn from a named distribution and can be tied to the data ("intertwined" heterogeneity,
Wang & Gao 2023, https://arxiv.org/abs/2309.13536): rank them by a per-client score, e.g. the share of
one class, so that the clients holding that class are also the slow ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from . import validation as V

DISTRIBUTIONS = ("constant", "linear", "uniform", "lognormal")
MAX_CLIENTS = 10**6  # devices one draw makes: a few float64 arrays of this length, tens of MB


def _times(name: str, values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Per-client times as a float array; a TypeError naming `name` when they are not numbers."""
    try:
        return np.asarray(values, dtype=float)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be an array of numbers, one per client, got {values!r}") from err


@dataclass(frozen=True)
class Devices:
    """Per-client compute and communication speed, in simulated time units."""

    step_time: np.ndarray  # (N,) time of one local step
    latency: np.ndarray  # (N,) round-trip link time of one job

    def __post_init__(self) -> None:
        step, latency = _times("step_time", self.step_time), _times("latency", self.latency)
        if step.ndim != 1 or step.shape != latency.shape or len(step) == 0:
            raise ValueError(f"step_time and latency must be 1-D of one length >= 1, got {step.shape} and {latency.shape}")
        for name, times, ok, rule in (("step_time", step, step > 0, "> 0"), ("latency", latency, latency >= 0, ">= 0")):
            bad = ~(ok & np.isfinite(times))
            if bad.any():
                k = int(np.argmax(bad))
                raise ValueError(f"{name} must be finite and {rule} for every client, got {times[k]} for client {k} "
                                 f"({int(bad.sum())} such clients)")
        object.__setattr__(self, "step_time", step)
        object.__setattr__(self, "latency", latency)

    @property
    def n_clients(self) -> int:
        return len(self.step_time)

    def job_time(self, clients: np.ndarray | torch.Tensor, steps: np.ndarray | torch.Tensor | int) -> np.ndarray:
        """Simulated duration of each listed client's job of `steps` local steps: K * step_time + latency, (M,)."""
        ids = np.asarray(clients.cpu() if isinstance(clients, torch.Tensor) else clients, dtype=np.int64)
        k = np.asarray(steps.cpu() if isinstance(steps, torch.Tensor) else steps, dtype=float)
        with np.errstate(over="ignore"):
            times = k * self.step_time[ids] + self.latency[ids]
        if not np.isfinite(times).all():
            raise ValueError(f"job times overflow: steps x step_time + latency is not finite (step_time up to "
                             f"{self.step_time.max():.3g}, latency up to {self.latency.max():.3g}); use smaller times")
        return times

    def speed_spread(self, steps: int = 1) -> float:
        """Slowest over fastest job time for `steps` local steps: 1 means homogeneous devices."""
        times = self.job_time(np.arange(self.n_clients), steps)
        return float(times.max() / times.min())

    def slowed(self, clients: Sequence[int] | np.ndarray, extra_latency: float = 0.0, factor: float = 1.0) -> "Devices":
        """A copy in which `clients` compute `factor` times slower and wait `extra_latency` longer per job."""
        factor = V.positive("factor", factor)
        extra_latency = V.non_negative("extra_latency", extra_latency)
        ids = V.index_array("clients", np.asarray(list(clients) if isinstance(clients, range) else clients),
                            self.n_clients)
        step, latency = self.step_time.copy(), self.latency.copy()
        step[ids] *= factor
        latency[ids] += extra_latency
        return Devices(step, latency)

    def __repr__(self) -> str:
        return (f"Devices({self.n_clients} clients, step_time {self.step_time.min():.3g}-{self.step_time.max():.3g}, "
                f"latency {self.latency.min():.3g}-{self.latency.max():.3g})")


def _multipliers(distribution: str, n: int, spread: float, rng: np.random.Generator, name: str = "spread") -> np.ndarray:
    """n time multipliers, slowest first for 'linear': the shape of a device population."""
    spread = V.non_negative(name, spread)
    if distribution in ("linear", "uniform") and not spread < 1:
        raise ValueError(f"{name} must be in [0, 1) for the {distribution!r} distribution, got {spread}")
    draws: dict[str, Callable[[], np.ndarray]] = {
        "constant": lambda: np.ones(n),
        "linear": lambda: 1 - spread * np.arange(n) / max(n - 1, 1),  # Fraboni et al.'s F-X: 1 ... 1 - X/100
        "uniform": lambda: rng.uniform(1 - spread, 1, n),
        "lognormal": lambda: np.exp(spread * rng.standard_normal(n)),  # median 1, sigma = spread
    }
    if distribution not in draws:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    with np.errstate(over="ignore", under="ignore"):
        multipliers = draws[distribution]()
    if not (np.isfinite(multipliers).all() and (multipliers > 0).all()):  # exp(spread * z) over- or underflows
        raise ValueError(f"{name}={spread:g} makes the {distribution!r} time multipliers overflow or underflow "
                         f"(range [{multipliers.min():.3g}, {multipliers.max():.3g}]); use a {name} below about 20")
    return multipliers


def _ranks(score: np.ndarray, correlation: float, rng: np.random.Generator) -> np.ndarray:
    """Each client's rank (0 = lowest) in a noisy copy of `score` whose rank correlation with it is ~`correlation`."""
    z = (score - score.mean()) / (score.std() or 1.0)
    z = correlation * z + np.sqrt(1 - correlation**2) * rng.standard_normal(len(score))  # Gaussian copula
    ranks = np.empty(len(score), dtype=np.int64)
    ranks[np.argsort(z, kind="stable")] = np.arange(len(score))
    return ranks


def draw(n_clients: int, distribution: str = "lognormal", spread: float = 0.5, *, step_time: float = 1.0,
         latency: float = 0.0, latency_distribution: str = "constant", latency_spread: float = 0.0,
         score: Sequence[float] | np.ndarray | None = None, correlation: float = 0.0, seed: int = 0) -> Devices:
    """Draw per-client step times and latencies; optionally make them grow with a per-client `score`.

    distribution / latency_distribution: 'constant'; 'linear' (evenly spaced from 1 down to 1 - spread,
    client 0 slowest: Fraboni et al.'s "F-X" with spread = X/100); 'uniform' on [1 - spread, 1];
    'lognormal' exp(spread * N(0, 1)). Multipliers scale `step_time` and `latency`.
    score, correlation: with a score per client (e.g. `class_share(...)`), the slow draws go to
    high-score clients, with rank correlation about `correlation` in [-1, 1] (1: exactly by score).
    n_clients is at most MAX_CLIENTS = 10**6, so memory stays bounded."""
    n_clients = V.integer("n_clients", n_clients, 1, MAX_CLIENTS)
    correlation = V.in_range("correlation", correlation, -1, 1)
    step_time, latency = V.positive("step_time", step_time), V.non_negative("latency", latency)
    V.choice("distribution", distribution, DISTRIBUTIONS)
    V.choice("latency_distribution", latency_distribution, DISTRIBUTIONS)
    V.non_negative("spread", spread)
    V.non_negative("latency_spread", latency_spread)
    rng = np.random.default_rng(V.seed(seed))
    steps = step_time * _multipliers(distribution, n_clients, spread, rng)
    links = latency * _multipliers(latency_distribution, n_clients, latency_spread, rng, "latency_spread")
    if score is not None:
        score = _times("score", score)
        if score.shape != (n_clients,):
            raise ValueError(f"score must have one value per client, shape ({n_clients},), got {score.shape}")
        V.finite_values("score", score)
        # one shared ordering: a device that computes slowly also sits behind the slower link
        ranks = _ranks(score, correlation, rng)
        steps, links = np.sort(steps)[ranks], np.sort(links)[ranks]
    return Devices(steps, links)


def linear(n_clients: int, spread: float, step_time: float = 1.0, latency: float = 0.0) -> Devices:
    """Fraboni et al.'s scenario F-X, spread = X/100: step times from `step_time` (client 0) to (1 - spread) x that.

    n_clients is at most MAX_CLIENTS = 10**6, as in `draw`."""
    return draw(n_clients, "linear", spread, step_time=step_time, latency=latency)


def class_share(partition: Sequence[np.ndarray], labels: np.ndarray | torch.Tensor, cls: int) -> np.ndarray:
    """Share of class `cls` in each client's data, (N,): a score to tie device speed to the data."""
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    return np.array([float(np.mean(labels[np.asarray(p)] == cls)) for p in partition])
