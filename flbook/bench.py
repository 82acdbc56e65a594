"""Benchmark one FedAvg round: loop executor vs batched executor vs centralized training on the same samples.

    python -m flbook.bench                 # CPU or the default device, all models and cohort sizes
    python -m flbook.bench --quick         # smaller grid, fewer repeats
    python -m flbook.bench --markdown      # a table to paste into the README
    python -m flbook.bench --limit         # also FLOPs per round and the fraction of the machine's matmul rate
    python -m flbook.bench --reader        # only what a reader waits for: each panel's Run, each notebook's run
    python -m flbook.bench --flower        # only the side-by-side FedAvg task against Flower (needs '.[flower]')
    python -m flbook.bench --protocol      # only one protocol.compare, its runs one by one vs in lockstep
    python -m flbook.bench --robust [--byzfl-python PATH]  # only the robust rules and attacks (vs ByzFL's)

Each round trains M clients for K=5 local steps of batch B=32 on MNIST-shaped inputs (1x28x28; the
values do not matter for timing). Centralized training runs the same M*K minibatches through one
ordinary `nn.Module` with `torch.optim.SGD`: the reference a user would compare against. Timings are
medians of several repeats after a warm-up round; memory is the peak during the timed rounds.

Against the machine's limit (`--limit`): the floating-point operations of one round, counted from the layers'
multiply-accumulates (MACs) per sample, and the fraction of the machine's dense matrix-multiply rate that each
way of training reaches. Per sample and local step, a layer with c MACs costs 2c FLOPs forward, 2c for its weight
gradient and 2c for the gradient of its input, except the first layer (the data need no gradient):

    FLOPs per round = K * B * M * (6 * sum_l c_l - 2 * c_1)

For a Linear layer c = in * out; for the MLP 784-200-200-10 that is 6 * 198,800 - 2 * 156,800 = 879,200 per
sample (about 4.4 P for P = 199,210 parameters). Biases, activations, the loss and the SGD update (O(P) each) are
left out: they are memory traffic, not matrix arithmetic. The machine's rate is the best median of `torch.mm`
over three float32 products with the intra-op thread count the round runs with: the square one of side
`--peak-size` (1024) and the wide ones of 256 and 32 rows by the same (1024, 1024) matrix. The square rate is
printed too: on shared cores it can fall to half the best rate, and a fraction of it would flatter the round.
The batched round trains its chunks on every core (the MLP path), so it is held to the same products run by that
many threads side by side (`batched_cores`, `cores_peak_gflop_s`); the loop and centralized training to one.
The memory side: the bytes a batched round must move (`round_bytes`: per client and step 5P floats of parameters
and gradient, 3BA of activations) over the copy bandwidth (`memory_rate`); `bound_s` is the larger of the two
limits and `batched/bound` the round's time over it. `python -m flbook.bench_gpu` runs the GPU rows and every
notebook on a GPU in one go.

What a reader waits for (`--reader`): for every chapter's control panel (and the foundations' panel of
chapters 00-02), the seconds from pressing Run at its default settings to the figure, in this process; and
for every notebook, the seconds `jupyter nbconvert --execute` takes to run it in a fresh kernel on the CPU.
Targets on 2 cores: a panel's figure within 5 s, a notebook within 60 s.

The experiment protocol (`--protocol`): one `protocol.compare` of FedAvg and SCAFFOLD with both step-size controls
on digits (20 Dirichlet(0.5) clients, the MLP, 30 rounds, 3 seeds, the default grids, an empty run cache each
time), its runs trained one by one and in lockstep (`protocol.LOCKSTEP`), alternating, medians of the repeats;
the two must choose the same step sizes and end at the same accuracies.
"""
from __future__ import annotations

import argparse
import copy
import importlib
import math
import os
import pkgutil
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from . import chapters, plots, widgets
from . import bench_robust
from .algorithms import FedAvg
from .data import Dataset, mnist1d
from .models import FlatModel
from .runtime import cpu_threads, resolve_device
from .executors import BatchedExecutor, Cohort, LoopExecutor
from .decentralized import Decentralized
from .federation import Federation
from .partition import iid
from .topology import metropolis_hastings, ring
from .transformer import vit

LOCAL_STEPS, BATCH = 5, 32
COHORTS = {"logistic": (10, 100, 1000), "mlp": (10, 100, 1000), "cnn": (10, 100, 500), "vit": (10, 20, 50)}
LIMIT_MODELS = ("logistic", "mlp", "cnn")  # --limit counts Linear and Conv2d MACs per sample, not per token


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:  # Linux: writing 5 to clear_refs resets the process's peak resident set size (VmHWM)
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _median_time(fn: Callable[[], None], device: torch.device, repeats: int) -> tuple[float, float]:
    """(median seconds, peak MiB) of `fn` after one warm-up call."""
    fn()
    _sync(device)
    _reset_peak(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), _peak_mib(device)


def _task(n_clients: int, device: torch.device) -> tuple[Dataset, list[np.ndarray]]:
    """M equal clients with K*B random MNIST-shaped samples each."""
    n = n_clients * LOCAL_STEPS * BATCH
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    data = Dataset("random-mnist", x, y, x[:256], y[:256], 10, (1, 28, 28)).to(device)
    return data, iid(y.numpy(), n_clients, seed=0)


def _centralized(fed: Federation, index: torch.Tensor) -> Callable[[], None]:
    """Ordinary training over the same M*K minibatches: one module, one optimizer."""
    module = copy.deepcopy(fed.model.module)
    optimizer = torch.optim.SGD(module.parameters(), lr=fed.lr)
    batches = index.reshape(-1, index.shape[-1])  # (M*K, B)

    def train() -> None:
        for ids in batches:
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(module(fed.x_train[ids]), fed.y_train[ids]).backward()
            optimizer.step()
    return train


def layer_macs(model: FlatModel, sample: torch.Tensor) -> list[int]:
    """Multiply-accumulates per sample of each Linear and Conv2d layer, in the order the forward pass runs them."""
    macs: list[int] = []

    def count(layer: torch.nn.Module, _inputs, out: torch.Tensor) -> None:
        if isinstance(layer, torch.nn.Linear):
            macs.append(layer.in_features * layer.out_features)
        else:  # each output element sums (in_channels / groups) * kernel area products
            macs.append(out[0].numel() * layer.in_channels // layer.groups * math.prod(layer.kernel_size))
    hooks = [m.register_forward_hook(count) for m in model.module.modules()
             if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    with torch.no_grad():
        model.module(sample[None])
    for hook in hooks:
        hook.remove()
    return macs


def round_flops(model: FlatModel, sample: torch.Tensor, n_clients: int, local_steps: int = LOCAL_STEPS,
                batch: int = BATCH) -> int:
    """Matrix FLOPs of one round: K*B*M samples, each 6 * sum_l c_l - 2 * c_1 (see the module docstring)."""
    macs = layer_macs(model, sample)
    return local_steps * batch * n_clients * (6 * sum(macs) - 2 * macs[0])


def round_bytes(model: FlatModel, sample: torch.Tensor, n_clients: int, local_steps: int = LOCAL_STEPS,
                batch: int = BATCH) -> int:
    """Bytes one batched round must move at least, in float32: per client and local step its parameters are read by
    the forward and the backward pass and written by the step, and the gradient is written and read (5 P floats);
    the batch's activations are written forward and read twice backward (3 B A floats, A per sample). Against the
    copy bandwidth of `memory_rate` this assumes every byte goes to main memory: a round whose stacked parameters
    stay in the caches (a few small clients) can beat that limit."""
    floats = 5 * model.n_params + 3 * batch * model.activations_per_sample(sample)
    return 4 * local_steps * n_clients * floats


def memory_rate(device: torch.device, mib: int | None = None, repeats: int = 5) -> float:
    """Memory bandwidth in bytes/s: median of copying a tensor far larger than the caches (read + write)."""
    mib = mib or (1024 if device.type == "cuda" else 256)
    src = torch.empty(mib * 2**18, device=device).normal_()  # mib MiB of float32
    dst = torch.empty_like(src)
    seconds, _ = _median_time(lambda: dst.copy_(src), device, repeats)
    return 2 * src.numel() * 4 / seconds


def matmul_rate(device: torch.device, size: int = 1024, repeats: int = 5, rows: int | None = None,
                workers: int = 1) -> float:
    """The dense float32 matrix-multiply rate in FLOP/s: median of `torch.mm` of (rows, size) by (size, size).

    With `workers` > 1, that many CPU threads multiply their own matrices side by side, as the batched executor's
    chunk threads train, and the rate is their total."""
    rows = size if rows is None else rows
    pairs = [(torch.randn(rows, size, device=device), torch.randn(size, size, device=device)) for _ in range(workers)]
    calls = max(1, int(1e9 // (2 * rows * size ** 2)))  # about 10^9 FLOPs per timing: long enough to time, short to wait

    def products(pair: tuple[torch.Tensor, torch.Tensor]) -> None:
        for _ in range(calls):
            torch.mm(*pair)
    if workers == 1:
        seconds, _ = _median_time(lambda: products(pairs[0]), device, repeats)
    else:
        with ThreadPoolExecutor(workers) as pool:
            seconds, _ = _median_time(lambda: list(pool.map(products, pairs)), device, repeats)
    return workers * 2 * rows * size ** 2 * calls / seconds


def peak_rate(device: torch.device, size: int = 1024, repeats: int = 5, workers: int = 1) -> tuple[float, float]:
    """(the square product's rate, the best rate over square and wide products) in FLOP/s, on `workers` threads.

    The BLAS does not reach its best rate on every shape, and the square product, whose three matrices outgrow a
    core's cache, loses most when other processes share the caches (on 2 shared cores: about 40 GFLOP/s against
    80-90 for the (size/4, size) by (size, size) and (32, size) by (size, size) products, which match it when the
    machine is idle), so the limit a round is held to is the best of the three."""
    square = matmul_rate(device, size, repeats, workers=workers)
    wide = (matmul_rate(device, size, repeats, rows, workers) for rows in (max(1, size // 4), 32))
    return square, max(square, *wide)


WAYS = ("loop", "batched", "centralized")


def measure(model: str, n_clients: int, device: torch.device, repeats: int, threads: int | str | None,
            peak_size: int | None = None, ways: tuple[str, ...] = WAYS) -> dict:
    """Time one round of each executor and centralized training (those of `ways`) for one model and cohort size.

    With `peak_size`, also the round's FLOPs and bytes, the fraction of the matrix-multiply rate each way reaches,
    and the batched round against the larger of its compute and memory-bandwidth limits."""
    unknown = set(ways) - set(WAYS)
    if not ways or unknown:
        raise ValueError(f"ways must be a non-empty selection of {WAYS}, got {ways}")
    data, parts = _task(n_clients, device)
    # "vit": the book's tiny ViT, 16 patches (of 7x7 here, of 2x2 on digits), width 32, 4 blocks
    built = vit(data.input_shape, data.n_classes, patch=7) if model == "vit" else model
    fed = Federation(data, parts, built, local_steps=LOCAL_STEPS, batch_size=BATCH, lr=0.05, device=device,
                     threads=threads)
    row = {"model": model, "clients": n_clients, "params": fed.model.n_params}
    with cpu_threads(fed.thread_count()):
        for executor in (e for e in (LoopExecutor(), BatchedExecutor()) if e.name in ways):
            state = fed.start(FedAvg())
            state.executor = executor
            seconds, peak = _median_time(lambda: fed.train_round(state), device, repeats)
            row[f"{executor.name}_s"], row[f"{executor.name}_peak_mib"] = seconds, peak
        index = fed.sample_batches(torch.arange(n_clients, device=device), None,
                                   torch.Generator(device=device).manual_seed(0))
        if "centralized" in ways:
            row["centralized_s"], _ = _median_time(_centralized(fed, index), device, repeats)
        if peak_size is not None and model in LIMIT_MODELS:
            row["gflop"] = round_flops(fed.model, fed.x_train[0], n_clients) / 1e9
            square, best = peak_rate(device, peak_size)
            row["square_gflop_s"], row["peak_gflop_s"] = square / 1e9, best / 1e9
            # each way against the cores it trains on: the loop and centralized training on the round's threads, the
            # batched round also on its chunk threads (every core on the MLP path)
            executor = BatchedExecutor()
            cohort = Cohort(fed.x_train, fed.y_train, index)
            row["batched_cores"] = executor.workers_for(cohort, executor.context_for(fed.context(FedAvg())))
            row["cores_peak_gflop_s"] = (row["peak_gflop_s"] if row["batched_cores"] == 1 else
                                         peak_rate(device, peak_size, workers=row["batched_cores"])[1] / 1e9)
            for way in ways:
                peak = row["cores_peak_gflop_s" if way == "batched" else "peak_gflop_s"]
                row[f"{way}_of_peak"] = row["gflop"] / row[f"{way}_s"] / peak
            row["gbyte"] = round_bytes(fed.model, fed.x_train[0], n_clients) / 1e9
            row["memory_gb_s"] = memory_rate(device) / 1e9
            row["bound_s"] = max(row["gflop"] / row["cores_peak_gflop_s"], row["gbyte"] / row["memory_gb_s"])
            if "batched" in ways:
                row["batched/bound"] = row["batched_s"] / row["bound_s"]
    if {"loop", "batched"} <= set(ways):
        row["loop/batched"] = row["loop_s"] / row["batched_s"]
    if {"batched", "centralized"} <= set(ways):
        row["batched/centralized"] = row["batched_s"] / row["centralized_s"]
    row["auto"] = fed.executor_for(FedAvg()).name
    return row


def end_to_end(device: torch.device, rounds: int = 100, n_clients: int = 100) -> pd.DataFrame:
    """A full FedAvg run on MNIST-1D, 100 clients x 100 rounds, under each executor choice."""
    data = mnist1d()
    parts = iid(data.y_train, n_clients, seed=0)
    rows = []
    for executor in ("auto", "loop", "batched"):
        fed = Federation(data, parts, "mlp", device=device, executor=executor)
        start = time.perf_counter()
        history = fed.run(FedAvg(), rounds, eval_every=rounds, progress=False)
        rows.append({"executor": f"{executor} ({fed.executor_for(FedAvg()).name})",
                     "seconds": time.perf_counter() - start, "final_test_acc": history.test_acc.iloc[-1]})
    return pd.DataFrame(rows)


def _format(table: pd.DataFrame, markdown: bool) -> str:
    """Plain or Markdown text of a table, numbers to three significant digits."""
    cells = table.map(lambda v: f"{v:.3g}" if isinstance(v, float) else str(v))
    if not markdown:
        return cells.to_string(index=False)
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)])


def machine(device: torch.device) -> str:
    """A one-line description of where the numbers came from."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} torch threads by default"
    return f"{name}; torch {torch.__version__}; {torch.os.cpu_count()} cores"


def chapter_modules() -> dict[str, object]:
    """Every module of `flbook.chapters`, by name."""
    return {info.name: importlib.import_module(f"{chapters.__name__}.{info.name}")
            for info in pkgutil.iter_modules(chapters.__path__)}


def reader_panels() -> dict[str, tuple[Callable, dict, Callable]]:
    """(run, controls, plot) of every panel at its defaults: the foundations' (chapters 00-02) and each chapter's."""
    panels = {"foundations (00-02)": (widgets.compare_run(progress=False), widgets.standard_controls(),
                                      plots.accuracy_figure)}
    for name, chapter in chapter_modules().items():
        run = getattr(chapter, "stream", chapter.run)  # a panel that streams draws before its last run ends
        panels[name] = (lambda values, run=run: run(values, progress=False), chapter.controls(), chapter.figure)
    return panels


def panel_latency(panels: dict[str, tuple[Callable, dict, Callable]] | None = None) -> pd.DataFrame:
    """Seconds from Run to each panel's first figure and to its last (they differ for a panel that streams)."""
    panels = reader_panels() if panels is None else panels
    rows = []
    for name, (run, controls, plot) in panels.items():
        panel = widgets.control_panel(run=run, controls=controls, plot=plot)
        start = time.perf_counter()
        panel.on_run()
        rows.append({"panel": name, "seconds_to_first_figure": panel.first_figure_s,
                     "seconds_to_figure": time.perf_counter() - start, "error": panel.error or ""})
        print(f"  {name:28s} first figure {rows[-1]['seconds_to_first_figure'] or float('nan'):6.1f} s, "
              f"last {rows[-1]['seconds_to_figure']:6.1f} s", flush=True)
    return pd.DataFrame(rows)


def notebook_latency(folder: Path, device: str = "cpu", out: Path | None = None, workers: int = 1) -> pd.DataFrame:
    """Seconds each notebook takes to run in a fresh kernel (`jupyter nbconvert --execute`) with FLBOOK_DEVICE=device,
    `workers` notebooks at a time; the executed notebooks are kept in `out` when given (with an error, its log)."""
    env = {**os.environ, "FLBOOK_DEVICE": device, "PYTHONHASHSEED": "0"}
    env.pop("MPLBACKEND", None)
    with tempfile.TemporaryDirectory() as scratch:
        target = Path(out or scratch)
        target.mkdir(parents=True, exist_ok=True)

        def execute(notebook: Path) -> dict:
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                                   "--output-dir", str(target), str(notebook)], env=env, capture_output=True,
                                  cwd=folder, text=True)
            row = {"notebook": notebook.name, "seconds": time.perf_counter() - start, "ok": done.returncode == 0}
            if not row["ok"]:
                (target / f"{notebook.stem}.log").write_text(done.stderr)
            print(f"  {notebook.name:32s} {row['seconds']:6.1f} s{'' if row['ok'] else '  FAILED'}", flush=True)
            return row
        with ThreadPoolExecutor(max(1, workers)) as pool:
            rows = list(pool.map(execute, sorted(folder.glob("*.ipynb"))))
    return pd.DataFrame(rows)


def gossip_round(device: torch.device, n_nodes: int = 1000, repeats: int = 3) -> pd.DataFrame:
    """One decentralized round (K local steps on every node, then Q = 1 gossip step on a ring, CSR on the CPU)
    against one FedAvg round of the same nodes as clients, digits-shaped MLP 64-200-200-10; medians, one run."""
    n = n_nodes * LOCAL_STEPS * BATCH
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 64, generator=g), torch.randint(0, 10, (n,), generator=g)
    data = Dataset("random-digits", x, y, x[:256], y[:256], 10, (64,)).to(device)
    fed = Federation(data, iid(y.numpy(), n_nodes, seed=0), "mlp", local_steps=LOCAL_STEPS, batch_size=BATCH,
                     device=device)
    net = Decentralized(fed, metropolis_hastings(ring(n_nodes)))
    server, network = fed.start(FedAvg()), net.start(FedAvg())
    with cpu_threads(fed.thread_count()):
        fedavg_s, _ = _median_time(lambda: fed.train_round(server), device, repeats)
        gossip_s, _ = _median_time(lambda: net.train_round(network), device, repeats)
    return pd.DataFrame([{"nodes": n_nodes, "params": fed.model.n_params, "fedavg_round_s": fedavg_s,
                          "gossip_round_s": gossip_s, "gossip/fedavg": gossip_s / fedavg_s}])


def protocol_speed(repeats: int = 3, rounds: int = 30, n_clients: int = 20, model: str = "mlp",
                   **compare_kwargs) -> pd.DataFrame:
    """Seconds of one `protocol.compare` (FedAvg vs SCAFFOLD with controls on digits) one by one vs in lockstep."""
    from . import protocol
    from .algorithms import Scaffold
    from .data import digits
    from .partition import dirichlet

    data = digits()

    def make(dataset: Dataset, seed: int, lr: float) -> Federation:
        return Federation(dataset, dirichlet(dataset.y_train, n_clients, 0.5, seed=seed), model, lr=lr, seed=seed)

    methods = {"FedAvg": lambda: FedAvg(), "SCAFFOLD": lambda server_lr: Scaffold(server_lr=server_lr)}
    times: dict[str, list[float]] = {"one by one": [], "lockstep": []}
    results = {}
    before = protocol.LOCKSTEP
    try:
        for _ in range(repeats):
            for mode in times:
                protocol.LOCKSTEP = mode == "lockstep"
                protocol.clear_cache()
                start = time.perf_counter()
                results[mode] = protocol.compare(data, make, methods, rounds=rounds, **compare_kwargs)
                times[mode].append(time.perf_counter() - start)
    finally:
        protocol.LOCKSTEP = before
        protocol.clear_cache()
    one, both = results["one by one"], results["lockstep"]
    if not one.choices().equals(both.choices()):
        raise RuntimeError(f"lockstep chose other step sizes:\n{one.choices()}\nvs\n{both.choices()}")
    gap = float(np.abs(one.history["test_acc"].to_numpy() - both.history["test_acc"].to_numpy()).max())
    runs = len(one.history.groupby(["algorithm", "seed"])) + sum(len(t.scores) for t in one.tuned.values())
    median = {mode: statistics.median(t) for mode, t in times.items()}
    return pd.DataFrame([{"mode": mode, "runs": runs, "median_s": median[mode], "min_s": min(t), "max_s": max(t),
                          "speedup": median["one by one"] / median[mode], "max_acc_gap": gap}
                         for mode, t in times.items()])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: FLBOOK_DEVICE or auto)")
    parser.add_argument("--models", default="logistic,mlp,cnn,vit")
    parser.add_argument("--clients", default=None, help="comma-separated cohort sizes (default per model)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", default="auto", help="intra-op CPU threads: 'auto' (the federation's rule) or N")
    parser.add_argument("--quick", action="store_true", help="cohorts 10 and 100 only, 2 repeats")
    parser.add_argument("--end-to-end", action="store_true", help="also time 100 rounds x 100 clients on MNIST-1D")
    parser.add_argument("--limit", action="store_true",
                        help="also FLOPs per round and the fraction of the measured torch.mm rate reached")
    parser.add_argument("--peak-size", type=int, default=1024, help="side of the square matrices timed for --limit")
    parser.add_argument("--ways", default=",".join(WAYS), help="comma-separated ways to time: loop,batched,centralized")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--gossip", action="store_true",
                        help="only a gossip round of 1000 nodes (ring, Q=1) against a 1000-client FedAvg round")
    parser.add_argument("--reader", action="store_true",
                        help="only what a reader waits for: each panel's Run to its figure, each notebook's run")
    parser.add_argument("--protocol", action="store_true",
                        help="only one protocol.compare on digits, its runs one by one vs in lockstep")
    parser.add_argument("--notebooks", default=str(Path(__file__).resolve().parents[1] / "notebooks"),
                        help="the folder of notebooks --reader runs")
    parser.add_argument("--flower", action="store_true",
                        help="only FedAvg on MNIST-1D in flbook, on Flower's Simulation Engine, in a PyTorch loop over "
                             "nn.Module copies and centralized (flbook.flower.bench; needs pip install -e '.[flower]')")
    parser.add_argument("--flower-cohorts", default="10/100,100/100",
                        help="clients per round / clients, comma-separated, for --flower (e.g. 10/100,100/1000)")
    parser.add_argument("--robust", action="store_true",
                        help="only the robust rules and attacks at M=100 messages of P=100,000 (flbook.bench_robust)")
    parser.add_argument("--byzfl-python", default=None,
                        help="with --robust: a Python that can import byzfl, to time ByzFL's rules in the same run")
    parser.add_argument("--byzfl-pythonpath", default=None, help="PYTHONPATH for --byzfl-python only (stub packages)")
    parser.add_argument("--flower-rounds", type=int, default=30, help="rounds of each run for --flower")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    if args.flower:
        from .flower.bench import side_by_side  # the optional extra: imported only here
        cohorts = tuple(tuple(int(n) for n in c.split("/")) for c in args.flower_cohorts.split(","))
        print(f"# FedAvg side by side on {machine(torch.device('cpu'))}: MNIST-1D, Dirichlet(0.5), MLP, K=5, B=32, "
              f"{args.flower_rounds} rounds; start-up = call to end of round 1, rounds 2..R", flush=True)
        print(_format(side_by_side(cohorts, args.flower_rounds), args.markdown))
        return
    if args.robust:
        threads = 1 if args.threads == "auto" else int(args.threads)
        print(f"# Robust rules and attacks on M={bench_robust.M} stacked messages of P={bench_robust.P:,} (f="
              f"{bench_robust.F}), {machine(torch.device('cpu'))}, {threads} thread(s), best of 3 alternating phases "
              f"of a median of {args.repeats}",
              flush=True)
        print(_format(bench_robust.robust_speed(args.repeats, threads, args.byzfl_python,
                                                        byzfl_pythonpath=args.byzfl_pythonpath), args.markdown))
        return
    if args.reader:
        print(f"# What a reader waits for, on {machine(device)}")
        print("\n# Control panels: Run at the defaults -> figure")
        print(_format(panel_latency(), args.markdown))
        print("\n# Notebooks: a fresh kernel runs every cell (CPU)")
        print(_format(notebook_latency(Path(args.notebooks)), args.markdown))
        return
    if args.gossip:
        print(f"# Decentralized round vs FedAvg round on {machine(device)}, K={LOCAL_STEPS}, batch {BATCH}, "
              f"median of {args.repeats}")
        print(_format(gossip_round(device, repeats=args.repeats), args.markdown))
        return
    threads = args.threads if args.threads == "auto" else int(args.threads)
    repeats = 2 if args.quick else args.repeats
    ways = tuple(args.ways.split(","))
    if args.protocol:
        print(f"# One protocol.compare on {machine(device)}: FedAvg vs SCAFFOLD with controls, digits, 20 clients, "
              f"30 rounds, 3 seeds, default grids; median of {repeats}", flush=True)
        print(_format(protocol_speed(repeats), args.markdown))
        return
    print(f"# flbook.bench on {machine(device)}; FedAvg, K={LOCAL_STEPS} local steps, batch {BATCH}, "
          f"median of {repeats}", flush=True)
    rows = []
    for model in args.models.split(","):
        cohorts = tuple(int(c) for c in args.clients.split(",")) if args.clients else COHORTS[model]
        for n_clients in (c for c in cohorts if not args.quick or c <= 100):
            rows.append(measure(model, n_clients, device, repeats, threads, args.peak_size if args.limit else None,
                                ways))
            print(f"  {model:8s} {n_clients:5d} clients: " +
                  ", ".join(f"{way} {rows[-1][f'{way}_s']:.3f} s" for way in ways), flush=True)
    table = pd.DataFrame(rows)
    cols = ["model", "clients", "loop_s", "batched_s", "centralized_s", "loop/batched", "batched/centralized",
            "loop_peak_mib", "batched_peak_mib", "auto"]
    print(_format(table[[c for c in cols if c in table]], args.markdown))
    if args.limit:
        print(f"\n# Against the machine's limit: matrix GFLOP per round (K*B*M*(6 sum_l c_l - 2 c_1)), the torch.mm "
              f"rate of the {args.peak_size}x{args.peak_size} square and the best over square and wide products, "
              f"with the round's threads, and the fraction of the best each way reaches; GB the batched round must "
              f"move (K*M*4*(5P + 3BA)), the copy bandwidth, the larger of the two limits in seconds (bound_s) and "
              f"the batched round's time over it")
        limit = ["model", "clients", "gflop", "square_gflop_s", "peak_gflop_s", "batched_cores", "cores_peak_gflop_s",
                 "loop_of_peak", "batched_of_peak", "centralized_of_peak", "gbyte", "memory_gb_s", "bound_s",
                 "batched/bound"]
        print(_format(table[table.model.isin(LIMIT_MODELS)][[c for c in limit if c in table]], args.markdown))
    if args.end_to_end:
        e2e = end_to_end(device)
        print("\n# FedAvg on MNIST-1D, 100 clients x 100 rounds, MLP")
        print(_format(e2e, args.markdown))


if __name__ == "__main__":
    main()
