"""Small helpers shared by chapters: seeding and showing the source that runs."""
from __future__ import annotations

import inspect
import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (flbook itself only uses explicit generators)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def show_source(obj: object) -> None:
    """Display the source code of a function or class, highlighted in a notebook, plain elsewhere."""
    source = inspect.getsource(obj)
    try:
        from IPython.display import Markdown, display
    except ImportError:  # pragma: no cover - IPython ships with the notebook extra
        print(source)
        return
    display(Markdown(f"```python\n{source}```"))
