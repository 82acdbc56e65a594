"""Who takes part in a round. Each model is a small object with `sample(round, n_clients, rng) -> ids`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


class Participation(Protocol):
    """A participation model: which clients report in round `round` (sorted ids)."""

    def sample(self, round: int, n_clients: int, rng: np.random.Generator) -> np.ndarray: ...


@dataclass(frozen=True)
class Uniform:
    """A fixed number of clients drawn uniformly without replacement each round (McMahan et al.'s C-fraction)."""

    fraction: float | None = 1.0
    count: int | None = None

    def __post_init__(self) -> None:
        if self.count is not None:
            if self.count < 1:
                raise ValueError(f"clients_per_round must be >= 1, got {self.count}")
        elif self.fraction is None or not 0 < self.fraction <= 1:
            raise ValueError(f"participation fraction must be in (0, 1], got {self.fraction}")

    def cohort_size(self, n_clients: int) -> int:
        if self.count is not None:
            if self.count > n_clients:
                raise ValueError(f"clients_per_round must be <= n_clients={n_clients}, got {self.count}")
            return self.count
        return max(1, round(self.fraction * n_clients))

    def sample(self, round: int, n_clients: int, rng: np.random.Generator) -> np.ndarray:
        m = self.cohort_size(n_clients)
        if m == n_clients:
            return np.arange(n_clients)
        return np.sort(rng.choice(n_clients, size=m, replace=False))
