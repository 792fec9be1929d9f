"""Cause labels name the fewest values: a scope constraint the cause's own values imply is
dropped, and what all of the primary's calls share is written as its context."""

from __future__ import annotations

import numpy as np
import pandas as pd

from promptops.detection.root_cause import MEASURES, NONE_VALUE
from promptops.detection.root_cause.findings import cause_annotations, explain_slice

DIMS = ("model", "gpu_node", "region", "provider", "user")


def gpu_cube(serves: dict[str, list[str]], bad_node: str, *, seed: int = 0) -> pd.DataFrame:
    """An error-rate leaf cube: each (node, model it serves, region) leaf has Poisson(200)
    calls an hour at 1% errors over seven baseline hours; this hour ``bad_node`` fails 30%
    of its calls. Provider is missing everywhere and one user makes every call."""
    rng = np.random.default_rng(seed)
    rows = []
    for node, models in serves.items():
        for model in models:
            for region in ("eu", "us", "asia"):
                base, now = rng.poisson(200, 7), int(rng.poisson(200))
                rate = 0.3 if node == bad_node else 0.01
                rows.append({"model": model, "gpu_node": node, "region": region,
                             "provider": NONE_VALUE, "user": "u1",
                             "actual": rng.binomial(now, rate), "actual_den": now,
                             "expected": rng.binomial(base, 0.01).mean(),
                             "expected_den": base.mean(), "actual_calls": now,
                             "expected_calls": base.mean()})
    cube = pd.DataFrame(rows)
    cube.attrs["baseline_hours"] = 7
    return cube


def notes_of(cube: pd.DataFrame, scope: dict[str, str]) -> dict[str, str]:
    explanation = explain_slice(cube, DIMS, MEASURES["error_rate"], scope)
    assert explanation is not None
    return cause_annotations(explanation)


def test_a_node_serving_only_the_alerted_model_is_named_alone():
    # g2 serves m1 only; m1 also runs on g1, so g2 is a part of model=m1, not all of it.
    cube = gpu_cube({"g1": ["m0", "m1"], "g2": ["m1"], "g3": ["m0"]}, "g2")
    notes = notes_of(cube, {"model": "m1"})
    assert notes["root_cause_primary"] == notes["root_cause_set"] == "gpu_node=g2"
    assert "explained by gpu_node=g2 (" in notes["root_cause"]
    assert "| gpu_node=g2 |" in notes["root_cause_table"]
    # Its calls all run model m1 (user and the missing provider are no context).
    assert notes["root_cause_context"] == "model=m1"
    # The overall finding names the same cause, so the two findings share a label.
    overall = notes_of(cube, {})
    assert overall["root_cause_primary"] == "gpu_node=g2"
    assert overall["root_cause_context"] == "model=m1"


def test_a_node_serving_two_models_keeps_the_alerted_model():
    cube = gpu_cube({"g1": ["m0", "m1"], "g2": ["m0", "m1"]}, "g2", seed=1)
    notes = notes_of(cube, {"model": "m1"})
    assert notes["root_cause_primary"] == "gpu_node=g2&model=m1"
    # Regions differ, the user and the missing provider do not count: no context.
    assert "root_cause_context" not in notes


def test_the_baseline_counts_when_judging_implication():
    # g2 served m0 in the baseline only: this hour alone would call model=m1 implied.
    cube = gpu_cube({"g1": ["m0", "m1"], "g2": ["m0", "m1"]}, "g2", seed=2)
    gone = (cube["gpu_node"] == "g2") & (cube["model"] == "m0")
    cube.loc[gone, ["actual", "actual_den", "actual_calls"]] = 0
    notes = notes_of(cube, {"model": "m1"})
    assert notes["root_cause_primary"] == "gpu_node=g2&model=m1"


def test_a_whole_slice_that_moved_alike_keeps_its_constraint():
    cube = gpu_cube({"g1": ["m0"], "g2": ["m1"]}, "g2", seed=3)
    notes = notes_of(cube, {"model": "m1"})
    assert "explained by all of model=m1 alike" in notes["root_cause"]
    assert notes["root_cause_primary"] == "model=m1"
    assert notes["root_cause_context"] == "gpu_node=g2"
