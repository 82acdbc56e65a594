"""Chapter 30: FEDZIP (top-z sparsification, k-means quantization, Huffman coding) on FedAvg's uplink.

The panel runs five uplinks on one federation: uncompressed, plain top-z, k-means with free centroids, k-means
with FEDZIP's zero centroid (a sparsifier by itself) and FEDZIP, with or without error feedback, and plots
accuracy against the bytes sent up. z is top-z's fraction, not the fraction that arrives non-zero: the zero
centroid may zero many more entries.
"""
from __future__ import annotations

from typing import Iterator, Mapping, Sequence

import pandas as pd
from matplotlib.figure import Figure

from .. import protocol
from ..algorithms import FedAvg
from ..algorithms.base import Algorithm
from ..channel import COMPRESSORS, CompressedChannel, Compressor, KMeans, fedzip, top_k
from ..channel.compression import FEDZIP_ENCODERS
from ..data import Dataset
from ..history import window_mean
from ..models import FlatModel
from ..plots import bytes_figure
from ..protocol import SEEDS
from ..widgets import federation_from, knob, standard_controls

DEFAULTS: dict[str, object] = {"alpha": 0.5, "n_clients": 10, "lr": 0.3, "rounds": 30,
                               "z": 0.1, "clusters": 3, "encoder": "huffman", "error_feedback": False}


def zeroing_kmeans(clusters: int) -> Compressor:
    """K-means with one centroid pinned at 0, as FEDZIP uses it, but without top-z: on heavy-tailed updates the
    zero centroid absorbs most small entries, so this quantizer is itself a (ternary, at k = 3) sparsifier."""
    return Compressor(quantizer=KMeans(clusters), label=f"k-means({clusters}) with a zero centroid")


def free_kmeans(clusters: int) -> Compressor:
    """K-means with every centroid free: a quantizer only, which zeroes nothing by design."""
    return Compressor(quantizer=KMeans(clusters, pin_zero=False), label=f"k-means({clusters}), no zero centroid")


def runs(z: float, clusters: int, encoder: str, model: FlatModel,
         error_feedback: bool = False) -> dict[str, tuple[Algorithm, CompressedChannel]]:
    """FEDZIP's comparison: FedAvg uncompressed, with plain top-z, with k-means alone (its zero centroid, which
    sparsifies by itself, pinned or not), and with FEDZIP (top-z, then k-means with a zero centroid)."""
    compressors = [Compressor(label="none"), top_k(z), free_kmeans(clusters), zeroing_kmeans(clusters),
                   fedzip(z, clusters, encoder)]
    suffix = " + EF" if error_feedback else ""
    return {("FedAvg" if c.lossless else f"FedAvg + {c}{suffix}"):
            (FedAvg(), CompressedChannel(c, layers=model, error_feedback=error_feedback and not c.lossless))
            for c in compressors}


TASK: dict[str, object] = {"alpha": 0.5, "n_clients": 10, "local_steps": 5, "batch_size": 32, "model": "mlp"}
ROUNDS, TUNE_ROUNDS, LAST = 20, 10, 5  # rounds on the test set, rounds of tuning, the window of the last rounds
LRS: tuple[float, ...] = (0.2, 0.4, 0.8)  # every uplink's learning-rate grid, extended where the best is at an edge
SMALL_COST = 0.02  # "close to uncompressed": within two points


def make_federation(**task: object) -> protocol.MakeFederation:
    """The chapter's task (`protocol.dirichlet_task`) over a lossless link that counts every byte."""
    return protocol.with_channel(protocol.dirichlet_task(**task), lambda fed: CompressedChannel(layers=fed.model))


def uplinks(z: float = 0.1, clusters: int = 3) -> dict[str, Compressor | None]:
    """The protocol's uplinks by display name: none, top-z, k-means with free centroids, and FEDZIP (Huffman; its
    encoders are lossless, so one trains for all of them). K-means with a zero centroid delivers what FEDZIP at
    z = 1 delivers."""
    compressors = [top_k(z), free_kmeans(clusters), fedzip(z, clusters)]
    return {"FedAvg": None, **{f"FedAvg + {c}": c for c in compressors}}


def claim_list(z: float = 0.1, clusters: int = 3) -> list[tuple]:
    """(claim, paper, variant, baseline, kind, margin) for each accuracy claim on the uplinks of `uplinks`."""
    zipped = f"FedAvg + {fedzip(z, clusters)}"
    free = f"FedAvg + {free_kmeans(clusters)}"
    return [
        (f"FEDZIP(z={z:g}): accuracy close to uncompressed FedAvg", "Malekijoo et al. 2021", zipped, "FedAvg",
         "within", SMALL_COST),
        (f"{clusters} clusters suffice: k-means alone, free centroids", "Malekijoo et al. 2021 (silhouette analysis)",
         free, "FedAvg", "within", SMALL_COST),
        (f"top-z({z:g}) alone: accuracy close to uncompressed", "(FEDZIP's first stage)", f"FedAvg + {top_k(z)}",
         "FedAvg", "within", SMALL_COST),
    ]


def accuracy_costs(dataset: Dataset, names: Sequence[str] | None = None, *, rounds: int = ROUNDS,
                   tune_rounds: int = TUNE_ROUNDS, lrs: Sequence[float] = LRS, seeds: Sequence[int] = SEEDS,
                   task: Mapping[str, object] | None = None) -> tuple[protocol.Comparison, pd.DataFrame]:
    """FedAvg over the uplinks of `uplinks` (or those `names` picks) by the protocol (`protocol.compare_channels`:
    each uplink tunes the local lr on the same grid on a validation split, then runs on every seed), and the claims
    table on test accuracy over the last LAST rounds, per-seed differences. Claims on absent uplinks are left out."""
    make = make_federation(**{**TASK, **(task or {})})
    links = {name: None if c is None else lambda fed, c=c: CompressedChannel(c, layers=fed.model)
             for name, c in uplinks().items() if names is None or name in names}
    result = protocol.compare_channels(dataset, make, links, rounds=rounds, tune_rounds=tune_rounds, lrs=lrs,
                                       seeds=seeds)
    return result, protocol.window_claims(result, claim_list(), last=LAST)


def stream(values: Mapping[str, object], progress: bool = True) -> Iterator[pd.DataFrame]:
    """`runs` at the panel's z, clusters, encoder and error feedback, on the federation the values describe: the
    history so far after each uplink, so the panel draws the first curve while the others train."""
    v = {**DEFAULTS, **values}
    fed = federation_from(v)
    table = runs(float(v["z"]), int(v["clusters"]), str(v["encoder"]), fed.model, bool(v["error_feedback"]))
    return fed.compare_each(table, int(v["rounds"]), progress=progress, on_divergence="stop")


def run(values: Mapping[str, object], progress: bool = True) -> pd.DataFrame:
    """The whole comparison of `stream`."""
    *_, history = stream(values, progress)
    return history


def error_feedback_gain(values: Mapping[str, object], seeds: Sequence[int] = SEEDS, last: int = 5) -> pd.Series:
    """Per seed: test accuracy (mean of the last `last` rounds) of FedAvg + top-z with error feedback minus without,
    at the values' z, on the federation the values describe (a fresh federation and memory per seed)."""
    v = {**DEFAULTS, **values}
    gains = {}
    for seed in seeds:
        fed = federation_from({**v, "seed": seed})
        tails = []
        for feedback in (True, False):
            fed.channel = CompressedChannel(top_k(float(v["z"])), layers=fed.model, error_feedback=feedback)
            history = fed.run(FedAvg(), int(v["rounds"]), progress=False, on_divergence="stop")
            tails.append(window_mean(history, "test_acc", last=last).mean)
        gains[seed] = tails[0] - tails[1]
    return pd.Series(gains, name="top-z + EF - top-z")


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
            "z": knob("SelectionSlider", v["z"], "top-z fraction", options=COMPRESSORS["fedzip"].levels,
                      continuous_update=False),
            "clusters": knob("IntSlider", v["clusters"], "clusters k", min=2, max=16, continuous_update=False),
            "encoder": knob("Dropdown", v["encoder"], "encoder", options=tuple(FEDZIP_ENCODERS)),
            "error_feedback": knob("Checkbox", v["error_feedback"], "error feedback")}
