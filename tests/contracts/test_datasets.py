"""One module names the lake's datasets: promptops.contracts.datasets."""

from __future__ import annotations

import ast
from pathlib import Path

from promptops.contracts import datasets
from tests.helpers import ROOT

LIBRARY = ROOT / "include" / "promptops"
NAMES = {v for k, v in vars(datasets).items() if k.isupper() and isinstance(v, str)}
#: Lake methods whose first argument is a dataset.
LAKE_METHODS = {"partition_dir", "partition_file", "partition_writer", "write_partition",
                "delete_partition", "write_record", "read_record", "delete_record",
                "read_records", "has_partition", "partition_rows", "read_partition",
                "read_range", "list_partitions"}


def test_the_datasets_are_the_lake_folders_they_always_were():
    assert {datasets.CALLS, datasets.QUARANTINE, datasets.METRICS, datasets.HEALTH_METRICS,
            datasets.ALERT_LOG, datasets.ALERT_STATE, datasets.HEAL_REQUESTS,
            datasets.HEAL_AUDIT, datasets.BASELINES, datasets.ANOMALY_MODELS,
            datasets.REPORTS, datasets.PUSH_BATCHES, datasets.STAGING_CALLS,
            datasets.STAGING_QUARANTINE} == {
        "calls", "quarantine", "metrics", "health_metrics", "alert_log", "alert_state",
        "heal_requests", "heal_audit", "baselines", "models/anomaly", "reports",
        "push_batches", "staging_calls", "staging_quarantine"}


def _spelled_out(path: Path) -> list[str]:
    """Dataset names written as string literals where a dataset is meant: a module
    constant, the first argument of a Lake method, or a folder under ``lake.root``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) \
                and node.value.value in NAMES and node.col_offset == 0:
            found.append(f"{node.lineno}: constant {node.value.value!r}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in LAKE_METHODS and node.args \
                and isinstance(node.args[0], ast.Constant) and node.args[0].value in NAMES:
            found.append(f"{node.lineno}: {node.func.attr}({node.args[0].value!r})")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) \
                and isinstance(node.right, ast.Constant) and node.right.value in NAMES:
            found.append(f"{node.lineno}: / {node.right.value!r}")
        elif isinstance(node, ast.Compare) and isinstance(node.left, ast.Name) \
                and "dataset" in node.left.id and any(
                    isinstance(c, ast.Constant) and c.value in NAMES for c in node.comparators):
            found.append(f"{node.lineno}: {node.left.id} compared with a name")
        elif isinstance(node, ast.arguments):
            named = node.args[len(node.args) - len(node.defaults):] + node.kwonlyargs
            defaults = node.defaults + [d for d in node.kw_defaults if d is not None]
            for arg, default in zip(named, defaults, strict=False):
                if "dataset" in arg.arg and any(isinstance(c, ast.Constant) and c.value in NAMES
                                                for c in ast.walk(default)):
                    found.append(f"{default.lineno}: default of {arg.arg}")
    return found


def test_no_other_module_spells_a_dataset_out():
    places = {str(p.relative_to(ROOT)): found
              for folder in (LIBRARY, ROOT / "dags", ROOT / "plugins", ROOT / "bench")
              for p in sorted(folder.rglob("*.py"))
              if p != LIBRARY / "contracts" / "datasets.py" and "simulator" not in p.parts
              and (found := _spelled_out(p))}
    assert places == {}
