"""Every chapter module: controls() -> a Run at tiny settings -> figure(history), plus what each chapter promises."""
import importlib
import pkgutil

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

import flbook.chapters  # noqa: E402
from flbook import widgets  # noqa: E402

CHAPTERS = sorted(m.name for m in pkgutil.iter_modules(flbook.chapters.__path__))
TINY = {  # chapter -> control values that make its Run take a second or two
    "ch11_fedld": {"n_clients": 4, "alpha": 0.1, "local_steps": 2, "rounds": 2, "hidden": 8,
                   "algorithms": ("FedAvg", "FedLD")},
    "ch12_fedlex": {"n_clients": 5, "rounds": 2, "local_steps": 2, "algorithms": ("FedAvg", "FedLEx"),
                    "explore_epochs": 2, "data_fraction": 0.5},
    "ch13_fedspeed": {"n_clients": 5, "rounds": 2, "local_steps": 2, "algorithms": ("FedAvg", "FedSpeed"),
                      "fedspeed_rho": 0.0, "fedspeed_server": "paper"},
    "ch20_fedamd": {"dataset": "digits", "model": "logistic", "n_clients": 4, "participation": 0.5, "local_steps": 2,
                    "rounds": 3, "seeds": 2, "anchor_probability": 0.5},
    "ch21_fedstale": {"dataset": "digits", "model": "logistic", "n_clients": 6, "rounds": 10, "betas": (0.0, 1.0),
                      "seeds": 2},
    "ch22_async_fedfix": {"n_clients": 3, "time_budget": 1.0, "local_steps": 2, "buffer_size": 2},
    "ch23_unlimited_staleness": {"n_clients": 10, "rounds": 4, "delay": 2, "gi_iterations": 2, "n_rec": 2, "hidden": 8},
    "ch30_fedzip": {"n_clients": 3, "rounds": 1, "z": 0.05, "clusters": 4, "encoder": "gap"},
    "ch31_admm_noise": {"iterations": 50, "runs": 2, "downlink_std": 0.03, "uplink_std": 0.001, "participation": 0.5,
                        "algorithms": ("ADMM, double reception", "ADMM, single reception")},
    "ch32_communication_budget": {"n_clients": 4, "rounds": 2, "algorithms": ("FedAvg",), "compression": "qsgd",
                                  "level": 4},
    "ch40_byzantine": {"n_clients": 6, "f": 1, "rounds": 2, "attack": "FOE (line search)", "rule": "krum"},
    "ch41_monna": {"n_nodes": 7, "f": 2, "steps": 10, "attack": "alie"},
    "ch42_fal": {"n_clients": 3, "rounds": 2, "pgd_steps": 2, "local_steps": 2},
    "ch50_decentralized": {"n_nodes": 4, "rounds": 2, "local_steps": 2},
    "ch51_dfedsam": {"n_nodes": 4, "rounds": 2, "local_steps": 2, "gossip_steps": 2},
    "ch52_modest": {"n_nodes": 8, "sample_size": 4, "rounds": 4, "crash_round": 2, "rejoin_round": 3,
                    "local_steps": 2},
    "ch53_single_merge": {"n_nodes": 4, "rounds": 3, "local_steps": 2},
    "ch60_sfprompt": {"n_clients": 3, "rounds": 2, "algorithms": ("FL linear probe", "SFPrompt"), "prompts": 2},
    "ch61_edit": {"n_workers": 2, "interval": 2, "syncs": 3, "methods": ("DiLoCo", "A-EDiT"), "seeds": 1,
                  "tune": False},
    "ch70_auglocal": {"n_layers": 4, "width": 16, "n_modules": 3, "depth": 2, "epochs": 1, "batch_size": 256},
    "ch71_local_transformers": {"n_modules": 2, "epochs": 1, "batch_size": 256,
                                "algorithms": ("E2E", "feature reconstruction")},
    "ch72_frugal": {"epochs": 1, "batch_size": 64, "algorithms": ("AdamW", "FRUGAL"), "update_gap": 5},
    "ch73_saf": {"epochs": 2, "start": 0, "lookback": 1, "batch_size": 128},
}


def test_every_chapter_module_has_tiny_settings():
    assert sorted(TINY) == CHAPTERS


def panel_for(name: str) -> widgets.ControlPanel:
    """The chapter's panel, its controls set to TINY (as a reader would set them), device on the CPU."""
    chapter = importlib.import_module(f"flbook.chapters.{name}")
    run = getattr(chapter, "stream", chapter.run)  # a chapter that streams gives its panel the stream
    panel = widgets.control_panel(run=lambda values: run(values, progress=False), controls=chapter.controls(),
                                  plot=chapter.figure)
    for key, value in TINY[name].items():
        panel.controls[key].value = value
    if "device" in panel.controls:
        panel.controls["device"].value = "cpu"
    return panel


@pytest.fixture(scope="module")
def runs() -> dict[str, widgets.ControlPanel]:
    return {}


@pytest.mark.parametrize("name", CHAPTERS)
def test_chapter_panel_runs_and_draws(name, runs):
    chapter = importlib.import_module(f"flbook.chapters.{name}")
    assert {"DEFAULTS", "controls", "run", "figure"} <= set(vars(chapter)), "the chapter contract"
    panel = panel_for(name)
    panel.on_run()
    plt.close("all")
    assert panel.error is None
    assert isinstance(panel.history, pd.DataFrame) and len(panel.history) > 0 and panel.figure is not None
    runs[name] = panel


@pytest.mark.parametrize("name", [n for n in CHAPTERS if "algorithms" in TINY[n]])
def test_an_empty_selection_is_a_one_line_error(name):
    panel = panel_for(name)
    panel.controls["algorithms"].value = ()
    panel.on_run()
    assert panel.history is None and "algorithms must be a non-empty selection" in panel.error


def test_fedld_lineup_and_terms(runs):
    from flbook.chapters import ch11_fedld
    from flbook.loss_decomposition import TERMS
    from flbook.models import mlp

    lineup = ch11_fedld.lineup(mlp(64, 10, hidden=(8,)), margin=0.2, k_prop=0.6, mu=0.05)
    assert list(lineup) == list(ch11_fedld.LINEUP)
    assert (lineup["FedLD"].margin, lineup["FedLD"].k_prop, lineup["FedProx"].mu) == (0.2, 0.6, 0.05)
    history = runs["ch11_fedld"].history
    assert list(history["algorithm"].unique()) == ["FedAvg", "FedLD"]
    assert set(TERMS) <= set(history.columns) and len(history) == 6


def test_fedlex_is_charged_for_its_exploration(runs):
    panel = runs["ch12_fedlex"]
    first = panel.history[panel.history["round"] == 0].set_index("algorithm")
    assert first.loc["FedAvg", "bytes_up"] == 0
    assert first.loc["FedLEx", "bytes_up"] == 5 * widgets.federation_from(panel.values()).model.n_params * 4


def test_fedspeed_panel_runs_the_selection(runs):
    history = runs["ch13_fedspeed"].history
    assert list(history.algorithm.unique()) == ["FedAvg", "FedSpeed"] and history["round"].max() == 2


def test_fedamd_panel_runs_every_seed(runs):
    history = runs["ch20_fedamd"].history
    assert set(history["algorithm"]) == {"FedAvg", "SCAFFOLD", "FedAMD"}
    assert set(history["seed"]) == {0, 1} and len(history) == 3 * 2 * 4


def test_fedamd_shards_are_equal():
    from flbook.chapters.ch20_fedamd import equal_dirichlet

    parts = equal_dirichlet(np.repeat(np.arange(10), 30), 7, alpha=0.1, seed=0)
    assert {len(p) for p in parts} == {300 // 7}
    assert len(np.unique(np.concatenate(parts))) == 7 * (300 // 7)


def test_fedstale_gain_and_bad_gaps(runs):
    from flbook.chapters.ch21_fedstale import staleness_gain

    panel = runs["ch21_fedstale"]
    assert set(panel.history["algorithm"]) == {"FedAvg (β=0)", "FedVARP (β=1)"}
    gain = staleness_gain(panel.history)
    assert len(gain) == 4 and (gain.loc[gain["beta"] == 0, "vs_fedavg"] == 0).all()
    assert (gain["gap"] == 0.9).all() and set(gain["seed"]) == {0, 1}
    panel.controls["participation"].value = 0.3  # 0.3 +- 0.45 leaves (0, 1]
    panel.on_run()
    assert panel.history is None and "gap must be" in panel.error


def test_async_schemes(runs):
    history = runs["ch22_async_fedfix"].history
    assert set(history["algorithm"]) == {"FedAvg (sync)", "Async FedAvg", "FedBuff-2", "FedFix-0.5"}
    assert history["sim_time"].max() == pytest.approx(1.0)
    assert len(runs["ch22_async_fedfix"].figure.axes) == 2


def test_a_buffer_larger_than_the_federation_is_a_one_line_error():
    panel = panel_for("ch22_async_fedfix")
    panel.controls["buffer_size"].value = 5  # 3 clients
    panel.on_run()
    assert panel.history is None and "buffer_size must be an integer in [1, 3]" in panel.error


def test_staleness_experiment(runs):
    from flbook.chapters import ch23_unlimited_staleness

    history = runs["ch23_unlimited_staleness"].history
    assert {"no delay (oracle)", "direct", "GI conversion", "DC-ASGD"} <= set(history["algorithm"])
    assert history["class_acc"].between(0, 1).all()
    log = history.attrs["updates"].query("algorithm != 'no delay (oracle)'")
    assert set(log.loc[log.client.isin(history.attrs["slow"]), "staleness"]) == {2}
    with pytest.raises(ValueError, match="dataset must be"):
        ch23_unlimited_staleness.run({"dataset": "synthetic"})


def test_fedzip_runs_the_four_pipelines(runs):
    panel = runs["ch30_fedzip"]
    assert list(pd.unique(panel.history.algorithm)) == [
        "FedAvg", "FedAvg + top-k(0.05)", "FedAvg + k-means(4), no zero centroid",
        "FedAvg + k-means(4) with a zero centroid", "FedAvg + FEDZIP(z=0.05, k=4, gap)"]
    assert panel.figure.axes[1].get_xscale() == "log"


def test_fedzip_error_feedback_is_a_knob():
    from flbook.chapters import ch30_fedzip
    from flbook.models import mlp

    table = ch30_fedzip.runs(0.1, 3, "huffman", mlp(64, 10, hidden=(4,)), error_feedback=True)
    assert [channel.error_feedback for _, channel in table.values()] == [False, True, True, True, True]
    assert list(table)[1] == "FedAvg + top-k(0.1) + EF"


def test_admm_sweep(runs):
    from flbook.chapters import ch31_admm_noise

    history = runs["ch31_admm_noise"].history
    assert set(zip(history["downlink_std"], history["uplink_std"])) == {(0.0, 0.0), (0.03, 0.001)}
    assert set(history["algorithm"]) == {"ADMM, double reception", "ADMM, single reception"}
    assert set(history["participation"]) == {0.5} and history["iteration"].max() == 50
    assert set(ch31_admm_noise.METHODS) == set(ch31_admm_noise.controls()["algorithms"].options)
    assert np.isfinite(history["msd_db"]).all()


def test_admm_noise_on_one_link_only():
    from flbook.admm import wls_problem
    from flbook.chapters.ch31_admm_noise import error_floors, methods_from, msd_curves

    problem = wls_problem(n_clients=5, seed=0)
    methods = methods_from({"algorithms": ("ADMM, double reception",)})
    floors = {links: error_floors(msd_curves(methods, problem, 100, [0.01], links=links, runs=2), last=20).iloc[0, 0]
              for links in ("both", "down", "up")}
    assert floors["both"] > max(floors["down"], floors["up"])  # noise on both links costs more than on either
    with pytest.raises(ValueError, match="links must be one of"):
        msd_curves(methods, problem, 10, [0.01], links="sideways")


def test_budget_adds_an_uncompressed_reference(runs):
    from flbook.chapters import ch32_communication_budget

    assert list(pd.unique(runs["ch32_communication_budget"].history.algorithm)) == ["FedAvg", "FedAvg + QSGD(4 levels)"]
    only = ch32_communication_budget.run({"n_clients": 4, "rounds": 1, "algorithms": ("FedAvg",), "compression": "none",
                                          "level": None}, progress=False)
    assert list(pd.unique(only.algorithm)) == ["FedAvg"]


def test_admm_curves_floors_and_figure():
    from flbook.admm import DoubleReceptionADMM, StandardADMM, wls_problem
    from flbook.chapters.ch31_admm_noise import error_floors, figure, methods_from, msd_curves

    problem = wls_problem(n_clients=10, seed=0)
    history = msd_curves({"double": DoubleReceptionADMM(30.0), "single": StandardADMM(30.0)}, problem, 40, [0.0, 0.01],
                         runs=2)
    assert len(history) == 2 * 2 * 41 and {"algorithm", "noise_std", "iteration", "msd_db"} <= set(history.columns)
    floors = error_floors(history, last=10)
    assert list(floors.columns) == ["double", "single"] and list(floors.index) == [0.0, 0.01]
    assert (floors.loc[0.01] > floors.loc[0.0]).all()
    assert len(figure(history).axes) == 2
    plt.close("all")
    with pytest.raises(ValueError, match="algorithms must be a non-empty selection of"):
        methods_from({"algorithms": ("SGD",)})


def test_matched_step_sizes_apply_fedfix_weight_per_time_unit():
    from flbook.chapters.ch22_async_fedfix import schemes_from, weight_per_time

    job_time = np.array([1.0, 0.5, 0.25, 0.2])
    rate = weight_per_time(job_time, buffer_size=2, period=0.5)
    assert rate == pytest.approx({"sync": 1.0, "async": 12.0, "fedbuff": 6.0, "fedfix": 2.0})
    matched = schemes_from({"match_steps": True, "buffer_size": 2, "period": 0.5}, job_time)
    steps = [algorithm.server_lr for algorithm in matched.values()]
    assert steps == pytest.approx([2.0, 2 / 12, 2 / 6, 1.0])  # every scheme then moves 2 per time unit
    assert list(matched)[0] == "FedAvg (sync) (η_g=2)"
    assert [a.server_lr for a in schemes_from({}).values()] == [1.0] * 4
    with pytest.raises(ValueError, match="match_steps needs the clients' job times"):
        schemes_from({"match_steps": True})


def test_fedstale_can_estimate_participation():
    from flbook.chapters import ch21_fedstale

    values = {"dataset": "digits", "model": "logistic", "n_clients": 6, "rounds": 10, "betas": (0.5,), "seeds": 1,
              "participation": 0.55, "participation_gap": 0.9, "partitioner": "dirichlet", "alpha": 0.3}
    known = ch21_fedstale.run(values, progress=False)
    estimated = ch21_fedstale.run({**values, "known_p": False}, progress=False)
    assert not np.allclose(known.test_loss.to_numpy()[1:], estimated.test_loss.to_numpy()[1:])


def test_fedstale_streams_each_seed_and_run_is_its_last():
    from flbook.chapters import ch21_fedstale

    values = {"dataset": "digits", "model": "logistic", "n_clients": 6, "rounds": 5, "betas": (0.0, 1.0), "seeds": 2,
              "participation": 0.55, "participation_gap": 0.9, "partitioner": "dirichlet", "alpha": 0.3}
    steps = list(ch21_fedstale.stream(values, progress=False))
    assert [sorted(set(zip(h["seed"], h["beta"]))) for h in steps] == [[(0, 0.0), (0, 1.0)],
                                                                       [(0, 0.0), (0, 1.0), (1, 0.0), (1, 1.0)]]
    plt.close(ch21_fedstale.figure(steps[0]))  # the first seed alone draws
    pd.testing.assert_frame_equal(steps[-1].drop(columns="wall_time"),
                                  ch21_fedstale.run(values, progress=False).drop(columns="wall_time"))


@pytest.mark.parametrize("name, runs", [("ch40_byzantine", 4), ("ch41_monna", 4), ("ch42_fal", 2)])
def test_part_four_panels_stream_one_run_at_a_time_and_run_is_the_last(name, runs):
    chapter = importlib.import_module(f"flbook.chapters.{name}")
    steps = list(chapter.stream(TINY[name], progress=False))
    assert [h["algorithm"].nunique() for h in steps] == list(range(1, runs + 1))
    assert all(len(a) < len(b) and a.equals(b.iloc[:len(a)]) for a, b in zip(steps, steps[1:]))
    pd.testing.assert_frame_equal(steps[-1].drop(columns="wall_time"),
                                  chapter.run(TINY[name], progress=False).drop(columns="wall_time"))
