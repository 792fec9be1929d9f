"""Replays of older evaluations (issue 11 §9): the scheduler's run for the latest hour
finishes first and the backfill of the hours before it arrives afterwards.

A backfilled hour that was never evaluated fills a gap in the history: an alert it finds
that still fires at the latest evaluation is posted once (if it was not already), an incident
that was over by then goes to the alert log for the report and is never posted, and its heal
requests are marked stale. Nothing a replay sees changes what the latest evaluation decided.
"""

from __future__ import annotations

import json
from datetime import timedelta

from promptops.alerts.store import AlertStore
from promptops.lake.store import Lake
from tests.helpers.alerts import T0, config, engine, finding, header, sink_messages

H = timedelta(hours=1)


def _log(lake: str, scope: str = "hourly") -> list[tuple]:
    table = AlertStore(Lake(lake), scope).read_alert_log(T0 - 48 * H, T0 + 48 * H)
    rows = table.to_pylist() if table is not None else []
    return sorted((r["evaluated_at"], r["fingerprint"], r["event"], r["delivery"],
                   r["fired_at"], r["resolved_at"]) for r in rows)


def test_an_incident_over_before_the_latest_hour_is_logged_not_posted(sink, lake):
    burst = finding("error_rate", annotations={"heal_playbook": "restart_gateway"})
    latest = T0 + 6 * H
    assert engine(lake).evaluate([], latest, run_id="scheduled").notifications == []
    outs = []
    for i in range(6):  # the backfill, oldest hour first; the burst held at T0+1h and T0+2h
        now = T0 + i * H
        outs.append(engine(lake).evaluate([burst] if i in (1, 2) else [], now,
                                          run_id=f"backfill-{i}"))
    assert [o.replay for o in outs] == ["gap"] * 6
    assert all(o.notifications == [] and o.resolved == [] for o in outs)
    assert sink_messages(sink) == []
    assert [a["fingerprint"] for a in outs[1].firing] == [burst.fingerprint]
    # The heal path must not act on it: the request says it is stale, and from when.
    [heal] = outs[1].heal_requests
    assert heal["stale"] is True and heal["evaluated_at"] == (T0 + H).isoformat()
    assert outs[1].latest_evaluated_at == latest

    # The report's source: the incident with its hours; it ended by T0+3h (that hour
    # was filled after it, so its end is only known there).
    assert _log(lake) == [
        (T0 + H, burst.fingerprint, "fired", "past", T0 + H, None),
        (T0 + 2 * H, burst.fingerprint, "firing", "past", T0 + H, None),
    ]
    # The live state is what the latest hour said: nothing firing, nothing to resolve.
    nxt = engine(lake).evaluate([], latest + H, run_id="next")
    assert nxt.replay is None and nxt.resolved == [] and nxt.notifications == []
    assert sink_messages(sink) == []


def test_a_gap_filled_out_of_order_knows_when_the_incident_ended(sink, lake):
    burst = finding("error_rate")
    engine(lake).evaluate([], T0 + 6 * H, run_id="scheduled")
    for i in (0, 1, 3, 2):  # max_active_runs: backfilled runs finish in any order
        engine(lake).evaluate([burst] if i in (1, 2) else [], T0 + i * H, run_id=f"b{i}")
    assert _log(lake) == [
        (T0 + H, burst.fingerprint, "fired", "past", T0 + H, None),
        (T0 + 2 * H, burst.fingerprint, "firing", "past", T0 + H, T0 + 3 * H),
    ]
    assert sink_messages(sink) == []


def test_an_alert_still_firing_at_the_latest_hour_is_posted_once(sink, lake):
    """It fires only after two evaluations; the latest hour alone saw it once (pending). The
    backfilled hour before completes the streak: it fires, and is posted exactly once."""
    slow = finding("latency_p95", pending_for=2, annotations={"heal_playbook": "scale_out"})
    latest = T0 + 6 * H
    out = engine(lake).evaluate([slow], latest, run_id="scheduled")
    assert [a["fingerprint"] for a in out.pending] == [slow.fingerprint]
    assert out.notifications == []

    gap = engine(lake).evaluate([slow], latest - H, run_id="backfill-5")
    assert gap.replay == "gap"
    assert [(n.reason, n.status, n.firing) for n in gap.notifications] == [("new", "sent", 1)]
    msgs = sink_messages(sink)
    assert len(msgs) == 1 and "FIRING" in header(msgs[0])
    assert slow.fingerprint in json.dumps(msgs[0]["body"])
    # Its heal request is stale (the backfilled hour): the next live evaluation carries it.
    assert all(h["stale"] for h in gap.heal_requests)

    rerun = engine(lake).evaluate([slow], latest - H, run_id="backfill-5-retry")
    assert rerun.replay == "older" and rerun.notifications == []
    older = engine(lake).evaluate([slow], latest - 2 * H, run_id="backfill-4")
    assert older.replay == "gap" and older.notifications == []
    live = engine(lake).evaluate([slow], latest + H, run_id="next")
    assert [a["fingerprint"] for a in live.firing] == [slow.fingerprint]
    assert live.notifications == []  # Slack has seen it firing
    [heal] = live.heal_requests
    assert heal["stale"] is False and heal["evaluated_at"] == (latest + H).isoformat()
    assert heal["fired_at"] == latest.isoformat()
    assert len(sink_messages(sink)) == 1


def test_an_alert_the_latest_hour_posted_is_not_posted_again(sink, lake):
    down = finding("success_rate")
    latest = T0 + 3 * H
    assert len(engine(lake).evaluate([down], latest, run_id="scheduled").sent) == 1
    for i in (1, 2):
        out = engine(lake).evaluate([down], T0 + i * H, run_id=f"backfill-{i}")
        assert out.replay == "gap" and out.notifications == []
    assert len(sink_messages(sink)) == 1
    rows = [r for r in _log(lake) if r[0] < latest]
    assert rows == [(T0 + H, down.fingerprint, "fired", "still_open", T0 + H, None),
                    (T0 + 2 * H, down.fingerprint, "firing", "still_open", T0 + H, None)]


def test_a_rerun_of_an_evaluated_older_hour_changes_nothing(sink, lake):
    f = finding()
    engine(lake).evaluate([f], T0, run_id="r0")
    engine(lake).evaluate([f], T0 + H, run_id="r1")
    before = _log(lake)
    out = engine(lake).evaluate([], T0, run_id="r0-cleared")
    assert out.replay == "older" and out.notifications == [] and out.heal_requests == []
    assert _log(lake) == before  # its alert log rows (fired, sent) are still there
    assert len(sink_messages(sink)) == 1


def test_a_replay_beyond_the_replay_window_changes_nothing(sink, lake):
    cfg = config(replay_window="1d")
    f = finding()
    engine(lake, cfg).evaluate([], T0 + 30 * H, run_id="latest")
    out = engine(lake, cfg).evaluate([f], T0, run_id="old")
    assert out.replay == "older" and out.notifications == [] and out.firing == []
    assert any("replay window" in w for w in out.warnings)
    assert _log(lake) == []


def test_two_runs_filling_the_same_gap_post_once(sink, lake):
    """The other run commits first (between this run's read and its commit): this one
    re-reads, finds the hour filled and sends nothing."""
    slow = finding(pending_for=2)
    latest = T0 + 2 * H
    engine(lake).evaluate([slow], latest, run_id="scheduled")

    class RacedStore(AlertStore):
        raced = False

        def commit(self, seq, doc, **kwargs):
            if not self.raced:
                self.raced = True
                twin = engine(lake).evaluate([slow], latest - H, run_id="twin")
                assert [n.status for n in twin.notifications] == ["sent"]
            return super().commit(seq, doc, **kwargs)

    out = engine(lake, store=RacedStore(Lake(lake), "hourly")).evaluate(
        [slow], latest - H, run_id="this")
    assert out.replay == "older" and out.notifications == []
    assert len(sink_messages(sink)) == 1


def test_a_state_from_before_the_history_only_fills_gaps_after_it(sink, lake):
    """A state written before evaluations were remembered knows nothing of the times before
    its last evaluation: replays of those change nothing; later gaps are filled."""
    from promptops.alerts.stages import plan_evaluation

    store = AlertStore(Lake(lake), "hourly")
    f = finding()
    plan = plan_evaluation(None, {}, T0 + 2 * H, config(), [], scope="hourly", run_id="old",
                           run_url=None)
    for key in ("evaluations", "history_from"):
        del plan.doc[key]
    store.commit(1, plan.doc)

    out = engine(lake).evaluate([f], T0 + H, run_id="before")
    assert out.replay == "older" and out.notifications == []
    assert any("older than the history" in w for w in out.warnings)
    engine(lake).evaluate([], T0 + 5 * H, run_id="live")
    gap = engine(lake).evaluate([f], T0 + 3 * H, run_id="after")
    assert gap.replay == "gap" and gap.notifications == []
    assert [(r[0], r[3]) for r in _log(lake)] == [(T0 + 3 * H, "past")]


def test_the_daily_report_lists_a_past_incident_as_over_not_firing(sink, lake):
    """A gap fill logs an incident that was over before the latest hour; the daily report's
    incident table must not show it as still firing."""
    from promptops.reports.cost_report import incidents_table

    burst = finding("error_rate")
    engine(lake).evaluate([], T0 + 6 * H, run_id="scheduled")
    for i in (0, 1, 3, 2):
        engine(lake).evaluate([burst] if i in (1, 2) else [], T0 + i * H, run_id=f"b{i}")
    table = incidents_table(Lake(lake), T0 - H, T0 + 23 * H)
    [row] = table.to_dict("records")
    assert row["fingerprint"] == burst.fingerprint
    assert row["status"] == "over"
    assert row["fired_at"] == T0 + H and row["resolved_at"] == T0 + 3 * H
