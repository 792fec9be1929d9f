"""select_sample: only eligible records, bounded, the same records on a rerun."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from promptops.metrics.judge import eligible_mask, select_sample
from tests.helpers.judge import call_row, calls_table


def test_only_unscored_successful_records_with_both_real_texts() -> None:
    table = calls_table([
        call_row("keep-1"),
        call_row("keep-2", app="search-qa"),
        call_row("scored", score=4.5),
        call_row("redacted-prompt", prompt="[redacted]"),
        call_row("redacted-response", response=" [REDACTED] "),
        call_row("redacted-tagged", response="[redacted: pii]"),
        call_row("no-prompt", prompt=None),
        call_row("no-response", response=None),
        call_row("blank-response", response="   "),
        call_row("failed-call", status="error"),
    ])
    picked = select_sample(table, 100, seed=0)
    assert sorted(picked["call_id"].to_pylist()) == ["keep-1", "keep-2"]
    assert picked.schema == table.schema


def test_bounded_and_deterministic_whatever_the_row_order(calls: pa.Table) -> None:
    eligible = pc.sum(eligible_mask(calls)).as_py()
    assert eligible > 100  # the simulated hour has plenty to choose from
    first = select_sample(calls, 25, seed=3)
    assert first.num_rows == 25
    assert select_sample(calls, 25, seed=3)["call_id"] == first["call_id"]
    shuffled = calls.take(pa.array(list(range(calls.num_rows))[::-1]))
    assert shuffled["call_id"] != calls["call_id"]
    assert select_sample(shuffled, 25, seed=3)["call_id"].to_pylist() == \
        first["call_id"].to_pylist()
    # Another seed, another sample; a larger n keeps the smaller sample (bottom-k).
    assert set(select_sample(calls, 25, seed=4)["call_id"].to_pylist()) != \
        set(first["call_id"].to_pylist())
    assert set(first["call_id"].to_pylist()) <= set(select_sample(calls, 60, seed=3)
                                                    ["call_id"].to_pylist())
    assert select_sample(calls, 10_000, seed=3).num_rows == eligible


def test_a_late_record_does_not_reshuffle_the_sample(calls: pa.Table) -> None:
    before = set(select_sample(calls, 20, seed=0)["call_id"].to_pylist())
    late = calls_table([call_row(f"late-{i}") for i in range(5)])
    after = set(select_sample(pa.concat_tables([calls, late]), 20, seed=0)["call_id"]
                .to_pylist())
    # At most the added records displace earlier picks; the rest stays the same.
    assert len(before - after) <= 5 and len(after - before) <= 5
    assert after - before <= {f"late-{i}" for i in range(5)}


def test_a_duplicated_call_is_judged_once() -> None:
    table = calls_table([call_row("dup"), call_row("dup"), call_row("other")])
    assert sorted(select_sample(table, 10, 0)["call_id"].to_pylist()) == ["dup", "other"]


def test_zero_and_bad_sizes() -> None:
    table = calls_table([call_row("a")])
    assert select_sample(table, 0, 0).num_rows == 0
    with pytest.raises(ValueError, match="sample size"):
        select_sample(table, -1, 0)
    with pytest.raises(ValueError, match="prompt_text.*CALLS_SCHEMA"):
        select_sample(table.drop_columns(["prompt_text"]), 5, 0)
