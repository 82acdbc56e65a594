"""The set-up files agree: environment.yml and the Makefile install pyproject.toml's dependencies and nothing else."""
from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from nbval.plugin import get_sanitize_patterns
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
ENVIRONMENT = yaml.safe_load((ROOT / "environment.yml").read_text())
MAKEFILE = (ROOT / "Makefile").read_text()
EDITABLE_INSTALL = re.compile(r"^-e\s+'?\.\[([\w,-]+)\]'?$")  # the project itself with extras: -e .[a,b]


def conda_specs() -> list[str]:
    """The conda package specs of environment.yml, without its pip section."""
    return [dep for dep in ENVIRONMENT["dependencies"] if isinstance(dep, str)]


def conda_name(spec: str) -> str:
    """The package name of a conda spec such as `python=3.11`."""
    return re.split(r"[=<>!~\s]", spec, maxsplit=1)[0]


def pip_section() -> list[str]:
    """The requirement lines of environment.yml's pip section."""
    sections = [dep["pip"] for dep in ENVIRONMENT["dependencies"] if isinstance(dep, dict)]
    assert len(sections) == 1, f"environment.yml must have one pip section, found {len(sections)}"
    return sections[0]


def editable_extras(line: str) -> set[str]:
    """The extras of an editable install of the project, e.g. {'notebooks', 'test'} for `-e .[notebooks,test]`."""
    match = EDITABLE_INSTALL.match(line.strip())
    assert match, f"expected an editable install of the project like `-e .[extra]`, got {line!r}"
    return set(match.group(1).split(","))


def makefile_install_line() -> str:
    """The argument of the `pip install -e ...` that builds the environment of `make lab` and `make test`
    (the recipe of the `$(STAMP)` target; `make test-ui` adds its own extra on top)."""
    recipe = re.search(r"^\$\(STAMP\):.*\n((?:\t.*\n)+)", MAKEFILE, re.M)
    assert recipe, "the Makefile must have a $(STAMP) target that installs the environment"
    lines = re.findall(r"pip install (-e\s+\S+)", recipe.group(1))
    assert len(lines) == 1, f"the environment recipe must install the project once, found {lines}"
    return lines[0]


def pyproject_requirements() -> list[Requirement]:
    """Every requirement pyproject.toml declares: build system, dependencies and all extras."""
    lists = [PYPROJECT["build-system"]["requires"], PYPROJECT["project"]["dependencies"],
             *PYPROJECT["project"].get("optional-dependencies", {}).values()]
    return [Requirement(line) for deps in lists for line in deps]


def test_environment_yml_installs_the_project_with_the_makefiles_extras():
    (line,) = pip_section()
    extras = editable_extras(line)
    assert extras == editable_extras(makefile_install_line())
    assert extras <= set(PYPROJECT["project"]["optional-dependencies"])


def test_environment_yml_lists_no_package_besides_python_and_pip():
    assert sorted(conda_name(spec) for spec in conda_specs()) == ["pip", "python"]


def test_environment_python_satisfies_requires_python():
    (python,) = [spec for spec in conda_specs() if conda_name(spec) == "python"]
    version = python.removeprefix("python").lstrip("=")
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?", version), f"pin python to a version, got {python!r}"
    assert Requirement(f"python{PYPROJECT['project']['requires-python']}").specifier.contains(version)


def test_pyproject_torch_admits_the_makefiles_torch():
    (pin,) = re.findall(r"^TORCH_VERSION\s*:?=\s*(\S+)", MAKEFILE, flags=re.MULTILINE)
    (torch,) = [req for req in pyproject_requirements() if req.name == "torch"]
    assert torch.specifier.contains(pin), f"pyproject's {torch} must admit the Makefile's torch {pin}"


def test_torchvision_is_required_nowhere():
    names = {canonicalize_name(req.name) for req in pyproject_requirements()}
    names |= {canonicalize_name(conda_name(spec)) for spec in conda_specs()}
    assert "torchvision" not in names
    assert all("torchvision" not in line for line in pip_section())


@pytest.mark.parametrize("notebook", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_notebooks_use_the_python3_kernel(notebook: Path):
    kernelspec = json.loads(notebook.read_text())["metadata"].get("kernelspec", {})
    assert kernelspec.get("name") == "python3"


SANITIZE = get_sanitize_patterns((ROOT / "notebooks" / "nbval_sanitize.cfg").read_text())


def sanitize(text: str) -> str:
    """Apply the notebook sanitize patterns in order, as nbval does."""
    for regex, replace in SANITIZE:
        text = re.sub(regex, replace, text)
    return text


@pytest.mark.parametrize("run_a, run_b", [
    ("<Figure size 640x480 with 1 Axes>", "<Figure size 1200x400.5 with 3 Axes>"),
    ("<flbook.Federation object at 0x7f3a2b1c90d0>", "<flbook.Federation object at 0x7f00deadbeef>"),
    ("rounds: 100%|##########| 50/50 [00:01<00:00, 12.34it/s]", "rounds: 100%|##########| 50/50 [00:03<00:00,  4.10it/s]"),
    ("  0%|          | 0/50 [00:00<?, ?it/s]", "  0%|          | 0/50 [00:00<?, ?it/s, acc=0.1]"),
    ("round 3: 1.25s/it", "round 3: 12.5 s/it"),
    ("trained 50 rounds in 3.2 s", "trained 50 rounds in 41 ms"),
    ("Wall time: 1.23 s", "Wall time: 850 ms"),
])
def test_sanitize_masks_volatile_output(run_a: str, run_b: str):
    assert run_a != run_b
    assert sanitize(run_a) == sanitize(run_b)


@pytest.mark.parametrize("run_a, run_b", [
    ("test_acc 0.91 after 50 rounds", "test_acc 0.92 after 50 rounds"),
    ("input_shape=(640, 480)", "input_shape=(640, 481)"),
    ("sim_time 12.0 s", "sim_time 13.0 s"),
])
def test_sanitize_keeps_deterministic_output(run_a: str, run_b: str):
    assert sanitize(run_a) != sanitize(run_b)
