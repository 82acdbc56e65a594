"""Where tensors live and how many CPU threads torch uses."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch


def _parse(value: str | torch.device, name: str) -> torch.device:
    """The torch device `value` names (`name` says where it came from), refusing one this machine does not have."""
    try:
        parsed = torch.device(value)
    except RuntimeError as err:
        raise ValueError(f"{name} must name a torch device such as 'cpu' or 'cuda:0', got {value!r}") from err
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name}={value!r} but CUDA is not available on this machine; use 'cpu'")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ValueError(f"{name}={value!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if parsed.type not in ("cpu", "cuda", "mps", "meta") or (parsed.type == "mps" and not torch.backends.mps.is_available()):
        raise ValueError(f"{name}={value!r} is not available here; use 'cpu' or 'cuda'")
    return parsed


def default_device() -> torch.device:
    """The device to train on: `FLBOOK_DEVICE` if set, else CUDA when available, else CPU."""
    name = os.environ.get("FLBOOK_DEVICE", "").strip()
    if name:
        return _parse(name, "FLBOOK_DEVICE")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`None` means `default_device()`; else a device name such as 'cpu' or 'cuda:0' that this machine has."""
    if device is None:
        return default_device()
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a device name such as 'cpu' or 'cuda:0', or None, got {device!r}")
    return _parse(device, "device")


@contextlib.contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """Run a block with `n` intra-op CPU threads (None: leave torch's setting alone).

    Tiny federated models do many small matrix products; on a 2-core machine extra intra-op threads only
    add synchronisation, so the federation picks a count per model size (see `Federation`)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
