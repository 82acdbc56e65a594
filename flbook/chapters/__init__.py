"""Code of one notebook each: its defaults, controls, `run(values) -> history` and `figure(history)`.

A chapter module may import anything in the package, but no other chapter, and nothing imports a chapter
except its notebook and its tests. Chapters with no code of their own (00, 01, 02, 10) have no module.
"""
from __future__ import annotations

from typing import Callable, Sequence

import pandas as pd


def grid_search(score: Callable[[float], float], grid: Sequence[float], max_extensions: int = 2) -> pd.DataFrame:
    """The protocol's tuning rule for runs that `protocol.tune` cannot drive (virtual clocks, simulators):
    `score(value)` (higher is better, on a validation split) at every grid value; a best value at an edge grows
    the grid by one geometric step beyond it, at most `max_extensions` times. One row per value tried (value,
    score, chosen); among equal scores the smaller value wins."""
    values, scores = sorted(grid), {}
    for _ in range(max_extensions + 1):
        for value in values:
            if value not in scores:
                scores[value] = float(score(value))
        best = max(values, key=lambda value: (scores[value], -value))
        if len(values) < 2 or best not in (values[0], values[-1]):
            break
        low = best == values[0]
        values.insert(0 if low else len(values), values[0] ** 2 / values[1] if low else values[-1] ** 2 / values[-2])
    return pd.DataFrame({"value": list(scores), "score": list(scores.values()),
                         "chosen": [value == best for value in scores]}).sort_values("value", ignore_index=True)
