"""What a fresh install meets: usage errors of the command line, and that every package the code
imports is one pyproject.toml declares (a package that merely happens to be installed, as click
once was, passes every other test and fails on a new machine)."""
from __future__ import annotations

import ast
import importlib.metadata as metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def histoclass_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "histoclass", *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("args, message", [
    (("train", "--bogus"), "No such option"),
    (("predict",), "Missing argument"),
    (("evaluate",), "Missing argument"),
    (("nonsense",), "No such command"),
])
def test_usage_errors_print_the_usage_and_exit_2(args, message):
    result = histoclass_cli(*args)
    assert result.returncode == 2, result.stderr
    assert "Usage:" in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_the_commands():
    result = histoclass_cli("--help")
    assert result.returncode == 0
    for command in ("train", "evaluate", "predict", "report", "synth", "demo"):
        assert command in result.stdout


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared_distributions() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    return {_normalise(re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0]) for r in requirements}


def _imported_top_level_modules() -> dict[str, str]:
    found: dict[str, str] = {}
    for path in sorted((ROOT / "src").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("histoclass", "__future__"):
                    found.setdefault(top, f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_every_imported_package_is_declared():
    declared = _declared_distributions()
    owners = metadata.packages_distributions()
    undeclared = []
    for module, where in _imported_top_level_modules().items():
        distributions = {_normalise(d) for d in owners.get(module, [])}
        if not distributions:
            undeclared.append(f"{module} ({where}): not installed here")
        elif not distributions & declared:
            undeclared.append(f"{module} ({where}): from {sorted(distributions)}, not in pyproject.toml")
    # The Keras backends: tensorflow is declared (tensorflow-cpu on x86-64); jax and torch are
    # imported only where KERAS_BACKEND names them, by users who installed that backend.
    undeclared = [u for u in undeclared if u.split()[0] not in ("tensorflow", "jax", "torch")]
    assert not undeclared, "\n".join(undeclared)
