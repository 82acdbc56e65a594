"""Module-wise (local) training: a network cut into K gradient-isolated modules, each trained by its own loss.

Module k receives the previous module's output *detached* (h_in = h_{k-1}.detach()), so no gradient crosses a
cut: each module's graph can be freed as soon as its local loss is backpropagated, and the activations kept for
the backward pass are those of the largest module plus its auxiliary objective, not those of the whole network.
Modules 1..K-1 train on a `LocalObjective` (an auxiliary classifier, a reconstruction, ...), module K on the final
cross-entropy. K = 1 is end-to-end backpropagation. `saved_floats` counts the kept activations exactly, from
what autograd itself saves (torch.autograd.graph.saved_tensors_hooks), rather than estimating them.

Used by chapter 70 (AugLocal) and chapter 71 (local learning on transformers).
"""
from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F


class LocalObjective(nn.Module, ABC):
    """The loss a gradient-isolated module trains on: forward(h, h_in, x, y) -> scalar, from its output h, its
    (detached) input h_in, the network input x and the labels y."""

    @abstractmethod
    def forward(self, h: torch.Tensor, h_in: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The module's local loss."""


class AuxClassifier(LocalObjective):
    """Cross-entropy of an auxiliary network on the module's output (greedy supervised local learning)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, h: torch.Tensor, h_in: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.net(h), y)


class ModuleWise(nn.Module):
    """A primary network of K modules (each an nn.Sequential of layers) and a head; modules 1..K-1 have objectives.

    Inference uses the primary network only (module 1, ..., module K, head); the objectives are discarded."""

    def __init__(self, blocks: Sequence[nn.Sequential], objectives: Sequence[LocalObjective], head: nn.Module):
        super().__init__()
        if len(blocks) < 1 or len(objectives) != len(blocks) - 1:
            raise ValueError(f"a network of K modules needs K >= 1 and K - 1 local objectives, got "
                             f"{len(blocks)} modules and {len(objectives)} objectives")
        self.blocks = nn.ModuleList(blocks)
        self.objectives = nn.ModuleList(objectives)
        self.head = head

    @property
    def primary(self) -> list[nn.Parameter]:
        """The parameters inference uses: the modules' and the head's (not the objectives')."""
        return [*self.blocks.parameters(), *self.head.parameters()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for block in self.blocks:
            h = block(h)
        return self.head(h)

    def layer_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every primary layer, in order, without gradients (what linear probes read)."""
        outputs, h = [], x
        with torch.no_grad():
            for block in self.blocks:
                for layer in block:
                    h = layer(h)
                    outputs.append(h)
        return outputs

    def backward(self, x: torch.Tensor, y: torch.Tensor, saved: list[int] | None = None) -> list[float]:
        """Each module's loss, backpropagated module by module with gradient isolation; returns the K losses.

        With `saved` given, appends per module the floats autograd keeps for its backward pass (`saved_floats`)."""
        losses, h, last = [], x, len(self.blocks) - 1
        for k, block in enumerate(self.blocks):
            counter = _SavedCounter(self) if saved is not None else contextlib.nullcontext()
            with counter:
                h_in = h.detach() if k else h  # gradient isolation: no gradient crosses the cut
                h = block(h_in)
                loss = F.cross_entropy(self.head(h), y) if k == last else self.objectives[k](h, h_in, x, y)
            if saved is not None:
                saved.append(counter.floats)
            loss.backward()  # frees module k's graph before module k + 1 runs
            losses.append(float(loss.detach()))
        return losses


class _SavedCounter(torch.autograd.graph.saved_tensors_hooks):
    """Counts the floats of every distinct tensor autograd saves for backward, weights (and their views) excluded."""

    def __init__(self, net: nn.Module):
        self.floats = 0
        weights = {p.untyped_storage().data_ptr() for p in net.parameters()}
        seen: set[tuple] = set()

        def pack(t: torch.Tensor) -> torch.Tensor:
            key = (t.data_ptr(), tuple(t.shape), t.stride())  # one tensor saved by several ops counts once
            if t.is_floating_point() and t.untyped_storage().data_ptr() not in weights and key not in seen:
                seen.add(key)
                self.floats += t.numel()
            return t

        super().__init__(pack, lambda t: t)


def saved_floats(net: ModuleWise, x: torch.Tensor, y: torch.Tensor) -> list[int]:
    """Floats of activations each module keeps for its backward pass on the batch (x, y); gradients are discarded.

    The peak activation memory of module-wise training is max(...) of this list; of backpropagation (K = 1),
    its one entry."""
    saved: list[int] = []
    net.backward(x, y, saved)
    net.zero_grad(set_to_none=True)
    return saved


def linear_probe_accuracy(train: Sequence[torch.Tensor], y_train: torch.Tensor, test: Sequence[torch.Tensor],
                          y_test: torch.Tensor, n_classes: int, ridge: float = 1e-2) -> list[float]:
    """Test accuracy of a ridge least-squares linear classifier on each layer's features (one-hot targets).

    Closed form W = (H^T H + ridge n I)^-1 H^T Y on standardised features with a bias: fast, deterministic, and
    the same probe for every method."""
    accuracies = []
    targets = F.one_hot(y_train, n_classes).to(train[0].dtype)  # (n, C)
    for h_train, h_test in zip(train, test):
        h_train, h_test = h_train.flatten(1), h_test.flatten(1)  # (n, F), (m, F)
        mean, std = h_train.mean(0), h_train.std(0) + 1e-6
        a = torch.cat([(h_train - mean) / std, torch.ones_like(h_train[:, :1])], 1)  # (n, F + 1)
        b = torch.cat([(h_test - mean) / std, torch.ones_like(h_test[:, :1])], 1)  # (m, F + 1)
        gram = a.T @ a + ridge * len(a) * torch.eye(a.shape[1], dtype=a.dtype)  # (F + 1, F + 1)
        weights = torch.linalg.solve(gram, a.T @ targets)  # (F + 1, C)
        accuracies.append(float(((b @ weights).argmax(1) == y_test).float().mean()))
    return accuracies


class LocalLearner:
    """A `ModuleWise` network and one Adam optimiser over all its parameters (primary and auxiliary), as a
    `centralized.Learner`; the activations kept per sample are measured once, on a batch of 64. With
    `probes=True` the trained model's layers are probed linearly at the end (`final`)."""

    def __init__(self, net: ModuleWise, lr: float, x: torch.Tensor, y: torch.Tensor, probes: bool = False):
        self.net, self.probes = net, probes
        self.optimizer = torch.optim.Adam(net.parameters(), lr=lr, fused=True)  # one kernel, not one per tensor
        x, y = x[:64].clone(), y[:64].clone()
        self.activations = max(saved_floats(net, x, y)) / len(y)

    def step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, epoch: int) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        losses = self.net.backward(x, y)
        self.optimizer.step()
        return sum(losses)

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        with torch.no_grad():
            logits = self.net(x)  # (N, C)
        return {"test_acc": float((logits.argmax(1) == y).float().mean()),
                "test_loss": float(F.cross_entropy(logits, y)), "activations": self.activations}

    def final(self, dataset) -> dict[str, float]:
        """Each layer's linear-probe test accuracy (probe_0, probe_1, ...) when built with probes=True."""
        if not self.probes:
            return {}
        outputs = [self.net.layer_outputs(x) for x in (dataset.x_train, dataset.x_test)]
        probes = linear_probe_accuracy(outputs[0], dataset.y_train, outputs[1], dataset.y_test, dataset.n_classes)
        return {f"probe_{l}": acc for l, acc in enumerate(probes)}
