"""The IsolationForest anomaly model: train, persist, load and score on a small lake.

The lake holds three days of hourly ``metrics`` partitions in the tidy layout, for the
overall slice, three models (m2 is always slow: that is normal for it), two regions and two
apps. The scored hour after them has model m1 failing and slow.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from promptops.contracts import metric_table as mt
from promptops.detection.anomaly_model import (
    FEATURES,
    MODEL_DIR,
    NotEnoughData,
    feature_frame,
    list_versions,
    load,
    load_latest,
    score_hour,
    train,
)
from promptops.lake.store import Lake
from tests.helpers.metric_tables import metric_rows

START = datetime(2026, 11, 17, tzinfo=UTC)
LAST_DAY = datetime(2026, 11, 19, tzinfo=UTC)
SCORED = datetime(2026, 11, 20, 10, tzinfo=UTC)
SLICES = [(mt.OVERALL, mt.ALL, 600), ("model", "m0", 300), ("model", "m1", 200),
          ("model", "m2", 100), ("region", "eu", 350), ("region", "us", 250),
          ("app", "chat", 400), ("app", "code", 200)]
P95 = {"m2": 2400.0}


def hour_metrics(hour: datetime, rng: np.random.Generator, *, failing: str | None = None,
                 new_model: bool = False):
    rows = []
    slices = SLICES + ([("model", "m9", 80)] if new_model else [])
    for dim, slc, base in slices:
        requests = int(rng.poisson(base))
        rate = 0.30 if slc == failing else 0.01
        errors = int(rng.binomial(requests, rate))
        p95 = P95.get(slc, 800.0) * rng.lognormal(0, 0.05) * (3 if slc == failing else 1)
        tokens = requests * 150 * rng.lognormal(0, 0.03)
        rows += [
            (mt.REQUESTS, dim, slc, float(requests), requests),
            (mt.ERROR_RATE, dim, slc, errors / requests, requests),
            (mt.LATENCY_P95_MS, dim, slc, p95, requests),
            (mt.TOTAL_TOKENS, dim, slc, tokens, requests),
            (mt.COST_USD, dim, slc, tokens * 2e-6, requests),
            (mt.INTENT_ACCURACY, dim, slc, 0.9 + rng.normal(0, 0.01), requests // 4),
        ]
        if dim != "region":  # regions never have relevance scores: a missing feature
            rows.append((mt.RELEVANCE_MEAN, dim, slc, 4.0 + rng.normal(0, 0.05), 10))
    return metric_rows(rows, hour)


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Lake:
    rng = np.random.default_rng(11)
    lake = Lake(f"file://{tmp_path_factory.mktemp('anomaly')}/lake")
    for h in range(72):
        hour = START + timedelta(hours=h)
        lake.write_partition(mt.METRICS, hour, hour_metrics(hour, rng))
    lake.write_partition(mt.METRICS, SCORED, hour_metrics(SCORED, rng, failing="m1",
                                                          new_model=True))
    quiet = SCORED + timedelta(hours=1)
    lake.write_partition(mt.METRICS, quiet, hour_metrics(quiet, rng))
    return lake


@pytest.fixture(scope="module")
def info(lake):
    return train(lake, LAST_DAY, window_days=3)


def test_feature_frame_from_tidy_rows(lake):
    frame = feature_frame(lake.read_partition(mt.METRICS, START))
    assert len(frame) == len(SLICES)
    row = frame[(frame["dimension"] == "model") & (frame["slice"] == "m2")].iloc[0]
    assert row["call_rate"] == row["requests"]
    assert 140 < row["tokens_per_call"] < 160
    eu = frame[frame["slice"] == "eu"].iloc[0]
    assert np.isnan(eu["relevance_mean"])


def test_train_persists_model_and_metadata(lake, info):
    assert info.version == "2026-11-19"
    assert info.window_start == "2026-11-17T00:00:00+00:00"
    assert info.window_end == "2026-11-20T00:00:00+00:00"
    assert info.features == FEATURES
    assert info.n_samples == 72 * len(SLICES)
    assert (info.hours, info.n_slices) == (72, len(SLICES))
    directory = lake.root / MODEL_DIR / "version=2026-11-19"
    assert (directory / "model.joblib").exists()
    meta = json.loads((directory / "metadata.json").read_text())
    assert meta["version"] == "2026-11-19"
    assert meta["features"] == list(FEATURES)
    assert meta["sklearn_version"] == info.sklearn_version
    assert meta["n_samples"] == info.n_samples


def test_load_latest_round_trip(lake, info):
    model = load_latest(lake)
    assert model.info == info
    # A backfilled hour inside the training window gets no model trained after it.
    assert load_latest(lake, as_of=LAST_DAY + timedelta(hours=5)) is None
    assert load_latest(lake, as_of=SCORED).info.version == info.version


def test_scores_name_the_failing_slice_and_what_moved(lake, info):
    scores = score_hour(lake, SCORED)
    by_slice = scores.set_index(["dimension", "slice"])
    m1 = by_slice.loc[("model", "m1")]
    assert m1["is_anomaly"]
    assert set(m1["top_features"][:2]) == {"error_rate", "latency_p95_ms"}
    assert "error_rate +" in m1["moved"]
    assert m1["score"] == scores["score"].max()
    # m2 is always slow: slow is normal for it.
    assert not by_slice.loc[("model", "m2")]["is_anomaly"]
    # A model the training never saw is compared with its dimension and still scored.
    assert np.isfinite(by_slice.loc[("model", "m9")]["score"])
    assert list(scores.columns[:8]) == ["hour", "dimension", "slice", "requests", "score",
                                        "is_anomaly", "moved", "top_features"]


def test_a_quiet_hour_has_no_anomalous_model(lake, info):
    scores = score_hour(lake, SCORED + timedelta(hours=1))
    assert not scores[scores["dimension"] == "model"]["is_anomaly"].any()
    assert scores["is_anomaly"].sum() <= 1


def test_retraining_a_day_replaces_its_version(lake, info):
    again = train(lake, LAST_DAY, window_days=3)
    assert again.version == info.version
    assert again.sha256 == info.sha256  # same data, same seed: the same model
    assert [i.version for i in list_versions(lake)] == ["2026-11-19"]


def test_a_damaged_model_file_is_refused(tmp_path, lake, info):
    copy = Lake(f"file://{tmp_path}/lake")
    src = lake.root / MODEL_DIR / "version=2026-11-19"
    dst = copy.root / MODEL_DIR / "version=2026-11-19"
    dst.mkdir(parents=True)
    (dst / "metadata.json").write_bytes((src / "metadata.json").read_bytes())
    (dst / "model.joblib").write_bytes((src / "model.joblib").read_bytes()[:-10])
    with pytest.raises(ValueError, match="does not match its metadata"):
        load(copy, "2026-11-19")
    with pytest.raises(LookupError, match="no anomaly model version '2020-01-01'"):
        load(copy, "2020-01-01")


def test_too_little_data_says_what_to_do(tmp_path):
    empty = Lake(f"file://{tmp_path}/lake")
    with pytest.raises(NotEnoughData, match="holds 0 slice-hours.*backfill"):
        train(empty, LAST_DAY)
    with pytest.raises(LookupError, match="no anomaly model trained before"):
        score_hour(empty, SCORED)
