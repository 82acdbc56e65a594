"""History summaries: sustained targets, named windows, flat curves and per-seed pairing."""
import math

import numpy as np
import pandas as pd
import pytest

from flbook.history import (WindowMean, final, is_flat, mean_spread, per_run, per_seed_difference, rounds_to,
                            window_mean)


def curve(values, algorithm="A", seed=0, start=0):
    return pd.DataFrame({"algorithm": algorithm, "seed": seed, "round": np.arange(start, start + len(values)),
                         "test_acc": values, "test_loss": 1 - np.asarray(values, dtype=float)})


def test_rounds_to_counts_the_round_from_which_the_target_stays_reached():
    h = curve([0.1, 0.5, 0.9, 0.7, 0.86, 0.9, 0.88])  # touches 0.85 at round 2, dips at 3, stays from 4
    assert rounds_to(h, 0.85) == 4
    assert rounds_to(h, 0.05) == 0
    assert rounds_to(h, 0.2, column="test_loss", above=False) == 4  # losses 0.9 0.5 0.1 0.3 0.14 0.1 0.12
    assert rounds_to(curve([0.1, 0.2, 0.3]), 0.3) == 2


def test_rounds_to_is_nan_when_never_reached_or_lost_or_diverged():
    assert math.isnan(rounds_to(curve([0.1, 0.2, 0.3]), 0.85))  # idxmax would have said round 0
    assert math.isnan(rounds_to(curve([0.1, 0.9, 0.2]), 0.85))  # reached once, then lost
    h = curve([0.1, 0.9, 0.95])
    h.attrs["diverged_at"] = 3
    assert math.isnan(rounds_to(h, 0.85))
    assert math.isnan(rounds_to(curve([0.1, 0.9, np.nan]), 0.85))  # a missing last value is not "reached"


def test_summaries_refuse_a_history_of_several_runs():
    both = pd.concat([curve([0.1, 0.9]), curve([0.2, 0.8], algorithm="B")])
    with pytest.raises(ValueError, match="several runs"):
        rounds_to(both, 0.5)
    with pytest.raises(ValueError, match="column"):
        final(curve([0.1]), "accuracy")


def test_window_mean_says_which_window_it_averaged():
    h = curve([0.0, 0.1, 0.2, 0.3, 0.4, 0.5], start=1)  # rounds 1..6
    w = window_mean(h, "test_acc", last=3)
    assert isinstance(w, WindowMean) and (w.start, w.end) == (4, 6) and w.mean == pytest.approx(0.4)
    assert str(w) == "0.400 (mean over rounds 4-6)"
    every_other = h[h["round"] % 2 == 0]  # rounds 2, 4, 6: the window is in rounds, not rows
    assert window_mean(every_other, last=3).start == 4
    with pytest.raises(ValueError, match="last"):
        window_mean(h, last=0)


def test_final_and_is_flat():
    climbing = curve(np.linspace(0.1, 0.9, 21))
    flat = curve(np.r_[np.linspace(0.1, 0.9, 11), np.full(10, 0.9)])
    assert final(climbing) == pytest.approx(0.9)
    assert not is_flat(climbing, last=5, tolerance=0.02)
    assert is_flat(flat, last=5, tolerance=0.02)
    with pytest.raises(ValueError, match="too short"):
        is_flat(curve([0.1, 0.2, 0.3]), last=5, tolerance=0.1)


def test_per_seed_difference_pairs_runs_by_seed():
    h = pd.concat([curve([0.1, 0.9], "M", 0), curve([0.1, 0.7], "M", 1),
                   curve([0.1, 0.8], "B", 1), curve([0.1, 0.6], "B", 0)])
    assert per_run(h, final).loc[("M", 1)] == pytest.approx(0.7)
    d = per_seed_difference(h, "M", "B", final)
    assert d.to_dict() == pytest.approx({0: 0.3, 1: -0.1})
    with pytest.raises(ValueError, match="different seeds"):
        per_seed_difference(pd.concat([h, curve([0.1, 0.5], "M", 2)]), "M", "B", final)
    with pytest.raises(ValueError, match="'C'"):
        per_seed_difference(h, "C", "B", final)


def test_mean_spread_reports_seeds_and_missing_values():
    assert mean_spread([0.1, 0.2, 0.3]) == "0.200 ± 0.100 (3 seeds)"
    assert mean_spread([0.01, 0.03, np.nan], signed=True) == "+0.020 ± 0.014 (3 seeds, 1 never)"


def test_seed_budget_table_averages_bytes_and_spreads_accuracy_over_seeds():
    from flbook.history import seed_budget_table

    rows = [{"algorithm": name, "seed": seed, "round": r, "lr": 0.1, "test_acc": acc,
             "bytes_up": up * (1 + seed) * r}
            for name, up, accs in (("FedAvg", 100, (0.8, 0.9)), ("zip", 10, (0.7, 0.9)))
            for seed, acc in enumerate(accs) for r in range(3)]
    table = seed_budget_table(pd.DataFrame(rows), last=2)
    assert list(table.index) == ["FedAvg", "zip"]
    assert table.loc["zip", "x fewer bytes up"] == 10 and table.loc["FedAvg", "MB up"] == 300 / 1e6
    assert table.loc["zip", "accuracy"] == pytest.approx(0.8)
    assert table.loc["zip", "spread"] == pytest.approx(0.2 / math.sqrt(2))  # the sample std of 0.7 and 0.9
