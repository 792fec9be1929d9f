"""A calls partition written before a column was added reads with that column as nulls."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pytest

from promptops.contracts.datasets import CALLS
from promptops.errors import InvalidInput
from promptops.lake.store import Lake

H = datetime(2026, 9, 7, 10, tzinfo=UTC)


def test_an_old_partition_reads_the_new_columns_as_nulls(tmp_path):
    lake = Lake(f"file://{tmp_path}")
    old = pa.table({"call_id": ["a", "b"], "prompt_tokens": pa.array([3, 4], pa.int64())})
    lake.write_partition(CALLS, H, old)
    got = lake.read_partition(CALLS, H, columns=["prompt_tokens", "cache_creation_tokens",
                                                 "call_id"])
    assert got.column_names == ["prompt_tokens", "cache_creation_tokens", "call_id"]
    assert got.column("cache_creation_tokens").to_pylist() == [None, None]
    assert got.schema.field("cache_creation_tokens").type == pa.int64()
    with pytest.raises(InvalidInput, match="no column 'colour'"):
        lake.read_partition(CALLS, H, columns=["call_id", "colour"])
