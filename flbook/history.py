"""The History stage: one tidy row per evaluation, and the summaries chapters compute from the rows.

Both round loops write rows with `row`, so a synchronous and an asynchronous run give the same columns
(`COLUMNS`, plus `sim_time` for the asynchronous loop and any extra metrics).
"""
from __future__ import annotations

import pandas as pd

COLUMNS = ("algorithm", "round", "test_acc", "test_loss", "bytes_up", "bytes_down", "wall_time")


def row(label: str, round: int, scores: dict[str, float], bits_up: int, bits_down: int, wall_time: float,
        **extra: float) -> dict:
    """One history row: the run's label and round, its scores, cumulative bytes each way, seconds since its start.

    `extra` columns (e.g. `sim_time`) come right after `round`."""
    return {"algorithm": label, "round": round, **extra, **scores, "bytes_up": bits_up // 8,
            "bytes_down": bits_down // 8, "wall_time": wall_time}


def budget_table(history: pd.DataFrame, reference: str = "FedAvg", target: float | None = None,
                 last: int = 5) -> pd.DataFrame:
    """Per run: accuracy (mean of the `last` evaluations), uplink and total MB, uplink saving against
    `reference`, and the uplink MB spent when test accuracy first reached `target` (NaN: never)."""
    by = history.groupby("algorithm", sort=False)
    table = pd.DataFrame({"accuracy": by.test_acc.apply(lambda acc: acc.tail(last).mean()),
                          "MB up": by.bytes_up.last() / 1e6,
                          "MB up+down": (by.bytes_up.last() + by.bytes_down.last()) / 1e6})
    if reference in table.index:
        table["x fewer bytes up"] = table.loc[reference, "MB up"] / table["MB up"]
        table["accuracy cost"] = table.loc[reference, "accuracy"] - table["accuracy"]
    if target is not None:
        reached = history[history.test_acc >= target].groupby("algorithm", sort=False).bytes_up.min() / 1e6
        table[f"MB up to {target:.0%}"] = reached.reindex(table.index)
    return table
