"""Leaf cubes from the lake's calls partitions, and the hourly root cause built on them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from promptops.detection.root_cause import baseline_hours, explain_hour, leaf_cube
from promptops.lake.store import Lake
from promptops.metrics.pricing import ModelPrice, PriceTable
from tests.helpers.root_cause import call_records

HOUR = datetime(2026, 11, 20, 13, tzinfo=UTC)
DAY = timedelta(days=1)


def rows(spec: list[tuple[str, str, int, int]]) -> list[dict]:
    """``(model, region, successes, errors)`` -> that many records."""
    out = []
    for model, region, ok, bad in spec:
        out += [{"model": model, "region": region}] * ok
        out += [{"model": model, "region": region, "status": "error"}] * bad
    return out


@pytest.fixture
def lake(tmp_path) -> Lake:
    lake = Lake(f"file://{tmp_path}/lake")
    lake.write_partition("calls", HOUR, call_records(HOUR, rows([
        ("a", "x", 10, 0), ("a", "y", 10, 0), ("b", "x", 5, 5)])))
    # Baseline: yesterday and three days ago; two days ago is missing.
    lake.write_partition("calls", HOUR - DAY, call_records(HOUR - DAY, rows([
        ("a", "x", 8, 0), ("b", "x", 10, 0), ("b", "y", 4, 0)])))
    lake.write_partition("calls", HOUR - 3 * DAY, call_records(HOUR - 3 * DAY, rows([
        ("a", "x", 12, 0), ("b", "x", 9, 1)])))
    return lake


def cells(cube, *value_columns) -> dict[tuple[str, str], tuple[float, ...]]:
    return {(r["model"], r["region"]): tuple(float(r[c]) for c in value_columns)
            for r in cube.to_dict("records")}


def test_additive_cube_by_hand(lake):
    cube = leaf_cube(lake, HOUR, "calls", dims=("model", "region"), baseline="same_hour_avg_3d")
    # Expected: the mean over the two baseline hours that exist; a leaf absent counts 0.
    assert cells(cube, "actual", "expected") == {
        ("a", "x"): (10, (8 + 12) / 2), ("a", "y"): (10, 0), ("b", "x"): (10, (10 + 10) / 2),
        ("b", "y"): (0, 4 / 2)}


def test_ratio_cube_by_hand(lake):
    cube = leaf_cube(lake, HOUR, "error_rate", dims=("model", "region"),
                     baseline="previous_day")
    assert cells(cube, "actual", "expected", "actual_den", "expected_den") == {
        ("a", "x"): (0, 0, 10, 8), ("a", "y"): (0, 0, 10, 0), ("b", "x"): (5, 0, 10, 10),
        ("b", "y"): (0, 0, 0, 4)}


def test_cost_and_template_cut(tmp_path):
    lake = Lake(f"file://{tmp_path}/lake")
    prices = PriceTable({"m": ModelPrice(input_cost_per_token=1e-3, output_cost_per_token=2e-3,
                                         litellm_provider="x")})
    now = [{"model": "m", "prompt_template": "t1", "prompt_version": "v1",
            "prompt_tokens": 10, "completion_tokens": 5},
           {"model": "m", "prompt_template": "t1", "prompt_tokens": 10, "completion_tokens": 0},
           {"model": "m", "prompt_version": "v9", "prompt_tokens": 1, "completion_tokens": 1},
           {"model": "unpriced", "prompt_template": "t1", "prompt_version": "v1"}]
    lake.write_partition("calls", HOUR, call_records(HOUR, now))
    lake.write_partition("calls", HOUR - timedelta(hours=1),
                         call_records(HOUR - timedelta(hours=1), now[:1]))
    cube = leaf_cube(lake, HOUR, "cost_usd", dims=("template",), baseline="previous_hour",
                     prices=prices)
    got = {r["template"]: (r["actual"], r["expected"]) for r in cube.to_dict("records")}
    assert got == {"t1@v1": (pytest.approx(0.02), pytest.approx(0.02)),  # unpriced adds 0
                   "t1@(none)": (pytest.approx(0.01), 0.0),
                   "(none)": (pytest.approx(0.003), 0.0)}


def test_baseline_names():
    assert baseline_hours(HOUR, "previous_week") == [HOUR - 7 * DAY]
    assert baseline_hours(HOUR, "same_hour_avg_2d") == [HOUR - DAY, HOUR - 2 * DAY]
    with pytest.raises(ValueError, match="unknown baseline 'yesterday'"):
        baseline_hours(HOUR, "yesterday")


def test_missing_partitions_are_explained(lake):
    with pytest.raises(LookupError, match="no calls partition for 2026-11-20 14:00"):
        leaf_cube(lake, HOUR + timedelta(hours=1), "calls", dims=("model",))
    with pytest.raises(LookupError, match="baseline 'previous_week'.*previous_hour"):
        leaf_cube(lake, HOUR, "calls", dims=("model",), baseline="previous_week")


def test_unknown_names(lake):
    with pytest.raises(ValueError, match="unknown measure 'p99'"):
        leaf_cube(lake, HOUR, "p99", dims=("model",))
    with pytest.raises(ValueError, match="unknown dimension\\(s\\) tenant"):
        leaf_cube(lake, HOUR, "calls", dims=("model", "tenant"))


def test_explain_hour_finds_the_failing_model(tmp_path):
    """A week of hours at 1% errors, then model m2 fails 25% of its calls in every app and
    region: the hourly root cause names m2 alone."""
    rng = np.random.default_rng(7)
    lake = Lake(f"file://{tmp_path}/lake")
    combos = [(m, a, r) for m in ("m0", "m1", "m2", "m3") for a in ("chat", "code", "search")
              for r in ("eu", "us", "asia")]

    def hour_rows(bad_model: str | None) -> list[dict]:
        out = []
        for model, app, region in combos:
            rate = 0.25 if model == bad_model else 0.01
            for _ in range(int(rng.poisson(40))):
                status = "error" if rng.random() < rate else "success"
                out.append({"model": model, "app": app, "region": region, "status": status})
        return out

    for days in range(1, 8):
        h = HOUR - days * DAY
        lake.write_partition("calls", h, call_records(h, hour_rows(None)))
    lake.write_partition("calls", HOUR, call_records(HOUR, hour_rows("m2")))

    result = explain_hour(lake, HOUR, "error_rate", dims=("model", "app", "region"))
    assert result.label == "model=m2"
    assert result.sentence.startswith("error rate ")
    assert "explained by model=m2 in all apps and regions" in result.sentence
    assert "of the excess errors" in result.sentence
    assert result.causes[0].share > 0.8
