"""Split learning: a vision transformer cut into a client head, a server body and a client tail (U-shaped).

The client runs the head (patch tokens, prompts, the first blocks) and the tail (the last blocks, final norm,
classifier), so raw data and labels never leave it; the server runs the heavy body. One training step of the
U-shaped protocol exchanges four messages (Vepakomma et al. 2018; Thapa et al., SplitFed, 2022):

    client -> server   smashed activations  h = head(x)            (B, T, D)
    server -> client   body output          z = body(h)            (B, T, D)
    client -> server   gradient             dL/dz (tail backward)  (B, T, D)
    server -> client   gradient             dL/dh (body backward)  (B, T, D), only when the head has trainable weights

Each party's backward is a vector-Jacobian product on the cotangent it received, so the protocol's gradient
is the monolithic one (tests/test_split.py) and the whole step maps over stacked clients with `torch.func.vmap`.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch.func import functional_call, grad_and_value, vjp

from . import validation as V
from .models import FlatModel
from .transformer import VisionTransformer

PARTS = ("prompts", "head", "body", "tail")
BYTES_PER_FLOAT = 4  # float32 messages
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class SplitModel:
    """A ViT `FlatModel` cut after `head_blocks` blocks (client head) and before the last `tail_blocks` (client tail).

    Parameter parts: "prompts" (soft prompts, client), "head" (patch tokens and the head's blocks, client),
    "body" (server), "tail" (the tail's blocks, final LayerNorm and classifier, client)."""

    def __init__(self, model: FlatModel, head_blocks: int = 1, tail_blocks: int = 0):
        if not isinstance(model.module, VisionTransformer):
            raise TypeError(f"SplitModel cuts a transformer.vit model, got {model}")
        depth = len(model.module.blocks)
        self.model = model
        self.head_blocks = V.integer("head_blocks", head_blocks, 0, depth - 1)
        self.tail_blocks = V.integer("tail_blocks", tail_blocks, 0, depth - 1 - self.head_blocks)  # body keeps >= 1
        self.body_end = depth - self.tail_blocks
        self.part_of = {name: self._part(name) for name in model.names}
        self.n_tokens, self.dim = model.module.tokens.n_tokens, model.module.norm.normalized_shape[0]
        prompts = model.module.tokens.prompts
        self.n_prompts = 0 if prompts is None else prompts.shape[1]

    def _part(self, name: str) -> str:
        if name == "tokens.prompts":
            return "prompts"
        if name.startswith("tokens."):
            return "head"
        if name.startswith("blocks."):
            block = int(name.split(".")[1])
            return "head" if block < self.head_blocks else "body" if block < self.body_end else "tail"
        return "tail"

    def mask(self, parts: Sequence[str]) -> torch.Tensor:
        """(P,) bool: the coordinates of the flat parameter vector that belong to `parts`."""
        unknown = set(parts) - set(PARTS)
        if unknown:
            raise ValueError(f"parts must be among {PARTS}, got {sorted(unknown)}")
        return torch.cat([torch.full((n,), self.part_of[name] in parts, dtype=torch.bool)
                          for name, n in zip(self.model.names, self.model.numels)])

    def n_params(self, parts: Sequence[str]) -> int:
        """Number of parameters in `parts`."""
        return int(self.mask(parts).sum())

    def head(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Client: tokens (with prompts) and the first blocks, (B, *input) -> smashed activations (B, T, D)."""
        return functional_call(self.model.module, params, (x,), {"stop": self.head_blocks, "classify": False})

    def body(self, params: dict[str, torch.Tensor], h: torch.Tensor) -> torch.Tensor:
        """Server: the middle blocks, (B, T, D) -> (B, T, D)."""
        kwargs = {"start": self.head_blocks, "stop": self.body_end, "embed": False, "classify": False}
        return functional_call(self.model.module, params, (h,), kwargs)

    def tail(self, params: dict[str, torch.Tensor], z: torch.Tensor) -> torch.Tensor:
        """Client: the last blocks, final norm and classifier, (B, T, D) -> logits (B, classes)."""
        return functional_call(self.model.module, params, (z,), {"start": self.body_end, "embed": False})

    def local(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """The client-only path tail(head(x)) that bypasses the server's body (SFPrompt's local loss): (B, classes)."""
        return self.tail(params, self.head(params, x))

    def message_bytes(self, n_samples: int | torch.Tensor, head_trainable: bool) -> dict[str, int | torch.Tensor]:
        """Exact bytes of the U-shaped protocol's messages for `n_samples` split-trained samples, by direction."""
        per_sample = self.n_tokens * self.dim * BYTES_PER_FLOAT  # one (T, D) float32 tensor
        up = 2 * per_sample * n_samples  # h and dL/dz
        down = (2 if head_trainable else 1) * per_sample * n_samples  # z, and dL/dh when the head learns
        return {"up": up, "down": down}


class Trainable:
    """The trainable coordinates of a flat vector and the frozen rest: params(w) = frozen with w written in."""

    def __init__(self, split: SplitModel, parts: Sequence[str], frozen: torch.Tensor):
        self.split, self.parts = split, tuple(parts)
        self.index = torch.nonzero(split.mask(parts)).squeeze(1)  # (P_t,)
        self.frozen = split.model.unflatten(frozen.detach())  # name -> tensor: the pre-trained values
        self.names = [n for n in split.model.names if split.part_of[n] in self.parts]
        self.shapes = [self.frozen[n].shape for n in self.names]
        self.numels = [self.frozen[n].numel() for n in self.names]
        self.head_trainable = any(split.part_of[n] in ("prompts", "head") for n in self.names)  # needs dL/dh

    def params(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named tensors: trainable ones from `w` (P_t,), every other one frozen (no gradient flows to it)."""
        params = dict(self.frozen)
        params.update({n: c.view(s) for n, c, s in zip(self.names, torch.split(w, self.numels), self.shapes)})
        return params

    def full(self, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits of the whole model run in one place (federated fine-tuning on the client): (B, classes)."""
        return functional_call(self.split.model.module, self.params(w), (x,))

    def local(self, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits of the client-only path tail(head(x)) that bypasses the server (SFPrompt's local loss): (B, classes)."""
        return self.split.local(self.params(w), x)

    def split_step(self, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, loss_fn: Loss
                   ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """One step of the U-shaped protocol (`u_shaped_step`)."""
        return u_shaped_step(self, w, x, y, loss_fn)

    def message_bytes(self, n_samples: int | torch.Tensor) -> dict[str, int | torch.Tensor]:
        """Bytes of the protocol's messages for `n_samples` split-trained samples, by direction."""
        return self.split.message_bytes(n_samples, self.head_trainable)

    def __repr__(self) -> str:
        s = self.split
        return (f"Trainable(parts={self.parts}, prompts={s.n_prompts}, head_blocks={s.head_blocks}, "
                f"tail_blocks={s.tail_blocks}, {len(self.index)} of {s.model.n_params} parameters)")


def u_shaped_step(trainable: Trainable, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, loss_fn: Loss
                  ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """One step of the U-shaped protocol: (loss, gradient of the trainable vector (P_t,), the four messages).

    The body is frozen (it is the server's pre-trained model). Each party differentiates only its own piece."""
    split, frozen = trainable.split, trainable.frozen

    def tail_loss(v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return loss_fn(split.tail(trainable.params(v), a), y)
    if not trainable.head_trainable:  # nothing to learn before the cut: plain forward passes, no dL/dh message
        h = split.head(frozen, x)  # client: h (B, T, D) -> server
        z = split.body(frozen, h)  # server: z (B, T, D) -> client
        (g, dz), loss = grad_and_value(tail_loss, argnums=(0, 1))(w, z)  # client: dL/dz (B, T, D) -> server
        return loss, g, {"activations_up": h, "activations_down": z, "gradients_up": dz}
    h, head_vjp = vjp(lambda v: split.head(trainable.params(v), x), w)  # client: h (B, T, D) -> server
    z, body_vjp = vjp(lambda a: split.body(frozen, a), h)  # server: z (B, T, D) -> client
    (g_tail, dz), loss = grad_and_value(tail_loss, argnums=(0, 1))(w, z)  # client: dL/dz (B, T, D) -> server
    (dh,) = body_vjp(dz)  # server: dL/dh (B, T, D) -> client
    (g_head,) = head_vjp(dh)  # client: backward through the head into prompts (and head weights)
    messages = {"activations_up": h, "activations_down": z, "gradients_up": dz, "gradients_down": dh}
    return loss, g_head + g_tail, messages  # (), (P_t,), messages


def messages_bytes(messages: dict[str, torch.Tensor]) -> dict[str, int]:
    """Bytes of the exchanged tensors by direction (numel x element size)."""
    size = {k: v.numel() * v.element_size() for k, v in messages.items()}
    return {"up": sum(v for k, v in size.items() if k.endswith("_up")),
            "down": sum(v for k, v in size.items() if k.endswith("_down"))}
