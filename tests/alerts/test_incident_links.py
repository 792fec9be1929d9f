"""One incident across the 5-minute health sensor and the hourly run, symptoms that follow
an incident, and causes that lie within another incident's slice, through the real Slack
sink."""

from __future__ import annotations

from datetime import timedelta

from tests.alerts.test_incidents import incident_config
from tests.helpers.alerts import T0, engine, finding, header, sink_messages

MIN = timedelta(minutes=1)


def gpu(node: str, severity: str = "critical"):
    return finding("gpu_utilization", severity, dimension="gpu_node", slice_=node,
                   metric="gpu_utilization_pct", value=99.0, threshold=95.0)


def latency_on_llama():
    """The hourly run's view of a saturated node: the model's latency, localised to it."""
    return finding("baseline_latency_p95_ms", "warning", slice_="llama-3-70b",
                   metric="latency_p95_ms", value=9000, threshold=5000,
                   annotations={"root_cause_set": "gpu_node=gpu-node-02"})


def ids(out) -> set[str]:
    return {a["incident_id"] for a in out.firing}


def test_the_hourly_run_continues_the_health_sensors_incident_and_it_resolves_once(sink, lake):
    cfg = incident_config()
    health = engine(lake, cfg, scope="health")
    opened = health.evaluate([gpu("gpu-node-02")], T0 + 10 * MIN, run_id="h1")
    assert [n.reason for n in opened.notifications] == ["new"]
    # The hourly run 50 minutes later finds the node's model slow: the same incident, and
    # no second message within the hour on the route the sensor already used.
    hourly = engine(lake, cfg, scope="hourly").evaluate([latency_on_llama()], T0 + 60 * MIN,
                                                        run_id="r1")
    assert ids(hourly) == ids(opened)
    assert hourly.notifications == []
    # The sensor recovers first: no all-clear while the hourly run still has it firing.
    calm = engine(lake, cfg, scope="health").evaluate([], T0 + 70 * MIN, run_id="h2")
    assert calm.notifications == []
    # An hour after the sensor's message the hourly details go into the same thread.
    later = engine(lake, cfg, scope="hourly").evaluate([latency_on_llama()], T0 + 120 * MIN,
                                                       run_id="r2")
    assert [(n.reason, n.incident_id) for n in later.notifications] == [
        ("update", next(iter(ids(opened))))]
    # Both recovered and both wait for each other: the scope first in name order sends
    # the one all-clear, the other closes without a message.
    done = engine(lake, cfg, scope="hourly").evaluate([], T0 + 180 * MIN, run_id="r3")
    assert done.notifications == []
    sent = engine(lake, cfg, scope="health").evaluate([], T0 + 185 * MIN, run_id="h3")
    assert [n.reason for n in sent.notifications] == ["resolved"]
    quiet = [engine(lake, cfg, scope=s).evaluate([], T0 + at * MIN, run_id=f"q{at}")
             for s, at in (("hourly", 240), ("health", 245), ("hourly", 300))]
    assert all(q.notifications == [] for q in quiet)
    assert len(sink_messages(sink)) == 3  # new, update, resolved
    # The incident opens afresh, as a new one, when the node runs hot again.
    hot = engine(lake, cfg, scope="health").evaluate([gpu("gpu-node-02")], T0 + 310 * MIN,
                                                     run_id="h4")
    assert [n.reason for n in hot.notifications] == ["new"]
    assert ids(hot).isdisjoint(ids(opened))


def test_the_all_clear_goes_out_when_the_other_scope_never_posted(sink, lake):
    """The hourly run continued the sensor's incident but never got past the floor: when
    it recovers without a message, the waiting sensor sends the all-clear itself."""
    cfg = incident_config()
    engine(lake, cfg, scope="health").evaluate([gpu("gpu-node-02")], T0 + 10 * MIN,
                                               run_id="h1")
    engine(lake, cfg, scope="hourly").evaluate([latency_on_llama()], T0 + 60 * MIN,
                                               run_id="r1")
    calm = engine(lake, cfg, scope="health").evaluate([], T0 + 65 * MIN, run_id="h2")
    assert calm.notifications == []  # the hourly run still has it firing
    quiet = engine(lake, cfg, scope="hourly").evaluate([], T0 + 120 * MIN, run_id="r2")
    assert quiet.notifications == []  # it never posted: nothing to resolve
    last = engine(lake, cfg, scope="health").evaluate([], T0 + 125 * MIN, run_id="h3")
    assert [n.reason for n in last.notifications] == ["resolved"]
    assert len(sink_messages(sink)) == 2


def test_an_outage_seen_overall_by_both_scopes_is_one_incident(sink, lake):
    cfg = incident_config()
    down = finding("api_down", "critical", dimension="overall", slice_="*", metric="api_up",
                   value=0.0, threshold=1.0)
    first = engine(lake, cfg, scope="health").evaluate([down], T0 + 5 * MIN, run_id="h1")
    errors = finding("baseline_error_rate", "critical", dimension="overall", slice_="*",
                     metric="error_rate", value=0.5, threshold=0.05)
    hourly = engine(lake, cfg, scope="hourly").evaluate([errors], T0 + 60 * MIN, run_id="r1")
    assert ids(hourly) == ids(first)
    assert hourly.notifications == []


def test_without_linked_scopes_each_scope_keeps_its_own_incidents(sink, lake):
    cfg = incident_config(incidents={"link_scopes": []})
    first = engine(lake, cfg, scope="health").evaluate([gpu("gpu-node-02")], T0 + 10 * MIN,
                                                       run_id="h1")
    hourly = engine(lake, cfg, scope="hourly").evaluate([latency_on_llama()], T0 + 60 * MIN,
                                                        run_id="r1")
    assert ids(hourly) != ids(first)
    assert [n.reason for n in hourly.notifications] == ["new"]


def test_an_unrelated_hourly_incident_is_not_linked(sink, lake):
    cfg = incident_config()
    first = engine(lake, cfg, scope="health").evaluate([gpu("gpu-node-02")], T0 + 10 * MIN,
                                                       run_id="h1")
    other = finding("baseline_error_rate", "warning", dimension="app", slice_="chat",
                    metric="error_rate", annotations={"root_cause_set": "app=chat"})
    hourly = engine(lake, cfg, scope="hourly").evaluate([other], T0 + 60 * MIN, run_id="r1")
    assert ids(hourly).isdisjoint(ids(first))
    assert [n.reason for n in hourly.notifications] == ["new"]


def test_symptoms_minutes_after_an_incident_opened_join_it(sink, lake):
    """A caller's flood opens an incident; five minutes later four GPU nodes run hot (no
    cause of their own, no incident of their metric): they are the flood's incident, its
    cause stays the caller, and the floor holds their update back."""
    cfg = incident_config()
    flood = finding("abusive_caller_5m", "critical", dimension="user", slice_="user-042",
                    metric="peak_calls_per_minute", value=300, threshold=100)
    first = engine(lake, cfg, scope="health").evaluate([flood], T0 + 5 * MIN, run_id="h1")
    nodes = [gpu(f"gpu-node-0{i}", "warning") for i in range(1, 5)]
    out = engine(lake, cfg, scope="health").evaluate([flood, *nodes], T0 + 10 * MIN,
                                                     run_id="h2")
    assert ids(out) == ids(first)
    assert out.notifications == []
    rows = [r for r in out.as_dict()["firing"] if r["rule"] == "gpu_utilization"]
    assert len(rows) == 4
    # Long after the flood opened, hot GPUs are an incident of their own: one, not four.
    late = engine(lake, cfg, scope="health").evaluate(
        [flood, *[gpu(f"gpu-node-0{i}", "warning") for i in range(5, 7)]], T0 + 60 * MIN,
        run_id="h3")
    hot = {a["incident_id"] for a in late.firing if a["labels"]["slice"] in
           ("gpu-node-05", "gpu-node-06")}
    assert len(hot) == 1 and hot.isdisjoint(ids(first))


def test_hot_nodes_with_no_incident_around_are_one_incident(sink, lake):
    cfg = incident_config()
    out = engine(lake, cfg, scope="health").evaluate([gpu("gpu-node-01", "warning"),
                                                      gpu("gpu-node-03", "warning")],
                                                     T0 + 5 * MIN, run_id="h1")
    assert len(ids(out)) == 1
    assert [n.reason for n in out.notifications] == ["new"]


def test_a_template_whose_calls_all_belong_to_an_app_joins_that_apps_incident(sink, lake):
    cfg = incident_config()
    app = finding("baseline_cost_usd", "critical", dimension="app", slice_="code-assistant",
                  metric="cost_usd", annotations={"root_cause_set": "app=code-assistant"})
    template = finding("tokens_vs_same_hour_yesterday", "warning", dimension="template",
                       slice_="code_review@v1", metric="total_tokens",
                       annotations={"root_cause_set": "template=code_review@v1",
                                    "root_cause_context": "app=code-assistant&team=support"})
    out = engine(lake, cfg).evaluate([app, template], T0, run_id="r0")
    assert len(ids(out)) == 1
    assert [n.reason for n in out.notifications] == ["new"]
    assert "app=code-assistant" in header(sink_messages(sink)[-1])
    # Without the context the template is an incident of its own.
    bare = finding("tokens_vs_same_hour_yesterday", "warning", dimension="template",
                   slice_="code_complete@v3", metric="total_tokens",
                   annotations={"root_cause_set": "template=code_complete@v3"})
    out = engine(lake, cfg).evaluate([app, template, bare], T0 + timedelta(hours=1),
                                     run_id="r1")
    assert len(ids(out)) == 2


def test_a_cause_whose_calls_all_lie_in_the_slice_is_the_key_alone():
    from promptops.alerts.incidents import correlation_key, parse_key
    from promptops.alerts.state import AlertRecord

    node = AlertRecord.start(latency_on_llama(), T0)
    assert correlation_key(node) == parse_key("gpu_node=gpu-node-02&model=llama-3-70b")
    implied = AlertRecord.start(finding(
        "baseline_latency_p95_ms", "warning", slice_="llama-3-70b", metric="latency_p95_ms",
        annotations={"root_cause_set": "gpu_node=gpu-node-02",
                     "root_cause_context": "model=llama-3-70b&provider=self-hosted"}), T0)
    assert correlation_key(implied) == parse_key("gpu_node=gpu-node-02")
