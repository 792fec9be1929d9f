"""Every error promptops raises on purpose is a PromptOpsError (and still the builtin it
was, so callers that catch ValueError or LookupError keep working)."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

from promptops.errors import (
    ConfigError,
    InvalidInput,
    MissingData,
    PromptOpsError,
    StepIncomplete,
)
from tests.helpers import ROOT

LIBRARY = ROOT / "include" / "promptops"
#: The builtins an operator-facing error used to be. TypeError and KeyError stay Python's
#: own signals for a wrong type and a missing key (json's ``default`` hook, dict lookups).
OPERATOR_FACING = {"ValueError", "LookupError", "RuntimeError", "Exception"}


def _modules() -> list[Path]:
    return [p for p in sorted(LIBRARY.rglob("*.py"))
            if "simulator" not in p.parts]  # the simulator is a program of its own


def _is_validator(node: ast.AST) -> bool:
    """pydantic wants a plain ValueError from a validator; it reports it inside the
    module's own config error."""
    return any("validator" in ast.unparse(d).split("(")[0]
               for d in getattr(node, "decorator_list", []))


def _bare_raises(path: Path) -> list[str]:
    found = []

    def visit(node: ast.AST, in_validator: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_validator or _is_validator(child)
            if isinstance(child, ast.Raise) and isinstance(child.exc, ast.Call) \
                    and isinstance(child.exc.func, ast.Name) \
                    and child.exc.func.id in OPERATOR_FACING and not inside:
                found.append(f"{path.relative_to(LIBRARY)}:{child.lineno} "
                             f"raises {child.exc.func.id}")
            visit(child, inside)

    visit(ast.parse(path.read_text()), False)
    return found


def test_no_module_raises_a_bare_builtin():
    assert [r for p in _modules() for r in _bare_raises(p)] == []


def test_every_public_exception_class_is_a_promptops_error():
    outside = []
    for path in _modules():
        name = ".".join(("promptops", *path.relative_to(LIBRARY).with_suffix("").parts))
        module = importlib.import_module(name.removesuffix(".__init__"))
        for attr, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) \
                    and obj.__module__ == module.__name__ and not attr.startswith("_") \
                    and not issubclass(obj, PromptOpsError):
                outside.append(f"{module.__name__}.{attr}")
    assert outside == []


@pytest.mark.parametrize(("error", "builtin"), [
    (ConfigError, ValueError), (InvalidInput, ValueError), (MissingData, LookupError),
    (StepIncomplete, RuntimeError)])
def test_the_kinds_of_error_are_still_their_builtins(error, builtin):
    assert issubclass(error, PromptOpsError) and issubclass(error, builtin)
