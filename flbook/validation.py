"""Argument checks for every public entry point: each error names the parameter, the valid range and the value.

    >>> positive("alpha", float("nan"))
    Traceback (most recent call last):
    ...
    ValueError: alpha must be a finite number > 0, got nan

Wrong types raise `TypeError`, wrong values `ValueError`. Each helper returns the value as a plain Python
number (or an int64 array), so callers store what they checked.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Iterable

import numpy as np
import torch

SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit seed
MAX_SAMPLES_DRAWN = 10**8  # sample ids one round (or exploration) may draw: 800 MB of int64 indices


def _show(value: Any) -> str:
    """The value as an error message quotes it: numbers plainly, anything else by repr."""
    return str(value) if isinstance(value, numbers.Number) and not isinstance(value, bool) else repr(value)


def _interval(lo: float, hi: float, lo_inclusive: bool, hi_inclusive: bool) -> str:
    """'in [0, 1)', 'in [-100, inf]', 'a finite number > 0', 'a finite number': the valid range in words."""
    if (lo > -math.inf or lo_inclusive) and (hi < math.inf or hi_inclusive):
        return f"in {'[' if lo_inclusive else '('}{lo:g}, {hi:g}{']' if hi_inclusive else ')'}"
    if lo > -math.inf or lo_inclusive:
        return f"a finite number {'>=' if lo_inclusive else '>'} {lo:g}"
    if hi < math.inf or hi_inclusive:
        return f"a finite number {'<=' if hi_inclusive else '<'} {hi:g}"
    return "a finite number"


def real(name: str, value: Any) -> float:
    """`value` as a float; a TypeError unless it is a real number (bool and strings are not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {_show(value)} ({type(value).__name__})")
    return float(value)


def in_range(name: str, value: Any, lo: float = -math.inf, hi: float = math.inf, *, lo_inclusive: bool | None = None,
             hi_inclusive: bool | None = None) -> float:
    """A real number between lo and hi. An end is inclusive when finite, exclusive when infinite, unless told
    otherwise (so `in_range("snr_db", v, -100, math.inf, hi_inclusive=True)` admits inf). NaN never passes."""
    v = real(name, value)
    lo_inclusive = lo > -math.inf if lo_inclusive is None else lo_inclusive
    hi_inclusive = hi < math.inf if hi_inclusive is None else hi_inclusive
    inside = (v >= lo if lo_inclusive else v > lo) and (v <= hi if hi_inclusive else v < hi)
    if not inside:
        raise ValueError(f"{name} must be {_interval(lo, hi, lo_inclusive, hi_inclusive)}, got {_show(value)}")
    return v


def finite(name: str, value: Any) -> float:
    """A finite real number."""
    return in_range(name, value)


def positive(name: str, value: Any) -> float:
    """A finite real number > 0."""
    return in_range(name, value, 0.0, lo_inclusive=False)


def non_negative(name: str, value: Any) -> float:
    """A finite real number >= 0."""
    return in_range(name, value, 0.0)


def probability(name: str, value: Any, *, zero: bool = True, one: bool = True) -> float:
    """A probability in [0, 1]; `zero=False` / `one=False` exclude that end."""
    return in_range(name, value, 0.0, 1.0, lo_inclusive=zero, hi_inclusive=one)


def integer(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    """An integer in [lo, hi] (None: unbounded); NumPy integers and integral floats pass, bool and 2.5 do not."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be an integer, got {_show(value)} ({type(value).__name__})")
    if not isinstance(value, numbers.Integral) and not (math.isfinite(value) and float(value).is_integer()):
        raise ValueError(f"{name} must be an integer, got {_show(value)}")
    v = int(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        bound = (f"in [{lo}, {hi}]" if lo is not None and hi is not None else f">= {lo}" if lo is not None
                 else f"<= {hi}")
        raise ValueError(f"{name} must be an integer {bound}, got {_show(value)}")
    return v


def choice(name: str, value: Any, options: Iterable[Any]) -> Any:
    """One of `options` (compared with ==)."""
    options = tuple(options)
    try:
        known = bool(value in options)
    except (TypeError, RuntimeError):  # unhashable or tensor-valued comparisons
        known = False
    if not known:
        raise ValueError(f"{name} must be one of {options}, got {_show(value)}")
    return value


def seed(value: Any, name: str = "seed", hi: int = SEED_MAX) -> int:
    """A seed: an integer in [0, hi] (NumPy integers pass), as a Python int."""
    return integer(name, value, 0, hi)


def index_array(name: str, value: Any, n: int) -> np.ndarray:
    """A 1-D array of integer indices in [0, n), as int64; boolean masks and float arrays are refused."""
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of indices, got shape {array.shape}")
    if array.dtype.kind not in "iu" and not (array.size == 0 and array.dtype.kind == "f"):
        kind = "a boolean mask" if array.dtype.kind == "b" else f"dtype {array.dtype}"
        raise TypeError(f"{name} must hold integer indices (use np.flatnonzero for a mask), got {kind}")
    if array.size and (array.min() < 0 or array.max() >= n):
        raise ValueError(f"{name} must hold indices in [0, {n}), got values in [{array.min()}, {array.max()}]")
    return array.astype(np.int64)


def finite_values(name: str, values: torch.Tensor | np.ndarray, chunk: int = 2**22) -> None:
    """Every entry finite: else a ValueError that counts the NaN and inf entries and names the first.

    Checked in chunks of `chunk` entries, so a large dataset costs no temporary copy of its own size."""
    flat = torch.as_tensor(values).reshape(-1)
    if not flat.is_floating_point():
        return
    for start in range(0, len(flat), chunk):
        if not torch.isfinite(flat[start:start + chunk]).all():
            bad = ~torch.isfinite(flat[start:start + chunk])
            first = start + int(bad.nonzero()[0])
            index = tuple(int(i) for i in np.unravel_index(first, tuple(torch.as_tensor(values).shape)))
            count = sum(int((~torch.isfinite(flat[i:i + chunk])).sum()) for i in range(start, len(flat), chunk))
            raise ValueError(f"{name} must hold only finite values, got {count} NaN or inf entries "
                             f"(the first at index {index[0] if len(index) == 1 else index}: {flat[first].item()})")
