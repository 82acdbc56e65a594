"""The link between server and clients: what arrives, and exactly how many bits it took.

The base `Channel` is lossless: a message costs the bits of the tensors actually exchanged
(numel x bits per element). Compression and noisy links subclass it and change both.
"""
from __future__ import annotations

import numpy as np
import torch

from ..algorithms.base import Tensors


def tensor_bits(tensors: Tensors, leading: int = 0) -> int:
    """Bits of one message, ignoring `leading` stacked dimensions (e.g. leading=1 for (M, P) client stacks)."""
    return sum(v[(0,) * leading].numel() * v.element_size() * 8 for v in tensors.values())


ARRIVED = "arrived"  # key of an optional (M,) bool mask: which stacked messages reached their receiver


def delivered(tensors: Tensors, ids: torch.Tensor) -> tuple[Tensors, torch.Tensor]:
    """Keep the rows (and client ids) whose message arrived; tensors without an `ARRIVED` mask pass unchanged."""
    if ARRIVED not in tensors:
        return tensors, ids
    keep = tensors[ARRIVED]
    return {k: v[keep] for k, v in tensors.items() if k != ARRIVED}, ids[keep]


class Channel:
    """A lossless link; subclasses may compress or corrupt messages in either direction.

    A subclass that gives each receiver its own copy of the broadcast returns it stacked (M, ...) and sets
    `down_per_client`; one that loses messages adds an `ARRIVED` mask, and the round loop keeps only the
    clients whose messages arrived (see `delivered`)."""

    down_per_client: bool = False

    def reset(self) -> None:
        """Forget per-run state (e.g. error-feedback memory); called when a run starts."""

    def downlink(self, down: Tensors, n_receivers: int, rng: np.random.Generator) -> tuple[Tensors, int]:
        """Server to each of `n_receivers` clients: (what they receive, total bits sent)."""
        return down, tensor_bits(down) * n_receivers

    def uplink(self, messages: Tensors, rng: np.random.Generator,
               clients: torch.Tensor | None = None) -> tuple[Tensors, int]:
        """Clients' stacked messages (M, ...) to the server: (what it receives, total bits sent).

        `clients` (M,) are the senders' ids, for channels that keep per-client state."""
        n_senders = next(iter(messages.values())).shape[0]
        return messages, tensor_bits(messages, leading=1) * n_senders
