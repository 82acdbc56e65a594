"""The package's layers point one way: read every import (function-local and TYPE_CHECKING ones too) and check.

Layers, each importing only layers before it (README, "The package"):
  0 leaves      data, partition, models, runtime, participation, devices, clock, history, utils, ... (no flbook)
  1 algorithms  algorithms.base, then the methods (which may build on each other and on base)
  2 core        channel, executors, federation, asynchronous, ...
  3 measures    drift, loss_decomposition, admm, protocol
  4 screen      plots, widgets
  5 chapters    one module per notebook; never imports another chapter
  6 tools       bench, flower (the optional Flower bridge: imported by nothing but bench)
Extra rules: the core imports `algorithms.base` only, never a method; a method imports nothing above the
algorithms layer except `federation` for type annotations (under TYPE_CHECKING); no import cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "flbook"
LAYERS = {  # top-level module or subpackage -> layer
    **dict.fromkeys(("data", "partition", "models", "runtime", "participation", "devices", "clock", "history", "utils",
                     "validation", "robust", "attacks", "topology", "transformer", "pretrained"), 0),
    "algorithms": 1,
    **dict.fromkeys(("local_learning", "auglocal", "sharpness", "saf", "frugal", "feature_reconstruction"), 1),
    **dict.fromkeys(("channel", "executors", "federation", "asynchronous", "decentralized", "split", "local_sgd",
                     "modest", "lockstep", "rounds"), 2),
    **dict.fromkeys(("drift", "loss_decomposition", "admm", "protocol", "centralized", "peer_protocol"), 3),
    **dict.fromkeys(("plots", "widgets"), 4),
    "chapters": 5,
    "bench": 6,  # a tool: it times the chapters' panels too
    "flower": 6,  # the optional Flower bridge (methods by name, so above the core); only bench imports it
    "bench_robust": 6,  # the benchmark's robust section (against ByzFL in a separate interpreter)
    "bench_gpu": 6,  # the book on a GPU in one prepared run (every notebook, the benchmark's GPU rows)
}
CORE = {name for name, layer in LAYERS.items() if layer == 2}


def module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, package: Path) -> list[tuple[str, int, bool]]:
    """(imported flbook module, line, under TYPE_CHECKING) for every import in the file, wherever it sits."""
    here = module_name(path, package).split(".")
    if path.name != "__init__.py":
        here = here[:-1]  # the package the module lives in
    tree = ast.parse(path.read_text())
    typing_only = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(block.test) for node in ast.walk(block)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            names = [target] if node.module else [f"{target}.{a.name}" for a in node.names]  # `from . import x`
            found += [(name, node.lineno, id(node) in typing_only) for name in names]
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno, id(node) in typing_only) for a in node.names]
    return [(name, line, typing) for name, line, typing in found if name.split(".")[0] == package.name]


def graph(package: Path = PACKAGE) -> dict[str, list[tuple[str, int, bool]]]:
    return {module_name(p, package): imports(p, package) for p in sorted(package.rglob("*.py"))}


def unit(module: str) -> str:
    """The layer unit of a module: its top-level name under the package (flbook.channel.noise -> channel)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def violations(package: Path = PACKAGE) -> list[str]:
    """Every import that breaks a rule, as 'module:line -> target (why)'."""
    problems = []
    edges = graph(package)
    for source, targets in edges.items():
        here = unit(source)
        if here == "" or source.endswith(".__init__"):
            continue  # the package's face re-exports from below
        if here not in LAYERS:
            problems.append(f"{source} has no layer: add it to LAYERS")
            continue
        for target, line, typing in targets:
            there = unit(target)
            if there == "" or there == here and here != "chapters" and here != "algorithms":
                continue
            where = f"{source}:{line} -> {target}"
            if there not in LAYERS:
                problems.append(f"{where} (unknown layer)")
            elif here == "chapters" and there == "chapters" and target != f"{package.name}.chapters":
                problems.append(f"{where} (a chapter imports another chapter)")
            elif here == "algorithms" and there != "algorithms" and LAYERS[there] > LAYERS[here]:
                if not (typing and there == "federation"):
                    problems.append(f"{where} (a method imports above the algorithms layer)")
            elif here in CORE and there == "algorithms" and target not in (f"{package.name}.algorithms.base",):
                problems.append(f"{where} (the core imports a particular method)")
            elif here != "algorithms" and LAYERS[there] > LAYERS[here] and not typing:
                problems.append(f"{where} (points up: layer {LAYERS[here]} imports layer {LAYERS[there]})")
    return problems + cycles(edges)


def cycles(edges: dict[str, list[tuple[str, int, bool]]]) -> list[str]:
    """Import cycles between modules (imports under TYPE_CHECKING do not run, so they do not count)."""
    known = set(edges)
    deps = {m: {t if t in known else t.rsplit(".", 1)[0] for t, _, typing in ts if not typing} & known
            for m, ts in edges.items()}
    deps = {m: {d for d in ds if d != m and not m.startswith(d + ".") and not d.endswith("__init__")}
            for m, ds in deps.items()}
    found, state = [], {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for d in sorted(deps.get(m, ())):
            if state.get(d) == "open":
                found.append("cycle: " + " -> ".join(path[path.index(d):] + [d]))
            elif d not in state:
                visit(d, path + [d])
        state[m] = "done"

    for m in sorted(deps):
        if m not in state:
            visit(m, [m])
    return found


def test_the_package_keeps_its_layers():
    assert violations() == []


def _plant(tmp_path: Path, files: dict[str, str]) -> Path:
    package = tmp_path / "flbook"
    for name, text in {"__init__.py": "", "algorithms/__init__.py": "", "chapters/__init__.py": "",
                       "widgets/__init__.py": "", **files}.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    return package


@pytest.mark.parametrize("files, why", [
    ({"federation.py": "from .widgets import control_panel\n", "widgets/panel.py": ""}, "points up"),
    ({"federation.py": "def f():\n    from .algorithms.fedavg import FedAvg\n", "algorithms/fedavg.py": ""},
     "the core imports a particular method"),
    ({"algorithms/fedx.py": "from ..widgets import knob\n"}, "a method imports above"),
    ({"chapters/ch1.py": "from .ch2 import run\n", "chapters/ch2.py": ""}, "a chapter imports another chapter"),
    ({"models.py": "from .clock import VirtualClock\n", "clock.py": "from .models import mlp\n"}, "cycle"),
])
def test_a_planted_import_is_caught(tmp_path, files, why):
    problems = violations(_plant(tmp_path, files))
    assert any(why in p for p in problems), problems


def test_annotations_of_the_federation_in_a_method_are_allowed(tmp_path):
    text = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..federation import Federation\n"
    assert violations(_plant(tmp_path, {"algorithms/fedx.py": text, "federation.py": ""})) == []


def test_only_the_benchmark_imports_the_optional_flower_bridge():
    importers = {unit(source) for source, targets in graph().items() for target, _, _ in targets
                 if unit(target) == "flower" and unit(source) != "flower"}
    assert importers <= {"bench"}
