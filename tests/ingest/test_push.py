"""Push delivery against a real local lake and landing area: NDJSON batches go through the
poll's validation and dedupe into the same hourly partitions, replays change nothing, and
only files inside the landing area are read."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pyarrow as pa
import pytest

from promptops.contracts.records import CALLS_SCHEMA, QUARANTINE_SCHEMA
from promptops.errors import RejectShareExceeded
from promptops.ingest.pull import QUARANTINE, ingest_hour
from promptops.ingest.push import (
    BATCHES,
    INVALID_JSON,
    PushBatchMissing,
    PushEventInvalid,
    PushPathRefused,
    collect_events,
    ingest_batch,
    ingest_events,
    is_retryable,
    resolve_batch_path,
)
from promptops.lake.store import Lake
from promptops.platform.client import PlatformClient
from promptops.simulator import SimulatorProcess

H10 = datetime(2026, 11, 20, 10, tzinfo=UTC)
H11 = H10 + timedelta(hours=1)
NOW = datetime(2026, 11, 21, tzinfo=UTC)


def rec(call_id: str, ts: str, **kw) -> dict:
    return {"call_id": call_id, "ts": ts, "user_id": "u1", "team": "search", "app": "chat",
            "model": "gpt-4o", "provider": "openai", "status": "success", "latency_ms": 120.5,
            "prompt_tokens": 100, "completion_tokens": 20, **kw}


@pytest.fixture
def area(tmp_path):
    """A landing area and a lake, both local; ``push(name, lines)`` writes a batch."""
    landing = tmp_path / "landing"
    landing.mkdir()
    lake = Lake(f"file://{tmp_path / 'lake'}")

    class Area:
        root = landing
        uri = f"file://{landing}"

        def __init__(self) -> None:
            self.lake = lake

        def write(self, name: str, lines: list) -> str:
            path = landing / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"".join(
                (ln if isinstance(ln, bytes) else orjson.dumps(ln)) + b"\n" for ln in lines))
            return name

        def ingest(self, name: str, **kw):
            return ingest_batch(name, lake=lake, landing_uri=self.uri, now=NOW, **kw)

    return Area()


def calls(lake: Lake, hour: datetime) -> list[dict]:
    table = lake.read_partition("calls", hour)
    return [] if table is None else table.to_pylist()


def lake_files(root: Path) -> dict[str, tuple[int, int]]:
    """Every file of the lake with its size and modification time (ns)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_good_records_land_in_their_hours(area):
    area.write("b1.ndjson", [rec("a", "2026-11-20T10:05:00Z"),
                             rec("b", "2026-11-20T11:59:59.5+00:00"),
                             # Another offset: converted to UTC, so 10:30Z.
                             rec("c", "2026-11-20T12:30:00+02:00")])
    out = area.ingest("b1.ndjson", run_id="run-1")
    assert out["status"] == "ingested"
    assert (out["received"], out["written"], out["duplicates"], out["rejected"]) == \
        (3, 3, 0, {})
    assert [h["hour"] for h in out["hours"]] == [H10.isoformat(), H11.isoformat()]
    assert [r["call_id"] for r in calls(area.lake, H10)] == ["a", "c"]
    assert [r["call_id"] for r in calls(area.lake, H11)] == ["b"]
    assert out["partitions"] == [str(area.lake.partition_file("calls", H10)),
                                 str(area.lake.partition_file("calls", H11))]
    table = area.lake.read_partition("calls", H10)
    assert table.schema == CALLS_SCHEMA
    assert table.column("ts").to_pylist()[1] == datetime(2026, 11, 20, 10, 30, tzinfo=UTC)
    # The summary is what goes to XCom: plain JSON.
    assert orjson.loads(orjson.dumps(out)) == out
    assert out["manifest"].endswith(f"sha256-{out['sha256']}.parquet")


def test_duplicates_in_the_batch_and_in_the_partition_are_kept_once(area):
    area.write("first.ndjson", [rec("a", "2026-11-20T10:01:00Z", latency_ms=1.0)])
    area.ingest("first.ndjson")
    area.write("second.ndjson", [rec("a", "2026-11-20T10:01:00Z", latency_ms=999.0),
                                 rec("b", "2026-11-20T10:02:00Z", latency_ms=2.0),
                                 rec("b", "2026-11-20T10:02:00Z", latency_ms=777.0),
                                 rec("c", "2026-11-20T10:03:00Z", latency_ms=3.0)])
    out = area.ingest("second.ndjson")
    assert (out["received"], out["written"], out["duplicates"]) == (4, 2, 2)
    rows = calls(area.lake, H10)
    # The row already in the lake wins, then the first copy in the batch.
    assert [(r["call_id"], r["latency_ms"]) for r in rows] == [("a", 1.0), ("b", 2.0),
                                                               ("c", 3.0)]


def test_malformed_lines_and_broken_records_go_to_quarantine(area):
    area.write("bad.ndjson", [
        rec("ok", "2026-11-20T10:10:00Z"),
        b'{"call_id": "trunc", "ts": "2026-11-20T10:1',          # not JSON
        b"[1, 2, 3]",                                            # JSON, not an object
        rec("neg", "2026-11-20T10:20:00Z", latency_ms=-5),
        {k: v for k, v in rec("nomodel", "2026-11-20T11:20:00Z").items() if k != "model"},
        rec("rel", "2026-11-20T11:21:00Z", relevance_score=9),
        rec("badts", "20/11/2026 10:00:00"),
        rec("status", "2026-11-20T10:30:00Z", status="maybe"),
        b"",                                                     # blank: not a record
    ])
    out = area.ingest("bad.ndjson", run_id="run-q")
    assert out["received"] == 8 and out["written"] == 1
    assert out["rejected"] == {INVALID_JSON: 1, "not_an_object": 1, "negative_value": 1,
                               "missing_field": 1, "out_of_range": 1, "bad_timestamp": 1,
                               "invalid_value": 1}
    q10 = area.lake.read_partition(QUARANTINE, H10)
    q11 = area.lake.read_partition(QUARANTINE, H11)
    assert q10.schema == QUARANTINE_SCHEMA
    # Records with a readable ts are quarantined in their hour; the rest under the batch's
    # anchor hour, the hour most of its readable ts fall in (10:00).
    got10 = {(r["reason"], r["field"], r["call_id"]) for r in q10.to_pylist()}
    assert got10 == {(INVALID_JSON, None, None), ("not_an_object", None, None),
                     ("negative_value", "latency_ms", "neg"), ("bad_timestamp", "ts", "badts"),
                     ("invalid_value", "status", "status")}
    assert {(r["reason"], r["field"], r["call_id"]) for r in q11.to_pylist()} == \
        {("missing_field", "model", "nomodel"), ("out_of_range", "relevance_score", "rel")}
    raw = {r["reason"]: r["raw"] for r in q10.to_pylist()}
    assert raw[INVALID_JSON] == '{"call_id": "trunc", "ts": "2026-11-20T10:1'
    assert orjson.loads(raw["negative_value"])["latency_ms"] == -5
    assert set(q10.column("run_id").to_pylist()) == {"run-q"}
    assert q11.column("window_start").to_pylist() == [H11, H11]
    assert [r["call_id"] for r in calls(area.lake, H10)] == ["ok"]
    assert area.lake.read_partition("calls", H11) is None


def test_quarantine_keeps_the_hours_earlier_rows(area):
    old = pa.Table.from_pylist([{"reason": "wrong_type", "field": "user_id", "call_id": "x",
                                 "raw": '{"call_id": "x"}', "window_start": H10,
                                 "window_end": H11, "run_id": "poll", "ingested_at": NOW}],
                               schema=QUARANTINE_SCHEMA)
    area.lake.write_partition(QUARANTINE, H10, old)
    area.write("q.ndjson", [rec("neg", "2026-11-20T10:20:00Z", prompt_tokens=-1)])
    area.ingest("q.ndjson")
    rows = area.lake.read_partition(QUARANTINE, H10).to_pylist()
    assert [(r["call_id"], r["run_id"]) for r in rows] == [("x", "poll"), ("neg", None)]


def test_replaying_a_batch_changes_nothing(area, tmp_path):
    lines = [rec("a", "2026-11-20T10:05:00Z"), rec("b", "2026-11-20T11:05:00Z"),
             rec("a", "2026-11-20T10:05:00Z"), b"not json", rec("n", "2026-11-20T10:06:00Z",
                                                                   completion_tokens=-3)]
    area.write("batch.ndjson", lines)
    first = area.ingest("batch.ndjson", run_id="r1")
    before = lake_files(tmp_path / "lake")

    again = area.ingest("batch.ndjson", run_id="r2")
    # The same bytes under another name are the same batch.
    area.write("copy/batch-again.ndjson", lines)
    copy = area.ingest("copy/batch-again.ndjson", run_id="r3")
    assert lake_files(tmp_path / "lake") == before
    for out in (again, copy):
        assert out["status"] == "already_ingested"
        assert (out["written"], out["partitions"]) == (0, [])
        assert out["first_ingest"]["run_id"] == "r1"
        assert out["first_ingest"]["written"] == first["written"] == 2
        assert out["first_ingest"]["rejected"] == first["rejected"] == \
            {INVALID_JSON: 1, "negative_value": 1}
        assert out["sha256"] == first["sha256"]


def test_a_batch_cut_short_before_its_manifest_completes_without_copies(area):
    """A run that died after writing partitions but before the manifest: ingesting the
    batch again adds nothing twice (dedupe of calls and of quarantine rows)."""
    area.write("b.ndjson", [rec("a", "2026-11-20T10:05:00Z"), b"{oops",
                            rec("n", "2026-11-20T10:06:00Z", prompt_tokens=-1)])
    first = area.ingest("b.ndjson")
    anchor = datetime.fromisoformat(first["hours"][0]["hour"])
    assert area.lake.delete_record(BATCHES, anchor, f"sha256-{first['sha256']}")
    again = area.ingest("b.ndjson")
    assert again["status"] == "ingested"
    assert (again["written"], again["duplicates"]) == (0, 1)
    assert [r["call_id"] for r in calls(area.lake, H10)] == ["a"]
    assert area.lake.read_partition(QUARANTINE, H10).num_rows == 2


def test_records_from_the_future_are_rejected(area):
    area.write("future.ndjson", [rec("now", "2026-11-20T23:58:00Z"),
                                 rec("skew", "2026-11-21T00:04:00Z"),
                                 rec("later", "2026-11-21T00:06:00Z"),
                                 rec("tomorrow", "2026-11-22T09:00:00Z")])
    out = area.ingest("future.ndjson")  # the ingest's clock is NOW (midnight)
    assert out["written"] == 2 and out["rejected"] == {"ts_outside_window": 2}
    assert [r["call_id"] for r in calls(area.lake, NOW)] == ["skew"]


def test_reject_share_fails_after_writing_and_a_rerun_completes(area):
    area.write("mostly-bad.ndjson", [rec("a", "2026-11-20T10:05:00Z"), b"x", b"y"])
    with pytest.raises(RejectShareExceeded, match=r"2 of 3 records .* invalid_json"):
        area.ingest("mostly-bad.ndjson", max_reject_share=0.05)
    assert [r["call_id"] for r in calls(area.lake, H10)] == ["a"]
    assert area.lake.list_partitions(BATCHES) == []  # not done: a rerun does it again
    out = area.ingest("mostly-bad.ndjson", max_reject_share=0.9)
    assert out["status"] == "ingested" and out["duplicates"] == 1
    assert area.lake.read_partition(QUARANTINE, H10).num_rows == 2
    assert area.lake.list_partitions(BATCHES) == [H10]


def test_paths_outside_the_landing_area_are_refused_before_reading(area, tmp_path):
    outside = tmp_path / "outside.ndjson"
    outside.write_bytes(orjson.dumps(rec("x", "2026-11-20T10:05:00Z")) + b"\n")
    (area.root / "sub").mkdir()
    (area.root / "sub" / "link.ndjson").symlink_to(outside)
    cases = {
        "../outside.ndjson": "'..' is not allowed",
        "sub/../../outside.ndjson": "'..' is not allowed",
        str(outside): "absolute path outside the landing area",
        f"file://{outside}": "outside the landing area",
        f"file://{area.root}/../outside.ndjson": "'..' is not allowed",
        f"{area.root}-evil/x.ndjson": "outside the landing area",
        "s3://bucket/landing/x.ndjson": "on s3://, the landing area is on file://",
        "sub/link.ndjson": "symlink",
        "": "non-empty string",
        "a\nb.ndjson": "control characters",
    }
    for path, problem in cases.items():
        with pytest.raises(PushPathRefused) as err:
            area.ingest(path)
        assert problem in str(err.value), (path, str(err.value))
        assert "PROMPTOPS_LANDING_URI" in str(err.value)
        assert not is_retryable(err.value)
    assert not (tmp_path / "lake").exists()  # nothing was read, nothing written
    # Another bucket or a prefix beside the landing area's on S3: refused on the path alone.
    for path, problem in {"s3://other/landing/x.ndjson": "is not the landing area's bucket",
                          "s3://bucket/landing-old/x.ndjson": "outside the landing area",
                          "/tmp/x.ndjson": "object-store landing area"}.items():
        with pytest.raises(PushPathRefused, match=problem):
            resolve_batch_path(path, "s3://bucket/landing")
    assert str(resolve_batch_path("2026/b.ndjson", "s3://bucket/landing/")) == \
        "s3://bucket/landing/2026/b.ndjson"
    # Absolute forms inside the area are fine.
    area.write("in.ndjson", [rec("a", "2026-11-20T10:05:00Z")])
    assert area.ingest(str(area.root / "in.ndjson"))["written"] == 1


def test_a_missing_file_fails_clearly_and_can_be_retried(area):
    with pytest.raises(PushBatchMissing, match=r"does not exist in the landing area") as err:
        area.ingest("2026-11-20/not-yet.ndjson")
    assert is_retryable(err.value)
    area.write("2026-11-20/not-yet.ndjson", [rec("a", "2026-11-20T10:05:00Z")])
    assert area.ingest("2026-11-20/not-yet.ndjson")["written"] == 1


def test_events_name_their_batch_and_the_same_event_twice_ingests_once(area):
    area.write("e.ndjson", [rec("a", "2026-11-20T10:05:00Z"), rec("b", "2026-11-20T10:06:00Z")])
    event = {"extra": {"path": "e.ndjson", "from_rest_api": True}, "timestamp": "t"}
    out = ingest_events([event, event], lake=area.lake, landing_uri=area.uri, run_id="r")
    assert [o["status"] for o in out] == ["ingested", "already_ingested"]
    assert [(o["event_at"], o["via"]) for o in out] == [("t", "triggered")] * 2
    assert len(calls(area.lake, H10)) == 2

    with pytest.raises(PushEventInvalid, match=r"extra must hold 'path'.*keys \['file'\]"):
        ingest_events([{"extra": {"file": "e.ndjson", "from_rest_api": True}}],
                      lake=area.lake, landing_uri=area.uri)
    with pytest.raises(PushEventInvalid, match="no asset event"):
        ingest_events([], lake=area.lake, landing_uri=area.uri)
    # Every batch is tried; the retryable failure (a missing file) is the one raised.
    area.write("f.ndjson", [rec("c", "2026-11-20T10:07:00Z")])
    with pytest.raises(PushBatchMissing):
        ingest_events([{"extra": {"path": "../x"}}, {"extra": {"path": "missing.ndjson"}},
                       {"extra": {"path": "f.ndjson"}}], lake=area.lake, landing_uri=area.uri)
    assert [r["call_id"] for r in calls(area.lake, H10)] == ["a", "b", "c"]


def test_a_run_also_takes_the_announcements_airflow_did_not_hand_it():
    """Airflow gives a run only the events up to its queue entry's time; the asset's later
    events are read too, and an event seen both ways counts once."""
    e1 = {"extra": {"path": "a.ndjson", "from_rest_api": True},
          "timestamp": "2026-11-20T10:00:00.100000+00:00"}
    e2 = {"extra": {"path": "a.ndjson", "from_rest_api": True},
          "timestamp": "2026-11-20T10:00:00.200000+00:00"}
    e3 = {"extra": {"path": "b.ndjson"}, "timestamp": "2026-11-20T10:00:01+00:00"}
    same_as_e1 = {**e1, "timestamp": datetime(2026, 11, 20, 10, 0, 0, 100000, tzinfo=UTC)}
    got = collect_events([e1], [e3, same_as_e1, e2])
    assert [(e["extra"]["path"], e["via"]) for e in got] == [
        ("a.ndjson", "triggered"), ("a.ndjson", "announced later"),
        ("b.ndjson", "announced later")]
    assert got[0]["timestamp"] == e1["timestamp"]


def test_a_batch_with_no_readable_ts_is_quarantined_under_the_files_hour(area):
    area.write("junk.ndjson", [b"nope", {"call_id": "q"}])
    stamp = datetime(2026, 11, 19, 7, 42, tzinfo=UTC).timestamp()
    os.utime(area.root / "junk.ndjson", (stamp, stamp))
    out = area.ingest("junk.ndjson")
    hour = datetime(2026, 11, 19, 7, tzinfo=UTC)
    assert out["rejected"] == {INVALID_JSON: 1, "missing_field": 1}
    assert area.lake.read_partition(QUARANTINE, hour).num_rows == 2
    assert area.ingest("junk.ndjson")["status"] == "already_ingested"


# -- the same records through the poll and through push -------------------------------------


@pytest.fixture(scope="module")
def sim():
    with SimulatorProcess("--calls-per-hour", "3000", "--malformed-rate", "0.02",
                          "--duplicate-rate", "0.02", api_key="push-key") as proc:
        yield proc


def plain(table: pa.Table | None) -> list[dict]:
    """Rows as Python values, in call_id order (dictionary chunks differ between writers)."""
    return sorted(table.to_pylist(), key=lambda r: (r["call_id"] or "", r.get("raw") or ""))


def test_push_writes_what_the_poll_writes_for_the_same_records(sim, tmp_path):
    polled, pushed = Lake(f"file://{tmp_path / 'polled'}"), Lake(f"file://{tmp_path / 'pushed'}")
    landing = tmp_path / "landing"
    landing.mkdir()
    with PlatformClient(sim.url, sim.api_key) as client:
        records = [r for page in client.iter_call_record_pages(H10, H11, limit=1000)
                   for r in page]
        got = ingest_hour(client, polled, H10, run_id="r")
    (landing / "hour10.ndjson").write_bytes(b"\n".join(orjson.dumps(r) for r in records))
    out = ingest_batch("hour10.ndjson", lake=pushed, landing_uri=f"file://{landing}",
                       run_id="r", now=NOW)
    assert got.duplicates > 0 and got.rejected_total > 0

    a, b = polled.read_partition("calls", H10), pushed.read_partition("calls", H10)
    assert b.schema == a.schema == CALLS_SCHEMA
    assert a.num_rows > 2500
    assert b.to_pylist() == a.to_pylist()  # same rows, same values, same order

    # The poll rejects a record whose ts lies outside the hour it asked for; a pushed batch
    # has no such window, so that record lands in its own (earlier) hour instead.
    qa = [r for r in plain(polled.read_partition(QUARANTINE, H10))
          if r["reason"] != "ts_outside_window"]
    moved = [orjson.loads(r["raw"]) for r in plain(polled.read_partition(QUARANTINE, H10))
             if r["reason"] == "ts_outside_window"]
    qb = plain(pushed.read_partition(QUARANTINE, H10))
    assert len(qa) > 10
    assert [(r["reason"], r["field"], r["call_id"], r["raw"]) for r in qb] == \
        [(r["reason"], r["field"], r["call_id"], r["raw"]) for r in qa]
    assert moved, "the simulator served no record outside its window"
    earlier = pushed.read_range("calls", H10 - timedelta(hours=8), H10)
    assert {r["call_id"] for r in moved} <= set(earlier.column("call_id").to_pylist())
    assert out["written"] == a.num_rows + len(moved)
    assert out["duplicates"] == got.duplicates


# -- a landing area on S3 ------------------------------------------------------------------


def test_a_landing_area_on_s3(s3_landing, tmp_path):
    lake = Lake(f"file://{tmp_path / 'lake'}")
    body = b"\n".join(orjson.dumps(r) for r in (rec("s1", "2026-11-20T10:05:00Z"),
                                                rec("s2", "2026-11-20T11:05:00Z")))
    s3_landing.put_object(Bucket="push-landing", Key="landing/2026-11-20/b1.ndjson", Body=body)
    landing = "s3://push-landing/landing"
    out = ingest_batch("2026-11-20/b1.ndjson", lake=lake, landing_uri=landing, now=NOW)
    assert out["batch"] == "s3://push-landing/landing/2026-11-20/b1.ndjson"
    assert out["written"] == 2
    assert [r["call_id"] for r in calls(lake, H10)] == ["s1"]
    again = ingest_batch("s3://push-landing/landing/2026-11-20/b1.ndjson", lake=lake,
                         landing_uri=landing, now=NOW)
    assert again["status"] == "already_ingested"
    with pytest.raises(PushBatchMissing):
        ingest_batch("2026-11-20/b2.ndjson", lake=lake, landing_uri=landing, now=NOW)
