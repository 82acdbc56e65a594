"""Noisy links: additive Gaussian noise at a given SNR on what is transmitted, and lost messages.

`NoisyChannel` corrupts either direction ("up", "down" or "both") of any other channel (the lossless one by
default, or a compressor, whose decoded output then gets the noise):

- **Additive white Gaussian noise.** Each floating-point tensor of each message gets i.i.d. noise of variance
  sigma^2 = P / 10^(SNR/10), where P is that message's own mean power mean(v^2); an SNR of infinity adds nothing.
  On the downlink every receiver draws its own noise, so the channel hands the federation one copy per
  receiver, stacked (M, ...), and says so with `down_per_client` (the executors' argument of that name).
- **Message loss** (a packet-erasure link). Each message is lost independently with probability `drop_prob`.
  A lost message is still paid for (its bits were sent) and arrives as zeros, and the returned tensors carry
  a boolean mask under the key `ARRIVED` (M,). Meaning, implemented by `delivered(tensors, ids)` for the round
  loop to apply after each link: a client that loses the global model sits the round out, and the server
  aggregates only the uploads that arrived, with their weights renormalised over them. A round loop or an
  aggregation that ignores the mask sees a lost update as a zero update.

Randomness comes from a child of the federation's generator (`Generator.spawn`), so a noisy run samples the
same clients as a lossless one, and the same seed gives the same noise.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .. import validation as V
from .base import ARRIVED, Channel, Tensors, delivered  # noqa: F401  (delivered: re-exported for readers of this module)

LINKS = ("up", "down", "both")
MIN_SNR_DB = -100.0


def noise_std(signal: torch.Tensor, snr_db: float, dim: int | None = None) -> torch.Tensor:
    """AWGN standard deviation at `snr_db`: sqrt(P / 10^(SNR/10)), P the mean power of `signal` over `dim` (all if None)."""
    power = signal.square().mean() if dim is None else signal.square().mean(dim=dim, keepdim=True)
    return (power / 10 ** (snr_db / 10)).sqrt()


def _torch_generator(rng: np.random.Generator, device: torch.device) -> torch.Generator:
    """A torch generator seeded from a child of `rng`, leaving `rng`'s own stream untouched."""
    child = rng.spawn(1)[0]
    return torch.Generator(device=device).manual_seed(int(child.integers(2**63 - 1)))


class NoisyChannel(Channel):
    """Gaussian noise at `snr_db` and message loss with probability `drop_prob` on the chosen `links`."""

    def __init__(self, snr_db: float = math.inf, drop_prob: float = 0.0, links: str = "up",
                 base: Channel | None = None):
        # below MIN_SNR_DB the noise power 10^(-SNR/10) P overflows to inf for ordinary messages
        snr_db = V.in_range("snr_db (decibels, inf for no noise)", snr_db, MIN_SNR_DB, math.inf, hi_inclusive=True)
        drop_prob = V.probability("drop_prob", drop_prob)
        V.choice("links", links, LINKS)
        if base is not None and not isinstance(base, Channel):
            raise TypeError(f"base must be a Channel or None, got {type(base).__name__}")
        self.snr_db, self.drop_prob, self.links = snr_db, drop_prob, links
        self.base = base or Channel()

    @property
    def corrupts(self) -> bool:
        """Whether the link changes anything at all (finite SNR or a chance of loss)."""
        return self.snr_db < math.inf or self.drop_prob > 0

    @property
    def down_per_client(self) -> bool:
        """True when the downlink hands each receiver its own copy, stacked (M, ...)."""
        return self.corrupts and self.links in ("down", "both")

    def downlink(self, down: Tensors, n_receivers: int, rng: np.random.Generator) -> tuple[Tensors, int]:
        """Server to each receiver through the base channel; with downlink corruption, one noisy copy per receiver."""
        down, bits = self.base.downlink(down, n_receivers, rng)
        if not self.down_per_client:
            return down, bits
        copies = {k: v.expand(n_receivers, *v.shape) for k, v in down.items()}  # (M, ...) views
        return self.corrupt(copies, rng), bits

    def uplink(self, messages: Tensors, rng: np.random.Generator,
               clients: torch.Tensor | None = None) -> tuple[Tensors, int]:
        """Clients' stacked messages (M, ...) through the base channel, then noise and loss on the uplink.

        `clients` (M,) ids go to a base channel that needs them (error feedback keeps a memory per client)."""
        messages, bits = self.base.uplink(messages, rng, clients=clients)
        if not self.corrupts or self.links == "down":
            return messages, bits
        return self.corrupt(messages, rng), bits

    def corrupt(self, stacked: Tensors, rng: np.random.Generator) -> Tensors:
        """Add noise to each row (one message) of the floating-point tensors, zero lost rows, add the `ARRIVED` mask."""
        first = next(iter(stacked.values()))
        n, device = first.shape[0], first.device
        generator = _torch_generator(rng, device)
        out = dict(stacked)
        if self.snr_db < math.inf:
            for k, v in stacked.items():
                if v.is_floating_point():
                    rows = v.reshape(n, -1)  # (M, entries of one message)
                    noise = torch.randn(rows.shape, generator=generator, device=device, dtype=v.dtype)
                    out[k] = (rows + noise_std(rows, self.snr_db, dim=1) * noise).view(v.shape)
        if self.drop_prob > 0:
            arrived = torch.rand(n, generator=generator, device=device) >= self.drop_prob  # (M,)
            out = {k: torch.where(arrived.view(-1, *[1] * (v.dim() - 1)), v, torch.zeros_like(v))
                   for k, v in out.items()}
            out[ARRIVED] = arrived
        return out

    def __repr__(self) -> str:
        return f"NoisyChannel(snr_db={self.snr_db}, drop_prob={self.drop_prob}, links={self.links!r})"
