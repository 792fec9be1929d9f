"""Every DAG file parses, is documented and cheap to parse (Astronomer-style checks)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

DAG_FILES = sorted((ROOT / "dags").glob("*.py"))
HEAVY = {"pandas", "numpy", "pyarrow", "sklearn", "statsmodels", "scipy", "requests",
         "urllib3", "slack_sdk", "pynvml", "matplotlib", "orjson", "psutil"}


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert len(dagbag.dags) >= 1


def test_expected_dags_present(dagbag):
    assert {"promptops_hourly", "promptops_daily", "promptops_health",
            "promptops_heal", "promptops_push"} <= set(dagbag.dags)


def test_every_dag_has_tags_retries_docs_and_owner(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags and "promptops" in dag.tags, dag_id
        assert dag.doc_md and len(dag.doc_md.strip()) > 40, f"{dag_id} has no doc_md"
        assert dag.max_active_runs, dag_id
        for task in dag.tasks:
            # Sensors wait instead of retrying; every other task retries with backoff.
            if not task.task_type.endswith("SensorOperator") and "sensor" not in task.task_type.lower():
                assert task.retries >= 1, f"{dag_id}.{task.task_id} has no retries"
                assert task.retry_exponential_backoff, f"{dag_id}.{task.task_id}"
            assert task.execution_timeout is not None or task.timeout, \
                f"{dag_id}.{task.task_id} has no timeout"


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_no_heavy_imports_at_top_level(path):
    """Static: DAG files themselves import nothing heavy at module level."""
    tree = ast.parse(path.read_text())
    for node in tree.body:
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
        for name in names:
            assert name.split(".")[0] not in HEAVY, f"{path.name}:{node.lineno} imports {name}"


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_parsing_loads_no_heavy_module_transitively(path):
    """Dynamic: importing the DAG file (and what it imports) pulls in no heavy module that
    Airflow itself had not loaded already."""
    code = (
        "import sys, importlib.util\n"
        "import airflow.sdk, airflow.providers.standard.decorators.sensor\n"
        # Airflow's own cost: the first Asset makes Airflow load every installed provider's
        # asset-URI handlers (the Amazon provider's S3 hook imports requests).
        "airflow.sdk.Asset('promptops://baseline')\n"
        "before = set(sys.modules)\n"
        f"spec = importlib.util.spec_from_file_location('dagfile', {str(path)!r})\n"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "print('LOADED:' + ','.join(sorted(new)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("LOADED:"))
    loaded = set(line[len("LOADED:"):].split(","))
    assert not (loaded & HEAVY), f"parsing {path.name} imports {sorted(loaded & HEAVY)}"


def test_every_dag_shares_the_promptops_defaults(dagbag):
    """Owner, retry policy, failure callbacks: one set for every DAG (dag_defaults)."""
    from promptops.airflow_adapters.failure_notifier import (
        PERMANENT_ERRORS_FAIL,
        RunFailureNotifier,
        record_task_failure,
    )

    for dag_id, dag in dagbag.dags.items():
        assert isinstance(dag.on_failure_callback, RunFailureNotifier), dag_id
        assert not dag.catchup, dag_id
        for task in dag.tasks:
            where = f"{dag_id}.{task.task_id}"
            assert task.owner == "promptops", where
            assert task.retry_policy is PERMANENT_ERRORS_FAIL, where
            callbacks = task.on_failure_callback
            assert record_task_failure in (callbacks if isinstance(callbacks, list)
                                           else [callbacks]), where


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_dag_files_take_shared_defaults_and_run_links_from_the_adapters(path):
    """Static: no DAG file spells out the shared defaults or cuts a run link from a log
    URL itself (promptops.airflow_adapters.dag_defaults and .context do)."""
    text = path.read_text()
    for spelled_out in ("retry_policy", "record_task_failure", "RunFailureNotifier",
                        "log_url"):
        assert spelled_out not in text, f"{path.name} spells out {spelled_out}"


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_dag_files_read_settings_not_the_environment(path):
    """Static: PROMPTOPS_* variables reach DAG files through promptops.settings only."""
    text = path.read_text()
    assert "os.environ" not in text and "getenv" not in text, path.name


def test_the_gpu_task_runs_on_the_configured_queue():
    path = ROOT / "dags" / "promptops_health.py"
    code = ("import importlib.util\n"
            f"spec = importlib.util.spec_from_file_location('h', {str(path)!r})\n"
            "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
            "dag = mod.promptops_health()\n"
            "print('QUEUE:' + dag.get_task('gpu_metrics').queue)\n")
    env = {**os.environ, "PROMPTOPS_GPU_QUEUE": "gpu-nodes"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env)
    assert "QUEUE:gpu-nodes" in out.stdout.splitlines()
