"""The cause's own test for a rate: a common outcome (accuracy ~90%) is tested through its
rare complement, with its false-positive rate checked on a known binomial distribution."""

from __future__ import annotations

import numpy as np
import pandas as pd

from promptops.detection.root_cause.findings import _p_value
from promptops.detection.root_cause.localization import MEASURES

ACCURACY = MEASURES["intent_accuracy"]
HOURS = 7


def leaf(correct: float, labelled: float, correct_exp: float, labelled_exp: float):
    sub = pd.DataFrame({"actual": [correct], "expected": [correct_exp],
                        "actual_den": [labelled], "expected_den": [labelled_exp],
                        "actual_calls": [labelled * 3], "expected_calls": [labelled_exp * 3]})
    return sub, np.ones(1, dtype=bool)


def test_an_accuracy_drop_on_a_few_dozen_labelled_calls_is_significant():
    # 68% of 63 against 90% of 63 over seven baseline hours: 20 misses where 6 are usual.
    sub, mask = leaf(43, 63, 0.9 * 63, 63)
    assert _p_value(sub, mask, ACCURACY, -1.0, HOURS) < 0.01 / 50
    # The same numbers read the other way round (a rise) are no cause.
    assert _p_value(sub, mask, ACCURACY, 1.0, HOURS) > 0.5


def test_a_steady_accuracy_passes_the_cause_test_at_about_its_level():
    """True accuracy 90% everywhere, 60 labelled calls an hour: a drop 'significant' at 1%
    happens in about 1% of 5,000 hours or fewer (the test is exact, so conservative)."""
    rng = np.random.default_rng(7)
    n, p, trials, level = 60, 0.9, 5_000, 0.01
    hits = 0
    for _ in range(trials):
        now = rng.binomial(n, p)
        base = rng.binomial(n * HOURS, p) / HOURS
        sub, mask = leaf(now, n, base, n)
        hits += _p_value(sub, mask, ACCURACY, -1.0, HOURS) < level
    assert hits / trials <= 0.015
    assert hits > 0  # and the test is not simply blind


def _rollout_cube():
    """Intent accuracy per leaf (app, model, template): support_triage@v2 ran until the last
    hour at 90%; this hour only @v3 runs, at 68%; another app's template is steady."""
    rows = []
    for model in ("m1", "m2"):
        rows.append({"app": "chat", "model": model, "template": "triage@v2", "actual": 0.0,
                     "expected": 54.0, "actual_den": 0.0, "expected_den": 60.0,
                     "actual_calls": 0.0, "expected_calls": 120.0})
        rows.append({"app": "chat", "model": model, "template": "triage@v3", "actual": 41.0,
                     "expected": 0.0, "actual_den": 60.0, "expected_den": 0.0,
                     "actual_calls": 120.0, "expected_calls": 0.0})
        rows.append({"app": "search", "model": model, "template": "rag@v1", "actual": 54.0,
                     "expected": 54.0, "actual_den": 60.0, "expected_den": 60.0,
                     "actual_calls": 120.0, "expected_calls": 120.0})
    cube = pd.DataFrame(rows)
    cube.attrs["baseline_hours"] = HOURS
    return cube


def test_a_new_prompt_version_is_judged_against_its_templates_earlier_versions():
    from promptops.detection.root_cause.findings import explain_slice

    cube, dims = _rollout_cube(), ("app", "model", "template")
    own = explain_slice(cube, dims, ACCURACY, {"template": "triage@v3"})
    assert own is not None and own.primary is not None
    assert own.primary.label == "template=triage@v3"
    assert own.expected == 0.9 and "triage's earlier versions" in own.sentence
    # The app's own finding names the new version (a leaf with no past, tested against the
    # app's expected accuracy), which lies within the app.
    app = explain_slice(cube, dims, ACCURACY, {"app": "chat"})
    assert app is not None and app.primary is not None
    assert app.primary.label == "template=triage@v3"
    # A steady template with no history problem gets no such rewrite.
    assert explain_slice(cube, dims, ACCURACY, {"template": "rag@v1"}) is None
