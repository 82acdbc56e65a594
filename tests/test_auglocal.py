"""AugLocal: the uniform layer selection, the pyramidal depths, fresh auxiliary networks, and the chapter's claim."""
import pytest
import torch
from torch import nn

from flbook.auglocal import fresh, local_network, pyramid, residual_mlp, uniform_selection


@pytest.mark.parametrize("n_layers", [4, 10, 16])
@pytest.mark.parametrize("depth", [1, 2, 3, 5])
def test_selected_layers(n_layers, depth):
    for layer in range(n_layers - 1):
        chosen = uniform_selection(layer, depth, n_layers)
        assert chosen == sorted(set(chosen)) and all(layer < s <= n_layers - 1 for s in chosen)
        assert chosen[-1] == n_layers - 1 and len(chosen) == min(depth, n_layers - 1 - layer)


def test_selection_is_uniform():
    assert uniform_selection(0, 3, 10) == [3, 6, 9]
    assert uniform_selection(0, 2, 16) == [8, 15]  # round(7.5) = 8: halves round up
    assert uniform_selection(7, 3, 10) == [8, 9]


@pytest.mark.parametrize("depth, tau", [(2, 0.5), (3, 0.5), (5, 0.5), (5, 1.0), (4, 0.25)])
def test_pyramid(depth, tau):
    depths = pyramid(depth, 13, tau)
    assert len(depths) == 13 and depths[0] == depth and all(a >= b for a, b in zip(depths, depths[1:]))
    assert depths[-1] == max(1, int(depth * (1 - tau) + tau + 0.5))
    assert pyramid(depth, 13, 0.0) == [depth] * 13


def test_bad_pyramid_values_are_rejected():
    with pytest.raises(ValueError, match=r"tau must be in \[0, 1\], got 1.5"):
        pyramid(3, 5, 1.5)
    with pytest.raises(ValueError, match="depth must be an integer"):
        pyramid(0, 5, 0.5)


def test_auxiliary_nets_are_fresh_copies_of_the_selected_layers():
    torch.manual_seed(0)
    layers = residual_mlp(12, 8, 8)
    net = local_network(layers, nn.Linear(8, 3), 8, "auglocal", width=8, n_classes=3, depth=3, tau=0.5)
    primary = {id(p) for p in net.primary}
    auxiliary = {id(p) for p in net.objectives.parameters()}
    assert primary.isdisjoint(auxiliary) and len(primary) + len(auxiliary) == len(list(net.parameters()))
    depths = [len(objective.net) - 1 for objective in net.objectives]  # blocks before the classifier
    assert depths == [min(d, 7 - l) for l, d in enumerate(pyramid(3, 7, 0.5))]
    twin = fresh(layers[3])
    assert type(twin) is type(layers[3]) and not torch.equal(twin.fc1.weight, layers[3].fc1.weight)
    assert len(net.blocks) == 8 and len(net.blocks[-1]) == 1


def test_linear_heads_are_greedy_local_learning():
    net = local_network(residual_mlp(12, 8, 6), nn.Linear(8, 3), 4, "linear", width=8, n_classes=3)
    assert all(isinstance(o.net, nn.Linear) for o in net.objectives) and len(net.blocks[-1]) == 3



def test_deeper_auxiliary_nets_keep_early_layers_from_greediness():
    """Chapter 70's claim at small scale: greedy linear heads make layer 0 more linearly separable (more greedy)
    than AugLocal's auxiliary nets do; AugLocal without its copied layers (linear heads) loses the difference."""
    from flbook.centralized import fit
    from flbook.chapters.ch70_auglocal import build
    from flbook.data import load
    from flbook.protocol import verdict

    data = load("digits")
    first = {aux: [fit(build(6, 16, 6, aux, depth=3), data, seed=s, lr=1e-2, epochs=10, batch_size=128)
                   .iloc[-1]["probe_0"] for s in range(3)] for aux in ("linear", "auglocal")}
    assert verdict([a - b for a, b in zip(first["linear"], first["auglocal"])]) == "holds"
    assert verdict([a - b for a, b in zip(first["linear"], first["linear"])]) == "does not hold"
