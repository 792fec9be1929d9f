"""Root causes of intent accuracy and mean relevance, defined as in the metric table:
correct / labelled calls, and the mean score of the scored calls."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from promptops.contracts.findings import Finding
from promptops.detection.root_cause import MEASURES, format_value, leaf_cube
from promptops.detection.root_cause.findings import _p_value, annotate_findings
from promptops.lake.store import Lake
from promptops.metrics.hourly import compute_hourly_metrics
from promptops.metrics.pricing import load_price_table
from tests.helpers.root_cause import call_records

HOUR = datetime(2026, 11, 20, 14, tzinfo=UTC)
#: (app, team, template): code_review runs only in code-assistant, whose team has chat too.
USES = [("chat", "support", "chat"), ("chat", "support", "faq"),
        ("search-qa", "search", "qa"), ("search-qa", "search", "rerank"),
        ("code-assistant", "support", "code_review"), ("code-assistant", "support", "code_gen")]
INTENTS = ("refund", "billing", "other")


def quality_week(lake: Lake, *, relevance: dict[str, float] | None = None,
                 accuracy: dict[str, float] | None = None, seed: int = 0) -> None:
    """Seven earlier same hours and HOUR: every (use, model, region) has Poisson(30) calls,
    80% labelled with 90% of predictions right (a tenth of the wrong ones missing), 70%
    scored around 4. This hour only: ``relevance`` maps an app to its mean score and
    ``accuracy`` a template to its accuracy."""
    rng = np.random.default_rng(seed)
    for days in range(7, -1, -1):
        h = HOUR - timedelta(days=days)
        rows = []
        for (app, team, template), model, region in (
                (u, m, r) for u in USES for m in ("m0", "m1") for r in ("eu", "us")):
            right = (accuracy or {}).get(template, 0.9) if days == 0 else 0.9
            mean = (relevance or {}).get(app, 4.0) if days == 0 else 4.0
            for _ in range(int(rng.poisson(30))):
                row: dict[str, Any] = {"model": model, "app": app, "team": team, "region": region,
                       "prompt_template": template, "prompt_version": "v1"}
                if rng.random() < 0.8:
                    expected = str(rng.choice(INTENTS))
                    row["expected_intent"] = expected
                    if rng.random() < right:
                        row["predicted_intent"] = expected
                    elif rng.random() < 0.9:
                        row["predicted_intent"] = next(i for i in INTENTS if i != expected)
                if rng.random() < 0.7:
                    row["relevance_score"] = float(np.clip(rng.normal(mean, 0.6), 1.0, 5.0))
                rows.append(row)
        lake.write_partition("calls", h, call_records(h, rows))


def finding(metric: str, dimension: str = "overall", slice_: str = "*") -> Finding:
    return Finding(rule=f"{metric}_low", severity="warning", kind="threshold",
                   labels={"metric": metric, "dimension": dimension, "slice": slice_},
                   summary=f"{metric} on {dimension}={slice_}")


def annotate(lake: Lake, *findings: Finding) -> list[dict[str, str]]:
    return [f.annotations for f in annotate_findings(lake, HOUR, list(findings))]


def metric_rows(lake: Lake, metric: str) -> dict[tuple[str, str], dict]:
    table = compute_hourly_metrics(lake.read_partition("calls", HOUR), HOUR, load_price_table())
    return {(r["dimension"], r["slice"]): r for r in table.to_pylist() if r["metric"] == metric}


@pytest.fixture(scope="module")
def irrelevant_search(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    lake = Lake(f"file://{tmp_path_factory.mktemp('rel')}/lake")
    quality_week(lake, relevance={"search-qa": 2.5}, seed=1)
    return lake


@pytest.fixture(scope="module")
def confused_template(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    lake = Lake(f"file://{tmp_path_factory.mktemp('acc')}/lake")
    quality_week(lake, accuracy={"code_review": 0.4}, seed=2)
    return lake


def test_a_relevance_drop_in_one_app_is_named(irrelevant_search):
    overall, app = annotate(irrelevant_search, finding("relevance_mean"),
                            finding("relevance_mean", "app", "search-qa"))
    assert overall["root_cause_primary"] == "app=search-qa"
    assert overall["root_cause_context"] == "team=search"
    rows = metric_rows(irrelevant_search, "relevance_mean")
    total, qa = rows[("overall", "*")], rows[("app", "search-qa")]
    assert overall["root_cause"].startswith(
        f"mean relevance {format_value(total['value'])} vs ")
    calls = metric_rows(irrelevant_search, "requests")[("app", "search-qa")]["value"]
    assert (f"explained by app=search-qa ({format_value(calls, 'count')} calls, "
            f"{format_value(qa['value'])} vs ") in overall["root_cause"]
    assert "of the missing relevance" in overall["root_cause"]
    assert app["root_cause_primary"] == "app=search-qa"
    assert "explained by all of app=search-qa alike" in app["root_cause"]


def test_an_intent_accuracy_drop_on_one_template_is_named(confused_template):
    overall, template, app = annotate(
        confused_template, finding("intent_accuracy"),
        finding("intent_accuracy", "template", "code_review@v1"),
        finding("intent_accuracy", "app", "code-assistant"))
    rows = metric_rows(confused_template, "intent_accuracy")
    total, bad = rows[("overall", "*")], rows[("template", "code_review@v1")]
    assert overall["root_cause"].startswith(
        f"intent accuracy {format_value(total['value'], 'percent')} vs ")
    assert f", {format_value(bad['value'], 'percent')} vs " in overall["root_cause"]
    assert "of the missing correct intents" in overall["root_cause"]
    assert "explained by all of template=code_review@v1 alike" in template["root_cause"]
    # One label on all three findings (the app's constraint is implied by the template),
    # and the context says the template lies within the app.
    for notes in (overall, template, app):
        assert notes["root_cause_primary"] == "template=code_review@v1"
        assert notes["root_cause_context"] == "app=code-assistant&team=support"


def test_quality_cubes_by_hand(tmp_path: Path) -> None:
    lake = Lake(f"file://{tmp_path}/lake")
    now: list[dict[str, Any]] = [{"expected_intent": "a", "predicted_intent": "a", "relevance_score": 4.0},
           {"expected_intent": "a", "predicted_intent": "b", "relevance_score": 2.0},
           {"expected_intent": "a"},  # labelled, no prediction: wrong
           {"predicted_intent": "a"}]  # unlabelled, unscored
    before = HOUR - timedelta(hours=1)
    lake.write_partition("calls", HOUR, call_records(HOUR, now))
    lake.write_partition("calls", before, call_records(before, now[:1]))

    def cell(measure: str) -> dict:
        (row,) = leaf_cube(lake, HOUR, measure, dims=("model",),
                           baseline="previous_hour").to_dict("records")
        return row

    accuracy = cell("intent_accuracy")
    assert (accuracy["actual"], accuracy["actual_den"]) == (1, 3)
    assert (accuracy["expected"], accuracy["expected_den"]) == (1, 1)
    assert accuracy["actual_calls"] == 4
    relevance = cell("relevance_mean")
    assert (relevance["actual"], relevance["actual_den"], relevance["actual_sq"]) == (6, 2, 20)
    assert (relevance["expected"], relevance["expected_den"], relevance["expected_sq"]) == (
        4, 1, 16)
    # The metric table's values for the same hour.
    table = compute_hourly_metrics(lake.read_partition("calls", HOUR), HOUR, load_price_table())
    values = {r["metric"]: r for r in table.to_pylist()
              if r["dimension"] == "overall"}
    assert values["intent_accuracy"]["value"] == pytest.approx(1 / 3)
    assert values["relevance_mean"]["value"] == pytest.approx(3.0)


def _relevance_windows(rng: np.random.Generator, n: int, shift: float = 0.0) -> list[pd.DataFrame]:
    """One-leaf relevance cubes: Poisson(150) calls an hour, 60% scored around 4 (sd 0.7),
    this hour's scores moved by ``shift``."""
    out = []
    for _ in range(n):
        calls, base_calls = rng.poisson(150), rng.poisson(150, 7)
        scored, base_scored = rng.binomial(calls, 0.6), rng.binomial(base_calls, 0.6)
        x = rng.normal(4.0 + shift, 0.7, scored)
        y = rng.normal(4.0, 0.7, int(base_scored.sum()))
        out.append(pd.DataFrame({
            "actual": [x.sum()], "expected": [y.sum() / 7], "actual_den": [scored],
            "expected_den": [base_scored.mean()], "actual_calls": [calls],
            "expected_calls": [base_calls.mean()], "actual_sq": [(x * x).sum()],
            "expected_sq": [(y * y).sum() / 7]}))
    return out


def test_the_relevance_test_averages_over_the_scored_calls():
    rng = np.random.default_rng(8)
    one = np.ones(1, dtype=bool)
    spec = MEASURES["relevance_mean"]
    # Under noise it holds its level (counting unscored calls would shrink the error).
    p = [_p_value(w, one, spec, -1.0, 7) for w in _relevance_windows(rng, 2000)]
    assert np.mean(np.array(p) < 0.01) <= 0.015
    # A drop of half a point on about 90 scored calls passes a Bonferroni-sized level.
    p = [_p_value(w, one, spec, -1.0, 7) for w in _relevance_windows(rng, 300, shift=-0.5)]
    assert np.mean(np.array(p) < 1e-4) >= 0.95
    # Welch's z on the scored calls, whatever the number of calls.
    (w,) = _relevance_windows(rng, 1)
    n, n_exp = float(w["actual_den"][0]), float(w["expected_den"][0])
    mean, mean_exp = w["actual"][0] / n, w["expected"][0] / n_exp
    var = w["actual_sq"][0] / n - mean ** 2
    var_exp = w["expected_sq"][0] / n_exp - mean_exp ** 2
    z = (mean - mean_exp) / math.sqrt(var / n + var_exp / (7 * n_exp))
    expected_p = 0.5 * math.erfc(-z / math.sqrt(2))  # P(Z <= z): a drop
    assert _p_value(w, one, spec, -1.0, 7) == pytest.approx(expected_p)
    w[["actual_calls", "expected_calls"]] *= 10
    assert _p_value(w, one, spec, -1.0, 7) == pytest.approx(expected_p)
