"""Chapter 13: FedSpeed's prox-correction and ascent step against FedAvg, FedProx and SCAFFOLD.

The panel trains the selected algorithms on the federation the controls describe; `claims` runs the chapter's
comparison by the experiment protocol, with FedAvg at a tuned server lr and FedAvgM as step-size controls.
"""
from __future__ import annotations

from typing import Callable, Mapping

import pandas as pd
from matplotlib.figure import Figure

from .. import protocol
from ..algorithms import FedAvg, FedProx, FedSpeed, Scaffold
from ..algorithms.base import Algorithm
from ..algorithms.fedspeed import SERVER_RULES
from ..data import Dataset
from ..federation import Federation
from ..history import is_flat, per_run, rounds_to, window_mean
from ..partition import partition
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


# ------------------------------------------------------------------------------------ the chapter's claims
TASK: dict[str, object] = {"alpha": 0.1, "n_clients": 20, "participation": 0.5, "local_steps": 20, "batch_size": 32}
ROUNDS, TUNE_ROUNDS, TARGET = 30, 10, 0.9
LAST = 10  # "final" claims average test accuracy over the last LAST rounds, once the curves are flat
CLAIMS = (  # (claim, paper, method, baseline, measure, why); measure "speed": rounds to TARGET for good
    ("FedSpeed needs fewer rounds than FedAvg", "Sun et al. 2023: fewer rounds than FedAvg, FedProx, SCAFFOLD",
     "FedSpeed", "FedAvg", "speed", ""),
    ("FedSpeed needs fewer rounds than FedProx", "as above", "FedSpeed", "FedProx", "speed", ""),
    ("FedSpeed needs fewer rounds than SCAFFOLD", "as above", "FedSpeed", "SCAFFOLD", "speed", ""),
    ("FedSpeed needs fewer rounds than FedAvg with a tuned server step", "(step-size control)",
     "FedSpeed", "FedAvg (server lr)", "speed",
     "the server rule adds avg h_i, a FedDyn-like extrapolation of the step"),
    ("FedSpeed needs fewer rounds than FedAvgM", "(step-size control; FedCM and FedAdam are the paper's momentum "
     "baselines)", "FedSpeed", "FedAvgM (0.9)", "speed", ""),
    ("the prox-correction makes FedSpeed faster", "Sun et al. 2023: the correction removes the proximal bias",
     "FedSpeed", "FedSpeed, no correction", "speed",
     "the same FedSpeed with h_i = 0: a plain proximal term and the ascent step"),
    ("FedSpeed ends more accurate than SCAFFOLD", "FL-Simulator, CIFAR-10 Dir 0.3: 85.4% vs 82.8%",
     "FedSpeed", "SCAFFOLD", "final", ""),
)


def make_federation(alpha: float = 0.1, n_clients: int = 20, participation: float = 0.5, local_steps: int = 20,
                    batch_size: int = 32, model: str = "logistic") -> protocol.MakeFederation:
    """The comparison's task as the protocol wants it: (dataset, seed, lr) -> a Dirichlet(alpha) federation."""
    def make(dataset: Dataset, seed: int, lr: float) -> Federation:
        parts = partition("dirichlet", dataset.y_train, n_clients, seed=seed, alpha=alpha)
        return Federation(dataset, parts, model, local_steps=local_steps, batch_size=batch_size, lr=lr,
                          participation=participation, seed=seed, executor="batched")
    return make


def lineup(fedspeed: Callable[..., Algorithm] = FedSpeed) -> dict[str, protocol.Factory]:
    """FedSpeed (built by `fedspeed`), its ablation without the correction and the baselines, as protocol
    factories; the protocol adds FedAvg with a tuned server lr and FedAvgM as step-size controls."""
    return {"FedAvg": lambda: FedAvg(), "FedProx": lambda: FedProx(mu=0.1),
            "SCAFFOLD": lambda server_lr: Scaffold(server_lr=server_lr), "FedSpeed": lambda: fedspeed(),
            "FedSpeed, no correction": lambda: fedspeed(correction=False)}


def claims(dataset: Dataset, methods: Mapping[str, protocol.Factory] | None = None, *, rounds: int = ROUNDS,
           tune_rounds: int = TUNE_ROUNDS, target: float = TARGET, task: Mapping[str, object] | None = None,
           **compare_kwargs: object) -> tuple[protocol.Comparison, pd.DataFrame]:
    """The chapter's comparison by the protocol (3 seeds, every method tuned alike, step-size controls) and its
    "paper vs this notebook" table: per-seed differences in rounds to `target` for good."""
    result = protocol.compare(dataset, make_federation(**{**TASK, **(task or {})}), methods or lineup(),
                              rounds=rounds, tune_rounds=tune_rounds, **compare_kwargs)
    history, rows = result.history, []
    measures = {"speed": (lambda h: rounds_to(h, target), "less", 1),
                "final": (lambda h: window_mean(h, last=LAST).mean, "greater", 3)}
    for claim, paper, method, baseline, measure, why in CLAIMS:
        if not {method, baseline} <= set(history.algorithm):
            continue
        summary, kind, digits = measures[measure]
        if measure == "final":
            pair = history[history.algorithm.isin([method, baseline])]
            flat = per_run(pair, lambda h: is_flat(h, last=LAST // 2, tolerance=0.01)).all()
            why = why or (f"accuracy over the last {LAST} rounds; " + ("both curves flat on every seed" if flat
                          else "a curve is still moving: read as speed"))
        rows.append(protocol.claim_row(claim, paper, result.difference(method, baseline, summary), kind=kind,
                                       digits=digits, why=why))
    return result, protocol.claims_table(rows)
