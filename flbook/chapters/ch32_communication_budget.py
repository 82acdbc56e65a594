"""Chapter 32: every compressor on one task, and the bytes each baseline costs.

The panel runs the selected algorithms over the chosen compressor's uplink (with or without error feedback)
and, for reference, uncompressed, and plots accuracy against the bytes sent.
"""
from __future__ import annotations

from typing import Mapping

import pandas as pd
from matplotlib.figure import Figure

from ..algorithms import BASELINES
from ..channel import CompressedChannel
from ..plots import budget_figure
from ..widgets import chosen, compression_channel_from, compression_controls, compressor_from, federation_from, \
    standard_controls

DEFAULTS: dict[str, object] = {"alpha": 0.5, "n_clients": 10, "lr": 0.2, "rounds": 30,  # SCAFFOLD diverges at 0.3
                               "algorithms": ("FedAvg", "SCAFFOLD"), "compression": "qsgd", "level": 4,
                               "error_feedback": False}


def run(values: Mapping[str, object], progress: bool = True) -> pd.DataFrame:
    """The selected algorithms over the chosen compressor's uplink, and each also uncompressed."""
    v = {**DEFAULTS, **values}
    fed = federation_from(v)
    compressor = compressor_from(v)
    table = {}
    for name in chosen(v, tuple(BASELINES)):
        table[name] = (BASELINES[name](), CompressedChannel(layers=fed.model))
        if not compressor.lossless:
            suffix = " + EF" if v["error_feedback"] else ""
            table[f"{name} + {compressor}{suffix}"] = (BASELINES[name](), compression_channel_from(v, fed.model))
    return fed.compare(table, int(v["rounds"]), progress=progress, on_divergence="stop")


def figure(history: pd.DataFrame) -> Figure:
    """Test accuracy against the cumulative bytes sent up, and up plus down."""
    return budget_figure(history)


def controls(**overrides: object) -> dict:
    """The federation's knobs, a compression method with its level, and error feedback."""
    v = {**DEFAULTS, **overrides}
    own = ("compression", "level", "error_feedback")
    shared = standard_controls(**{k: val for k, val in v.items() if k not in own})
    return {**shared, **compression_controls(v["compression"], v["level"], v["error_feedback"])}
