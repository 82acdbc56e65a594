"""Chapter 41: MoNNA, peer-to-peer learning with Byzantine nodes: momentum and nearest-neighbour averaging.

The comparison of the card: D-SGD with exact averaging and momentum without attack (the reference), MoNNA
(beta > 0), NNA without momentum (beta = 0) and the coordinate trimmed mean in NNA's place, all attacked by the
same f Byzantine nodes. Every method's initial step gamma_0 is chosen alike on a validation split of the honest
task (the same grid); gamma_t decays as in the code, gamma_0 / (floor(t / 50) + 1) (`decay=False`: constant).
The score is the mean test accuracy of the honest nodes' own models over the last steps.
"""
from __future__ import annotations

import warnings
from typing import Iterator, Mapping, Sequence

import pandas as pd
from matplotlib.figure import Figure

from .. import protocol
from ..algorithms import MomentumSGD, NNAMixer
from ..data import Dataset, load
from ..decentralized import Decentralized, InverseTimeDecay
from ..federation import Federation
from ..history import window_mean
from ..partition import dirichlet
from ..plots import learning_curves
from ..topology import complete, uniform_weights
from ..widgets import knob

DEFAULTS: dict[str, object] = {"n_nodes": 13, "f": 3, "alpha": 0.5, "attack": "foe", "line_search": True,
                               "beta": 0.9, "steps": 100, "lr": 0.3, "decay": True, "seed": 0}
ATTACKS = ("sign_flipping", "foe", "alie", "label_flipping")
DECAY = InverseTimeDecay(tau=50, every=50)  # the code's MNIST schedule: gamma_0 / (floor(t / 50) + 1)
LAST = 30  # steps over which the honest nodes' accuracy is averaged
EVAL_EVERY = 10


def methods(f: int, beta: float, attack: str, line_search: bool,
            seed: int = 0) -> dict[str, tuple[MomentumSGD, NNAMixer | None]]:
    """The card's line-up: (local step, mixer) per method; D-SGD is the no-attack reference with exact averaging."""
    attacked = dict(f=f, attack=attack, line_search=line_search, seed=seed)
    return {"D-SGD, no attack": (MomentumSGD(beta=beta), None),
            f"MoNNA (beta={beta:g})": (MomentumSGD(beta=beta), NNAMixer(**attacked)),
            "NNA (beta=0)": (MomentumSGD(beta=0.0), NNAMixer(**attacked)),
            f"trimmed mean (beta={beta:g})": (MomentumSGD(beta=beta), NNAMixer(rule="trimmed_mean", **attacked))}


def make_federation(dataset: Dataset, seed: int, lr: float, *, n_nodes: int = 13, alpha: float = 0.5) -> Federation:
    """Digits over Dirichlet(alpha) nodes, logistic regression, one gradient of batch 25 per step (the card's b)."""
    parts = dirichlet(dataset.y_train, n_clients=n_nodes, alpha=alpha, seed=seed)
    return Federation(dataset, parts, "logistic", local_steps=1, batch_size=25, lr=lr, seed=seed)


def train(fed: Federation, step: MomentumSGD, mixer: NNAMixer | None, steps: int, name: str,
          progress: bool = False, decay: bool = True) -> pd.DataFrame:
    """One run on the complete graph (every node reaches every other; NNAMixer draws who is received), with the
    code's decaying step (or a constant one)."""
    net = Decentralized(fed, uniform_weights(complete(fed.n_clients)), mixer=mixer,
                        lr_schedule=DECAY if decay else None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a diverged run is kept and scored as chance
        return net.run(step, steps, eval_every=EVAL_EVERY, progress=progress, on_divergence="stop", label=name)


def score(history: pd.DataFrame, n_classes: int = 10) -> float:
    """Mean test accuracy of the honest nodes' models over the last LAST steps; chance for a diverged run."""
    if history.attrs.get("diverged_at") is not None:
        return 1.0 / n_classes
    return window_mean(history, "local_acc", last=LAST).mean


def tune(dataset: Dataset, lineup: Mapping[str, tuple], *, steps: int, n_nodes: int, alpha: float,
         lrs: Sequence[float] = (0.1, 0.3, 1.0), decay: bool = True) -> pd.DataFrame:
    """Every method's gamma_0 from the same grid, on a validation split of the honest task (seed 0, no attack).

    Without attackers every mixing rule here is the exact mean (NNA and the trimmed mean with f = 0), so the
    honest task depends on beta only: methods that share beta share their tuning runs."""
    _, validation = protocol.validation_split(dataset, 0.2, seed=0)
    scores: dict[tuple[float, float], float] = {}
    rows = []
    for name, (step, _) in lineup.items():
        for lr in lrs:
            if (step.beta, lr) not in scores:
                fed = make_federation(validation, 0, lr, n_nodes=n_nodes, alpha=alpha)
                scores[step.beta, lr] = score(train(fed, step, None, steps, name, decay=decay))
            rows.append({"method": name, "lr": lr, "score": scores[step.beta, lr]})
    table = pd.DataFrame(rows)
    return table.loc[table.groupby("method", sort=False)["score"].idxmax()].set_index("method")


def compare(lineup: Mapping[str, tuple], lrs: Mapping[str, float], *, steps: int, n_nodes: int, alpha: float,
            seeds: Sequence[int] = protocol.SEEDS, dataset: Dataset | None = None,
            progress: bool = False, decay: bool = True) -> pd.DataFrame:
    """Every method at its chosen gamma on every seed (Byzantine nodes and partition drawn from the seed)."""
    dataset = dataset or load("digits")
    runs = []
    for seed in seeds:
        for name, (step, mixer) in lineup.items():
            fed = make_federation(dataset, seed, lrs[name], n_nodes=n_nodes, alpha=alpha)
            mixer = None if mixer is None else NNAMixer(f=mixer.f, attack=mixer.attack, line_search=mixer.line_search,
                                                        rule=mixer.rule, seed=seed)
            runs.append(train(fed, step, mixer, steps, name, progress, decay).assign(seed=seed, lr=lrs[name]))
    return pd.concat(runs, ignore_index=True)


def per_seed(history: pd.DataFrame) -> pd.DataFrame:
    """score per method (columns) and seed (rows)."""
    return history.groupby(["seed", "algorithm"], sort=False).apply(score, include_groups=False).unstack()


# ------------------------------------------------------------------------------------------------ the panel
def stream(values: Mapping[str, object], progress: bool = True) -> Iterator[pd.DataFrame]:
    """The card's four methods on one seed at the panel's gamma_0, attacked by the panel's attacker; yields the
    history after each method, so the panel draws the attack-free reference while the attacked runs train."""
    v = {**DEFAULTS, **values}
    n, f = int(v["n_nodes"]), int(v["f"])
    if not 0 <= f or not 3 * f < n:
        raise ValueError(f"f must be an integer with 0 <= 3 f < n_nodes = {n}, got {f}")
    if v["attack"] not in ATTACKS:
        raise ValueError(f"attack must be one of {list(ATTACKS)}, got {v['attack']!r}")
    seed = int(v["seed"])
    lineup = methods(f, float(v["beta"]), str(v["attack"]), bool(v["line_search"]), seed)
    fed = make_federation(load("digits"), seed, float(v["lr"]), n_nodes=n, alpha=float(v["alpha"]))
    done: list[pd.DataFrame] = []
    for name, (step, mixer) in lineup.items():
        done.append(train(fed, step, mixer, int(v["steps"]), name, progress, bool(v["decay"])))
        yield pd.concat(done, ignore_index=True)


def run(values: Mapping[str, object], progress: bool = True) -> pd.DataFrame:
    """The last history of `stream`: the four methods."""
    *_, history = stream(values, progress)
    return history


def figure(history: pd.DataFrame) -> Figure:
    """Mean test accuracy of the honest nodes' own models per step."""
    ax = learning_curves(history, y="local_acc")
    ax.set(ylabel="honest nodes' test accuracy", xlabel="step", ylim=(0, 1))
    return ax.figure


def controls(**overrides: object) -> dict:
    """The attacker (f, attack, line search), momentum beta, heterogeneity alpha, step gamma_0, its decay and length."""
    v = {**DEFAULTS, **overrides}
    return {"attack": knob("Dropdown", v["attack"], "attack", options=ATTACKS),
            "f": knob("IntSlider", v["f"], "Byzantine f", min=0, max=6, continuous_update=False),
            "line_search": knob("Checkbox", v["line_search"], "line search"),
            "beta": knob("SelectionSlider", v["beta"], "momentum beta", options=(0.0, 0.5, 0.9, 0.99)),
            "alpha": knob("FloatLogSlider", v["alpha"], "alpha (Dirichlet)", base=10, min=-1, max=1, step=0.1,
                          readout_format=".3g", continuous_update=False),
            "n_nodes": knob("IntSlider", v["n_nodes"], "nodes", min=4, max=26, continuous_update=False),
            "steps": knob("IntSlider", v["steps"], "steps", min=10, max=600, step=10, continuous_update=False),
            "lr": knob("FloatLogSlider", v["lr"], "step gamma_0", base=10, min=-2, max=0, step=0.1,
                       readout_format=".3g", continuous_update=False),
            "decay": knob("Checkbox", v["decay"], "decay gamma_0 / (t // 50 + 1)"),
            "seed": knob("BoundedIntText", v["seed"], "seed", min=0, max=2**31 - 1)}

