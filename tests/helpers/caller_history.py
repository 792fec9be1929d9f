"""A nightly batch in the health sensor's rows: call records per 5-minute window, turned
into the sensor's real rows (``metrics.health.recent_call_rows``) and stored in a lake as the
sensor stores them (one ``health_metrics`` record file per evaluation)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import pyarrow as pa

from promptops.lake.store import Lake
from promptops.metrics.health import recent_call_rows, write_health_metrics

#: Today: the day under test; the batch runs 02:00-03:00 every day.
TODAY = datetime(2026, 11, 20, tzinfo=UTC)
BATCH_USER = "svc-nightly-batch"
BATCH_START, BATCH_END = 2, 3
#: 70 calls a minute (below the 100 calls/min abuse line) of 2,100 tokens each:
#: 147,000 tokens a minute, above token_burst_5m's warning line (100,000).
BATCH_RATE = 70
BATCH_TOKENS = 2_100
STEP = timedelta(minutes=5)

# The shipped per-caller health rules, judged on the value itself (the rows' own interval is
# the rules' business, not these tests').
CALLS_RULE = {"kind": "threshold", "source": "health", "window": "5m",
              "metric": "peak_calls_per_minute", "direction": "above", "unit": "calls/min",
              "warning": 100, "critical": 300, "min_samples": 1, "dimensions": ["user"],
              "use_bound": False}
TOKENS_RULE = {**CALLS_RULE, "metric": "tokens_per_minute_peak", "unit": "tokens",
               "warning": 100_000, "critical": 300_000}


def window_calls(at: datetime, users: dict[str, tuple[int, int]]) -> pa.Table:
    """Call records of the 5 minutes before ``at``: per user (calls per minute, tokens per
    call), spread evenly over each minute; all successful."""
    ts, user_ids, prompt, completion = [], [], [], []
    for user, (per_minute, tokens) in users.items():
        for minute in range(5):
            start = at - STEP + timedelta(minutes=minute)
            for i in range(per_minute):
                ts.append(start + timedelta(seconds=60 * i / per_minute))
                user_ids.append(user)
                prompt.append(tokens - tokens // 4)
                completion.append(tokens // 4)
    n = len(ts)
    return pa.table({
        "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
        "user_id": user_ids, "status": ["success"] * n, "latency_ms": [300.0] * n,
        "prompt_tokens": pa.array(prompt, pa.int64()),
        "completion_tokens": pa.array(completion, pa.int64()),
    })


def health_rows(at: datetime, users: dict[str, tuple[int, int]]) -> pa.Table:
    """The sensor's rows for an evaluation at ``at`` (a background caller always there)."""
    return recent_call_rows(window_calls(at, {"alice": (3, 400), **users}), at)


def batch_users(at: datetime, rate: int = BATCH_RATE) -> dict[str, tuple[int, int]]:
    """The batch's callers at ``at``: the batch during its hour, else nobody."""
    inside = BATCH_START <= (at - STEP).hour < BATCH_END
    return {BATCH_USER: (rate, BATCH_TOKENS)} if inside else {}


def evaluations(day: datetime, hours: Iterable[tuple[int, int]]) -> list[datetime]:
    """Evaluation times (every 5 minutes) of ``day`` in each ``[from_hour, to_hour)``."""
    out = []
    for lo, hi in hours:
        t = day + timedelta(hours=lo) + STEP
        while t <= day + timedelta(hours=hi):
            out.append(t)
            t += STEP
    return out


#: The hours the tests' sensor ran each day: around the batch, and mid-afternoon.
SENSOR_HOURS = ((1, 4), (13, 16))


def write_batch_days(lake: Lake, days: int, rate: int = BATCH_RATE,
                     hours: Iterable[tuple[int, int]] = SENSOR_HOURS) -> None:
    """``days`` previous days of the sensor's evaluations with the nightly batch in them."""
    hours = list(hours)
    for k in range(1, days + 1):
        for at in evaluations(TODAY - timedelta(days=k), hours):
            write_health_metrics(lake, at, health_rows(at, batch_users(at, rate)))
