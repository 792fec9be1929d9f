"""Root causes on the hourly findings: one checkable cause, within the alerted slice.

Lakes come from :func:`tests.helpers.root_cause.lake_week`: seven earlier same hours at a 1%
error rate and the alerted hour with the injected failures.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from types import SimpleNamespace as NS

import numpy as np
import pandas as pd
import pytest

from promptops.contracts.findings import Finding
from promptops.detection.root_cause import MEASURES, format_value
from promptops.detection.root_cause.findings import (
    CAUSE_ALPHA,
    _coarsest_explanation,
    annotate_findings,
    explain_slice,
)
from promptops.lake.store import Lake
from promptops.metrics.hourly import compute_hourly_metrics
from promptops.metrics.pricing import load_price_table
from tests.helpers.root_cause import lake_week

HOUR = datetime(2026, 11, 20, 14, tzinfo=UTC)
TINY = [{"model": "tiny", "app": "chat", "region": "eu", "status": "error"}] * 3


def finding(metric: str = "error_rate", dimension: str = "overall", slice_: str = "*"
            ) -> Finding:
    return Finding(rule=f"{metric}_high", severity="critical", kind="threshold",
                   labels={"metric": metric, "dimension": dimension, "slice": slice_},
                   summary=f"{metric} on {dimension}={slice_}")


def annotate(lake: Lake, *findings: Finding) -> list[dict[str, str]]:
    return [f.annotations for f in annotate_findings(lake, HOUR, list(findings))]


def shares(notes: dict[str, str]) -> list[int]:
    """The shares printed in the sentence ("...: 96% of the excess errors")."""
    return [int(s) for s in re.findall(r"(\d+)% of the (?:excess|missing)", notes["root_cause"])]


@pytest.fixture(scope="module")
def two_failures(tmp_path_factory) -> Lake:
    """m2 fails in search-qa (40%), m1 in chat (30%); a tiny model fails its 3 calls."""
    lake = Lake(f"file://{tmp_path_factory.mktemp('two')}/lake")
    lake_week(lake, HOUR, error_rate={("m2", "search-qa"): 0.4, ("m1", "chat"): 0.3},
              extra=TINY)
    return lake


@pytest.fixture(scope="module")
def one_model(tmp_path_factory) -> Lake:
    """m2 fails 30% of its calls in every app and region; m3 is twice as slow everywhere."""
    lake = Lake(f"file://{tmp_path_factory.mktemp('one')}/lake")
    lake_week(lake, HOUR, error_rate={("m2", None): 0.3}, latency={"m3": 2.0}, extra=TINY,
              seed=1)
    return lake


def test_localisation_happens_within_the_alerted_slice(two_failures):
    qa, chat, overall = annotate(two_failures, finding(dimension="app", slice_="search-qa"),
                                 finding(dimension="app", slice_="chat"), finding())
    assert qa["root_cause_primary"] == "app=search-qa&model=m2"
    assert qa["root_cause_set"] == "app=search-qa&model=m2"
    assert chat["root_cause_primary"] == "app=chat&model=m1"
    # Overall: both, the larger first, labels absolute and in alphabetical dimension order.
    assert overall["root_cause_set"].split(";") == ["app=search-qa&model=m2", "app=chat&model=m1"]
    assert overall["root_cause_primary"] == "app=search-qa&model=m2"


def test_a_cause_on_three_calls_is_never_reported(two_failures):
    notes = annotate(two_failures, finding(), finding(dimension="app", slice_="chat"),
                     finding(dimension="model", slice_="tiny"))
    for n in notes:
        assert "tiny" not in n.get("root_cause_set", "")
        assert "calls 3 vs" not in n.get("root_cause", "")
    # The tiny model's own finding: 3 calls are no cause, so no root cause at all.
    assert notes[2] == {}


def test_shares_are_disjoint_and_add_up_to_at_most_100(two_failures):
    (notes,) = annotate(two_failures, finding())
    printed = shares(notes)
    assert 1 <= len(printed) <= 3 and sum(printed) <= 100
    total = notes["root_cause_table"].splitlines()[-1]
    assert re.search(r"\| (\d+)% explained \|$", total)
    assert int(re.search(r"(\d+)% explained", total).group(1)) >= sum(printed)


def test_sentence_numbers_are_the_metric_table_ones(one_model):
    (notes,) = annotate(one_model, finding())
    assert notes["root_cause_primary"] == "model=m2"
    calls = one_model.read_partition("calls", HOUR)
    table = compute_hourly_metrics(calls, HOUR, load_price_table()).to_pylist()
    rows = {(r["dimension"], r["slice"]): r for r in table if r["metric"] == "error_rate"}
    overall, m2 = rows[("overall", "*")], rows[("model", "m2")]
    sentence = notes["root_cause"]
    assert sentence.startswith(f"error rate {format_value(overall['value'], 'percent')} vs ")
    assert f"over {format_value(overall['samples'], 'count')} calls" in sentence
    assert (f"explained by model=m2 ({format_value(m2['samples'], 'count')} calls, "
            f"{format_value(m2['value'], 'percent')} vs ") in sentence
    assert "of the excess errors" in sentence


def test_a_slice_that_moved_alike_is_its_own_cause(one_model):
    latency, errors = annotate(one_model, finding("latency_p95_ms", "model", "m3"),
                               finding("success_rate", "model", "m2"))
    assert latency["root_cause_set"] == latency["root_cause_primary"] == "model=m3"
    assert "explained by all of model=m3 alike" in latency["root_cause"]
    assert errors["root_cause_primary"] == "model=m2"


def test_a_change_everywhere_on_overall_has_no_label(tmp_path):
    lake = Lake(f"file://{tmp_path}/lake")
    models = ("m0", "m1", "m2", "m3")
    lake_week(lake, HOUR, error_rate={(m, None): 0.2 for m in models}, seed=2)
    (notes,) = annotate(lake, finding())
    assert "root_cause_set" not in notes and "root_cause_primary" not in notes
    assert "explained by all of the traffic alike" in notes["root_cause"]


def test_findings_without_a_measure_or_cube_slice_are_left_alone(two_failures):
    notes = annotate(two_failures, finding("relevance_coverage"),
                     finding(dimension="user", slice_="other"),
                     finding(dimension="intent", slice_="refund"),
                     finding("intent_accuracy"))  # a measure, but no labelled call at all
    assert notes == [{}, {}, {}, {}]


def _noise_cube(rng, calls: float, rate: float) -> pd.DataFrame:
    models, apps = [f"m{i}" for i in range(6)], [f"a{i}" for i in range(5)]
    leaves = pd.MultiIndex.from_product([models, apps], names=["model", "app"]).to_frame(
        index=False)
    n = len(leaves)
    base = rng.poisson(calls, (7, n))
    now = rng.poisson(calls, n)
    leaves["actual"], leaves["actual_den"] = rng.binomial(now, rate), now
    leaves["expected"] = rng.binomial(base, rate).mean(axis=0)
    leaves["expected_den"] = leaves["expected_calls"] = base.mean(axis=0)
    leaves["actual_calls"] = now
    return leaves


def test_noise_alone_rarely_names_a_cause():
    """A true 1% error rate everywhere, 60 calls per leaf: over 300 simulated hours a cause
    is named at most at the cause test's family-wise level."""
    rng = np.random.default_rng(11)
    named = 0
    for _ in range(300):
        cube = _noise_cube(rng, 60.0, 0.01)
        result = explain_slice(cube, ("model", "app"), MEASURES["error_rate"], {})
        named += bool(result and result.causes)
    assert named / 300 <= CAUSE_ALPHA


def test_a_real_shift_in_one_model_is_caught():
    rng = np.random.default_rng(12)
    caught = 0
    for _ in range(50):
        cube = _noise_cube(rng, 60.0, 0.01)
        inside = cube["model"] == "m3"
        cube.loc[inside, "actual"] = rng.binomial(cube.loc[inside, "actual_den"], 0.08)
        result = explain_slice(cube, ("model", "app"), MEASURES["error_rate"], {})
        caught += bool(result and result.causes and result.primary.label == "model=m3")
    assert caught >= 48


def test_root_cause_prefers_the_coarsest_sufficient_layer():
    def answers(causes: dict[int, tuple[dict[str, str], float] | None]):
        asked = []

        def localise(layers: int):
            asked.append(layers)
            cause = causes[layers]
            calls = 1000 // 2 ** len(cause[0]) if cause else 0  # a part: fewer calls
            return NS(layers=layers, causes=[] if cause is None else
                      [NS(parts=cause[0], share=cause[1], calls=calls)])
        return localise, asked

    m, mr, mra = {"model": "m"}, {"model": "m", "region": "eu"}, {"model": "m", "region": "eu",
                                                                   "app": "a"}
    # A deeper cause elsewhere, or explaining clearly less, does not replace the coarse one.
    localise, _ = answers({1: (m, 0.9), 2: ({"app": "a", "region": "eu"}, 0.95),
                           3: (mra, 0.7)})
    assert _coarsest_explanation(localise).layers == 1
    localise, asked = answers({1: None, 2: (mr, 0.7), 3: (mra, 0.5)})
    assert _coarsest_explanation(localise).layers == 2 and asked == [1, 2, 3]
    # The part of the coarse cause that explains as much: the rest of it did not move.
    localise, _ = answers({1: (m, 0.6), 2: (mr, 0.6), 3: (mra, 0.58)})
    assert _coarsest_explanation(localise).layers == 3
    localise, _ = answers({1: ({"region": "eu"}, 0.1), 2: (mr, 0.2), 3: (mra, 0.3)})
    assert _coarsest_explanation(localise).layers == 3  # nothing sufficient: the deepest

    # A part holding all of the coarse cause's calls is the same cause: keep the short one.
    def same_calls(layers: int):
        parts = [m, mr, mra][layers - 1]
        return NS(layers=layers, causes=[NS(parts=parts, share=0.9, calls=500)])
    assert _coarsest_explanation(same_calls).layers == 1


def test_findings_of_one_incident_share_their_primary_label(two_failures):
    # The overall finding, the model's and the app's: one cause, one absolute label (what
    # the incident grouping keys on).
    notes = annotate(two_failures, finding(), finding("success_rate", "model", "m2"),
                     finding("errors", "app", "search-qa"))
    assert {n["root_cause_primary"] for n in notes} == {"app=search-qa&model=m2"}


def test_labels_parse_and_nest():
    from promptops.detection.root_cause.findings import parse_label, within

    assert parse_label("app=search-qa&template=t@v=2") == {"app": "search-qa",
                                                          "template": "t@v=2"}
    assert within("app=a&model=m", "model=m") and within("model=m", "model=m")
    assert not within("model=m", "app=a&model=m") and not within("model=m2", "model=m")
    assert not within("model=m", "")


# -- each cause's own test, against known distributions ----------------------------------------

def _windows(rng, n: int, *, calls: float, rate: float = 0.0, per_call: float = 0.0,
             shift: float = 1.0, hours: int = 7) -> list[pd.DataFrame]:
    """``n`` one-leaf cubes: this hour's and ``hours`` baseline hours' Poisson calls, errors
    at ``rate`` (times ``shift`` this hour) or gamma per-call amounts (CV 0.5) around
    ``per_call`` (times ``shift``)."""
    out = []
    for _ in range(n):
        now, base = rng.poisson(calls), rng.poisson(calls, hours)
        if rate:
            a, e = rng.binomial(now, min(rate * shift, 1.0)), rng.binomial(base, rate).mean()
            sq = sq_e = 0.0
        else:
            x = rng.gamma(4.0, per_call * shift / 4.0, now)
            y = rng.gamma(4.0, per_call / 4.0, int(base.sum()))
            a, e, sq, sq_e = x.sum(), y.sum() / hours, (x * x).sum(), (y * y).sum() / hours
        out.append(pd.DataFrame({"actual": [a], "expected": [e], "actual_den": [now],
                                 "expected_den": [base.mean()], "actual_calls": [now],
                                 "expected_calls": [base.mean()], "actual_sq": [sq],
                                 "expected_sq": [sq_e]}))
    return out


CASES_P = {
    "error_rate": {"calls": 150.0, "rate": 0.005},
    "errors": {"calls": 150.0, "rate": 0.02},
    "latency_mean_ms": {"calls": 150.0, "per_call": 800.0},
    "tokens": {"calls": 150.0, "per_call": 600.0},
}


@pytest.mark.parametrize("name", list(CASES_P))
def test_a_cause_test_holds_its_level_under_noise(name):
    """No change (a true 0.5% error rate at 150 calls an hour, say): the one-sided test at
    1% rejects in at most about 1% of 2,000 simulated hours."""
    from promptops.detection.root_cause.findings import _p_value

    rng = np.random.default_rng(5)
    one = np.ones(1, dtype=bool)
    p = [_p_value(w, one, MEASURES[name], 1.0, 7) for w in _windows(rng, 2000, **CASES_P[name])]
    assert np.mean(np.array(p) < 0.01) <= 0.015


@pytest.mark.parametrize("name,shift", [("error_rate", 20.0), ("errors", 8.0),
                                        ("latency_mean_ms", 1.5), ("tokens", 2.0)])
def test_a_cause_test_catches_a_real_shift(name, shift):
    """An incident-sized change on 150 calls (0.5% -> 10% errors, 1.5x latency...) passes
    even a Bonferroni-corrected level (1e-4: 0.01 over a hundred candidate elements)."""
    from promptops.detection.root_cause.findings import _p_value

    rng = np.random.default_rng(6)
    one = np.ones(1, dtype=bool)
    p = [_p_value(w, one, MEASURES[name], 1.0, 7)
         for w in _windows(rng, 300, shift=shift, **CASES_P[name])]
    assert np.mean(np.array(p) < 1e-4) >= 0.95


def test_a_slow_region_is_named_within_each_model(tmp_path):
    # Exponential latencies on few calls per leaf, four times slower in one region: every
    # model's finding and the overall one name the region (a mean's noise grows with the
    # mean squared; a proportional change moves a leaf by its level).
    lake = Lake(f"file://{tmp_path}/lake")
    models = ("m0", "m1", "m2")
    lake_week(lake, HOUR, latency={"eu": 4.0}, seed=3, calls=15.0, models=models,
              apps=("chat", "search-qa", "code", "sql"), regions=("eu", "us", "asia"),
              latency_shape=1.0)
    notes = annotate(lake, finding("latency_mean_ms"),
                     *(finding("latency_p95_ms", "model", m) for m in models))
    assert [n.get("root_cause_primary") for n in notes] == [
        "region=eu", "model=m0&region=eu", "model=m1&region=eu", "model=m2&region=eu"]


def test_a_lake_younger_than_a_day_compares_with_the_hours_before(tmp_path):
    """The first day of a deployment has no same hour on an earlier day: the cause is
    still named, against the hours just before (the e2e burst otherwise paged once per
    slice, none of them localised)."""
    from datetime import timedelta

    from promptops.contracts.datasets import CALLS

    week = Lake(f"file://{tmp_path}/week")
    lake_week(week, HOUR, error_rate={("m2", None): 0.3}, seed=3)
    young = Lake(f"file://{tmp_path}/young")
    # Only this hour and two healthy hours before it (yesterday's same hours, moved).
    young.write_partition(CALLS, HOUR, week.read_partition(CALLS, HOUR))
    for back in (1, 2):
        young.write_partition(CALLS, HOUR - timedelta(hours=back),
                              week.read_partition(CALLS, HOUR - timedelta(days=back)))
    [notes] = [f.annotations for f in annotate_findings(young, HOUR, [finding()])]
    assert notes["root_cause_primary"] == "model=m2"
    # No earlier hour at all: nothing to compare with, no cause (and no failure).
    alone = Lake(f"file://{tmp_path}/alone")
    alone.write_partition(CALLS, HOUR, week.read_partition(CALLS, HOUR))
    assert annotate_findings(alone, HOUR, [finding()])[0].annotations == {}
