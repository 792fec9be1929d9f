"""The alert engine on a fake clock, posting through the real Slack hook to the real sink."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from promptops.alerts.silences import Silence
from tests.helpers.alerts import (
    T0,
    Clock,
    config,
    engine,
    finding,
    header,
    sink_messages,
)


def test_pending_then_firing_then_resolved(sink, lake):
    clock = Clock()
    f = finding(pending_for=3, annotations={"root_cause": "provider errors on gpt-4o"})
    for i in range(2):
        out = engine(lake).evaluate([f], clock.now, run_id=f"run-{i}")
        assert [a["status"] for a in out.pending] == ["pending"] and out.firing == []
        assert out.notifications == []
        clock.tick()
    out = engine(lake).evaluate([f], clock.now, run_id="run-2",
                                run_url="http://airflow.local/dags/promptops_hourly/runs/run-2")
    assert [a["fingerprint"] for a in out.firing] == [f.fingerprint]
    assert out.firing[0]["active_since"] == T0.isoformat()  # since when: the first hit
    assert [(n.status, n.reason, n.connection_id) for n in out.notifications] == \
        [("sent", "new", "slack_alerts")]
    msgs = sink_messages(sink)
    assert len(msgs) == 1 and "FIRING" in header(msgs[0]) and "CRITICAL" in header(msgs[0])
    text = json.dumps(msgs[0]["body"])
    assert "provider errors on gpt-4o" in text and f.fingerprint in text
    assert "http://airflow.local/dags/promptops_hourly/runs/run-2" in text

    out = engine(lake).evaluate([], clock.tick(), run_id="run-3")
    assert [a["fingerprint"] for a in out.resolved] == [f.fingerprint]
    assert [(n.status, n.reason) for n in out.notifications] == [("sent", "resolved")]
    msgs = sink_messages(sink)
    assert len(msgs) == 2 and "RESOLVED" in header(msgs[1])


def test_a_pending_alert_that_clears_posts_nothing(sink, lake):
    clock = Clock()
    f = finding(pending_for=2)
    engine(lake).evaluate([f], clock.now, run_id="a")
    out = engine(lake).evaluate([], clock.tick(), run_id="b")
    out2 = engine(lake).evaluate([f], clock.tick(), run_id="c")  # a new streak: pending again
    assert out.pending == [] and out.resolved == [] and len(out2.pending) == 1
    assert sink_messages(sink) == []


def test_flapping_input_posts_at_most_one_firing_and_one_resolved(sink, lake):
    clock = Clock()
    f = finding(pending_for=2, keep_firing_for=2)
    cfg = config(repeat_interval="2d")  # no repeats inside these 18 hours
    pattern = [1, 1, 0, 1, 0, 0, 1, 0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0]
    for i, present in enumerate(pattern):
        engine(lake, cfg).evaluate([f] if present else [], clock.now, run_id=f"run-{i}")
        clock.tick()
    headers = [header(m) for m in sink_messages(sink)]
    assert len(headers) == 2
    assert "FIRING" in headers[0] and "RESOLVED" in headers[1]


def test_flapping_below_pending_for_never_fires(sink, lake):
    clock = Clock()
    f = finding(pending_for=2)
    for i, present in enumerate([1, 0, 1, 0, 1, 0, 1]):
        engine(lake).evaluate([f] if present else [], clock.now, run_id=f"r{i}")
        clock.tick()
    assert sink_messages(sink) == []


def test_many_alerts_of_one_rule_are_one_message(sink, lake):
    findings = [finding(slice_=f"app-{i:02d}", dimension="app", severity="warning")
                for i in range(30)]
    findings.append(finding("latency_p95", "warning", metric="latency_p95_ms", value=9000,
                            threshold=5000))
    out = engine(lake).evaluate(findings, T0, run_id="r1")
    assert len(out.firing) == 31
    assert sorted(n.firing for n in out.notifications) == [1, 30]
    msgs = sink_messages(sink)
    assert len(msgs) == 2
    big = next(m for m in msgs if "30 firing" in header(m))
    assert len(big["body"]["blocks"]) <= 50
    assert "10 more" in json.dumps(big["body"])  # 20 shown one by one, the rest summarised


def test_repeat_interval(sink, lake):
    clock = Clock()
    cfg = config(repeat_interval="3h")
    f = finding()
    sent_at = []
    for i in range(8):
        out = engine(lake, cfg).evaluate([f], clock.now, run_id=f"r{i}")
        if out.sent:
            sent_at.append((i, out.sent[0].reason))
        clock.tick()
    assert sent_at == [(0, "new"), (3, "repeat"), (6, "repeat")]


def test_a_new_alert_in_a_firing_group_posts_the_whole_group(sink, lake):
    clock = Clock()
    a, b = finding(slice_="gpt-4o"), finding(slice_="llama-3-70b")
    engine(lake).evaluate([a], clock.now, run_id="r0")
    out = engine(lake).evaluate([a, b], clock.tick(), run_id="r1")
    assert [(n.reason, n.firing) for n in out.notifications] == [("new", 2)]
    out = engine(lake).evaluate([a, b], clock.tick(), run_id="r2")
    assert out.notifications == []  # nothing new, repeat not due
    out = engine(lake).evaluate([b], clock.tick(), run_id="r3")
    assert [(n.reason, n.firing, n.resolved) for n in out.notifications] == [("resolved", 1, 1)]
    assert len(sink_messages(sink)) == 3


def test_group_interval_batches_changes_but_not_the_first_message_or_the_all_clear(sink, lake):
    clock = Clock()
    cfg = config(group_interval="3h", repeat_interval="12h")
    a, b, c = (finding(slice_=s) for s in ("gpt-4o", "llama-3-70b", "claude-3-haiku"))
    sent = []
    # a fires; b and c join one and two hours later; all clear at hour 5.
    for i, now_firing in enumerate([[a], [a, b], [a, b, c], [a, b, c], [b, c], []]):
        out = engine(lake, cfg).evaluate(now_firing, clock.now, run_id=f"r{i}")
        sent += [(i, n.reason, n.firing, n.resolved) for n in out.sent]
        clock.tick()
    # Hour 0: the first message at once. Hours 1-2: joins wait for the group interval;
    # hour 3: one update with everything that joined. Hour 4: a resolve waits. Hour 5:
    # nothing left firing, so the all-clear goes out at once.
    assert sent == [(0, "new", 1, 0), (3, "new", 3, 0), (5, "resolved", 0, 3)]
    assert len(sink_messages(sink)) == 3


def test_api_down_inhibits_latency_of_the_same_service(sink, lake):
    down = finding("api_down", "critical", metric="availability", dimension="overall",
                   slice_="*", service="gateway")
    lat_same = finding("latency_p95", "warning", metric="latency_p95_ms", value=9000,
                       threshold=5000, service="gateway")
    lat_other = finding("latency_p95", "warning", metric="latency_p95_ms", slice_="llama",
                        value=9000, threshold=5000, service="batch")
    out = engine(lake).evaluate([down, lat_same, lat_other], T0, run_id="r1")
    muted = {a["fingerprint"]: a["muted_by"] for a in out.firing}
    assert muted[lat_same.fingerprint] == f"inhibit:api-down-mutes-latency:{down.fingerprint}"
    assert muted[lat_other.fingerprint] is None and muted[down.fingerprint] is None
    posted = json.dumps([m["body"] for m in sink_messages(sink)])
    assert lat_other.fingerprint in posted and down.fingerprint in posted
    assert lat_same.fingerprint not in posted

    # The API is back: the latency alert (still firing) is posted now, as new.
    out = engine(lake).evaluate([lat_same, lat_other], T0 + timedelta(hours=1), run_id="r2")
    reasons = {(n.reason, n.firing, n.resolved) for n in out.notifications}
    assert reasons == {("new", 2, 0), ("resolved", 0, 1)}


def test_critical_mutes_the_warning_of_the_same_rule_and_slice(sink, lake):
    crit = finding(severity="critical", value=0.7)
    warn = finding(severity="warning", value=0.7)
    warn_other_slice = finding(severity="warning", slice_="claude-3-haiku")
    out = engine(lake).evaluate([crit, warn, warn_other_slice], T0, run_id="r1")
    muted = {a["fingerprint"]: a["muted_by"] for a in out.firing}
    assert muted[warn.fingerprint].startswith("inhibit:critical-mutes-warning:")
    assert muted[warn_other_slice.fingerprint] is None
    assert crit.fingerprint != warn.fingerprint  # severity is part of the identity


def test_silence_mutes_until_it_expires(sink, lake):
    clock = Clock()
    f, other = finding(slice_="gpt-4o"), finding(slice_="llama-3-70b", rule="error_rate")
    silence = Silence.model_validate({
        "matchers": ['rule="success_rate"', 'slice=~"gpt-.*"'],
        "starts_at": "2026-11-20T12:00:00Z", "ends_at": "2026-11-20T15:00:00Z",
        "created_by": "oncall@example.com", "comment": "provider maintenance"})
    outs = []
    for i in range(4):  # 13:00, 14:00 silenced; 15:00 expired
        outs.append(engine(lake, silences=[silence]).evaluate([f, other], clock.now,
                                                               run_id=f"r{i}"))
        clock.tick()
    muted = {a["fingerprint"]: a["muted_by"] for a in outs[0].firing}
    assert muted == {f.fingerprint: f"silence:{silence.id}", other.fingerprint: None}
    posted = [json.dumps(m["body"]) for m in sink_messages(sink)]
    assert len(posted) == 2  # error_rate at 13:00; success_rate once the silence ended
    assert other.fingerprint in posted[0] and f.fingerprint not in posted[0]
    assert f.fingerprint in posted[1]
    assert [n.reason for n in outs[2].notifications] == ["new"]


def test_a_new_process_between_evaluations_posts_nothing_twice(sink, lake):
    clock = Clock()
    findings = [finding(slice_=s) for s in ("a", "b")]
    first = engine(lake).evaluate(findings, clock.now, run_id="r0")
    assert len(first.sent) == 1
    rerun = engine(lake).evaluate(findings, clock.now, run_id="r0-retry")  # Airflow retry
    assert rerun.replay == "same" and rerun.sent[0].notification_id == first.sent[0].notification_id
    later = engine(lake).evaluate(findings, clock.tick(), run_id="r1")
    assert later.notifications == [] and later.replay is None
    old = engine(lake).evaluate([], T0 - timedelta(hours=5), run_id="backfill")
    assert old.replay == "gap" and old.notifications == [] and old.firing == []
    assert len(sink_messages(sink)) == 1
    # The backfill of "nothing firing" (a gap in the history) did not resolve anything.
    assert len(engine(lake).evaluate(findings, clock.tick(), run_id="r2").firing) == 2
    assert len(sink_messages(sink)) == 1


def test_send_resolved_false(sink, lake):
    cfg = config(send_resolved=False)
    engine(lake, cfg).evaluate([finding()], T0, run_id="r0")
    out = engine(lake, cfg).evaluate([], T0 + timedelta(hours=1), run_id="r1")
    assert len(out.resolved) == 1 and out.notifications == []
    assert len(sink_messages(sink)) == 1


def test_severity_routing_prefers_the_critical_connection_when_it_exists(
        sink, lake, monkeypatch):
    from tests.helpers.alerts import slack_connection

    monkeypatch.setenv("AIRFLOW_CONN_SLACK_ALERTS_CRITICAL",
                       slack_connection(sink + "/services/CRITICAL/ONCALL/pager00token"))
    out = engine(lake).evaluate([finding(severity="critical", rule="a"),
                                 finding(severity="warning", rule="b")], T0, run_id="r")
    by_rule = {n.group_labels["rule"]: n.connection_id for n in out.notifications}
    assert by_rule == {"a": "slack_alerts_critical", "b": "slack_alerts"}
    paths = {m["path"] for m in sink_messages(sink)}
    assert "/services/CRITICAL/ONCALL/pager00token" in paths and len(paths) == 2


def test_heal_requests_and_json_outcome(sink, lake):
    heal = finding(rule="abuse_calls_per_minute", annotations={"heal_playbook": "rate_limit"},
                   user="user-042")
    plain = finding(rule="cost_budget")
    out = engine(lake).evaluate([heal, plain], T0, run_id="r")
    assert [(h["rule"], h["playbook"], h["newly_fired"], h["stale"], h["evaluated_at"])
            for h in out.heal_requests] == \
        [("abuse_calls_per_minute", "rate_limit", True, False, T0.isoformat())]
    data = json.loads(json.dumps(out.as_dict()))  # JSON-safe for XCom
    assert data["evaluated_at"] == T0.isoformat() and len(data["notifications"]) == 2
    again = engine(lake).evaluate([heal, plain], T0 + timedelta(hours=1), run_id="r2")
    assert again.heal_requests[0]["newly_fired"] is False


def test_alert_log_one_partition_per_hour_and_reruns_replace(sink, lake):
    from promptops.alerts.store import AlertStore
    from promptops.lake.store import Lake

    clock = Clock(step=timedelta(minutes=30))  # two evaluations per hour
    f = finding()
    engine(lake).evaluate([f], clock.now, run_id="r0")
    engine(lake).evaluate([f], clock.tick(), run_id="r1")
    engine(lake).evaluate([f], clock.now, run_id="r1-rerun")  # replay: no new rows
    engine(lake).evaluate([], clock.tick(), run_id="r2")
    store = AlertStore(Lake(lake), "hourly")
    log = store.read_alert_log(T0, T0 + timedelta(hours=2)).to_pylist()
    assert [(r["evaluated_at"].strftime("%H:%M"), r["event"], r["delivery"]) for r in log] == \
        [("13:00", "fired", "sent"), ("13:30", "firing", "not_due"), ("14:00", "resolved", "sent")]
    assert json.loads(log[0]["labels"])["metric"] == "success_rate"
    assert log[0]["rule"] == "success_rate" and log[0]["connection_id"] == "slack_alerts"
    assert Lake(lake).list_partitions("alert_log/scope=hourly") == [T0, T0 + timedelta(hours=1)]


def test_naive_evaluation_time_is_refused(sink, lake):
    with pytest.raises(ValueError, match="aware datetime"):
        engine(lake).evaluate([], datetime(2026, 11, 20, 13), run_id="r")  # noqa: DTZ001
    assert datetime.now(UTC)  # the engine never needed wall-clock to get here


def test_a_resolved_message_that_failed_is_sent_at_the_next_evaluation(sink, lake):
    from tests.helpers.alerts import set_faults

    clock = Clock()
    f = finding(pending_for=2)
    engine(lake).evaluate([f], clock.now, run_id="r0")
    assert len(engine(lake).evaluate([f], clock.tick(), run_id="r1").sent) == 1
    set_faults(sink, {"mode": "invalid_webhook", "count": 1})
    out = engine(lake).evaluate([], clock.tick(), run_id="r2")
    assert [(n.reason, n.status) for n in out.notifications] == [("resolved", "failed")]
    # The condition is back (pending again, not firing): Slack still has to hear it resolved.
    out = engine(lake).evaluate([f], clock.tick(), run_id="r3")
    assert [(n.reason, n.status) for n in out.notifications] == [("resolved", "sent")]
    assert len(out.pending) == 1
    msgs = sink_messages(sink)
    assert [header(m).split(" · ")[0] for m in msgs] == [":red_circle: FIRING",
                                                         ":white_check_mark: RESOLVED"]
    assert f.fingerprint in json.dumps(msgs[1]["body"])


def test_shipped_config_raises_an_unpriced_model_once(sink, lake):
    from promptops.alerts.config import load_alerting_config

    cfg = load_alerting_config()
    cfg = cfg.model_copy(update={"silences_file": None, "silences_variable": ""})
    clock = Clock()
    unpriced = finding("unpriced_model", "warning", slice_="my-new-model",
                       metric="unpriced_requests", value=120, threshold=0)
    sent = []
    for i in range(30):  # more than a day of hourly runs with the model still unpriced
        out = engine(lake, cfg).evaluate([unpriced], clock.now, run_id=f"r{i}")
        sent += [n.reason for n in out.sent]
        clock.tick()
    assert sent == ["new"]
    out = engine(lake, cfg).evaluate([], clock.now, run_id="priced")  # the model got a price
    assert [n.reason for n in out.sent] == ["resolved"]


def _shipped_config():
    from promptops.alerts.config import load_alerting_config

    return load_alerting_config().model_copy(update={"silences_file": None,
                                                     "silences_variable": ""})


def _abuse(rule: str, severity: str, user: str = "u0127"):
    metric = "peak_calls_per_minute" if rule.startswith("abusive") else "tokens_per_minute_peak"
    return finding(rule, severity, dimension="user", slice_=user, metric=metric, value=450,
                   threshold=100, user=user)


def test_a_warning_source_never_mutes_a_critical_target(sink, lake):
    """Issue 11 §5: a warning abusive_caller_5m muted a critical token_burst_5m of the same
    user under the shipped abusive-caller-mutes-token-burst rule, so the page never went out."""
    calls, tokens = _abuse("abusive_caller_5m", "warning"), _abuse("token_burst_5m", "critical")
    out = engine(lake, _shipped_config(), scope="health").evaluate([calls, tokens], T0,
                                                                   run_id="h1")
    assert {a["fingerprint"]: a["muted_by"] for a in out.firing} == \
        {calls.fingerprint: None, tokens.fingerprint: None}
    posted = json.dumps([m["body"] for m in sink_messages(sink)])
    assert tokens.fingerprint in posted and calls.fingerprint in posted


@pytest.mark.parametrize("source_severity", ["critical", "warning"])
def test_a_source_at_least_as_severe_still_mutes(sink, lake, source_severity):
    calls = _abuse("abusive_caller_5m", source_severity)
    tokens = _abuse("token_burst_5m", "warning")
    other_user = _abuse("token_burst_5m", "warning", user="svc-batch-01")
    out = engine(lake, _shipped_config(), scope="health").evaluate(
        [calls, tokens, other_user], T0, run_id="h1")
    muted = {a["fingerprint"]: a["muted_by"] for a in out.firing}
    assert muted[tokens.fingerprint] == \
        f"inhibit:abusive-caller-mutes-token-burst:{calls.fingerprint}"
    assert muted[other_user.fingerprint] is None and muted[calls.fingerprint] is None
    assert tokens.fingerprint not in json.dumps([m["body"] for m in sink_messages(sink)])


def test_a_rule_that_opts_in_lets_a_milder_source_mute(sink, lake):
    cfg = config(inhibit_rules=[{
        "name": "maintenance-mutes-everything", "source_matchers": ['rule="maintenance"'],
        "target_matchers": ['rule!="maintenance"'], "equal": ["service"],
        "allow_less_severe_source": True}])
    window = finding("maintenance", "info", dimension="overall", slice_="*", service="gateway")
    crit = finding(severity="critical", service="gateway")
    out = engine(lake, cfg).evaluate([window, crit], T0, run_id="r1")
    muted = {a["fingerprint"]: a["muted_by"] for a in out.firing}
    assert muted[crit.fingerprint] == \
        f"inhibit:maintenance-mutes-everything:{window.fingerprint}"
