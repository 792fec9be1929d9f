"""Budget periods: which day, week, calendar month or rolling window a moment falls in.

Calendar periods (``day``, ``week``, ``month``) start and end at local midnight in the
budget's time zone, converted to UTC with zoneinfo, so they follow daylight saving time: a
Europe/Berlin March is 743 hours long, its October 745, a Los Angeles 1 November 25. A week
starts on ``week_starts`` (Monday or Sunday).

Keys identify a period within one budget and never change once the period starts, so
"fires once per period" can be kept by key: ``2026-11-20`` (day), ``2026-W48`` (week starting
Monday: ISO year and week), ``2026-W48-sun`` (week starting Sunday: the ISO week of the Monday
inside it), ``2026-11`` (month), ``rolling7-2026-11-20`` (rolling).

Rolling periods are the ``N`` days before the current whole hour, ``[at_hour - N days,
at_hour)``: the hours whose spend is complete. The window moves every hour, so its key cannot
be the window; it is ``rolling<N>-<the local date of at in the budget's time zone>``: a
rolling budget's thresholds fire at most once per local day and re-arm at local midnight, and
:func:`next_period` of a rolling period is the window as it stands at the next local midnight.
A rolling window has no hours left: it is judged on what it holds, not on a forecast.

Spend is summed by whole UTC hours (the lake's partitions). A boundary that is not on a whole
UTC hour (Asia/Kolkata, +05:30: local midnight is hh:30 UTC) splits an hour; that hour is
counted whole in the period it starts in, the earlier one. :func:`hour_bounds` gives the
hours a period sums, ``[first, end)`` on UTC hour starts, and :func:`elapsed_hours` /
:func:`hours_left` count those hours, so elapsed + left is always the period's hour count.

All datetimes in and out are timezone-aware; naive ones are refused (InvalidInput).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from promptops.errors import InvalidInput

HOUR = timedelta(hours=1)
_WEEKDAY = {"monday": 0, "sunday": 6}


@dataclass(frozen=True)
class PeriodSpec:
    """What decides a budget's periods (a :class:`~.config.Budget` carries the same fields)."""

    period: Literal["day", "week", "month", "rolling"]
    timezone: str = "UTC"
    week_starts: Literal["monday", "sunday"] = "monday"
    rolling_days: int | None = None


@dataclass(frozen=True)
class Period:
    #: Aware UTC; ``start`` inclusive, ``end`` exclusive.
    start: datetime
    end: datetime
    #: Stable id of the period within its budget (module docstring).
    key: str
    spec: PeriodSpec


def _spec(params: Any) -> PeriodSpec:
    if isinstance(params, PeriodSpec):
        spec = params
    else:
        get = params.get if isinstance(params, Mapping) else (
            lambda name, default=None: getattr(params, name, default))
        period: Any = get("period")
        if period is None:
            raise InvalidInput(f"period_at() takes a Budget, a PeriodSpec or a mapping with "
                               f"'period'; got {type(params).__name__}")
        spec = PeriodSpec(period=period, timezone=get("timezone", "UTC") or "UTC",
                          week_starts=get("week_starts", "monday") or "monday",
                          rolling_days=get("rolling_days"))
    if spec.period not in ("day", "week", "month", "rolling"):
        raise InvalidInput(f"period must be day, week, month or rolling, got {spec.period!r}")
    if spec.period == "rolling" and not (isinstance(spec.rolling_days, int)
                                         and spec.rolling_days >= 1):
        raise InvalidInput(f"a rolling period needs rolling_days >= 1, got {spec.rolling_days!r}")
    if spec.week_starts not in _WEEKDAY:
        raise InvalidInput(f"week_starts must be monday or sunday, got {spec.week_starts!r}")
    return spec


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(f"unknown time zone {name!r}; use an IANA name such as "
                           "'Europe/Berlin'") from None


def _aware(at: datetime, what: str = "at") -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise InvalidInput(f"{what} must be timezone-aware (e.g. datetime(..., tzinfo=UTC)), "
                           f"got naive {at.isoformat()}")
    return at.astimezone(UTC)


def _local_midnight(day: date, tz: ZoneInfo) -> datetime:
    # fold=0: where midnight falls in a DST gap this lands on the transition instant, the
    # day's first real moment; where it repeats, on its first occurrence.
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)


def _floor_hour(ts: datetime) -> datetime:
    return ts.replace(minute=0, second=0, microsecond=0)


def _ceil_hour(ts: datetime) -> datetime:
    floor = _floor_hour(ts)
    return floor if floor == ts else floor + HOUR


def period_at(budget_or_params: Any, at: datetime) -> Period:
    """The period of a budget (or :class:`PeriodSpec`, or a mapping with its fields) that
    holds ``at``; for ``rolling``, the window ending at ``at``'s whole hour."""
    spec = _spec(budget_or_params)
    at = _aware(at)
    tz = _zone(spec.timezone)
    local_day = at.astimezone(tz).date()
    if spec.period == "rolling":
        assert spec.rolling_days is not None  # checked by _spec
        end = _floor_hour(at)
        return Period(end - timedelta(days=spec.rolling_days), end,
                      f"rolling{spec.rolling_days}-{local_day.isoformat()}", spec)
    if spec.period == "day":
        first, after = local_day, local_day + timedelta(days=1)
        key = local_day.isoformat()
    elif spec.period == "week":
        first = local_day - timedelta(days=(local_day.weekday() - _WEEKDAY[spec.week_starts]) % 7)
        after = first + timedelta(days=7)
        # The Monday inside the week names it (for Monday weeks, the first day).
        iso = (first + timedelta(days=(7 - first.weekday()) % 7)).isocalendar()
        key = f"{iso.year}-W{iso.week:02d}" + ("-sun" if spec.week_starts == "sunday" else "")
    else:
        first = local_day.replace(day=1)
        after = (first.replace(year=first.year + 1, month=1) if first.month == 12
                 else first.replace(month=first.month + 1))
        key = f"{first.year}-{first.month:02d}"
    return Period(_local_midnight(first, tz), _local_midnight(after, tz), key, spec)


def next_period(p: Period) -> Period:
    """The period after ``p``: the next day, week or month; for a rolling period, the window
    at the next local midnight (when its key, and so its thresholds, re-arm)."""
    if p.spec.period != "rolling":
        return period_at(p.spec, p.end)
    tz = _zone(p.spec.timezone)
    day = date.fromisoformat(p.key[-10:])  # rolling<N>-YYYY-MM-DD
    return period_at(p.spec, _local_midnight(day + timedelta(days=1), tz))


def hour_bounds(p: Period) -> tuple[datetime, datetime]:
    """The UTC hours whose spend the period sums: hour starts in ``[first, end)``. An hour
    split by a boundary off the whole hour belongs to the period it starts in."""
    return _ceil_hour(p.start), _ceil_hour(p.end)


def period_hours(p: Period) -> int:
    """How many whole UTC hours the period sums."""
    first, end = hour_bounds(p)
    return int((end - first) / HOUR)


def elapsed_hours(p: Period, at: datetime) -> int:
    """The period's hours that are over at ``at`` (complete, so their spend can be known);
    0 before the period, all of them after it."""
    first, end = hour_bounds(p)
    done = min(max(_floor_hour(_aware(at)), first), end)
    return int((done - first) / HOUR)


def hours_left(p: Period, at: datetime) -> int:
    """Whole hours from ``at`` to the end of the period, the current, unfinished hour
    included: the hours a forecast has to cover. 0 once the period's last hour is over."""
    return period_hours(p) - elapsed_hours(p, at)

