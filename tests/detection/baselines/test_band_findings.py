"""The hourly check: a value outside its band, far enough from expected, on enough samples,
on the metric's bad side, becomes a baseline finding with the band in its message."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import pyarrow as pa
import pytest

from promptops.contracts.metric_table import METRICS
from promptops.detection.baselines import (
    BANDS_SCHEMA,
    BaselineConfig,
    baseline_findings_for_hour,
    fit_all,
    read_bands,
    write_bands,
)
from promptops.detection.baselines.band_findings import band_findings
from promptops.lake.store import Lake
from tests.helpers.baselines import DAY, metric_table, seasonal
from tests.helpers.metric_tables import metric_rows

HOUR = DAY + timedelta(hours=13)
FITTED = DAY - timedelta(minutes=30)


def bands(rows: list[tuple], hour=HOUR, method="holt_winters") -> pa.Table:
    """Rows ``(metric, dimension, slice, expected, lower, upper)`` for one hour."""
    n = len(rows)
    return pa.table({
        "metric": [r[0] for r in rows], "dimension": [r[1] for r in rows],
        "slice": [r[2] for r in rows], "hour": [hour] * n, "expected": [r[3] for r in rows],
        "lower": [r[4] for r in rows], "upper": [r[5] for r in rows], "method": [method] * n,
        "reason": ["fitted on 336 points"] * n, "fitted_at": [FITTED] * n,
        "params": [json.dumps({"alpha": 0.1})] * n}, schema=BANDS_SCHEMA)


ERROR_BAND = ("error_rate", "overall", "*", 0.006, 0.003, 0.009)


def test_error_rate_above_its_band():
    now = metric_rows([("error_rate", "overall", "*", 0.041, 200_000)], HOUR)
    [f] = band_findings(now, bands([ERROR_BAND]), HOUR)
    assert f.rule == "baseline_error_rate" and f.kind == "baseline"
    assert f.summary == ("error rate 4.1% outside expected 0.3-0.9% (Holt-Winters, same hour's "
                         "band) overall (200,000 calls)")
    assert f.labels == {"metric": "error_rate", "dimension": "overall", "slice": "*",
                        "service": "platform-api"}
    assert f.severity == "critical"  # 3.5 points above expected: far beyond 2x the band
    # The band's upper end widened by this hour's sampling error (Wilson, 200,000 calls):
    # sqrt(0.3^2 + (2.97 / 1.96 x 0.087)^2) = 0.327 points above expected.
    assert f.value == 0.041 and f.threshold == pytest.approx(0.00927, abs=2e-5)
    assert f.annotations["band"] == (
        "0.3-0.9%, expected 0.6% (Holt-Winters, fitted 2026-11-19 23:30 UTC); widened by "
        "this hour's sampling error (value 4.0-4.2% at 95%, 200,000 samples)")
    assert f.annotations["baseline_method"] == "holt_winters"


def test_rates_are_judged_against_their_binomial_noise():
    zero = ("error_rate", "team", "research", 0.0, 0.0, 0.0)  # a quiet slice: never errs
    chance = metric_rows([("error_rate", "team", "research", 2 / 69, 69)], HOUR)
    assert band_findings(chance, bands([zero]), HOUR) == []  # 2 errors in 69 calls
    burst = metric_rows([("error_rate", "team", "research", 20 / 69, 69)], HOUR)
    [f] = band_findings(burst, bands([zero]), HOUR)
    # Widened by the sampling error of 20 in 69 (Wilson 19.6-40.6%) at the band's z.
    assert f.summary.startswith("error rate 29.0% outside expected 0.0-14.2% ")
    assert "widened by this hour's sampling error (value 19.6-40.6% at 95%, 69 samples)" in (
        f.annotations["band"])
    # On a large sample the fitted band itself decides.
    big = metric_rows([("error_rate", "overall", "*", 0.011, 500_000)], HOUR)
    assert len(band_findings(big, bands([ERROR_BAND]), HOUR,
                             BaselineConfig(min_change={"error_rate": 0.001}))) == 1


def test_warning_just_outside_and_critical_far_outside():
    band = ("latency_p95_ms", "model", "gpt-4o", 1000.0, 800.0, 1200.0)
    cfg = BaselineConfig(min_change={"latency_p95_ms": 100}, min_relative_change={"*": 0.0})
    warn = metric_rows([("latency_p95_ms", "model", "gpt-4o", 1300.0, 500)], HOUR)
    crit = metric_rows([("latency_p95_ms", "model", "gpt-4o", 1450.0, 500)], HOUR)
    [w] = band_findings(warn, bands([band]), HOUR, cfg)
    [c] = band_findings(crit, bands([band]), HOUR, cfg)
    assert w.severity == "warning" and c.severity == "critical"
    assert w.labels["model"] == "gpt-4o" and w.labels["dimension"] == "model"
    assert "p95 latency 1,300.0 ms outside expected 1,000.0-1,200.0 ms" not in w.summary
    assert w.summary.startswith("p95 latency 1,300.0 ms outside expected 800.0-1,200.0 ms "
                                "(Holt-Winters, same hour's band) on model=gpt-4o (500 calls)")


def test_minimum_change_keeps_a_narrow_band_quiet():
    band = ("error_rate", "overall", "*", 0.001, 0.0008, 0.0012)
    now = metric_rows([("error_rate", "overall", "*", 0.004, 5000)], HOUR)
    assert band_findings(now, bands([band]), HOUR) == []  # 0.3 points < 2 points minimum
    loose = BaselineConfig(min_change={"error_rate": 0.001})
    assert len(band_findings(now, bands([band]), HOUR, loose)) == 1


def test_relative_change_for_volumes():
    band = ("requests", "overall", "*", 10_000.0, 9_500.0, 10_500.0)
    # +45% (a weekend's or a holiday's size of move) < 75%
    small = metric_rows([("requests", "overall", "*", 14_500.0, 14_500)], HOUR)
    drop = metric_rows([("requests", "overall", "*", 2_000.0, 2_000)], HOUR)
    assert band_findings(small, bands([band]), HOUR) == []
    [f] = band_findings(drop, bands([band]), HOUR)
    assert f.rule == "baseline_requests" and f.threshold == 9_500.0
    assert f.summary.startswith("requests 2,000 outside expected 9,500-10,500 ")


def test_direction_only_the_bad_side_fires():
    ok_low = metric_rows([("error_rate", "overall", "*", 0.0, 3000)], HOUR)
    assert band_findings(ok_low, bands([("error_rate", "overall", "*", 0.05, 0.03, 0.07)]),
                         HOUR) == []
    both = BaselineConfig(direction={"error_rate": "both"})
    assert len(band_findings(ok_low, bands([("error_rate", "overall", "*", 0.05, 0.03, 0.07)]),
                             HOUR, both)) == 1


def test_minimum_samples():
    now = metric_rows([("error_rate", "model", "tiny", 0.5, 4),
                     ("requests", "model", "tiny", 4.0, 4)], HOUR)
    b = bands([("error_rate", "model", "tiny", 0.01, 0.0, 0.02),
               ("requests", "model", "tiny", 400.0, 300.0, 500.0)])
    # 4 calls are too few to judge a rate; a request count needs no samples.
    assert [f.rule for f in band_findings(now, b, HOUR)] == ["baseline_requests"]


def test_unknown_values_missing_bands_and_other_hours_are_not_judged():
    now = pa.concat_tables([
        metric_rows([("error_rate", "overall", "*", None, 2000),
                   ("latency_p95_ms", "overall", "*", 9000.0, 2000)], HOUR),
        metric_rows([("requests", "overall", "*", 1.0, 1)], HOUR - timedelta(hours=1))])
    b = pa.concat_tables([bands([ERROR_BAND]),
                          bands([("requests", "overall", "*", 500.0, 400.0, 600.0)],
                                hour=HOUR - timedelta(hours=1))])
    assert band_findings(now, b, HOUR) == []
    assert band_findings(now, None, HOUR) == []


def test_fallback_band_is_named():
    now = metric_rows([("error_rate", "overall", "*", 0.2, 2000)], HOUR)
    [f] = band_findings(now, bands([ERROR_BAND], method="median_mad"), HOUR)
    assert "(median/MAD fallback, same hour's band)" in f.summary


def test_duplicate_rows_are_refused():
    now = metric_rows([("error_rate", "overall", "*", 0.2, 2000)] * 2, HOUR)
    with pytest.raises(ValueError, match="duplicate rows for metric=error_rate overall=\\*"):
        band_findings(now, bands([ERROR_BAND]), HOUR)


def test_fitted_bands_flag_a_spike_and_not_a_normal_day(tmp_path):
    """End to end: 14 days of history -> bands in the lake -> the next day's hours checked."""
    history = seasonal(15, level=5000, seed=21)
    lake = Lake(f"file://{tmp_path}")
    cfg = BaselineConfig(metrics=["requests"], dimensions=["overall"], warning_only=[])
    write_bands(lake, DAY, fit_all(metric_table({("requests", "overall", "*"): history[:-24]}),
                                   DAY, cfg))
    fired = {}
    for h, value in enumerate(history[-24:]):
        hour = DAY + timedelta(hours=h)
        if h == 15:
            value *= 1.8
        lake.write_partition(METRICS, hour, metric_rows([("requests", "overall", "*",
                                                        float(value), int(value))], hour))
        fired[h] = baseline_findings_for_hour(lake, hour, cfg)
    assert [h for h, found in fired.items() if found] == [15]
    [f] = fired[15]
    assert f.severity == "critical"
    assert "outside expected" in f.summary and "(Holt-Winters, same hour's band)" in f.summary
    assert np.isfinite(f.threshold)


def test_no_metrics_partition_is_an_error(tmp_path):
    with pytest.raises(LookupError, match="no metrics partition for 2026-11-20T13:00"):
        baseline_findings_for_hour(Lake(f"file://{tmp_path}"), HOUR)


def test_missing_bands_are_fitted_on_demand(tmp_path):
    lake = Lake(f"file://{tmp_path}")
    history = seasonal(15, level=5000, seed=22)
    table = metric_table({("requests", "overall", "*"): history[:-24]})
    for hour in sorted(set(table.column("hour").to_pylist())):
        lake.write_partition(METRICS, hour, table.filter(
            pa.compute.equal(table.column("hour"), pa.scalar(hour, table.column("hour").type))))
    lake.write_partition(METRICS, HOUR, metric_rows([("requests", "overall", "*", 50.0, 50)], HOUR))
    cfg = BaselineConfig(metrics=["requests"], dimensions=["overall"], warning_only=[])
    assert baseline_findings_for_hour(lake, HOUR, cfg, fit_missing=False) == []
    [f] = baseline_findings_for_hour(lake, HOUR, cfg)  # fits the day's bands, then judges
    assert f.rule == "baseline_requests" and f.severity == "critical"
    assert read_bands(lake, HOUR) is not None
    # By default a volume departure never pages: it is at most a warning.
    [f] = baseline_findings_for_hour(lake, HOUR, BaselineConfig(metrics=["requests"],
                                                                dimensions=["overall"]))
    assert f.severity == "warning"
