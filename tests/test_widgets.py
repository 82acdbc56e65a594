import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from flbook import DivergenceError, plots, widgets  # noqa: E402
from flbook.algorithms import FedProx  # noqa: E402
from flbook.partition import dirichlet  # noqa: E402
from flbook.widgets.controls import PARTITION_PARAMETER  # noqa: E402

TINY = {"model": "logistic", "n_clients": 5, "rounds": 2, "local_steps": 2}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def panel():
    controls = widgets.standard_controls(algorithms=("FedAvg", "SCAFFOLD"), **TINY)
    return widgets.control_panel(run=widgets.compare_run(progress=False), controls=controls,
                                 plot=plots.accuracy_figure, title="Baselines")


def test_standard_controls_have_the_contract_keys_and_defaults():
    controls = widgets.standard_controls(alpha=0.1, rounds=7)
    assert {"dataset", "partitioner", "alpha", "n_clients", "participation", "local_steps", "lr", "rounds",
            "algorithms", "seed", "device"} <= set(controls)
    assert controls["alpha"].value == pytest.approx(0.1) and controls["rounds"].value == 7
    assert set(controls["algorithms"].options) == {"FedAvg", "FedProx", "SCAFFOLD", "FedAvgM", "FedAdam"}
    with pytest.raises(ValueError, match="defaults must be among"):
        widgets.standard_controls(alhpa=0.1)


def test_only_the_chosen_partitioners_parameter_is_visible():
    controls = widgets.standard_controls()

    def visible():
        return [key for key in PARTITION_PARAMETER.values() if controls[key].layout.display != "none"]

    assert visible() == ["alpha"]
    controls["partitioner"].value = "pathological"
    assert visible() == ["classes_per_client"]
    controls["partitioner"].value = "iid"
    assert visible() == []


def test_federation_from_maps_values(digits_data):
    values = {"partitioner": "dirichlet", "alpha": 0.5, "n_clients": 7, "seed": 3, "local_steps": 4, "lr": 0.05,
              "participation": 0.5, "model": "logistic", "device": "cpu", "unrelated": 1}
    fed = widgets.federation_from(values)
    assert (fed.n_clients, fed.local_steps, fed.lr, fed.seed, fed.model.kind) == (7, 4, 0.05, 3, "logistic")
    assert fed.participation.cohort_size(7) == 4
    expected = dirichlet(digits_data.y_train, 7, alpha=0.5, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(fed.partition, expected))
    assert widgets.federation_from({"partitioner": "pathological", "classes_per_client": 1}).n_clients == 20


def test_federation_from_natural_split_needs_a_dataset_that_has_one():
    fed = widgets.federation_from({"dataset": "synthetic", "partitioner": "natural", "n_clients": 6,
                                   "model": "logistic"})
    assert fed.n_clients == 6
    with pytest.raises(ValueError, match="no natural client split"):
        widgets.federation_from({"dataset": "digits", "partitioner": "natural"})


def test_run_button_trains_and_draws(panel):
    assert panel.history is None
    panel.on_run()
    first = panel.history
    assert list(pd.unique(first.algorithm)) == ["FedAvg", "SCAFFOLD"] and first["round"].max() == 2
    assert len(panel.figure.axes) == 2 and panel.error is None
    assert "flbook-done" in panel.box._dom_classes
    panel.controls["alpha"].value = 100.0
    panel.controls["rounds"].value = 3
    panel.button.click()  # the same callback, through the button
    assert panel.history["round"].max() == 3
    assert not first.test_acc.equals(panel.history.test_acc.iloc[: len(first)])


def test_user_error_is_a_message_not_an_exception(panel, capsys):
    panel.on_run()
    panel.controls["n_clients"].value = 200
    panel.controls["partitioner"].value = "shards"
    panel.controls["shards_per_client"].value = 10  # 1437 samples cannot give 200 clients 10 shards each
    panel.on_run()
    assert panel.error.startswith("ValueError: shards_per_client must be in [1, 7]")
    assert "Cannot run: ValueError: shards_per_client" in capsys.readouterr().out
    assert panel.history is None and panel.figure is None
    assert "flbook-done" in panel.box._dom_classes and not panel.button.disabled


def test_divergence_is_a_user_error():
    def diverging(values):
        raise DivergenceError("FedAvg diverged at round 3")

    panel = widgets.control_panel(run=diverging, controls=widgets.standard_controls(), plot=plots.accuracy_figure)
    panel.on_run()
    assert panel.error == "DivergenceError: FedAvg diverged at round 3"


def test_other_exceptions_propagate():
    def broken(values):
        raise KeyError("typo")

    panel = widgets.control_panel(run=broken, controls=widgets.standard_controls(), plot=plots.accuracy_figure)
    with pytest.raises(KeyError, match="typo"):
        panel.on_run()
    assert "flbook-done" in panel.box._dom_classes and not panel.button.disabled


def test_dom_classes_for_browser_tests(panel):
    assert "flbook-panel" in panel.box._dom_classes
    assert "flbook-run" in panel.button._dom_classes
    assert "flbook-output" in panel.output._dom_classes
    assert "flbook-control-alpha" in panel.controls["alpha"]._dom_classes
    assert panel._repr_mimebundle_()["application/vnd.jupyter.widget-view+json"]["model_id"] == panel.box.model_id


def test_compare_run_builds_algorithms_from_the_values():
    run = widgets.compare_run({"FedProx": lambda v: FedProx(mu=v["mu"])}, progress=False)
    history = run({**TINY, "mu": 0.5, "rounds": 1})
    assert list(pd.unique(history.algorithm)) == ["FedProx"] and len(history) == 2
    with pytest.raises(ValueError, match="non-empty selection"):
        run({**TINY, "algorithms": ("FedAvg",)})


def test_baselines_take_their_hyperparameters_from_the_values():
    controls = widgets.baseline_controls(mu=0.1)
    values = {key: control.value for key, control in controls.items()}
    built = widgets.baselines_from({**values, "momentum": 0.5})
    assert list(built) == ["FedAvg", "FedProx", "SCAFFOLD", "FedAvgM", "FedAdam"]
    assert (built["FedProx"].mu, built["FedAvgM"].momentum) == (pytest.approx(0.1), 0.5)
    assert built["FedAdam"].server_lr == pytest.approx(0.01)
    with pytest.raises(ValueError, match="defaults must be among"):
        widgets.baseline_controls(beta=0.1)


# ------------------------------------------------------------------------- participation, noise, compression
def test_participation_controls_describe_two_groups():
    from flbook.participation import two_groups

    controls = widgets.participation_controls(rate=0.3, gap=0.2)
    assert set(controls) == {"participation", "participation_gap"}
    controls["participation"].value = 0.55
    controls["participation_gap"].value = 0.9
    values = {key: c.value for key, c in controls.items()} | {"n_clients": 4}
    assert widgets.participation_from(values) == two_groups(4, 0.55, 0.9)
    assert widgets.participation_from({"participation": 0.5, "n_clients": 2}).p == (0.5, 0.5)  # homogeneous


def test_noise_controls_build_the_channel():
    import math

    from flbook.channel import Channel, NoisyChannel

    controls = widgets.noise_controls()
    assert set(controls) == {"snr_db", "drop_prob", "links"}
    values = lambda: {k: w.value for k, w in controls.items()}  # noqa: E731
    assert type(widgets.channel_from(values())) is Channel
    controls["snr_db"].value, controls["links"].value = 20.0, "both"
    channel = widgets.channel_from(values())
    assert isinstance(channel, NoisyChannel)
    assert (channel.snr_db, channel.drop_prob, channel.links) == (20.0, 0.0, "both")
    controls["snr_db"].value, controls["drop_prob"].value = math.inf, 0.25
    assert widgets.channel_from(values()).drop_prob == 0.25
    assert widgets.noise_controls(snr_db=12.0)["snr_db"].value == 12.0  # a default outside the preset steps is added


def test_compression_controls_follow_the_method():
    from flbook.channel.compression import layers_of
    from flbook.models import mlp

    controls = widgets.compression_controls("top-k")
    assert controls["level"].value == 0.1 and controls["level"].description == "fraction kept"
    controls["compression"].value = "uniform"
    assert controls["level"].value == 8 and 4 in controls["level"].options
    assert str(widgets.compressor_from({k: c.value for k, c in controls.items()})) == "uniform(8 bits)"
    controls["compression"].value = "none"
    assert controls["level"].disabled and widgets.compressor_from({"compression": "none", "level": None}).lossless
    with pytest.raises(ValueError, match="level must be one of"):
        widgets.compression_controls("qsgd", level=3)
    model = mlp(64, 10, hidden=(4,))
    channel = widgets.compression_channel_from({"compression": "k-means", "level": 4, "error_feedback": True}, model)
    assert str(channel.up) == "k-means(4)" and channel.layers == layers_of(model) and channel.error_feedback


def test_every_control_has_its_own_layout():
    controls = {**widgets.standard_controls(), **widgets.baseline_controls(), **widgets.noise_controls(),
                **widgets.compression_controls()}
    layouts = [id(control.layout) for control in controls.values()]
    assert len(set(layouts)) == len(layouts)  # hiding one control must not hide another


def test_a_streaming_run_draws_each_history_it_yields():
    drawn = []

    def plot(history):
        drawn.append(len(history))
        return plots.accuracy_figure(history)

    controls = widgets.standard_controls(algorithms=("FedAvg", "SCAFFOLD"), **TINY)
    panel = widgets.control_panel(run=widgets.compare_run(progress=False, stream=True), controls=controls, plot=plot)
    panel.on_run()
    assert drawn == [3, 6]  # rounds 0-2 of FedAvg, then of both
    assert list(pd.unique(panel.history.algorithm)) == ["FedAvg", "SCAFFOLD"]
    assert 0 < panel.first_figure_s and panel.error is None
    whole = widgets.compare_run(progress=False)(panel.values())
    pd.testing.assert_frame_equal(panel.history.drop(columns="wall_time"), whole.drop(columns="wall_time"))


def test_a_streaming_run_checks_its_arguments_before_training():
    fed = widgets.federation_from({"model": "logistic", "n_clients": 5})
    with pytest.raises(ValueError, match="at least one algorithm"):
        fed.compare_each({}, 2)
