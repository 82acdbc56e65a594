"""Controls for the chapters' panels, and the objects their values describe.

Every knob a panel shows is built here, in one style (`style()`, `knob()`): the federation's
(`standard_controls`), the baselines' (`baseline_controls`), participation, link noise and compression.
Each `*_from(values)` turns the controls' values into the object they describe (a federation, a channel, a
participation model), so a chapter's `run(values)` stays a few lines. The environment modules themselves
(participation, channel) expose plain parameters and know nothing of widgets.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Iterator, Mapping, Sequence

import ipywidgets as W
import numpy as np
import pandas as pd
import torch

from ..algorithms import BASELINES, Algorithm, FedAdam, FedAvg, FedAvgM, FedProx, Scaffold
from ..channel import Channel, NoisyChannel
from ..channel.compression import COMPRESSORS, CompressedChannel, Compressor, make_compressor
from ..channel.noise import LINKS
from ..data import DATASETS, Dataset, load
from ..federation import Federation
from ..models import MODELS, FlatModel
from ..participation import Bernoulli, two_groups
from ..partition import PARTITIONERS, partition
from .panel import Run

NATURAL = "natural"  # the partitioner choice that keeps a dataset's own client split (synthetic)
PARTITION_PARAMETER = {  # partitioner -> the keyword of the one parameter the panel exposes for it
    "dirichlet": "alpha",
    "pathological": "classes_per_client",
    "shards": "shards_per_client",
    "quantity_skew": "sigma",
}
DEFAULTS: dict[str, object] = {  # the foundation's reference task: FedAvg on digits, 20 Dirichlet(0.3) clients
    "dataset": "digits",
    "model": "mlp",
    "partitioner": "dirichlet",
    "alpha": 0.3,
    "classes_per_client": 2,
    "shards_per_client": 2,
    "sigma": 1.0,
    "n_clients": 20,
    "participation": 1.0,
    "local_steps": 5,
    "lr": 0.1,
    "rounds": 30,
    "algorithms": ("FedAvg",),
    "seed": 0,
    "device": "auto",
}
BASELINE_DEFAULTS: dict[str, float] = {  # the knobs of `baseline_controls`, at the algorithms' own defaults
    "mu": FedProx().mu,
    "momentum": FedAvgM().momentum,
    "fedadam_lr": FedAdam().server_lr,
}
FEDERATION_KEYS = ("local_steps", "local_epochs", "batch_size", "lr", "weight_decay", "participation", "seed")


# ------------------------------------------------------------------------------------------------- style
def style() -> dict:
    """Keyword arguments every control gets: a label column wide enough for the book's names, and its own
    layout (a shared layout object would resize or hide every control at once)."""
    return {"style": {"description_width": "110px"}, "layout": W.Layout(width="auto")}


def knob(kind: str, value: object, description: str, **options: object) -> W.Widget:
    """One control in the book's style: `kind` names an ipywidgets class ("IntSlider", "Dropdown", ...)."""
    return getattr(W, kind)(value=value, description=description, **style(), **options)


def task_controls(values: Mapping[str, object], steps: str = "K", min_rounds: int = 1) -> dict[str, W.Widget]:
    """The training task's knobs that chapters with their own runner share (peer-to-peer, robustness): Dirichlet
    alpha, local steps (named `steps` as the chapter's paper names them), learning rate, rounds and seed."""
    slider = {"continuous_update": False}
    return {"alpha": knob("FloatLogSlider", values["alpha"], "alpha (Dirichlet)", base=10, min=-2, max=2, step=0.1,
                          **slider),
            "local_steps": knob("IntSlider", values["local_steps"], f"local steps {steps}", min=1, max=50, **slider),
            "lr": knob("FloatLogSlider", values["lr"], "learning rate", base=10, min=-3, max=0, step=0.1, **slider),
            "rounds": knob("IntSlider", values["rounds"], "rounds", min=min_rounds, max=200, **slider),
            "seed": knob("BoundedIntText", values["seed"], "seed", min=0, max=2**31 - 1)}


def selection(options: Sequence[str], chosen: Sequence[str], description: str = "algorithms") -> W.SelectMultiple:
    """A multiple choice of the names a chapter compares."""
    return W.SelectMultiple(options=tuple(options), value=tuple(chosen), rows=min(6, max(2, len(options))),
                            description=description, **style())


def chosen(values: Mapping[str, object], names: Sequence[str], key: str = "algorithms") -> tuple[str, ...]:
    """The names selected in `values[key]` (all of `names` when absent); a clear error for an empty or unknown one."""
    picked = tuple(values.get(key, names))
    if not picked or any(name not in names for name in picked):
        raise ValueError(f"{key} must be a non-empty selection of {list(names)}, got {list(picked)}")
    return picked


# ---------------------------------------------------------------------------------------------- controls
def device_options() -> tuple[str, ...]:
    """Devices the panel offers: "auto" (FLBOOK_DEVICE, else CUDA if present, else CPU), "cpu", "cuda" if present."""
    return ("auto", "cpu", "cuda") if torch.cuda.is_available() else ("auto", "cpu")


def standard_controls(*, algorithm_options: Sequence[str] = tuple(BASELINES),
                      **defaults: object) -> dict[str, W.Widget]:
    """The federation's knobs as widgets, keyed like `federation_from`'s values; `defaults` override `DEFAULTS`.

    `algorithm_options` lists the names the "algorithms" selection offers (a chapter adds its own method)."""
    unknown = sorted(set(defaults) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"defaults must be among {sorted(DEFAULTS)}, got unknown {unknown}")
    v = {**DEFAULTS, **defaults}
    controls: dict[str, W.Widget] = {
        "dataset": W.Dropdown(options=DATASETS, value=v["dataset"], description="dataset", **style()),
        "model": W.Dropdown(options=MODELS, value=v["model"], description="model", **style()),
        "partitioner": W.Dropdown(options=(*PARTITIONERS, NATURAL), value=v["partitioner"],
                                  description="partitioner", **style()),
        "alpha": W.FloatLogSlider(value=v["alpha"], base=10, min=-2, max=2, step=0.1, readout_format=".3g",
                                  description="alpha (Dirichlet)", **style()),
        "classes_per_client": W.IntSlider(value=v["classes_per_client"], min=1, max=10, description="classes/client",
                                          **style()),
        "shards_per_client": W.IntSlider(value=v["shards_per_client"], min=1, max=10, description="shards/client",
                                         **style()),
        "sigma": W.FloatSlider(value=v["sigma"], min=0.0, max=3.0, step=0.1, description="sigma (sizes)", **style()),
        "n_clients": W.IntSlider(value=v["n_clients"], min=2, max=200, description="clients", **style()),
        "participation": W.FloatSlider(value=v["participation"], min=0.05, max=1.0, step=0.05,
                                       description="participation", **style()),
        "local_steps": W.IntSlider(value=v["local_steps"], min=1, max=50, description="local steps", **style()),
        "lr": W.FloatLogSlider(value=v["lr"], base=10, min=-3, max=0, step=0.1, readout_format=".3g",
                               description="learning rate", **style()),
        "rounds": W.IntSlider(value=v["rounds"], min=1, max=200, description="rounds", **style()),
        "algorithms": selection(algorithm_options, v["algorithms"]),
        "seed": W.BoundedIntText(value=v["seed"], min=0, max=2**31 - 1, description="seed", **style()),
        "device": W.Dropdown(options=device_options(), value=v["device"], description="device", **style()),
    }
    controls["partitioner"].observe(lambda _change: show_partition_parameter(controls), names="value")
    show_partition_parameter(controls)
    return controls


def show_partition_parameter(controls: Mapping[str, W.Widget]) -> None:
    """Show only the parameter control of the chosen partitioner (alpha for Dirichlet, ...); hide the others."""
    chosen = PARTITION_PARAMETER.get(controls["partitioner"].value)
    for key in PARTITION_PARAMETER.values():
        if key in controls:
            controls[key].layout.display = None if key == chosen else "none"


# ------------------------------------------------------------------------------------ values -> federation
@functools.lru_cache(maxsize=4)
def _dataset(name: str, n_clients: int | None = None) -> Dataset:
    """A dataset by name, loaded once per session; synthetic data is generated for `n_clients` clients."""
    return load(name) if n_clients is None else load(name, n_clients=n_clients)


def partition_from(values: Mapping[str, object], labels: torch.Tensor) -> list[np.ndarray]:
    """The partition the values describe: `partitioner` with its parameter, `n_clients` and `seed`."""
    name = values["partitioner"]
    if name not in PARTITIONERS:
        raise ValueError(f"partitioner must be one of {sorted(PARTITIONERS)}, got {name!r}")
    key = PARTITION_PARAMETER.get(name)
    params = {} if key is None else {key: values[key]}
    return partition(name, labels, int(values["n_clients"]), seed=int(values["seed"]), **params)


def federation_from(values: Mapping[str, object]) -> Federation:
    """Build the Federation that control values describe; missing keys take `DEFAULTS`, unknown keys are ignored.

    The dataset comes from `flbook.data.load`, the partition from `flbook.partition.partition` (or the
    dataset's own split when the partitioner is "natural"), the model by name (`model`, default "mlp");
    `seed` seeds the partition, the initial model, client sampling and minibatches."""
    v = {**DEFAULTS, **values}
    dataset = _dataset(v["dataset"], int(v["n_clients"]) if v["dataset"] == "synthetic" else None)
    parts = None if v["partitioner"] == NATURAL else partition_from(v, dataset.y_train)
    settings = {key: v[key] for key in FEDERATION_KEYS if key in v}
    device = None if v["device"] == "auto" else v["device"]
    return Federation(dataset, parts, v["model"], device=device, **settings)


def baseline_controls(**defaults: float) -> dict[str, W.Widget]:
    """Sliders for the baselines' main hyperparameters: FedProx's mu, FedAvgM's momentum and FedAdam's server lr."""
    unknown = sorted(set(defaults) - set(BASELINE_DEFAULTS))
    if unknown:
        raise ValueError(f"defaults must be among {sorted(BASELINE_DEFAULTS)}, got unknown {unknown}")
    v = {**BASELINE_DEFAULTS, **defaults}
    return {
        "mu": knob("FloatLogSlider", v["mu"], "FedProx mu", base=10, min=-4, max=0, step=0.25, readout_format=".3g"),
        "momentum": knob("FloatSlider", v["momentum"], "FedAvgM beta", min=0.0, max=0.99, step=0.01,
                         readout_format=".3g"),
        "fedadam_lr": knob("FloatLogSlider", v["fedadam_lr"], "FedAdam eta", base=10, min=-4, max=0, step=0.25,
                           readout_format=".3g"),
    }


def baselines_from(values: Mapping[str, object]) -> dict[str, Algorithm]:
    """The baselines by name, with the hyperparameters in `values` ("mu", "momentum", "fedadam_lr") or defaults."""
    v = {**BASELINE_DEFAULTS, **values}
    return {"FedAvg": FedAvg(), "FedProx": FedProx(mu=v["mu"]), "SCAFFOLD": Scaffold(),
            "FedAvgM": FedAvgM(momentum=v["momentum"]), "FedAdam": FedAdam(server_lr=v["fedadam_lr"])}


def compare_run(algorithms: Mapping[str, Algorithm | Callable[[dict], Algorithm]] | None = None, *,
                progress: bool = True, on_divergence: str = "stop", stream: bool = False) -> Run:
    """A `run` for `control_panel`: build the federation from the values and compare the selected algorithms.

    `algorithms` maps display names to algorithms, or to functions of the control values that build one
    (so a slider can set a hyperparameter); default: the baselines of `baselines_from(values)`. The
    "algorithms" value selects which names run (all when absent); "rounds" sets the number of rounds.
    A diverging algorithm stops with a warning by default, so the others still show. With `stream=True` the run
    yields the history after each algorithm (`Federation.compare_each`), so a panel draws the first curve early."""
    names = tuple(BASELINES) if algorithms is None else tuple(algorithms)

    def run(values: dict) -> pd.DataFrame | Iterator[pd.DataFrame]:
        table = baselines_from(values) if algorithms is None else algorithms
        built = {name: table[name] if isinstance(table[name], Algorithm) else table[name](values)
                 for name in chosen(values, names)}
        rounds = int(values.get("rounds", DEFAULTS["rounds"]))
        fed = federation_from(values)
        return (fed.compare_each if stream else fed.compare)(built, rounds, progress=progress, on_divergence=on_divergence)

    return run


# ---------------------------------------------------------------------------- participation, noise, compression
def participation_controls(rate: float = 0.5, gap: float = 0.0) -> dict[str, W.Widget]:
    """Sliders for the mean participation rate and its heterogeneity (the gap between frequent and rare clients).

    The keys are "participation" (it replaces `standard_controls`' uniform fraction) and "participation_gap";
    `participation_from` turns their values into a `two_groups` model."""
    return {"participation": knob("FloatSlider", rate, "participation", min=0.05, max=1.0, step=0.05),
            "participation_gap": knob("FloatSlider", gap, "p gap (freq-rare)", min=0.0, max=1.0, step=0.05)}


def participation_from(values: Mapping[str, object]) -> Bernoulli:
    """The participation model that control values describe: two_groups(n_clients, participation, participation_gap)."""
    gap = float(values.get("participation_gap", 0.0))
    return two_groups(int(values["n_clients"]), float(values["participation"]), gap)


SNR_OPTIONS = (math.inf, 40.0, 30.0, 20.0, 10.0, 5.0, 0.0)


def noise_controls(snr_db: float = math.inf, drop_prob: float = 0.0, links: str = "up") -> dict[str, W.Widget]:
    """Controls for a noisy link: "snr_db" (inf = no noise), "drop_prob" and "links"; `channel_from` reads them."""
    snrs = sorted({*SNR_OPTIONS, float(snr_db)}, reverse=True)
    return {"snr_db": knob("SelectionSlider", float(snr_db), "link SNR",
                           options=[("off" if s == math.inf else f"{s:g} dB", s) for s in snrs]),
            "drop_prob": knob("FloatSlider", drop_prob, "message loss", min=0.0, max=0.9, step=0.05),
            "links": knob("ToggleButtons", links, "noisy links", options=LINKS)}


def channel_from(values: Mapping[str, object], base: Channel | None = None) -> Channel:
    """The channel that `noise_controls` values describe: `base` (lossless by default) when the link is clean."""
    channel = NoisyChannel(float(values.get("snr_db", math.inf)), float(values.get("drop_prob", 0.0)),
                           str(values.get("links", "up")), base)
    return channel if channel.corrupts else channel.base


NO_LEVEL = ("-",)  # the level slider's only choice when the method has no level


def _show_levels(method: W.Dropdown, level: W.SelectionSlider) -> None:
    """Give the level slider the chosen method's levels, meaning and default."""
    entry = COMPRESSORS[method.value]
    level.options = NO_LEVEL if entry.default is None else entry.levels
    level.value = NO_LEVEL[0] if entry.default is None else entry.default
    level.description = entry.level_name or "level"
    level.disabled = entry.default is None


def compression_controls(method: str = "fedzip", level: float | int | None = None,
                         error_feedback: bool = False) -> dict[str, W.Widget]:
    """A compression method dropdown, a level slider whose choices and meaning follow the method, and error feedback."""
    if method not in COMPRESSORS:
        raise ValueError(f"method must be one of {tuple(COMPRESSORS)}, got {method!r}")
    chooser = knob("Dropdown", method, "compression", options=tuple(COMPRESSORS))
    slider = knob("SelectionSlider", NO_LEVEL[0], "level", options=NO_LEVEL, continuous_update=False)
    chooser.observe(lambda _change: _show_levels(chooser, slider), names="value")
    _show_levels(chooser, slider)
    if level is not None:
        if level not in COMPRESSORS[method].levels:
            raise ValueError(f"level must be one of {COMPRESSORS[method].levels} for {method}, got {level}")
        slider.value = level
    return {"compression": chooser, "level": slider,
            "error_feedback": knob("Checkbox", error_feedback, "error feedback")}


def compressor_from(values: Mapping[str, object]) -> Compressor:
    """The compressor that the "compression" and "level" values describe (none when absent)."""
    method = str(values.get("compression", "none"))
    if method not in COMPRESSORS:
        raise ValueError(f"compression must be one of {tuple(COMPRESSORS)}, got {method!r}")
    return make_compressor(method, None if COMPRESSORS[method].default is None else values.get("level"))


def compression_channel_from(values: Mapping[str, object], model: FlatModel) -> CompressedChannel:
    """An uplink-compressing channel for `model`'s layers, as the compression controls describe (error feedback
    from "error_feedback"). It can be the `base` of a noisy link (`channel_from(values, base=...)`)."""
    return CompressedChannel(compressor_from(values), layers=model,
                             error_feedback=bool(values.get("error_feedback", False)))
