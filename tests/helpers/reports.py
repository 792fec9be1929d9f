"""A fixture lake for the daily report: small hourly metric tables with known totals.

The report day is 2026-11-09 (UTC). Every hour of the month before it (1-8 November) costs
$2.00 (gpt-4o $1.50, claude-3-haiku $0.50) and uses 8,000 tokens, except 5 November, which
lacks hours 10 and 11. The report day costs $3.00 an hour (gpt-4o $2.00, claude-3-haiku
$1.00), uses 10,000 tokens an hour, has an unpriced self-hosted model, and lacks hours 03,
04 and 17. So, with missing hours never counted as zero:

- day cost 21 x 3 = $63; the day before on the same 21 hours 21 x 2 = $42 (+50%);
- 7-day average on the same hours: the 6 complete days, $42 each (+50%);
- month to date 8 x 48 - 2 x 2 + 63 = $443 over 8 x 24 - 2 + 21 = 211 hours, projected
  443 / 211 x 720 hours at month end.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pyarrow as pa

from promptops.alerts.store import AlertStore
from promptops.contracts import metric_table as mt
from promptops.lake.store import Lake

DAY = date(2026, 11, 9)
DAY_START = datetime(2026, 11, 9, tzinfo=UTC)
MISSING = (3, 4, 17)
INCOMPLETE_DAY = date(2026, 11, 5)
INCOMPLETE_DAY_MISSING = (10, 11)
UNPRICED_MODEL = "llama-selfhosted"
#: A clock after the report day, so no hour of it is pending.
NOW = datetime(2026, 11, 10, 6, tzinfo=UTC)

EXPECTED_COST = 63.0
EXPECTED_MTD = 443.0
EXPECTED_MTD_HOURS = 211
EXPECTED_PROJECTION = 443.0 / 211 * 30 * 24


def _row(hour: datetime, metric: str, dimension: str, slice_: str, value: float | None,
         samples: int) -> dict:
    return {"hour": hour, "metric": metric, "dimension": dimension, "slice": slice_,
            "value": value, "samples": samples, "lower": None, "upper": None}


def hour_table(hour: datetime, *, report_day: bool) -> pa.Table:
    """One hour's metrics in the tidy layout (overall, model, team, app, user, quality)."""
    if report_day:
        models = {"gpt-4o": (2.0, 60, 6000), "claude-3-haiku": (1.0, 40, 3000)}
        teams = {"search": (2.0, 60, 6000), "support": (1.0, 40, 3000)}
        apps = {"chat": (2.5, 80, 8000), "search-ui": (0.5, 20, 1000)}
        users = {"user-001": (1.5, 30, 3000), "user-002": (1.0, 30, 3000),
                 "user-003": (0.25, 20, 2000), mt.OTHER_SLICE: (0.25, 20, 1000)}
        unpriced_requests, unpriced_tokens, tokens = 5, 1000, 10_000
    else:
        models = {"gpt-4o": (1.5, 50, 5000), "claude-3-haiku": (0.5, 30, 3000)}
        teams = {"search": (1.5, 50, 5000), "support": (0.5, 30, 3000)}
        apps = {"chat": (2.0, 80, 8000)}
        users = {"user-001": (1.0, 40, 4000), "user-002": (1.0, 40, 4000)}
        unpriced_requests, unpriced_tokens, tokens = 0, 0, 8_000
    requests = sum(r for _, r, _ in models.values()) + unpriced_requests
    cost = sum(c for c, _, _ in models.values())
    rows = [
        _row(hour, mt.COST_USD, mt.OVERALL, mt.ALL, cost, requests - unpriced_requests),
        _row(hour, mt.TOTAL_TOKENS, mt.OVERALL, mt.ALL, tokens, requests),
        _row(hour, mt.REQUESTS, mt.OVERALL, mt.ALL, requests, requests),
        _row(hour, mt.UNPRICED_REQUESTS, mt.OVERALL, mt.ALL, unpriced_requests, requests),
        _row(hour, mt.UNPRICED_TOKENS, mt.OVERALL, mt.ALL, unpriced_tokens, unpriced_requests),
    ]
    for dimension, slices in (("model", models), ("team", teams), ("app", apps),
                              ("user", users)):
        for name, (c, r, t) in slices.items():
            rows += [_row(hour, mt.COST_USD, dimension, name, c, r),
                     _row(hour, mt.REQUESTS, dimension, name, r, r),
                     _row(hour, mt.TOTAL_TOKENS, dimension, name, t, r)]
    if unpriced_requests:
        rows += [
            _row(hour, mt.COST_USD, "model", UNPRICED_MODEL, None, 0),
            _row(hour, mt.REQUESTS, "model", UNPRICED_MODEL, unpriced_requests,
                 unpriced_requests),
            _row(hour, mt.TOTAL_TOKENS, "model", UNPRICED_MODEL, unpriced_tokens,
                 unpriced_requests),
            _row(hour, mt.UNPRICED_REQUESTS, "model", UNPRICED_MODEL, unpriced_requests,
                 unpriced_requests),
            _row(hour, mt.UNPRICED_TOKENS, "model", UNPRICED_MODEL, unpriced_tokens,
                 unpriced_requests),
        ]
    # Intent accuracy 90% on 100 labelled calls, except a bad hour at noon (50%).
    accuracy = 0.5 if hour.hour == 12 and report_day else 0.9
    rows += [_row(hour, mt.INTENT_ACCURACY, mt.OVERALL, mt.ALL, accuracy, 100),
             _row(hour, mt.RELEVANCE_MEAN, mt.OVERALL, mt.ALL, 4.2, 50)]
    return pa.Table.from_pylist(rows, schema=mt.METRICS_SCHEMA)


def build_fixture_lake(uri: str) -> Lake:
    lake = Lake(uri)
    for d in range(1, DAY.day + 1):
        day = date(2026, 11, d)
        for h in range(24):
            if day == DAY and h in MISSING:
                continue
            if day == INCOMPLETE_DAY and h in INCOMPLETE_DAY_MISSING:
                continue
            hour = datetime(day.year, day.month, day.day, h, tzinfo=UTC)
            lake.write_partition(mt.METRICS, hour, hour_table(hour, report_day=day == DAY))
    # A calls partition for one missing hour: ingest ran, the metrics did not.
    lake.write_partition("calls", DAY_START + timedelta(hours=17),
                         pa.table({"call_id": ["c1"]}))
    write_alerts(lake)
    return lake


def _alert(evaluated_at: datetime, event: str, *, rule: str, severity: str, slice_: str,
           fired_at: datetime, resolved_at: datetime | None = None) -> dict:
    labels = {"metric": rule, "dimension": "model", "slice": slice_}
    return {"evaluated_at": evaluated_at, "scope": "hourly", "run_id": "test",
            "fingerprint": f"fp-{rule}-{slice_}", "rule": rule, "severity": severity,
            "kind": "threshold", "labels": labels, "event": event,
            "summary": f"{rule} on model={slice_} is bad", "fired_at": fired_at,
            "resolved_at": resolved_at, "delivery": "sent", "active_since": fired_at}


def write_alerts(lake: Lake) -> None:
    """A critical alert fired at 07:00 and resolved at 10:00 of the report day, a warning
    still firing at the day's end, and one from the day before (not this day's)."""
    store = AlertStore(lake, scope="hourly")
    t = DAY_START
    fired = t + timedelta(hours=7)
    store.write_alert_log(fired, [_alert(fired, "fired", rule="success_rate",
                                         severity="critical", slice_="gpt-4o",
                                         fired_at=fired)])
    store.write_alert_log(t + timedelta(hours=8), [_alert(
        t + timedelta(hours=8), "firing", rule="success_rate", severity="critical",
        slice_="gpt-4o", fired_at=fired)])
    store.write_alert_log(t + timedelta(hours=10), [_alert(
        t + timedelta(hours=10), "resolved", rule="success_rate", severity="critical",
        slice_="gpt-4o", fired_at=fired, resolved_at=t + timedelta(hours=10))])
    late = t + timedelta(hours=22)
    store.write_alert_log(late, [_alert(late, "fired", rule="latency_p95_ms",
                                        severity="warning", slice_="claude-3-haiku",
                                        fired_at=late)])
    before = t - timedelta(hours=5)
    store.write_alert_log(before, [_alert(before, "fired", rule="old_rule",
                                          severity="critical", slice_="gpt-4o",
                                          fired_at=before)])
