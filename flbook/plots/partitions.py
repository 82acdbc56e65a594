"""Figures of a partition: where each class lives, how big the clients are, and partitions side by side."""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..partition.stats import counts_matrix, label_entropy, sizes

MAX_CLIENTS_SHOWN = 50  # bars and heatmaps show at most this many clients, and say so in the title
MAX_CLASSES_IN_LEGEND = 20


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    """`ax`, or a fresh Axes of a modest size."""
    return plt.subplots(figsize=figsize)[1] if ax is None else ax


def _first_clients(counts: np.ndarray) -> tuple[np.ndarray, str]:
    """The first MAX_CLIENTS_SHOWN rows of a counts matrix, and a title note when rows were cut."""
    counts = np.asarray(counts)
    if len(counts) <= MAX_CLIENTS_SHOWN:
        return counts, ""
    return counts[:MAX_CLIENTS_SHOWN], f" (first {MAX_CLIENTS_SHOWN} of {len(counts)} clients)"


def plot_label_heatmap(counts: np.ndarray, ax: Axes | None = None) -> Axes:
    """Heatmap of a (clients, classes) counts matrix, classes down and clients across: where each class lives."""
    shown, note = _first_clients(counts)
    ax = _axes(ax, (6.0, 3.5))
    sns.heatmap(shown.T, ax=ax, cmap="viridis", cbar_kws={"label": "samples"})
    ax.set(xlabel="client", ylabel="class", title="Label distribution" + note)
    return ax


def plot_label_bars(counts: np.ndarray, ax: Axes | None = None) -> Axes:
    """Stacked bars per client of a (clients, classes) counts matrix: size and class mix at a glance."""
    shown, note = _first_clients(counts)
    ax = _axes(ax, (6.0, 3.5))
    n_classes = shown.shape[1]
    palette = sns.color_palette("tab10" if n_classes <= 10 else "husl", n_classes)
    clients = np.arange(len(shown))
    bottoms = np.cumsum(shown, axis=1) - shown  # (clients, classes) where each class's bar starts
    for c in range(n_classes):
        ax.bar(clients, shown[:, c], bottom=bottoms[:, c], width=0.9, color=palette[c], label=str(c), linewidth=0)
    if n_classes <= MAX_CLASSES_IN_LEGEND:
        ax.legend(title="class", bbox_to_anchor=(1.01, 1.0), loc="upper left", fontsize="small")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="client", ylabel="samples", title="Samples per class" + note)
    return ax


def plot_sizes(parts: list[np.ndarray], ax: Axes | None = None) -> Axes:
    """Histogram of client sizes: how unequal the amount of data is."""
    n = sizes(parts)
    ax = _axes(ax, (5.0, 3.5))
    sns.histplot(n, ax=ax)
    ax.set(
        xlabel="samples per client",
        ylabel="clients",
        title=f"{len(n)} clients: {n.min()} to {n.max()} samples (median {np.median(n):g})",
    )
    return ax


def compare_partitions(
    partitions: dict[str, list[np.ndarray]], labels: np.ndarray | torch.Tensor, n_classes: int | None = None
) -> Figure:
    """One column per partition: stacked class bars per client on top, the histogram of label entropy below."""
    if not partitions:
        raise ValueError("partitions must hold at least one named partition, got none")
    counts = {name: counts_matrix(labels, parts, n_classes) for name, parts in partitions.items()}
    n_classes = next(iter(counts.values())).shape[1]
    max_entropy = math.log2(n_classes)
    bins = np.linspace(0.0, max(max_entropy, 1.0), 21)
    fig, axes = plt.subplots(
        2, len(counts), figsize=(3.6 * len(counts) + 1.0, 5.5), squeeze=False, sharey="row", layout="constrained"
    )
    for col, (name, matrix) in enumerate(counts.items()):
        bars_ax, entropy_ax = axes[:, col]
        plot_label_bars(matrix, ax=bars_ax)
        if bars_ax.get_legend() is not None and col < len(counts) - 1:
            bars_ax.get_legend().remove()  # one legend, in the last column
        bars_ax.set_title(name + _first_clients(matrix)[1])
        entropy = label_entropy(labels, partitions[name], n_classes)
        sns.histplot(entropy, bins=bins, ax=entropy_ax)
        entropy_ax.axvline(max_entropy, linestyle="--", color="gray")
        entropy_ax.set(xlabel="label entropy (bits)", ylabel="clients", title=f"mean {entropy.mean():.2f} bits")
    for ax in axes[:, 1:].flat:
        ax.set_ylabel("")  # rows share their y axis
    return fig
