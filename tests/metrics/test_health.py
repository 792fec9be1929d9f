"""The API and abuse rows: /health against a real simulator, the 5-minute rows on a
hand-built calls table, abuse end to end on a flooding user, and the health_metrics store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest

from promptops.contracts import metric_table as mt
from promptops.contracts.records import validate_page
from promptops.lake.store import Lake
from promptops.metrics import health
from promptops.platform.client import PlatformClient
from tests.helpers.health import FLOODER, NOW
from tests.helpers.lake import writes_wait_for_each_other

END = datetime(2026, 11, 20, 16, 35, tzinfo=UTC)


def record(i: int, at: datetime, user: str = "u1", status: str = "success",
           latency: float = 100.0, tokens: tuple[int, int] = (10, 5)) -> dict:
    return {"call_id": f"c{i}", "ts": at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "user_id": user,
            "app": "chat", "model": "m", "status": status, "latency_ms": latency,
            "prompt_tokens": tokens[0], "completion_tokens": tokens[1]}


def calls(records: list[dict]) -> pa.Table:
    page = validate_page(records, END - timedelta(hours=1), END + timedelta(hours=1))
    assert not page.rejects
    return page.good


def rows_of(table: pa.Table) -> dict[tuple[str, str, str], dict]:
    return {(r["metric"], r["dimension"], r["slice"]): r for r in table.to_pylist()}


def test_five_minute_rows_on_a_hand_built_table() -> None:
    start = END - timedelta(minutes=5)
    recs = [record(i, start + timedelta(seconds=30 * i), latency=float(10 * (i + 1)),
                   status="error" if i in (2, 5) else "success") for i in range(10)]
    # Outside the window on both sides: must not count.
    recs += [record(100, start - timedelta(seconds=1), latency=1e6, status="error"),
             record(101, END, latency=1e6, status="error")]
    rows = rows_of(health.recent_call_rows(calls(recs), END))
    assert rows[(mt.REQUESTS, "overall", "*")]["value"] == 10
    sr = rows[(mt.SUCCESS_RATE, "overall", "*")]
    assert sr["value"] == pytest.approx(0.8) and sr["samples"] == 10
    assert sr["lower"] < 0.8 < sr["upper"]
    assert sr["lower"] == pytest.approx(0.4902, abs=1e-3)  # Wilson 95% for 8 of 10
    er = rows[(mt.ERROR_RATE, "overall", "*")]
    assert er["value"] == pytest.approx(0.2)
    assert er["lower"] == pytest.approx(1 - sr["upper"])
    latencies = np.arange(1, 11) * 10.0
    assert rows[(mt.LATENCY_MEAN_MS, "overall", "*")]["value"] == pytest.approx(55.0)
    assert rows[(mt.LATENCY_P95_MS, "overall", "*")]["value"] == \
        pytest.approx(np.percentile(latencies, 95))
    assert {r["hour"] for r in rows.values()} == {END}


def test_an_empty_window_has_requests_zero_only() -> None:
    table = health.recent_call_rows(calls([record(1, END - timedelta(hours=1))]), END)
    assert table.schema == mt.METRICS_SCHEMA
    assert table.to_pylist() == [{"hour": END, "metric": "requests", "dimension": "overall",
                                  "slice": "*", "value": 0.0, "samples": 0, "lower": None,
                                  "upper": None}]


def test_abuse_rows_take_each_users_busiest_minute() -> None:
    base = END - timedelta(minutes=5)
    recs = []
    # u-flood: 3 calls in minute 1, 7 in minute 3 (of 500 tokens each).
    for k in range(3):
        recs.append(record(len(recs), base + timedelta(minutes=1, seconds=k), user="u-flood",
                           tokens=(400, 100)))
    for k in range(7):
        recs.append(record(len(recs), base + timedelta(minutes=3, seconds=k), user="u-flood",
                           tokens=(400, 100)))
    # u-quiet: one call a minute, but one huge prompt.
    for m in range(5):
        recs.append(record(len(recs), base + timedelta(minutes=m, seconds=59), user="u-quiet",
                           tokens=(20_000 if m == 2 else 10, 5)))
    rows = rows_of(health.recent_call_rows(calls(recs), END))
    assert rows[(mt.PEAK_CALLS_PER_MINUTE, "user", "u-flood")]["value"] == 7
    assert rows[(mt.PEAK_CALLS_PER_MINUTE, "user", "u-flood")]["samples"] == 10
    assert rows[(mt.PEAK_CALLS_PER_MINUTE, "user", "u-quiet")]["value"] == 1
    assert rows[(health.TOKENS_PER_MINUTE_PEAK, "user", "u-flood")]["value"] == 3500
    assert rows[(health.TOKENS_PER_MINUTE_PEAK, "user", "u-quiet")]["value"] == 20_005


def test_a_table_without_the_needed_columns_is_refused() -> None:
    with pytest.raises(ValueError, match="latency_ms"):
        health.recent_call_rows(calls([record(1, END)]).drop_columns(["latency_ms"]), END)


def test_api_health_rows_against_the_simulator(client: PlatformClient) -> None:
    rows = rows_of(health.api_health_rows(client, NOW))
    assert rows[(health.API_UP, "overall", "*")]["value"] == 1.0
    assert rows[(health.API_HEALTH_LATENCY_MS, "overall", "*")]["value"] > 0


def test_an_unreachable_api_is_down_not_an_error() -> None:
    with PlatformClient("http://127.0.0.1:9", "k", max_retries=0, connect_timeout=0.5) as c:
        rows = rows_of(health.api_health_rows(c, NOW))
    assert rows[(health.API_UP, "overall", "*")]["value"] == 0.0
    assert rows[(health.API_HEALTH_LATENCY_MS, "overall", "*")]["value"] is None


def test_a_flooding_user_shows_up_end_to_end(client: PlatformClient) -> None:
    table = health.fetch_recent_calls(client, NOW)
    assert table.num_rows > 0
    ids = table.column("call_id").to_pylist()
    assert len(ids) == len(set(ids))
    ts = table.column("ts").to_pylist()
    assert min(ts) >= NOW - timedelta(minutes=5) and max(ts) < NOW
    rows = rows_of(health.recent_call_rows(table, NOW))
    peaks = {s: r["value"] for (m, d, s), r in rows.items()
             if m == mt.PEAK_CALLS_PER_MINUTE and d == "user"}
    assert peaks[FLOODER] >= 100  # the seed's abuse threshold
    others = [v for u, v in peaks.items() if u != FLOODER]
    assert others and max(others) < 100
    assert (mt.SUCCESS_RATE, "overall", "*") in rows


def test_health_metrics_keep_other_evaluations_and_replace_a_rerun(tmp_path) -> None:
    lake = Lake(f"file://{tmp_path}")
    t1, t2 = datetime(2026, 11, 20, 16, 5, tzinfo=UTC), datetime(2026, 11, 20, 16, 10, tzinfo=UTC)
    first = health.recent_call_rows(calls([record(1, t1 - timedelta(minutes=1))]), t1)
    second = health.recent_call_rows(calls([record(2, t2 - timedelta(minutes=1)),
                                            record(3, t2 - timedelta(minutes=2))]), t2)
    health.write_health_metrics(lake, t1, first)
    health.write_health_metrics(lake, t2, second)
    health.write_health_metrics(lake, t2, second)  # a rerun: replaces its own rows
    stored = health.read_health_metrics(lake, t1, t2 + timedelta(minutes=1))
    assert stored.num_rows == first.num_rows + second.num_rows
    by_time = {}
    for r in stored.to_pylist():
        by_time.setdefault(r["hour"], []).append(r)
    assert sorted(by_time) == [t1, t2]
    req = {t: next(r["value"] for r in rs if r["metric"] == "requests")
           for t, rs in by_time.items()}
    assert req == {t1: 1, t2: 2}
    # A rerun of t1 with different rows replaces t1's rows and leaves t2's alone.
    health.write_health_metrics(lake, t1, first.slice(0, 1))
    stored = health.read_health_metrics(lake, t1, t2 + timedelta(minutes=1))
    assert stored.num_rows == 1 + second.num_rows


def test_rows_of_another_time_are_refused(tmp_path) -> None:
    lake = Lake(f"file://{tmp_path}")
    t = datetime(2026, 11, 20, 16, 5, tzinfo=UTC)
    rows = health.recent_call_rows(calls([]), t)
    with pytest.raises(ValueError, match="evaluation time"):
        health.write_health_metrics(lake, t + timedelta(minutes=5), rows)


def test_overlapping_health_evaluations_keep_each_others_rows(tmp_path, monkeypatch) -> None:
    """Two 5-minute evaluations of one hour written by overlapping runs (a backfill next to
    the schedule): each has read what it reads before either writes; both keep their rows."""
    import threading

    writes_wait_for_each_other(monkeypatch)
    lake = Lake(f"file://{tmp_path}")
    t1, t2 = datetime(2026, 11, 20, 16, 5, tzinfo=UTC), datetime(2026, 11, 20, 16, 10, tzinfo=UTC)
    rows = {t1: health.recent_call_rows(calls([record(1, t1 - timedelta(minutes=1))]), t1),
            t2: health.recent_call_rows(calls([record(2, t2 - timedelta(minutes=1)),
                                               record(3, t2 - timedelta(minutes=2))]), t2)}
    writers = [threading.Thread(target=health.write_health_metrics, args=(lake, at, table))
               for at, table in rows.items()]
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=120)
    monkeypatch.undo()
    stored = health.read_health_metrics(lake, t1, t2 + timedelta(minutes=1))
    req = {r["hour"]: r["value"] for r in stored.to_pylist() if r["metric"] == "requests"}
    assert req == {t1: 1, t2: 2}


def test_five_minute_rows_carry_their_sampling_intervals() -> None:
    """Health rows are judged with their sampling error like the hourly ones: requests and
    errors Poisson, latency mean Student-t, p95 order statistics, peaks Poisson."""
    from scipy import stats as sps

    start = END - timedelta(minutes=5)
    rng = np.random.default_rng(3)
    lat = rng.lognormal(6.5, 0.9, 150)
    recs = [record(i, start + timedelta(seconds=2 * i), latency=float(lat[i]),
                   status="error" if i < 3 else "success", user="u1" if i % 3 else "u2",
                   tokens=(1000, 200)) for i in range(150)]
    rows = rows_of(health.recent_call_rows(calls(recs), END))
    req = rows[(mt.REQUESTS, "overall", "*")]
    assert (req["lower"], req["upper"]) == pytest.approx(
        (sps.chi2.ppf(0.025, 300) / 2, sps.chi2.ppf(0.975, 302) / 2))
    err = rows[(mt.ERRORS, "overall", "*")]
    assert err["lower"] < 3 < err["upper"]
    mean = rows[(mt.LATENCY_MEAN_MS, "overall", "*")]
    half = sps.t.ppf(0.975, 149) * lat.std(ddof=1) / np.sqrt(150)
    assert (mean["lower"], mean["upper"]) == pytest.approx((lat.mean() - half, lat.mean() + half))
    p95 = rows[(mt.LATENCY_P95_MS, "overall", "*")]
    assert p95["lower"] < p95["value"] < p95["upper"]
    # u1 makes 2 of every 3 calls at one call per 2 s: 20 calls in its busiest minute.
    peak = rows[(mt.PEAK_CALLS_PER_MINUTE, "user", "u1")]
    assert peak["value"] == 20
    assert (peak["lower"], peak["upper"]) == pytest.approx(
        (sps.chi2.ppf(0.025, 40) / 2, sps.chi2.ppf(0.975, 42) / 2))
    tokens = rows[(health.TOKENS_PER_MINUTE_PEAK, "user", "u1")]
    assert tokens["value"] == 20 * 1200
    assert (tokens["lower"], tokens["upper"]) == pytest.approx(
        (peak["lower"] * 1200, peak["upper"] * 1200))
