"""The alerting quality harness's scoring (bench/alert_quality.py): matching a cause to the
truth, attributing messages to incidents, per-day counts, the acceptance checks. Pure
functions on hand-made messages: no simulation runs here."""

from __future__ import annotations

import importlib.util
import sys
from datetime import timedelta

import pytest

from tests.helpers import ROOT


def _load():
    path = ROOT / "bench" / "alert_quality.py"
    spec = importlib.util.spec_from_file_location("bench_alert_quality", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


aq = _load()
T0 = aq.START


def at(day, hour, minute=0):
    return T0 + timedelta(days=day, hours=hour, minutes=minute)


def alert(rule, dimension="overall", slice_="all", severity="warning", cause=None):
    a = {"rule": rule, "severity": severity,
         "labels": {"rule": rule, "dimension": dimension, "slice": slice_}}
    if cause:
        a["annotations"] = {"root_cause_set": cause}
    return a


def msg(when, severity="warning", reason="new", alerts=None, route=("slack_alerts",),
        scope="hourly", incident_id=None, root_cause=None):
    return aq.Msg(scope, reason, severity, when, route,
                  tuple(alerts if alerts is not None else [alert("r")]), incident_id, root_cause)


def label(kind, start, hours, slc=None):
    return aq.Label(f"{kind}@{start:%d%H}", kind, start, start + timedelta(hours=hours),
                    slc or {})


@pytest.mark.parametrize("found, truth, ok", [
    ("model=claude-3-5-sonnet", "model=claude-3-5-sonnet", True),
    ("model=claude-3-5-sonnet&region=eu-west-1", "model=claude-3-5-sonnet", False),
    ("provider=anthropic", "model=claude-3-5-sonnet", False),
    ("template=support_triage@v3", "template=support_triage", True),
    ("*", "overall", True),
    ("overall", "overall", True),
    ("app=search-qa", "overall", False),
])
def test_cause_matches_the_truth_exactly(found, truth, ok):
    assert aq.matches(found, truth) is ok


def test_truth_names_metric_dimensions():
    assert aq.truth_of({"user_id": "user-042"}) == "user=user-042"
    assert aq.truth_of({"prompt_template": "support_triage"}) == "template=support_triage"
    assert aq.truth_of({}) == "overall"


def test_message_cause_prefers_the_engine_then_the_worst_most_specific_alert():
    overall = alert("success_rate", severity="critical")
    sliced = alert("success_rate", "model", "claude-3-5-sonnet", severity="critical")
    warn = alert("latency_mean", "region", "eu-west-1")
    assert aq.message_cause(msg(at(8, 11), alerts=[warn, overall, sliced])) == \
        "model=claude-3-5-sonnet"
    located = alert("success_rate", severity="critical", cause="model=gpt-4o; app=x")
    assert aq.message_cause(msg(at(8, 11), alerts=[located])) == "model=gpt-4o"
    assert aq.message_cause(msg(at(8, 11), alerts=[warn], root_cause="app=search-qa")) == \
        "app=search-qa"


def test_messages_are_attributed_by_window_and_grace_and_by_incident_id():
    burst = label("error_burst", at(8, 10), 2, {"model": "claude-3-5-sonnet"})
    holiday = label("traffic_dip", at(10, 0), 24)
    messages = [
        msg(at(8, 11), incident_id="inc-1"),        # inside
        msg(at(8, 14), reason="update"),            # end + 2 h: still its own
        msg(at(8, 14)),                             # opened on 13:00-14:00: not the burst
        msg(at(8, 15), reason="resolved", incident_id="inc-1"),  # late, same incident id
        msg(at(8, 15)),                             # later, no id: outside
        msg(at(8, 10)),                             # at the very start: not yet
        msg(at(10, 12)),                            # a holiday message is outside incidents
    ]
    owners = aq.attribute(messages, [burst, holiday])
    assert owners == [burst.name, burst.name, None, burst.name, None, None, None]


def test_detection_in_time_delay_and_cause_of_an_hourly_and_a_health_incident():
    burst = label("error_burst", at(8, 10), 2, {"model": "claude-3-5-sonnet"})
    row = aq.score_incident(burst, [
        msg(at(8, 11), "critical", alerts=[alert("success_rate", "model",
                                                 "claude-3-5-sonnet", "critical")]),
        msg(at(8, 13), "critical", reason="resolved")])
    assert row["detected"] and row["within"] and row["cause_ok"]
    assert row["delay_min"] == 60 and row["messages"] == 2
    gpu = label("gpu_saturation", at(16, 13), 1, {"gpu_node": "gpu-node-02"})
    late = aq.score_incident(gpu, [msg(at(16, 13, 15), scope="health", alerts=[
        alert("gpu_utilization", "gpu_node", "gpu-node-02")])])
    assert late["detected"] and not late["within"]  # 15 minutes > 10 for a health kind
    assert late["cause_ok"]
    missed = aq.score_incident(burst, [msg(at(8, 12), reason="resolved")])
    assert not missed["detected"] and not missed["within"]


def test_hourly_deadline_is_the_first_run_that_saw_a_whole_hour():
    assert label("error_burst", at(8, 10), 2).deadline == at(8, 11)
    half = aq.Label("x", "error_burst", at(8, 10, 30), at(8, 12), {})
    assert half.deadline == at(8, 12)
    assert label("api_down", at(17, 16), 1).deadline == at(17, 16, 10)


def test_per_day_counts_pages_and_new_warnings_and_midnight_closes_the_day():
    messages = [
        msg(at(0, 3), "critical"),                   # page, day 0
        msg(at(1, 0), "critical", reason="repeat"),  # midnight run: still day 0, a page
        msg(at(1, 5), "warning"),                    # new warning, day 1
        msg(at(1, 6), "warning", reason="repeat"),   # not a new warning
        msg(at(1, 7), "critical", reason="resolved"),  # an all-clear is no page
        msg(at(8, 1), "warning"),                    # week 2
    ]
    counts = aq.per_day(messages, 9)
    assert counts["pages"] == [2, 0, 0, 0, 0, 0, 0, 0, 0]
    assert counts["warnings"] == [0, 1, 0, 0, 0, 0, 0, 0, 1]
    weeks = aq.split_weeks(counts)
    assert weeks == {"week1": {"pages": 2, "warnings": 1}, "later": {"pages": 0, "warnings": 1}}


def test_max_messages_per_route_and_hour():
    crit, warn = ("slack_alerts_critical", "slack_alerts"), ("slack_alerts",)
    messages = [msg(at(8, 10, 5), route=crit), msg(at(8, 10, 30), route=crit),
                msg(at(8, 11), route=warn), msg(at(8, 11, 5), route=crit)]
    # 10:05, 10:30 and the 11:00 run share the hour ending 11:00 on the critical route.
    assert aq.max_per_route_hour(messages) == 2
    assert aq.max_per_route_hour(messages[2:]) == 1


def test_batch_windows_recur_daily_and_lookalike_hits_are_counted():
    labels = aq.labels_for(3, incidents=False)
    batch = next(x for x in labels if x.kind == "scheduled_batch")
    assert [a.hour for a, _ in batch.windows] == [2, 2, 2]
    assert batch.covers(at(2, 2, 30)) and not batch.covers(at(2, 12))
    outside = [msg(at(1, 3), "critical", alerts=[alert("token_burst_5m", "user",
                                                         "svc-nightly-batch", "critical")]),
               msg(at(1, 12))]
    hits = aq.lookalike_hits(outside, labels)
    assert hits["scheduled_batch"] == {"messages": 1, "pages": 1, "warnings": 0,
                                       "first_window": 0, "first_window_pages": 0}
    assert aq.offenders(outside)[0] == ("token_burst_5m", "user=svc-nightly-batch", 1)


def test_the_batchs_first_night_is_counted_apart_and_a_later_hour_is_not_the_batch():
    """Night 0: the caller has no history, the per-caller rule judges by its ceiling alone
    (counted apart, and still a failure if it pages); anything else that night counts. An
    hourly alert opened at 04:00 looked at 03:00-04:00, after the batch: not the batch's."""
    labels = aq.labels_for(3, incidents=False)
    burst = alert("token_burst_5m", "user", "svc-nightly-batch")
    first = [msg(at(0, 2, 5), alerts=[burst], scope="health"),
             msg(at(0, 3, 5), reason="resolved", alerts=[burst], scope="health")]
    hits = aq.lookalike_hits(first, labels)["scheduled_batch"]
    assert (hits["messages"], hits["first_window"], hits["first_window_pages"]) == (0, 2, 0)
    volume = alert("baseline_requests", "app", "doc-summarizer")
    volume["labels"]["metric"] = "requests"
    assert aq.lookalike_hits([msg(at(0, 3), alerts=[volume])], labels)[
        "scheduled_batch"]["messages"] == 1
    assert aq.lookalike_hits([msg(at(1, 4), alerts=[volume])], labels)[
        "scheduled_batch"]["messages"] == 0
    # Its all-clear at 04:00 still belongs to it.
    assert aq.lookalike_hits([msg(at(1, 4), reason="resolved", alerts=[volume])], labels)[
        "scheduled_batch"]["messages"] == 1
    paged = [msg(at(0, 2, 5), "critical", alerts=[{**burst, "severity": "critical"}],
                 scope="health")]
    run = aq.score(paged, labels, 3)
    assert run["lookalikes"]["scheduled_batch"]["first_window_pages"] == 1
    assert not aq.done_when(run, None)["nothing on the batch, the rollout or the holiday"]


def test_labels_cover_every_incident_kind_in_weeks_two_and_three():
    labels = aq.labels_for(21, incidents=True)
    kinds = {x.kind for x in labels if not x.harmless}
    assert kinds >= {"error_burst", "latency_spike", "user_flood", "token_surge",
                     "intent_drop", "relevance_drop", "gpu_saturation", "api_down",
                     "app_traffic_drop"}
    assert all(x.start >= at(7, 0) for x in labels if not x.harmless)
    assert {x.kind for x in labels if x.harmless} == aq.HARMLESS
    assert not any(x.harmless for x in aq.labels_for(21, incidents=True)
                   if x.kind in aq.HEALTH_KINDS)
    # The scenario the simulator plays is valid.
    from promptops.simulator.scenario import parse_scenario

    parse_scenario(aq.scenario_doc(labels, 11, 2000))


def test_score_and_done_when_on_a_tiny_run():
    labels = [label("error_burst", at(8, 10), 2, {"model": "claude-3-5-sonnet"}),
              *aq.labels_for(9, incidents=False)]
    good = msg(at(8, 11), "critical", alerts=[alert("success_rate", "model",
                                                    "claude-3-5-sonnet", "critical")])
    quiet = aq.score([good], labels, 9)
    checks = aq.done_when(quiet, aq.score([], labels, 9))
    assert all(checks.values()), checks
    noisy = aq.score([good, msg(at(3, 2, 30), "critical")], labels, 9)
    assert noisy["outside"]["week1"]["pages"] == 1
    assert noisy["lookalikes"]["scheduled_batch"]["pages"] == 1
    checks = aq.done_when(noisy, None)
    assert not checks["0 pages outside incidents (week 1 included)"]
    assert not checks["nothing on the batch, the rollout or the holiday"]


def test_target_copies_are_summarised_apart_and_do_not_count_as_slack_messages():
    from dataclasses import replace

    labels = [label("error_burst", at(8, 10), 2, {"model": "claude-3-5-sonnet"}),
              *aq.labels_for(9, incidents=False)]
    good = replace(msg(at(8, 11), "critical", alerts=[alert(
        "success_rate", "model", "claude-3-5-sonnet", "critical")]), incident_id="i1")
    copies = [replace(good, target="pd"), replace(good, target="am"),
              replace(good, target="am", reason="refresh", at=at(8, 12)),
              replace(good, target="pd", reason="resolved", at=at(8, 13)),
              replace(msg(at(3, 2, 30), "critical"), target="pd")]
    scored = aq.score([good, *copies], labels, 9)
    assert scored == {**aq.score([good], labels, 9), "targets": scored["targets"]}
    pd, am = scored["targets"]["pd"], scored["targets"]["am"]
    [name] = pd["incidents"]
    assert pd["incidents"][name] == {"new": 1, "resolved": 1}
    assert (pd["outside"], pd["outside_new"]) == (1, 1)
    assert am["incidents"][name] == {"new": 1} and am["refresh"] == 1
    again = aq.msg_from_json(aq.msg_to_json(copies[0]))
    assert again.target == "pd"


def test_a_saved_run_scores_the_same_again():
    labels = aq.labels_for(9, incidents=False)
    m = msg(at(3, 2, 30), "critical", alerts=[alert("token_burst_5m", "user",
                                                    "svc-nightly-batch", "critical")])
    again = aq.msg_from_json(aq.msg_to_json(m))
    assert aq.score([again], labels, 9) == aq.score([m], labels, 9)


def test_an_unrelated_alert_in_an_incidents_window_is_noise_not_a_detection():
    intent = label("intent_drop", at(11, 11), 2, {"prompt_template": "support_triage"})
    gpu_noise = alert("gpu_utilization", "gpu_node", "gpu-node-04", "critical")
    gpu_noise["labels"]["metric"] = "gpu_utilization_pct"
    accuracy = alert("intent_accuracy", "template", "support_triage@v3")
    accuracy["labels"]["metric"] = "intent_accuracy"
    noise, hit = msg(at(11, 11, 5), "critical", alerts=[gpu_noise]), msg(at(11, 12),
                                                                        alerts=[accuracy])
    assert aq.attribute([noise, hit], [intent]) == [None, intent.name]
    row = aq.score_incident(intent, [hit])
    assert row["cause_ok"] and row["delay_min"] == 60
    # The batch's window claims volume alerts and its own caller, not a latency blip.
    batch = next(x for x in aq.labels_for(3, incidents=False) if x.kind == "scheduled_batch")
    latency = alert("latency_mean", "model", "gpt-4o")
    latency["labels"]["metric"] = "latency_mean_ms"
    assert not batch.claims(msg(at(1, 2, 30), alerts=[latency]))
    assert batch.claims(msg(at(1, 2, 30), alerts=[alert("token_burst_5m", "user",
                                                        "svc-nightly-batch")]))


def test_the_cause_is_read_from_the_first_message_that_localises_one():
    """The 5-minute sensor pages first and sees only the platform as a whole; the hourly
    run's incident names the model. The delay is the page's, the cause the hourly run's."""
    burst = label("error_burst", at(8, 10), 2, {"model": "claude-3-5-sonnet"})
    page = msg(at(8, 10, 10), "warning", scope="health",
               alerts=[alert("api_success_rate_5m", severity="warning")])
    hourly = msg(at(8, 11), "critical", root_cause="model=claude-3-5-sonnet",
                 alerts=[alert("success_rate", "app", "chat", "critical",
                               cause="app=chat&model=claude-3-5-sonnet")])
    row = aq.score_incident(burst, [page, hourly])
    assert row["delay_min"] == 10 and row["cause"] == "model=claude-3-5-sonnet"
    assert row["cause_ok"]
    # Without any localised message, the first message's slice is the answer.
    assert aq.score_incident(burst, [page])["cause"] == "overall"


def test_an_hourly_incident_without_a_cause_moved_platform_wide():
    """The engine names no cause for a platform-wide incident: for an hourly message that
    reads "overall"; a 5-minute message's cause comes from its alerts' slices."""
    from types import SimpleNamespace

    def note(scope, cause):
        return SimpleNamespace(scope=scope, reason="new", severity="critical",
                               evaluated_at=at(17, 17), connections=["c"], firing=[
                                   alert("baseline_error_rate", "app", "chat", "critical",
                                         cause="app=chat")],
                               incident_id="i1", cause=cause)

    assert aq.msg_of(note("hourly", "")).root_cause == "overall"
    assert aq.msg_of(note("hourly", "model=m")).root_cause == "model=m"
    assert aq.msg_of(note("health", "")).root_cause is None
    outage = label("api_down", at(17, 16), 1)
    row = aq.score_incident(outage, [aq.msg_of(note("hourly", ""))])
    assert row["cause"] == "overall" and row["cause_ok"]


def test_an_all_clear_in_the_batchs_window_follows_where_its_incident_opened():
    labels = aq.labels_for(3, incidents=False)
    volume = alert("baseline_requests", "app", "doc-summarizer")
    volume["labels"]["metric"] = "requests"
    before = [msg(at(1, 1), alerts=[volume], incident_id="noise"),
              msg(at(1, 4), reason="resolved", alerts=[volume], incident_id="noise")]
    assert aq.lookalike_hits(before, labels)["scheduled_batch"]["messages"] == 0
    during = [msg(at(1, 3), alerts=[volume], incident_id="batch"),
              msg(at(1, 4), reason="resolved", alerts=[volume], incident_id="batch")]
    assert aq.lookalike_hits(during, labels)["scheduled_batch"]["messages"] == 2
