"""The band rule's statistics: on a known distribution it stays within its coverage and
never pages; this hour's sampling error widens the band; a short history or a fallback band
may warn but never pages; a real latency spike still pages."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import pyarrow as pa

from promptops.contracts.metric_table import METRICS_SCHEMA
from promptops.detection.baselines import BANDS_SCHEMA, BaselineConfig, fit_all
from promptops.detection.baselines.band_findings import band_findings
from tests.helpers.baselines import DAY, metric_table

HOUR = DAY + timedelta(hours=13)
FITTED = DAY - timedelta(minutes=30)


def band_rows(metric: str, dim: str, slices: list[str], expected: float, lower: float,
              upper: float, *, method: str = "holt_winters", history_hours: int | None = 336,
              hour=HOUR) -> pa.Table:
    params = json.dumps({"history_hours": history_hours} if history_hours is not None else {})
    n = len(slices)
    return pa.table({
        "metric": [metric] * n, "dimension": [dim] * n, "slice": slices, "hour": [hour] * n,
        "expected": [expected] * n, "lower": [lower] * n, "upper": [upper] * n,
        "method": [method] * n, "reason": ["test band"] * n, "fitted_at": [FITTED] * n,
        "params": [params] * n}, schema=BANDS_SCHEMA)


def now_rows(metric: str, dim: str, slices: list[str], values, samples, lower=None,
             upper=None, hour=HOUR) -> pa.Table:
    n = len(slices)

    def col(x):
        return list(x) if isinstance(x, list | np.ndarray) else [x] * n

    return pa.table({
        "hour": pa.array([hour] * n, METRICS_SCHEMA.field("hour").type),
        "metric": [metric] * n, "dimension": [dim] * n, "slice": slices,
        "value": [float(v) for v in col(values)], "samples": [int(s) for s in col(samples)],
        "lower": col(lower), "upper": col(upper)}, schema=METRICS_SCHEMA)


def test_fitted_bands_on_gaussian_noise_never_page_and_rarely_warn():
    """14 days of a daily cycle with Gaussian noise, fitted; then 24 hours x 1,000 fresh
    draws from the same distribution. With the change minimums off, only the statistics
    decide: 0 pages, and warnings at about the band's 0.3% (at most 1%)."""
    rng = np.random.default_rng(31)
    mean = lambda h: 1000 + 300 * np.sin(2 * np.pi * (h % 24 - 8) / 24)  # noqa: E731
    hours = np.arange(14 * 24)
    history = mean(hours) + 40 * rng.standard_normal(len(hours))
    cfg = BaselineConfig(metrics=["latency_p95_ms"], dimensions=["overall"],
                         min_change={"*": 0.0}, min_relative_change={"*": 0.0},
                         min_samples={"*": 0})
    bands = fit_all(metric_table({("latency_p95_ms", "overall", "*"): history}), DAY, cfg)
    slices = [f"s{i}" for i in range(1000)]
    warnings = pages = total = 0
    for h in range(24):
        hour = DAY + timedelta(hours=h)
        [row] = bands.filter(pa.compute.equal(bands["hour"], pa.scalar(
            hour, bands["hour"].type))).to_pylist()
        many = band_rows("latency_p95_ms", "model", slices, row["expected"], row["lower"],
                         row["upper"], hour=hour)
        draws = mean(14 * 24 + h) + 40 * rng.standard_normal(len(slices))
        found = band_findings(now_rows("latency_p95_ms", "model", slices, draws, 500,
                                       hour=hour), many, hour, cfg)
        pages += sum(f.severity == "critical" for f in found)
        warnings += sum(f.severity == "warning" for f in found)
        total += len(slices)
    assert pages == 0
    assert warnings / total <= 0.01


def test_a_true_half_percent_error_rate_on_150_calls_never_fires():
    """10,000 simulated hours of 150 calls at a true 0.5% error rate against a band around
    0.5%: binomial noise alone never fires (0 pages, warnings within the 0.3% coverage)."""
    rng = np.random.default_rng(32)
    n = 10_000
    rates = rng.binomial(150, 0.005, n) / 150
    slices = [f"app-{i}" for i in range(n)]
    band = band_rows("error_rate", "app", slices, 0.005, 0.002, 0.008)
    found = band_findings(now_rows("error_rate", "app", slices, rates, 150), band, HOUR)
    assert sum(f.severity == "critical" for f in found) == 0
    assert len(found) / n <= 0.003
    # ... and a real incident (8% errors) is caught: a warning on 150 calls (12 errors),
    # a page on 2,000.
    one = band_rows("error_rate", "app", ["x"], 0.005, 0.002, 0.008)
    [f] = band_findings(now_rows("error_rate", "app", ["x"], 0.08, 150), one, HOUR)
    [g] = band_findings(now_rows("error_rate", "app", ["x"], 0.08, 2000), one, HOUR)
    assert (f.severity, g.severity) == ("warning", "critical")


def test_the_issue_false_page_is_at_most_a_warning_and_silent_on_a_first_day():
    """'mean latency 2,105.6 ms outside expected 709.3-1,615.1 ms (median/MAD fallback ...)
    on model=gpt-4o (58 calls)': a fallback band never pages, and on 1.25 days of history
    there is no finding at all."""
    now = now_rows("latency_mean_ms", "model", ["gpt-4o"], 2105.6, 58)
    fallback = band_rows("latency_mean_ms", "model", ["gpt-4o"], 1162.2, 709.3, 1615.1,
                         method="median_mad", history_hours=100)
    [f] = band_findings(now, fallback, HOUR)
    assert f.severity == "warning"
    assert f.summary.endswith("on model=gpt-4o (58 calls; warning only: median/MAD fallback "
                              "band)")
    assert f.annotations["severity_cap"] == "warning only: median/MAD fallback band"
    first_day = band_rows("latency_mean_ms", "model", ["gpt-4o"], 1162.2, 709.3, 1615.1,
                          method="median_mad", history_hours=30)
    assert band_findings(now, first_day, HOUR) == []


def test_a_noisy_mean_on_few_calls_is_judged_with_its_sampling_error():
    """The same mean of 58 heavy-tailed latencies with its 95% interval (1,500-2,900 ms)
    against a 14-day Holt-Winters band: the band widens by that error and nothing fires."""
    band = band_rows("latency_mean_ms", "model", ["gpt-4o"], 1162.2, 709.3, 1615.1)
    noisy = now_rows("latency_mean_ms", "model", ["gpt-4o"], 2105.6, 58, 1500.0, 2900.0)
    assert band_findings(noisy, band, HOUR) == []
    # Without an interval (null lower/upper) a latency's sampling error is unknown: the
    # band is not widened and the same value fires.
    [f] = band_findings(now_rows("latency_mean_ms", "model", ["gpt-4o"], 2105.6, 58), band,
                        HOUR)
    assert "widened" not in f.annotations["band"]


def test_short_history_warns_but_never_pages():
    now = now_rows("error_rate", "overall", ["*"], 0.2, 5000)
    [short] = band_findings(now, band_rows("error_rate", "overall", ["*"], 0.01, 0.005, 0.015,
                                           history_hours=4 * 24), HOUR)
    assert short.severity == "warning"
    assert short.summary.endswith("(5,000 calls; warning only: 4.0 days of history, pages "
                                  "from 7)")
    [full] = band_findings(now, band_rows("error_rate", "overall", ["*"], 0.01, 0.005, 0.015,
                                          history_hours=8 * 24), HOUR)
    assert full.severity == "critical" and "warning only" not in full.summary
    # Configurable: pages from 3 days of history.
    cfg = BaselineConfig(min_page_history_days=3)
    [early] = band_findings(now, band_rows("error_rate", "overall", ["*"], 0.01, 0.005, 0.015,
                                           history_hours=4 * 24), HOUR, cfg)
    assert early.severity == "critical"


def test_volume_bands_wait_for_a_whole_week_and_the_weekday_again():
    # The first Monday after the first weekend: tokens far above a band learnt mostly on
    # the weekend. Volumes follow the weekly cycle, so a band younger than 8 days says
    # nothing about them; an error-rate band of the same age still warns.
    now = now_rows("total_tokens", "overall", ["*"], 9_000_000.0, 4000)
    band = dict(expected=2_000_000.0, lower=1_000_000.0, upper=3_000_000.0)
    young = band_rows("total_tokens", "overall", ["*"], *band.values(), history_hours=7 * 24)
    assert band_findings(now, young, HOUR) == []
    grown = band_rows("total_tokens", "overall", ["*"], *band.values(), history_hours=8 * 24)
    [f] = band_findings(now, grown, HOUR)
    assert f.severity == "warning"  # volumes never page on a band
    assert band_findings(now, young, HOUR, BaselineConfig(min_volume_history_days=7))
    rate_now = now_rows("error_rate", "overall", ["*"], 0.2, 5000)
    [rate] = band_findings(rate_now, band_rows("error_rate", "overall", ["*"], 0.01, 0.005,
                                               0.015, history_hours=7 * 24), HOUR)
    assert rate.severity == "critical"


def test_a_real_4x_latency_spike_on_a_region_still_pages():
    band = band_rows("latency_mean_ms", "region", ["eu-west"], 800.0, 650.0, 950.0)
    spike = now_rows("latency_mean_ms", "region", ["eu-west"], 3200.0, 400, 2950.0, 3450.0)
    [f] = band_findings(spike, band, HOUR)
    assert f.severity == "critical" and f.labels["region"] == "eu-west"
    assert "widened by this hour's sampling error (value 2,950.0-3,450.0 ms" in (
        f.annotations["band"])


def test_fit_records_how_much_history_the_band_rests_on():
    rng = np.random.default_rng(33)
    values = np.full(14 * 24, np.nan)
    values[-5 * 24:] = 100 + rng.standard_normal(5 * 24)  # the slice is five days old
    cfg = BaselineConfig(metrics=["latency_p95_ms"], dimensions=["overall"])
    bands = fit_all(metric_table({("latency_p95_ms", "overall", "*"): values}), DAY, cfg)
    assert json.loads(bands["params"][0].as_py())["history_hours"] == 5 * 24
