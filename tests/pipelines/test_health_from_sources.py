"""The 5-minute health evaluation with records from a source other than the platform API:
no /health to ask (no api_up row), the calls' own rows from the source's pages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from promptops.ingest.sources import SourcePage
from promptops.pipelines.health import api_rows_at

AT = datetime(2026, 9, 7, 10, 5, tzinfo=UTC)


class ListSource:
    """A record source over a fixed list of API-shaped records (the interface the span and
    spend-log sources implement)."""

    def __init__(self, records):
        self.records = records
        self.asked = []

    def iter_call_record_page_bodies(self, start, end, limit=10_000):
        self.asked.append((start, end))
        yield SourcePage([r for r in self.records
                          if start <= datetime.fromisoformat(r["ts"]) < end])


def call(i, status="success", minute=2):
    ts = (AT - timedelta(minutes=5) + timedelta(minutes=minute, seconds=i % 50)).isoformat()
    return {"call_id": f"c{i}", "ts": ts, "model": "gpt-4o", "status": status,
            "latency_ms": 100.0 + i, "prompt_tokens": 10, "completion_tokens": 5,
            "user_id": "u1" if i % 2 else None, "app": None}


def test_health_rows_come_from_the_sources_pages_without_a_health_endpoint():
    source = ListSource([call(i) for i in range(40)] + [call(100 + i, "error") for i in range(10)]
                        + [call(999, minute=9)])  # after the window
    out = api_rows_at(AT, source, platform=False)
    assert source.asked == [(AT - timedelta(minutes=5), AT)]
    metrics = {(r["metric"], r["dimension"]): r for r in out["rows"]}
    assert ("api_up", "overall") not in metrics
    success = metrics[("success_rate", "overall")]
    assert success["samples"] == 50 and abs(success["value"] - 0.8) < 1e-9
