"""Hour arithmetic in UTC, shared by every layer: the lake's partitions, ingest windows,
metrics, rules, alerts and reports all count whole UTC hours. No I/O, no Airflow.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def as_utc(ts: datetime) -> datetime:
    """A plain ``datetime`` in UTC (naive means UTC). Airflow hands tasks pendulum
    DateTimes, whose arithmetic after ``astimezone(datetime.UTC)`` can drop the zone."""
    ts = ts.astimezone(UTC) if ts.tzinfo else ts.replace(tzinfo=UTC)
    return datetime(ts.year, ts.month, ts.day, ts.hour, ts.minute, ts.second, ts.microsecond,
                    tzinfo=UTC)


def hour_floor(ts: datetime) -> datetime:
    return as_utc(ts).replace(minute=0, second=0, microsecond=0)


def hours_between(start: datetime, end: datetime) -> list[datetime]:
    """Every hour start in ``[start, end)`` (both floored to the hour)."""
    hour, stop = hour_floor(start), end
    out = []
    while hour < stop:
        out.append(hour)
        hour += timedelta(hours=1)
    return out
