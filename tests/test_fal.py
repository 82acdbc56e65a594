"""FAL (Li, Song, Yang 2023): the card's invariants, and that the PGD inner maximisation is what buys robustness."""
import pytest
import torch

from conftest import equal_parts
from flbook import Federation
from flbook.algorithms import FedAvg
from flbook.algorithms import FAL
from flbook.algorithms.fal import RobustAccuracy, pgd, robust_accuracy
from flbook.asynchronous import AsyncFederation
from flbook.devices import linear


def _fed(digits_data, seed=0, **kw):
    parts = equal_parts(len(digits_data.y_train), 6, 150)
    return Federation(digits_data, parts, "logistic", local_steps=5, batch_size=32, lr=0.5, seed=seed, **kw)


def test_epsilon_zero_is_fedavg_bit_for_bit(digits_data):
    fed = _fed(digits_data)
    fed.run(FedAvg(), 3, progress=False, label="fedavg")
    fed.run(FAL(epsilon=0.0), 3, progress=False, label="fal0")
    fed.run(FAL(steps=0), 3, progress=False, label="fal_s0")
    assert torch.equal(fed.final_models["fedavg"], fed.final_models["fal0"])
    assert torch.equal(fed.final_models["fedavg"], fed.final_models["fal_s0"])
    fed.run(FAL(epsilon=0.1), 3, progress=False, label="fal")
    assert not torch.allclose(fed.final_models["fedavg"], fed.final_models["fal"])


def test_pgd_stays_in_the_ball_and_the_input_range_and_raises_the_loss(digits_data):
    fed = _fed(digits_data)
    theta = fed.initial_model() * 5
    x, y = fed.x_test[:64], fed.y_test[:64]
    loss = lambda t, xb, yb: torch.nn.functional.cross_entropy(fed.model(t, xb), yb)  # noqa: E731
    x_adv = pgd(loss, theta, x, y, 0.1, 0.025, 10)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-7 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert loss(theta, x_adv, y) >= loss(theta, x, y) - 1e-6


def test_adversarial_training_buys_robust_accuracy_that_fedavg_lacks(digits_data):
    """Breaking the key ingredient: without the inner maximisation (steps = 0) the robust accuracy is lost."""
    fed = _fed(digits_data)
    def robust(algorithm):
        fed.run(algorithm, 15, progress=False, label=str(algorithm))
        return robust_accuracy(fed.model, fed.final_models[str(algorithm)], fed.x_test, fed.y_test, 0.2)
    assert robust(FAL(epsilon=0.2, step_size=0.05)) > robust(FAL(epsilon=0.2, steps=0)) + 0.1


def test_robust_accuracy_is_a_column_of_both_loops_and_equals_clean_accuracy_at_epsilon_zero(digits_data):
    fed = _fed(digits_data, metrics=[RobustAccuracy(0.0, column="robust0"), RobustAccuracy(0.2)])
    sync = fed.run(FedAvg(), 4, progress=False)
    devices = linear(fed.n_clients, 0.5, step_time=0.1)
    late = AsyncFederation(fed, devices).run(FedAvg(), 4.0, eval_every=1.0, progress=False)
    for history in (sync, late):
        assert len(history) >= 5 and history["robust_acc"].notna().all() and history["robust_acc"].between(0, 1).all()
        assert history["robust0"].to_numpy() == pytest.approx(history["test_acc"].to_numpy(), abs=1e-6)
        assert (history["robust_acc"] <= history["test_acc"] + 1e-6).all()  # PGD from x never helps the model
    assert (sync["robust_acc"].iloc[1:] < sync["test_acc"].iloc[1:] - 0.2).all()  # FedAvg is fooled at 0.2
    theta = fed.final_models["FedAvg"]
    assert sync["robust_acc"].iloc[-1] == robust_accuracy(fed.model, theta, fed.x_test, fed.y_test, 0.2)
    assert robust_accuracy(fed.model, theta, fed.x_test, fed.y_test, 0.2, chunk=50) == sync["robust_acc"].iloc[-1]


def test_metrics_must_be_a_list_of_functions(digits_data):
    with pytest.raises(TypeError, match="metrics must be a list of functions"):
        _fed(digits_data, metrics=RobustAccuracy(0.1))


@pytest.mark.parametrize("kw, match", [({"epsilon": -0.1}, "epsilon and step_size must be >= 0"),
                                       ({"steps": 1.5}, r"steps \(PGD steps")])
def test_bad_settings_are_named(kw, match):
    with pytest.raises(ValueError, match=match):
        FAL(**kw)
