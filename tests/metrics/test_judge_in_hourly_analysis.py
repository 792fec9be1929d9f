"""The judge inside the hourly analysis: its rows land in the hour's metrics partition,
priced from the project's price table; off by default it adds nothing and sends nothing."""

from __future__ import annotations

import json

from promptops.airflow_adapters.resources import relevance_judge
from promptops.lake.store import Lake
from promptops.metrics.judge import JUDGE_COST_USD, RELEVANCE_JUDGE_MEAN, JudgeConfig
from promptops.metrics.pricing import load_price_table
from promptops.pipelines.hourly import analyse_hour
from tests.helpers.judge import HOUR, hour_of_calls, judge_requests


def _lake_with_hour(tmp_path) -> Lake:
    lake = Lake(f"file://{tmp_path}")
    lake.write_partition("calls", HOUR, hour_of_calls())
    return lake


def test_judge_rows_join_the_hours_metrics(clean_sim, tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_RELEVANCE_JUDGE", json.dumps(
        {"conn_type": "http", "host": clean_sim.url, "password": clean_sim.api_key}))
    lake = _lake_with_hour(tmp_path)
    config = JudgeConfig(enabled=True, sample_size=5, model="gpt-4o-mini")
    summary = analyse_hour(lake, HOUR, judge=config, judge_factory=relevance_judge)
    assert summary["judge"]["sampled"] == 5 and summary["judge"]["ok"] == 5
    assert len(judge_requests(clean_sim, expect=5)) == 5

    rows = lake.read_partition("metrics", HOUR).to_pylist()
    overall = {r["metric"]: r for r in rows if r["dimension"] == "overall"}
    assert overall[RELEVANCE_JUDGE_MEAN]["samples"] == 5
    assert 1.0 <= overall[RELEVANCE_JUDGE_MEAN]["value"] <= 5.0
    # gpt-4o-mini is in the price table, so the judge's own cost is known and positive.
    price = load_price_table().get("gpt-4o-mini")
    assert price is not None and overall[JUDGE_COST_USD]["value"] > 0
    # The ordinary metrics are there too, in the same partition.
    assert overall["requests"]["value"] == hour_of_calls().num_rows


def test_judge_off_by_default_adds_no_rows(clean_sim, tmp_path):
    lake = _lake_with_hour(tmp_path)
    summary = analyse_hour(lake, HOUR)
    assert "judge" not in summary
    metrics = set(lake.read_partition("metrics", HOUR).column("metric").to_pylist())
    assert RELEVANCE_JUDGE_MEAN not in metrics and JUDGE_COST_USD not in metrics
    assert judge_requests(clean_sim) == []
