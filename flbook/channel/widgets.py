"""Widgets for the channel: a compression control (method and level) any chapter's panel can include, and the
run and plot functions of the communication chapters' panels.

    >>> controls = {**standard_controls(rounds=20), **compression_controls("qsgd")}
    >>> panel = control_panel(run=compressed_run(), controls=controls, plot=bytes_figure)
"""
from __future__ import annotations

from typing import Mapping

import ipywidgets as W
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from ..algorithms import BASELINES, Algorithm, FedAvg
from ..models import FlatModel
from ..plots import learning_curves
from ..widgets import DEFAULTS, Run, federation_from
from .compression import (COMPRESSORS, FEDZIP_ENCODERS, CompressedChannel, Compressor, compare_channels, fedzip,
                          kmeans, make_compressor, top_k)

NO_LEVEL = ("-",)  # the level slider's only choice when the method has no level


# ---------------------------------------------------------------------------------------------- controls
def _style() -> dict:
    """Keyword arguments every control gets: its own layout (a shared one would resize or hide all at once)."""
    return {"style": {"description_width": "110px"}, "layout": W.Layout(width="auto")}


def _show_levels(method: W.Dropdown, level: W.SelectionSlider) -> None:
    """Give the level slider the chosen method's levels, meaning and default."""
    entry = COMPRESSORS[method.value]
    level.options = NO_LEVEL if entry.default is None else entry.levels
    level.value = NO_LEVEL[0] if entry.default is None else entry.default
    level.description = entry.level_name or "level"
    level.disabled = entry.default is None


def compression_controls(method: str = "fedzip", level: float | int | None = None) -> dict[str, W.Widget]:
    """A compression method dropdown and a level slider whose choices and meaning follow the method."""
    if method not in COMPRESSORS:
        raise ValueError(f"method must be one of {tuple(COMPRESSORS)}, got {method!r}")
    chooser = W.Dropdown(options=tuple(COMPRESSORS), value=method, description="compression", **_style())
    slider = W.SelectionSlider(options=NO_LEVEL, description="level", continuous_update=False, **_style())
    chooser.observe(lambda _change: _show_levels(chooser, slider), names="value")
    _show_levels(chooser, slider)
    if level is not None:
        if level not in COMPRESSORS[method].levels:
            raise ValueError(f"level must be one of {COMPRESSORS[method].levels} for {method}, got {level}")
        slider.value = level
    return {"compression": chooser, "level": slider}


def compressor_from(values: Mapping[str, object]) -> Compressor:
    """The compressor that the "compression" and "level" values describe (none when absent)."""
    method = str(values.get("compression", "none"))
    if method not in COMPRESSORS:
        raise ValueError(f"compression must be one of {tuple(COMPRESSORS)}, got {method!r}")
    return make_compressor(method, None if COMPRESSORS[method].default is None else values.get("level"))


def compression_channel_from(values: Mapping[str, object], model: FlatModel) -> CompressedChannel:
    """An uplink-compressing channel for `model`'s layers, as the compression controls describe.

    It can be the `base` of a noisy link (`flbook.channel.channel_from(values, base=...)`)."""
    return CompressedChannel(compressor_from(values), layers=model)


def fedzip_controls(z: float = 0.1, clusters: int = 3, encoder: str = "huffman") -> dict[str, W.Widget]:
    """FEDZIP's knobs: the fraction z of weights kept, the k-means clusters and the symbol encoder."""
    return {
        "z": W.SelectionSlider(options=COMPRESSORS["fedzip"].levels, value=z, description="z (kept)",
                               continuous_update=False, **_style()),
        "clusters": W.IntSlider(value=clusters, min=2, max=16, description="clusters k", continuous_update=False,
                                **_style()),
        "encoder": W.Dropdown(options=tuple(FEDZIP_ENCODERS), value=encoder, description="encoder", **_style()),
    }


# ------------------------------------------------------------------------------------------- runs, plots
def compressed_run(algorithms: Mapping[str, Algorithm] | None = None, *, reference: bool = True,
                   progress: bool = True) -> Run:
    """A `run` for `control_panel`: the selected algorithms over the chosen compressor's uplink.

    With `reference`, each also runs uncompressed, so the panel shows what compression costs in accuracy
    and saves in bytes. Default algorithms: `BASELINES`."""
    table = dict(algorithms) if algorithms is not None else {name: cls() for name, cls in BASELINES.items()}

    def run(values: dict) -> pd.DataFrame:
        chosen = tuple(values.get("algorithms", table))
        unknown = [name for name in chosen if name not in table]
        if not chosen or unknown:
            raise ValueError(f"algorithms must be a non-empty selection of {list(table)}, got {list(chosen)}")
        fed = federation_from(values)
        compressor = compressor_from(values)
        runs = {}
        for name in chosen:
            if reference or compressor.lossless:
                runs[name] = (table[name], CompressedChannel(layers=fed.model))
            if not compressor.lossless:
                runs[f"{name} + {compressor}"] = (table[name], CompressedChannel(compressor, layers=fed.model))
        return compare_channels(fed, runs, int(values.get("rounds", DEFAULTS["rounds"])), progress=progress,
                                on_divergence="stop")

    return run


def fedzip_runs(z: float, clusters: int, encoder: str,
                model: FlatModel) -> dict[str, tuple[Algorithm, CompressedChannel]]:
    """FEDZIP's comparison: FedAvg uncompressed, with plain top-z, with plain k-means, and with FEDZIP."""
    compressors = [Compressor(label="none"), top_k(z), kmeans(clusters), fedzip(z, clusters, encoder)]
    return {("FedAvg" if c.lossless else f"FedAvg + {c}"): (FedAvg(), CompressedChannel(c, layers=model))
            for c in compressors}


def fedzip_run(progress: bool = True) -> Run:
    """A `run` for the FEDZIP chapter's panel: `fedzip_runs` at the panel's z, clusters and encoder."""

    def run(values: dict) -> pd.DataFrame:
        fed = federation_from(values)
        runs = fedzip_runs(float(values["z"]), int(values["clusters"]), str(values["encoder"]), fed.model)
        return compare_channels(fed, runs, int(values.get("rounds", DEFAULTS["rounds"])), progress=progress,
                                on_divergence="stop")

    return run


def budget_figure(history: pd.DataFrame) -> Figure:
    """Test accuracy against the cumulative bytes sent up (left) and up plus down (right), on log axes."""
    fig, (up, total) = plt.subplots(1, 2, figsize=(10.0, 3.5), sharey=True, layout="constrained")
    trained = history[history["round"] > 0]
    learning_curves(trained, x="bytes_up", ax=up)
    learning_curves(trained.assign(bytes_total=trained.bytes_up + trained.bytes_down), x="bytes_total", ax=total)
    for ax in (up, total):
        ax.set_xscale("log")
    up.get_legend().remove()  # one legend, where the curves leave room: bottom right
    total.legend(loc="lower right", fontsize="small")
    return fig


def bytes_figure(history: pd.DataFrame) -> Figure:
    """Test accuracy per round (left) and against the cumulative uplink bytes, on a log axis (right)."""
    fig, (by_round, by_bytes) = plt.subplots(1, 2, figsize=(10.0, 3.5), sharey=True, layout="constrained")
    learning_curves(history, ax=by_round)
    learning_curves(history[history["round"] > 0], x="bytes_up", ax=by_bytes)
    by_bytes.set_xscale("log")
    by_bytes.get_legend().remove()  # one legend, on the left
    return fig
