"""Chapter 30: FEDZIP (top-z sparsification, k-means quantization, Huffman coding) on FedAvg's uplink.

The panel runs four uplinks on one federation: uncompressed, plain top-z, plain k-means and FEDZIP, with or
without error feedback, and plots accuracy against the bytes sent up.
"""
from __future__ import annotations

from typing import Mapping

import pandas as pd
from matplotlib.figure import Figure

from ..algorithms import FedAvg
from ..algorithms.base import Algorithm
from ..channel import COMPRESSORS, CompressedChannel, Compressor, fedzip, kmeans, top_k
from ..channel.compression import FEDZIP_ENCODERS
from ..models import FlatModel
from ..plots import bytes_figure
from ..widgets import federation_from, knob, standard_controls

DEFAULTS: dict[str, object] = {"alpha": 0.5, "n_clients": 10, "lr": 0.3, "rounds": 30,
                               "z": 0.1, "clusters": 3, "encoder": "huffman", "error_feedback": False}


def runs(z: float, clusters: int, encoder: str, model: FlatModel,
         error_feedback: bool = False) -> dict[str, tuple[Algorithm, CompressedChannel]]:
    """FEDZIP's comparison: FedAvg uncompressed, with plain top-z, with plain k-means, and with FEDZIP."""
    compressors = [Compressor(label="none"), top_k(z), kmeans(clusters), fedzip(z, clusters, encoder)]
    suffix = " + EF" if error_feedback else ""
    return {("FedAvg" if c.lossless else f"FedAvg + {c}{suffix}"):
            (FedAvg(), CompressedChannel(c, layers=model, error_feedback=error_feedback and not c.lossless))
            for c in compressors}


def run(values: Mapping[str, object], progress: bool = True) -> pd.DataFrame:
    """`runs` at the panel's z, clusters, encoder and error feedback, on the federation the values describe."""
    v = {**DEFAULTS, **values}
    fed = federation_from(v)
    table = runs(float(v["z"]), int(v["clusters"]), str(v["encoder"]), fed.model, bool(v["error_feedback"]))
    return fed.compare(table, int(v["rounds"]), progress=progress, on_divergence="stop")


def figure(history: pd.DataFrame) -> Figure:
    """Test accuracy per round and against the cumulative uplink bytes."""
    return bytes_figure(history)


def controls(**overrides: object) -> dict:
    """The federation's knobs (the panel always runs the four uplinks), FEDZIP's z, clusters, encoder, and error
    feedback."""
    v = {**DEFAULTS, **overrides}
    own = ("z", "clusters", "encoder", "error_feedback")
    shared = standard_controls(**{k: val for k, val in v.items() if k not in own})
    del shared["algorithms"]
    return {**shared,
            "z": knob("SelectionSlider", v["z"], "z (kept)", options=COMPRESSORS["fedzip"].levels,
                      continuous_update=False),
            "clusters": knob("IntSlider", v["clusters"], "clusters k", min=2, max=16, continuous_update=False),
            "encoder": knob("Dropdown", v["encoder"], "encoder", options=tuple(FEDZIP_ENCODERS)),
            "error_feedback": knob("Checkbox", v["error_feedback"], "error feedback")}
