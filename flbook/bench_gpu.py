"""The book on a GPU in one prepared run: every notebook executed on `cuda` at its defaults, then the benchmark's
GPU rows (FedAvg rounds of the MNIST-shaped MLP from 10 to 10,000 clients, against the compute and memory limits).

    python -m flbook.bench_gpu OUT        # or: make gpu-check OUT=...

Writes the executed notebooks (and the log of any that failed) to OUT/notebooks and the tables to OUT/gpu.md,
printing them as they come. The notebooks' stored outputs are checked on the CPU (CI); here what counts is that
each runs to the end on the GPU, and how long it takes. Targets (issue "Speed a reader feels"): 1000 clients per
round within 3 times the larger of the compute and memory-bandwidth limits (`batched/bound`), and a round of
10,000 clients that runs at all.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

from .bench import _format, machine, measure, notebook_latency

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
COHORTS = ((10, ("loop", "batched", "centralized")), (100, ("loop", "batched", "centralized")),
           (1000, ("loop", "batched", "centralized")), (10_000, ("batched",)))  # the loop at 10,000 would take minutes


def gpu_rows(device: torch.device, repeats: int = 5, peak_size: int = 4096) -> pd.DataFrame:
    """The limit rows of `flbook.bench` for the MLP at every cohort of COHORTS on `device`."""
    rows = []
    for clients, ways in COHORTS:
        rows.append(measure("mlp", clients, device, repeats, None, peak_size, ways))
        print(f"  mlp {clients:6d} clients: batched {rows[-1]['batched_s']:.4f} s, "
              f"{rows[-1]['batched/bound']:.2f}x its bound", flush=True)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder for the executed notebooks and gpu.md")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--workers", type=int, default=4, help="notebooks executed at a time")
    parser.add_argument("--notebooks", type=Path, default=NOTEBOOKS)
    parser.add_argument("--skip-notebooks", action="store_true", help="only the benchmark rows")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--peak-size", type=int, default=4096, help="side of the square matrices for the peak rate")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: PyTorch sees no CUDA device here")
    args.out.mkdir(parents=True, exist_ok=True)
    report = [f"# The book on {machine(device)}"]
    print(report[0], flush=True)
    if not args.skip_notebooks:
        print(f"\n## Every notebook on {args.device} ({args.workers} at a time)", flush=True)
        notebooks = notebook_latency(args.notebooks, args.device, args.out / "notebooks", args.workers)
        report += [f"\n## Every notebook on {args.device}", _format(notebooks, True),
                   f"\n{int(notebooks.ok.sum())} of {len(notebooks)} ran to the end."]
    print("\n## FedAvg rounds against the limits", flush=True)
    rows = gpu_rows(device, args.repeats, args.peak_size)
    columns = ["clients", "loop_s", "batched_s", "centralized_s", "batched_peak_mib", "gflop", "peak_gflop_s",
               "batched_of_peak", "gbyte", "memory_gb_s", "bound_s", "batched/bound"]
    table = _format(rows[[c for c in columns if c in rows]], True)
    report += ["\n## FedAvg rounds of the MNIST-shaped MLP against the limits", table]
    (args.out / "gpu.md").write_text("\n".join(report) + "\n")
    print("\n".join(report[-2:]))


if __name__ == "__main__":
    main()
