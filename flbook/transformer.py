"""Tiny transformers used functionally: a vision transformer (ViT) and a causal language model (GPT-style).

Both are plain `nn.Module`s wrapped in `FlatModel`, like the other models, so a client's (or worker's) model is
one flat vector and a cohort is a stacked matrix mapped over with `torch.func.vmap`. The attention is written
out, softmax(Q K^T / sqrt(d) + mask) V (Vaswani et al. 2017, eq. 1), instead of calling
`scaled_dot_product_attention`: the CPU's fused kernel has no batching rule, so under `vmap` it would fall back
to a loop over clients. The modules hold no buffers (the causal mask is built on the fly) and no dropout.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from . import validation as V
from .models import FlatModel


class SelfAttention(nn.Module):
    """Multi-head self-attention, optionally causal, with the score matrix computed by hand."""

    def __init__(self, dim: int, heads: int, causal: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim must be a multiple of heads, got dim={dim}, heads={heads}")
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, t, d = h.shape  # (B, T, D)
        q, k, v = self.qkv(h).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, d)
        scores = q @ k.transpose(-2, -1) / math.sqrt(d // self.heads)  # (B, H, T, T)
        if self.causal:  # position t attends to positions <= t only
            future = torch.ones(t, t, dtype=torch.bool, device=h.device).triu(1)  # (T, T)
            scores = scores.masked_fill(future, float("-inf"))  # (B, H, T, T)
        out = scores.softmax(-1) @ v  # (B, H, T, d)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))  # (B, T, D)


class Block(nn.Module):
    """A pre-norm transformer block: h + Attn(LN(h)), then h + MLP(LN(h))."""

    def __init__(self, dim: int, heads: int, mlp: int, causal: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, causal)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.attn(self.norm1(h))  # (B, T, D)
        return h + self.mlp(self.norm2(h))  # (B, T, D)


class PatchTokens(nn.Module):
    """Image (C, H, W) or signal (L,) -> patch tokens, linearly embedded, with a class token and position embeddings."""

    def __init__(self, input_shape: tuple[int, ...], patch: int, dim: int, cls_token: bool, prompts: int = 0):
        super().__init__()
        self.input_shape, self.patch = tuple(input_shape), patch
        if len(input_shape) == 3:
            c, height, width = input_shape
            if height % patch or width % patch:
                raise ValueError(f"patch must divide the image size, got patch={patch}, input_shape={input_shape}")
            n_patches, patch_dim = (height // patch) * (width // patch), c * patch * patch
        elif len(input_shape) == 1:
            if input_shape[0] % patch:
                raise ValueError(f"patch must divide the signal length, got patch={patch}, input_shape={input_shape}")
            n_patches, patch_dim = input_shape[0] // patch, patch
        else:
            raise ValueError(f"vit needs inputs of shape (C, H, W) or (L,), got input_shape={input_shape}")
        self.n_tokens = n_patches + int(cls_token)
        self.embed = nn.Linear(patch_dim, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim)) if cls_token else None
        self.pos = nn.Parameter(torch.zeros(1, self.n_tokens, dim))
        # soft prompts (VPT-shallow, Jia et al. 2022): L_p learned tokens after the class token, without positions
        self.prompts = nn.Parameter(torch.zeros(1, prompts, dim)) if prompts else None
        self.n_tokens += prompts
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Class token, position embeddings and prompts ~ N(0, 0.02^2), as in ViT; `embed` resets itself."""
        for p in (self.pos, self.cls, self.prompts):
            if p is not None:
                nn.init.normal_(p, std=0.02)

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """Non-overlapping patches, flattened: (B, C, H, W) -> (B, N, C p p) or (B, L) -> (B, N, p)."""
        p, b = self.patch, x.shape[0]
        if len(self.input_shape) == 1:
            return x.reshape(b, -1, p)  # (B, N, p)
        c, height, width = self.input_shape
        x = x.reshape(b, c, height // p, p, width // p, p)  # (B, C, H/p, p, W/p, p)
        return x.permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * p * p)  # (B, N, C p p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(self.patches(x))  # (B, N, D)
        if self.cls is not None:
            tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], 1)  # (B, 1 + N, D)
        tokens = tokens + self.pos  # (B, T0, D)
        if self.prompts is None:
            return tokens  # (B, T, D)
        first = int(self.cls is not None)
        prompts = self.prompts.expand(x.shape[0], -1, -1)  # (B, L_p, D)
        return torch.cat([tokens[:, :first], prompts, tokens[:, first:]], 1)  # (B, T = T0 + L_p, D)


class VisionTransformer(nn.Module):
    """ViT (Dosovitskiy et al. 2021): patch tokens -> pre-norm blocks -> final LayerNorm -> pooled linear head."""

    def __init__(self, input_shape: tuple[int, ...], n_classes: int, patch: int, dim: int, depth: int, heads: int,
                 mlp: int, pool: str, prompts: int = 0):
        super().__init__()
        self.pool = pool
        self.tokens = PatchTokens(input_shape, patch, dim, cls_token=pool == "cls", prompts=prompts)
        self.blocks = nn.ModuleList([Block(dim, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)

    def classify(self, h: torch.Tensor) -> torch.Tensor:
        """Final LayerNorm, pooling (class token or mean over tokens) and the linear head: (B, T, D) -> (B, classes)."""
        h = self.norm(h)  # (B, T, D)
        return self.head(h[:, 0] if self.pool == "cls" else h.mean(1))  # (B, classes)

    def forward(self, x: torch.Tensor, start: int = 0, stop: int | None = None, embed: bool = True,
                classify: bool = True) -> torch.Tensor:
        """The whole model by default; a piece of it for split learning: tokens (if `embed`), blocks[start:stop],
        then the classifier (if `classify`). Inputs are images, or tokens (B, T, D) when not `embed`."""
        h = self.tokens(x) if embed else x  # (B, T, D)
        for block in self.blocks[start:stop]:
            h = block(h)  # (B, T, D)
        return self.classify(h) if classify else h  # (B, classes) or (B, T, D)


class PositionEmbedding(nn.Module):
    """Learned position embeddings for up to `max_len` positions."""

    def __init__(self, max_len: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(max_len, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, t: int) -> torch.Tensor:
        return self.weight[:t]  # (T, D)


class TokenEmbedding(nn.Embedding):
    """Token embeddings ~ N(0, std^2): GPT-2's 0.02 keeps a tied head's initial logits near zero (loss ~ log V)."""

    def __init__(self, vocab: int, dim: int, std: float):
        self.std = std
        super().__init__(vocab, dim)

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=self.std)


class CausalLM(nn.Module):
    """A GPT-style language model: token + position embeddings, causal pre-norm blocks, LayerNorm, vocabulary head.

    Tokens arrive as a (B, T) tensor of ids, integer or float (a `Dataset` stores inputs as floats; ids below
    2^24 are exact). `readout="all"` gives next-token logits at every position, (B, T, V); `readout="last"` only
    at the last one, (B, V), so (context, next token) pairs form an ordinary classification `Dataset`.
    A tied head reuses the token embedding matrix as the output projection (Press & Wolf 2017). `embed_std`
    None keeps PyTorch's N(0, 1) token embeddings; a float draws them from N(0, embed_std^2)."""

    def __init__(self, vocab: int, max_len: int, dim: int, depth: int, heads: int, mlp: int, tied: bool,
                 readout: str, embed_std: float | None = None):
        super().__init__()
        self.readout, self.tied = readout, tied
        self.embed = nn.Embedding(vocab, dim) if embed_std is None else TokenEmbedding(vocab, dim, embed_std)
        self.pos = PositionEmbedding(max_len, dim)
        self.blocks = nn.ModuleList([Block(dim, heads, mlp, causal=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = None if tied else nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        if t > self.pos.weight.shape[0]:
            raise ValueError(f"sequences must be at most max_len={self.pos.weight.shape[0]} tokens, got {t}")
        h = self.embed(tokens.long()) + self.pos(t)  # (B, T, D)
        for block in self.blocks:
            h = block(h)  # (B, T, D)
        h = self.norm(h[:, -1] if self.readout == "last" else h)  # (B, D) or (B, T, D)
        return h @ self.embed.weight.t() if self.tied else self.head(h)  # (B, V) or (B, T, V)


def vit(input_shape: tuple[int, ...], n_classes: int, *, patch: int = 2, dim: int = 32, depth: int = 4, heads: int = 2,
        mlp: int = 64, pool: str = "cls", prompts: int = 0) -> FlatModel:
    """A tiny ViT; the defaults turn an 8x8 digit into 16 patches of 2x2, width 32, 4 blocks of 2 heads (~35k params).

    `prompts` > 0 adds that many soft prompt tokens at the input (parameters `tokens.prompts`, (1, L_p, D))."""
    prompts = V.integer("prompts", prompts, 0)
    n_classes = V.integer("n_classes", n_classes, 1)
    patch, dim, depth, heads, mlp = (V.integer(name, value, 1) for name, value in
                                     (("patch", patch), ("dim", dim), ("depth", depth), ("heads", heads), ("mlp", mlp)))
    V.choice("pool", pool, ("cls", "mean"))
    return FlatModel(VisionTransformer(tuple(input_shape), n_classes, patch, dim, depth, heads, mlp, pool, prompts), "vit")


def causal_lm(vocab: int, max_len: int, *, dim: int = 32, depth: int = 2, heads: int = 2, mlp: int = 64,
              tied: bool = True, readout: str = "all", embed_std: float | None = None) -> FlatModel:
    """A tiny causal language model over `vocab` tokens and contexts of up to `max_len` (defaults: 2 blocks, width 32).

    `embed_std`: the token embeddings' initial standard deviation (None: PyTorch's 1; 0.02 as in GPT-2)."""
    vocab, max_len = V.integer("vocab", vocab, 2), V.integer("max_len", max_len, 1)
    dim, depth, heads, mlp = (V.integer(name, value, 1) for name, value in
                              (("dim", dim), ("depth", depth), ("heads", heads), ("mlp", mlp)))
    V.choice("readout", readout, ("all", "last"))
    if embed_std is not None:
        V.positive("embed_std", embed_std)
    return FlatModel(CausalLM(vocab, max_len, dim, depth, heads, mlp, bool(tied), readout, embed_std), "causal_lm")


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting tokens[:, t+1] from logits[:, t]: logits (B, T, V), tokens (B, T) -> ()."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1).long())
