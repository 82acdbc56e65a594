"""The centralized loop and the protocol applied by hand: reproducible runs, divergence reported, fair tuning."""
import math

import pytest
import torch
from torch import nn

from flbook.centralized import accuracy_score, compare, fit, loss_score, seeded_init, tune
from flbook.data import load
from flbook.sharpness import SGDLearner


def sgd(data, seed, lr):
    return SGDLearner(seeded_init(seed, lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 10))), lr)


@pytest.fixture(scope="module")
def digits():
    return load("digits")


def test_same_seed_same_numbers_and_the_columns_plots_need(digits):
    a, b = (fit(sgd, digits, seed=1, lr=0.05, epochs=2, batch_size=128, label="SGD") for _ in range(2))
    assert a.drop(columns="wall_time").equals(b.drop(columns="wall_time"))
    assert list(a["round"]) == [0, 1, 2] and {"algorithm", "test_acc", "test_loss", "seed", "lr"} <= set(a.columns)
    c = fit(sgd, digits, seed=2, lr=0.05, epochs=2, batch_size=128)
    assert not a["test_loss"].equals(c["test_loss"])
    assert a["wall_time"].is_monotonic_increasing and a.attrs["diverged_at"] is None


def test_final_measures_join_the_last_row(digits):
    history = fit(sgd, digits, seed=0, lr=0.05, epochs=1, batch_size=256)
    assert history["hessian_top"].isna().tolist() == [True, False] and history["forwards_per_step"].iloc[-1] == 1
    assert "hessian_top" not in fit(sgd, digits, seed=0, lr=0.05, epochs=1, batch_size=256, final=False)


def test_tuning_skips_the_final_measures(digits):
    class NoFinal(SGDLearner):
        def final(self, dataset):
            raise AssertionError("tuning scores the held-out accuracy only")

    tuned = tune(digits, lambda data, seed, lr: NoFinal(sgd(data, seed, lr).model, lr), epochs=1, name="SGD",
                 lrs=(0.05,), batch_size=256)
    assert tuned.lr == 0.05 and len(tuned.scores) == 1


def test_a_diverged_run_is_reported_and_scores_minus_infinity(digits):
    with pytest.warns(RuntimeWarning, match="diverged in epoch 1"):
        history = fit(sgd, digits, seed=0, lr=1e6, epochs=3, batch_size=64, label="SGD")
    assert history.attrs["diverged_at"] == 1 and len(history) == 1
    assert accuracy_score(history) == -math.inf and loss_score(history) == -math.inf


def test_tuning_extends_the_grid_at_its_edge(digits):
    with pytest.warns(RuntimeWarning, match="still at the edge"):
        tuned = tune(digits, sgd, epochs=1, name="SGD", lrs=(3e-3, 1e-2), batch_size=128, max_extensions=1)
    assert tuned.extended == ("lr up to 0.0333",) and tuned.lr == pytest.approx(1 / 30)
    assert tuned.at_edge == ("lr",) and len(tuned.scores) == 3


def test_compare_runs_every_method_on_every_seed(digits):
    result = compare(digits, {"A": sgd, "B": sgd}, epochs=1, seeds=(0, 1, 2), batch_size=256, progress=False,
                     fixed_lr={"A": 0.05, "B": 0.05})
    assert set(result.history.seed) == {0, 1, 2} and set(result.history.algorithm) == {"A", "B"}
    assert (result.difference("A", "B", lambda run: run.test_acc.iloc[-1]) == 0).all()
    with pytest.raises(ValueError, match="seeds must be distinct"):
        compare(digits, {"A": sgd}, epochs=1, seeds=(0, 0, 1))


def test_bad_arguments_name_the_parameter(digits):
    with pytest.raises(ValueError, match="epochs must be an integer"):
        fit(sgd, digits, seed=0, lr=0.1, epochs=0)
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        fit(sgd, digits, seed=0, lr=-1.0, epochs=1)
    assert torch.get_num_threads() >= 1
