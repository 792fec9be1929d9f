"""Exact spend per scope: real simulator hours, validated and stored in a real Parquet lake.

The references are computed independently of the module: per-call prices from the price
table, then a pandas groupby; and the hourly metric table's overall cost.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from promptops.contracts import metric_table as mt
from promptops.contracts.datasets import CALLS
from promptops.contracts.records import SOURCE_OPTIONAL, empty_calls_table, validate_page
from promptops.errors import InvalidInput
from promptops.lake.store import Lake
from promptops.metrics import spend
from promptops.metrics.hourly import compute_hourly_metrics
from promptops.metrics.pricing import PriceTable, load_price_table
from promptops.metrics.spend import (
    NONE_VALUE,
    SPEND,
    SPEND_SCHEMA,
    compute_and_write_hour_spend,
    hour_spend,
    hourly_series,
    shares,
    spend_between,
    write_hour_spend,
)
from promptops.simulator import Platform, SimConfig

H0 = datetime(2026, 11, 20, 13, tzinfo=UTC)
HOURS = [H0 + timedelta(hours=i) for i in range(4)]
NOW = H0 + timedelta(hours=8)  # every record of the four hours has arrived
DIMENSION_COLUMNS = {"user": "user_id", "team": "team", "app": "app", "key": "api_key_hash"}


def _key(n: int) -> str:
    return hashlib.sha256(f"sk-test-{n}".encode()).hexdigest()


def _simulated_hour(platform: Platform, hour: datetime) -> pa.Table:
    """One simulator hour as a non-platform source would hand it over: some calls without a
    user, most with one of five hashed API keys, a few with cache writes."""
    records = platform.records(hour, hour + timedelta(hours=1), now=NOW)
    for i, rec in enumerate(records):
        if i % 97 == 5:
            del rec["user_id"]
        if i % 11:
            rec["api_key_hash"] = _key(i % 5)
        if i % 13 == 0:
            rec["cache_creation_tokens"] = (rec["prompt_tokens"]
                                            - (rec.get("cached_tokens") or 0)) // 2
    page = validate_page(records, hour, hour + timedelta(hours=1), optional=SOURCE_OPTIONAL)
    assert not page.rejects
    return page.good


@pytest.fixture(scope="module")
def prices() -> PriceTable:
    return load_price_table(use_env=False)


@pytest.fixture(scope="module")
def hours_of_calls() -> dict[datetime, pa.Table]:
    platform = Platform(SimConfig.build(calls_per_hour=1500, seed=21), start=H0)
    return {h: _simulated_hour(platform, h) for h in HOURS}


@pytest.fixture()
def lake(tmp_path) -> Lake:
    return Lake(f"file://{tmp_path}")


@pytest.fixture()
def three_hours(lake: Lake, hours_of_calls: dict[datetime, pa.Table],
                prices: PriceTable) -> Lake:
    """The first, second and fourth hour's calls and spend written; the third hour has
    neither (its ingest has not run)."""
    for h in (HOURS[0], HOURS[1], HOURS[3]):
        lake.write_partition(CALLS, h, hours_of_calls[h])
        assert compute_and_write_hour_spend(lake, h, prices) is not None
    return lake


def _priced_frame(calls: pa.Table, prices: PriceTable) -> pd.DataFrame:
    """The reference: each call priced on its own by the price table, as a DataFrame."""
    prompt = calls.column("prompt_tokens").to_numpy().astype(float)
    cached = np.minimum(pc.fill_null(calls.column("cached_tokens"), 0).to_numpy(), prompt)
    costs = prices.cost(calls.column("model"), prompt,
                        calls.column("completion_tokens").to_numpy().astype(float), cached,
                        provider=calls.column("provider"), latency_ms=calls.column("latency_ms"),
                        cache_creation_tokens=calls.column("cache_creation_tokens"))
    frame = pd.DataFrame({d: calls.column(c).cast(pa.string()).to_pandas()
                          for d, c in DIMENSION_COLUMNS.items()}).fillna(NONE_VALUE)
    frame["cost_usd"] = np.where(costs.priced, costs.cost, 0.0)
    frame["unpriced_calls"] = (~costs.priced).astype(np.int64)
    frame["tokens"] = (calls.column("prompt_tokens").to_numpy()
                       + calls.column("completion_tokens").to_numpy())
    frame["calls"] = 1
    return frame


def _rows(table: pa.Table, dimension: str) -> pd.DataFrame:
    frame = table.filter(pc.equal(table.column("dimension"), dimension)).to_pandas()
    return frame.set_index("value")[["cost_usd", "unpriced_calls", "tokens", "calls"]]


def _assert_frames_equal(ours: pd.DataFrame, reference: pd.DataFrame) -> None:
    ours, reference = ours.sort_index(), reference.sort_index()
    assert list(ours.index) == list(reference.index)
    np.testing.assert_allclose(ours["cost_usd"], reference["cost_usd"], rtol=0, atol=1e-9)
    for col in ("unpriced_calls", "tokens", "calls"):
        assert ours[col].tolist() == reference[col].tolist(), col


# -- one hour --------------------------------------------------------------------------------

def test_every_value_of_every_dimension_equals_a_pandas_groupby(
        hours_of_calls: dict[datetime, pa.Table], prices: PriceTable) -> None:
    calls = hours_of_calls[H0]
    table = hour_spend(calls, H0, prices)
    assert table.schema == SPEND_SCHEMA
    assert set(table.column("hour").to_pylist()) == {H0}
    reference = _priced_frame(calls, prices)
    for dimension in DIMENSION_COLUMNS:
        expected = reference.groupby(dimension)[
            ["cost_usd", "unpriced_calls", "tokens", "calls"]].sum()
        _assert_frames_equal(_rows(table, dimension), expected)
    # All users, not a top-N: every user in the hour has its row.
    assert len(_rows(table, "user")) == reference["user"].nunique() > 100


def test_overall_equals_the_hourly_metrics_cost_to_the_cent(
        hours_of_calls: dict[datetime, pa.Table], prices: PriceTable) -> None:
    calls = hours_of_calls[H0]
    overall = _rows(hour_spend(calls, H0, prices), "overall")
    metrics = compute_hourly_metrics(calls, H0, prices).to_pandas()
    metrics = metrics[metrics["dimension"] == mt.OVERALL].set_index("metric")["value"]
    assert list(overall.index) == ["*"]
    assert overall["cost_usd"].iloc[0] > 1.0
    assert abs(overall["cost_usd"].iloc[0] - metrics[mt.COST_USD]) < 0.005
    assert overall["tokens"].iloc[0] == metrics[mt.TOTAL_TOKENS]
    assert overall["calls"].iloc[0] == metrics[mt.REQUESTS] == calls.num_rows


def test_calls_without_a_user_or_key_count_for_none(
        hours_of_calls: dict[datetime, pa.Table], prices: PriceTable) -> None:
    calls = hours_of_calls[H0]
    table = hour_spend(calls, H0, prices)
    users, keys = _rows(table, "user"), _rows(table, "key")
    assert users.loc[NONE_VALUE, "calls"] == calls.column("user_id").null_count > 0
    assert keys.loc[NONE_VALUE, "calls"] == calls.column("api_key_hash").null_count > 0
    assert set(keys.index) == {NONE_VALUE, *(_key(n) for n in range(5))}
    # Every dimension shares out the same calls.
    for dimension in DIMENSION_COLUMNS:
        assert _rows(table, dimension)["calls"].sum() == calls.num_rows


def test_unpriced_calls_are_counted_not_priced_at_zero(
        hours_of_calls: dict[datetime, pa.Table], prices: PriceTable) -> None:
    calls = hours_of_calls[H0]
    model = "gpt-4o"
    without = prices.without(model)
    users = _rows(hour_spend(calls, H0, without), "user")
    frame = _priced_frame(calls, prices)
    is_model = calls.column("model").cast(pa.string()).to_pandas() == model
    assert is_model.sum() > 0
    expected_unpriced = is_model.groupby(frame["user"]).sum()
    expected_cost = frame["cost_usd"].where(~is_model, 0.0).groupby(frame["user"]).sum()
    users = users.sort_index()
    assert users["unpriced_calls"].tolist() == expected_unpriced.sort_index().tolist()
    np.testing.assert_allclose(users["cost_usd"], expected_cost.sort_index(), atol=1e-9)


def test_an_hour_without_calls_has_a_zero_overall_row(prices: PriceTable) -> None:
    table = hour_spend(empty_calls_table(), H0, prices)
    assert table.to_pylist() == [{"hour": H0, "dimension": "overall", "value": "*",
                                  "cost_usd": 0.0, "unpriced_calls": 0, "tokens": 0,
                                  "calls": 0}]


# -- the lake --------------------------------------------------------------------------------

def test_a_rerun_replaces_the_hour(lake: Lake, hours_of_calls: dict[datetime, pa.Table],
                                   prices: PriceTable) -> None:
    lake.write_partition(CALLS, H0, hours_of_calls[H0])
    compute_and_write_hour_spend(lake, H0, prices)
    first = lake.read_partition(SPEND, H0)
    compute_and_write_hour_spend(lake, H0, prices)
    assert lake.read_partition(SPEND, H0).equals(first)
    sums = spend_between(lake, H0, H0 + timedelta(hours=1), "overall")
    assert sums.table.column("calls").to_pylist() == [hours_of_calls[H0].num_rows]
    assert sums.table.column("hours").to_pylist() == [1]


def test_nothing_is_written_for_an_hour_without_calls(lake: Lake, prices: PriceTable) -> None:
    assert compute_and_write_hour_spend(lake, H0, prices) is None
    assert not lake.has_partition(SPEND, H0)


def test_sums_over_hours_equal_the_sum_of_the_hours(
        three_hours: Lake, hours_of_calls: dict[datetime, pa.Table],
        prices: PriceTable) -> None:
    written = (HOURS[0], HOURS[1], HOURS[3])
    per_hour = pd.concat([hour_spend(hours_of_calls[h], h, prices).to_pandas()
                          for h in written])
    for dimension in ("user", "team", "key", "overall"):
        sums = spend_between(three_hours, HOURS[0], HOURS[3] + timedelta(hours=1), dimension)
        assert sums.missing_hours == (HOURS[2],)
        assert not sums.complete
        rows = per_hour[per_hour["dimension"] == dimension]
        expected = rows.groupby("value")[["cost_usd", "unpriced_calls", "tokens", "calls"]].sum()
        ours = sums.table.to_pandas().set_index("value")
        _assert_frames_equal(ours[expected.columns], expected)
        assert ours["hours"].sort_index().tolist() == \
            rows.groupby("value").size().sort_index().tolist()


def test_sums_folded_hour_by_hour_equal_sums_in_one_go(three_hours: Lake,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A month of every user's rows is folded into running sums as it is read (bounded
    memory); folding after every partition gives the sums of one group-by."""
    end = HOURS[3] + timedelta(hours=1)
    at_once = spend_between(three_hours, HOURS[0], end, "user").table.to_pandas()
    monkeypatch.setattr(spend, "_FOLD_ROWS", 1)
    folded = spend_between(three_hours, HOURS[0], end, "user").table.to_pandas()
    pd.testing.assert_frame_equal(folded, at_once, check_exact=False, rtol=0, atol=1e-9)
    assert (folded["hours"] > 1).any()


def test_a_window_of_written_hours_is_complete(three_hours: Lake) -> None:
    sums = spend_between(three_hours, HOURS[0], HOURS[2], "app")
    assert sums.complete and sums.missing_hours == ()
    assert set(sums.table.column("hours").to_pylist()) == {2}


def test_values_filter_and_name_values_without_calls(three_hours: Lake) -> None:
    end = HOURS[3] + timedelta(hours=1)
    every = spend_between(three_hours, HOURS[0], end, "user").table.to_pandas().set_index("value")
    picked = ["user-019", every.index[0], "user-nobody"]
    some = spend_between(three_hours, HOURS[0], end, "user", picked).table.to_pandas()
    some = some.set_index("value")
    assert sorted(some.index) == sorted(picked)
    present = [v for v in picked if v in every.index]
    assert len(present) == 2
    pd.testing.assert_frame_equal(some.loc[present], every.loc[present])
    assert some.loc["user-nobody"].tolist() == [0, 0, 0, 0, 0]


def test_hourly_series_is_nan_where_the_hour_is_missing(three_hours: Lake,
                                                        hours_of_calls: dict[datetime, pa.Table],
                                                        prices: PriceTable) -> None:
    start, end = HOURS[0] - timedelta(hours=1), HOURS[3] + timedelta(hours=1)
    cost = hourly_series(three_hours, start, end, "team", "support")
    tokens = hourly_series(three_hours, start, end, "team", "support", metric="tokens")
    assert np.isnan(cost[[0, 3]]).all() and np.isnan(tokens[[0, 3]]).all()
    for i, h in ((1, HOURS[0]), (2, HOURS[1]), (4, HOURS[3])):
        row = _rows(hour_spend(hours_of_calls[h], h, prices), "team").loc["support"]
        assert cost[i] == pytest.approx(row["cost_usd"], abs=1e-12)
        assert tokens[i] == row["tokens"]
    # A value with no call in an hour that was computed spent 0 there, not unknown.
    idle = hourly_series(three_hours, start, end, "user", "user-nobody")
    assert np.isnan(idle[[0, 3]]).all() and (idle[[1, 2, 4]] == 0).all()


def test_shares_split_the_overall_total(three_hours: Lake) -> None:
    end = HOURS[3] + timedelta(hours=1)
    overall = spend_between(three_hours, HOURS[0], end, "overall").table.to_pylist()[0]
    users = spend_between(three_hours, HOURS[0], end, "user").table.to_pandas()
    for metric, column in (("cost", "cost_usd"), ("tokens", "tokens")):
        table = shares(three_hours, HOURS[0], end, "user", metric).to_pandas()
        assert table["value"].tolist() == users["value"].tolist()
        assert table[column].tolist() == pytest.approx(users[column].tolist(), abs=1e-12)
        np.testing.assert_allclose(table["share"], users[column] / overall[column],
                                   rtol=1e-12)
        assert table["share"].sum() == pytest.approx(1.0, abs=1e-12)


def test_shares_of_an_empty_window_are_empty(lake: Lake) -> None:
    assert shares(lake, H0, H0 + timedelta(hours=2), "app").num_rows == 0


# -- what is refused -------------------------------------------------------------------------

@pytest.mark.parametrize(("start", "end", "message"), [
    (datetime(2026, 11, 20, 13), H0 + timedelta(hours=1), "no time zone"),
    (H0 + timedelta(minutes=30), H0 + timedelta(hours=2), "not a whole UTC hour"),
    # A calendar month in Asia/Kolkata starts at 18:30 UTC.
    (datetime(2026, 12, 1, tzinfo=ZoneInfo("Asia/Kolkata")), H0 + timedelta(days=30),
     "not a whole UTC hour"),
    (H0 + timedelta(hours=2), H0, "ends .* before it starts"),
])
def test_windows_must_be_whole_utc_hours(lake: Lake, start: datetime, end: datetime,
                                         message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        spend_between(lake, start, end, "user")


def test_a_window_in_a_whole_hour_zone_is_taken(lake: Lake) -> None:
    berlin = ZoneInfo("Europe/Berlin")
    start = datetime(2026, 11, 1, tzinfo=berlin)
    series = hourly_series(lake, start, datetime(2026, 12, 1, tzinfo=berlin), "overall", "*")
    assert len(series) == 30 * 24 and np.isnan(series).all()


def test_unknown_names_are_refused(lake: Lake) -> None:
    end = H0 + timedelta(hours=1)
    with pytest.raises(InvalidInput, match="unknown spend dimension 'model'.*user, team"):
        spend_between(lake, H0, end, "model")
    with pytest.raises(InvalidInput, match="unknown spend metric 'calls'.*cost, tokens"):
        shares(lake, H0, end, "user", "calls")


def test_write_takes_only_the_hours_own_spend(lake: Lake, prices: PriceTable,
                                              hours_of_calls: dict[datetime, pa.Table]) -> None:
    table = hour_spend(hours_of_calls[H0], H0, prices)
    with pytest.raises(InvalidInput, match="not only of 2026-11-20T14:00"):
        write_hour_spend(lake, HOURS[1], table)
    with pytest.raises(InvalidInput, match="not in SPEND_SCHEMA"):
        write_hour_spend(lake, H0, table.drop_columns(["calls"]))
    with pytest.raises(InvalidInput, match="lacks the column.*prompt_tokens"):
        hour_spend(hours_of_calls[H0].drop_columns(["prompt_tokens"]), H0, prices)
    assert not lake.has_partition(SPEND, H0) and not lake.has_partition(SPEND, HOURS[1])
    assert write_hour_spend(lake, H0, table).rows == table.num_rows
