"""environment.yml keeps up with pyproject.toml (conda itself cannot be reached here).

The pip section of environment.yml must list exactly pyproject's dependencies plus its
``course``, ``test``, ``site`` and ``app`` extras, with the same version specifiers, and every name must
resolve on the package index (``pip install --dry-run``).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
EXTRAS = ("course", "test", "site", "app")


def parse_environment(text: str) -> tuple[list[str], list[str]]:
    """``(conda dependencies, pip requirements)`` of an environment.yml.

    A tiny parser for the one shape this file has: a top-level ``dependencies:`` list
    whose items are strings or one ``- pip:`` item with a nested list.
    """
    conda: list[str] = []
    pip: list[str] = []
    section = None
    pip_indent = -1
    for raw in text.splitlines():
        line = re.sub(r"\s+#.*$", "", raw).rstrip()
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        if indent == 0:
            section = line.split(":")[0]
            pip_indent = -1
            continue
        item = re.match(r"^\s*-\s+(.*)$", line)
        if section != "dependencies" or not item:
            continue
        value = item.group(1).strip().strip("'\"")
        if pip_indent >= 0 and indent > pip_indent:
            pip.append(value)
        elif value == "pip:":
            pip_indent = indent
        else:
            pip_indent = -1
            conda.append(value)
    return conda, pip


def _key(req: Requirement) -> tuple[str, frozenset[str], SpecifierSet, str]:
    return canonicalize_name(req.name), frozenset(req.extras), req.specifier, str(req.marker or "")


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def environment() -> tuple[list[str], list[str]]:
    return parse_environment((ROOT / "environment.yml").read_text())


def test_parser_on_a_small_example() -> None:
    text = """# comment
name: x
channels:
  - conda-forge
dependencies:
  - python=3.11
  - pip
  - pip:
      - torch>=2.1  # cpu or cuda
      - "numpy>=1.24"
      - -e .
  - nodejs
"""
    assert parse_environment(text) == (["python=3.11", "pip", "nodejs"], ["torch>=2.1", "numpy>=1.24", "-e ."])


def test_parser_agrees_with_pyyaml_when_installed() -> None:
    try:
        import yaml
    except ModuleNotFoundError:
        return  # the tiny parser is tested above on its own
    data = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = data["dependencies"]
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    conda = [d for d in deps if isinstance(d, str)]
    assert parse_environment((ROOT / "environment.yml").read_text()) == (conda, pip)


def test_pip_section_mirrors_pyproject(pyproject: dict, environment: tuple[list[str], list[str]]) -> None:
    project = pyproject["project"]
    expected = list(project["dependencies"])
    for extra in EXTRAS:
        expected += project["optional-dependencies"][extra]
    _, pip = environment
    assert pip.count("-e .") == 1, "environment.yml should install camlib itself with '-e .'"
    listed = [Requirement(r) for r in pip if r != "-e ."]
    wanted = [Requirement(r) for r in expected]
    names = [canonicalize_name(r.name) for r in listed]
    assert len(names) == len(set(names)), f"duplicates in environment.yml: {names}"
    only_env = sorted({str(r) for r in listed} - {str(r) for r in wanted})
    only_pyproject = sorted({str(r) for r in wanted} - {str(r) for r in listed})
    assert {_key(r) for r in listed} == {_key(r) for r in wanted}, (
        f"only in environment.yml: {only_env}; only in pyproject.toml: {only_pyproject}"
    )


def test_conda_python_satisfies_requires_python(pyproject: dict, environment: tuple[list[str], list[str]]) -> None:
    conda, _ = environment
    assert "pip" in conda
    pythons = [d for d in conda if re.match(r"^python\s*[=<>]", d)]
    assert len(pythons) == 1, conda
    version = re.sub(r"^python\s*=*\s*", "", pythons[0])
    assert SpecifierSet(pyproject["project"]["requires-python"]).contains(version), version


def test_pip_names_resolve(environment: tuple[list[str], list[str]]) -> None:
    _, pip = environment
    reqs = [r for r in pip if r != "-e ."]
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed", "-q", *reqs]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
