import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from flbook import topology as T  # noqa: E402
from flbook.plots import topology as P  # noqa: E402

GRAPHS = {
    "ring": lambda: T.ring(12),
    "torus": lambda: T.torus(3, 5),
    "torus 2x4": lambda: T.torus(2, 4),
    "exponential": lambda: T.exponential(12),
    "random regular": lambda: T.random_regular(12, 3, seed=4),
    "erdos renyi": lambda: T.erdos_renyi(12, 0.3, seed=1),
    "complete": lambda: T.complete(12),
}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.mark.parametrize("name", GRAPHS)
def test_metropolis_hastings_is_symmetric_doubly_stochastic_with_support_on_edges(name):
    graph = GRAPHS[name]()
    W = T.metropolis_hastings(graph)
    assert T.is_doubly_stochastic(W) and T.is_symmetric(W)
    assert (torch.diagonal(W) > 0).all()
    off = (W > 0) & ~torch.eye(graph.n, dtype=torch.bool)
    assert torch.equal(off, torch.from_numpy(graph.adjacency().toarray() > 0))
    assert graph.is_connected()


@pytest.mark.parametrize("name", ["ring", "torus", "exponential", "random regular", "complete"])
def test_uniform_weights_on_regular_graphs_equal_metropolis_hastings(name):
    graph = GRAPHS[name]()
    assert len(set(graph.degrees.tolist())) == 1
    W = T.uniform_weights(graph)
    assert torch.allclose(W, T.metropolis_hastings(graph)) and T.is_doubly_stochastic(W)


def test_uniform_weights_on_an_irregular_graph_are_only_row_stochastic():
    W = T.uniform_weights(GRAPHS["erdos renyi"]())
    assert T.is_row_stochastic(W) and not T.is_doubly_stochastic(W) and not T.is_symmetric(W)


def test_size_weighted_complete_graph_gives_fedavg_weights_in_every_row():
    sizes = np.array([5, 1, 30, 4])
    W = T.uniform_weights(T.complete(4), sizes=sizes)
    assert torch.allclose(W, torch.from_numpy(sizes / sizes.sum()).expand(4, 4))


def test_known_graph_shapes():
    assert len(T.ring(7).edges) == 7 and len(T.ring(2).edges) == 1
    assert set(T.torus(4).degrees.tolist()) == {4} and T.torus(4, 6).n == 24 and T.torus(4).grid == (4, 4)
    assert set(T.torus(2, 4).degrees.tolist()) == {3}  # a side of 2: up and down are the same neighbour
    assert set(T.exponential(16).degrees.tolist()) == {7}  # +-1, +-2, +-4 and 8 = -8
    assert len(T.complete(6).edges) == 15
    regular = T.random_regular(50, 4, seed=0)
    assert set(regular.degrees.tolist()) == {4} and len(regular.edges) == 100 and regular.is_connected()
    cycle = T.random_regular(30, 2, seed=3)
    assert set(cycle.degrees.tolist()) == {2} and cycle.is_connected()


def test_random_graphs_are_reproducible_and_depend_on_the_seed():
    assert np.array_equal(T.random_regular(20, 3, seed=5).edges, T.random_regular(20, 3, seed=5).edges)
    assert not np.array_equal(T.random_regular(20, 3, seed=5).edges, T.random_regular(20, 3, seed=6).edges)
    assert np.array_equal(T.erdos_renyi(20, 0.3, seed=2).edges, T.erdos_renyi(20, 0.3, seed=2).edges)
    assert not np.array_equal(T.erdos_renyi(20, 0.3, seed=2).edges, T.erdos_renyi(20, 0.3, seed=3).edges)


@pytest.mark.parametrize("n, side", [(16, 4), (64, 8)])
def test_spectral_gap_grows_from_ring_to_torus_to_exponential_to_complete(n, side):
    graphs = (T.ring(n), T.torus(side), T.exponential(n), T.complete(n))
    gaps = [T.spectral_gap(T.metropolis_hastings(g)) for g in graphs]
    assert gaps == sorted(gaps) and len(set(gaps)) == 4
    assert gaps[-1] == pytest.approx(1.0)
    # closed forms: ring lambda = 1/3 + 2/3 cos(2 pi / n); torus (weights 1/5) lambda = 1/5 + 2/5 (1 + cos(2 pi / side))
    assert gaps[0] == pytest.approx(1 - (1 / 3 + 2 / 3 * np.cos(2 * np.pi / n)))
    assert gaps[1] == pytest.approx(1 - (0.2 + 0.4 * (1 + np.cos(2 * np.pi / side))))


def test_disconnected_graph_has_lambda_one():
    graph = T.Graph("two pairs", 4, np.array([[0, 1], [2, 3]]))
    assert not graph.is_connected()
    assert T.second_largest_eigenvalue(T.metropolis_hastings(graph)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="connected.*2 components"):
        graph.require_connected()


def _models(n, p=7, seed=0):
    return torch.randn(n, p, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["ring", "exponential", "erdos renyi"])
def test_sparse_gossip_equals_dense_gossip_and_q_steps_equal_w_to_the_q(name, monkeypatch):
    W = T.metropolis_hastings(GRAPHS[name]())
    X = _models(12)
    sparse = T.gossip(X, W, steps=3)
    monkeypatch.setattr(T, "CSR_MAX_FILL", -1.0)  # force the dense path
    dense = T.gossip(X, W, steps=3)
    assert torch.allclose(sparse, dense, atol=1e-6)
    assert torch.allclose(dense, torch.linalg.matrix_power(W.float(), 3) @ X, atol=1e-6)


def test_gossip_on_a_large_ring_takes_the_csr_path(monkeypatch):
    W = T.metropolis_hastings(T.ring(200))
    calls = []
    real = T.sp.csr_matrix
    monkeypatch.setattr(T.sp, "csr_matrix", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = T.gossip(_models(200, 3), W)
    assert calls and out.dtype == torch.float32 and out.shape == (200, 3)


def test_complete_graph_gossip_is_one_exact_average():
    X = _models(10)
    out = T.gossip(X, T.metropolis_hastings(T.complete(10)))
    assert torch.allclose(out, X.mean(0).expand(10, -1), atol=1e-6) and T.consensus_distance(out) < 1e-12
    assert T.gossip(X, T.metropolis_hastings(T.complete(10)), steps=0) is X


@pytest.mark.parametrize("name", ["ring", "torus", "random regular", "erdos renyi"])
def test_consensus_distance_shrinks_by_lambda_squared_and_the_average_is_kept(name):
    W = T.metropolis_hastings(GRAPHS[name]()).float()
    lam = T.second_largest_eigenvalue(W)
    X = _models(W.shape[0])
    mean = X.mean(0)
    distances = [T.consensus_distance(X)]
    for _ in range(30):
        X = T.gossip(X, W)
        distances.append(T.consensus_distance(X))
        assert torch.allclose(X.mean(0), mean, atol=1e-5)
    ratios = np.array(distances[1:]) / np.array(distances[:-1])
    assert (ratios <= lam**2 + 1e-4).all()
    assert distances[-1] < 0.5 * distances[0]


def test_consensus_distance_formula():
    X = torch.tensor([[0.0, 0.0], [2.0, 0.0], [4.0, 3.0]])
    # x_bar = (2, 1): squared distances 5, 1, 8
    assert T.consensus_distance(X) == pytest.approx(14 / 3)


@pytest.mark.parametrize("n", [2, 8, 32])
def test_one_peer_exponential_averages_exactly_in_log2_n_rounds_for_powers_of_two(n):
    schedule = T.one_peer_exponential(n)
    assert schedule.period == int(np.log2(n))
    for start in (1, 5):
        product = torch.eye(n, dtype=torch.float64)
        for t in range(start, start + schedule.period):
            W = schedule(t)
            assert T.is_doubly_stochastic(W) and T.transfers(W) == n  # each node sends one model a round
            product = W @ product
        assert torch.allclose(product, torch.full((n, n), 1 / n, dtype=torch.float64), atol=1e-12)


def test_one_peer_exponential_is_not_exact_when_n_is_not_a_power_of_two():
    schedule = T.one_peer_exponential(12)
    product = torch.eye(12, dtype=torch.float64)
    for t in range(schedule.period):
        product = schedule(t) @ product
    assert not torch.allclose(product, torch.full((12, 12), 1 / 12, dtype=torch.float64), atol=1e-3)


def test_static_schedule_and_bad_schedules():
    W = T.metropolis_hastings(T.ring(5))
    schedule = T.as_schedule(W)
    assert schedule(1) is W and schedule(99) is W and T.as_schedule(schedule) is schedule
    with pytest.raises(TypeError, match="square"):
        T.as_schedule(torch.ones(3, 4))
    with pytest.raises(ValueError, match=r"shape \(5, 5\)"):
        T.TimeVarying("bad", 5, lambda t: torch.eye(4))(0)


def test_restrict_drops_inactive_links_and_keeps_double_stochasticity():
    W = T.metropolis_hastings(T.torus(3, 4))
    active = torch.tensor([True, False, True, True, False, True, True, True, True, False, True, True])
    R = T.restrict(W, active)
    assert T.is_doubly_stochastic(R) and T.is_symmetric(R)
    assert torch.equal(R[~active], torch.eye(12, dtype=W.dtype)[~active])  # inactive nodes keep their model
    assert (R[active][:, ~active] == 0).all()
    X = _models(12)
    assert torch.equal(T.gossip(X, R)[~active], X[~active])


def test_gossip_bytes_counts_each_directed_edge_once_per_step():
    ring = T.metropolis_hastings(T.ring(10))
    assert T.transfers(ring) == 20
    assert T.gossip_bytes(ring, n_params=100, steps=3) == 3 * 20 * 100 * 4
    assert T.gossip_bytes(ring, n_params=100, dtype=torch.float64) == 20 * 100 * 8
    assert T.transfers(T.metropolis_hastings(T.complete(10))) == 90
    assert T.transfers(torch.eye(4)) == 0


def test_check_mixing_rejects_bad_matrices():
    T.check_mixing(T.metropolis_hastings(T.ring(4)), n=4)
    with pytest.raises(ValueError, match=r"shape \(5, 5\)"):
        T.check_mixing(torch.eye(4), n=5)
    with pytest.raises(ValueError, match="rows summing to 1"):
        T.check_mixing(torch.full((3, 3), 0.5))
    with pytest.raises(ValueError, match="non-negative"):
        T.check_mixing(torch.tensor([[1.5, -0.5], [0.0, 1.0]]))


@pytest.mark.parametrize("build, match", [
    (lambda: T.ring(1), "n must be >= 2, got 1"),
    (lambda: T.complete(0), "n must be >= 2, got 0"),
    (lambda: T.ring(3.0), "n must be an integer, got 3.0"),
    (lambda: T.torus(4, 1), "cols must be >= 2, got 1"),
    (lambda: T.random_regular(10, 10), r"d must be in \[1, 9\], got 10"),
    (lambda: T.random_regular(10, 0), r"d must be in \[1, 9\], got 0"),
    (lambda: T.random_regular(5, 3), "n \\* d must be even.*n=5, d=3"),
    (lambda: T.random_regular(10, 1), "d must be >= 2 for a connected regular graph"),
    (lambda: T.erdos_renyi(10, 0.0), r"p must be in \(0, 1\], got 0.0"),
    (lambda: T.erdos_renyi(100, 0.005), "p=0.005 gave no connected graph.*ln\\(n\\)/n = 0.0461"),
    (lambda: T.Graph("g", 3, np.array([[0, 3]])), r"nodes in \[0, 2\], got node 3"),
    (lambda: T.Graph("g", 3, np.array([[1, 1]])), "self-loop at node 1"),
    (lambda: T.gossip(torch.zeros(3, 2), torch.eye(4)), r"W must have shape \(3, 3\)"),
    (lambda: T.gossip(torch.zeros(3, 2), torch.eye(3), steps=-1), "steps must be >= 0, got -1"),
    (lambda: T.uniform_weights(T.ring(3), sizes=[1, 2]), "sizes must be 3 positive numbers"),
    (lambda: T.one_peer_exponential(1), "n must be >= 2, got 1"),
])
def test_bad_input_names_the_parameter_range_and_value(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_unconnected_graphs_allowed_when_asked():
    assert not T.random_regular(10, 1, seed=0, connected=False).is_connected()
    sparse = T.erdos_renyi(100, 0.005, seed=0, connected=False)
    assert not sparse.is_connected() and sparse.n == 100


# ------------------------------------------------------------------------------------------------- plots
def test_node_positions_on_circle_and_grid():
    circle = P.node_positions(T.ring(8))
    assert np.allclose(np.linalg.norm(circle, axis=1), 1.0) and np.allclose(circle[0], [0, 1])
    grid = P.node_positions(T.torus(3, 4))
    assert grid.shape == (12, 2) and tuple(grid[5]) == (1.0, -1.0)  # node 5 = row 1, column 1


def test_plot_graph_draws_every_edge_and_colours_nodes():
    graph = T.torus(3, 4)
    ax = P.plot_graph(graph, values=np.arange(12.0), label="distance")
    (edges,) = ax.collections[:1]
    assert len(graph.edges) == 24
    assert len(edges.get_segments()) == 17 + 2 * 7  # 3*3 + 2*4 inner edges; 3 + 4 wrap around, two stubs each
    assert len(P.plot_graph(T.ring(9)).collections[0].get_segments()) == 9
    assert np.allclose(ax.collections[1].get_array(), np.arange(12.0))
    assert "torus(3x4)" in ax.get_title()
    with pytest.raises(ValueError, match=r"one number per node, shape \(12,\)"):
        P.plot_graph(graph, values=np.arange(3.0))


def test_plot_mixing_and_topology_figure():
    graph = T.ring(10)
    W = T.metropolis_hastings(graph)
    ax = P.plot_mixing(W)
    assert np.allclose(ax.images[0].get_array(), W.numpy())
    assert f"{T.second_largest_eigenvalue(W):.3f}" in ax.get_title()
    fig = P.topology_figure(graph, W)
    assert len(fig.axes) == 3  # the graph, the heatmap and its colour bar
    with pytest.raises(ValueError, match=r"shape \(10, 10\)"):
        P.topology_figure(graph, torch.eye(3))
