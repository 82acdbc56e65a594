"""FRUGAL (Zmushko, Beznosikov, Takac & Horvath, ICML 2025): a state-full subspace and a state-free remainder.

Memory-efficient optimisers keep Adam's two moments for a low-dimensional part of each weight matrix only; GaLore
and BAdam then *discard* the gradient outside it. FRUGAL splits the gradient G of each projectable matrix into
G_in, inside a subspace re-chosen every T steps, updated by AdamW with state, and the remainder G_out, updated by
signSGD with no state, so the update stays full-rank (official code, frugal/proj_optimizer_templates.py):

    every T steps: choose the subspace (block, columns or SVD); reset its Adam moments
    block:   a rho-fraction of the projectable matrices is active: G_in = G there, G_out = G elsewhere
    columns: a rho-fraction of the columns I:                    G_in = G[:, I], G_out = G with G[:, I] = 0
    SVD:     P = top-r left singular vectors of G, r = rho min(m, n):   G_in = P^T G, G_out = G - P P^T G
    W <- W (1 - lr wd) + P(AdamUpdate(G_in)) - lr s_free sign(G_out)          (s_free = 0: GaLore / BAdam)

Non-projectable parameters (embeddings, norms, biases) always use AdamW.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from . import validation as V

PROJECTIONS = ("block", "column", "svd")
FREE_RULES = ("sign", "none")


class Subspace:
    """The state-full subspace of one matrix: `split(G) -> (G_in, G_out)` and `back(U_in)` into the matrix."""

    def __init__(self, kind: str, grad: torch.Tensor, rho: float, active: bool, generator: torch.Generator):
        self.kind, self.active, self.shape = kind, active, grad.shape
        if kind == "column":
            n = grad.shape[1]
            self.columns = torch.randperm(n, generator=generator)[:round(rho * n)].sort().values.to(grad.device)
        elif kind == "svd":
            rank = round(rho * min(grad.shape))
            self.basis = torch.linalg.svd(grad, full_matrices=False)[0][:, :rank]  # (m, r) orthonormal columns

    def split(self, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kind == "block":
            return (grad, torch.zeros_like(grad)) if self.active else (grad[:0], grad)
        if self.kind == "column":
            outside = grad.clone()
            outside[:, self.columns] = 0
            return grad[:, self.columns], outside  # (m, k), (m, n)
        inside = self.basis.T @ grad  # (r, n)
        return inside, grad - self.basis @ inside  # G_out = G - P P^T G

    def back(self, update: torch.Tensor) -> torch.Tensor:
        """The state-full update mapped back to the matrix's shape."""
        if self.kind == "block":
            return update if self.active else torch.zeros(self.shape, dtype=update.dtype, device=update.device)
        if self.kind == "column":
            full = torch.zeros(self.shape, dtype=update.dtype, device=update.device)
            full[:, self.columns] = update
            return full
        return self.basis @ update  # (m, n)


class FRUGAL(torch.optim.Optimizer):
    """AdamW on a rho-fraction subspace of each projectable matrix, signSGD (scaled by `free_scale`) on the rest."""

    def __init__(self, projectable: Iterable[nn.Parameter], others: Iterable[nn.Parameter], lr: float, *,
                 rho: float = 0.25, projection: str = "block", update_gap: int = 200, free: str = "sign",
                 free_scale: float = 1.0, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, reset: bool = True, seed: int = 0):
        V.choice("projection", projection, PROJECTIONS)
        V.choice("free", free, FREE_RULES)
        defaults = dict(lr=V.positive("lr", lr), betas=betas, eps=eps, weight_decay=weight_decay)
        super().__init__([{"params": list(projectable), "projectable": True},
                          {"params": list(others), "projectable": False}], defaults)
        self.rho, self.projection = V.in_range("rho", rho, 0.0, 1.0), projection
        self.update_gap, self.reset = V.integer("update_gap", update_gap, 1), reset
        self.free_scale = V.non_negative("free_scale", free_scale) if free == "sign" else 0.0
        self.generator = torch.Generator().manual_seed(V.seed(seed))
        self.steps = 0
        self.subspaces: dict[nn.Parameter, Subspace] = {}

    def _choose(self, params: list[nn.Parameter]) -> None:
        """New subspaces for every projectable matrix (block: which matrices are active), moments reset."""
        n_active = round(self.rho * len(params))
        active = set(torch.randperm(len(params), generator=self.generator)[:n_active].tolist())
        for i, p in enumerate(params):
            self.subspaces[p] = Subspace(self.projection, p.grad, self.rho, i in active, self.generator)
            if self.reset or p not in self.state:
                self.state[p] = {}

    @staticmethod
    def _adam(state: dict, grad: torch.Tensor, lr: float, betas: tuple[float, float], eps: float) -> torch.Tensor:
        """Adam's update for `grad` from (and into) `state`: -lr m_hat / (sqrt(v_hat) + eps)."""
        if "m" not in state or state["m"].shape != grad.shape:
            state.update(m=torch.zeros_like(grad), v=torch.zeros_like(grad), t=0)
        state["t"] += 1
        state["m"].mul_(betas[0]).add_(grad, alpha=1 - betas[0])
        state["v"].mul_(betas[1]).addcmul_(grad, grad, value=1 - betas[1])
        m_hat = state["m"] / (1 - betas[0] ** state["t"])
        v_hat = state["v"] / (1 - betas[1] ** state["t"])
        return -lr * m_hat / (v_hat.sqrt() + eps)

    @torch.no_grad()
    def step(self, closure=None) -> None:
        projectable, others = self.param_groups
        matrices = [p for p in projectable["params"] if p.grad is not None]
        if self.steps % self.update_gap == 0:
            self._choose(matrices)
        self.steps += 1
        lr, betas, eps, wd = (projectable[k] for k in ("lr", "betas", "eps", "weight_decay"))
        for p in matrices:
            subspace = self.subspaces[p]
            inside, outside = subspace.split(p.grad)
            update = subspace.back(self._adam(self.state[p], inside, lr, betas, eps)) if inside.numel() else 0.0
            p.mul_(1 - lr * wd).add_(update - lr * self.free_scale * outside.sign())  # state-full + state-free
        for p in others["params"]:
            if p.grad is not None:
                p.mul_(1 - lr * wd).add_(self._adam(self.state.setdefault(p, {}), p.grad, lr, betas, eps))

    def state_floats(self) -> int:
        """Floats of optimiser state held now (Adam's two moments wherever they are kept)."""
        return sum(s["m"].numel() + s["v"].numel() for s in self.state.values() if "m" in s)


def projectable_matrices(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(weights of the Linear layers inside the transformer blocks, every other parameter), as FRUGAL splits them."""
    blocks = getattr(model, "blocks", [])
    matrices = [m.weight for block in blocks for m in block.modules() if isinstance(m, nn.Linear)]
    chosen = {id(p) for p in matrices}
    return matrices, [p for p in model.parameters() if id(p) not in chosen]

