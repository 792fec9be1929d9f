"""The engine's copies for alert targets: each target gets each message once, with its own
claim and retries, and Alertmanager is refreshed every evaluation an incident is open."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pytest

from promptops.alerts.config import AlertingConfigError
from promptops.alerts.engine import AlertEngine, Delivery, Notification
from promptops.alerts.store import AlertStore
from promptops.alerts.targets import TargetConnection, TargetNotifier
from promptops.lake.store import Lake
from tests.helpers.alerts import Clock, config, finding

TARGETS = {
    "am": {"type": "alertmanager", "connection": "alertmanager_default"},
    "pd": {"type": "pagerduty", "connection": "pagerduty_events"},
    "hook": {"type": "webhook", "connection": "promptops_webhook"},
    "mail": {"type": "email", "connection": "smtp_default", "to": ["oncall@example.com"]},
}
ROUTES = [{"matchers": ['severity="critical"'], "connections": ["slack_alerts"],
           "targets": ["am", "pd", "hook", "mail"]},
          {"matchers": ['severity="warning"'], "connections": ["slack_alerts"]}]


def targets_config(**overrides):
    return config(grouping="incidents", routes=ROUTES, targets=TARGETS,
                  incidents={"min_message_interval": "0s"}, **overrides)


@dataclass
class FlakyTargets:
    """Records every delivery by target (``slack`` for the route's connections); a target
    named in ``failing`` fails while it is there."""

    failing: set[str] = field(default_factory=set)
    sent: list[tuple[str, str, str]] = field(default_factory=list)
    tried: Counter = field(default_factory=Counter)

    def deliver(self, n: Notification) -> Delivery:
        who = n.target or "slack"
        self.tried[who] += 1
        if who in self.failing:
            return Delivery(ok=False, connection_id=who, error=f"{who} is down")
        self.sent.append((who, n.reason, n.incident_id or ""))
        return Delivery(ok=True, connection_id=who)

    def by_target(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for who, reason, _ in self.sent:
            out.setdefault(who, []).append(reason)
        return out


def run(lake_uri, cfg, notifier, findings, now):
    engine = AlertEngine(cfg, AlertStore(Lake(lake_uri), "hourly"), notifier, silences=[])
    return engine.evaluate(findings, now, run_id=f"run {now:%H}")


def test_each_target_gets_the_incident_once_and_alertmanager_is_refreshed(lake):
    cfg, clock, out = targets_config(), Clock(), FlakyTargets()
    crit = finding("success_rate", "critical")
    run(lake, cfg, out, [crit], clock.now)
    assert out.by_target() == {"slack": ["new"], "am": ["new"], "pd": ["new"],
                               "hook": ["new"], "mail": ["new"]}
    out.sent.clear()
    run(lake, cfg, out, [crit], clock.tick())  # still open, nothing new: only Alertmanager
    assert out.by_target() == {"am": ["refresh"]}
    out.sent.clear()
    outcome = run(lake, cfg, out, [], clock.tick())
    assert out.by_target() == {"slack": ["resolved"], "am": ["resolved"], "pd": ["resolved"],
                               "hook": ["resolved"], "mail": ["resolved"]}
    assert {n.target for n in outcome.notifications} == {None, "am", "pd", "hook", "mail"}
    assert len({n.incident_id for n in outcome.notifications}) == 1
    out.sent.clear()
    run(lake, cfg, out, [], clock.tick())
    assert out.sent == []


def test_a_warning_route_without_targets_sends_only_to_slack(lake):
    out, clock = FlakyTargets(), Clock()
    run(lake, targets_config(), out, [finding("latency_p95", "warning")], clock.now)
    assert out.by_target() == {"slack": ["new"]}


def test_a_failed_target_is_retried_later_without_resending_the_others(lake):
    cfg, clock, out = targets_config(), Clock(), FlakyTargets(failing={"pd"})
    crit = finding()
    run(lake, cfg, out, [crit], clock.now)
    assert ("pd", "new") not in [(w, r) for w, r, _ in out.sent]
    out.failing.clear()
    out.sent.clear()
    run(lake, cfg, out, [crit], clock.tick())
    # PagerDuty gets its missed opening; Slack, the webhook and the mail are not re-sent.
    assert out.by_target() == {"pd": ["new"], "am": ["refresh"]}


def test_a_failed_slack_message_is_planned_again_but_targets_that_had_it_are_skipped(lake):
    cfg, clock, out = targets_config(), Clock(), FlakyTargets(failing={"slack"})
    crit = finding()
    run(lake, cfg, out, [crit], clock.now)
    assert sorted(out.by_target()) == ["am", "hook", "mail", "pd"]
    out.failing.clear()
    out.sent.clear()
    run(lake, cfg, out, [crit], clock.tick())
    assert out.by_target() == {"slack": ["new"], "am": ["refresh"]}


def test_a_newer_message_replaces_a_failed_one_for_that_target(lake):
    cfg, clock, out = targets_config(), Clock(), FlakyTargets(failing={"hook"})
    run(lake, cfg, out, [finding()], clock.now)
    out.failing.clear()
    out.sent.clear()
    run(lake, cfg, out, [], clock.tick())  # resolved before the webhook came back
    assert out.by_target()["hook"] == ["resolved"]


def test_a_rerun_of_the_evaluation_retries_only_the_failed_copy(lake):
    cfg, clock, out = targets_config(), Clock(), FlakyTargets(failing={"mail"})
    run(lake, cfg, out, [finding()], clock.now)
    out.failing.clear()
    out.sent.clear()
    outcome = run(lake, cfg, out, [finding()], clock.now)  # the Airflow retry
    assert outcome.replay == "same"
    assert out.by_target() == {"mail": ["new"]}


def test_a_copy_is_retried_for_target_retry_for_only(lake):
    cfg = targets_config(target_retry_for="2h")
    clock, out = Clock(), FlakyTargets(failing={"pd"})
    crit = finding()
    for _ in range(4):
        run(lake, cfg, out, [crit], clock.now)
        clock.tick()
    # Planned at 0h, retried at 1h and 2h (evaluation time), given up at 3h.
    assert out.tried["pd"] == 3


def test_a_route_of_targets_only_opens_and_resolves_the_incident(lake):
    cfg = config(grouping="incidents", targets=TARGETS,
                 routes=[{"matchers": [], "connections": [], "targets": ["pd"]}])
    out, clock = FlakyTargets(), Clock()
    notifier = TargetNotifier(cfg, out, connections=_Connections(),
                              senders={"pagerduty": _Forward(out)})
    run(lake, cfg, notifier, [finding()], clock.now)
    run(lake, cfg, notifier, [finding()], clock.tick())
    run(lake, cfg, notifier, [], clock.tick())
    assert out.by_target() == {"pd": ["new", "resolved"]}


class _Connections:
    def get(self, conn_id):
        return TargetConnection(conn_id, host="http://127.0.0.1:9", password="s3cret")


@dataclass
class _Forward:
    into: FlakyTargets

    def deliver(self, n, target, conn):
        assert conn.conn_id == target.connection == "pagerduty_events"
        return self.into.deliver(n)


def test_a_missing_connection_is_a_permanent_failure_naming_what_to_create(lake):
    cfg, out = targets_config(), FlakyTargets()

    class Nothing:
        def get(self, conn_id):
            return None

    outcome = run(lake, cfg, TargetNotifier(cfg, out, Nothing()), [finding()], Clock().now)
    failed = {n.target: n.error for n in outcome.notifications if n.status == "failed"}
    assert set(failed) == {"am", "pd", "hook", "mail"}
    assert "connection 'pagerduty_events' does not exist" in failed["pd"]
    assert "routing" in failed["pd"]
    assert [n.status for n in outcome.notifications if n.target is None] == ["sent"]


def test_routes_must_name_defined_targets():
    with pytest.raises(AlertingConfigError, match=r"routes.0.targets: no target 'pager'"):
        config(targets=TARGETS, routes=[{"connections": ["slack_alerts"],
                                         "targets": ["pager"]}])
    with pytest.raises(AlertingConfigError, match="needs Slack connections, targets, or both"):
        config(routes=[{"connections": []}])
    with pytest.raises(AlertingConfigError, match=r"targets.x.type"):
        config(targets={"x": {"type": "sms", "connection": "c"}})
    cfg = config(targets=TARGETS, default_targets=["pd"])
    assert cfg.targets["pd"].wanted == ["new", "update", "resolved"]
    assert cfg.route_for({"severity": "info"})[1].targets == ["pd"]
