"""Control panels for the chapters: federation controls, a Run button, a progress bar and the figure in place.

A chapter builds its panel from three pieces: the controls (`standard_controls()` plus any sliders of its
own), a `run` function of the controls' values that returns a history DataFrame (`compare_run(...)` builds
the usual one), and a `plot` function of that history that returns a figure:

    panel = control_panel(run=compare_run(), controls=standard_controls(rounds=10), plot=plots.accuracy_figure)
    panel                                 # in a notebook: the controls, a Run button and an output area
    panel.controls["alpha"].value = 0.1   # the same from code, as the tests do
    panel.on_run()                        # what Run does; the result is in panel.history and panel.figure
"""
from __future__ import annotations

import functools
import html
from typing import Callable, Mapping, Sequence

import ipywidgets as W
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import display
from matplotlib.figure import Figure

from flbook.algorithms import BASELINES, Algorithm, FedAdam, FedAvg, FedAvgM, FedProx, Scaffold
from flbook.data import DATASETS, Dataset, load
from flbook.federation import DivergenceError, Federation
from flbook.models import MODELS
from flbook.partition import PARTITIONERS, partition

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
USER_ERRORS = (ValueError, FileNotFoundError, DivergenceError)  # shown as a one-line message, not a traceback
DONE_CLASS = "flbook-done"  # on the panel box once a run has finished, so browser tests can wait for it

Run = Callable[[dict], pd.DataFrame]


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
    common = {"style": {"description_width": "110px"}}  # one layout per widget: the partitioner hides some
    controls: dict[str, W.Widget] = {
        "dataset": W.Dropdown(options=DATASETS, value=v["dataset"], description="dataset", **common),
        "model": W.Dropdown(options=MODELS, value=v["model"], description="model", **common),
        "partitioner": W.Dropdown(options=(*PARTITIONERS, NATURAL), value=v["partitioner"],
                                  description="partitioner", **common),
        "alpha": W.FloatLogSlider(value=v["alpha"], base=10, min=-2, max=2, step=0.1, readout_format=".3g",
                                  description="alpha (Dirichlet)", **common),
        "classes_per_client": W.IntSlider(value=v["classes_per_client"], min=1, max=10, description="classes/client",
                                          **common),
        "shards_per_client": W.IntSlider(value=v["shards_per_client"], min=1, max=10, description="shards/client",
                                         **common),
        "sigma": W.FloatSlider(value=v["sigma"], min=0.0, max=3.0, step=0.1, description="sigma (sizes)", **common),
        "n_clients": W.IntSlider(value=v["n_clients"], min=2, max=200, description="clients", **common),
        "participation": W.FloatSlider(value=v["participation"], min=0.05, max=1.0, step=0.05,
                                       description="participation", **common),
        "local_steps": W.IntSlider(value=v["local_steps"], min=1, max=50, description="local steps", **common),
        "lr": W.FloatLogSlider(value=v["lr"], base=10, min=-3, max=0, step=0.1, readout_format=".3g",
                               description="learning rate", **common),
        "rounds": W.IntSlider(value=v["rounds"], min=1, max=200, description="rounds", **common),
        "algorithms": W.SelectMultiple(options=tuple(algorithm_options), value=tuple(v["algorithms"]), rows=5,
                                       description="algorithms", **common),
        "seed": W.BoundedIntText(value=v["seed"], min=0, max=2**31 - 1, description="seed", **common),
        "device": W.Dropdown(options=device_options(), value=v["device"], description="device", **common),
    }
    for control in controls.values():
        control.layout.width = "auto"
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
    common = {"style": {"description_width": "110px"}, "readout_format": ".3g"}
    controls = {
        "mu": W.FloatLogSlider(value=v["mu"], base=10, min=-4, max=0, step=0.25, description="FedProx mu", **common),
        "momentum": W.FloatSlider(value=v["momentum"], min=0.0, max=0.99, step=0.01, description="FedAvgM beta",
                                  **common),
        "fedadam_lr": W.FloatLogSlider(value=v["fedadam_lr"], base=10, min=-4, max=0, step=0.25,
                                       description="FedAdam eta", **common),
    }
    for control in controls.values():
        control.layout.width = "auto"
    return controls


def baselines_from(values: Mapping[str, object]) -> dict[str, Algorithm]:
    """The baselines by name, with the hyperparameters in `values` ("mu", "momentum", "fedadam_lr") or defaults."""
    v = {**BASELINE_DEFAULTS, **values}
    return {"FedAvg": FedAvg(), "FedProx": FedProx(mu=v["mu"]), "SCAFFOLD": Scaffold(),
            "FedAvgM": FedAvgM(momentum=v["momentum"]), "FedAdam": FedAdam(server_lr=v["fedadam_lr"])}


def compare_run(algorithms: Mapping[str, Algorithm | Callable[[dict], Algorithm]] | None = None, *,
                progress: bool = True, on_divergence: str = "stop") -> Run:
    """A `run` for `control_panel`: build the federation from the values and compare the selected algorithms.

    `algorithms` maps display names to algorithms, or to functions of the control values that build one
    (so a slider can set a hyperparameter); default: the baselines of `baselines_from(values)`. The
    "algorithms" value selects which names run (all when absent); "rounds" sets the number of rounds.
    A diverging algorithm stops with a warning by default, so the others still show."""
    names = tuple(BASELINES) if algorithms is None else tuple(algorithms)

    def run(values: dict) -> pd.DataFrame:
        chosen = tuple(values.get("algorithms", names))
        if not chosen or any(name not in names for name in chosen):
            raise ValueError(f"algorithms must be a non-empty selection of {list(names)}, got {list(chosen)}")
        table = baselines_from(values) if algorithms is None else algorithms
        built = {name: table[name] if isinstance(table[name], Algorithm) else table[name](values) for name in chosen}
        rounds = int(values.get("rounds", DEFAULTS["rounds"]))
        return federation_from(values).compare(built, rounds, progress=progress, on_divergence=on_divergence)

    return run


# ------------------------------------------------------------------------------------------------- panel
class ControlPanel:
    """Controls, a Run button and an output area; `on_run` trains with the controls' values and draws the result.

    Display it as the last expression of a cell. CSS classes for browser tests: `flbook-panel` (the box,
    plus `flbook-done` once a run has finished), `flbook-run` (the button), `flbook-output`, and
    `flbook-control-<key>` on each control."""

    def __init__(self, run: Run, controls: Mapping[str, W.Widget], plot: Callable[[pd.DataFrame], Figure],
                 title: str = ""):
        self.run, self.plot, self.controls, self.title = run, plot, dict(controls), title
        self.history: pd.DataFrame | None = None  # the last run's result
        self.figure: Figure | None = None  # the last run's figure (closed after display)
        self.error: str | None = None  # the last run's user-error message
        for key, control in self.controls.items():
            control.add_class(f"flbook-control-{key}")
        grid = W.GridBox(list(self.controls.values()), layout=W.Layout(
            grid_template_columns="repeat(auto-fill, minmax(300px, 1fr))", grid_gap="2px 16px"))
        self.button = W.Button(description="Run", button_style="primary", icon="play")
        self.button.add_class("flbook-run")
        self.button.on_click(self.on_run)
        self.output = W.Output()
        self.output.add_class("flbook-output")
        header = [W.HTML(f"<b>{html.escape(title)}</b>")] if title else []
        self.box = W.VBox([*header, grid, self.button, self.output])
        self.box.add_class("flbook-panel")

    def values(self) -> dict:
        """The controls' current values, by key."""
        return {key: control.value for key, control in self.controls.items()}

    def on_run(self, button: W.Button | None = None) -> None:
        """The Run button's callback: train with the current values, keep the history, draw its figure.

        Expected user errors (a bad value, a missing dataset file, divergence) become a one-line message
        in the output and `self.error`; any other exception propagates so a broken run is noticed."""
        self.box.remove_class(DONE_CLASS)
        self.button.disabled = True
        self.output.clear_output()
        self.history = self.figure = self.error = None
        failure = None
        try:
            with self.output:
                try:
                    self.history = self.run(self.values())
                    self.figure = self.plot(self.history)
                    display(self.figure)
                    plt.close(self.figure)
                except USER_ERRORS as err:
                    self.error = f"{type(err).__name__}: {err}"
                    print(f"Cannot run: {self.error}")
                except Exception as err:
                    failure = err
                    raise  # in a kernel the output area shows the traceback and swallows it; raised again below
        finally:
            self.button.disabled = False
            self.box.add_class(DONE_CLASS)
        if failure is not None:
            raise failure

    def _repr_mimebundle_(self, **kwargs) -> dict:
        """Display as the panel's widget box; plain-text viewers get a one-line note instead."""
        return {**self.box._repr_mimebundle_(**kwargs),
                "text/plain": f"Control panel {self.title!r}: open the notebook in Jupyter and press Run."}


def control_panel(run: Run, controls: Mapping[str, W.Widget], plot: Callable[[pd.DataFrame], Figure],
                  title: str = "") -> ControlPanel:
    """A panel that runs `run(values)` when Run is pressed and shows `plot(history)` below the controls."""
    return ControlPanel(run, controls, plot, title)
