"""Chapter 13: FedSpeed's prox-correction and ascent step against FedAvg, FedProx and SCAFFOLD."""
from __future__ import annotations

from typing import Mapping

import pandas as pd
from matplotlib.figure import Figure

from ..algorithms import FedSpeed
from ..algorithms.fedspeed import SERVER_RULES
from ..plots import accuracy_figure
from ..widgets import baseline_controls, baselines_from, compare_run, knob, standard_controls

ALGORITHMS = ("FedAvg", "FedProx", "SCAFFOLD", "FedSpeed")
DEFAULTS: dict[str, object] = {"model": "logistic", "alpha": 0.1, "n_clients": 20, "participation": 0.5,
                               "local_steps": 20, "lr": 0.1, "rounds": 30, "algorithms": ALGORITHMS}
FEDSPEED_KEYS = {"fedspeed_mu": "mu", "fedspeed_rho": "rho", "fedspeed_alpha": "alpha",
                 "fedspeed_server": "server"}  # panel key -> FedSpeed field


def controls(**overrides: object) -> dict:
    """The federation's knobs (`standard_controls`), FedProx's mu, and FedSpeed's own knobs."""
    controls = standard_controls(algorithm_options=ALGORITHMS, **{**DEFAULTS, **overrides})
    controls["mu"] = baseline_controls(mu=0.1)["mu"]
    return {**controls,
            "fedspeed_mu": knob("FloatLogSlider", FedSpeed.mu, "FedSpeed 1/lambda", base=10, min=-3, max=0,
                                step=0.25, readout_format=".3g"),
            "fedspeed_rho": knob("FloatSlider", FedSpeed.rho, "FedSpeed rho", min=0.0, max=1.0, step=0.05),
            "fedspeed_alpha": knob("FloatSlider", FedSpeed.alpha, "FedSpeed alpha", min=0.0, max=1.0, step=0.05),
            "fedspeed_server": knob("Dropdown", FedSpeed.server, "FedSpeed server", options=SERVER_RULES)}


def run(values: Mapping[str, object], progress: bool = True) -> pd.DataFrame:
    """The selected algorithms on the federation the values describe (FedSpeed with its knobs)."""
    speed = FedSpeed(**{field: values[key] for key, field in FEDSPEED_KEYS.items() if key in values})
    table = {name: algo for name, algo in baselines_from(values).items() if name in ALGORITHMS}
    return compare_run({**table, "FedSpeed": speed}, progress=progress)({**DEFAULTS, **values})


def figure(history: pd.DataFrame) -> Figure:
    """Test accuracy per round and per byte."""
    return accuracy_figure(history)
