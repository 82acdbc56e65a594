"""Learning curves from a history DataFrame: accuracy or loss per round, per byte or per second, one line per run."""
from __future__ import annotations

import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

MB = 1e6  # bytes per megabyte (decimal, as link speeds are quoted)
LABELS = {
    "round": "round",
    "test_acc": "test accuracy",
    "test_loss": "test loss",
    "bytes_up": "bytes sent up (MB)",
    "bytes_down": "bytes sent down (MB)",
    "bytes_total": "bytes sent up + down (MB)",
    "wall_time": "wall-clock time (s)",
    "sim_time": "simulated time",
}


def use_theme(dpi: int = 80) -> None:
    """Set the workbook's seaborn theme (white grid, notebook sizes) and a modest figure DPI, once per notebook."""
    sns.set_theme(style="whitegrid", context="notebook", rc={"figure.dpi": dpi, "figure.figsize": (6.0, 3.5)})


def _axes(ax: Axes | None) -> Axes:
    """`ax`, or a fresh Axes of the theme's size."""
    return plt.subplots()[1] if ax is None else ax


def warn_non_finite(history: pd.DataFrame, y: str, x: str, hue: str) -> None:
    """Warn, naming the first run and point, when `y` holds NaN or inf: such points are left out of the figure."""
    bad = ~np.isfinite(pd.to_numeric(history[y], errors="coerce").to_numpy(dtype=float))
    if bad.any():
        first = history[bad].iloc[0]
        warnings.warn(f"{y} is not finite in {int(bad.sum())} of {len(history)} rows, first at {hue}={first[hue]!r}, "
                      f"{x}={first[x]} ({first[y]}); those points are not drawn", RuntimeWarning, stacklevel=3)


def learning_curves(history: pd.DataFrame, y: str = "test_acc", x: str = "round", ax: Axes | None = None,
                    hue: str = "algorithm") -> Axes:
    """Plot `y` against `x` with one line per value of `hue` (in order of appearance); bytes are shown in MB.

    Rows that share `hue` and `x` (e.g. several seeds) become a mean line with a band over their full range
    (no bootstrap: a confidence interval would resample every point and cost seconds per figure)."""
    missing = [c for c in (x, y, hue) if c not in history.columns]
    if missing:
        raise ValueError(f"history must have columns {missing}; it has {list(history.columns)}")
    warn_non_finite(history, y, x, hue)
    data = history.assign(**{hue: history[hue].astype(str)})  # categories: one colour each, in `names` order
    if x.startswith("bytes"):
        data[x] = data[x] / MB
    ax = _axes(ax)
    names = list(pd.unique(data[hue]))
    drawn = len(ax.get_lines())
    sns.lineplot(data=data, x=x, y=y, hue=hue, hue_order=names, errorbar=("pi", 100), legend=False, ax=ax)
    for line, name in zip(ax.get_lines()[drawn:], names):  # seaborn draws one line per hue level, in order
        line.set_label(name)
    ax.set(xlabel=LABELS.get(x, x), ylabel=LABELS.get(y, y))
    ax.legend(title=None if hue == "algorithm" else hue, fontsize="small")
    return ax


def accuracy_vs_bytes(history: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """Test accuracy against the bytes communicated so far, up plus down, in MB: what a round costs."""
    total = history.assign(bytes_total=history["bytes_up"] + history["bytes_down"])
    return learning_curves(total, y="test_acc", x="bytes_total", ax=ax)


def accuracy_vs_memory(table: pd.DataFrame, last: int, ax: Axes | None = None) -> Axes:
    """One dot per method (`table`: columns algorithm, activations, accuracy): its test accuracy, the mean of the last
    `last` epochs, against the activation floats it keeps per sample for the backward pass; memory from zero."""
    ax = _axes(ax)
    sns.scatterplot(data=table, x="activations", y="accuracy", hue="algorithm", s=80, ax=ax, legend=False)
    ax.set(xlabel="activation floats kept per sample", ylabel=f"test accuracy (last {last} epochs)")
    ax.set_xlim(left=0)
    return ax


def accuracy_figure(history: pd.DataFrame) -> Figure:
    """Test accuracy per round (left) and per MB communicated (right): a `plot` for control panels."""
    fig, (by_round, by_bytes) = plt.subplots(1, 2, figsize=(10.0, 3.5), sharey=True, layout="constrained")
    learning_curves(history, ax=by_round)
    accuracy_vs_bytes(history, ax=by_bytes)
    by_bytes.get_legend().remove()  # one legend, on the left
    return fig


def budget_figure(history: pd.DataFrame) -> Figure:
    """Test accuracy against the cumulative bytes sent up (left) and up plus down (right), on log axes."""
    fig, (up, total) = plt.subplots(1, 2, figsize=(10.0, 3.5), sharey=True, layout="constrained")
    trained = history[history["round"] > 0]
    learning_curves(trained, x="bytes_up", ax=up)
    learning_curves(trained.assign(bytes_total=trained.bytes_up + trained.bytes_down), x="bytes_total", ax=total)
    for ax in (up, total):
        ax.set_xscale("log")
    up.get_legend().remove()  # one legend, where the curves leave room: bottom right
    total.legend(loc="lower right", fontsize="small")
    return fig


def bytes_figure(history: pd.DataFrame) -> Figure:
    """Test accuracy per round (left) and against the cumulative uplink bytes, on a log axis (right)."""
    fig, (by_round, by_bytes) = plt.subplots(1, 2, figsize=(10.0, 3.5), sharey=True, layout="constrained")
    learning_curves(history, ax=by_round)
    learning_curves(history[history["round"] > 0], x="bytes_up", ax=by_bytes)
    by_bytes.set_xscale("log")
    by_bytes.get_legend().remove()  # one legend, on the left
    return fig
