import math

import pandas as pd
import pytest

from flbook.data import load
from flbook.peer_protocol import compare, last_fifth, tune_lr


def _fake(best):
    """A method whose validation score peaks at lr = best (no training), recording the runs it was asked for."""
    calls = []

    def method(dataset, seed, lr, rounds):
        calls.append((dataset.name, seed, lr))
        score = -abs(math.log(lr / best))
        return pd.DataFrame({"round": range(rounds + 1), "test_acc": [score] * (rounds + 1)})
    return method, calls


def test_tuning_scores_on_the_validation_split_and_extends_the_grid_at_an_edge():
    method, calls = _fake(best=1.0)
    lr, table = tune_lr(method, load("digits"), rounds=5, lrs=(0.03, 0.1, 0.3))
    assert lr == pytest.approx(0.9) and len(table) == 5  # extended to 0.9, then to 2.7, which scores lower
    assert all(name.endswith("(validation)") for name, _, _ in calls)
    method, calls = _fake(best=100.0)
    lr, table = tune_lr(method, load("digits"), rounds=5, lrs=(0.03, 0.1, 0.3), max_extensions=2)
    assert lr == pytest.approx(2.7) and len(table) == 5  # bounded: two extensions at most


def test_compare_runs_every_method_on_every_seed_at_its_choice():
    fast, _ = _fake(best=0.3)
    slow, _ = _fake(best=0.1)
    result = compare(load("digits"), {"fast": fast, "slow": slow}, rounds=5)
    assert result.choices.loc["fast", "lr"] == 0.3 and result.choices.loc["slow", "lr"] == 0.1
    assert set(result.history.seed) == {0, 1, 2} and set(result.history.algorithm) == {"fast", "slow"}
    fixed = compare(load("digits"), {"fast": fast}, rounds=5, fixed_lr=0.05)
    assert set(fixed.history.lr) == {0.05}
    assert len(result.difference("fast", "slow", last_fifth())) == 3
