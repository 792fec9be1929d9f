"""The alerting config: the shipped file, matchers, durations and errors that name the key."""

from __future__ import annotations

from datetime import timedelta

import pytest

from promptops.alerts.config import (
    DEFAULT_CONFIG_PATH,
    AlertingConfigError,
    Matcher,
    load_alerting_config,
    parse_alerting_config,
)


def test_shipped_config():
    cfg = load_alerting_config()
    assert cfg.repeat_interval == timedelta(hours=4) and cfg.send_resolved
    assert cfg.silences_file == DEFAULT_CONFIG_PATH.parent / "silences.yaml"
    assert cfg.route_for({"severity": "critical"})[1].connections == \
        ["slack_alerts_critical", "slack_alerts"]
    assert cfg.route_for({"severity": "warning"})[1].connections == ["slack_alerts"]
    assert cfg.route_for({"severity": "info"}) [1].connections == ["slack_alerts"]
    rules = {r.name: r for r in cfg.inhibit_rules}
    api = rules["api-down-mutes-latency"]
    assert api.equal == ["service"]
    assert all(m.matches({"rule": "api_unavailable"}) for m in api.source_matchers)
    assert all(m.matches({"metric": "latency_p95_ms"}) for m in api.target_matchers)
    assert not any(m.matches({"metric": "success_rate"}) for m in api.target_matchers)
    assert rules["critical-mutes-warning"].equal == ["rule", "metric", "dimension", "slice"]
    # Only the rule whose two sides measure the same calls lets a warning mute a critical.
    assert [n for n, r in rules.items() if r.allow_less_severe_source] == \
        ["success-rate-mutes-error-jump"]
    assert not rules["abusive-caller-mutes-token-burst"].may_mute("warning", "critical")


@pytest.mark.parametrize(("text", "labels", "expected"), [
    ('rule="api_down"', {"rule": "api_down"}, True),
    ("rule=api_down", {"rule": "api_down"}, True),
    ('rule!="api_down"', {"rule": "api_down"}, False),
    ('metric=~"latency.*"', {"metric": "latency_p99_ms"}, True),
    ('metric=~"latency"', {"metric": "latency_p99_ms"}, False),  # anchored, as Alertmanager
    ('metric!~"latency.*"', {"metric": "cost_usd"}, True),
    ('service=""', {}, True),  # a missing label is the empty string
    ('summary="say \\"hi\\""', {"summary": 'say "hi"'}, True),
])
def test_matchers(text, labels, expected):
    assert Matcher.model_validate(text).matches(labels) is expected


def test_api_form_matcher_and_round_trip():
    m = Matcher.model_validate({"name": "model", "value": "claude-.*", "isRegex": True})
    assert str(m) == 'model=~"claude-.*"' and Matcher.model_validate(str(m)) == m


@pytest.mark.parametrize(("value", "expected"), [
    ("4h", timedelta(hours=4)), ("1h30m", timedelta(minutes=90)), ("2d", timedelta(days=2)),
    (90, timedelta(seconds=90)), ("PT4H", timedelta(hours=4))])
def test_durations(value, expected):
    assert parse_alerting_config({"repeat_interval": value}).repeat_interval == expected


def test_errors_name_the_file_and_every_key(tmp_path):
    path = tmp_path / "alerting.yaml"
    path.write_text("""
repeat_interval: 4 hours
routes:
  - matchers: ['severity>"critical"']
    connections: []
inhibit_rules:
  - source_matchers: ['rule=~"("']
    target_matchers: ['metric="x"']
surprise: 1
""")
    with pytest.raises(AlertingConfigError) as err:
        load_alerting_config(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ")
    for part in ("repeat_interval: '4 hours' is not a duration",
                 "routes.0.matchers.0: 'severity>\"critical\"' is not a matcher",
                 "inhibit_rules.0.source_matchers.0", "invalid regex",
                 "surprise: Extra inputs are not permitted"):
        assert part in msg


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(AlertingConfigError, match="cannot read the alerting config"):
        load_alerting_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("group_by: [rule\n")
    with pytest.raises(AlertingConfigError, match="bad.yaml: not valid YAML"):
        load_alerting_config(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(AlertingConfigError, match="must be a YAML mapping"):
        load_alerting_config(bad)


def _inhibit(**rule):
    return {"inhibit_rules": [{"name": "the-rule", "equal": ["slice"], **rule}]}


def test_a_rule_that_can_only_mute_a_more_severe_alert_is_refused():
    with pytest.raises(AlertingConfigError) as err:
        parse_alerting_config(_inhibit(source_matchers=['severity="warning"'],
                                       target_matchers=['severity=~"critical"']))
    msg = str(err.value)
    assert "inhibit_rules.0" in msg and "'the-rule'" in msg
    assert "less severe" in msg and "allow_less_severe_source: true" in msg


def test_a_rule_may_opt_in_to_a_less_severe_source():
    cfg = parse_alerting_config(_inhibit(source_matchers=['severity="info"'],
                                         target_matchers=['severity!="info"'],
                                         allow_less_severe_source=True))
    assert cfg.inhibit_rules[0].allow_less_severe_source
    # Without severity matchers a rule can pair equals, so it needs no opt-in.
    cfg = parse_alerting_config(_inhibit(source_matchers=['rule="a"'],
                                         target_matchers=['rule="b"']))
    assert cfg.inhibit_rules[0].allow_less_severe_source is False


@pytest.mark.parametrize(("matchers", "problem"), [
    (['severity="urgent"'], "unknown severity 'urgent'"),
    (['severity!="sev1"'], "unknown severity 'sev1'"),
    (['severity=~"crit"'], 'matches no severity'),  # anchored: "crit" is not "critical"
    (['severity="warning"', 'severity="critical"'], "matches no severity"),
])
def test_unknown_severities_are_refused(matchers, problem):
    with pytest.raises(AlertingConfigError) as err:
        parse_alerting_config(_inhibit(source_matchers=matchers, target_matchers=['rule="b"']))
    msg = str(err.value)
    assert "inhibit_rules.0" in msg and problem in msg
    assert "info, warning, critical" in msg
    with pytest.raises(AlertingConfigError, match=f"routes.0.*{problem}"):
        parse_alerting_config({"routes": [{"matchers": matchers, "connections": ["x"]}]})


def test_incident_settings_are_checked_with_the_key_named():
    from promptops.alerts.config import AlertingConfigError, parse_alerting_config

    cfg = parse_alerting_config({"incidents": {"min_message_interval": "30m",
                                               "standalone_rules": ["unpriced_model"]}})
    assert cfg.grouping == "incidents" and cfg.incidents.standalone_rules == ["unpriced_model"]
    with pytest.raises(AlertingConfigError, match="grouping"):
        parse_alerting_config({"grouping": "by_rule"})
    with pytest.raises(AlertingConfigError, match="incidents.min_message_interval"):
        parse_alerting_config({"incidents": {"min_message_interval": "soon"}})


def test_a_route_may_match_a_rule_and_a_severity():
    from promptops.alerts.config import parse_alerting_config

    cfg = parse_alerting_config({"routes": [
        {"matchers": ['rule="budget"', 'severity="critical"'], "connections": ["page"]}]})
    assert cfg.route_for({"rule": "budget", "severity": "critical"})[0] == 0
    assert cfg.route_for({"rule": "budget", "severity": "warning"})[0] == -1
