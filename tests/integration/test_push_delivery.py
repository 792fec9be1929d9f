"""Push delivery for real: the README's stack (airflow standalone, its scheduler and REST API;
the stack tests' shared one), a batch written into the landing area and announced twice as an asset event through
Airflow's REST API, exactly as a platform would. The asset-triggered runs of promptops_push
put each record in its hour's partition once; bad announcements fail with their reason."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import orjson
import pytest

from tests.helpers.stack import AirflowRest, SharedStack

PUSH = "promptops_push"
TASK = "ingest_pushed_batches"
LANDING = "promptops://landing/call_records"


def rec(call_id: str, ts: datetime, **kw) -> dict:
    return {"call_id": call_id, "ts": ts.isoformat().replace("+00:00", "Z"),
            "user_id": "user-001", "team": "search", "app": "search-qa", "model": "gpt-4o",
            "provider": "openai", "status": "success", "latency_ms": 350.0,
            "prompt_tokens": 400, "completion_tokens": 60, **kw}


class PushApi:
    """The REST calls a pushing platform makes, and what the test reads back."""

    def __init__(self, api: AirflowRest) -> None:
        self.api = api

    def asset_id(self, uri: str) -> int:
        doc = self.api._call("GET", "/assets", params={"uri_pattern": uri})
        ids = [a["id"] for a in doc["assets"] if a["uri"] == uri]
        assert len(ids) == 1, doc
        return ids[0]

    def announce(self, asset_id: int, extra: dict) -> dict:
        return self.api._call("POST", "/assets/events",
                              json={"asset_id": asset_id, "extra": extra})

    def runs(self) -> list[dict]:
        return self.api._call("GET", f"/dags/{PUSH}/dagRuns",
                              params={"limit": 100, "order_by": "id"})["dag_runs"]

    def wait_runs(self, done: int, timeout: float = 300) -> list[dict]:
        """Wait until at least ``done`` runs exist and none is still going."""
        deadline = time.monotonic() + timeout
        runs: list[dict] = []
        while time.monotonic() < deadline:
            runs = self.runs()
            if len(runs) >= done and all(r["state"] in ("success", "failed") for r in runs):
                return runs
            time.sleep(3)
        raise AssertionError(f"{PUSH}: wanted {done} finished runs, have "
                             f"{[(r['dag_run_id'], r['state']) for r in runs]}")

    def wait_summaries(self, count: int, timeout: float = 300) -> tuple[list[dict], list[dict]]:
        """Wait until finished runs have handled ``count`` events (the scheduler may fold
        events into one run or, with a run already going, start another one after it)."""
        deadline = time.monotonic() + timeout
        while True:
            runs = self.wait_runs(1, timeout=max(deadline - time.monotonic(), 1))
            summaries = [s for r in runs if r["state"] == "success"
                         for s in self.api.xcom(PUSH, r["dag_run_id"], TASK)]
            if len(summaries) >= count or time.monotonic() > deadline:
                return runs, summaries
            time.sleep(3)

    def log(self, run_id: str) -> str:
        doc = self.api._call("GET", f"/dags/{PUSH}/dagRuns/{quote(run_id, safe='')}/"
                                    f"taskInstances/{TASK}/logs/1",
                             params={"full_content": "true"},
                             headers={"Accept": "application/json"})
        return json.dumps(doc["content"])


@pytest.fixture(scope="module")
def stack(airflow_stack: SharedStack):
    """The shared stack: the push DAG runs, its landing area, its lake."""
    return airflow_stack, airflow_stack.landing_dir, airflow_stack.lake


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_batch_announced_twice_lands_once(stack):
    stack, landing, lake = stack
    push = PushApi(stack.api)
    h1 = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    h2 = h1 + timedelta(hours=1)
    good = [rec(f"push-{i:03d}", h1 + timedelta(minutes=i)) for i in range(40)] + \
           [rec(f"push-{i:03d}", h2 + timedelta(minutes=i - 40)) for i in range(40, 60)]
    lines = [orjson.dumps(r) for r in good]
    lines.insert(10, orjson.dumps(good[3]))           # the platform sent one record twice
    lines.insert(20, b'{"call_id": "cut-off", "ts"')   # and cut one line short
    lines.insert(30, orjson.dumps(rec("neg", h1 + timedelta(minutes=5), prompt_tokens=-1)))
    (landing / "2026").mkdir()
    (landing / "2026" / "batch-0001.ndjson").write_bytes(b"\n".join(lines) + b"\n")

    asset_id = push.asset_id(LANDING)
    event = {"path": "2026/batch-0001.ndjson", "batch_id": "0001"}
    first = push.announce(asset_id, event)
    push.announce(asset_id, event)  # a platform retrying its announcement
    assert first["extra"]["path"] == event["path"]

    runs, summaries = push.wait_summaries(2)
    assert {r["state"] for r in runs} == {"success"}, [stack.api.task_states(PUSH, r[
        "dag_run_id"]) for r in runs]
    assert {r["run_type"] for r in runs} == {"asset_triggered"}
    # Both events were handled (in one run, or in two if the scheduler saw them apart).
    assert sorted(s["status"] for s in summaries) == ["already_ingested", "ingested"]
    done = next(s for s in summaries if s["status"] == "ingested")
    assert (done["received"], done["written"], done["duplicates"]) == (63, 60, 1)
    assert done["rejected"] == {"invalid_json": 1, "negative_value": 1}

    # Each record once, in its own hour.
    ids1 = lake.read_partition("calls", h1).column("call_id").to_pylist()
    ids2 = lake.read_partition("calls", h2).column("call_id").to_pylist()
    assert ids1 == [r["call_id"] for r in good[:40]]
    assert ids2 == [r["call_id"] for r in good[40:]]
    quarantine = lake.read_partition("quarantine", h1).to_pylist()
    assert sorted((q["reason"], q["call_id"]) for q in quarantine) == \
        [("invalid_json", None), ("negative_value", "neg")]

    # The run published the calls asset with the partitions it wrote.
    calls_id = push.asset_id("promptops://lake/calls")
    events = stack.api._call("GET", "/assets/events", params={"asset_id": calls_id})
    published = [e["extra"] for e in events["asset_events"] if e["source_dag_id"] == PUSH]
    assert published and published[0]["source"] == "push"
    assert sorted({p for e in published for p in e["partitions"]}) == sorted(
        [str(lake.partition_file("calls", h1)), str(lake.partition_file("calls", h2))])

    # Announcements that name no file in the landing area fail at once, saying why.
    for n, (extra, says) in enumerate([
            ({"path": "../escape.ndjson"}, "'..' is not allowed"),
            ({"file": "2026/batch-0001.ndjson"}, "extra must hold 'path'")], start=2):
        push.announce(asset_id, extra)
        runs = push.wait_runs(len(runs) + 1)
        bad = runs[-1]
        assert bad["state"] == "failed", bad
        assert stack.api.task_states(PUSH, bad["dag_run_id"])[TASK] == "failed"
        assert says in push.log(bad["dag_run_id"]), n
    # Nothing changed in the lake.
    assert lake.read_partition("calls", h1).num_rows == 40
    assert lake.read_partition("calls", h2).num_rows == 20
