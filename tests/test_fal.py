"""FAL (Li, Song, Yang 2023): the card's invariants, and that the PGD inner maximisation is what buys robustness."""
import pytest
import torch

from conftest import equal_parts
from flbook import Federation
from flbook.algorithms import FedAvg
from flbook.algorithms import FAL
from flbook.algorithms.fal import pgd, robust_accuracy


def _fed(digits_data, seed=0):
    parts = equal_parts(len(digits_data.y_train), 6, 150)
    return Federation(digits_data, parts, "logistic", local_steps=5, batch_size=32, lr=0.5, seed=seed)


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


@pytest.mark.parametrize("kw, match", [({"epsilon": -0.1}, "epsilon and step_size must be >= 0"),
                                       ({"steps": 1.5}, r"steps \(PGD steps")])
def test_bad_settings_are_named(kw, match):
    with pytest.raises(ValueError, match=match):
        FAL(**kw)
