"""The thresholds file: the seed's defaults, validation errors that say where, overrides."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from promptops.airflow_adapters.resources import threshold_overrides, thresholds
from promptops.detection.thresholds import (
    DEFAULT_PATH,
    BudgetRule,
    ComparisonRule,
    CompositeRule,
    ThresholdRule,
    ThresholdsConfigError,
    load_thresholds,
)

NO_ENV: dict[str, str] = {}


def write(tmp_path, text: str, name: str = "thresholds.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_file_is_valid_and_holds_the_seed_table():
    cfg = load_thresholds(env=NO_ENV)
    r = cfg.rules
    # The seed's levels are the warning levels, with the seed's direction and window.
    seed = {
        "api_success_rate_5m": ("success_rate", "below", 0.99, timedelta(minutes=5)),
        "api_latency_mean_5m": ("latency_mean_ms", "above", 2000, timedelta(minutes=5)),
        "gpu_utilization": ("gpu_utilization_pct", "above", 80, timedelta(minutes=5)),
        "intent_accuracy": ("intent_accuracy", "below", 0.95, timedelta(hours=1)),
        "relevance": ("relevance_mean", "below", 4.5, timedelta(hours=1)),
        "abusive_caller": ("peak_calls_per_minute", "above", 100, timedelta(hours=1)),
        "success_rate": ("success_rate", "below", 0.99, timedelta(hours=1)),
        "latency_mean": ("latency_mean_ms", "above", 2000, timedelta(hours=1)),
    }
    for name, (metric, direction, warning, window) in seed.items():
        rule = r[name]
        assert isinstance(rule, ThresholdRule), name
        assert (rule.metric, rule.direction, rule.warning, rule.window) == \
            (metric, direction, warning, window), name
        # Every default has a critical level beyond its warning level, and a sample floor.
        assert rule.critical is not None and rule.min_samples >= 1, name
        assert (rule.critical < rule.warning) if direction == "below" else \
            (rule.critical > rule.warning), name
    tokens = r["daily_tokens"]
    assert isinstance(tokens, BudgetRule) and tokens.metric == "total_tokens"
    assert tokens.heal == "high_token_usage"
    # Budgets are off until a person sets one: a made-up default pages on real traffic.
    assert tokens.budget is None and r["daily_cost"].budget is None
    assert not {"daily_tokens", "daily_cost"} & set(cfg.rules_for("hourly"))
    # Every rule that judges an estimate judges it with its sampling error: at 99% an hour's
    # ~1,000 slice judgements a day, at 95% the 5-minute ones that need two in a row.
    for name in ("success_rate", "latency_mean", "intent_accuracy", "relevance"):
        assert r[name].use_bound and r[name].confidence == 0.99, name
    for name in ("api_success_rate_5m", "api_latency_mean_5m"):
        assert r[name].use_bound and r[name].confidence == 0.95 and r[name].for_ == 2, name
    assert all(x.use_bound for x in r.values() if isinstance(x, ComparisonRule))
    assert not r["unpriced_model"].use_bound  # a count of unpriced calls is a fact
    gpu = r["gpu_utilization"]
    assert gpu.source == "health" and gpu.dimensions == ["gpu_node"]
    assert gpu.for_ == 3
    assert {type(x) for x in r.values()} >= {ThresholdRule, ComparisonRule, CompositeRule,
                                             BudgetRule}
    assert {x.against for x in r.values() if isinstance(x, ComparisonRule)} == {
        "previous_hour", "same_hour_yesterday", "same_hour_last_week"}
    assert set(cfg.rules_for("health")) == {"api_success_rate_5m", "api_latency_mean_5m",
                                            "gpu_utilization", "api_down", "abusive_caller_5m",
                                            "token_burst_5m"}


def test_defaults_block_fills_only_what_a_rule_leaves_out(tmp_path):
    path = write(tmp_path, """
defaults: {min_samples: 7, for: 3, service: quality}
rules:
  a: {kind: threshold, metric: m, direction: above, unit: ms, warning: 1}
  b: {kind: threshold, metric: m, direction: above, unit: ms, warning: 1, min_samples: 2}
  c: {kind: budget, metric: total_tokens, unit: tokens, budget: 10}
""")
    cfg = load_thresholds(path, env=NO_ENV)
    assert (cfg.rules["a"].min_samples, cfg.rules["a"].for_, cfg.rules["a"].service) == \
        (7, 3, "quality")
    assert cfg.rules["b"].min_samples == 2
    assert cfg.rules["c"].for_ == 3  # budgets have no min_samples; the rest still applies


@pytest.mark.parametrize(("rule", "expected"), [
    ("{kind: threshold, metric: success_rate, direction: below, unit: ratio, warning: 0.99, "
     "critical: 0.995}",
     "thresholds.yaml: rules.success_rate.critical: must be below warning (0.99) for "
     "direction 'below'"),
    ("{kind: threshold, metric: latency_mean_ms, direction: above, unit: ms, warning: 2000, "
     "critical: 1000}",
     "rules.success_rate.critical: must be above warning (2000) for direction 'above'"),
    ("{kind: threshold, metric: m, direction: up, unit: ms, warning: 1}",
     "rules.success_rate.direction: Input should be 'above' or 'below'"),
    ("{kind: threshold, metric: m, direction: above, unit: ms, warning: 1, windw: 5m}",
     "rules.success_rate.windw: unknown field"),
    ("{kind: threshold, metric: m, direction: above, unit: ms, warning: 1, window: soon}",
     "rules.success_rate.window: must be a positive duration like '5m'"),
    ("{kind: threshold, metric: m, direction: above, unit: ms}",
     "rules.success_rate.warning: required field is missing"),
    ("{kind: thresold, metric: m}",
     "rules.success_rate: kind must be one of threshold, comparison, composite, budget"),
    ("{kind: comparison, metric: m, direction: above, against: last_month, unit: ms, "
     "warning: {ratio: 2, change: 1}}",
     "rules.success_rate.against: Input should be 'previous_hour', 'same_hour_yesterday' or "
     "'same_hour_last_week'"),
    ("{kind: comparison, metric: m, direction: above, against: previous_hour, unit: ms, "
     "warning: {ratio: 2, change: 10}, critical: {ratio: 3, change: 5}}",
     "rules.success_rate.critical: ratio and change must be at least the warning's"),
    ("{kind: composite, conditions: [{metric: a, op: '>', value: 1}, {metric: b, level: warning}]}",
     "rules.success_rate.conditions.1.metric: no threshold rule on metric 'b'"),
    ("{kind: composite, conditions: [{metric: a, op: '>'}, {metric: b, op: '<', value: 1}]}",
     "rules.success_rate.conditions.0: op and value go together"),
    ("{kind: budget, metric: total_tokens, unit: tokens, budget: 0}",
     "rules.success_rate.budget: Input should be greater than 0"),
])
def test_errors_name_file_rule_field_and_problem(tmp_path, rule, expected):
    path = write(tmp_path, f"rules:\n  success_rate: {rule}\n")
    with pytest.raises(ThresholdsConfigError) as err:
        load_thresholds(path, env=NO_ENV)
    assert expected in str(err.value)
    assert str(err.value).startswith("thresholds.yaml: ")


def test_file_level_problems(tmp_path):
    with pytest.raises(ThresholdsConfigError, match="nowhere.yaml: file not found"):
        load_thresholds(tmp_path / "nowhere.yaml", env=NO_ENV)
    with pytest.raises(ThresholdsConfigError, match="thresholds.yaml: not valid YAML"):
        load_thresholds(write(tmp_path, "rules: [unclosed"), env=NO_ENV)
    with pytest.raises(ThresholdsConfigError, match="rules: required field is missing"):
        load_thresholds(write(tmp_path, "version: 1\n"), env=NO_ENV)
    with pytest.raises(ThresholdsConfigError, match=r"defaults: .*unknown field\(s\) treshold"):
        load_thresholds(write(tmp_path, "defaults: {treshold: 1}\nrules: {}\n"),
                        env=NO_ENV)


def test_alternative_file_from_env(tmp_path):
    path = write(tmp_path, "rules:\n  only: {kind: threshold, metric: m, direction: above, "
                           "unit: ms, warning: 1}\n", name="mine.yaml")
    cfg = load_thresholds(env={"PROMPTOPS_THRESHOLDS_FILE": str(path)})
    assert list(cfg.rules) == ["only"]


def test_env_overrides_single_values_case_insensitively():
    env = {"PROMPTOPS_THRESHOLD__DAILY_TOKENS__BUDGET": "200000000",
           "PROMPTOPS_THRESHOLD__latency_mean_vs_last_week__warning__ratio": "2.5",
           "PROMPTOPS_THRESHOLD__success_rate__dimensions": "[overall, model]",
           "PROMPTOPS_THRESHOLD__relevance__enabled": "false"}
    cfg = load_thresholds(env=env)
    assert cfg.rules["daily_tokens"].budget == 200_000_000
    # The sibling field of the nested override is kept from the file.
    assert cfg.rules["latency_mean_vs_last_week"].warning.ratio == 2.5
    assert cfg.rules["latency_mean_vs_last_week"].warning.change == 300
    assert cfg.rules["success_rate"].dimensions == ["overall", "model"]
    assert "relevance" not in cfg.rules_for("hourly")


def test_override_errors_name_where_the_value_came_from():
    with pytest.raises(ThresholdsConfigError) as err:
        load_thresholds(env={"PROMPTOPS_THRESHOLD__success_rate__critical": "0.999"})
    assert str(err.value) == (
        "thresholds.yaml: rules.success_rate.critical: must be below warning (0.99) for "
        "direction 'below' (value from env PROMPTOPS_THRESHOLD__success_rate__critical)")
    with pytest.raises(ThresholdsConfigError,
                       match=r"rules.succes_rate: no such rule; known rules: .*success_rate"):
        load_thresholds(overrides={"succes_rate": {"warning": 0.9}}, env=NO_ENV)
    with pytest.raises(ThresholdsConfigError,
                       match="expected PROMPTOPS_THRESHOLD__<rule>__<field>"):
        load_thresholds(env={"PROMPTOPS_THRESHOLD__success_rate": "1"})


def test_airflow_variable_overrides_and_precedence(monkeypatch):
    # Variable.get reads AIRFLOW_VAR_* through Airflow's environment secrets backend: a real
    # Airflow lookup, no task needed.
    monkeypatch.setenv("AIRFLOW_VAR_PROMPTOPS_THRESHOLDS", json.dumps(
        {"daily_tokens": {"budget": 5e6, "min_hours": 6}, "success_rate": {"warning": 0.98}}))
    env = {"PROMPTOPS_THRESHOLD__daily_tokens__budget": "7000000"}
    cfg = load_thresholds(env=env, variable_overrides=threshold_overrides(),
                          overrides={"success_rate": {"warning": 0.97}})
    assert cfg.rules["daily_tokens"].min_hours == 6          # Variable
    assert cfg.rules["daily_tokens"].budget == 7_000_000     # env beats the Variable
    assert cfg.rules["success_rate"].warning == 0.97         # the argument beats both
    # The Variable counts only where the caller hands it in (the DAG tasks do).
    assert load_thresholds(env=NO_ENV).rules["daily_tokens"].budget is None
    assert thresholds().rules["daily_tokens"].min_hours == 6


def test_airflow_variable_that_is_not_json(monkeypatch):
    monkeypatch.setenv("AIRFLOW_VAR_PROMPTOPS_THRESHOLDS", "{daily_tokens: 1")
    with pytest.raises(ThresholdsConfigError, match="Airflow Variable promptops_thresholds: "
                                                    "not valid JSON"):
        threshold_overrides()


def test_default_path_is_the_shipped_file():
    assert DEFAULT_PATH.name == "thresholds.yaml" and DEFAULT_PATH.is_file()


def test_confidence_from_defaults_per_rule_and_env(tmp_path):
    path = write(tmp_path, """
defaults: {confidence: 0.99}
rules:
  a: {kind: threshold, metric: m, direction: above, unit: ms, warning: 1}
  b: {kind: threshold, metric: m, direction: above, unit: ms, warning: 1, confidence: 0.9}
  c: {kind: budget, metric: total_tokens, unit: tokens}
  d: {kind: comparison, metric: m, direction: above, against: previous_hour, unit: ms,
      warning: {ratio: 2, change: 1}}
""")
    cfg = load_thresholds(path, env={"PROMPTOPS_THRESHOLD__d__confidence": "0.975"})
    assert (cfg.rules["a"].confidence, cfg.rules["b"].confidence,
            cfg.rules["d"].confidence) == (0.99, 0.9, 0.975)
    assert cfg.rules["a"].use_bound  # on by default
    assert cfg.rules["c"].budget is None and "c" not in cfg.rules_for("hourly")
    with pytest.raises(ThresholdsConfigError, match=r"rules.a.confidence: .*less than 1"):
        load_thresholds(path, env={"PROMPTOPS_THRESHOLD__a__confidence": "1.5"})
