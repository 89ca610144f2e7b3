"""The checks that keep the tree honest, run with the suite: lint, types, import contracts, tests.

ruff's rules, mypy's strictness and the import contracts are configured in
pyproject.toml; this module runs them and adds what they cannot say: every
hotline module is named in the contracts, every third-party import is a
declared dependency, and every test asserts in its own body.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SOURCES = sorted([*ROOT.glob("blocklist/**/*.py"), *ROOT.glob("resolver_plugin/**/*.py")])
# Present only inside Unbound, which provides them to the module it loads.
UNBOUND_PROVIDED = {"unboundmodule", "_unboundmodule"}


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff() -> None:
    result = _run(str(BIN / "ruff"), "check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy() -> None:
    result = _run(str(BIN / "mypy"), "--cache-dir", str(ROOT / ".mypy_cache"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_contracts() -> None:
    result = _run(str(BIN / "lint-imports"), "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_contracts_name_every_hotline_module() -> None:
    """A new hotline module the plugin could import without any contract noticing fails here."""
    hotline = {f"blocklist.{p.stem}" for p in (ROOT / "blocklist").glob("*.py")
               if p.stem not in ("__init__", "__main__")}
    hotline |= {f"blocklist.{p.name}" for p in (ROOT / "blocklist").iterdir()
                if p.is_dir() and (p / "__init__.py").exists() and p.name != "core"}
    contracts = PYPROJECT["tool"]["importlinter"]["contracts"]
    forbidden = [set(c["forbidden_modules"]) for c in contracts if c["type"] == "forbidden"]
    assert forbidden
    for names in forbidden:
        assert hotline <= names, sorted(hotline - names)


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _imported_top_levels(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return names


def test_every_import_is_a_declared_dependency() -> None:
    declared = {_requirement_name(r) for r in PYPROJECT["project"]["dependencies"]}
    distributions = packages_distributions()
    undeclared = {}
    for path in SOURCES:
        for name in _imported_top_levels(path):
            if name in sys.stdlib_module_names or name in ("blocklist", "resolver_plugin") or name in UNBOUND_PROVIDED:
                continue
            owners = {d.lower().replace("_", "-") for d in distributions.get(name, [name])}
            if not owners & declared:
                undeclared[f"{path.relative_to(ROOT)}: {name}"] = sorted(owners)
    assert not undeclared, undeclared


def _asserts(node: ast.AST) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Assert):
            return True
        if isinstance(sub, ast.With | ast.AsyncWith):
            if any(re.search(r"\b(raises|warns)\(", ast.unparse(item.context_expr)) for item in sub.items):
                return True
        if isinstance(sub, ast.Call) and ast.unparse(sub.func) == "pytest.fail":
            return True
    return False


@pytest.mark.parametrize("path", sorted((ROOT / "tests").glob("test_*.py")), ids=lambda p: p.name)
def test_every_test_asserts_in_its_own_body(path: Path) -> None:
    """A test whose checks all live in helpers reads as if it checked nothing; say it where it runs."""
    silent = [f"{node.name} (line {node.lineno})" for node in ast.walk(ast.parse(path.read_text()))
              if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test")
              and not _asserts(node)]
    assert not silent, silent
