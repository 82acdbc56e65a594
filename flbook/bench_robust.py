"""The benchmark's robust section: every robust rule, pre-aggregator and attack on M stacked messages of P
coordinates on the CPU, timed against ByzFL's implementation of the same rule in the same run.

    python -m flbook.bench --robust                                   # flbook's rules only
    python -m flbook.bench --robust --byzfl-python /tmp/byzfl-env/bin/python --byzfl-pythonpath /tmp/byzfl-stub

ByzFL is not a dependency (its wheel imports torchvision and plotting packages at import time): give the Python
of a throwaway environment that can `import byzfl` (see `tests/fixtures/make_byzfl_golden.py`), and the
PYTHONPATH it needs (stub packages for those imports; set for that interpreter only). That interpreter runs
`BYZFL_SCRIPT` in a subprocess: it draws the same inputs from the same seed (x = randn(M, P) from a generator
seeded `seed`; the attacks get its first M - f rows as the honest messages), times each case the same way (one
warm-up call, then the median of `repeats` calls with the same intra-op thread count) and sends back JSON; the
two sides alternate for a few phases and each keeps its best (`robust_speed`).
`agrees` compares the two outputs' norms (relative 1e-4); it is empty for the randomised cases (bucketing's
shuffle, Gaussian noise), whose draws differ by design.
Conventions are matched where they differ: Krum and Multi-Krum by ByzFL's score, the geometric median at
ByzFL's fixed 3 smoothed Weiszfeld steps (nu = 0.1), centered clipping at ByzFL's default tau = 100, L = 1 from 0.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from typing import Callable

import pandas as pd
import torch

from . import attacks, robust

M, P, F, SEED = 100, 100_000, 10, 0

# case -> (flbook's call, ByzFL's object as an expression over `byzfl` and `m`, "rule" or "attack"); Callable[[x], out]
CASES: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], str, str]] = {
    "mean": (robust.mean, "byzfl.Average()", "rule"),
    "coordinate median": (robust.coordinate_median, "byzfl.Median()", "rule"),
    "trimmed mean": (lambda x: robust.trimmed_mean(x, F), f"byzfl.TrMean(f={F})", "rule"),
    "geometric median (3 steps)": (lambda x: robust.geometric_median(x, nu=0.1, max_iter=3, tol=0.0),
                                   "byzfl.GeometricMedian(nu=0.1, T=3)", "rule"),
    "Krum": (lambda x: robust.krum(x, F, convention="byzfl"), f"byzfl.Krum(f={F})", "rule"),
    "Multi-Krum": (lambda x: robust.multi_krum(x, F, convention="byzfl"), f"byzfl.MultiKrum(f={F})", "rule"),
    "centered clipping": (lambda x: robust.centered_clipping(x, tau=100.0, iters=1),
                          "byzfl.CenteredClipping(tau=100.0, L=1)", "rule"),
    "NNA (MoNNA, one pivot)": (lambda x: robust.nearest_neighbour_average(x, F, x[-1:])[0],
                               f"byzfl.MoNNA(f={F}, idx=m - 1)", "rule"),
    "NNM (pre-aggregation)": (lambda x: robust.nnm(x, F)[0], f"byzfl.NNM(f={F})", "rule"),
    "bucketing s=2 (pre-aggregation)": (lambda x: robust.bucketing(x, 2)[0], "byzfl.Bucketing(s=2)", "rule"),
    "sign flipping": (lambda h: attacks.sign_flipping(h, F), "byzfl.SignFlipping()", "attack"),
    "FOE / IPM (z = 2)": (lambda h: attacks.fall_of_empires(h, F, z=2.0), "byzfl.InnerProductManipulation(tau=1.0)",
                          "attack"),
    "ALIE (z = 1.5)": (lambda h: attacks.a_little_is_enough(h, F, z=1.5), "byzfl.ALittleIsEnough(tau=1.5)", "attack"),
    "mimic": (lambda h: attacks.mimic(h, F, target=0), "byzfl.Mimic(epsilon=0)", "attack"),
    "Gaussian": (lambda h: attacks.gaussian(h, F), "byzfl.Gaussian(mu=0.0, sigma=1.0)", "attack"),
    "inf": (lambda h: attacks.inf(h, F), "byzfl.Inf()", "attack"),
}
RANDOMISED = {"bucketing s=2 (pre-aggregation)", "Gaussian"}

# Runs in ByzFL's interpreter: argv[1] is the JSON spec; prints {case: {"seconds", "norm"}} as JSON.
BYZFL_SCRIPT = """
import json, statistics, sys, time
import torch, byzfl
spec = json.loads(sys.argv[1])
torch.set_num_threads(spec["threads"])
x = torch.randn(spec["m"], spec["p"], generator=torch.Generator().manual_seed(spec["seed"]))
result = {}
for name, (expression, kind) in spec["cases"].items():
    call, data = eval(expression, {"byzfl": byzfl, "m": spec["m"]}), x if kind == "rule" else x[:spec["m"] - spec["f"]]
    out = call(data)
    seconds = []
    for _ in range(spec["repeats"]):
        start = time.perf_counter()
        call(data)
        seconds.append(time.perf_counter() - start)
    result[name] = {"seconds": statistics.median(seconds), "norm": float(torch.as_tensor(out).double().norm())}
print(json.dumps(result))
"""


def inputs(m: int = M, p: int = P, seed: int = SEED) -> torch.Tensor:
    """The stacked messages (M, P) both interpreters draw: randn from a CPU generator seeded `seed`."""
    return torch.randn(m, p, generator=torch.Generator().manual_seed(seed))


def flbook_times(repeats: int, threads: int, m: int = M, p: int = P) -> dict[str, dict[str, float]]:
    """{case: {"seconds": median of `repeats` calls after one warm-up, "norm": ||output||}} for flbook's rules."""
    x, previous = inputs(m, p), torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        result = {}
        for name, (call, _, kind) in CASES.items():
            data = x if kind == "rule" else x[:m - F]
            out = call(data)
            seconds = []
            for _ in range(repeats):
                start = time.perf_counter()
                call(data)
                seconds.append(time.perf_counter() - start)
            one = out if kind == "rule" else out[0]  # an attack's f messages are copies; ByzFL returns one
            result[name] = {"seconds": statistics.median(seconds), "norm": float(one.double().norm())}
        return result
    finally:
        torch.set_num_threads(previous)


def byzfl_times(python: str, repeats: int, threads: int, m: int = M, p: int = P, pythonpath: str | None = None,
                timeout: float = 1800.0) -> dict[str, dict[str, float]]:
    """The same cases timed by ByzFL in interpreter `python` (a subprocess running `BYZFL_SCRIPT`, with PYTHONPATH
    `pythonpath` when given)."""
    spec = {"m": m, "p": p, "f": F, "seed": SEED, "repeats": repeats, "threads": threads,
            "cases": {name: [expression, kind] for name, (_, expression, kind) in CASES.items()}}
    env = {**os.environ, **({"PYTHONPATH": pythonpath} if pythonpath else {})}
    done = subprocess.run([python, "-c", BYZFL_SCRIPT, json.dumps(spec)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"the ByzFL interpreter {python} failed (exit {done.returncode}): {tail[0]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def robust_speed(repeats: int = 5, threads: int = 1, byzfl_python: str | None = None, m: int = M, p: int = P,
                 byzfl_pythonpath: str | None = None, phases: int = 3) -> pd.DataFrame:
    """One row per case: flbook's milliseconds and, with a ByzFL interpreter, ByzFL's, their ratio and whether the
    outputs agree. The two sides alternate for `phases` phases (flbook, ByzFL, flbook, ...) and each case keeps
    its best phase median on each side, so load from other processes does not favour the side timed in a quiet
    moment."""
    ours, theirs = [], []
    for _ in range(phases):
        ours.append(flbook_times(repeats, threads, m, p))
        if byzfl_python:
            theirs.append(byzfl_times(byzfl_python, repeats, threads, m, p, byzfl_pythonpath))
    rows = []
    for name, (_, expression, kind) in CASES.items():
        mine = min(run[name]["seconds"] for run in ours)
        row = {"case": name, "kind": kind, "flbook_ms": 1e3 * mine}
        if theirs:
            other = min(run[name]["seconds"] for run in theirs)
            a, b = ours[0][name]["norm"], theirs[0][name]["norm"]
            row.update(byzfl=expression.removeprefix("byzfl."), byzfl_ms=1e3 * other,
                       **{"byzfl/flbook": other / mine},
                       agrees="" if name in RANDOMISED else "yes" if a == b or abs(a - b) <= 1e-4 * abs(b) else "NO")
        rows.append(row)
    return pd.DataFrame(rows)
