"""The benchmark's limit section: FLOP counts from the layers, the matmul rate, and a quick run that prints them."""
import pytest
import torch

from flbook.bench import BATCH, LOCAL_STEPS, layer_macs, main, matmul_rate, peak_rate, round_flops
from flbook.models import cnn, logistic, mlp


def test_flops_of_linear_models_follow_the_formula():
    x = torch.zeros(1, 28, 28)
    assert layer_macs(mlp(784, 10), x) == [784 * 200, 200 * 200, 200 * 10]
    # logistic: forward 2c and weight gradient 2c, no input gradient for the only layer
    assert round_flops(logistic(784, 10), x, n_clients=3) == LOCAL_STEPS * BATCH * 3 * 4 * 784 * 10
    per_sample = 6 * (784 * 200 + 200 * 200 + 200 * 10) - 2 * 784 * 200
    assert per_sample == 879_200
    assert round_flops(mlp(784, 10), x, n_clients=7, local_steps=2, batch=5) == 2 * 5 * 7 * per_sample


def test_conv_macs_count_every_output_element():
    macs = layer_macs(cnn((1, 8, 8), 10, channels=(4, 8), groups=2), torch.zeros(1, 8, 8))
    assert macs == [4 * 8 * 8 * 1 * 9, 8 * 4 * 4 * 4 * 9, 8 * 2 * 2 * 10]


def test_matmul_rate_is_positive_and_finite():
    for workers in (1, 2):  # one thread, or two multiplying side by side (their total)
        rate = matmul_rate(torch.device("cpu"), size=64, repeats=2, workers=workers)
        assert 1e6 < rate < 1e15


def test_the_peak_is_the_best_of_square_and_wide_products():
    square, best = peak_rate(torch.device("cpu"), size=64, repeats=2)
    assert 1e6 < square <= best < 1e15


def test_quick_limit_section_prints_its_columns(capsys):
    main(["--quick", "--limit", "--device", "cpu", "--models", "logistic,mlp", "--clients", "2", "--threads", "1",
          "--peak-size", "128"])
    out = capsys.readouterr().out
    section = out.split("# Against the machine's limit")[1]
    for column in ("gflop", "square_gflop_s", "peak_gflop_s", "batched_cores", "cores_peak_gflop_s", "loop_of_peak",
                   "batched_of_peak", "centralized_of_peak"):
        assert column in section
    rows = [line.split() for line in section.splitlines() if line.split()[:1] in (["logistic"], ["mlp"])]
    assert [r[:2] for r in rows] == [["logistic", "2"], ["mlp", "2"]]
    assert all(0 < float(v) for r in rows for v in r[2:])


def test_panel_latency_times_every_panel():
    import pkgutil

    import matplotlib.pyplot as plt
    import pandas as pd

    from flbook import bench, chapters

    def run(values):  # an instant Run, to time the harness, not the training
        return pd.DataFrame({"round": [0], "test_acc": [0.1], "algorithm": ["A"]})

    table = bench.panel_latency({"quick": (run, {}, lambda history: plt.figure())})
    assert list(table["panel"]) == ["quick"] and (table["seconds_to_figure"] >= 0).all() and table["error"][0] == ""
    assert set(bench.reader_panels()) == {"foundations (00-02)"} | {m.name for m in pkgutil.iter_modules(chapters.__path__)}
    plt.close("all")


def test_gossip_round_section_times_both_rounds():
    import torch

    from flbook.bench import gossip_round

    table = gossip_round(torch.device("cpu"), n_nodes=6, repeats=1)
    assert list(table.columns) == ["nodes", "params", "fedavg_round_s", "gossip_round_s", "gossip/fedavg"]
    assert table.loc[0, "nodes"] == 6 and table.loc[0, "gossip/fedavg"] > 0


def test_protocol_section_times_both_modes_and_checks_they_agree():
    from flbook import bench, protocol

    table = bench.protocol_speed(repeats=1, rounds=1, n_clients=3, model="logistic", lrs=(0.1,), server_lrs=(1.0,))
    assert list(table["mode"]) == ["one by one", "lockstep"] and (table["median_s"] > 0).all()
    assert table["runs"][0] == 4 * 3 + 4 and table["max_acc_gap"][0] < 1e-6 and protocol.LOCKSTEP


def test_robust_section_times_every_case_and_checks_a_byzfl_interpreter_against_flbook(tmp_path):
    """A stand-in `byzfl` whose every rule is the mean: the protocol round-trips, and only the mean agrees."""
    import sys

    from flbook import bench_robust

    (tmp_path / "byzfl.py").write_text("def __getattr__(name):\n    return lambda **kw: (lambda x: x.mean(0))\n")
    table = bench_robust.robust_speed(repeats=1, threads=1, m=30, p=200, phases=1)
    assert list(table["case"]) == list(bench_robust.CASES) and (table["flbook_ms"] > 0).all()
    table = bench_robust.robust_speed(repeats=1, threads=1, m=30, p=200, byzfl_python=sys.executable,
                                      byzfl_pythonpath=str(tmp_path), phases=2)
    agrees = table.set_index("case")["agrees"]
    assert agrees["mean"] == "yes" and agrees["Krum"] == "NO" and agrees["Gaussian"] == ""
    assert (table["byzfl_ms"] > 0).all() and (table["byzfl/flbook"] > 0).all()
    (tmp_path / "byzfl.py").write_text("raise ImportError('no torchvision')\n")
    with pytest.raises(RuntimeError, match="no torchvision"):
        bench_robust.byzfl_times(sys.executable, 1, 1, m=30, p=200, pythonpath=str(tmp_path))


def test_round_bytes_counts_parameters_and_activations():
    from flbook.bench import round_bytes
    model, sample = mlp(64, 10, hidden=(16,)), torch.zeros(64)
    floats = 5 * model.n_params + 3 * 4 * model.activations_per_sample(sample)  # per client and step, batch 4
    assert round_bytes(model, sample, 3, local_steps=2, batch=4) == 4 * 2 * 3 * floats


def test_memory_rate_is_positive_and_finite():
    from flbook.bench import memory_rate
    assert 1e6 < memory_rate(torch.device("cpu"), mib=8, repeats=2) < 1e13


def test_gpu_book_runs_every_notebook_and_reports_the_rows(tmp_path, monkeypatch):
    """The prepared GPU run, here on the CPU with tiny cohorts: notebooks executed into OUT (a failing one leaves
    its log and is counted), the limit rows in OUT/gpu.md."""
    import nbformat
    from flbook import bench_gpu
    folder = tmp_path / "notebooks"
    folder.mkdir()
    for name, code in (("good", "import os\nprint(os.environ['FLBOOK_DEVICE'])"), ("bad", "raise RuntimeError('x')")):
        nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)]), folder / f"{name}.ipynb")
    monkeypatch.setattr(bench_gpu, "COHORTS", ((2, ("loop", "batched")), (3, ("batched",))))
    out = tmp_path / "out"
    bench_gpu.main([str(out), "--device", "cpu", "--notebooks", str(folder), "--repeats", "1", "--peak-size", "64"])
    report = (out / "gpu.md").read_text()
    assert "1 of 2 ran to the end" in report and (out / "notebooks" / "good.ipynb").exists()
    assert "RuntimeError" in (out / "notebooks" / "bad.log").read_text()
    assert "cpu" in nbformat.read(out / "notebooks" / "good.ipynb", 4).cells[0].outputs[0].text
    rows = [line for line in report.splitlines() if line.startswith("| 2 ") or line.startswith("| 3 ")]
    assert len(rows) == 2 and "nan" in rows[1]  # the 3-client row times the batched round only
