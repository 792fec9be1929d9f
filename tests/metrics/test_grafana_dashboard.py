"""The Grafana dashboard: the committed JSON is what scripts/grafana_dashboard.py builds with
Grafana's SDK, it loads as the SDK's dashboard model, every query parses in a real
Prometheus, and it only asks for metrics promptops pushes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import httpx

from promptops.metrics.prometheus import PUSHED
from tests.helpers.prometheus import prometheus_scraping, pushgateway

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "include" / "grafana" / "promptops.json"
PUSHED_NAMES = {name for name, *_ in PUSHED.values()} | {
    "promptops_hour_start_timestamp_seconds", "promptops_open_incidents",
    "promptops_firing_alerts", "promptops_baseline_expected", "promptops_baseline_lower",
    "promptops_baseline_upper", "promptops_budget_spent", "promptops_budget_amount",
    "promptops_budget_projected", "promptops_ingest_lag_seconds",
    "promptops_ingest_rejected_records"}


def exprs() -> list[str]:
    d = json.loads(DASHBOARD.read_text())
    out = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
    return out + [a["expr"] for a in d["annotations"]["list"] if "expr" in a]


def test_the_committed_dashboard_is_what_the_code_builds_and_loads_as_a_dashboard():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "grafana_dashboard.py"),
                           "--check"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    from grafana_foundation_sdk.models.dashboard import Dashboard

    model = Dashboard.from_json(json.loads(DASHBOARD.read_text()))
    assert model.uid == "promptops-overview"
    titles = [p.title for p in model.panels or []]
    assert {"Cost by model", "Cost by team", "Cost by app",
            "p95 latency with its baseline band", "Open incidents"} <= set(titles)


def test_every_query_parses_and_asks_for_pushed_metrics(tmp_path):
    # Metric names: not inside a label value ("promptops_hourly"), followed by {, ) or end.
    metric = re.compile(r"(?<![\w\"])(promptops_[a-z_]+)(?=\{|\)|\s|$)")
    names = {m for e in exprs() for m in metric.findall(e)}
    assert names and names <= PUSHED_NAMES, names - PUSHED_NAMES
    with pushgateway() as gateway, \
            prometheus_scraping(gateway.removeprefix("http://"), tmp_path) as prom:
        for expr in exprs():
            got = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=5).json()
            assert got["status"] == "success", (expr, got)
