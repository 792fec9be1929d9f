"""A source's pages go through the shared validation: its own rejects are kept with their
reason, and fields the platform API requires may be null for another source."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from promptops.errors import ConfigError
from promptops.ingest.pull import validate_call_page
from promptops.ingest.sources import SourcePage, source_reject
from promptops.ingest.sources.mapping import load_source_mapping

H = datetime(2026, 9, 7, 10, tzinfo=UTC)


def record(**over):
    base = {"call_id": "c1", "ts": "2026-09-07T10:15:00Z", "model": "gpt-4o",
            "status": "success", "latency_ms": 120.0, "prompt_tokens": 10,
            "completion_tokens": 5}
    return {**base, **over}


def test_a_source_page_keeps_its_rejects_and_may_lack_user_and_app():
    page = SourcePage([record(), record(call_id="c2", user_id="u1", app="chat")],
                      [source_reject("malformed_span", {"spanId": "x"}, field="endTimeUnixNano")])
    assert len(page) == 3
    checked = validate_call_page(page, H, H + timedelta(hours=1))
    assert checked.good.num_rows == 2
    assert checked.good.column("user_id").to_pylist() == [None, "u1"]
    assert [r["reason"] for r in checked.rejects] == ["malformed_span"]
    assert '"spanId":"x"' in checked.rejects[0]["raw"]
    # The platform API's own contract still requires them.
    strict = SourcePage([record()], optional=frozenset())
    assert [r["reason"] for r in validate_call_page(strict, H, H + timedelta(hours=1)).rejects] \
        == ["missing_field"]


def test_the_mapping_file_overrides_field_by_field_and_names_its_errors(tmp_path):
    mine = tmp_path / "sources.yaml"
    mine.write_text("otel:\n  app: [span.app.name]\n")
    m = load_source_mapping(mine)
    assert m.otel.paths("app") == ["span.app.name"]
    assert m.otel.paths("region") == load_source_mapping().otel.paths("region")
    for body, words in (("otel:\n  app: [service.name]\n", ("otel", "app", "span.")),
                        ("litellm:\n  colour: [column.x]\n", ("litellm.colour",))):
        bad = tmp_path / "bad.yaml"
        bad.write_text(body)
        with pytest.raises(ConfigError) as err:
            load_source_mapping(bad)
        assert str(bad) in str(err.value)
        assert all(w in str(err.value) for w in words), str(err.value)
