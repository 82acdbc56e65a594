"""Pictures of Byzantine robustness: accuracy of each rule against each attack, and its worst case over f and alpha."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

WORST = "worst case"


def _require(table: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"table must have columns {missing}; it has {list(table.columns)}")


def worst_over_attacks(table: pd.DataFrame, by: Sequence[str] = ("rule",)) -> pd.Series:
    """Per group of `by` and seed, the lowest accuracy over the attacks other than "none" (ByzFL's ranking)."""
    attacked = table[table["attack"] != "none"]
    return attacked.groupby([*by, "seed"], sort=False)["accuracy"].min()


def _mean_over_seeds(per_seed: pd.Series) -> pd.Series:
    return per_seed.groupby(level=list(range(per_seed.index.nlevels - 1)), sort=False).mean()


def attack_rule_heatmap(table: pd.DataFrame, title: str | None = None) -> Figure:
    """Rule x attack accuracy (mean over seeds), a worst-case column, and each rule's worst attack boxed.

    `table` has one row per run with columns rule, attack, seed, accuracy (as `chapters.ch40_byzantine.grid`)."""
    _require(table, ("rule", "attack", "seed", "accuracy"))
    rules, attacks = list(pd.unique(table["rule"])), list(pd.unique(table["attack"]))
    cells = table.groupby(["rule", "attack"])["accuracy"].mean().unstack().reindex(index=rules, columns=attacks)
    cells[WORST] = _mean_over_seeds(worst_over_attacks(table, ["rule"])).reindex(rules)
    fig, ax = plt.subplots(figsize=(1.0 * len(cells.columns) + 2.5, 0.45 * len(rules) + 1.8))
    sns.heatmap(cells, annot=True, fmt=".2f", vmin=0, vmax=1, cmap="viridis", cbar_kws={"label": "test accuracy"},
                ax=ax, annot_kws={"size": 8})
    ax.axvline(len(attacks), color="white", lw=4)
    attacked = [a for a in attacks if a != "none"]
    for i, rule in enumerate(rules):  # the attack that hurts this rule most
        if attacked:
            j = attacks.index(cells.loc[rule, attacked].astype(float).idxmin())
            ax.add_patch(Rectangle((j, i), 1, 1, fill=False, edgecolor="red", lw=2))
    ax.set(xlabel="attack", ylabel="rule", title=title or "accuracy under attack (red: each rule's worst attack)")
    ax.tick_params(axis="x", rotation=35)
    plt.setp(ax.get_xticklabels(), ha="right")
    fig.tight_layout()
    return fig


def f_heterogeneity_heatmap(table: pd.DataFrame, rules: Sequence[str] | None = None) -> Figure:
    """One panel per rule: its worst-case accuracy over the attacks for each f (rows) and Dirichlet alpha (columns)."""
    _require(table, ("rule", "attack", "seed", "accuracy", "f", "alpha"))
    rules = list(rules or pd.unique(table["rule"]))
    worst = _mean_over_seeds(worst_over_attacks(table[table["rule"].isin(rules)], ["rule", "f", "alpha"]))
    fig, axes = plt.subplots(1, len(rules), figsize=(3.2 * len(rules) + 1, 3.0), squeeze=False, sharey=True)
    for k, (ax, rule) in enumerate(zip(axes[0], rules)):
        cells = worst.loc[rule].unstack("alpha").sort_index(ascending=False)  # f from the top down
        sns.heatmap(cells, annot=True, fmt=".2f", vmin=0, vmax=1, cmap="viridis", cbar=k == len(rules) - 1,
                    ax=ax, annot_kws={"size": 8})
        ax.set(title=rule, xlabel="alpha (Dirichlet)", ylabel="Byzantine f" if k == 0 else "")
    fig.suptitle("worst-case accuracy over the attacks", y=1.02)
    fig.tight_layout()
    return fig
