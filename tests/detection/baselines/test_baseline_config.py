"""Baseline settings from the environment: lists, per-metric maps merged over defaults,
and errors that name the variable to fix."""

from __future__ import annotations

import pytest

from promptops.detection.baselines import BaselineConfig, BaselineConfigError, load_baseline_config


def test_defaults():
    cfg = BaselineConfig()
    assert cfg.history_days == 14 and cfg.top_teams == 5 and cfg.workers == 2
    assert cfg.dimensions == ["overall", "model", "app", "team"]
    assert "error_rate" in cfg.metrics and "relevance_mean" in cfg.metrics
    assert cfg.z == pytest.approx(2.968, abs=1e-3)
    assert cfg.for_metric("direction", "error_rate") == "above"
    assert cfg.for_metric("direction", "requests") == "both"
    assert cfg.for_metric("min_samples", "requests") == 0
    assert cfg.for_metric("min_samples", "latency_p95_ms") == 50


def test_environment(monkeypatch):
    monkeypatch.setenv("PROMPTOPS_BASELINE_HISTORY_DAYS", "21")
    monkeypatch.setenv("PROMPTOPS_BASELINE_METRICS", "requests, error_rate")
    monkeypatch.setenv("PROMPTOPS_BASELINE_DIMENSIONS", '["overall", "model"]')
    monkeypatch.setenv("PROMPTOPS_BASELINE_MIN_CHANGE", '{"error_rate": 0.01, "*": 1}')
    cfg = load_baseline_config()
    assert cfg.history_days == 21
    assert cfg.metrics == ["requests", "error_rate"]
    assert cfg.dimensions == ["overall", "model"]
    assert cfg.for_metric("min_change", "error_rate") == 0.01
    assert cfg.for_metric("min_change", "latency_p95_ms") == 250.0  # other defaults kept
    assert cfg.for_metric("min_change", "intent_f1") == 1


def test_warm_up_settings_from_the_environment(monkeypatch):
    cfg = load_baseline_config()
    assert (cfg.min_page_history_days, cfg.min_warn_history_days) == (7.0, 2.0)
    monkeypatch.setenv("PROMPTOPS_BASELINE_MIN_PAGE_HISTORY_DAYS", "14")
    monkeypatch.setenv("PROMPTOPS_BASELINE_MIN_WARN_HISTORY_DAYS", "3")
    cfg = load_baseline_config()
    assert (cfg.min_page_history_days, cfg.min_warn_history_days) == (14.0, 3.0)
    monkeypatch.setenv("PROMPTOPS_BASELINE_MIN_PAGE_HISTORY_DAYS", "-1")
    with pytest.raises(ValueError, match="PROMPTOPS_BASELINE_MIN_PAGE_HISTORY_DAYS"):
        load_baseline_config()


@pytest.mark.parametrize(("env", "value", "words"), [
    ("PROMPTOPS_BASELINE_HISTORY_DAYS", "2", "PROMPTOPS_BASELINE_HISTORY_DAYS (history_days)"),
    ("PROMPTOPS_BASELINE_METRICS", "requests,eror_rate", "unknown metric(s) eror_rate"),
    ("PROMPTOPS_BASELINE_MIN_CHANGE", '{"error_rate": -1}',
     "PROMPTOPS_BASELINE_MIN_CHANGE (min_change): Value error, must be >= 0"),
    ("PROMPTOPS_BASELINE_DIRECTION", '{"error_rate": "up"}', "PROMPTOPS_BASELINE_DIRECTION"),
    ("PROMPTOPS_BASELINE_MIN_SAMPLES", "not json", "PROMPTOPS_BASELINE_MIN_SAMPLES"),
    ("PROMPTOPS_BASELINE_COVERAGE", "1.5", "PROMPTOPS_BASELINE_COVERAGE"),
])
def test_errors_name_the_variable(monkeypatch, env, value, words):
    monkeypatch.setenv(env, value)
    with pytest.raises(BaselineConfigError) as err:
        load_baseline_config()
    assert words in str(err.value)


def test_package_exports_resolve():
    import promptops.detection.baselines as pkg

    assert sorted(pkg.__all__) == sorted(pkg._EXPORTS)
    for name in pkg.__all__:
        assert getattr(pkg, name) is not None
