"""Silences from the YAML file and the Airflow Variable."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from promptops.airflow_adapters.resources import silences
from promptops.alerts.config import DEFAULT_CONFIG_PATH, load_alerting_config
from promptops.alerts.silences import (
    SilenceError,
    SilenceSource,
    load_silences_file,
    parse_silences,
)

NOW = datetime(2026, 11, 20, 14, tzinfo=UTC)
FILE_SILENCES = """
- id: sonnet-maintenance
  matchers: ['rule="success_rate"', 'slice=~"claude-.*"']
  starts_at: 2026-11-20T13:00:00Z
  ends_at: 2026-11-20T18:00:00Z
  created_by: alice@example.com
  comment: provider maintenance
- id: long-gone
  matchers: ['rule="cost_budget"']
  starts_at: 2026-11-01T00:00:00Z
  ends_at: 2026-11-02T00:00:00Z
  created_by: bob
  comment: expired
"""
VARIABLE = [{"matchers": [{"name": "user", "value": "user-042", "isRegex": False}],
             "startsAt": "2026-11-20T13:30:00Z", "endsAt": "2026-11-20T14:30:00Z",
             "createdBy": "carol", "comment": "load test"}]


def test_file_and_variable_active_ones_only(tmp_path):
    path = tmp_path / "silences.yaml"
    path.write_text(FILE_SILENCES)
    source = SilenceSource(path, "promptops_silences",
                           variable_reader=lambda name: json.dumps(VARIABLE))
    active, problems = source.active(NOW)
    assert problems == []
    assert sorted(s.created_by for s in active) == ["alice@example.com", "carol"]
    sonnet = next(s for s in active if s.id == "sonnet-maintenance")
    assert sonnet.matches({"rule": "success_rate", "slice": "claude-3-5-sonnet"})
    assert not sonnet.matches({"rule": "success_rate", "slice": "gpt-4o"})
    var = next(s for s in active if s.created_by == "carol")
    assert var.source == "Airflow Variable 'promptops_silences'" and len(var.id) == 12
    # Starts inclusive, ends exclusive.
    assert not var.active_at(datetime(2026, 11, 20, 14, 30, tzinfo=UTC))
    assert var.active_at(datetime(2026, 11, 20, 13, 30, tzinfo=UTC))


def test_the_variable_is_read_through_airflow(monkeypatch):
    monkeypatch.setenv("AIRFLOW_VAR_PROMPTOPS_SILENCES", json.dumps(VARIABLE))
    active, problems = silences(load_alerting_config()).active(NOW)
    assert problems == [] and [s.created_by for s in active] == ["carol"]
    # Without a reader only the file counts.
    assert SilenceSource(None).active(NOW) == ([], [])


def test_shipped_silences_file_is_an_empty_list():
    cfg = load_alerting_config()
    assert cfg.silences_file is not None and load_silences_file(cfg.silences_file) == []
    assert cfg.silences_file.parent == DEFAULT_CONFIG_PATH.parent


def test_a_broken_source_is_reported_and_the_other_still_counts(tmp_path):
    path = tmp_path / "silences.yaml"
    path.write_text("- matchers: []\n  starts_at: 2026-11-20T13:00:00\n  ends_at: x\n")
    source = SilenceSource(path, "promptops_silences",
                           variable_reader=lambda name: json.dumps(VARIABLE))
    active, problems = source.active(NOW)
    assert [s.created_by for s in active] == ["carol"]
    assert len(problems) == 1
    p = problems[0]
    assert p.startswith(f"{path}: silence #1: ")
    for part in ("matchers: List should have at least 1 item", "starts_at: ",
                 "ends_at: ", "created_by: Field required", "ignored until it is fixed"):
        assert part in p


def test_variable_that_is_not_json():
    source = SilenceSource(None, "promptops_silences", variable_reader=lambda name: "[{oops")
    active, problems = source.active(NOW)
    assert active == [] and "Airflow Variable 'promptops_silences': not valid JSON" in problems[0]


@pytest.mark.parametrize(("item", "problem"), [
    ({**VARIABLE[0], "endsAt": "2026-11-20T13:00:00Z"}, "is not after"),
    ({**VARIABLE[0], "startsAt": "2026-11-20T13:00:00"}, "needs a time zone"),
    ({**VARIABLE[0], "matchers": ["user~bad"]}, "is not a matcher"),
    ("just text", "must be a mapping"),
])
def test_invalid_silences(item, problem):
    with pytest.raises(SilenceError, match=problem):
        parse_silences([item], "src")
