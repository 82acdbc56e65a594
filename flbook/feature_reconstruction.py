"""Local learning on vision transformers by feature reconstruction (Pathak, Zhang & Samaras, arXiv:2212.14215).

InfoPro-style local learning gives each gradient-isolated module the loss lambda1 * reconstruction + lambda2 * CE,
so that a module stays informative about its input while it becomes discriminative. InfoPro reconstructs the
*image*; for transformers the paper reconstructs each module's own *input features* instead (the detached output of
the previous module). No code is published; this follows the abstract and InfoPro's formulation (UNCONFIRMED
details, chosen here: a linear decoder per token, mean squared error, lambda1 from 1 to 0.1 and lambda2 from 0.1 to 1
across the local modules, and for the first module, whose input is the image, its patches as the target):

    h_in = sg[h_{k-1}],  h_k = M_k(h_in)
    L_k = lambda1_k * || D_k(h_k) - sg[target] ||^2  +  lambda2_k * CE(c_k(h_k), y)
    target = h_in (feature reconstruction)  |  the image's patches (image reconstruction)  |  none (CE only)
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from . import validation as V
from .local_learning import LocalObjective, ModuleWise
from .transformer import VisionTransformer

TARGETS = ("none", "image", "feature")


class Readout(nn.Module):
    """A ViT's final LayerNorm, pooling (class token or mean) and linear head, (B, T, D) -> (B, classes)."""

    def __init__(self, norm: nn.Module, head: nn.Module, pool: str):
        super().__init__()
        self.norm, self.head, self.pool = norm, head, pool

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self.norm(h)  # (B, T, D)
        return self.head(h[:, 0] if self.pool == "cls" else h.mean(1))  # (B, classes)


class ReconstructionObjective(LocalObjective):
    """lambda1 * MSE(decoder(h), detached target) + lambda2 * CE of an auxiliary readout (InfoPro's form)."""

    def __init__(self, dim: int, n_classes: int, target: str, patches, patch_dim: int, lam1: float, lam2: float,
                 first: bool):
        super().__init__()
        self.target, self.patches, self.first = V.choice("target", target, TARGETS), patches, first
        self.lam1, self.lam2 = V.non_negative("lam1", lam1), V.non_negative("lam2", lam2)
        self.classifier = Readout(nn.LayerNorm(dim), nn.Linear(dim, n_classes), "cls")
        image = target == "image" or first
        self.decoder = nn.Linear(dim, patch_dim if image else dim) if target != "none" else None

    def reconstruction_target(self, h_in: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """What the decoder must produce, detached: the image's patches (B, N, p^2) or the input tokens (B, T, D)."""
        if self.target == "image" or self.first:
            return self.patches(x).detach()
        return h_in.detach()

    def reconstruction(self, h: torch.Tensor) -> torch.Tensor:
        """The decoder's output, shaped like `reconstruction_target` (patch tokens only for an image target)."""
        out = self.decoder(h)  # (B, T, out)
        return out[:, -self.patches_count(h):] if self.target == "image" or self.first else out

    @staticmethod
    def patches_count(h: torch.Tensor) -> int:
        return h.shape[1] - 1  # every token but the class token

    def forward(self, h: torch.Tensor, h_in: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = self.lam2 * F.cross_entropy(self.classifier(h), y)
        if self.decoder is not None and self.lam1 > 0:
            loss = loss + self.lam1 * F.mse_loss(self.reconstruction(h), self.reconstruction_target(h_in, x))
        return loss


def local_vit(vit: VisionTransformer, n_modules: int, target: str = "feature", *,
              lam1: tuple[float, float] = (1.0, 0.1), lam2: tuple[float, float] = (0.1, 1.0)) -> ModuleWise:
    """The ViT's blocks cut into `n_modules` gradient-isolated modules of equal depth (the patch embedding joins
    the first), each local module with a `ReconstructionObjective`; lambda1 and lambda2 move linearly across them."""
    depth = len(vit.blocks)
    n_modules = V.integer("n_modules", n_modules, 1, depth)
    if depth % n_modules:
        raise ValueError(f"n_modules must divide the number of blocks ({depth}), got {n_modules}")
    per = depth // n_modules
    blocks = [nn.Sequential(*([vit.tokens] if k == 0 else []), *vit.blocks[k * per:(k + 1) * per])
              for k in range(n_modules)]
    dim, n_classes = vit.head.in_features, vit.head.out_features
    patch_dim = vit.tokens.embed.in_features
    span = max(1, n_modules - 2)
    weights = [(lam1[0] + (lam1[1] - lam1[0]) * k / span, lam2[0] + (lam2[1] - lam2[0]) * k / span)
               for k in range(n_modules - 1)]
    objectives = [ReconstructionObjective(dim, n_classes, target, vit.tokens.patches, patch_dim, l1, l2, k == 0)
                  for k, (l1, l2) in enumerate(weights)]
    return ModuleWise(blocks, objectives, Readout(vit.norm, vit.head, vit.pool))
