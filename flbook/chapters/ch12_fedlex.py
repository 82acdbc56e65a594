"""Chapter 12: FedLEx's one-time loss exploration and its guidance matrix, against FedAvg, FedProx and SCAFFOLD.

The panel explores with the chosen budget when FedLEx is selected, then trains the selected algorithms on
the federation the controls describe; FedLEx's rows include the exploration's bytes. `claims` runs the chapter's
comparison by the experiment protocol.
"""
from __future__ import annotations

import hashlib
from typing import Callable, Mapping

import pandas as pd
import torch
from matplotlib.figure import Figure

from .. import protocol
from ..algorithms import FedAvg, FedLEx, explore
from ..data import Dataset
from ..federation import Federation
from ..history import is_flat, per_run, rounds_to, window_mean
from ..partition import partition
from ..plots import accuracy_figure
from ..widgets import baseline_controls, baselines_from, chosen, federation_from, knob, standard_controls

ALGORITHMS = ("FedAvg", "FedProx", "SCAFFOLD", "FedLEx")
DEFAULTS: dict[str, object] = {"model": "logistic", "partitioner": "pathological", "classes_per_client": 2,
                               "n_clients": 10, "participation": 0.3, "local_steps": 20, "lr": 0.1, "rounds": 40,
                               "algorithms": ALGORITHMS}
EXPLORATION = {"explore_epochs": ("epochs", 10), "data_fraction": ("data_fraction", 1.0),
               "explorer_fraction": ("explorer_fraction", 1.0)}  # panel key -> (explore() argument, default)


def controls(**overrides: object) -> dict:
    """The federation's knobs (`standard_controls`), FedProx's mu and the exploration budget."""
    budget = {key: overrides.pop(key, default) for key, (_, default) in EXPLORATION.items()}
    controls = standard_controls(algorithm_options=ALGORITHMS, **{**DEFAULTS, **overrides})
    controls["mu"] = baseline_controls(mu=0.1)["mu"]
    return {**controls,
            "explore_epochs": knob("IntSlider", budget["explore_epochs"], "explore epochs", min=1, max=100),
            "data_fraction": knob("FloatSlider", budget["data_fraction"], "explore data", min=0.05, max=1.0,
                                  step=0.05),
            "explorer_fraction": knob("FloatSlider", budget["explorer_fraction"], "explorers", min=0.1, max=1.0,
                                      step=0.1)}


def run(values: Mapping[str, object], progress: bool = True) -> pd.DataFrame:
    """Explore with the panel's budget if FedLEx is selected, then train the selected algorithms."""
    names = chosen(values, ALGORITHMS)
    fed = federation_from({**DEFAULTS, **values})
    rounds = int(values.get("rounds", DEFAULTS["rounds"]))
    settings = {"progress": progress, "on_divergence": "stop"}
    histories = []
    for name in names:
        if name == "FedLEx":
            budget = {arg: values[key] for key, (arg, _) in EXPLORATION.items() if key in values}
            exploration = explore(fed, **budget)
            history = fed.run(FedLEx(guidance=exploration.guidance), rounds, label=name, **settings)
            histories.append(exploration.charge(history))
        else:
            histories.append(fed.run(baselines_from(values)[name], rounds, label=name, **settings))
    return pd.concat(histories, ignore_index=True)


def figure(history: pd.DataFrame) -> Figure:
    """Test accuracy per round and per byte."""
    return accuracy_figure(history)


# ------------------------------------------------------------------------------------ the chapter's claims
TASK: dict[str, object] = {"n_clients": 10, "classes_per_client": 2, "participation": 0.3, "local_steps": 20,
                           "batch_size": 32}
ROUNDS, TUNE_ROUNDS, LAST, TARGET = 40, 10, 10, 0.85
EXPLORE_LR, EXPLORE_EPOCHS, MAX_EXTENSIONS = 0.1, 10, 3


def make_federation(n_clients: int = 10, classes_per_client: int = 2, participation: float = 0.3,
                    local_steps: int = 20, batch_size: int = 32, model: str = "logistic") -> protocol.MakeFederation:
    """The comparison's task as the protocol wants it: (dataset, seed, lr) -> a pathological federation."""
    def make(dataset: Dataset, seed: int, lr: float) -> Federation:
        parts = partition("pathological", dataset.y_train, n_clients, seed=seed, classes_per_client=classes_per_client)
        return Federation(dataset, parts, model, local_steps=local_steps, batch_size=batch_size, lr=lr,
                          participation=participation, seed=seed, executor="batched")
    return make


class KeyedFedLEx(FedLEx):
    """FedLEx whose repr names its guidance by a digest: the protocol's run cache keys a method by its repr, and
    FedLEx's repr hides G, so two FedLEx with different G would otherwise share one cached run."""

    def __repr__(self) -> str:
        digest = hashlib.blake2b(self.guidance.detach().cpu().numpy().tobytes(), digest_size=8).hexdigest()
        return f"{super().__repr__()[:-1]}, guidance={digest})"


def shuffled(guidance: torch.Tensor, seed: int) -> torch.Tensor:
    """The same guidance values in a random order: keeps G's scale, destroys which parameter gets which value."""
    order = torch.randperm(guidance.numel(), generator=torch.Generator().manual_seed(seed))
    return guidance[order.to(guidance.device)]


GUIDED = {"FedLEx": lambda G, seed: G, "FedLEx, shuffled G": shuffled}  # method -> its guidance from the explored G
CLAIMS = (  # (claim, paper, method, baseline, measure)
    ("FedLEx is more accurate than FedAvg", "Internò et al. 2024: converges faster and higher than FL baselines",
     "FedLEx", "FedAvg", "late"),
    ("FedLEx is more accurate than FedAvg with a tuned server step", "(step-size control)",
     "FedLEx", "FedAvg (server lr)", "late"),
    ("FedLEx needs fewer rounds than FedAvg", "as above", "FedLEx", "FedAvg", "speed"),
    ("G's shape guides: FedLEx is more accurate than with the same G values shuffled", "the method's premise",
     "FedLEx", "FedLEx, shuffled G", "late"),
)


def claims(dataset: Dataset, *, rounds: int = ROUNDS, tune_rounds: int = TUNE_ROUNDS, epochs: float = EXPLORE_EPOCHS,
           task: Mapping[str, object] | None = None, seeds=protocol.SEEDS, lrs=protocol.LRS,
           server_lrs=protocol.SERVER_LRS, max_extensions: int = MAX_EXTENSIONS,
           explored: Callable[[Federation], torch.Tensor] | None = None) -> tuple[protocol.Comparison, pd.DataFrame]:
    """FedLEx against FedAvg and FedAvg with a tuned server lr by the protocol, and the "paper vs this notebook"
    table. G is explored once per seed's federation at the fixed learning rate EXPLORE_LR, so every lr of the grid
    uses the same G (tuning uses seed 0's validation split, explored the same way); `explored` replaces the
    exploration (a test passes a broken one). FedLEx's histories carry the exploration's bytes."""
    make = make_federation(**{**TASK, **(task or {})})
    controls = protocol.step_size_controls()
    plain = {"FedAvg": lambda: FedAvg(), "FedAvg (server lr)": controls["FedAvg (server lr)"]}
    grid = {"rounds": tune_rounds, "lrs": lrs, "server_lrs": server_lrs, "max_extensions": max_extensions}
    tuned = {name: protocol.tune(dataset, make, factory, name=name, **grid) for name, factory in plain.items()}
    tuning_fed = make(protocol.validation_split(dataset, seed=0)[1], 0, EXPLORE_LR)
    tuning_G = explored(tuning_fed) if explored else explore(tuning_fed, epochs=epochs).guidance
    guided = lambda G: lambda server_lr: KeyedFedLEx(guidance=G, server_lr=server_lr)  # noqa: E731
    tuned |= {name: protocol.tune(dataset, make, guided(rule(tuning_G, 0)), name=name, **grid)
              for name, rule in GUIDED.items()}
    configs, charges = [], []
    for seed in seeds:
        fed = make(dataset, seed, EXPLORE_LR)
        exploration = explore(fed, epochs=epochs)
        G = explored(fed) if explored else exploration.guidance
        for name, t in tuned.items():
            factory = guided(GUIDED[name](G, seed)) if name in GUIDED else t.algorithm
            configs.append(protocol.RunConfig(dataset, make, factory, seed, t.lr, t.server_lr, rounds, name))
            charges.append(exploration if name in GUIDED else None)
    histories = [h if e is None else e.charge(h) for h, e in zip(protocol.run_all(configs), charges)]
    result = protocol.Comparison(pd.concat(histories, ignore_index=True), tuned)
    measures = {"late": (lambda h: window_mean(h, last=LAST).mean, "greater", 3),
                "speed": (lambda h: rounds_to(h, TARGET), "less", 1)}
    flat = per_run(result.history, lambda h: is_flat(h, last=LAST // 2, tolerance=0.01))
    rows = []
    for claim, paper, method, baseline, measure in CLAIMS:
        summary, kind, digits = measures[measure]
        n_flat = int(flat[[method, baseline]].sum())
        why = (f"rounds to {TARGET:.0%} for good" if measure == "speed" else
               f"accuracy over rounds {rounds - LAST + 1}-{rounds}; {n_flat} of {2 * len(seeds)} curves flat")
        rows.append(protocol.claim_row(claim, paper, result.difference(method, baseline, summary), kind=kind,
                                       digits=digits, why=why))
    return result, protocol.claims_table(rows)


def budget_rows(dataset: Dataset, seeds=protocol.SEEDS, task: Mapping[str, object] | None = None,
                exploration: Callable[..., object] = explore) -> list[dict]:
    """"A small exploration budget suffices": per seed, the correlation of G from a small budget with G from 30
    epochs on all data (needs > 0.8 on every seed); `exploration` replaces `explore` (a test passes a broken one)."""
    make = make_federation(**{**TASK, **(task or {})})
    rows = []
    for epochs, fraction in ((3, 1.0), (10, 0.3)):
        corr = []
        for seed in seeds:
            fed = make(dataset, seed, EXPLORE_LR)
            reference = exploration(fed, epochs=30).guidance
            small = exploration(fed, epochs=epochs, data_fraction=fraction).guidance
            corr.append(float(torch.corrcoef(torch.stack([small, reference]))[0, 1]))
        rows.append(protocol.claim_row(f"a small budget ({epochs} epochs on {fraction:.0%} of the data) gives nearly "
                                       "the same G as 30 epochs on all data", "Internò et al. 2024",
                                       corr, margin=0.8, why="Pearson correlation over all parameters"))
    return rows
