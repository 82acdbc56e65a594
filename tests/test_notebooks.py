"""The stored notebooks stay true to the package: every `show_source(...)` listing equals the source that runs."""
import ast
import inspect
import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def _code_cells(path: Path) -> list[dict]:
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def _tree(cell: dict) -> ast.Module:
    source = "".join(cell["source"])
    return ast.parse("\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))))


def _listings(path: Path) -> list[tuple[str, str]]:
    """(expression shown, stored markdown) for each `show_source(expr)` call whose output is stored."""
    found = []
    for cell in _code_cells(path):
        calls = [node for node in ast.walk(_tree(cell)) if isinstance(node, ast.Call)
                 and ast.unparse(node.func).split(".")[-1] == "show_source"]
        shown = [o["data"]["text/markdown"] for o in cell.get("outputs", []) if "text/markdown" in o.get("data", {})]
        found += [(ast.unparse(call.args[0]), "".join(text)) for call, text in zip(calls, shown)]
    return found


def _namespace(path: Path) -> dict:
    """The notebook's imports, executed, so its expressions resolve to the package's objects."""
    namespace: dict = {}
    for cell in _code_cells(path):
        for node in _tree(cell).body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                exec(compile(ast.Module([node], []), str(path), "exec"), namespace)
    return namespace


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_source_listings_match_the_package(path):
    namespace = _namespace(path)
    for expression, stored in _listings(path):
        current = f"```python\n{inspect.getsource(eval(expression, namespace))}```"
        assert stored == current, f"{path.name}: the stored listing of {expression} is stale; re-run the notebook"
