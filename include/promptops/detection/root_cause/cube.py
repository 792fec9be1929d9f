"""Leaf cubes from the lake, for the hourly run.

:func:`leaf_cube` builds the cube of one measure from the lake's ``calls`` partitions (actual
hour against a baseline of earlier same hours) and :func:`explain_hour` returns the
:class:`~.localization.Localization` with its one-sentence summary and Markdown table.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from promptops.detection.root_cause.localization import (
    CALL_QUANTITIES,
    MEASURES,
    NONE_VALUE,
    Localization,
    Measure,
    localize,
)
from promptops.errors import InvalidInput, MissingData

if TYPE_CHECKING:  # pandas and the lake load slowly; the command starts without them
    import pandas as pd
    import pyarrow as pa

    from promptops.lake.store import Lake
    from promptops.metrics.pricing import PriceTable

#: Dimensions a leaf cube may cut by, with the call-record column(s) behind each.
CUBE_DIMENSIONS = {"model": "model", "provider": "provider", "app": "app", "team": "team",
                   "user": "user_id", "template": "prompt_template", "region": "region",
                   "gpu_node": "gpu_node"}
#: The default cut for the hourly root cause (``user`` has too many values to be a default).
DEFAULT_DIMS = ("model", "provider", "app", "region", "team", "template", "gpu_node")

#: Per-call squared latency and relevance, summed per leaf for the standard error of a
#: mean (the cube's ``actual_sq`` / ``expected_sq``).
LATENCY_SQ = "latency_sq_ms"
RELEVANCE_SQ = "relevance_sq"
#: A mean measure's numerator -> its squared per-call quantity.
SQUARES = {"latency_ms": LATENCY_SQ, "relevance": RELEVANCE_SQ}

_BASELINE = re.compile(
    r"^(previous_hour|previous_day|previous_week|same_hour_avg_(\d+)d|previous_(\d+)h)$")


def baseline_hours(hour: datetime, baseline: str) -> list[datetime]:
    """The hours a baseline averages: ``previous_hour``, ``previous_day`` (same hour
    yesterday), ``previous_week`` (same hour a week ago), ``same_hour_avg_<k>d`` (the
    same hour of each of the last k days) or ``previous_<k>h`` (each of the k hours before,
    for a lake younger than a day)."""
    match = _BASELINE.match(baseline)
    if not match:
        raise InvalidInput(f"unknown baseline {baseline!r}; use previous_hour, previous_day, "
                         f"previous_week, same_hour_avg_<k>d (e.g. same_hour_avg_7d) or "
                         f"previous_<k>h (e.g. previous_3h)")
    if baseline == "previous_hour":
        return [hour - timedelta(hours=1)]
    if baseline == "previous_day":
        return [hour - timedelta(days=1)]
    if baseline == "previous_week":
        return [hour - timedelta(days=7)]
    if match.group(3):
        hours = int(match.group(3))
        if not 1 <= hours <= 48:
            raise InvalidInput(f"baseline {baseline!r}: k must be between 1 and 48 hours")
        return [hour - timedelta(hours=k) for k in range(1, hours + 1)]
    days = int(match.group(2))
    if not 1 <= days <= 60:
        raise InvalidInput(f"baseline {baseline!r}: k must be between 1 and 60 days")
    return [hour - timedelta(days=k) for k in range(1, days + 1)]


def _call_quantities(calls: pa.Table, prices: PriceTable | None,
                     wanted: set[str]) -> dict[str, np.ndarray]:
    """Per-call values of the quantities a measure sums."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = calls.num_rows
    out: dict[str, np.ndarray] = {"calls": np.ones(n)}
    if wanted & {"errors", "successes"}:
        ok = pc.fill_null(pc.equal(calls.column("status").cast("string"), "success"), False)
        ok = ok.to_numpy(zero_copy_only=False).astype(np.float64)
        out["successes"], out["errors"] = ok, 1.0 - ok
    if "tokens" in wanted or "cost_usd" in wanted:
        prompt = calls.column("prompt_tokens").to_numpy().astype(np.float64)
        completion = calls.column("completion_tokens").to_numpy().astype(np.float64)
        out["tokens"] = prompt + completion
    if "cost_usd" in wanted:
        from promptops.metrics.pricing import load_price_table

        prices = prices if prices is not None else load_price_table()
        cached = calls.column("cached_tokens") if "cached_tokens" in calls.column_names else None
        names = calls.column_names
        costs = prices.cost(
            calls.column("model"), prompt, completion, cached,
            provider=calls.column("provider") if "provider" in names else None,
            latency_ms=calls.column("latency_ms") if "latency_ms" in names else None,
            cache_creation_tokens=(calls.column("cache_creation_tokens")
                                   if "cache_creation_tokens" in names else None))
        # The priced part, as in the metric table: an unpriced call adds nothing.
        out["cost_usd"] = np.where(costs.priced, costs.cost, 0.0)
    if wanted & {"latency_ms", LATENCY_SQ}:
        latency = calls.column("latency_ms").to_numpy(zero_copy_only=False).astype(np.float64)
        latency = np.nan_to_num(latency)
        out["latency_ms"], out[LATENCY_SQ] = latency, latency * latency
    if wanted & {"labelled", "correct"}:
        # As the metric table: labelled = an expected intent; correct = the predicted one
        # equals it (a labelled call without a prediction is wrong).
        expected = calls.column("expected_intent").cast(pa.string())
        predicted = calls.column("predicted_intent").cast(pa.string())
        out["labelled"] = pc.is_valid(expected).to_numpy(zero_copy_only=False).astype(np.float64)
        correct = pc.fill_null(pc.equal(expected, predicted), False)
        out["correct"] = correct.to_numpy(zero_copy_only=False).astype(np.float64)
    if wanted & {"scored", "relevance", RELEVANCE_SQ}:
        score = np.asarray(calls.column("relevance_score").cast(pa.float64())
                           .to_numpy(zero_copy_only=False), dtype=np.float64)
        scored = ~np.isnan(score)  # a null score reads as NaN
        relevance = np.where(scored, score, 0.0)
        out["scored"], out["relevance"] = scored.astype(np.float64), relevance
        out[RELEVANCE_SQ] = relevance * relevance
    return out


def _dimension_column(calls: pa.Table, dim: str) -> pa.ChunkedArray:
    import pyarrow as pa
    import pyarrow.compute as pc

    if dim == "template":
        template = calls.column("prompt_template").cast(pa.string())
        version = pc.fill_null(calls.column("prompt_version").cast(pa.string()), NONE_VALUE)
        joined = pc.binary_join_element_wise(template, version, "@")
        return pc.fill_null(joined, NONE_VALUE)  # no template: (none) whatever the version
    return pc.fill_null(calls.column(CUBE_DIMENSIONS[dim]).cast(pa.string()), NONE_VALUE)


def _hour_cube(calls: pa.Table, dims: Sequence[str], quantities: Sequence[str],
               prices: PriceTable | None) -> pd.DataFrame:
    import pandas as pd

    values = _call_quantities(calls, prices, set(quantities))
    frame = pd.DataFrame({d: _dimension_column(calls, d).to_numpy(zero_copy_only=False)
                          for d in dims})
    for q in quantities:
        frame[q] = values[q]
    return frame.groupby(list(dims), sort=False).sum()


def _columns_for(dims: Sequence[str], quantities: Sequence[str]) -> list[str]:
    cols = {"status"} if {"errors", "successes"} & set(quantities) else set()
    if {"tokens", "cost_usd"} & set(quantities):
        cols |= {"prompt_tokens", "completion_tokens", "cached_tokens", "model"}
    if "cost_usd" in quantities:  # billed as the metric table bills it
        cols |= {"cache_creation_tokens", "provider", "latency_ms"}
    if {"latency_ms", LATENCY_SQ} & set(quantities):
        cols.add("latency_ms")
    if {"labelled", "correct"} & set(quantities):
        cols |= {"expected_intent", "predicted_intent"}
    if {"scored", "relevance", RELEVANCE_SQ} & set(quantities):
        cols.add("relevance_score")
    for d in dims:
        cols |= {"prompt_template", "prompt_version"} if d == "template" else {CUBE_DIMENSIONS[d]}
    return sorted(cols)


def leaf_cube(lake: Lake, hour: datetime, measure: str | Measure,
              dims: Sequence[str] = DEFAULT_DIMS, baseline: str = "same_hour_avg_7d",
              prices: PriceTable | None = None) -> pd.DataFrame:
    """The leaf cube of one hour and one measure, from the lake's ``calls`` partitions.

    One row per combination of ``dims`` values seen in the hour or its baseline (a missing
    value is ``(none)``; ``template`` is ``"<template>@<version>"`` as in the metric table),
    with ``actual`` and ``expected`` (the measure's numerator summed over the leaf's calls)
    and, for a ratio measure, ``actual_den`` and ``expected_den``; ``actual_calls`` and
    ``expected_calls`` are the leaf's calls (the support of a cause) and, for a mean
    (latency, relevance), ``actual_sq`` / ``expected_sq`` the summed squared per-call values
    (its standard error). ``expected`` is the mean
    over the baseline hours (:func:`baseline_hours`) that have a partition; a leaf absent in
    one of them counts 0 there. Cost is the priced part (``prices``: the project's table by
    default).

    Raises ``LookupError`` when the hour or every baseline hour has no ``calls`` partition.
    """
    import pandas as pd

    from promptops.contracts.datasets import CALLS
    from promptops.timeutil import hour_floor

    spec = MEASURES[measure] if isinstance(measure, str) and measure in MEASURES else measure
    if not isinstance(spec, Measure):
        raise InvalidInput(f"unknown measure {measure!r}; known: {', '.join(MEASURES)}")
    unknown = [d for d in dims if d not in CUBE_DIMENSIONS]
    if unknown:
        raise InvalidInput(f"unknown dimension(s) {', '.join(unknown)}; a leaf cube cuts by "
                         f"{', '.join(CUBE_DIMENSIONS)}")
    hour = hour_floor(hour)
    quantities = [q for q in (spec.numerator, spec.denominator) if q is not None]
    bad = [q for q in quantities if q not in CALL_QUANTITIES]
    if bad:
        raise InvalidInput(f"measure {spec.name!r} sums {', '.join(bad)}, which calls do not "
                         f"have; use one of {', '.join(CALL_QUANTITIES)}")
    # Support columns: every leaf's calls, and squared values for a mean.
    squared = SQUARES.get(spec.numerator)
    support = ["calls"] + ([squared] if squared else [])
    quantities = list(dict.fromkeys([*quantities, *support]))
    columns = _columns_for(dims, quantities)

    calls = lake.read_partition(CALLS, hour, columns=columns)
    if calls is None:
        raise MissingData(f"no calls partition for {hour:%Y-%m-%d %H:00} in "
                          f"{lake.partition_dir(CALLS, hour)}; ingest the hour first")
    current = _hour_cube(calls, dims, quantities, prices)
    past = []
    wanted = baseline_hours(hour, baseline)
    for h in wanted:
        table = lake.read_partition(CALLS, h, columns=columns)
        if table is not None:
            past.append(_hour_cube(table, dims, quantities, prices))
    if not past:
        raise MissingData(
            f"baseline {baseline!r} of {hour:%Y-%m-%d %H:00} has no calls partition (looked "
            f"for {', '.join(f'{h:%Y-%m-%d %H:00}' for h in wanted)}); choose a baseline "
            f"the lake covers, e.g. previous_hour")
    expected = pd.concat(past).groupby(level=list(range(len(dims))), sort=False).sum() / len(past)
    cube = pd.concat([current.add_prefix("a_"), expected.add_prefix("e_")], axis=1).fillna(0.0)
    out = cube.reset_index()
    out.columns = [*dims, *cube.columns]
    result = out[list(dims)].copy()
    result["actual"] = out[f"a_{spec.numerator}"].to_numpy()
    result["expected"] = out[f"e_{spec.numerator}"].to_numpy()
    if spec.denominator is not None:
        result["actual_den"] = out[f"a_{spec.denominator}"].to_numpy()
        result["expected_den"] = out[f"e_{spec.denominator}"].to_numpy()
    result["actual_calls"] = out["a_calls"].to_numpy()
    result["expected_calls"] = out["e_calls"].to_numpy()
    if squared:
        result["actual_sq"] = out[f"a_{squared}"].to_numpy()
        result["expected_sq"] = out[f"e_{squared}"].to_numpy()
    result.attrs["baseline_hours"] = len(past)  # what the expected values average
    return result


def explain_hour(lake: Lake, hour: datetime, measure: str, dims: Sequence[str] = DEFAULT_DIMS,
                 baseline: str = "same_hour_avg_7d", prices: PriceTable | None = None,
                 **options: Any) -> Localization:
    """Leaf cube plus localisation for one hour: ``result.sentence`` goes into the alert's
    ``root_cause`` annotation, ``result.table()`` into its details. ``options`` go to
    :func:`localize` (``max_layer``, ``max_causes``, ``min_share``, ``alpha``)."""
    spec = MEASURES.get(measure)
    if spec is None:
        raise InvalidInput(f"unknown measure {measure!r}; known: {', '.join(MEASURES)}")
    cube = leaf_cube(lake, hour, spec, dims, baseline, prices)
    ratio: dict[str, Any] = ({"actual_den": "actual_den", "expected_den": "expected_den"}
                             if spec.is_ratio else {})
    return localize(cube, dims, measure=spec, **ratio, **options)
