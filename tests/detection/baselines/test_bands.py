"""The day's bands: series from the tidy metric history (gaps vs zeros), the slices that get
a baseline, the bands table, the process pool, and the lake round trip."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import pyarrow as pa
import pytest

from promptops.contracts.metric_table import METRICS
from promptops.detection.baselines import (
    BANDS,
    BANDS_SCHEMA,
    BaselineConfig,
    fit_all,
    history_series,
    read_bands,
    refit_baselines,
    write_bands,
)
from promptops.lake.store import Lake
from tests.helpers.baselines import DAY, metric_table, seasonal

N = 14 * 24


def test_gap_hours_are_missing_and_quiet_hours_are_zero():
    req = seasonal(14)
    rate = np.full(N, 0.01)
    rate[7] = np.nan  # a null value stays unknown
    table = metric_table({("requests", "overall", "*"): req,
                          ("error_rate", "overall", "*"): rate}, skip_hours={3})
    # Hour 5: partition exists, model "a" has no row (no traffic that hour).
    a_rows = metric_table({("requests", "model", "a"): req, ("error_rate", "model", "a"): rate})
    keep = np.ones(a_rows.num_rows, dtype=bool)
    keep[[5, 3, N + 5, N + 3]] = False
    table = pa.concat_tables([table, a_rows.filter(pa.array(keep))])
    cfg = BaselineConfig(metrics=["requests", "error_rate"], dimensions=["overall", "model"])
    keys, matrix = history_series(table, DAY, cfg)
    rows = dict(zip(keys, matrix, strict=True))
    assert np.isnan(rows[("requests", "overall", "*")][3])  # no partition: a gap
    assert rows[("requests", "model", "a")][5] == 0.0       # partition, no row: no traffic
    assert np.isnan(rows[("error_rate", "model", "a")][5])  # ... but a rate is unknown
    assert np.isnan(rows[("error_rate", "overall", "*")][7])
    assert rows[("requests", "overall", "*")][10] == pytest.approx(req[10])


def test_top_teams_and_max_slices():
    series = {("requests", "overall", "*"): seasonal(14)}
    for i in range(8):
        series[("requests", "team", f"t{i}")] = seasonal(14, level=100 * (i + 1), seed=i)
        series[("requests", "app", f"a{i}")] = seasonal(14, level=100 * (i + 1), seed=i)
        series[("requests", "user", f"u{i}")] = seasonal(14, seed=i)
    cfg = BaselineConfig(metrics=["requests"], top_teams=3, max_slices=2)
    keys, _ = history_series(metric_table(series), DAY, cfg)
    assert sorted(k[2] for k in keys if k[1] == "team") == ["t5", "t6", "t7"]
    assert sorted(k[2] for k in keys if k[1] == "app") == ["a6", "a7"]
    assert not [k for k in keys if k[1] == "user"]  # not a configured dimension
    assert ("requests", "overall", "*") in keys


def test_history_outside_the_window_is_ignored():
    table = metric_table({("requests", "overall", "*"): seasonal(20)})
    cfg = BaselineConfig(metrics=["requests"])
    _, matrix = history_series(table, DAY, cfg)
    assert matrix.shape == (1, N)
    assert np.allclose(matrix[0], seasonal(20)[-N:])


def bands_for(table: pa.Table, **cfg) -> pa.Table:
    config = BaselineConfig(**{"metrics": ["requests", "error_rate"], **cfg})
    return fit_all(table, DAY, config)


def sample_history() -> pa.Table:
    return metric_table({
        ("requests", "overall", "*"): seasonal(14, seed=1),
        ("requests", "model", "gpt"): seasonal(14, level=300, seed=2),
        ("error_rate", "overall", "*"): np.clip(0.01 + 0.002 * np.random.default_rng(3)
                                                .standard_normal(N), 0, 1),
        ("error_rate", "model", "gpt"): np.full(N, np.nan),  # never known: no band
        ("requests", "model", "new"): np.concatenate([np.full(N - 30, np.nan),
                                                      seasonal(14)[-30:]]),
    })


def test_fit_all_table():
    bands = bands_for(sample_history())
    assert bands.schema == BANDS_SCHEMA
    df = bands.to_pandas()
    per_series = df.groupby(["metric", "dimension", "slice"]).size()
    assert set(per_series.index) == {("requests", "overall", "*"), ("requests", "model", "gpt"),
                                     ("error_rate", "overall", "*"), ("requests", "model", "new")}
    assert (per_series == 24).all()
    hours = sorted(set(df["hour"].dt.to_pydatetime()))
    assert hours == [DAY + timedelta(hours=h) for h in range(24)]
    methods = df.groupby("slice")["method"].first().to_dict()
    assert methods == {"*": "holt_winters", "gpt": "holt_winters", "new": "median_mad"}
    new = df[df["slice"] == "new"].iloc[0]
    assert "too short: 30 observed points" in new["reason"]
    params = json.loads(df[df["slice"] == "gpt"].iloc[0]["params"])
    assert {"alpha", "gamma", "phi", "sigma", "seasonal"} <= params.keys()
    assert (df["lower"] <= df["expected"]).all() and (df["expected"] <= df["upper"]).all()


def test_no_history_gives_no_bands():
    assert bands_for(None).num_rows == 0


def test_process_pool_gives_the_same_bands():
    table = sample_history()
    fitted_at = DAY - timedelta(minutes=5)
    one = fit_all(table, DAY, BaselineConfig(metrics=["requests", "error_rate"], workers=1),
                  fitted_at=fitted_at)
    two = fit_all(table, DAY, BaselineConfig(metrics=["requests", "error_rate"], workers=2,
                                             parallel_min_series=1), fitted_at=fitted_at)
    assert one.equals(two)


def test_lake_round_trip(tmp_path):
    lake = Lake(f"file://{tmp_path}")
    bands = bands_for(sample_history())
    info = write_bands(lake, DAY, bands)
    assert info.uri.endswith(f"{BANDS}/date=2026-11-20/hour=00/part-00000.parquet")
    at_13 = read_bands(lake, DAY + timedelta(hours=13, minutes=20))
    assert at_13.num_rows == 4
    assert set(at_13.column("hour").to_pylist()) == {DAY + timedelta(hours=13)}
    assert read_bands(lake, DAY, whole_day=True).num_rows == bands.num_rows
    assert read_bands(lake, DAY + timedelta(days=1)) is None
    # A refit replaces the day's partition.
    write_bands(lake, DAY, bands.slice(0, 24))
    assert read_bands(lake, DAY, whole_day=True).num_rows == 24


def test_bands_of_another_day_are_refused(tmp_path):
    lake = Lake(f"file://{tmp_path}")
    bands = bands_for(sample_history())
    with pytest.raises(ValueError, match="bands for 2026-11-21 hold hours 2026-11-20 00:00"):
        write_bands(lake, DAY + timedelta(days=1), bands)
    with pytest.raises(ValueError, match="missing column"):
        write_bands(lake, DAY, bands.drop_columns(["upper"]))


def test_refit_baselines_from_the_lake(tmp_path, monkeypatch):
    lake = Lake(f"file://{tmp_path}")
    history = sample_history()
    hours = history.column("hour")
    for hour in sorted(set(hours.to_pylist()))[:-5]:  # the last five hours are missing
        lake.write_partition(METRICS, hour, history.filter(pa.compute.equal(hours, hour)))
    summary = refit_baselines(lake, DAY, BaselineConfig(metrics=["requests", "error_rate"]))
    assert summary["series"] == 4
    assert summary["by_method"] == {"holt_winters": 3, "median_mad": 1}
    assert summary["history_hours"] == N - 5
    assert summary["uri"].endswith("date=2026-11-20/hour=00/part-00000.parquet")
    stored = read_bands(lake, DAY, whole_day=True)
    assert stored.num_rows == 4 * 24
