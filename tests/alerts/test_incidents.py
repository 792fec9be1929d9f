"""Findings become incidents: one incident, one message, through the real Slack sink."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import pytest

from promptops.alerts.incidents import correlation_key, parse_key, primary_cause, related
from promptops.alerts.silences import Silence
from promptops.alerts.state import AlertRecord
from promptops.alerts.store import AlertStore
from promptops.lake.store import Lake
from tests.helpers.alerts import T0, Clock, config, engine, finding, header, sink_messages

FIVE_MIN = timedelta(minutes=5)


def incident_config(**overrides):
    return config(**{"grouping": "incidents", "group_interval": "1h",
                     "repeat_interval": "4h", **overrides})


def burst(severity: str = "critical", *, app_latency: bool = False) -> list:
    """An error burst on one model as the hourly rules see it: its success rate, error
    rate and latency, and the overall and per-app slices it drags along (their root cause
    is the model)."""
    on_model = {"root_cause_set": "model=gpt-4o"}
    out = [
        finding("success_rate", severity, value=0.8, threshold=0.99),
        finding("error_rate_vs_previous_hour", "warning", value=0.2, threshold=0.05),
        finding("latency_p95", "warning", metric="latency_p95_ms", value=9000,
                threshold=5000, annotations=on_model),
        finding("success_rate", "warning", dimension="overall", slice_="*", value=0.95,
                threshold=0.99, annotations=on_model),
        finding("success_rate", "warning", dimension="app", slice_="chat", value=0.9,
                threshold=0.99, annotations={"root_cause_set": "app=chat&model=gpt-4o"}),
    ]
    if app_latency:
        out.append(finding("latency_p95", "warning", dimension="app", slice_="search",
                           metric="latency_p95_ms", value=9000, threshold=5000,
                           annotations={"root_cause_set": "app=search&model=gpt-4o"}))
    return out


def reasons(out) -> list[str]:
    return [n.reason for n in out.notifications]


def test_keys_relate_by_subset_and_cause_joins_the_slice():
    assert related(parse_key("model=gpt-4o"), parse_key("app=chat&model=gpt-4o"))
    assert not related(parse_key("model=gpt-4o"), parse_key("app=chat"))
    assert not related(frozenset(), parse_key("model=gpt-4o"))  # overall relates to nothing
    rec = AlertRecord.start(finding(dimension="app", slice_="chat", annotations={
        "root_cause_set": "model=gpt-4o;region=eu"}), T0)
    assert correlation_key(rec) == parse_key("app=chat&model=gpt-4o")
    # A cause naming another value of the slice's own dimension is not this slice's cause.
    rec = AlertRecord.start(finding(slice_="llama", annotations={
        "root_cause_set": "model=gpt-4o"}), T0)
    assert correlation_key(rec) == parse_key("model=llama")
    assert primary_cause(["app=chat&model=gpt-4o", "model=gpt-4o"]) == "model=gpt-4o"


def test_an_error_burst_on_one_model_is_one_incident_and_one_message(sink, lake):
    cfg = incident_config()
    out = engine(lake, cfg).evaluate(burst(), T0, run_id="r0")
    assert len(out.firing) == 5
    assert len({a["incident_id"] for a in out.firing}) == 1
    assert [(n.reason, n.firing, n.status) for n in out.notifications] == [("new", 5, "sent")]
    msgs = sink_messages(sink)
    assert len(msgs) == 1
    top = header(msgs[0])
    assert "INCIDENT" in top and "CRITICAL" in top and "model=gpt-4o" in top
    body = json.dumps(msgs[0]["body"])
    for rule in ("success_rate", "error_rate_vs_previous_hour", "latency_p95"):
        assert rule in body
    # The next evaluation with the same findings says nothing.
    out = engine(lake, cfg).evaluate(burst(), T0 + timedelta(hours=1), run_id="r1")
    assert out.notifications == [] and len(sink_messages(sink)) == 1


def test_severity_rise_scope_change_and_all_clear_on_five_minute_evaluations(sink, lake):
    cfg = incident_config()
    clock = Clock(step=FIVE_MIN)
    first = burst("warning")  # all warnings: the warning route
    assert reasons(engine(lake, cfg).evaluate(first, clock.now, run_id="r0")) == ["new"]
    # The model's success rate turns critical: the incident escalates. Its first message on
    # the critical route goes out at once, as an update of the same incident.
    out = engine(lake, cfg).evaluate(burst("critical"), clock.tick(), run_id="r1")
    assert reasons(out) == ["update"] and out.notifications[0].incident_id is not None
    assert "CRITICAL" in header(sink_messages(sink)[-1])
    # A new slice joins 5 minutes later: an update, but it waits for group_interval (1h).
    sent = []
    for i in range(2, 16):
        out = engine(lake, cfg).evaluate(burst("critical", app_latency=True), clock.tick(),
                                         run_id=f"r{i}")
        sent += [(i, r) for r in reasons(out)]
    assert sent == [(13, "update")]  # 60 minutes after the escalation
    assert len({a["incident_id"] for a in out.firing}) == 1
    # All clear: one resolved message (after the hourly floor of its route).
    sent = []
    for i in range(16, 40):
        out = engine(lake, cfg).evaluate([], clock.tick(), run_id=f"r{i}")
        sent += [(i, r) for r in reasons(out)]
    assert [r for _, r in sent] == ["resolved"]
    assert "RESOLVED" in header(sink_messages(sink)[-1])
    assert len(sink_messages(sink)) == 4


def test_at_most_one_message_per_incident_per_route_per_hour(sink, lake):
    """Findings that flap every 5 minutes never make more than one message an hour."""
    cfg = incident_config(group_interval="0s", repeat_interval="1h")
    clock = Clock(step=FIVE_MIN)
    times = []
    for i in range(48):
        findings = burst("warning", app_latency=bool(i % 2))[: 3 + i % 3]
        out = engine(lake, cfg).evaluate(findings, clock.now, run_id=f"r{i}")
        times += [(clock.now, n.connection_id) for n in out.sent]
        clock.tick()
    assert times
    for (a, ca), (b, cb) in zip(times, times[1:], strict=False):
        assert ca != cb or b - a >= timedelta(hours=1)


def test_two_unrelated_causes_are_two_incidents(sink, lake):
    # The model's own slice is its cause (the whole slice moved alike, as the root-cause
    # localisation says then).
    whole = {"root_cause_set": "model=gpt-4o"}
    findings = [finding(slice_="gpt-4o", annotations=whole),
                finding("latency_p95", "warning", slice_="gpt-4o", annotations=whole),
                finding(dimension="region", slice_="eu-west-1"),
                finding("latency_p95", "warning", dimension="region", slice_="eu-west-1",
                        annotations={"root_cause_set": "region=eu-west-1"})]
    out = engine(lake, incident_config()).evaluate(findings, T0, run_id="r0")
    assert sorted((n.reason, n.firing) for n in out.notifications) == [("new", 2), ("new", 2)]
    assert len({a["incident_id"] for a in out.firing}) == 2
    assert len(sink_messages(sink)) == 2


def test_an_overall_finding_without_cause_joins_the_only_incident(sink, lake):
    findings = [finding(slice_="gpt-4o"), finding(dimension="overall", slice_="*")]
    out = engine(lake, incident_config()).evaluate(findings, T0, run_id="r0")
    assert reasons(out) == ["new"] and out.notifications[0].firing == 2
    # With two incidents it cannot know which one: it opens its own.
    findings += [finding(dimension="region", slice_="eu-west-1")]
    out = engine(lake, incident_config()).evaluate(findings, T0 + timedelta(hours=1),
                                                   run_id="r1")
    assert reasons(out) == ["new"]  # region opens its own; the overall one stays put


def test_a_later_finding_joins_the_open_incident_as_an_update_not_a_page(sink, lake):
    cfg = incident_config()
    first = [finding("success_rate", "critical", slice_="gpt-4o")]
    engine(lake, cfg).evaluate(first, T0, run_id="r0")
    later = [*first, finding("latency_p95", "critical", dimension="app", slice_="chat",
                             annotations={"root_cause_set": "app=chat&model=gpt-4o"})]
    out = engine(lake, cfg).evaluate(later, T0 + timedelta(hours=1), run_id="r1")
    assert reasons(out) == ["update"]
    assert len({a["incident_id"] for a in out.firing}) == 1


def test_a_silenced_member_does_not_count(sink, lake):
    cfg = incident_config()
    silence = Silence.model_validate({
        "id": "mute-app", "matchers": ['dimension="app"'], "comment": "known",
        "created_by": "oncall", "starts_at": T0 - timedelta(hours=1),
        "ends_at": T0 + timedelta(days=1)})
    out = engine(lake, cfg, silences=[silence]).evaluate(burst(), T0, run_id="r0")
    assert [(n.reason, n.firing) for n in out.notifications] == [("new", 4)]
    muted = [a for a in out.firing if a["muted_by"]]
    assert len(muted) == 1 and muted[0]["incident_id"] == out.notifications[0].incident_id


def test_a_rerun_and_a_second_engine_never_post_twice(sink, lake):
    cfg = incident_config()
    engine(lake, cfg).evaluate(burst(), T0, run_id="r0")
    again = engine(lake, cfg).evaluate(burst(), T0, run_id="r0-retry")
    assert again.replay == "same" and [n.status for n in again.notifications] == ["sent"]
    assert len(sink_messages(sink)) == 1


def test_a_failed_delivery_is_retried_by_the_next_evaluation(sink, lake):
    from tests.helpers.alerts import set_faults

    cfg = incident_config()
    set_faults(sink, {"mode": "server_error", "count": 10})
    out = engine(lake, cfg, max_retries=0).evaluate(burst(), T0, run_id="r0")
    assert [n.status for n in out.notifications] == ["failed"]
    requests_cleared = __import__("requests").delete(sink + "/_faults", timeout=5)
    assert requests_cleared.ok
    out = engine(lake, cfg).evaluate(burst(), T0 + timedelta(hours=1), run_id="r1")
    assert [(n.reason, n.status) for n in out.notifications] == [("new", "sent")]
    assert len(sink_messages(sink)) == 1


def test_the_alert_log_keeps_the_incident_and_its_members(sink, lake):
    cfg = incident_config()
    engine(lake, cfg).evaluate(burst(), T0, run_id="r0")
    engine(lake, cfg).evaluate([], T0 + timedelta(hours=1), run_id="r1")
    table = AlertStore(Lake(lake), "hourly").read_alert_log(T0, T0 + timedelta(hours=2))
    rows = table.to_pylist()
    incident_rows = [r for r in rows if r["kind"] == "incident"]
    assert [r["event"] for r in incident_rows] == ["opened", "resolved"]
    iid = incident_rows[0]["incident_id"]
    members = json.loads(incident_rows[0]["labels"])["members"].split(",")
    assert len(members) == 5 and json.loads(incident_rows[0]["labels"])["cause"] == \
        "model=gpt-4o"
    member_rows = [r for r in rows if r["kind"] != "incident"]
    assert {r["incident_id"] for r in member_rows} == {iid}
    assert {r["fingerprint"] for r in member_rows} == set(members)
    assert incident_rows[0]["delivery"] == "sent"


@pytest.mark.parametrize("grouping", ["incidents"])
def test_the_shipped_config_groups_by_incident(grouping):
    from promptops.alerts.config import load_alerting_config

    cfg = load_alerting_config()
    assert cfg.grouping == grouping
    assert cfg.incidents.min_message_interval >= timedelta(hours=1)


def test_a_backfill_completing_a_streak_opens_the_incident_once(sink, lake):
    """The latest hour saw the burst once (pending); the backfilled hour before completes
    its streak: the incident opens and is posted once, and the next live hour is quiet."""
    cfg = incident_config()
    slow = [replace(f, pending_for=2) for f in burst()]
    latest = T0 + timedelta(hours=6)
    assert engine(lake, cfg).evaluate(slow, latest, run_id="live").notifications == []
    gap = engine(lake, cfg).evaluate(slow, latest - timedelta(hours=1), run_id="backfill")
    assert gap.replay == "gap"
    assert [(n.reason, n.status, n.firing) for n in gap.notifications] == \
        [("new", "sent", 5)]
    assert gap.notifications[0].incident_id is not None
    live = engine(lake, cfg).evaluate(slow, latest + timedelta(hours=1), run_id="next")
    assert live.notifications == []
    assert {a["incident_id"] for a in live.firing} == {gap.notifications[0].incident_id}
    assert len(sink_messages(sink)) == 1


def _notification(firing, resolved=(), reason="new"):
    from promptops.alerts.engine import Notification

    return Notification(id="n1", scope="hourly", group_key="incident:abc",
                        group_labels={"incident": "abc"}, reason=reason,
                        connections=["slack_alerts"], evaluated_at=T0, run_id="r1",
                        run_url=None, firing=list(firing), resolved=list(resolved),
                        incident_id="abc", cause="model=gpt-4o", opened_at=T0.isoformat())


def _view(f, **more):
    return {**AlertRecord.start(f, T0).view(), **more}


def test_an_incident_message_has_one_line_per_metric_and_fits_slack():
    from promptops.alerts.slack import MAX_BLOCKS, render_message

    members = [_view(f) for f in burst()]
    members[0]["annotations"] = {**members[0]["annotations"], "calls": "58",
                                 "root_cause": "errors on model=gpt-4o (calls 58 vs 60)"}
    msg = render_message(_notification(members))
    top = msg["blocks"][0]["text"]["text"]
    assert "CRITICAL" in top and "model=gpt-4o" in top and "5 metrics" in top
    assert msg["text"].startswith("[FIRING:5] critical incident model=gpt-4o")
    body = json.dumps(msg["blocks"])
    assert "58 calls" in body and "Likely root cause" in body
    assert body.count("success_rate*") == 3  # model, overall and app lines
    # Many members still fit Slack's limits; the rest are counted.
    many = [_view(finding(slice_=f"m{i}")) for i in range(60)]
    msg = render_message(_notification(many), max_alerts=20)
    assert len(msg["blocks"]) <= MAX_BLOCKS and "40 more" in json.dumps(msg["blocks"])
    # The all-clear: RESOLVED, every metric marked recovered.
    msg = render_message(_notification([], members, reason="resolved"))
    assert msg["text"].startswith("[RESOLVED:5]")
    assert "RESOLVED" in msg["blocks"][0]["text"]["text"]
    assert json.dumps(msg["blocks"]).count("\\u00b7 recovered") == 5


def test_switching_from_label_groups_posts_what_fires_once_as_incidents(sink, lake):
    engine(lake, config()).evaluate(burst(), T0, run_id="labels")  # grouping: labels
    before = len(sink_messages(sink))
    out = engine(lake, incident_config()).evaluate(burst(), T0 + timedelta(hours=1),
                                                   run_id="incidents")
    assert [(n.reason, n.firing) for n in out.notifications] == [("new", 5)]
    out = engine(lake, incident_config()).evaluate(burst(), T0 + timedelta(hours=2),
                                                   run_id="incidents-2")
    assert out.notifications == [] and len(sink_messages(sink)) == before + 1


def test_health_findings_of_one_caller_or_of_the_api_are_one_incident_each(sink, lake):
    cfg = incident_config()
    caller = [finding("abusive_caller_5m", "critical", dimension="user", slice_="u042"),
              finding("token_burst_5m", "critical", dimension="user", slice_="u042")]
    api = [finding("api_down", "critical", dimension="overall", slice_="*"),
           finding("api_success_rate_5m", "warning", dimension="overall", slice_="*")]
    out = engine(lake, cfg, scope="health").evaluate(caller + api, T0, run_id="h0")
    assert sorted(n.firing for n in out.notifications) == [2, 2]
    assert len({a["incident_id"] for a in out.firing}) == 2


def test_a_page_is_the_first_critical_message_of_an_incident_on_its_route(sink, lake):
    """What a pager counts: ``first_on_route`` marks the opening and an escalation."""
    from promptops.alerts.engine import Notification

    seen: list[Notification] = []

    class Spy:
        def deliver(self, n):
            from promptops.alerts.engine import Delivery

            seen.append(n)
            return Delivery(ok=True, connection_id="spy")

    from promptops.alerts.engine import AlertEngine

    cfg = incident_config()
    eng = AlertEngine(cfg, AlertStore(Lake(lake), "hourly"), Spy(), silences=[])
    clock = Clock()
    eng.evaluate(burst("warning"), clock.now, run_id="r0")
    eng.evaluate(burst("critical"), clock.tick(), run_id="r1")
    eng.evaluate(burst("critical", app_latency=True), clock.tick(5), run_id="r2")
    eng.evaluate([], clock.tick(), run_id="r3")
    assert [(n.reason, n.severity, n.first_on_route) for n in seen] == [
        ("new", "warning", True), ("update", "critical", True),
        ("update", "critical", False), ("resolved", "critical", False)]
    pages = [n for n in seen if n.severity == "critical" and n.first_on_route]
    assert len(pages) == 1


def test_an_old_overall_incident_does_not_absorb_a_new_outage(sink, lake):
    cfg = incident_config()
    budget = finding("daily_tokens", "warning", dimension="overall", slice_="*")
    clock = Clock()
    engine(lake, cfg).evaluate([budget], clock.now, run_id="r0")
    down = finding("api_down", "critical", dimension="overall", slice_="*")
    out = engine(lake, cfg).evaluate([budget, down], clock.tick(6), run_id="r1")
    assert [(n.reason, n.firing) for n in out.notifications if n.reason != "repeat"] == \
        [("new", 1)]
    assert len({a["incident_id"] for a in out.firing}) == 2


def test_a_member_whose_cause_wanders_does_not_pull_other_incidents_in(sink, lake):
    """An overall budget alert open for days, whose hourly root cause annotation names a
    different slice each hour, must not absorb an unrelated burst on that slice."""
    cfg = incident_config()
    clock = Clock()
    budget = finding("daily_tokens", "critical", dimension="overall", slice_="*")
    engine(lake, cfg).evaluate([budget], clock.now, run_id="r0")
    wandered = replace(budget, annotations={**budget.annotations,
                                            "root_cause_set": "model=gpt-4o"})
    engine(lake, cfg).evaluate([wandered], clock.tick(), run_id="r1")
    out = engine(lake, cfg).evaluate([wandered, *burst()], clock.tick(), run_id="r2")
    assert [(n.reason, n.firing) for n in out.notifications] == [("new", 5)]
    assert len({a["incident_id"] for a in out.firing}) == 2


def test_a_platform_wide_outage_is_one_incident_and_one_model_is_its_own(sink, lake):
    """Every model and app failing with the overall rate (no cause narrower than the
    whole): one incident. One model failing with the overall rate: that model's incident."""
    cfg = incident_config()
    everywhere = [finding(dimension="overall", slice_="*")]
    everywhere += [finding(slice_=m) for m in ("gpt-4o", "claude", "llama")]
    everywhere += [finding(dimension="app", slice_=a) for a in ("chat", "search")]
    out = engine(lake, cfg).evaluate(everywhere, T0, run_id="r0")
    assert [(n.reason, n.firing) for n in out.notifications] == [("new", 6)]
    assert "overall" in header(sink_messages(sink)[-1])
    # An hour later one more slice fails: it joins the outage, not a page of its own.
    out = engine(lake, cfg).evaluate([*everywhere, finding(dimension="region", slice_="eu")],
                                     T0 + timedelta(hours=1), run_id="r1")
    assert len({a["incident_id"] for a in out.firing}) == 1
    assert all(n.reason == "update" for n in out.notifications)


def test_one_model_without_a_localised_cause_is_that_models_incident(sink, lake):
    one = [finding(slice_="gpt-4o"), finding(dimension="overall", slice_="*")]
    out = engine(lake, incident_config()).evaluate(one, T0, run_id="r0")
    assert [(n.reason, n.firing) for n in out.notifications] == [("new", 2)]
    assert "model=gpt-4o" in header(sink_messages(sink)[-1])


def test_a_coarse_slice_that_joined_does_not_pull_in_a_later_problem_of_that_slice(sink,
                                                                                    lake):
    cfg = incident_config()
    clock = Clock()
    engine(lake, cfg).evaluate(burst(), clock.now, run_id="r0")  # cause model=gpt-4o
    app_cost = finding("baseline_cost_usd", "warning", dimension="app", slice_="chat")
    engine(lake, cfg).evaluate([*burst(), app_cost], clock.tick(), run_id="r1")  # joins
    spike = finding("latency_p95", "critical", dimension="app", slice_="chat",
                    annotations={"root_cause_set": "app=chat&region=eu-west-1"})
    out = engine(lake, cfg).evaluate([*burst(), app_cost, spike], clock.tick(), run_id="r2")
    incident_of = {a["fingerprint"]: a["incident_id"] for a in out.firing}
    burst_incident = incident_of[burst()[0].fingerprint]
    assert incident_of[spike.fingerprint] != burst_incident
    assert incident_of[app_cost.fingerprint] != burst_incident


def test_a_regional_latency_spike_is_not_the_open_burst_of_one_model(sink, lake):
    cfg = incident_config()
    clock = Clock()
    engine(lake, cfg).evaluate(burst(), clock.now, run_id="r0")  # cause model=gpt-4o
    region = {"root_cause_set": "region=eu-west-1"}
    spike = [finding("latency_mean", "critical", dimension="overall", slice_="*",
                     annotations=region),
             finding("latency_mean", "critical", slice_="gpt-4o", annotations=region),
             finding("latency_mean", "critical", slice_="claude", annotations=region)]
    out = engine(lake, cfg).evaluate([*burst(), *spike], clock.tick(), run_id="r1")
    assert [(n.reason, n.firing) for n in out.notifications] == [("new", 3)]
    incident_of = {a["fingerprint"]: a["incident_id"] for a in out.firing}
    assert len({incident_of[f.fingerprint] for f in spike}) == 1
    assert incident_of[spike[1].fingerprint] != incident_of[burst()[0].fingerprint]


def test_a_slice_without_a_cause_of_its_own_is_a_symptom_of_the_incident_that_explains_it(
        sink, lake):
    """A team whose error rate rose a little with one model's burst: the localisation finds
    no cause within the team (too few of its calls moved), and the one incident with a
    located cause on another dimension and the same metric explains it. It is a member of
    that incident, not an incident (and a message) of its own; with two such incidents it
    cannot know which one and stays its own."""
    on_model = {"root_cause_set": "model=gpt-4o"}
    burst_findings = [finding(slice_="gpt-4o", annotations=on_model),
                      finding(dimension="overall", slice_="*", annotations=on_model),
                      # Another team and region, localised within themselves to the model.
                      finding("success_rate", "warning", dimension="team", slice_="support",
                              annotations={"root_cause_set": "model=gpt-4o&team=support"}),
                      finding("success_rate", "warning", dimension="region", slice_="eu-1",
                              annotations={"root_cause_set": "model=gpt-4o&region=eu-1"}),
                      finding("success_rate", "warning", dimension="team", slice_="research"),
                      finding("success_rate", "warning", dimension="region",
                              slice_="ap-southeast-1")]
    out = engine(lake, incident_config()).evaluate(burst_findings, T0, run_id="r0")
    assert [(n.reason, n.firing) for n in out.notifications] == [("new", 6)]
    assert len({a["incident_id"] for a in out.firing}) == 1
    # A second located incident of the same metric: a new bare slice is ambiguous.
    on_region = {"root_cause_set": "region=eu-west-1"}
    later = [*burst_findings,
             finding(dimension="region", slice_="eu-west-1", annotations=on_region),
             finding("success_rate", "warning", dimension="app", slice_="search")]
    out = engine(lake, incident_config()).evaluate(later, T0 + timedelta(hours=1),
                                                   run_id="r1")
    firing = {a["labels"]["slice"]: a["incident_id"] for a in out.firing}
    assert len(set(firing.values())) == 3
    assert firing["search"] not in (firing["gpt-4o"], firing["eu-west-1"])
