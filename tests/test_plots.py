import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from flbook import plots  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _history(names=("FedAvg", "SCAFFOLD"), rounds=3) -> pd.DataFrame:
    """A history like Federation.compare's: SCAFFOLD sends twice the bytes of FedAvg per round."""
    rows = [{"algorithm": name, "round": t, "test_acc": 0.1 + 0.2 * t + 0.05 * i, "test_loss": 2.0 - 0.3 * t,
             "bytes_up": (i + 1) * 2_000_000 * t, "bytes_down": (i + 1) * 1_000_000 * t}
            for i, name in enumerate(names) for t in range(rounds + 1)]
    return pd.DataFrame(rows)


def _legend_labels(ax) -> list[str]:
    return [text.get_text() for text in ax.get_legend().get_texts()]


def test_learning_curves_draws_one_line_per_algorithm_in_order():
    ax = plots.learning_curves(_history(("SCAFFOLD", "FedAvg", "FedProx")))
    assert len(ax.get_lines()) == 3
    assert _legend_labels(ax) == ["SCAFFOLD", "FedAvg", "FedProx"]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("round", "test accuracy")
    assert list(ax.get_lines()[0].get_xdata()) == [0, 1, 2, 3]


def test_learning_curves_shows_bytes_in_megabytes_and_other_columns():
    ax = plots.learning_curves(_history(), y="test_loss", x="bytes_up")
    assert ax.get_xlabel() == "bytes sent up (MB)" and ax.get_ylabel() == "test loss"
    assert list(ax.get_lines()[1].get_xdata()) == [0, 4, 8, 12]  # SCAFFOLD: 4 MB up per round


def test_learning_curves_keeps_order_of_appearance_for_numeric_hue():
    history = pd.concat([_history(("run",)).assign(alpha=alpha, test_acc=lambda h, a=alpha: h["round"] * a)
                         for alpha in (100.0, 0.1, 1.0)])
    ax = plots.learning_curves(history, hue="alpha")
    assert _legend_labels(ax) == ["100.0", "0.1", "1.0"]
    assert ax.get_legend().get_title().get_text() == "alpha"
    assert [line.get_ydata()[1] for line in ax.get_lines()] == [100.0, 0.1, 1.0]  # each label on its own line


def test_learning_curves_draws_into_given_axes_and_rejects_missing_columns():
    _, ax = plt.subplots()
    assert plots.learning_curves(_history(), ax=ax) is ax
    with pytest.raises(ValueError, match="sim_time"):
        plots.learning_curves(_history(), x="sim_time")


def test_accuracy_vs_bytes_sums_both_directions():
    ax = plots.accuracy_vs_bytes(_history())
    assert ax.get_xlabel() == "bytes sent up + down (MB)"
    assert ax.get_ylabel() == "test accuracy"
    fedavg, scaffold = ax.get_lines()[:2]
    assert list(fedavg.get_xdata()) == [0, 3, 6, 9]
    assert list(scaffold.get_xdata()) == [0, 6, 12, 18]
    assert _legend_labels(ax) == ["FedAvg", "SCAFFOLD"]


def test_accuracy_figure_has_round_and_bytes_panels_with_one_legend():
    fig = plots.accuracy_figure(_history())
    assert isinstance(fig, Figure)
    by_round, by_bytes = fig.axes
    assert by_round.get_xlabel() == "round" and by_bytes.get_xlabel() == "bytes sent up + down (MB)"
    assert len(by_round.get_lines()) == len(by_bytes.get_lines()) == 2
    assert by_round.get_legend() is not None and by_bytes.get_legend() is None


def test_use_theme_sets_grid_and_dpi():
    plots.use_theme(dpi=70)
    assert matplotlib.rcParams["figure.dpi"] == 70
    assert matplotlib.rcParams["axes.grid"]


def test_robustness_heatmaps_show_the_worst_case():
    import pandas as pd

    from flbook.plots import attack_rule_heatmap, f_heterogeneity_heatmap
    from flbook.plots.robustness import worst_over_attacks
    rows = [{"rule": r, "attack": a, "seed": s, "f": f, "alpha": al, "accuracy": acc + 0.01 * s}
            for r, acc in (("mean", 0.1), ("median", 0.5)) for a in ("none", "sign flipping", "FOE")
            for s in (0, 1) for f in (2, 4) for al in (0.1, 1.0)]
    table = pd.DataFrame(rows)
    table.loc[(table.rule == "median") & (table.attack == "FOE"), "accuracy"] = 0.3
    worst = worst_over_attacks(table[(table.f == 2) & (table.alpha == 0.1)])
    assert worst.loc["median"].tolist() == [0.3, 0.3] and worst.loc["mean"].round(2).tolist() == [0.1, 0.11]
    fig = attack_rule_heatmap(table[(table.f == 2) & (table.alpha == 0.1)])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()][-1] == "worst case"
    assert len(f_heterogeneity_heatmap(table).axes) >= 2
    with pytest.raises(ValueError, match="table must have columns"):
        attack_rule_heatmap(table.drop(columns="seed"))
