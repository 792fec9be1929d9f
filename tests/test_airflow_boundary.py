"""Airflow stays behind ``promptops.airflow_adapters`` (and the DAG files and plugins).

Every other module of the library must import with ``airflow`` unimportable, and none may
import it at all, not even lazily inside a function: the library takes what Airflow holds
(connections, Variables, the secret masker, object-store paths) as arguments, built for the
DAG tasks by :mod:`promptops.airflow_adapters.resources`.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

PACKAGE = ROOT / "include" / "promptops"
ADAPTERS = PACKAGE / "airflow_adapters"


def _library_modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if ADAPTERS in path.parents:
            continue
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


MODULES = _library_modules()

# Runs in a fresh interpreter: a finder ahead of all others refuses ``airflow`` and every
# submodule, as on a machine without Airflow; each library module is imported in turn.
_IMPORT_ALL = """
import importlib, importlib.abc, json, sys, traceback

class NoAirflow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "airflow" or name.startswith("airflow."):
            raise ImportError(f"airflow is not importable here ({name})")
        return None

sys.meta_path.insert(0, NoAirflow())
failures = {}
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except BaseException:
        failures[name] = traceback.format_exc(limit=-3)
leaked = sorted(m for m in sys.modules if m == "airflow" or m.startswith("airflow."))
print(json.dumps({"failures": failures, "leaked": leaked}))
"""


def test_every_library_module_imports_without_airflow():
    env = {"PYTHONPATH": str(PACKAGE.parent), "PATH": "/usr/bin:/bin",
           "PROMPTOPS_LAKE_URI": "file:///nonexistent/lake"}
    # ``__main__`` modules are scripts (importing one runs it); the AST check covers them.
    names = sorted(m for m in MODULES if not m.endswith(".__main__"))
    done = subprocess.run([sys.executable, "-c", _IMPORT_ALL, json.dumps(names)],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["failures"] == {}, "\n".join(f"{m}:\n{tb}"
                                             for m, tb in result["failures"].items())
    assert result["leaked"] == []


def _airflow_mentions(tree: ast.AST) -> list[str]:
    """``import airflow...`` / ``from airflow... import`` anywhere (inside functions too),
    and airflow modules reached by name: ``import_module("airflow...")``,
    ``sys.modules["airflow..."]``, ``sys.modules.get("airflow...")``."""

    def is_airflow(name: object) -> bool:
        return isinstance(name, str) and (name == "airflow" or name.startswith("airflow."))

    found = []
    for node in ast.walk(tree):
        names: list[object] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module]
        elif isinstance(node, ast.Call) and node.args \
                and isinstance(node.args[0], ast.Constant):
            names = [node.args[0].value]
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            names = [node.slice.value]
        found += [f"line {node.lineno}: {n}" for n in names if is_airflow(n)]
    return found


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_library_module_imports_airflow(module):
    path = MODULES[module]
    mentions = _airflow_mentions(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    assert mentions == [], (f"{path.relative_to(ROOT)} reaches Airflow ({'; '.join(mentions)})"
                            f": move that to promptops.airflow_adapters and pass what it "
                            f"reads in as an argument")


def test_the_checks_see_what_they_look_for():
    source = ("import os\n"
              "def f():\n    from airflow.sdk import Variable\n"
              "def g():\n    import airflow\n"
              "def h():\n    return sys.modules.get('airflow.sdk.execution_time.task_runner')\n"
              "from promptops.airflow_adapters import resources\n")
    assert [m.split(": ")[1] for m in _airflow_mentions(ast.parse(source))] == [
        "airflow.sdk", "airflow", "airflow.sdk.execution_time.task_runner"]
    assert "promptops.lake.store" in MODULES and "promptops" in MODULES
    assert not any(m.startswith("promptops.airflow_adapters") for m in MODULES)
