"""A slice's volume is judged against the rest of the platform too: on a holiday at 0.4x a
quiet model at 0.4x moved with everything else and is no finding, while one app dropping in
a steady platform, one user's flood, or every slice in an outage still fires."""

from __future__ import annotations

import pyarrow as pa
import pytest

from promptops.contracts.findings import Finding
from promptops.detection.baselines import BaselineConfig
from promptops.detection.baselines.band_findings import band_findings
from tests.detection.baselines.test_band_findings import HOUR, bands
from tests.helpers.metric_tables import metric_rows

OFF = BaselineConfig(judge_slices_against_platform=False)
OVERALL_BAND = ("requests", "overall", "*", 10_000.0, 9_000.0, 11_000.0)
MISTRAL_BAND = ("requests", "model", "mistral-7b-instruct", 90.0, 28.0, 225.0)


def requests(overall: float, *slices: tuple[str, str, float]) -> pa.Table:
    rows = [("requests", "overall", "*", overall, int(overall))]
    rows += [("requests", dim, slc, value, int(value)) for dim, slc, value in slices]
    return metric_rows(rows, HOUR)


def where(findings: list[Finding]) -> list[tuple[str, str, str]]:
    return [(f.labels["metric"], f.labels["dimension"], f.labels["slice"]) for f in findings]


def test_a_slice_that_moved_with_a_holiday_is_no_finding():
    # The harness's case: the platform at 0.4x (inside the 75% minimum move, so the overall
    # row is silent) and a quiet model at 17 of 90 calls, below its own band.
    now = requests(4_000.0, ("model", "mistral-7b-instruct", 17.0))
    b = bands([OVERALL_BAND, MISTRAL_BAND])
    assert band_findings(now, b, HOUR) == []
    [f] = band_findings(now, b, HOUR, OFF)
    assert f.summary.startswith("requests 17 outside expected 28-225 (Holt-Winters, same "
                                "hour's band) on model=mistral-7b-instruct (17 calls)")
    # When the overall row fires itself, it is the incident; the slice stays quiet.
    loud = BaselineConfig(min_relative_change={"requests": 0.5})
    assert where(band_findings(now, b, HOUR, loud)) == [("requests", "overall", "*")]
    assert len(band_findings(now, b, HOUR, loud.model_copy(
        update={"judge_slices_against_platform": False}))) == 2


def test_a_slice_a_little_over_its_band_on_a_busy_hour_is_no_finding():
    cfg = BaselineConfig(min_change={"requests": 0.0}, min_relative_change={"requests": 0.1})
    now = requests(11_000.0, ("app", "search", 1_250.0))  # platform at 1.1x, inside its band
    b = bands([OVERALL_BAND, ("requests", "app", "search", 1_000.0, 800.0, 1_200.0)])
    assert band_findings(now, b, HOUR, cfg) == []
    assert where(band_findings(now, b, HOUR, cfg.model_copy(
        update={"judge_slices_against_platform": False}))) == [("requests", "app", "search")]


def test_launch_day_costs_that_doubled_with_the_platform_are_no_finding():
    now = metric_rows([("cost_usd", "overall", "*", 200.0, 20_000),
                       ("cost_usd", "team", "research", 20.0, 2_000)], HOUR)
    b = bands([("cost_usd", "overall", "*", 100.0, 60.0, 140.0),
               ("cost_usd", "team", "research", 10.0, 6.0, 14.0)])
    assert where(band_findings(now, b, HOUR)) == [("cost_usd", "overall", "*")]
    assert len(band_findings(now, b, HOUR, OFF)) == 2


def test_one_app_dropping_in_a_steady_platform_still_fires():
    now = requests(9_500.0, ("app", "checkout", 400.0))  # 0.2x while the platform is 0.95x
    b = bands([OVERALL_BAND, ("requests", "app", "checkout", 2_000.0, 1_500.0, 2_500.0)])
    [f] = band_findings(now, b, HOUR)
    assert where([f]) == [("requests", "app", "checkout")]
    # The rest of the platform (9,100 of 8,000 expected) is at 1.14x; rescaled by that the
    # band is 1,706-2,844 and 400 is still far below it.
    assert f.annotations["platform_move"] == (
        "the rest of the platform is at 1.14x expected this hour; this slice is also outside "
        "its band rescaled by that (1,706-2,844)")


def test_a_surging_slice_still_fires():
    now = requests(11_000.0, ("team", "growth", 2_000.0))  # 4x while the platform is 1.1x
    b = bands([OVERALL_BAND, ("requests", "team", "growth", 500.0, 350.0, 650.0)])
    assert where(band_findings(now, b, HOUR)) == [("requests", "team", "growth")]


def test_a_slice_that_is_most_of_the_traffic_is_not_excused_by_the_move_it_caused():
    # One model serves 90% of calls and triples: overall is at 2.8x because of it, but the
    # rest of the platform is steady, so the model is named.
    now = requests(28_000.0, ("model", "gpt-4o", 27_000.0))
    b = bands([OVERALL_BAND, ("requests", "model", "gpt-4o", 9_000.0, 8_000.0, 10_000.0)])
    assert where(band_findings(now, b, HOUR)) == [("requests", "model", "gpt-4o"),
                                                  ("requests", "overall", "*")]


@pytest.mark.parametrize("overall", [500.0, 50_000.0])  # an outage (0.05x), a flood (5x)
def test_beyond_the_platform_move_limit_slices_are_judged_alone(overall: float) -> None:
    value = 4.5 if overall < 10_000 else 450.0
    now = requests(overall, ("model", "mistral-7b-instruct", value))
    b = bands([OVERALL_BAND, MISTRAL_BAND])
    on, off = band_findings(now, b, HOUR), band_findings(now, b, HOUR, OFF)
    assert on == off
    assert ("requests", "model", "mistral-7b-instruct") in where(on)


def test_the_platform_move_limit_is_a_knob():
    now = requests(3_000.0, ("model", "mistral-7b-instruct", 17.0))  # platform at 0.3x
    b = bands([OVERALL_BAND, MISTRAL_BAND])
    assert band_findings(now, b, HOUR) == []
    narrow = BaselineConfig(platform_move_max=3.0)
    assert where(band_findings(now, b, HOUR, narrow)) == [
        ("requests", "model", "mistral-7b-instruct")]


def test_without_an_overall_row_slices_are_judged_alone():
    now = metric_rows([("requests", "model", "mistral-7b-instruct", 17.0, 17)], HOUR)
    b = bands([OVERALL_BAND, MISTRAL_BAND])
    assert len(band_findings(now, b, HOUR)) == 1
    # ...nor against another metric's overall row (tokens at 0.4x say nothing of requests).
    now = metric_rows([("prompt_tokens", "overall", "*", 400_000.0, 10_000),
                       ("requests", "model", "mistral-7b-instruct", 17.0, 17)], HOUR)
    b = bands([("prompt_tokens", "overall", "*", 1e6, 9e5, 1.1e6), MISTRAL_BAND])
    assert ("requests", "model", "mistral-7b-instruct") in where(band_findings(now, b, HOUR))


def test_rates_and_latencies_are_never_judged_against_the_platform():
    # The whole platform's latency doubled and its error rate quadrupled: every slice that
    # did the same is still a finding of its own (these are not volumes).
    now = metric_rows([("latency_p95_ms", "overall", "*", 2_000.0, 50_000),
                       ("latency_p95_ms", "model", "gpt-4o", 2_000.0, 5_000),
                       ("error_rate", "overall", "*", 0.04, 50_000),
                       ("error_rate", "app", "search", 0.04, 5_000)], HOUR)
    b = bands([("latency_p95_ms", "overall", "*", 1_000.0, 800.0, 1_200.0),
               ("latency_p95_ms", "model", "gpt-4o", 1_000.0, 800.0, 1_200.0),
               ("error_rate", "overall", "*", 0.01, 0.005, 0.015),
               ("error_rate", "app", "search", 0.01, 0.005, 0.015)])
    expected = [("error_rate", "app", "search"), ("error_rate", "overall", "*"),
                ("latency_p95_ms", "model", "gpt-4o"), ("latency_p95_ms", "overall", "*")]
    assert sorted(where(band_findings(now, b, HOUR))) == expected
    assert band_findings(now, b, HOUR) == band_findings(now, b, HOUR, OFF)
