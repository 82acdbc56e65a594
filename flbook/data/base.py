"""The `Dataset` container every loader returns: train/test tensors plus the metadata models need."""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flbook import validation as V


@dataclass(eq=False)
class Dataset:
    """Train and test tensors of one dataset, with its name, classes, input shape and natural clients."""

    name: str
    x_train: torch.Tensor  # (n_train, *input_shape) float32
    y_train: torch.Tensor  # (n_train,) int64
    x_test: torch.Tensor  # (n_test, *input_shape) float32
    y_test: torch.Tensor  # (n_test,) int64
    n_classes: int
    input_shape: tuple[int, ...]
    client_indices: list[np.ndarray] | None = None  # a natural partition of x_train, when the data has one

    def __post_init__(self) -> None:
        """Check shapes, dtypes, labels in [0, n_classes) and finite inputs once, where the data is made."""
        self.input_shape = tuple(V.integer("input_shape entries", d, 1) for d in self.input_shape)
        self.n_classes = V.integer("n_classes", self.n_classes, 1)
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
                raise TypeError(f"x_{split} and y_{split} must be torch tensors, got {type(x).__name__} "
                                f"and {type(y).__name__}")
            if tuple(x.shape[1:]) != self.input_shape:
                raise ValueError(f"x_{split} must have shape (n, *{self.input_shape}), got {tuple(x.shape)}")
            if y.shape != (x.shape[0],):
                raise ValueError(f"y_{split} must have shape ({x.shape[0]},), got {tuple(y.shape)}")
            if not x.is_floating_point():
                raise TypeError(f"x_{split} must be a floating-point tensor, got {x.dtype}")
            if y.dtype != torch.int64:
                raise TypeError(f"y_{split} must hold int64 class ids (use y.long()), got {y.dtype}")
            if y.device.type == "meta":  # shapes only: no values to check
                continue
            if len(y) and not (0 <= int(y.min()) and int(y.max()) < self.n_classes):
                raise ValueError(f"y_{split} must hold class ids in [0, {self.n_classes}) (n_classes={self.n_classes}), "
                                 f"got labels in [{int(y.min())}, {int(y.max())}]")
            V.finite_values(f"x_{split}", x)

    def to(self, device: str | torch.device) -> Dataset:
        """A copy with all four tensors moved to `device` (client indices stay NumPy arrays)."""
        moved = {f: getattr(self, f).to(device) for f in ("x_train", "y_train", "x_test", "y_test")}
        return dataclasses.replace(self, **moved)

    @property
    def n_features(self) -> int:
        """Number of input features: the product of `input_shape`."""
        return math.prod(self.input_shape)

    @property
    def device(self) -> torch.device:
        """The device the tensors live on."""
        return self.x_train.device

    def __repr__(self) -> str:
        clients = "" if self.client_indices is None else f", clients={len(self.client_indices)}"
        return (f"Dataset({self.name!r}, train={len(self.y_train)}, test={len(self.y_test)}, "
                f"classes={self.n_classes}, input_shape={self.input_shape}{clients}, device={self.device})")


def data_root(root: str | Path | None = None) -> Path:
    """Where dataset files live: `root` if given, else `$FLBOOK_DATA`, else the checkout's `data/` folder
    (so notebooks find the same files whatever their working directory), else `./data`."""
    if root is not None:
        return Path(root)
    if os.environ.get("FLBOOK_DATA"):
        return Path(os.environ["FLBOOK_DATA"])
    checkout = Path(__file__).resolve().parents[2] / "data"
    return checkout if checkout.is_dir() else Path("data")
