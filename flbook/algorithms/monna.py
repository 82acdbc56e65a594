"""MoNNA: peer-to-peer SGD with Polyak momentum at every honest node and nearest-neighbour averaging (NNA).

Paper: Farhadkhani, Guerraoui, Gupta, Hoang, Pinot, Stephan, "Robust Collaborative Learning with Linear Gradient
Overhead", ICML 2023, https://arxiv.org/abs/2209.10931; semantics from the official code
(github.com/LPD-EPFL/robust-collaborative-learning, `peerToPeer.py`, `aggregators/cva.py`). One step t:

    m_i <- beta m_i + (1 - beta) g_i,   theta_i^{t+1/2} = theta_i^t - gamma m_i        (momentum, dampening = beta)
    S_i = {theta_i^{t+1/2}} u {n_h - f - 1 random other honest models} u {the f Byzantine vectors}   (|S_i| = n - f)
    theta_i^{t+1} = mean of the |S_i| - f vectors of S_i closest to theta_i^{t+1/2}                 (NNA, pivot = own)

`MomentumSGD` is the node's local step (a `client_update`, so the decentralized runner batches it under vmap);
`NNAMixer` is the mixing step (a `Mixer` of `flbook.decentralized`): it draws the Byzantine nodes by seed,
crafts their vector from the honest half-step models (SF, FOE, ALIE; FOE / ALIE line-searched against the mean
of the honest NNA outputs, as the code's `line_maximize` objective; LF, label flipping, as the code's
`labelflipping`: b = mean_h theta^{t+1/2} - gamma_t mean_h g_i(flipped labels), the gradients at theta_i^t on
the honest nodes' own batches, which the runner computes, `MixInfo.flipped`), and replaces each honest model by
the rule over its received set. rule="nna" is MoNNA's; "trimmed_mean", "geometric_median", "median" and "mean"
are the paper's baselines in NNA's place. Byzantine nodes' rows are left as they are and excluded from
evaluation (`counted`). The code's decaying step gamma_t is the runner's `lr_schedule`
(`decentralized.InverseTimeDecay`); its L2 regulariser lambda_2 ||theta|| is left out.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import robust
from ..attacks import Attack
from .base import Algorithm, Batches, LocalContext, RoundInfo, Tensors, descend

MIXING_RULES = ("nna", "trimmed_mean", "geometric_median", "median", "mean")
MIXER_ATTACKS = ("sign_flipping", "foe", "alie", "label_flipping")


@dataclass(kw_only=True)
class MomentumSGD(Algorithm):
    """A node's local step: SGD with Polyak momentum m <- beta m + (1 - beta) g (beta = 0: plain SGD, m = g)."""

    beta: float = 0.99
    name = "MomentumSGD"

    def __post_init__(self) -> None:
        if not 0 <= self.beta < 1:
            raise ValueError(f"beta (momentum) must be in [0, 1), got {self.beta}")

    def init_client_state(self, x: torch.Tensor) -> Tensors:
        return {"m": torch.zeros_like(x)}

    def client_update(self, down: Tensors, client_state: Tensors, batches: Batches,
                      ctx: LocalContext) -> tuple[Tensors, Tensors]:
        x, m = down["x"], client_state["m"]
        y = x
        for k in range(batches.n_steps):  # one gradient per step: K = 1 in the paper
            g = ctx.grad(y, batches.x[k], batches.y[k])  # (P,)
            m_next = self.beta * m + (1 - self.beta) * g
            y_next = descend(y, m_next, ctx.lr)  # theta^{t+1/2} = theta^t - gamma m
            if batches.active is None:
                y, m = y_next, m_next
            else:  # padding steps leave model and momentum as they are
                y, m = torch.where(batches.active[k], y_next, y), torch.where(batches.active[k], m_next, m)
        return {"delta": y - x}, {"m": m}

    def aggregate(self, x: torch.Tensor, server_state: Tensors, messages: Tensors, weights: torch.Tensor,
                  info: RoundInfo) -> tuple[torch.Tensor, Tensors]:
        raise TypeError("MomentumSGD is a node's local step: run it on flbook.decentralized.Decentralized")


def _rule(name: str, f: int):
    """The rule over a node's received set (..., R, P) -> (..., P); NNA is handled with its pivot apart."""
    return {"trimmed_mean": lambda x: robust.trimmed_mean(x, f), "geometric_median": robust.geometric_median,
            "median": robust.coordinate_median, "mean": robust.mean}[name]


@dataclass(frozen=True)
class NNAMixer:
    """Mixing with f Byzantine nodes: every honest node aggregates its received set (size n - f) with `rule`."""

    f: int = 0
    attack: str = "sign_flipping"  # one of MIXER_ATTACKS
    line_search: bool = True  # FOE / ALIE: pick the scale against this mixer (else the attack's default scale)
    rule: str = "nna"
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.f, bool) or not isinstance(self.f, int) or self.f < 0:
            raise ValueError(f"f must be an integer >= 0, got {self.f!r}")
        if self.rule not in MIXING_RULES:
            raise ValueError(f"rule must be one of {list(MIXING_RULES)}, got {self.rule!r}")
        if self.attack not in MIXER_ATTACKS:
            raise ValueError(f"attack must be one of {list(MIXER_ATTACKS)}, got {self.attack!r}")

    @property
    def poisons_data(self) -> bool:
        """Label flipping: the runner hands over every node's plain-SGD update on flipped labels (`MixInfo.flipped`)."""
        return self.attack == "label_flipping" and self.f > 0

    def byzantine(self, n: int) -> torch.Tensor:
        """The f Byzantine node ids among n, drawn by seed (sorted)."""
        if not 3 * self.f < n:
            raise ValueError(f"f must satisfy 3 f < n (each honest node keeps n - 2f > f of its n - f received "
                             f"models), got f={self.f}, n={n}")
        return torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))[:self.f].sort().values

    def counted(self, n: int) -> np.ndarray:
        """The nodes whose models are evaluated: the honest ones."""
        return np.setdiff1d(np.arange(n), self.byzantine(n).numpy())

    def _aggregate(self, received: torch.Tensor, pivots: torch.Tensor) -> torch.Tensor:
        """The rule over each received set (..., H, R, P) with pivots (..., H, P): (..., H, P)."""
        if self.rule == "nna":
            return robust.nearest_neighbour_average(received, self.f, pivots.unsqueeze(-2)).squeeze(-2)
        return _rule(self.rule, self.f)(received)

    def _attack(self, honest: torch.Tensor, flipped: torch.Tensor | None = None) -> torch.Tensor:
        """The Byzantine vectors (f, P) from the honest half-step models (H, P) (and, for label flipping, the honest
        nodes' plain-SGD updates on flipped labels (H, P))."""
        if self.attack == "label_flipping":
            if flipped is None:
                raise ValueError("label_flipping needs the honest nodes' updates on flipped labels (MixInfo.flipped); "
                                 "run the mixer on flbook.decentralized.Decentralized")
            return (honest.mean(0) + flipped.mean(0)).expand(self.f, -1)  # mean_h theta^{t+1/2} - gamma_t mean_h g~
        if self.attack == "sign_flipping" or not self.line_search:
            return Attack(self.attack)(honest, self.f)
        h = honest.shape[0]

        def honest_outputs(stack: torch.Tensor) -> torch.Tensor:  # (S, H + f, P) -> mean of honest outputs (S, P)
            full = stack.unsqueeze(-3).expand(*stack.shape[:-2], h, *stack.shape[-2:])  # (S, H, H + f, P)
            return self._aggregate(full, stack[..., :h, :]).mean(-2)

        return Attack(self.attack, rule=honest_outputs)(honest, self.f)

    def __call__(self, X: torch.Tensor, W: torch.Tensor, info) -> torch.Tensor:
        n, p = X.shape
        bad = self.byzantine(n).to(X.device)
        good = torch.as_tensor(self.counted(n), device=X.device)
        honest = X[good]  # (H, P) theta^{t+1/2}
        h = honest.shape[0]
        g = torch.Generator().manual_seed(int(info.rng.integers(2**62)))
        keys = torch.rand(h, h, generator=g).fill_diagonal_(-1.0)  # own model first, then a random order
        chosen = keys.argsort(dim=1)[:, :h - self.f].to(X.device)  # (H, n_h - f): own + n_h - f - 1 others
        received = honest[chosen]  # (H, n_h - f, P)
        if self.f:
            flipped = getattr(info, "flipped", None)
            b = self._attack(honest, None if flipped is None else flipped[good]).to(X.dtype)  # (f, P), reaches all
            received = torch.cat([received, b.expand(h, self.f, p)], dim=1)  # (H, n - f, P)
        out = X.clone()
        out[good] = self._aggregate(received, honest)
        if len(bad):
            out[bad] = X[bad]
        return out

    def bytes_sent(self, W: torch.Tensor, n_params: int, dtype: torch.dtype) -> int:
        """Each honest node receives n - f - 1 models (one per sender, Byzantine included)."""
        n = W.shape[0]
        return (n - self.f) * (n - self.f - 1) * n_params * torch.tensor([], dtype=dtype).element_size()

    def __str__(self) -> str:
        search = " (line search)" if self.line_search and self.attack in ("foe", "alie") else ""
        return f"{self.rule} mixing, f={self.f}" + (f", {self.attack}{search}" if self.f else "")
