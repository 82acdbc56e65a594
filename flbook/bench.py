"""Benchmark one FedAvg round: loop executor vs batched executor vs centralized training on the same samples.

    python -m flbook.bench                 # CPU or the default device, all models and cohort sizes
    python -m flbook.bench --quick         # smaller grid, fewer repeats
    python -m flbook.bench --markdown      # a table to paste into the README

Each round trains M clients for K=5 local steps of batch B=32 on MNIST-shaped inputs (1x28x28; the
values do not matter for timing). Centralized training runs the same M*K minibatches through one
ordinary `nn.Module` with `torch.optim.SGD`: the reference a user would compare against. Timings are
medians of several repeats after a warm-up round; memory is the peak during the timed rounds.
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from .algorithms import FedAvg
from .data import Dataset, mnist1d
from .runtime import cpu_threads, resolve_device
from .executors import BatchedExecutor, LoopExecutor
from .federation import Federation
from .partition import iid

LOCAL_STEPS, BATCH = 5, 32
COHORTS = {"logistic": (10, 100, 1000), "mlp": (10, 100, 1000), "cnn": (10, 100, 500)}


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


def measure(model: str, n_clients: int, device: torch.device, repeats: int, threads: int | str | None) -> dict:
    """Time one round of each executor and centralized training for one model and cohort size."""
    data, parts = _task(n_clients, device)
    fed = Federation(data, parts, model, local_steps=LOCAL_STEPS, batch_size=BATCH, lr=0.05, device=device,
                     threads=threads)
    row = {"model": model, "clients": n_clients, "params": fed.model.n_params}
    with cpu_threads(fed.thread_count()):
        for executor in (LoopExecutor(), BatchedExecutor()):
            state = fed.start(FedAvg())
            state.executor = executor
            seconds, peak = _median_time(lambda: fed.train_round(state), device, repeats)
            row[f"{executor.name}_s"], row[f"{executor.name}_peak_mib"] = seconds, peak
        index = fed.sample_batches(torch.arange(n_clients, device=device), None,
                                   torch.Generator(device=device).manual_seed(0))
        row["centralized_s"], _ = _median_time(_centralized(fed, index), device, repeats)
    row["loop/batched"] = row["loop_s"] / row["batched_s"]
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: FLBOOK_DEVICE or auto)")
    parser.add_argument("--models", default="logistic,mlp,cnn")
    parser.add_argument("--clients", default=None, help="comma-separated cohort sizes (default per model)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", default="auto", help="intra-op CPU threads: 'auto' (the federation's rule) or N")
    parser.add_argument("--quick", action="store_true", help="cohorts 10 and 100 only, 2 repeats")
    parser.add_argument("--end-to-end", action="store_true", help="also time 100 rounds x 100 clients on MNIST-1D")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    threads = args.threads if args.threads == "auto" else int(args.threads)
    repeats = 2 if args.quick else args.repeats
    print(f"# flbook.bench on {machine(device)}; FedAvg, K={LOCAL_STEPS} local steps, batch {BATCH}, "
          f"median of {repeats}", flush=True)
    rows = []
    for model in args.models.split(","):
        cohorts = tuple(int(c) for c in args.clients.split(",")) if args.clients else COHORTS[model]
        for n_clients in (c for c in cohorts if not args.quick or c <= 100):
            rows.append(measure(model, n_clients, device, repeats, threads))
            print(f"  {model:8s} {n_clients:5d} clients: loop {rows[-1]['loop_s']:.3f} s, "
                  f"batched {rows[-1]['batched_s']:.3f} s, centralized {rows[-1]['centralized_s']:.3f} s", flush=True)
    table = pd.DataFrame(rows)
    cols = ["model", "clients", "loop_s", "batched_s", "centralized_s", "loop/batched", "batched/centralized",
            "loop_peak_mib", "batched_peak_mib", "auto"]
    print(_format(table[cols], args.markdown))
    if args.end_to_end:
        e2e = end_to_end(device)
        print("\n# FedAvg on MNIST-1D, 100 clients x 100 rounds, MLP")
        print(_format(e2e, args.markdown))


if __name__ == "__main__":
    main()
