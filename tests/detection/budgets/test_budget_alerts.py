"""Budget findings through the alert engine with the shipped alerting config: one message
per threshold per period, no reminder while the period lasts, no all-clear when it ends,
and the next period's crossing is a new message."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from promptops.alerts.config import load_alerting_config
from promptops.alerts.engine import AlertEngine, Delivery
from promptops.alerts.store import AlertStore
from promptops.detection.budgets.config import BudgetsConfig
from promptops.detection.budgets.evaluate import evaluate_budgets
from tests.detection.budgets.test_budget_evaluate import lake, spend_hour  # noqa: F401

HOUR = timedelta(hours=1)


class Recorder:
    def __init__(self) -> None:
        self.sent: list = []

    def deliver(self, n):
        self.sent.append(n)
        return Delivery(ok=True, connection_id=n.connections[0] if n.connections else None)


def test_one_message_per_threshold_per_period_and_nothing_else(lake):  # noqa: F811
    budgets = BudgetsConfig.model_validate({"budgets": [{
        "name": "u-daily", "scope": {"user": ["u1"]}, "metric": "cost", "amount": 10,
        "period": "day", "timezone": "UTC",
        "thresholds": [{"at": 0.5, "severity": "warning"},
                       {"at": 1.0, "severity": "critical"}]}]})
    config = load_alerting_config().model_copy(update={"silences_file": None,
                                                       "silences_variable": ""})
    out = Recorder()
    engine = AlertEngine(config, AlertStore(lake, "hourly"), out, silences=[])
    start = datetime(2026, 11, 20, tzinfo=UTC)
    for i in range(72):   # three days at $1 an hour against $10 a day
        hour = start + i * HOUR
        spend_hour(lake, hour, {"u1": 1.0})
        at = hour + HOUR
        engine.evaluate(evaluate_budgets(lake, budgets, at).findings, at, run_id=f"r{i}")
    sent = [(n.evaluated_at - start) / HOUR for n in out.sent]
    reasons = Counter(n.reason for n in out.sent)
    assert reasons == {"new": 6}, [(t, n.reason) for t, n in zip(sent, out.sent, strict=True)]
    # 50% after 5 hours and 100% after 10, every day; the 100% pages on its own channel.
    assert sent == [5, 10, 29, 34, 53, 58]
    assert [n.connections[0] for n in out.sent] == ["slack_alerts", "slack_alerts_critical"] * 3
    assert "Budget 'u-daily' of user=u1" in out.sent[0].firing[0]["summary"]


def test_a_threshold_with_a_heal_asks_the_heal_path_once(lake):  # noqa: F811
    from promptops.heal.policy import expand_playbook

    budgets = BudgetsConfig.model_validate({"budgets": [{
        "name": "u-daily", "scope": {"user": ["user-042"]}, "metric": "cost", "amount": 3,
        "period": "day", "timezone": "UTC",
        "thresholds": [{"at": 1.0, "severity": "critical", "heal": "rate_limit_user"}]}]})
    config = load_alerting_config().model_copy(update={"silences_file": None,
                                                       "silences_variable": ""})
    engine = AlertEngine(config, AlertStore(lake, "hourly"), Recorder(), silences=[])
    start = datetime(2026, 11, 20, tzinfo=UTC)
    asked = []
    for i in range(6):
        hour = start + i * HOUR
        spend_hour(lake, hour, {"user-042": 1.0})
        out = engine.evaluate(evaluate_budgets(lake, budgets, hour + HOUR).findings,
                              hour + HOUR, run_id=f"r{i}")
        asked += [(i + 1, h["playbook"], h["newly_fired"]) for h in out.heal_requests]
    # Asked when the budget is crossed (hour 3); the alert keeps firing for the rest of the
    # day, but only its first evaluation is a new request (the heal path acts on those).
    assert asked[0] == (3, "rate_limit_user", True)
    assert all(not newly for _, _, newly in asked[1:])
    # The heal path expands the playbook from the alert's labels: the user is the target.
    [step] = expand_playbook("rate_limit_user", out.heal_requests[0]["labels"])
    assert (step.action.value, step.target) == ("rate_limit", "user-042")
