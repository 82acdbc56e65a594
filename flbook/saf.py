"""SAF and MESA (Du, Zhou, Feng, Tan & Zhou, *Sharpness-Aware Training for Free*, NeurIPS 2022).

A sharp minimum shows up as a sudden drop of the training loss along the trajectory. SAF penalises the change of
the network's outputs on each training sample between now and E~ epochs ago, with a temperature-softened KL
divergence; the past outputs were recorded in earlier epochs' ordinary forward passes, so the step costs what the
base optimiser's does (official code SAF_train.py, train_one_epoch):

    Z[idx, e mod (E~+1)] <- z                                       logits of this epoch, per training sample
    L = CE(z, y) + lambda tau^2 mean_i KL(softmax(z_old_i / tau) || softmax(z_i / tau))     for E_start < e < E_end
    z_old = Z[idx, (e - E~) mod (E~+1)]                             the same samples' logits E~ epochs ago

MESA (MESA_train.py) takes z_old from an exponential moving average of the weights instead (one extra forward
pass, no per-sample memory): theta_ema <- d theta_ema + (1 - d) theta after every step.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.nn import functional as F

from . import validation as V
from .sharpness import SGDLearner


def trajectory_loss(z: torch.Tensor, z_old: torch.Tensor, tau: float) -> torch.Tensor:
    """tau^2 * mean over samples of KL(softmax(z_old / tau) || softmax(z / tau)); z_old is a fixed target."""
    target = F.softmax(z_old.detach() / tau, dim=1)  # (B, C)
    return tau**2 * F.kl_div(F.log_softmax(z / tau, dim=1), target, reduction="batchmean")


class LogitMemory:
    """The ring buffer Z of SAF: (E~+1) logit vectors per training sample, N (E~+1) C floats in all."""

    def __init__(self, n_samples: int, lookback: int, n_classes: int):
        self.lookback = V.integer("lookback", lookback, 0)
        self.logits = torch.zeros(n_samples, self.lookback + 1, n_classes)  # (N, E~+1, C)

    @property
    def floats(self) -> int:
        return self.logits.numel()

    def write(self, index: torch.Tensor, epoch: int, z: torch.Tensor) -> None:
        self.logits[index, epoch % (self.lookback + 1)] = z.detach().to(self.logits)

    def read(self, index: torch.Tensor, epoch: int) -> torch.Tensor:
        """The logits written for samples `index` at epoch `epoch - lookback`."""
        return self.logits[index, (epoch - self.lookback) % (self.lookback + 1)]  # (B, C)


class SAFLearner(SGDLearner):
    """The base optimiser on CE + lambda * trajectory loss against the logits of `lookback` epochs ago."""

    def __init__(self, model: nn.Module, lr: float, n_samples: int, n_classes: int, *, lam: float = 1.0,
                 tau: float = 5.0, lookback: int = 5, start: int = 3, stop: float = math.inf, **base):
        super().__init__(model, lr, **base)
        self.lam, self.tau = V.non_negative("lam", lam), V.positive("tau", tau)
        self.start, self.stop = V.integer("start", start, 0), stop
        self.memory = LogitMemory(n_samples, lookback, n_classes)

    def loss(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, epoch: int) -> torch.Tensor:
        self.forwards += 1
        z = self.model(x)  # (B, C)
        self.memory.write(index, epoch, z)
        loss = F.cross_entropy(z, y)
        if self.start < epoch < self.stop and self.lam > 0:
            loss = loss + self.lam * trajectory_loss(z, self.memory.read(index, epoch), self.tau)
        return loss


class MESALearner(SGDLearner):
    """The base optimiser on CE + lambda * trajectory loss against an EMA teacher (decay `decay`)."""

    def __init__(self, model: nn.Module, lr: float, *, lam: float = 0.8, tau: float = 5.0, decay: float = 0.99,
                 start: int = 3, **base):
        super().__init__(model, lr, **base)
        self.lam, self.tau = V.non_negative("lam", lam), V.positive("tau", tau)
        self.decay, self.start = V.in_range("decay", decay, 0.0, 1.0), V.integer("start", start, 0)
        self.teacher = copy.deepcopy(model).requires_grad_(False)

    def loss(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, epoch: int) -> torch.Tensor:
        self.forwards += 1
        z = self.model(x)  # (B, C)
        loss = F.cross_entropy(z, y)
        if epoch > self.start and self.lam > 0:
            self.forwards += 1
            with torch.no_grad():
                z_old = self.teacher(x)  # (B, C)
            loss = loss + self.lam * trajectory_loss(z, z_old, self.tau)
        return loss

    def step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, epoch: int) -> float:
        loss = super().step(x, y, index, epoch)
        with torch.no_grad():  # theta_ema <- d theta_ema + (1 - d) theta
            for t, p in zip(self.teacher.parameters(), self.model.parameters()):
                t.mul_(self.decay).add_(p, alpha=1 - self.decay)
        return loss
