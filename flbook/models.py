"""Models used functionally: one flat parameter vector per client, called through `functional_call`.

Algorithms never touch `nn.Module` copies. A client's model is a vector `theta` of shape (P,); many clients
are a matrix (M, P). `FlatModel` turns a vector back into named tensors (views, no copies) so the same code
runs for one client or, under `torch.func.vmap`, for a whole cohort.
"""
from __future__ import annotations

import copy
import math
import threading

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from . import validation as V


def log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """log softmax over the classes of (B, C) logits, computed along the batch axis of the transposed view.

    PyTorch's CPU kernel for a short last axis handles one row at a time: for 10 classes it runs about 8x slower
    than the kernel that vectorizes across rows (1248 x 10 floats: 217 vs 26 us on one thread), which made it the
    largest single cost of a logistic-regression step. The values agree to float rounding."""
    if logits.dim() != 2:
        return logits.log_softmax(-1)
    return logits.t().log_softmax(0).t()  # (B, C)


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of (B, C) logits against labels (B,): F.cross_entropy through the faster `log_softmax`."""
    return F.nll_loss(log_softmax(logits), y)


def is_perceptron(module: nn.Module) -> bool:
    """True for Sequential(Flatten, Linear, ReLU, Linear, ..., ReLU, Linear) with biases: `mlp`, `logistic`."""
    layers = list(module.children()) if isinstance(module, nn.Sequential) else []
    pattern = [nn.Flatten] + [nn.Linear, nn.ReLU] * (len(layers) // 2 - 1) + [nn.Linear]
    return (len(layers) == len(pattern) and all(type(m) is kind for m, kind in zip(layers, pattern))
            and (layers[0].start_dim, layers[0].end_dim) == (1, -1)
            and all(m.bias is not None for m in layers if isinstance(m, nn.Linear)))


class FlatModel:
    """A module's architecture plus the map between its named parameters and one flat vector."""

    def __init__(self, module: nn.Module, kind: str):
        if any(True for _ in module.buffers()):
            raise ValueError("FlatModel supports modules without buffers (use GroupNorm, not BatchNorm)")
        self._module = module
        self._owner = threading.get_ident()
        self._copies: dict[int, nn.Module] = {}  # thread id -> that thread's copy of the architecture
        self.kind = kind
        named = list(module.named_parameters())
        self.names = [name for name, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.numels = [p.numel() for _, p in named]
        self.n_params = sum(self.numels)
        # Flatten, Linear, ReLU, ..., Linear: called layer by layer (the same ops as the module, without the cost of
        # functional_call, which swaps the module's parameters on every call)
        self._linears = ([n for n, m in module.named_children() if isinstance(m, nn.Linear)]
                         if is_perceptron(module) else None)
        self._activations: int | None = None

    @property
    def module(self) -> nn.Module:
        """The architecture. `functional_call` swaps a module's parameters in place while it runs, so a thread other
        than the one that built the model (an executor's chunk worker) gets a copy of its own."""
        thread = threading.get_ident()
        if thread == self._owner:
            return self._module
        if thread not in self._copies:
            self._copies[thread] = copy.deepcopy(self._module)
        return self._copies[thread]

    def activations_per_sample(self, sample: torch.Tensor) -> int:
        """Floats of intermediate outputs for one input sample (measured once with forward hooks).

        Executors use it to size chunks of clients that fit in memory (or, on a CPU, in cache)."""
        if self._activations is None:
            sizes: list[int] = []
            hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel()))
                     for m in self.module.modules() if not list(m.children())]
            with torch.no_grad():
                self.module(sample[None])
            for hook in hooks:
                hook.remove()
            self._activations = sum(sizes)
        return self._activations

    def init(self, seed: int = 0, device: torch.device | str = "cpu") -> torch.Tensor:
        """A fresh initial parameter vector (the module's default init, seeded)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for layer in self.module.modules():
                if layer is not self.module and hasattr(layer, "reset_parameters"):
                    layer.reset_parameters()
            theta = torch.cat([p.detach().reshape(-1) for p in self.module.parameters()])
        return theta.to(device)

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named parameter views of a flat vector (P,)."""
        chunks = torch.split(theta, self.numels)
        return {name: c.view(shape) for name, c, shape in zip(self.names, chunks, self.shapes)}

    def __call__(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits of the model with parameters `theta` on inputs `x` (B, *input_shape) -> (B, classes)."""
        params = self.unflatten(theta)
        if self._linears is None:
            return functional_call(self.module, params, (x,))
        h = x.flatten(1)  # (B, D)
        for i, name in enumerate(self._linears):
            h = F.linear(h, params[f"{name}.weight"], params[f"{name}.bias"])  # (B, out_l)
            h = h.relu() if i + 1 < len(self._linears) else h
        return h

    def to(self, device: torch.device | str) -> "FlatModel":
        """Move the architecture's (unused) parameters to `device`, so `functional_call` sees one device."""
        self._module.to(device)
        self._copies.clear()
        return self

    def __repr__(self) -> str:
        return f"FlatModel({self.kind}, {self.n_params:,} parameters)"


def logistic(n_features: int, n_classes: int) -> FlatModel:
    """Multinomial logistic regression: softmax(W x + b), a convex baseline."""
    n_features, n_classes = V.integer("n_features", n_features, 1), V.integer("n_classes", n_classes, 1)
    return FlatModel(nn.Sequential(nn.Flatten(), nn.Linear(n_features, n_classes)), "logistic")


def mlp(n_features: int, n_classes: int, hidden: tuple[int, ...] = (200, 200)) -> FlatModel:
    """A ReLU multilayer perceptron (McMahan et al.'s 2NN is hidden=(200, 200) on MNIST)."""
    n_features, n_classes = V.integer("n_features", n_features, 1), V.integer("n_classes", n_classes, 1)
    if not hidden or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden):
        raise ValueError(f"hidden must be a non-empty tuple of positive widths, got {hidden}")
    layers: list[nn.Module] = [nn.Flatten()]
    widths = (n_features, *hidden)
    for w_in, w_out in zip(widths, widths[1:]):
        layers += [nn.Linear(w_in, w_out), nn.ReLU()]
    layers.append(nn.Linear(widths[-1], n_classes))
    return FlatModel(nn.Sequential(*layers), "mlp")


def cnn(input_shape: tuple[int, ...], n_classes: int, channels: tuple[int, int] = (16, 32), groups: int = 4) -> FlatModel:
    """A small CNN for (C, H, W) images: two conv-GroupNorm-ReLU-pool blocks and a linear head.

    GroupNorm, not BatchNorm: batch statistics are per-client buffers that federated averaging breaks."""
    if len(input_shape) != 3:
        raise ValueError(f"cnn needs image inputs of shape (C, H, W), got input_shape={input_shape}")
    c_in, height, width = input_shape
    n_classes = V.integer("n_classes", n_classes, 1)
    if height < 4 or width < 4:
        raise ValueError(f"cnn needs images of at least 4x4 pixels (two 2x2 poolings), got input_shape={input_shape}")
    c1, c2 = channels
    body = nn.Sequential(
        nn.Conv2d(c_in, c1, 3, padding=1), nn.GroupNorm(groups, c1), nn.ReLU(), nn.MaxPool2d(2),  # (c1, H/2, W/2)
        nn.Conv2d(c1, c2, 3, padding=1), nn.GroupNorm(groups, c2), nn.ReLU(), nn.MaxPool2d(2),  # (c2, H/4, W/4)
        nn.Flatten(),
    )
    flat = c2 * (height // 4) * (width // 4)
    return FlatModel(nn.Sequential(body, nn.Linear(flat, n_classes)), "cnn")


MODELS = ("logistic", "mlp", "cnn")


def make_model(name: str, input_shape: tuple[int, ...], n_classes: int, **kwargs) -> FlatModel:
    """Build a model by name for data of `input_shape` with `n_classes` classes."""
    if name == "logistic":
        return logistic(math.prod(input_shape), n_classes)
    if name == "mlp":
        return mlp(math.prod(input_shape), n_classes, **kwargs)
    if name == "cnn":
        return cnn(tuple(input_shape), n_classes, **kwargs)
    raise ValueError(f"model must be one of {MODELS}, got {name!r}")
