"""Chapter 32: every compressor on one task, and the bytes each baseline costs.

The byte counts are exact and need one round (or one update). The accuracy each compressor costs rests on the
experiment protocol: every uplink, the uncompressed one included, is a channel of its own (`protocol.compare_channels`)
on which FedAvg tunes its learning rate on a validation split, then runs on 3 seeds; a cost is the per-seed
difference to FedAvg uncompressed. The panel runs the selected algorithms over the chosen compressor's uplink (with or
without error feedback) and, for reference, uncompressed, and plots accuracy against the bytes sent.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import pandas as pd
from matplotlib.figure import Figure

from .. import protocol
from ..algorithms import BASELINES
from ..channel import CompressedChannel, Compressor, qsgd, top_k, uniform
from ..data import Dataset
from ..plots import budget_figure
from ..widgets import chosen, compression_channel_from, compression_controls, compressor_from, federation_from, \
    standard_controls

DEFAULTS: dict[str, object] = {"alpha": 0.5, "n_clients": 10, "lr": 0.2, "rounds": 30,  # SCAFFOLD diverges at 0.3
                               "algorithms": ("FedAvg", "SCAFFOLD"), "compression": "qsgd", "level": 4,
                               "error_feedback": False}
TASK: dict[str, object] = {"alpha": 0.5, "n_clients": 10, "local_steps": 5, "batch_size": 32, "model": "mlp"}
ROUNDS, TUNE_ROUNDS, LAST = 20, 10, 5  # rounds on the test set, rounds of tuning, the window of the last rounds
LRS: tuple[float, ...] = (0.2, 0.4, 0.8)  # every uplink's learning-rate grid, extended where the best is at an edge
NO_LOSS, MEMORY_GAIN = 0.01, 0.05  # "loses no accuracy": within one point; error feedback's gain: over five


def make_federation(**task: object) -> protocol.MakeFederation:
    """The chapter's task (`protocol.dirichlet_task`) over a lossless link that counts every byte."""
    return protocol.with_channel(protocol.dirichlet_task(**task), lambda fed: CompressedChannel(layers=fed.model))


def uplinks(sparse: float = 0.01) -> dict[str, tuple[Compressor | None, bool]]:
    """FedAvg's compared uplinks by display name: (uplink compressor or None, error feedback)."""
    table = {"FedAvg": (None, False)}
    for c, feedback in ((top_k(sparse), False), (top_k(sparse), True), (uniform(8), False), (qsgd(4), False)):
        table[f"FedAvg + {c}" + (" + EF" if feedback else "")] = (c, feedback)
    return table


def claim_list(sparse: float = 0.01) -> list[tuple[str, str, str, str, str, float]]:
    """(claim, paper, variant, baseline, kind, margin) for each accuracy claim on the uplinks of `uplinks`."""
    plain, memory = f"FedAvg + {top_k(sparse)}", f"FedAvg + {top_k(sparse)} + EF"
    return [
        ("QSGD: a few quantization levels keep full-precision accuracy", "Alistarh et al. 2017",
         f"FedAvg + {qsgd(4)}", "FedAvg", "within", NO_LOSS),
        ("Deep Compression: 8-bit values lose no accuracy", "Han et al. 2016",
         f"FedAvg + {uniform(8)}", "FedAvg", "within", NO_LOSS),
        (f"top-k({sparse:g}) without memory costs accuracy", "(Stich et al. 2018: why memory is needed)",
         plain, "FedAvg", "less", NO_LOSS),
        (f"top-k({sparse:g}) with memory loses no accuracy", "Stich et al. 2018: converges as fast as SGD",
         memory, "FedAvg", "within", NO_LOSS),
        ("the memory is what recovers it", "Stich et al. 2018", memory, plain, "greater", MEMORY_GAIN),
    ]


def accuracy_costs(dataset: Dataset, names: Sequence[str] | None = None, *, sparse: float = 0.01,
                   rounds: int = ROUNDS, tune_rounds: int = TUNE_ROUNDS, lrs: Sequence[float] = LRS,
                   seeds: Sequence[int] = protocol.SEEDS, task: Mapping[str, object] | None = None
                   ) -> tuple[protocol.Comparison, pd.DataFrame]:
    """FedAvg over the uplinks of `uplinks` (or those `names` picks) by the protocol: each uplink its own task,
    tuned on the same local-lr grid on a validation split (the server step stays 1: a compressor changes the
    channel, not the server's rule), then run on every seed; and the claims table on test accuracy over the last
    LAST rounds, per-seed differences. A claim whose two uplinks were not both run is left out."""
    make = make_federation(**{**TASK, **(task or {})})
    table = {k: v for k, v in uplinks(sparse).items() if names is None or k in names}
    links = {name: None if c is None else lambda fed, c=c, ef=ef: CompressedChannel(c, layers=fed.model,
                                                                                  error_feedback=ef)
             for name, (c, ef) in table.items()}
    result = protocol.compare_channels(dataset, make, links, rounds=rounds, tune_rounds=tune_rounds, lrs=lrs,
                                       seeds=seeds)
    return result, protocol.window_claims(result, claim_list(sparse), last=LAST)


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
