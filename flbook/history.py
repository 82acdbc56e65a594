"""The History stage: one tidy row per evaluation, and summaries of it that do not flatter.

Both round loops write rows with `row`, so a synchronous and an asynchronous run give the same columns
(`COLUMNS`, plus `sim_time` for the asynchronous loop and any extra metrics). The summaries count sustained
targets, name their windows and pair seeds. Each function reads one run (the rows of one algorithm on one seed); `per_run` applies it to a long history of
several runs, and `per_seed_difference` pairs a method with a baseline seed by seed.

    >>> rounds_to(history, 0.85)                   # first round from which test_acc stays >= 0.85, NaN if never
    >>> window_mean(history, "test_acc", last=10)  # WindowMean(mean=0.91, start=21, end=30): says which rounds
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import numpy as np
import pandas as pd


COLUMNS = ("algorithm", "round", "test_acc", "test_loss", "bytes_up", "bytes_down", "wall_time")


def row(label: str, round: int, scores: dict[str, float], bits_up: int, bits_down: int, wall_time: float,
        **extra: float) -> dict:
    """One history row: the run's label and round, its scores, cumulative bytes each way, seconds since its start.

    `extra` columns (e.g. `sim_time`) come right after `round`."""
    return {"algorithm": label, "round": round, **extra, **scores, "bytes_up": bits_up // 8,
            "bytes_down": bits_down // 8, "wall_time": wall_time}


def _one_run(history: pd.DataFrame, x: str) -> pd.DataFrame:
    """The history sorted by `x`; a ValueError when it is empty or mixes several runs (repeated x values)."""
    if len(history) == 0:
        raise ValueError("history is empty")
    if x not in history.columns:
        raise ValueError(f"x must be a column of the history ({', '.join(map(str, history.columns))}), got {x!r}")
    if history[x].duplicated().any():
        raise ValueError(f"history holds several runs (repeated {x!r} values); select one run or use per_run(...)")
    return history.sort_values(x)


def _column(history: pd.DataFrame, column: str) -> pd.Series:
    if column not in history.columns:
        raise ValueError(f"column must be a column of the history ({', '.join(map(str, history.columns))}), "
                         f"got {column!r}")
    return history[column]


def rounds_to(history: pd.DataFrame, target: float, column: str = "test_acc", x: str = "round", *,
              above: bool = True) -> float:
    """The first `x` from which `column` stays at or above `target` (below it when above=False); NaN if never.

    "Stays" means at every later evaluation up to the end of the run, so a curve that touches the target
    and falls back does not count until it comes back for good. A run that diverged
    (`history.attrs["diverged_at"]`) or ends below the target never reached it: NaN, never 0."""
    run = _one_run(history, x)
    if run.attrs.get("diverged_at") is not None or history.attrs.get("diverged_at") is not None:
        return float("nan")
    values = _column(run, column).to_numpy(dtype=float)
    ok = values >= target if above else values <= target  # NaN compares False: a missing value breaks a streak
    if not ok[-1]:
        return float("nan")
    first = len(ok) - int(np.argmin(ok[::-1])) if not ok.all() else 0  # one past the last miss
    return float(run[x].iloc[first])


class WindowMean(NamedTuple):
    """A mean over a window of evaluations, with the window it was taken over (start and end `x`, inclusive)."""

    mean: float
    start: float
    end: float
    x: str = "round"

    def __str__(self) -> str:
        return f"{self.mean:.3f} (mean over {self.x}s {self.start:g}-{self.end:g})"


def window_mean(history: pd.DataFrame, column: str = "test_acc", *, last: float, x: str = "round") -> WindowMean:
    """Mean of `column` over the evaluations with `x` in (x_end - last, x_end], the last `last` rounds of the run."""
    if not last > 0:
        raise ValueError(f"last must be > 0, got {last}")
    run = _one_run(history, x)
    end = run[x].iloc[-1]
    window = run[run[x] > end - last]
    return WindowMean(float(_column(window, column).mean()), float(window[x].iloc[0]), float(end), x)


def final(history: pd.DataFrame, column: str = "test_acc", x: str = "round") -> float:
    """The value of `column` at the last evaluation; check `is_flat` before calling it a final accuracy."""
    return float(_column(_one_run(history, x), column).iloc[-1])


def is_flat(history: pd.DataFrame, column: str = "test_acc", *, last: float, tolerance: float,
            x: str = "round") -> bool:
    """Whether the curve has flattened: the means of the last two windows of `last` rounds differ by <= tolerance.

    When it has not, a "final" number is a snapshot mid-climb and the claim should be stated as speed."""
    run = _one_run(history, x)
    end = run[x].iloc[-1]
    if end - 2 * last < run[x].iloc[0]:
        raise ValueError(f"the run is too short for two windows of last={last} {x}s (it spans "
                         f"{run[x].iloc[0]:g}-{end:g})")
    recent = window_mean(run, column, last=last, x=x).mean
    before = window_mean(run[run[x] <= end - last], column, last=last, x=x).mean
    return bool(abs(recent - before) <= tolerance)


def per_run(history: pd.DataFrame, summary: Callable[[pd.DataFrame], float],
            by: Sequence[str] = ("algorithm", "seed")) -> pd.Series:
    """`summary(run)` for every run of a long history, indexed by the columns `by` (those the history has)."""
    keys = [k for k in by if k in history.columns]
    if not keys:
        return pd.Series([summary(history)])
    groups = history.groupby(keys if len(keys) > 1 else keys[0], sort=False)
    return pd.Series({key: summary(run) for key, run in groups}, dtype=float).rename_axis(keys)


def per_seed_difference(history: pd.DataFrame, method: str, baseline: str,
                        summary: Callable[[pd.DataFrame], float], *, by: str = "algorithm",
                        seed: str = "seed") -> pd.Series:
    """summary(method's run) - summary(baseline's run) for each seed, indexed by seed (the pairing a verdict needs)."""
    for name in (method, baseline):
        if name not in set(history[by]):
            have = ", ".join(map(str, history[by].unique()))
            raise ValueError(f"{by} {name!r} is not in the history (it has {have})")
    values = {name: per_run(history[history[by] == name], summary, by=(seed,)) for name in (method, baseline)}
    if set(values[method].index) != set(values[baseline].index):
        raise ValueError(f"{method!r} and {baseline!r} were run on different seeds: "
                         f"{sorted(values[method].index)} vs {sorted(values[baseline].index)}")
    return (values[method] - values[baseline][values[method].index]).rename(f"{method} - {baseline}")


def mean_spread(values: Sequence[float] | pd.Series, digits: int = 3, signed: bool = False) -> str:
    """'mean ± std (n seeds)', the sample standard deviation across seeds (ddof=1); NaN values are counted apart."""
    array = np.asarray(values, dtype=float)
    finite = array[np.isfinite(array)]
    missing = len(array) - len(finite)
    tail = f", {missing} never" if missing else ""
    if len(finite) == 0:
        return f"n/a ({len(array)} seeds{tail})"
    spread = finite.std(ddof=1) if len(finite) > 1 else float("nan")
    sign = "+" if signed else ""
    return f"{finite.mean():{sign}.{digits}f} ± {spread:.{digits}f} ({len(array)} seeds{tail})"


def budget_table(history: pd.DataFrame, reference: str = "FedAvg", target: float | None = None,
                 last: int = 5) -> pd.DataFrame:
    """Per run: accuracy (mean of the `last` evaluations), uplink and total MB, uplink saving against
    `reference`, and the uplink MB spent by the round from which test accuracy stays at or above `target`
    (NaN: never, or not for good)."""
    by = history.groupby("algorithm", sort=False)
    table = pd.DataFrame({"accuracy": by.test_acc.apply(lambda acc: acc.tail(last).mean()),
                          "MB up": by.bytes_up.last() / 1e6,
                          "MB up+down": (by.bytes_up.last() + by.bytes_down.last()) / 1e6})
    if reference in table.index:
        table["x fewer bytes up"] = table.loc[reference, "MB up"] / table["MB up"]
        table["accuracy cost"] = table.loc[reference, "accuracy"] - table["accuracy"]
    if target is not None:
        reached = {name: run.set_index("round").bytes_up.get(rounds_to(run, target), np.nan) / 1e6
                   for name, run in by}
        table[f"MB up to {target:.0%}"] = pd.Series(reached).reindex(table.index)
    return table


def seed_budget_table(history: pd.DataFrame, reference: str = "FedAvg", last: int = 5) -> pd.DataFrame:
    """`budget_table` over seeds, per run label: its lr, the MB sent up and the saving against `reference` (means
    over the seeds: compressed sizes vary a little with the seed), and the accuracy over the `last` evaluations as
    mean and spread (ddof=1) over the seeds."""
    end = history[history["round"] == history["round"].max()]
    by = end.groupby("algorithm", sort=False)
    up = by.bytes_up.mean()
    accuracy = per_run(history, lambda h: window_mean(h, "test_acc", last=last).mean).groupby(level=0, sort=False)
    table = pd.DataFrame({"lr": by.lr.first(), "MB up": up / 1e6, "x fewer bytes up": up[reference] / up,
                          "accuracy": accuracy.mean(), "spread": accuracy.std(ddof=1)})
    return table.loc[list(by.groups)]
