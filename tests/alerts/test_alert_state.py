"""The alert engine's typed state against a state document written before it was typed.

``alert_state_v1.json`` is version 6 of an hourly scope as the engine of commit c34acfa left
it after evaluating 13:00, 14:00 and 16:00 (15:00 never ran): a firing critical alert with a
heal playbook, a warning it inhibits, an error_rate alert resolved at 16:00, a latency alert
whose message failed twice (a failed outbox entry), and a cost alert pending (2 of 3).
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from promptops.alerts.engine import AlertEngine, Delivery, Notification
from promptops.alerts.state import AlertState
from promptops.alerts.store import AlertStore
from promptops.lake.store import Lake
from tests.helpers.alerts import T0, config, finding

FIXTURE = Path(__file__).with_name("alert_state_v1.json")
H = timedelta(hours=1)
CRIT = finding("success_rate", "critical", annotations={"heal_playbook": "api_timeouts"})
WARN = finding("success_rate", "warning")
LAT = finding("latency_p95", "warning", metric="latency_p95", service="api")
COST = finding("cost", "info", dimension="overall", slice_="all", pending_for=3)
ERR_FP = "d5ad579e8ae049f1"


class Recorder:
    """A notifier that delivers everything and remembers what."""

    def __init__(self) -> None:
        self.sent: list[Notification] = []

    def deliver(self, notification: Notification) -> Delivery:
        self.sent.append(notification)
        return Delivery(ok=True, connection_id="slack_alerts")


def _doc() -> dict:
    return json.loads(FIXTURE.read_text())


@pytest.fixture()
def store(tmp_path: Path) -> AlertStore:
    store = AlertStore(Lake(f"file://{tmp_path / 'lake'}"), "hourly")
    store.commit(6, _doc())
    return store


def _evaluate(store: AlertStore, findings, at, run_id):
    recorder = Recorder()
    out = AlertEngine(config(), store, recorder, silences=[]).evaluate(findings, at,
                                                                        run_id=run_id)
    return out, recorder.sent


#: Fields added for incidents and alert targets; an old document gets their defaults and
#: nothing else changes.
_INCIDENT_DEFAULTS = {"incident_id": None, "cause": "", "opened_at": None, "threads": {},
                      "members": [], "keys": [], "route_sent": {},
                      "first_on_route": False, "all_clear_waits": False, "target": None,
                      "target_sent": {}, "signature": ""}


def _without_incident_defaults(value):
    """The document minus the incident fields that are at their defaults."""
    if isinstance(value, dict):
        return {k: _without_incident_defaults(v) for k, v in value.items()
                if not (k in _INCIDENT_DEFAULTS and v == _INCIDENT_DEFAULTS[k])}
    if isinstance(value, list):
        return [_without_incident_defaults(v) for v in value]
    return value


def test_the_state_converts_back_to_the_same_json():
    doc = _doc()
    state = AlertState.from_dict(doc)
    assert {fp: r.status for fp, r in state.alerts.items()} == {
        LAT.fingerprint: "firing", COST.fingerprint: "pending", CRIT.fingerprint: "firing",
        WARN.fingerprint: "firing", ERR_FP: "resolved"}
    assert [(e.status, e.reason, e.attempt) for e in state.outbox] == [("failed", "new", 1)]
    assert _without_incident_defaults(state.to_dict()) == doc


def test_a_state_from_before_the_history_keeps_its_shape():
    doc = _doc()
    del doc["evaluations"], doc["history_from"]
    state = AlertState.from_dict(doc)
    assert state.evaluations is None
    assert _without_incident_defaults(state.to_dict()) == doc


def test_a_rerun_of_the_stored_evaluation_sends_its_failed_message(store):
    out, sent = _evaluate(store, [CRIT, WARN, LAT, COST], T0 + 3 * H, "rerun")
    assert out.replay == "same"
    assert [(a["fingerprint"], a["muted_by"]) for a in out.firing] == [
        (LAT.fingerprint, None), (CRIT.fingerprint, None),
        (WARN.fingerprint, f"inhibit:critical-mutes-warning:{CRIT.fingerprint}")]
    assert [(n.reason, n.status) for n in out.notifications] == [("resolved", "sent"),
                                                                 ("new", "sent")]
    assert [(n.reason, n.group_labels, n.new) for n in sent] == [
        ("new", {"rule": "latency_p95"}, [LAT.fingerprint])]
    assert [h["fingerprint"] for h in out.heal_requests] == [CRIT.fingerprint]
    state = AlertState.from_dict(store.load().doc)
    assert state.outbox == [] and state.groups['1:{"rule":"latency_p95"}'].failures == 0


def test_a_backfill_completes_the_pending_streak_the_stored_history_knows(store):
    out, sent = _evaluate(store, [CRIT, WARN, LAT, COST], T0 + 2 * H, "backfill")
    assert out.replay == "gap"
    assert [(n.reason, n.status, n.group_labels) for n in out.notifications] == [
        ("new", "sent", {"rule": "cost"})]
    assert [n.evaluated_at for n in sent] == [T0 + 3 * H]  # speaks for the latest evaluation
    assert [(h["fingerprint"], h["stale"]) for h in out.heal_requests] == [
        (CRIT.fingerprint, True)]
    state = AlertState.from_dict(store.load().doc)
    assert state.alerts[COST.fingerprint].status == "firing"
    assert [e.status for e in state.outbox] == ["failed"]  # the latency message waits


def test_the_next_hour_resolves_what_slack_saw_firing(store):
    out, sent = _evaluate(store, [], T0 + 4 * H, "next")
    assert out.replay is None
    assert [a["fingerprint"] for a in out.resolved] == [LAT.fingerprint, CRIT.fingerprint,
                                                        WARN.fingerprint]
    assert [(n.reason, n.group_labels, [a["fingerprint"] for a in n.resolved]) for n in sent] \
        == [("resolved", {"rule": "success_rate"}, [CRIT.fingerprint])]
    state = AlertState.from_dict(store.load().doc)
    assert sorted(state.alerts) == sorted([LAT.fingerprint, CRIT.fingerprint,
                                           WARN.fingerprint])
    assert list(state.groups) == ['0:{"rule":"success_rate"}'] and state.outbox == []
