"""Chapter 40: Byzantine clients against FedAvg's mean and the robust rules, with and without NNM.

The attack-by-rule grid trains every rule (optionally preceded by nearest-neighbour mixing) against every attack
on one federation per seed and scores the test accuracy over the last rounds; each rule's worst case over the
attacks is what ByzFL's benchmark ranks rules by. The f-by-heterogeneity grid repeats that worst case over the
number of Byzantine clients and the Dirichlet alpha. Step sizes are tuned alike for every rule on the honest task
(`protocol.tune`, validation split). The panel trains FedAvg without attack, FedAvg under the chosen attacker, the
chosen rule, and NNM + the rule, all on the same federation.
"""
from __future__ import annotations

import math
import warnings
from typing import Iterator, Mapping, Sequence

import pandas as pd
from matplotlib.figure import Figure

from .. import protocol
from ..algorithms import FedAvg, RobustFedAvg
from ..attacks import Adversary, Attack
from ..data import Dataset, load
from ..federation import Federation
from ..history import window_mean
from ..partition import dirichlet
from ..plots import learning_curves
from ..plots.robustness import worst_over_attacks
from ..robust import RobustRule
from ..widgets import knob

DEFAULTS: dict[str, object] = {"n_clients": 20, "alpha": 0.3, "f": 4, "attack": "ALIE (line search)",
                               "rule": "trimmed_mean", "rounds": 20, "local_steps": 5, "lr": 0.1, "seed": 0}
RULE_NAMES = ("mean", "median", "trimmed_mean", "geometric_median", "krum", "multi_krum", "centered_clipping")
ATTACK_NAMES = ("none", "sign flipping", "FOE (line search)", "ALIE (line search)", "mimic", "gaussian", "inf",
                "label flipping")
LAST = 5  # rounds over which a run's accuracy is averaged


def make_federation(dataset: Dataset, seed: int, lr: float, *, n_clients: int = 20, alpha: float = 0.3,
                    local_steps: int = 5) -> Federation:
    """The task: digits over Dirichlet(alpha) clients, logistic regression, full participation, batch 32."""
    parts = dirichlet(dataset.y_train, n_clients=n_clients, alpha=alpha, seed=seed)
    return Federation(dataset, parts, "logistic", local_steps=local_steps, batch_size=32, lr=lr, seed=seed)


def defence(rule: str, f: int, nnm: bool = False) -> RobustFedAvg:
    """The server's rule told to tolerate f Byzantine deltas, preceded by NNM when `nnm` (Allouah et al. 2023)."""
    return RobustFedAvg(rule=rule, f=f, pre=("nnm",) if nnm else ())


def label(rule: str, nnm: bool) -> str:
    return f"NNM + {rule}" if nnm else rule


def adversary(attack: str, f: int, algorithm: RobustFedAvg | FedAvg, seed: int = 0) -> Adversary | None:
    """The attacker by name; the line-searched FOE / ALIE pick their scale against the rule the server uses."""
    if attack == "none" or f == 0:
        return None
    rule = getattr(algorithm, "aggregator", RobustRule("mean"))  # FedAvg: the (unweighted) mean
    by_name = {"sign flipping": Attack("sign_flipping"), "mimic": Attack("mimic"), "gaussian": Attack("gaussian"),
               "inf": Attack("inf"), "label flipping": Attack("label_flipping"),
               "FOE (line search)": Attack("foe", rule=rule), "ALIE (line search)": Attack("alie", rule=rule)}
    if attack not in by_name:
        raise ValueError(f"attack must be one of {list(ATTACK_NAMES)}, got {attack!r}")
    return Adversary(by_name[attack], f=f, seed=seed)


def accuracy(history: pd.DataFrame, n_classes: int = 10) -> float:
    """Test accuracy over the last LAST rounds; a run that diverged scores chance, 1 / n_classes."""
    if history.attrs.get("diverged_at") is not None:
        return 1.0 / n_classes
    return window_mean(history, "test_acc", last=LAST).mean


def tune_rules(rules: Sequence[tuple[str, bool]], f: int, *, dataset: Dataset, rounds: int, n_clients: int,
               alpha: float, local_steps: int, lrs: Sequence[float] = (0.1, 0.3, 1.0),
               max_extensions: int = 0) -> dict[str, protocol.Tuned]:
    """Every rule's local learning rate, tuned alike by `protocol.tune` on a validation split of the honest task
    (the same grid for every rule; an optimum at the grid's top edge is recorded, not chased)."""
    def make(data: Dataset, seed: int, lr: float) -> Federation:
        return make_federation(data, seed, lr, n_clients=n_clients, alpha=alpha, local_steps=local_steps)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "still at the edge": kept in Tuned.at_edge
        return {label(r, n): protocol.tune(dataset, make, lambda r=r, n=n: defence(r, f, n), rounds=rounds, lrs=lrs,
                                           server_lrs=None, name=label(r, n), max_extensions=max_extensions)
                for r, n in rules}


def grid(rules: Sequence[tuple[str, bool]], attacks: Sequence[str], fs: Sequence[int], alphas: Sequence[float], *,
         seeds: Sequence[int] = protocol.SEEDS, lrs: Mapping[str, float] | None = None, rounds: int = 20,
         n_clients: int = 20, local_steps: int = 5, dataset: Dataset | None = None,
         progress: bool = False) -> pd.DataFrame:
    """Accuracy of every (rule, NNM) against every attack at every f, alpha and seed: one row per run.

    Columns: rule, attack, f, alpha, seed, lr, accuracy, diverged. `lrs` maps a rule's label to its learning
    rate (default 0.1 for all); every run of one seed and alpha shares the federation (partition, init, batches)."""
    dataset = dataset or load("digits")
    rows = []
    for alpha in alphas:
        for seed in seeds:
            for rule, nnm in rules:
                name = label(rule, nnm)
                lr = (lrs or {}).get(name, 0.1)
                fed = make_federation(dataset, seed, lr, n_clients=n_clients, alpha=alpha, local_steps=local_steps)
                for f in fs:
                    algorithm = defence(rule, f, nnm)
                    for attack in attacks:
                        h = fed.run(algorithm, rounds, adversary=adversary(attack, f, algorithm, seed),
                                    progress=progress, on_divergence="stop", label=name)
                        rows.append({"rule": name, "attack": attack, "f": f, "alpha": alpha, "seed": seed, "lr": lr,
                                     "accuracy": accuracy(h, dataset.n_classes),
                                     "diverged": h.attrs.get("diverged_at") is not None})
    return pd.DataFrame(rows)


def nnm_gain(table: pd.DataFrame, rule: str, by: Sequence[str] = ()) -> pd.Series:
    """Per seed (and per `by`), worst-case accuracy of NNM + rule minus that of the rule alone."""
    worst = worst_over_attacks(table, ["rule", *by])
    return (worst.loc[label(rule, True)] - worst.loc[rule]).rename(f"NNM + {rule} - {rule}")


# ------------------------------------------------------------------------------------------------ the panel
def stream(values: Mapping[str, object], progress: bool = True) -> Iterator[pd.DataFrame]:
    """FedAvg without attack, FedAvg attacked, the rule attacked and NNM + the rule attacked (same federation),
    yielding the history after each run, so the panel draws the attack-free curve while the others train."""
    v = {**DEFAULTS, **values}
    n, f, rule = int(v["n_clients"]), int(v["f"]), str(v["rule"])
    if not 0 <= f < n / 2:
        raise ValueError(f"f must be an integer in [0, n_clients / 2) = [0, {math.ceil(n / 2) - 1}], got {f}")
    if rule not in RULE_NAMES:
        raise ValueError(f"rule must be one of {list(RULE_NAMES)}, got {rule!r}")
    fed = make_federation(load("digits"), int(v["seed"]), float(v["lr"]), n_clients=n, alpha=float(v["alpha"]),
                          local_steps=int(v["local_steps"]))
    attack, rounds = str(v["attack"]), int(v["rounds"])
    entries = [("FedAvg, no attack", FedAvg(), None), (f"FedAvg, {attack}", FedAvg(), attack),
               (f"{rule}, {attack}", defence(rule, f), attack),
               (f"NNM + {rule}, {attack}", defence(rule, f, nnm=True), attack)]
    attackers = [None if a is None else adversary(a, f, algorithm, int(v["seed"])) for _, algorithm, a in entries]
    done: list[pd.DataFrame] = []
    for (name, algorithm, _), attacker in zip(entries, attackers):
        done.append(fed.run(algorithm, rounds, adversary=attacker, progress=progress, on_divergence="stop",
                            label=name))
        yield pd.concat(done, ignore_index=True)


def run(values: Mapping[str, object], progress: bool = True) -> pd.DataFrame:
    """The last history of `stream`: the panel's four runs."""
    *_, history = stream(values, progress)
    return history


def figure(history: pd.DataFrame) -> Figure:
    """Test accuracy per round of the panel's four runs."""
    ax = learning_curves(history, y="test_acc")
    ax.set_ylim(0, 1)
    return ax.figure


def controls(**overrides: object) -> dict:
    """The attacker (attack, f), the server's rule, the heterogeneity and the length of the run."""
    v = {**DEFAULTS, **overrides}
    return {"attack": knob("Dropdown", v["attack"], "attack", options=ATTACK_NAMES),
            "f": knob("IntSlider", v["f"], "Byzantine f", min=0, max=9, continuous_update=False),
            "rule": knob("Dropdown", v["rule"], "rule", options=RULE_NAMES),
            "alpha": knob("FloatLogSlider", v["alpha"], "alpha (Dirichlet)", base=10, min=-1.5, max=1, step=0.1,
                          readout_format=".3g", continuous_update=False),
            "n_clients": knob("IntSlider", v["n_clients"], "clients", min=4, max=40, continuous_update=False),
            "rounds": knob("IntSlider", v["rounds"], "rounds", min=2, max=60, continuous_update=False),
            "lr": knob("FloatLogSlider", v["lr"], "learning rate", base=10, min=-2, max=0, step=0.1,
                       readout_format=".3g", continuous_update=False),
            "seed": knob("BoundedIntText", v["seed"], "seed", min=0, max=2**31 - 1)}

