"""Figures of a decentralized topology: the graph (nodes on a circle or a grid) and its mixing matrix W."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from flbook.topology import Graph, second_largest_eigenvalue


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    """`ax`, or a fresh Axes of a modest size."""
    return plt.subplots(figsize=figsize)[1] if ax is None else ax


def node_positions(graph: Graph) -> np.ndarray:
    """(N, 2) drawing positions: the torus's grid (row r at height -r), else evenly on the unit circle."""
    if graph.grid is not None:
        r, c = np.divmod(np.arange(graph.n), graph.grid[1])
        return np.stack([c, -r], 1).astype(float)
    angle = np.pi / 2 - 2 * np.pi * np.arange(graph.n) / graph.n  # node 0 on top, clockwise
    return np.stack([np.cos(angle), np.sin(angle)], 1)


def edge_segments(graph: Graph, pos: np.ndarray) -> np.ndarray:
    """(S, 2, 2) line segments of the edges; on a grid an edge that wraps around is two short outward stubs."""
    ends = pos[graph.edges]  # (E, 2, 2)
    if graph.grid is None:
        return ends
    step = ends[:, 1] - ends[:, 0]  # (E, 2)
    wraps = np.abs(step).max(1) > 1.5
    out = 0.35 * step[wraps] / np.linalg.norm(step[wraps], axis=1, keepdims=True)  # (W, 2) away from the grid
    first = np.stack([ends[wraps, 0], ends[wraps, 0] - out], 1)
    second = np.stack([ends[wraps, 1], ends[wraps, 1] + out], 1)
    return np.concatenate([ends[~wraps], first, second])


def plot_graph(graph: Graph, values: np.ndarray | torch.Tensor | None = None, ax: Axes | None = None,
               label: str = "") -> Axes:
    """The graph's nodes and edges; `values` (N,) colours the nodes (e.g. each node's distance to the average)."""
    ax = _axes(ax, (4.0, 4.0))
    pos = node_positions(graph)
    ax.add_collection(LineCollection(edge_segments(graph, pos), colors="0.6", linewidths=0.8 if graph.n <= 100 else 0.3,
                                     alpha=0.8 if graph.n <= 100 else 0.3, zorder=1))
    size = 60 if graph.n <= 32 else max(4, 2000 // graph.n)
    if values is None:
        ax.scatter(*pos.T, s=size, color="C0", zorder=2)
    else:
        values = np.asarray(torch.as_tensor(values).cpu(), dtype=float)
        if values.shape != (graph.n,):
            raise ValueError(f"values must hold one number per node, shape ({graph.n},), got {values.shape}")
        points = ax.scatter(*pos.T, s=size, c=values, cmap="viridis", zorder=2)
        ax.figure.colorbar(points, ax=ax, shrink=0.8, label=label)
    low, high = graph.degrees.min(), graph.degrees.max()
    ax.set(title=f"{graph.name}: degree {low}" + (f"-{high}" if high > low else ""), xticks=[], yticks=[],
           aspect="equal")
    ax.margins(0.08)
    for side in ax.spines.values():
        side.set_visible(False)
    return ax


def plot_mixing(W: torch.Tensor, ax: Axes | None = None) -> Axes:
    """Heatmap of the mixing matrix W (row i: the weights node i gives to each node), titled with lambda."""
    ax = _axes(ax, (4.5, 4.0))
    image = ax.imshow(W.double().cpu().numpy(), cmap="magma_r", vmin=0.0, interpolation="nearest")
    ax.figure.colorbar(image, ax=ax, shrink=0.8, label="weight $w_{ij}$")
    ax.set(xlabel="node j (sends)", ylabel="node i (receives)",
           title=f"W: $\\lambda$ = {second_largest_eigenvalue(W):.3f}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return ax


def topology_figure(graph: Graph, W: torch.Tensor) -> Figure:
    """The graph and its mixing matrix side by side."""
    if W.shape != (graph.n, graph.n):
        raise ValueError(f"W must have shape ({graph.n}, {graph.n}) for {graph.name}, got {tuple(W.shape)}")
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.0, 4.0))
    plot_graph(graph, ax=left)
    plot_mixing(W, ax=right)
    fig.tight_layout()
    return fig


PEER_CURVES = (("test_acc", "accuracy of the averaged model"), ("local_acc", "mean accuracy of the node models"),
               ("consensus_distance", "consensus distance (1/N) Σ‖x_i − x̄‖²"))


def peer_curves(history, axes, curves=PEER_CURVES, dashed=lambda name: False, legend_size: int = 8) -> None:
    """A peer-to-peer run's curves per round on `axes`, one line per method (dashed where `dashed(name)`); the
    consensus distance on a symlog scale, since it spans decades and reaches 0 on the complete graph."""
    for ax, (column, title) in zip(axes, curves):
        for name, run in history.groupby("algorithm", sort=False):
            ax.plot(run["round"], run[column], label=name, ls="--" if dashed(name) else "-")
        ax.set(title=title, xlabel="round")
        if column == "consensus_distance":
            ax.set_yscale("symlog", linthresh=1e-3)
    axes[0].legend(fontsize=legend_size)
