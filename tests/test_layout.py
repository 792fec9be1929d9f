"""The tests' layout mirrors the library: one folder per package of promptops, a few
cross-cutting folders, every folder a package, and helpers imported as ``tests.helpers``."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import ROOT

TESTS = ROOT / "tests"
LIBRARY = ROOT / "include" / "promptops"
#: Folders that test no one package: the DAG files, whole stacks, the UI, the deployment.
CROSS_CUTTING = {"dags", "integration", "browser", "deploy", "helpers"}


def _folders() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*") if p.is_dir() and p.name != "__pycache__"
                  and any(p.glob("*.py")))


def test_one_test_folder_per_package():
    packages = {p.parent.name for p in LIBRARY.glob("*/__init__.py")}
    folders = {p.name for p in TESTS.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert packages - folders == set(), "packages without a tests/<package>/ folder"
    assert folders - packages - CROSS_CUTTING == set(), \
        "test folders that are neither a promptops package nor cross-cutting"


def test_every_test_folder_is_a_package():
    missing = [str(p.relative_to(ROOT)) for p in [TESTS, *_folders()]
               if not (p / "__init__.py").exists()]
    assert missing == []


def test_helpers_are_imported_from_the_tests_package():
    """No bare ``import clienthelpers`` or ``from test_push import ...``: such an import only
    works while that folder is on sys.path, and two files of one name shadow each other."""
    bare = {p.stem for p in TESTS.rglob("*.py")} - {"__init__"}
    found = []
    for path in [*TESTS.rglob("*.py"), *(ROOT / "bench").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            found += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names
                      if n.split(".")[0] in bare]
    assert found == []
