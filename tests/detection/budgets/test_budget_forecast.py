"""Budget projections: the seasonal forecast of the rest of a period against the linear one,
on a simulated month with a holiday dip, and the share-of-platform projection of many
scopes at once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import yaml

from promptops.detection.budgets.forecast import (
    LINEAR,
    Projection,
    project_series,
    project_shares,
)
from promptops.simulator import Platform, SimConfig

MONTH = datetime(2026, 11, 1, tzinfo=UTC)
MONTH_END = datetime(2026, 12, 1, tzinfo=UTC)
HISTORY_START = MONTH - timedelta(days=21)
HOLIDAY = datetime(2026, 11, 26, tzinfo=UTC)  # Thanksgiving: the platform at 0.4x all day


@pytest.fixture(scope="module")
def hourly_tokens(tmp_path_factory) -> np.ndarray:
    """Tokens per hour from three weeks before November to its end, from the simulator."""
    scenario = tmp_path_factory.mktemp("sim") / "month.yaml"
    scenario.write_text(yaml.safe_dump({"seed": 3, "calls_per_hour": 150, "incidents": [{
        "name": "thanksgiving", "kind": "traffic_dip", "start": HOLIDAY.isoformat(),
        "end": (HOLIDAY + timedelta(days=1)).isoformat(), "params": {"multiplier": 0.4}}]}))
    platform = Platform(SimConfig.build(scenario), start=HISTORY_START)
    hours = int((MONTH_END - HISTORY_START) / timedelta(hours=1))
    out = np.zeros(hours)
    for i in range(hours):
        start = HISTORY_START + timedelta(hours=i)
        records = platform.records(start, start + timedelta(hours=1), now=MONTH_END)
        out[i] = sum((r.get("prompt_tokens") or 0) + (r.get("completion_tokens") or 0)
                     for r in records if start <= _ts(r) < start + timedelta(hours=1))
    return out


def _ts(record) -> datetime:
    return datetime.fromisoformat(str(record["ts"]).replace("Z", "+00:00"))


def _errors(series: np.ndarray) -> tuple[list[float], list[float]]:
    """Relative error of the month-end projection, seasonal and linear, evaluated every six
    hours from the third day of the month on."""
    first = int((MONTH - HISTORY_START) / timedelta(hours=1))
    truth = series[first:].sum()
    total_hours = len(series) - first
    seasonal, straight = [], []
    for elapsed in range(48, total_hours - 6, 6):
        now = first + elapsed
        spent = series[first:now].sum()
        history = series[max(0, now - 21 * 24):now]
        p = project_series(spent, history, elapsed, total_hours - elapsed)
        seasonal.append(abs(p.expected - truth) / truth)
        lin = spent / elapsed * total_hours
        straight.append(abs(lin - truth) / truth)
    return seasonal, straight


def test_the_seasonal_projection_beats_the_linear_one_in_a_month_with_a_holiday(hourly_tokens):
    seasonal, straight = _errors(hourly_tokens)
    print(f"\nmonth-end projection error over {len(seasonal)} evaluations: seasonal mean "
          f"{np.mean(seasonal):.2%} (max {np.max(seasonal):.2%}), linear mean "
          f"{np.mean(straight):.2%} (max {np.max(straight):.2%})")
    assert np.mean(seasonal) < np.mean(straight)
    assert np.max(seasonal) < np.max(straight)


def test_the_interval_holds_the_month_end_on_most_evaluations(hourly_tokens):
    first = int((MONTH - HISTORY_START) / timedelta(hours=1))
    truth = hourly_tokens[first:].sum()
    total = len(hourly_tokens) - first
    inside = []
    for elapsed in range(48, total - 6, 24):
        now = first + elapsed
        p = project_series(hourly_tokens[first:now].sum(), hourly_tokens[now - 21 * 24:now],
                           elapsed, total - elapsed)
        assert p.lower <= p.expected <= p.upper
        inside.append(p.lower <= truth <= p.upper)
    # The holiday falls inside the forecast of the evaluations before it; the band
    # still holds the month's end on nearly all of them.
    assert np.mean(inside) >= 0.9, inside


def test_too_little_history_is_projected_linearly_and_says_so():
    p = project_series(100.0, np.full(30, 4.0), elapsed_hours=25, hours_left=75)
    assert p.method == LINEAR and p.expected == pytest.approx(400.0)
    assert not p.has_interval and "30 hours of history" in p.reason


def test_many_scopes_scale_the_platform_forecast_by_their_share():
    platform = Projection(spent=1000.0, expected=3000.0, lower=2500.0, upper=3600.0,
                          method="holt_winters")
    spent = np.array([100.0, 10.0, 1.0])
    share = np.array([0.1, 0.01, 0.001])
    calls = np.array([10_000, 400, 5])
    out = project_shares(spent, share, calls, platform, elapsed_hours=240, hours_left=480)
    assert out.expected[0] == pytest.approx(100 + 0.1 * 2000)
    # The interval widens with the share's sampling error: 2/sqrt(calls) each side.
    assert out.lower[0] == pytest.approx(100 + 0.1 * 1500 * (1 - 0.02))
    assert out.upper[1] == pytest.approx(10 + 0.01 * 2600 * (1 + 0.1))
    # Five calls say nothing about a share: that scope is projected linearly.
    assert list(out.linear) == [False, False, True]
    assert out.expected[2] == pytest.approx(1 + 1 / 240 * 480)
