"""AugLocal (Ma, Wu, Si & Tan, ICLR 2024): local learning whose auxiliary networks are copies of later layers.

Greedy local learning gives every local layer a small auxiliary classifier; the early layers then become
short-sighted (discriminative too early) and accuracy falls as the number of local layers grows. AugLocal builds
the auxiliary network of layer l from *fresh copies* of d_l layers sampled uniformly from the layers after l in
the primary network, always ending with the last one, plus a classifier, so that each local objective resembles
the true downstream computation. A pyramidal schedule shrinks d_l linearly with depth to save compute.
Following the official code (networks/resnet.py, networks/auxiliary_nets.py, config "unifSamp"):

    K modules: layers 0..K-2 are local layers; layers K-1..L-1 and the classifier form the last module
    pyramid:   d_l = max(1, round(d - (d - 1) tau l / (K - 2)))              l = 0..K-2
    selection: S_l = {l+1, ..., L-1}                          if d_l >= L-1-l
               S_l = {round(l + (L-1-l) j / d_l) : j = 1..d_l}   otherwise   (always ends at L-1)
    aux net:   A_l = [fresh copy of layer s for s in S_l] -> Linear(C)

At workbook scale the primary network is a residual MLP (layer 0 the input projection, then residual blocks of
one width), so "a copy of a later layer" is a residual block of that width; the paper's BatchNorm before the
classifier of a depth-1 auxiliary net has no counterpart here (no normalisation in the MLP).
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from . import validation as V
from .local_learning import AuxClassifier, LocalObjective, ModuleWise

AUX_KINDS = ("linear", "auglocal")


class ResidualBlock(nn.Module):
    """relu(h + W2 relu(W1 h)): the MLP counterpart of a ResNet basic block (same width in and out)."""

    def __init__(self, width: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.relu(h + self.fc2(torch.relu(self.fc1(h))))  # (B, W)


def residual_mlp(n_features: int, width: int, n_layers: int) -> list[nn.Module]:
    """The primary network's L layers: layer 0 flattens and projects the input to `width`, then L-1 residual blocks."""
    n_layers = V.integer("n_layers", n_layers, 2)
    stem = nn.Sequential(nn.Flatten(), nn.Linear(n_features, width), nn.ReLU())
    return [stem, *(ResidualBlock(width) for _ in range(n_layers - 1))]


def round_half_up(value: float) -> int:
    """Nearest integer, halves rounded up (Python's round() rounds halves to even)."""
    return math.floor(value + 0.5)


def pyramid(depth: int, n_local: int, tau: float) -> list[int]:
    """Auxiliary depths d_l of the local layers l = 0..n_local-1: d at the first, shrinking linearly by tau."""
    depth, n_local = V.integer("depth", depth, 1), V.integer("n_local", n_local, 0)
    tau = V.in_range("tau", tau, 0.0, 1.0)
    span = max(1, n_local - 1)
    return [max(1, round_half_up(depth - (depth - 1) * tau * l / span)) for l in range(n_local)]


def uniform_selection(layer: int, depth: int, n_layers: int) -> list[int]:
    """The indices S_l of the later layers copied into layer `layer`'s auxiliary net (uniform, ending at L-1)."""
    remaining = n_layers - 1 - layer
    if depth >= remaining:
        return list(range(layer + 1, n_layers))
    return [round_half_up(layer + remaining * j / depth) for j in range(1, depth + 1)]


def fresh(layer: nn.Module) -> nn.Module:
    """A copy of `layer`'s architecture with freshly initialised weights (no parameter shared)."""
    twin = copy.deepcopy(layer)
    for module in twin.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return twin


def local_network(layers: list[nn.Module], head: nn.Module, n_modules: int, aux: str = "auglocal", *,
                  width: int, n_classes: int, depth: int = 2, tau: float = 0.5) -> ModuleWise:
    """The primary `layers` cut into `n_modules` gradient-isolated modules (1: backpropagation).

    aux="linear": each local layer trains a linear classifier on its output (greedy local learning, DGL-style);
    aux="auglocal": fresh copies of the uniformly selected later layers, then a linear classifier, with the
    pyramidal depths `pyramid(depth, n_modules - 1, tau)`."""
    n_modules = V.integer("n_modules", n_modules, 1, len(layers))
    V.choice("aux", aux, AUX_KINDS)
    n_local = n_modules - 1
    blocks = [nn.Sequential(layer) for layer in layers[:n_local]] + [nn.Sequential(*layers[n_local:])]
    depths = pyramid(depth, n_local, tau)
    objectives: list[LocalObjective] = [
        AuxClassifier(nn.Linear(width, n_classes) if aux == "linear" else
                      nn.Sequential(*(fresh(layers[s]) for s in uniform_selection(l, d, len(layers))),
                                    nn.Linear(width, n_classes)))
        for l, d in enumerate(depths)]
    return ModuleWise(blocks, objectives, head)
