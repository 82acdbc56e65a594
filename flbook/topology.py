"""Who talks to whom without a server: graphs, mixing matrices W, their spectral gap, and gossip X <- W X.

A `Graph` is data: n nodes and an undirected edge list. A mixing matrix W (N, N) says how a node averages
what it receives: row i holds the weights node i gives to itself and to its neighbours. With every node's
model stacked as a row of X (N, P), one gossip step is X <- W X. A doubly stochastic W keeps the network
average x_bar and contracts the consensus distance at the rate of its second-largest eigenvalue modulus
lambda (a larger spectral gap 1 - lambda mixes faster). Time-varying mixing, as in the one-peer exponential
graph, is a `TimeVarying` object: W = schedule(t) in round t.

Sparse graphs gossip through a CSR matrix on the CPU (`gossip`); `gossip_bytes` counts exactly what each
node sends to each neighbour.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components

MAX_TRIES = 100  # random graphs: draws before giving up on a connected (or simple regular) one

# A CPU gossip step goes through scipy's CSR product when W has at most this fill, else a dense product.
# Measured on the 2-core CPU, one thread, X of 1000 nodes x 55,210 parameters (the digits MLP), float32:
# a ring (0.3% fill) took 1.72 s dense (`W @ X`), 0.24 s as a torch CSR tensor and 0.05 s through scipy's
# CSR; random W at 1% / 3% / 10% / 20% fill took 0.21 / 0.63 / 2.1 / 4.5 s in scipy against 1.76 s dense,
# so CSR wins below about 8% fill. On a GPU the dense product is used for every W: it is one matrix
# product of 0.11 TFLOP for this size, milliseconds there, with no transfer to the host (not measured here).
CSR_MAX_FILL = 0.05


def _at_least(name: str, value: int, low: int, high: int | None = None) -> None:
    """Raise a ValueError unless `value` is an integer in [low, high]."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bounds}, got {value}")


@dataclass(frozen=True)
class Graph:
    """An undirected simple graph on nodes 0..n-1, stored as its edge list (i < j, each edge once)."""

    name: str
    n: int
    edges: np.ndarray = field(repr=False)  # (E, 2) int64
    grid: tuple[int, int] | None = None  # (rows, cols) when the nodes sit on a grid (the torus), for drawing

    def __post_init__(self) -> None:
        _at_least("n", self.n, 2)
        edges = np.asarray(self.edges, dtype=np.int64).reshape(-1, 2)
        if len(edges) and (edges.min() < 0 or edges.max() >= self.n):
            raise ValueError(f"edges must join nodes in [0, {self.n - 1}], got node {int(edges.max())}")
        loops = edges[edges[:, 0] == edges[:, 1], 0]
        if len(loops):
            raise ValueError(f"edges must join two different nodes, got a self-loop at node {int(loops[0])}")
        object.__setattr__(self, "edges", np.unique(np.sort(edges, axis=1), axis=0))  # (E, 2), i < j

    @property
    def degrees(self) -> np.ndarray:
        """Neighbours per node, shape (N,)."""
        return np.bincount(self.edges.ravel(), minlength=self.n)

    def adjacency(self) -> sp.csr_matrix:
        """The symmetric 0/1 adjacency matrix (N, N), without self-loops, as CSR."""
        i, j = self.edges.T
        ones = np.ones(2 * len(self.edges))
        return sp.csr_matrix((ones, (np.concatenate([i, j]), np.concatenate([j, i]))), shape=(self.n, self.n))

    def is_connected(self) -> bool:
        """True when every node can reach every other (gossip then converges to the average)."""
        return connected_components(self.adjacency(), directed=False)[0] == 1

    def require_connected(self) -> "Graph":
        """The graph itself, or a ValueError when some nodes can never reach the others."""
        parts = connected_components(self.adjacency(), directed=False)[0]
        if parts != 1:
            raise ValueError(f"graph {self.name!r} must be connected for gossip to reach consensus, "
                             f"but it has {parts} components")
        return self


# ------------------------------------------------------------------------------------------------ graphs
def ring(n: int) -> Graph:
    """The cycle 0 - 1 - ... - (n-1) - 0: degree 2, the sparsest connected regular graph."""
    _at_least("n", n, 2)
    i = np.arange(n)
    return Graph(f"ring({n})", n, np.stack([i, (i + 1) % n], 1))  # n = 2: the two edges are one


def torus(rows: int, cols: int | None = None) -> Graph:
    """The 2-D torus: a rows x cols grid whose edges wrap around; node r*cols + c, degree 4 (fewer when a side is 2)."""
    cols = rows if cols is None else cols
    _at_least("rows", rows, 2)
    _at_least("cols", cols, 2)
    r, c = np.divmod(np.arange(rows * cols), cols)
    right = r * cols + (c + 1) % cols
    down = ((r + 1) % rows) * cols + c
    i = np.arange(rows * cols)
    edges = np.concatenate([np.stack([i, right], 1), np.stack([i, down], 1)])
    return Graph(f"torus({rows}x{cols})", rows * cols, edges, grid=(rows, cols))


def exponential(n: int) -> Graph:
    """The static exponential graph: i ~ i +- 2^k (mod n) for 2^k < n, degree about 2 log2(n).

    Ying et al., "Exponential Graph is Provably Efficient for Decentralized Deep Training", NeurIPS 2021,
    define it with directed edges i -> i + 2^k; here each edge goes both ways, so Metropolis-Hastings
    weights give a symmetric doubly stochastic W."""
    _at_least("n", n, 2)
    i = np.arange(n)
    hops = [2**k for k in range((n - 1).bit_length())]  # 2^k <= n - 1
    return Graph(f"exponential({n})", n, np.concatenate([np.stack([i, (i + h) % n], 1) for h in hops]))


def complete(n: int) -> Graph:
    """Every pair of nodes joined: one gossip step with uniform weights is the exact average (a server)."""
    _at_least("n", n, 2)
    i, j = np.triu_indices(n, k=1)
    return Graph(f"complete({n})", n, np.stack([i, j], 1))


def _pairing(n: int, d: int, rng: np.random.Generator) -> np.ndarray | None:
    """One try of the pairing model for a simple d-regular graph (Steger & Wormald 1999): stubs paired at
    random, pairs that would make a self-loop or a double edge re-paired; None when the try gets stuck."""
    stubs = np.repeat(np.arange(n), d)  # each node once per edge end it still needs
    edges: set[tuple[int, int]] = set()
    for _ in range(10 * d + 10):  # passes; each re-pairs only the stubs the last one could not use
        if len(stubs) == 0:
            return np.array(sorted(edges), dtype=np.int64)
        rng.shuffle(stubs)
        left = []
        for a, b in np.sort(stubs.reshape(-1, 2), axis=1).tolist():
            if a != b and (a, b) not in edges:
                edges.add((a, b))
            else:
                left += [a, b]
        waiting = sorted(set(left))
        if left and not any((a, b) not in edges for k, a in enumerate(waiting) for b in waiting[k + 1:]):
            return None  # no pair of the waiting stubs can still be joined
        stubs = np.array(left, dtype=np.int64)
    return None


def random_regular(n: int, d: int, seed: int = 0, connected: bool = True) -> Graph:
    """A uniformly drawn simple d-regular graph (every node has d neighbours), seeded; connected by default."""
    _at_least("n", n, 2)
    _at_least("d", d, 1, n - 1)
    if n * d % 2:
        raise ValueError(f"n * d must be even for a d-regular graph (each edge has two ends), got n={n}, d={d}")
    if connected and d == 1 and n > 2:
        raise ValueError(f"d must be >= 2 for a connected regular graph on n={n} > 2 nodes, got d=1")
    rng = np.random.default_rng(seed)
    if connected and d == 2:  # the connected 2-regular graphs are the cycles: a ring under a uniform relabelling
        order = rng.permutation(n)
        return Graph(f"random_regular({n}, d=2)", n, np.stack([order, np.roll(order, -1)], 1))
    for _ in range(MAX_TRIES):
        edges = _pairing(n, d, rng)
        if edges is not None:
            graph = Graph(f"random_regular({n}, d={d})", n, edges)
            if not connected or graph.is_connected():
                return graph
    raise RuntimeError(f"no {'connected ' if connected else ''}{d}-regular graph on {n} nodes in {MAX_TRIES} draws "
                       f"(seed={seed}); try a larger d")


def erdos_renyi(n: int, p: float, seed: int = 0, connected: bool = True) -> Graph:
    """G(n, p): each pair joined independently with probability p, seeded.

    connected=True redraws (at most MAX_TRIES times) until the graph is connected, i.e. samples G(n, p)
    conditioned on connectivity; it raises when p is far below the threshold ln(n)/n."""
    _at_least("n", n, 2)
    if not 0 < p <= 1:
        raise ValueError(f"p must be in (0, 1], got {p}")
    rng = np.random.default_rng(seed)
    i, j = np.triu_indices(n, k=1)
    for _ in range(MAX_TRIES if connected else 1):
        keep = rng.random(len(i)) < p
        graph = Graph(f"erdos_renyi({n}, p={p:g})", n, np.stack([i[keep], j[keep]], 1))
        if not connected or graph.is_connected():
            return graph
    raise ValueError(f"p={p:g} gave no connected graph on n={n} nodes in {MAX_TRIES} draws (seed={seed}); "
                     f"use p above the connectivity threshold ln(n)/n = {math.log(n) / n:.3g}, or connected=False")


# ------------------------------------------------------------------------------------------- mixing matrices
def metropolis_hastings(graph: Graph) -> torch.Tensor:
    """Metropolis-Hastings weights: w_ij = 1 / (1 + max(d_i, d_j)) on edges, w_ii = 1 - sum_j w_ij.

    Symmetric and doubly stochastic on any undirected graph, with positive self-weights (Xiao & Boyd,
    "Fast linear iterations for distributed averaging", 2004). Shape (N, N), float64."""
    deg = graph.degrees
    i, j = graph.edges.T
    w = 1.0 / (1.0 + np.maximum(deg[i], deg[j]))  # (E,)
    W = np.zeros((graph.n, graph.n))
    W[i, j] = W[j, i] = w
    W[np.diag_indices(graph.n)] = 1.0 - W.sum(1)
    return torch.from_numpy(W)


def uniform_weights(graph: Graph, sizes: np.ndarray | torch.Tensor | None = None) -> torch.Tensor:
    """Each node averages its closed neighbourhood N[i] = {i} u N(i) uniformly, or weighted by `sizes`.

    w_ij = s_j / sum_{k in N[i]} s_k for j in N[i] (s_j = 1 without sizes): rows sum to 1. Uniform weights
    1/(d_i + 1) are symmetric and doubly stochastic exactly when the graph is regular (ring: 1/3 each).
    On the complete graph with sizes n_j, every row is FedAvg's p_j = n_j / n. Shape (N, N), float64."""
    s = np.ones(graph.n) if sizes is None else np.asarray(torch.as_tensor(sizes).cpu(), dtype=np.float64)
    if s.shape != (graph.n,) or not (s > 0).all():
        raise ValueError(f"sizes must be {graph.n} positive numbers (one per node), got shape {s.shape}, "
                         f"min {s.min():g}")
    W = graph.adjacency().toarray() + np.eye(graph.n)  # (N, N) closed neighbourhoods
    W *= s[None, :]
    return torch.from_numpy(W / W.sum(1, keepdims=True))


def one_peer_exponential(n: int) -> "TimeVarying":
    """The one-peer exponential graph: in round t node i averages with node i + 2^(t mod tau), tau = ceil(log2 n).

    W(t) = (I + P^(2^(t mod tau))) / 2 for the cyclic shift P: each node sends one model per round. When n
    is a power of 2, any tau consecutive rounds give the exact average (Ying et al., NeurIPS 2021, Lemma 1)."""
    _at_least("n", n, 2)
    tau = (n - 1).bit_length()  # ceil(log2 n)
    eye = np.eye(n)

    def mixing(t: int) -> torch.Tensor:
        shift = np.roll(eye, 2 ** (t % tau), axis=1)  # (N, N), row i picks node i + 2^k
        return torch.from_numpy((eye + shift) / 2)

    return TimeVarying(f"one_peer_exponential({n})", n, mixing, period=tau)


@dataclass(frozen=True)
class TimeVarying:
    """A mixing schedule W(t): `schedule(t)` is the (N, N) matrix of round t (a static W is a constant one)."""

    name: str
    n: int
    mixing: Callable[[int], torch.Tensor] = field(repr=False)
    period: int | None = None  # W(t + period) = W(t), when the schedule repeats

    def __call__(self, t: int) -> torch.Tensor:
        W = self.mixing(t)
        if W.shape != (self.n, self.n):
            raise ValueError(f"{self.name}: W({t}) must have shape ({self.n}, {self.n}), got {tuple(W.shape)}")
        return W

    @classmethod
    def static(cls, W: torch.Tensor, name: str = "static") -> "TimeVarying":
        """The same W in every round."""
        return cls(name, W.shape[0], lambda t: W, period=1)


def as_schedule(mixing: torch.Tensor | TimeVarying) -> TimeVarying:
    """A static W wrapped as a schedule; a schedule as it is."""
    if isinstance(mixing, TimeVarying):
        return mixing
    if isinstance(mixing, torch.Tensor) and mixing.ndim == 2 and mixing.shape[0] == mixing.shape[1]:
        return TimeVarying.static(mixing)
    raise TypeError(f"mixing must be a square (N, N) tensor or a TimeVarying schedule, got {type(mixing).__name__} "
                    f"{tuple(getattr(mixing, 'shape', ()))}")


# -------------------------------------------------------------------------------------------------- checks
def is_symmetric(W: torch.Tensor, atol: float = 1e-10) -> bool:
    """W = W^T: node i weighs j as j weighs i."""
    return bool(torch.allclose(W, W.T, rtol=0.0, atol=atol))


def is_row_stochastic(W: torch.Tensor, atol: float = 1e-10) -> bool:
    """Non-negative with rows summing to 1: every node takes a convex combination of what it receives."""
    ones = torch.ones(W.shape[0], dtype=W.dtype)
    return bool((W >= 0).all() and torch.allclose(W.sum(1), ones, rtol=0.0, atol=atol))


def is_doubly_stochastic(W: torch.Tensor, atol: float = 1e-10) -> bool:
    """Rows and columns sum to 1, entries >= 0: gossip then preserves the network average x_bar."""
    return is_row_stochastic(W, atol) and is_row_stochastic(W.T, atol)


def check_mixing(W: torch.Tensor, n: int | None = None, atol: float = 1e-6) -> None:
    """Raise a ValueError unless W is a square row-stochastic matrix (of n nodes, when given)."""
    if W.ndim != 2 or W.shape[0] != W.shape[1] or (n is not None and W.shape[0] != n):
        raise ValueError(f"W must have shape ({n or 'N'}, {n or 'N'}), got {tuple(W.shape)}")
    if not torch.isfinite(W).all() or not is_row_stochastic(W.double().cpu(), atol):
        rows = W.double().sum(1)
        raise ValueError(f"W must be non-negative with rows summing to 1, got min entry {W.min().item():g} and "
                         f"row sums in [{rows.min().item():.6g}, {rows.max().item():.6g}]")


def second_largest_eigenvalue(W: torch.Tensor) -> float:
    """lambda: the second-largest eigenvalue modulus of W (1 for a disconnected graph, 0 for exact averaging).

    For symmetric W this is max(|lambda_2|, |lambda_N|), the factor by which one gossip step at least shrinks
    the distance to consensus; for other W it is the second-largest |eigenvalue|."""
    A = W.double().cpu().numpy()
    eig = np.linalg.eigvalsh(A) if is_symmetric(W.double().cpu()) else np.linalg.eigvals(A)
    return float(np.sort(np.abs(eig))[-2])


def spectral_gap(W: torch.Tensor) -> float:
    """1 - lambda: how much of the disagreement one gossip step removes (larger mixes faster)."""
    return 1.0 - second_largest_eigenvalue(W)


# -------------------------------------------------------------------------------------------------- gossip
def consensus_distance(X: torch.Tensor) -> float:
    """(1/N) sum_i ||x_i - x_bar||^2 of the stacked node models X (N, P); exactly 0 when all models agree."""
    D = X - X[0]  # (N, P), shifted by one node's model: the same distance, free of rounding in x_bar
    return (D - D.mean(0)).pow(2).sum(1).mean().item()


def restrict(W: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """W over the active nodes only: links to inactive nodes dropped, their weight kept on the node itself.

    Inactive nodes keep their model (identity rows). A symmetric doubly stochastic W stays so."""
    active = active.to(device=W.device, dtype=torch.bool)  # (N,)
    kept = torch.where(active[:, None] & active[None, :], W, torch.zeros((), dtype=W.dtype, device=W.device))
    return kept + torch.diag(1.0 - kept.sum(1))  # (N, N)


def gossip(X: torch.Tensor, W: torch.Tensor, steps: int = 1) -> torch.Tensor:
    """`steps` gossip steps X <- W X (Q in DFedSAM-MGS): X (N, P), W (N, N); returns the new X.

    Where every row of W is the same (a complete graph), one weighted average is broadcast, O(NP); on a
    CPU a sparse W goes through CSR (see CSR_MAX_FILL for the measured reason), otherwise a dense product."""
    _at_least("steps", steps, 0)
    if W.shape != (X.shape[0], X.shape[0]):
        n = X.shape[0]
        raise ValueError(f"W must have shape ({n}, {n}) for X of {n} nodes, got {tuple(W.shape)}")
    W = W.to(dtype=X.dtype)
    if steps and (W == W[:1]).all():
        return (W[0].to(X.device) @ X).expand_as(X).clone()  # rank one: W^Q X = 1 (w^T X) for every Q >= 1
    if X.device.type == "cpu" and torch.count_nonzero(W).item() <= CSR_MAX_FILL * W.numel():
        csr, x = sp.csr_matrix(W.cpu().numpy()), X.detach().contiguous().numpy()
        for _ in range(steps):
            x = csr @ x  # (N, P)
        return torch.from_numpy(np.ascontiguousarray(x))
    W = W.to(X.device)
    for _ in range(steps):
        X = W @ X  # (N, N) @ (N, P)
    return X


def transfers(W: torch.Tensor) -> int:
    """Models sent in one gossip step: one per off-diagonal w_ij != 0 (node j sends x_j to node i)."""
    return int(torch.count_nonzero(W).item() - torch.count_nonzero(torch.diagonal(W)).item())


def gossip_bytes(W: torch.Tensor, n_params: int, steps: int = 1, dtype: torch.dtype = torch.float32) -> int:
    """Exact bytes of `steps` gossip steps with W: each edge carries the sender's full model, n_params elements."""
    return steps * transfers(W) * n_params * torch.empty((), dtype=dtype).element_size()


# ------------------------------------------------------------------------------------------------ by name
TOPOLOGIES = ("ring", "torus", "exponential", "one-peer exponential", "random regular", "complete")


def graph_by_name(name: str, n: int, degree: int = 3, seed: int = 0) -> Graph:
    """A static graph of `TOPOLOGIES` on n nodes: the torus as the most square rows x cols = n grid, the random
    regular graph of `degree` (seeded); the one-peer exponential graph is drawn as its static union."""
    if name not in TOPOLOGIES:
        raise ValueError(f"topology must be one of {list(TOPOLOGIES)}, got {name!r}")
    _at_least("n", n, 2)
    if name == "torus":
        rows = max(r for r in range(1, math.isqrt(n) + 1) if n % r == 0)
        if rows < 2:
            raise ValueError(f"a torus needs n = rows x cols with both >= 2; n={n} is prime, pick another n")
        return torus(rows, n // rows)
    makers = {"ring": ring, "exponential": exponential, "one-peer exponential": exponential, "complete": complete,
              "random regular": lambda n: random_regular(n, degree, seed=seed)}
    return makers[name](n)


def mixing_by_name(name: str, n: int, degree: int = 3, seed: int = 0) -> torch.Tensor | TimeVarying:
    """The mixing of `graph_by_name` with Metropolis-Hastings weights; the one-peer exponential schedule W(t)."""
    if name == "one-peer exponential":
        _at_least("n", n, 2)
        return one_peer_exponential(n)
    return metropolis_hastings(graph_by_name(name, n, degree, seed))


# ------------------------------------------------------------------- random gossip with a schedule (Zhu et al.)
SCHEDULES = ("fixed", "truncate", "truncate_v2")


def random_gossip(n: int, r: float, rng: np.random.Generator) -> torch.Tensor:
    """Row-stochastic W of one round: node i averages itself and floor(r) random others, plus one more with
    probability frac(r), uniformly (w_ij = 1/|N_i|; not symmetric). r = 0 is W = I; r = n - 1 the exact average."""
    if not 0 <= r <= n - 1:
        raise ValueError(f"r (expected extra neighbours) must be in [0, {n - 1}], got {r}")
    count = np.floor(r) + (rng.random(n) < r - np.floor(r))  # (N,) extra neighbours of each node
    keys = rng.random((n, n))
    keys[np.diag_indices(n)] = np.inf  # never pick yourself as a neighbour
    picked = np.argsort(keys, axis=1).argsort(axis=1) < count[:, None]  # (N, N) the `count` smallest keys per row
    A = picked | np.eye(n, dtype=bool)
    return torch.from_numpy(A / A.sum(1, keepdims=True))


def communication_rate(schedule: str, progress: float, r_start: float, r_end: float, point: float = 1.0,
                       window: float = 0.0) -> float:
    """r at training progress p in [0, 1]: "fixed" r_start; "truncate" r_end from p >= point on (one switch);
    "truncate_v2" r_end inside the dense window [point, point + window), r_start outside."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {schedule!r}")
    if schedule == "truncate":
        return r_end if progress >= point else r_start
    if schedule == "truncate_v2":
        return r_end if point <= progress < point + window else r_start
    return r_start


def scheduled_gossip(n: int, rounds: int, schedule: str, r_start: float, r_end: float | None = None,
                     point: float = 1.0, window: float = 0.0, seed: int = 0) -> TimeVarying:
    """W(t) = random_gossip(n, r(t)) with r(t) = communication_rate at progress p = t / rounds (seeded per round)."""
    _at_least("rounds", rounds, 1)
    r_end = n - 1 if r_end is None else r_end

    def mixing(t: int) -> torch.Tensor:
        r = communication_rate(schedule, t / rounds, r_start, r_end, point, window)
        return random_gossip(n, r, np.random.default_rng([seed, t]))

    return TimeVarying(f"random gossip ({schedule}, r={r_start:g}->{r_end:g})", n, mixing)
