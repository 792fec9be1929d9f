"""End to end: a simulated 3-hour error burst on one model, run hour by hour through the
hourly DAG (dag.test) against a real simulator and a real Slack sink, pages exactly once
and resolves exactly once; nothing unrelated is posted."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from promptops.lake.store import Lake
from promptops.simulator import SimulatorProcess, SlackSinkProcess
from tests.helpers import ROOT
from tests.helpers.alerts import route_to_sink

SCENARIO = Path(__file__).parent / "scenarios" / "model_error_burst.yaml"
MODEL = "claude-3-5-sonnet"
FIRST_HOUR = datetime(2026, 11, 20, 2, tzinfo=UTC)   # one healthy hour before the burst
HOURS = 6   # 02:00 .. 07:00: healthy, 3 burst hours, keep-firing, all clear


def _text(message: dict) -> str:
    return json.dumps(message["body"])


def _status(message: dict) -> str:
    """FIRING or RESOLVED, from the fallback text: ``[FIRING:3] critical rule=...``."""
    return message["body"]["text"].split(":", 1)[0].lstrip("[")


@pytest.mark.slow
def test_model_error_burst_pages_once_and_resolves_once(airflow_db, tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    from promptops.settings import get_settings

    with SimulatorProcess("--scenario", str(SCENARIO), api_key="alert-e2e-key",
                          seed=None) as sim, SlackSinkProcess() as sink:
        monkeypatch.setenv("PROMPTOPS_LAKE_URI", f"file://{tmp_path / 'lake'}")
        monkeypatch.setenv("PROMPTOPS_STATE_DIR", str(tmp_path / "state"))
        # The simulator burns far more than the seed's 100k tokens/day.
        monkeypatch.setenv("PROMPTOPS_THRESHOLD__daily_tokens__budget", "500000000")
        monkeypatch.setenv("AIRFLOW_CONN_PROMPT_PLATFORM", json.dumps(
            {"conn_type": "http", "host": sim.url, "password": sim.api_key}))
        route_to_sink(monkeypatch, sink.url)
        get_settings.cache_clear()
        try:
            dag = DagBag(dag_folder=str(ROOT / "dags")).dags["promptops_hourly"]
            branches = []
            for i in range(HOURS):
                hour = FIRST_HOUR + timedelta(hours=i)
                run = dag.test(logical_date=hour + timedelta(hours=1))
                assert run.state == "success", f"run for {hour} ended {run.state}"
                states = {ti.task_id: ti.state for ti in run.get_task_instances()}
                branches.append(next(t for t in ("all_clear", "alerts_sent", "request_heal")
                                     if states.get(t) == "success"))
            messages = sink.messages()
        finally:
            get_settings.cache_clear()

    pages = [m for m in messages if m["path"].endswith("/critical")]
    team = [m for m in messages if m["path"].endswith("/warning")]
    assert len(pages) + len(team) == len(messages)

    firing = [m for m in pages if _status(m) == "FIRING"]
    resolved = [m for m in pages if _status(m) == "RESOLVED"]
    assert len(pages) == 2, [_text(m)[:300] for m in pages]
    assert len(firing) == 1 and len(resolved) == 1
    assert MODEL in _text(firing[0])
    assert pages.index(firing[0]) < pages.index(resolved[0])
    # Whatever went to the team channel belongs to the same incident (the success rate of
    # slices that carry the model's traffic), never an unrelated rule.
    for m in team:
        assert "success rate" in _text(m).lower(), _text(m)[:300]

    # The healthy hour did nothing; the burst fired; the all-clear hour was quiet again.
    assert branches[0] == "all_clear"
    assert set(branches[1:4]) <= {"alerts_sent", "request_heal"}
    assert branches[-1] in {"all_clear", "alerts_sent"}

    # Every alert event is in the alert log, and the metrics show the burst on the model.
    lake = Lake(f"file://{tmp_path / 'lake'}")
    burst = FIRST_HOUR + timedelta(hours=1)
    metrics = lake.read_partition("metrics", burst).to_pylist()
    rate = next(r["value"] for r in metrics if r["metric"] == "success_rate"
                and r["dimension"] == "model" and r["slice"] == MODEL)
    assert 0.4 < rate < 0.6
    from promptops.alerts.store import AlertStore

    log = AlertStore(lake, scope="hourly").read_alert_log(FIRST_HOUR, FIRST_HOUR + timedelta(
        hours=HOURS + 1))
    events = log.to_pylist()
    assert any(e["event"] == "fired" and MODEL in json.dumps(e, default=str) for e in events)
    assert any(e["event"] == "resolved" and MODEL in json.dumps(e, default=str) for e in events)
