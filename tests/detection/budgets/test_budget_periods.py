"""Budget periods: calendar boundaries at local midnight across DST, week starts, rolling
keys, a half-hour time zone, and the hour counts a forecast relies on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from promptops.detection.budgets.config import load_budgets
from promptops.detection.budgets.periods import (
    PeriodSpec,
    elapsed_hours,
    hour_bounds,
    hours_left,
    next_period,
    period_at,
    period_hours,
)
from promptops.errors import InvalidInput


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


BERLIN_MONTH = PeriodSpec("month", "Europe/Berlin")


def test_month_in_berlin_across_spring_forward():
    march = period_at(BERLIN_MONTH, utc(2026, 3, 29, 12))
    # 1 March 00:00 CET (+01:00) to 1 April 00:00 CEST (+02:00): one hour short.
    assert (march.start, march.end, march.key) == (utc(2026, 2, 28, 23), utc(2026, 3, 31, 22),
                                                   "2026-03")
    assert period_hours(march) == 31 * 24 - 1


def test_month_in_berlin_across_fall_back():
    october = period_at(BERLIN_MONTH, utc(2026, 10, 25, 1, 30))
    assert (october.start, october.end, october.key) == (utc(2026, 9, 30, 22),
                                                         utc(2026, 10, 31, 23), "2026-10")
    assert period_hours(october) == 31 * 24 + 1


def test_month_boundary_is_local_midnight_not_utc():
    # 31 March 22:30 UTC is already 1 April 00:30 in Berlin.
    assert period_at(BERLIN_MONTH, utc(2026, 3, 31, 22, 30)).key == "2026-04"
    assert period_at(BERLIN_MONTH, utc(2026, 3, 31, 21, 59)).key == "2026-03"


def test_next_period_of_december_is_january_of_next_year():
    december = period_at(BERLIN_MONTH, utc(2026, 12, 15))
    january = next_period(december)
    assert january.key == "2027-01"
    assert january.start == december.end == utc(2026, 12, 31, 23)
    assert january.end == utc(2027, 1, 31, 23)


@pytest.mark.parametrize(("week_starts", "start", "key"), [
    # Wednesday 25 November 2026: the Monday week starts on the 23rd, the Sunday week on
    # the 22nd; both contain Monday the 23rd, ISO week 48.
    ("monday", utc(2026, 11, 23), "2026-W48"),
    ("sunday", utc(2026, 11, 22), "2026-W48-sun"),
])
def test_week_starts(week_starts, start, key):
    week = period_at(PeriodSpec("week", "UTC", week_starts), utc(2026, 11, 25, 9))
    assert (week.start, week.end, week.key) == (start, start + timedelta(days=7), key)
    assert next_period(week).start == week.end


def test_sunday_itself_starts_a_sunday_week_and_ends_a_monday_week():
    sunday = utc(2026, 11, 29, 10)
    assert period_at(PeriodSpec("week", week_starts="sunday"), sunday).start == \
        utc(2026, 11, 29)
    assert period_at(PeriodSpec("week", week_starts="monday"), sunday).start == \
        utc(2026, 11, 23)


def test_week_key_at_new_year_uses_the_iso_year():
    # Monday 28 December 2026 starts ISO week 53 of 2026; Sunday 3 January 2027 ends it.
    week = period_at(PeriodSpec("week"), utc(2027, 1, 3, 12))
    assert (week.start, week.key) == (utc(2026, 12, 28), "2026-W53")
    assert next_period(week).key == "2027-W01"


def test_day_in_los_angeles_including_the_25_hour_day():
    spec = PeriodSpec("day", "America/Los_Angeles")
    # 20 November, 03:00 UTC is still the 19th in Los Angeles (PST, -08:00).
    day = period_at(spec, utc(2026, 11, 20, 3))
    assert (day.start, day.end, day.key) == (utc(2026, 11, 19, 8), utc(2026, 11, 20, 8),
                                             "2026-11-19")
    # 1 November 2026: PDT (-07:00) until 02:00, then PST; the day is 25 hours long.
    fall_back = period_at(spec, utc(2026, 11, 1, 20))
    assert (fall_back.start, fall_back.end) == (utc(2026, 11, 1, 7), utc(2026, 11, 2, 8))
    assert period_hours(fall_back) == 25
    assert hours_left(fall_back, fall_back.start) == 25


def test_rolling_window_and_daily_key():
    spec = PeriodSpec("rolling", "America/Los_Angeles", rolling_days=7)
    at = utc(2026, 11, 20, 13, 40)
    window = period_at(spec, at)
    # The seven days before the current whole hour; the key is the local day (05:40 PST).
    assert (window.start, window.end) == (utc(2026, 11, 13, 13), utc(2026, 11, 20, 13))
    assert window.key == "rolling7-2026-11-20"
    assert period_hours(window) == 7 * 24
    assert (elapsed_hours(window, at), hours_left(window, at)) == (7 * 24, 0)
    # The window moves every hour, the key only at local midnight (08:00 UTC).
    later = period_at(spec, utc(2026, 11, 21, 7, 59))
    assert later.start == utc(2026, 11, 14, 7) and later.key == "rolling7-2026-11-20"
    assert period_at(spec, utc(2026, 11, 21, 8)).key == "rolling7-2026-11-21"
    after = next_period(window)
    assert (after.key, after.end) == ("rolling7-2026-11-21", utc(2026, 11, 21, 8))


def test_kolkata_half_hour_boundary():
    spec = PeriodSpec("day", "Asia/Kolkata")
    day = period_at(spec, utc(2026, 11, 20, 12))
    # Local midnight is 18:30 UTC the evening before.
    assert (day.start, day.end, day.key) == (utc(2026, 11, 19, 18, 30),
                                             utc(2026, 11, 20, 18, 30), "2026-11-20")
    assert period_at(spec, utc(2026, 11, 20, 18, 15)).key == "2026-11-20"
    assert period_at(spec, utc(2026, 11, 20, 18, 45)).key == "2026-11-21"
    # Spend is summed by UTC hours; the 18:00 hour (23:30-00:30 local) starts in the 20th,
    # so it is the 20th's last hour and not the 21st's first.
    assert hour_bounds(day) == (utc(2026, 11, 19, 19), utc(2026, 11, 20, 19))
    assert period_hours(day) == 24
    assert (elapsed_hours(day, utc(2026, 11, 20, 18, 15)),
            hours_left(day, utc(2026, 11, 20, 18, 15))) == (23, 1)
    nxt = next_period(day)
    assert hour_bounds(nxt)[0] == hour_bounds(day)[1]
    assert (elapsed_hours(nxt, utc(2026, 11, 20, 18, 45)),
            hours_left(nxt, utc(2026, 11, 20, 18, 45))) == (0, 24)


def test_elapsed_and_left_add_up_and_clamp():
    spec = PeriodSpec("day", "UTC")
    day = period_at(spec, utc(2026, 11, 20, 13, 20))
    assert (elapsed_hours(day, utc(2026, 11, 20, 13, 20)),
            hours_left(day, utc(2026, 11, 20, 13, 20))) == (13, 11)
    assert (elapsed_hours(day, utc(2026, 11, 19, 5)), hours_left(day, utc(2026, 11, 19, 5))) \
        == (0, 24)
    assert (elapsed_hours(day, utc(2026, 11, 22)), hours_left(day, utc(2026, 11, 22))) == (24, 0)


def test_other_offsets_and_budgets_are_accepted(tmp_path):
    # A Budget from the config works as the spec; `at` may be in any time zone.
    path = tmp_path / "budgets.yaml"
    path.write_text("timezone: Europe/Berlin\nbudgets:\n"
                    "  - {name: b, scope: overall, metric: cost, amount: 1, period: week,\n"
                    "     week_starts: sunday, thresholds: [{at: 1, severity: info}]}\n")
    budget = load_budgets(path).budgets[0]
    at = datetime(2026, 11, 25, 10, tzinfo=timezone(timedelta(hours=-5)))
    week = period_at(budget, at)
    assert week.key == "2026-W48-sun" and week.start == utc(2026, 11, 21, 23)
    assert period_at({"period": "day", "timezone": "Europe/Berlin"}, at).key == "2026-11-25"


def test_naive_times_and_bad_specs_are_refused():
    with pytest.raises(InvalidInput, match="timezone-aware"):
        period_at(PeriodSpec("day"), datetime(2026, 11, 20, 12))
    with pytest.raises(InvalidInput, match="rolling_days"):
        period_at(PeriodSpec("rolling"), utc(2026, 11, 20))
    with pytest.raises(InvalidInput, match="unknown time zone"):
        period_at(PeriodSpec("day", "Nowhere/City"), utc(2026, 11, 20))
