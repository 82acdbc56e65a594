"""Sharpness: SGD and SAM learners for a classifier, and two flatness proxies of a trained model.

SAM (Foret et al., ICLR 2021) minimises max_{||e|| <= rho} L(w + e) by one ascent step, e = rho g / ||g||, then a
descent step with the gradient taken at w + e: two forward-backward passes per step. The proxies of flatness are
the top eigenvalue of the training-loss Hessian (power iteration on Hessian-vector products) and the mean loss
increase under random weight perturbations of a given relative norm. Used by chapter 73 (SAF) and by its
comparison to chapter 51 (DFedSAM), where SAM's ascent step runs on every client.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from . import validation as V


class SGDLearner:
    """A classifier trained by SGD with momentum and weight decay on `loss` (cross-entropy here; SAF adds to it)."""

    def __init__(self, model: nn.Module, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4):
        self.model = model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay,
                                         foreach=True)  # one call per step for all tensors, not one per tensor
        self.forwards = self.steps = 0  # forward passes through a model (student or teacher) and steps so far

    def loss(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, epoch: int) -> torch.Tensor:
        self.forwards += 1
        return F.cross_entropy(self.model(x), y)

    def step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, epoch: int) -> float:
        self.steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(x, y, index, epoch)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        with torch.no_grad():
            logits = self.model(x)  # (N, C)
        return {"test_acc": float((logits.argmax(1) == y).float().mean()),
                "test_loss": float(F.cross_entropy(logits, y))}

    def final(self, dataset) -> dict[str, float]:
        """The top Hessian eigenvalue of the training loss, and the forward passes per step taken."""
        return {"hessian_top": top_hessian_eigenvalue(self.model, dataset.x_train, dataset.y_train),
                "forwards_per_step": self.forwards / max(1, self.steps)}


class SAMLearner(SGDLearner):
    """SAM: ascend to w + rho g/||g||, take the gradient there, step from w with the base optimiser."""

    def __init__(self, model: nn.Module, lr: float, rho: float = 0.05, **base):
        super().__init__(model, lr, **base)
        self.rho = V.positive("rho", rho)

    def step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, epoch: int) -> float:
        self.steps += 1
        params = list(self.model.parameters())
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(x, y, index, epoch)
        grads = torch.autograd.grad(loss, params)
        norm = torch.sqrt(sum((g * g).sum() for g in grads)) + 1e-12
        ascent = [self.rho * g / norm for g in grads]  # e = rho g / ||g||
        with torch.no_grad():
            for p, e in zip(params, ascent):
                p.add_(e)
        self.loss(x, y, index, epoch).backward()  # gradient at w + e
        with torch.no_grad():
            for p, e in zip(params, ascent):
                p.sub_(e)
        self.optimizer.step()
        return float(loss.detach())


def top_hessian_eigenvalue(model: nn.Module, x: torch.Tensor, y: torch.Tensor, iterations: int = 20,
                           seed: int = 0) -> float:
    """The largest eigenvalue of the Hessian of the mean cross-entropy on (x, y), by `iterations` power steps."""
    params = list(model.parameters())
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    generator = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=generator).to(p) for p in params]
    eigenvalue = 0.0
    for _ in range(V.integer("iterations", iterations, 1)):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)  # H v
        eigenvalue = float(sum((a * b).sum() for a, b in zip(hv, v)))  # Rayleigh quotient v^T H v
        v = [h.detach() for h in hv]
    return eigenvalue


def perturbed_loss_increase(model: nn.Module, x: torch.Tensor, y: torch.Tensor, radius: float = 0.05,
                            samples: int = 50, seed: int = 0) -> float:
    """Mean of L(w + e) - L(w) over random e whose norm per weight tensor is `radius` times that tensor's norm."""
    radius, samples = V.positive("radius", radius), V.integer("samples", samples, 1)
    generator = torch.Generator().manual_seed(seed)
    params = list(model.parameters())
    with torch.no_grad():
        base = float(F.cross_entropy(model(x), y))
        saved = [p.clone() for p in params]
        increases = []
        for _ in range(samples):
            for p, w in zip(params, saved):
                e = torch.randn(p.shape, generator=generator).to(p)
                p.copy_(w + radius * w.norm() * e / e.norm())
            increases.append(float(F.cross_entropy(model(x), y)) - base)
        for p, w in zip(params, saved):
            p.copy_(w)
    return sum(increases) / samples
