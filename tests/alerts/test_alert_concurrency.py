"""Two real processes evaluating the same hour post one message; stale claims are retaken."""

from __future__ import annotations

import multiprocessing as mp
from datetime import timedelta

from promptops.alerts.store import AlertStore
from promptops.lake.store import Lake
from promptops.simulator import SlackSinkProcess
from tests.helpers.alerts import T0, config, engine, evaluate_in_subprocess, finding, sink_messages


def test_two_concurrent_processes_post_once(lake):
    ctx = mp.get_context("spawn")  # fresh interpreters, as two Airflow task processes
    nows = [T0.isoformat(), (T0 + timedelta(hours=1)).isoformat()]
    with SlackSinkProcess() as sink:
        barrier, results = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=evaluate_in_subprocess,
                             args=(lake, sink.url, nows, f"run-{i}", barrier, results))
                 for i in range(2)]
        for p in procs:
            p.start()
        outcomes = [results.get(timeout=120) for _ in range(4)]
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
        msgs = sink.messages()
    first = [o for o in outcomes if o["evaluated_at"] == nows[0]]
    statuses = sorted(n["status"] for o in first for n in o["notifications"])
    # One process sent; the other found the evaluation done (or being sent) and did not.
    assert statuses.count("sent") == 1, first
    assert sorted(o["replay"] or "" for o in first) == ["", "same"]
    second = [o for o in outcomes if o["evaluated_at"] == nows[1]]
    assert all(o["notifications"] == [] for o in second)  # nothing new an hour later
    assert len(msgs) == 1
    assert "3 firing" in msgs[0]["body"]["blocks"][0]["text"]["text"]


def test_a_claim_whose_sender_died_is_retaken_after_the_claim_timeout(sink, lake):
    """A run committed its plan and claimed the message, then died before sending: a rerun
    of that evaluation sends it once the claim is older than claim_timeout."""
    store = AlertStore(Lake(lake), "hourly")
    eng = engine(lake, config(claim_timeout="0s"))
    from promptops.alerts.stages import plan_evaluation

    f = finding()
    plan = plan_evaluation(None, {f.fingerprint: f}, T0, eng.config, [], scope="hourly",
                           run_id="died", run_url=None)
    plan.doc["last_outcome"] = plan.outcome.as_dict()
    store.commit(1, plan.doc)
    entry = plan.entries[0]
    assert store.claim(entry["id"], 0, {"run_id": "died"})
    assert sink_messages(sink) == []

    out = eng.evaluate([f], T0, run_id="retry")
    assert out.replay == "same" and [n.status for n in out.sent] == ["sent"]
    assert store.read_claim(entry["id"], 1)["run_id"] == "retry"
    assert len(sink_messages(sink)) == 1
    # Recorded: another rerun sends nothing more.
    again = eng.evaluate([f], T0, run_id="retry-2")
    assert [n.status for n in again.notifications] == ["sent"]
    assert len(sink_messages(sink)) == 1


def test_a_fresh_claim_held_by_another_run_is_left_alone(sink, lake):
    store = AlertStore(Lake(lake), "hourly")
    eng = engine(lake)  # claim_timeout 10 minutes
    from promptops.alerts.stages import plan_evaluation

    f = finding()
    plan = plan_evaluation(None, {f.fingerprint: f}, T0, eng.config, [], scope="hourly",
                           run_id="busy", run_url=None)
    plan.doc["last_outcome"] = plan.outcome.as_dict()
    store.commit(1, plan.doc)
    assert store.claim(plan.entries[0]["id"], 0, {"run_id": "busy"})
    out = eng.evaluate([f], T0, run_id="rerun")
    assert [n.status for n in out.notifications] == ["claimed_elsewhere"]
    # The next hour does not post the group again while that message may be in flight.
    later = eng.evaluate([f], T0 + timedelta(hours=1), run_id="next")
    assert later.notifications == []
    assert sink_messages(sink) == []
