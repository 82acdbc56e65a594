"""The link between server and clients: what arrives, and exactly how many bits it took.

The base `Channel` is lossless: a message costs the bits of the tensors actually exchanged
(numel x bits per element). Compression and noisy links subclass it and change both.
"""
from __future__ import annotations

import numpy as np
import torch

Tensors = dict[str, torch.Tensor]


def tensor_bits(tensors: Tensors, leading: int = 0) -> int:
    """Bits of one message, ignoring `leading` stacked dimensions (e.g. leading=1 for (M, P) client stacks)."""
    return sum(v[(0,) * leading].numel() * v.element_size() * 8 for v in tensors.values())


class Channel:
    """A lossless link; subclasses may compress or corrupt messages in either direction."""

    def downlink(self, down: Tensors, n_receivers: int, rng: np.random.Generator) -> tuple[Tensors, int]:
        """Server to each of `n_receivers` clients: (what they receive, total bits sent)."""
        return down, tensor_bits(down) * n_receivers

    def uplink(self, messages: Tensors, rng: np.random.Generator) -> tuple[Tensors, int]:
        """Clients' stacked messages (M, ...) to the server: (what it receives, total bits sent)."""
        n_senders = next(iter(messages.values())).shape[0]
        return messages, tensor_bits(messages, leading=1) * n_senders
