"""Rule evaluation: the tidy metric table + the thresholds config -> findings.

:func:`evaluate` judges one evaluation (an hour of metrics, or a 5-minute health table) by
every enabled rule of one ``source`` and returns one :class:`~promptops.contracts.findings.Finding`
per (rule, slice) whose condition holds now, at its worst severity only. The alert engine
turns findings into alerts (pending, firing, resolved); this module keeps no state.

Rule kinds (see :mod:`promptops.detection.thresholds`):

- threshold: the slice's value beyond the warning / critical level in the rule's direction,
  on at least ``min_samples`` samples. A null value (unknown) is never judged.
- comparison: now against the same slice one hour / one day / one week earlier. Both the
  ratio and the absolute change must be exceeded, and both sides need ``min_samples``;
  with ``also_against`` the change must hold against those baselines too (where they have
  the slice), so one unusual reference day (a holiday) does not make the next normal day
  look like a surge.
- composite: every condition holds on the same (dimension, slice).
- budget: the day's total (UTC) against a budget, projected to the end of the day (a rule
  without a budget is off).

Sampling error (``use_bound``, on by default): a threshold rule judges the end of the
value's two-sided ``confidence`` interval nearest its level (a success rate's upper bound
against ``below 99%``); a comparison needs its change to hold beyond the sampling error of
both sides (a two-sample test: for ``above``, now minus ``ratio`` times the baseline must
exceed the two sides' interval half-widths, towards each other, added in quadrature, and
likewise for the absolute change); a composite's
``op``/``value`` condition judges the bound nearest its value. The metric table carries each
row's 95% interval; rules re-derive it at their confidence by the family the rule's unit
implies: a ``ratio`` on the exact (Clopper-Pearson) binomial interval from value and samples
(Wilson's, which the table shows, lets up to 3x its share through on a few expected
failures), exact Poisson for ``count`` and ``calls/min``, and otherwise the stored interval
rescaled by the normal quantiles. A row without an interval (an exact observation) is
judged on its value.

Budget projection: ``projected = spent / observed_hours * 24``, where ``spent`` sums the
day's hourly values from 00:00 up to and including the evaluated hour and ``observed_hours``
counts the hours that have a metrics partition (the evaluated hour always does). An hour
without a partition is *missing*: it is named in the finding and left out of both the sum
and the count, never taken as zero; an hour that has a partition but no row for the slice
is a zero (the slice had no traffic); a null value is unknown for that slice and counts as
missing. This is the mean hourly burn so far carried over the whole day, so it runs high
in the busy hours and low in the night; before ``min_hours`` observed hours the projection
is too noisy and the rule judges what was actually spent instead.

Everything is computed on whole columns (pandas over the Arrow table), one pass per rule;
only the rows that fire become Python objects.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import reduce
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from promptops.contracts.findings import SEVERITY_ORDER, Finding
from promptops.contracts.metric_table import (
    INTENT_ACCURACY,
    METRICS,
    METRICS_SCHEMA,
    NONE_SLICE,
    OTHER_SLICE,
    OVERALL,
    RELEVANCE_MEAN,
    UNPRICED_REQUESTS,
)
from promptops.detection.thresholds import (
    BASELINE_OFFSETS,
    BudgetRule,
    Change,
    ComparisonRule,
    CompositeRule,
    Condition,
    Level,
    Source,
    ThresholdRule,
    ThresholdsConfig,
    format_window,
)
from promptops.errors import InvalidInput
from promptops.stats import (
    INTERVAL_CONFIDENCE,
    exact_binomial_interval,
    poisson_interval,
    rescale_interval,
)
from promptops.timeutil import as_utc

if TYPE_CHECKING:
    from promptops.lake.store import Lake

log = logging.getLogger(__name__)

#: GPU utilisation rows, written by the health sensor (one slice per serving node).
GPU_UTILIZATION_PCT = "gpu_utilization_pct"
GPU_NODE = "gpu_node"

_KEY = ["dimension", "slice"]
_VALUE_COLUMNS = ["value", "samples", "lower", "upper"]

#: How a metric is called in a summary line (else its name with spaces).
METRIC_LABELS = {
    "success_rate": "success rate", "error_rate": "error rate", "requests": "requests",
    "latency_mean_ms": "mean latency", "latency_trimmed_mean_ms": "trimmed mean latency",
    "latency_p50_ms": "p50 latency",
    "latency_p95_ms": "p95 latency", "latency_p99_ms": "p99 latency",
    "total_tokens": "tokens", "prompt_tokens": "prompt tokens",
    "completion_tokens": "completion tokens", "cost_usd": "cost",
    INTENT_ACCURACY: "intent accuracy", RELEVANCE_MEAN: "answer relevance",
    "peak_calls_per_minute": "peak calls per minute", GPU_UTILIZATION_PCT: "GPU utilisation",
    "source_cost_usd": "the source's own cost",
    "cost_source_gap_pct": "gap between our cost and the source's",
}
#: What ``samples`` counts, for the summary's "(1,234 calls)".
SAMPLE_NOUNS = {INTENT_ACCURACY: "labelled calls", RELEVANCE_MEAN: "scored answers",
                GPU_UTILIZATION_PCT: "readings", "cost_source_gap_pct": "priced calls"}

_UNIT_FORMATS = {
    "ratio": lambda v: f"{v * 100:.1f}%",
    "pct": lambda v: f"{v:.1f}%",
    "ms": lambda v: f"{v:,.1f} ms",
    "tokens": lambda v: f"{v:,.0f} tokens",
    "usd": lambda v: f"${v:,.2f}",
    "score": lambda v: f"{v:.2f}/5",
    "calls/min": lambda v: f"{v:,.0f} calls/min",
    "count": lambda v: f"{v:,.0f}",
}


def format_value(value: float | None, unit: str | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "unknown"
    return _UNIT_FORMATS.get(unit or "count", _UNIT_FORMATS["count"])(value)


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric.replace("_", " "))


# -- metric frames ------------------------------------------------------------------------


class MetricFrame:
    """One evaluation's metric rows, split by metric, indexed by (dimension, slice)."""

    def __init__(self, table: pa.Table | None, what: str = "metrics table") -> None:
        self.by_metric: dict[str, pd.DataFrame] = {}
        if table is None:
            return
        missing = [c for c in ("metric", *_KEY, *_VALUE_COLUMNS) if c not in table.column_names]
        if missing:
            raise InvalidInput(f"{what}: missing column(s) {', '.join(missing)}; expected the "
                             "layout of promptops.contracts.metric_table.METRICS_SCHEMA")
        if table.num_rows == 0:
            return
        df = table.select(["metric", *_KEY, *_VALUE_COLUMNS]).to_pandas()
        dup = df.duplicated(["metric", *_KEY])
        if dup.any():
            first = df[dup].iloc[0]
            raise InvalidInput(
                f"{what}: {int(dup.sum())} duplicate row(s), e.g. metric={first.metric} "
                f"{first.dimension}={first.slice}; pass the rows of one evaluation only")
        for metric, rows in df.groupby("metric", sort=False):
            self.by_metric[str(metric)] = rows.set_index(_KEY)[_VALUE_COLUMNS]

    def rows(self, metric: str, dimensions: list[str] | None = None,
             min_samples: int = 0) -> pd.DataFrame:
        """Rows of a metric with a known value and enough samples, in the given dimensions."""
        df = self.by_metric.get(metric)
        if df is None:
            return _EMPTY
        mask = df["value"].notna().to_numpy() & (df["samples"].to_numpy() >= min_samples)
        if dimensions is not None:
            mask &= df.index.get_level_values("dimension").isin(dimensions)
        # A caller is one user or key: the calls with none (a source without user ids) and
        # the rest beyond the top users are many callers together, never judged as one.
        if dimensions is None or "user" in dimensions:
            mask &= ~(df.index.get_level_values("dimension").isin(["user"])
                      & df.index.get_level_values("slice").isin([NONE_SLICE, OTHER_SLICE]))
        return df[mask]

    def values(self, metric: str, dimensions: list[str] | None = None) -> pd.Series:
        """Every row's value (null kept as NaN), for budgets."""
        df = self.by_metric.get(metric)
        if df is None:
            return _EMPTY["value"]
        if dimensions is not None:
            df = df[df.index.get_level_values("dimension").isin(dimensions)]
        return df["value"].astype("float64")


_EMPTY = pd.DataFrame({"value": pd.Series(dtype="float64"), "samples": pd.Series(dtype="int64"),
                       "lower": pd.Series(dtype="float64"), "upper": pd.Series(dtype="float64")},
                      index=pd.MultiIndex.from_arrays([[], []], names=_KEY))


@dataclass
class MetricHistory:
    """Metric tables of earlier evaluations, by hour; an hour that is not here is missing.

    Build it with :meth:`from_lake` (reads only the partitions the config's rules need) or
    :meth:`from_tables` (tests, or tables already in memory).
    """

    frames: dict[datetime, MetricFrame] = field(default_factory=dict)

    @classmethod
    def from_tables(cls, tables: Mapping[datetime, pa.Table | None] | Iterable[pa.Table]
                    ) -> MetricHistory:
        """From ``{hour: table}``, or from tables whose ``hour`` column says the hour."""
        frames: dict[datetime, MetricFrame] = {}
        if isinstance(tables, Mapping):
            for hour, table in tables.items():
                if table is not None:
                    frames[as_utc(hour)] = MetricFrame(table, _what(hour))
            return cls(frames)
        # Not a Mapping here; mypy cannot narrow a union of two iterables with isinstance.
        for table in cast("Iterable[pa.Table]", tables):
            hours = table.column("hour")
            for hour in pc.unique(hours).to_pylist():
                part = table.filter(pc.equal(hours, pa.scalar(hour, hours.type)))
                frames[as_utc(hour)] = MetricFrame(part, _what(hour))
        return cls(frames)

    @classmethod
    def from_lake(cls, lake: Lake, hour: datetime, config: ThresholdsConfig | None = None, *,
                  source: Source | None = "hourly", dataset: str = METRICS) -> MetricHistory:
        """Read the partitions the rules need for an evaluation of ``hour``: the comparison
        baselines (previous hour, same hour yesterday, same hour last week) and, for budgets,
        the day's earlier hours. Only the metrics the rules use are kept in memory."""
        hours, metrics = needed_history(config, hour, source)
        frames = {}
        for h in sorted(hours):
            table = lake.read_partition(dataset, h, columns=list(METRICS_SCHEMA.names))
            if table is None:
                continue
            if metrics is not None:
                table = table.filter(pc.is_in(table.column("metric"),
                                              value_set=pa.array(sorted(metrics), pa.string())))
            frames[h] = MetricFrame(table, f"{dataset} partition {h:%Y-%m-%d %H:00}")
        return cls(frames)

    def frame(self, hour: datetime) -> MetricFrame | None:
        return self.frames.get(as_utc(hour))


def needed_history(config: ThresholdsConfig | None, hour: datetime,
                   source: Source | None = "hourly") -> tuple[set[datetime], set[str] | None]:
    """Which earlier hours and which metrics an evaluation of ``hour`` reads."""
    hour = as_utc(hour)
    day_hours = {_day_start(hour) + timedelta(hours=i) for i in range(hour.hour)}
    if config is None:
        return {hour - off for off in BASELINE_OFFSETS.values()} | day_hours, None
    hours: set[datetime] = set()
    metrics: set[str] = set()
    for rule in config.rules_for(source).values():
        if isinstance(rule, ComparisonRule):
            hours |= {hour - BASELINE_OFFSETS[b] for b in (rule.against, *rule.also_against)}
            metrics.add(rule.metric)
        elif isinstance(rule, BudgetRule):
            hours |= day_hours
            metrics.add(rule.metric)
    return hours, metrics


# -- evaluation ---------------------------------------------------------------------------


def evaluate(config: ThresholdsConfig, current: pa.Table, history: MetricHistory,
             hour: datetime, *, source: Source | None = "hourly") -> list[Finding]:
    """Every finding of one evaluation, sorted by rule, dimension and slice.

    ``current``: the evaluation's rows (METRICS_SCHEMA). ``history``: earlier hours for
    comparisons and budgets. ``hour``: the evaluated hour (the data interval's start).
    ``source``: which rules run (``hourly``, ``health``, or ``None`` for all).
    """
    hour = as_utc(hour)
    frame = MetricFrame(current, _what(hour))
    findings: list[Finding] = []
    for name, rule in config.rules_for(source).items():
        if isinstance(rule, ThresholdRule):
            findings += _threshold_findings(name, rule, frame)
        elif isinstance(rule, ComparisonRule):
            findings += _comparison_findings(name, rule, frame, history, hour)
        elif isinstance(rule, CompositeRule):
            findings += _composite_findings(name, rule, frame, config)
        elif isinstance(rule, BudgetRule):
            findings += _budget_findings(name, rule, frame, history, hour)
    return sorted(findings, key=lambda f: (f.rule, f.labels["dimension"], f.labels["slice"]))


def bounds_at(value: np.ndarray, lower: np.ndarray, upper: np.ndarray, samples: np.ndarray,
              unit: str | None, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """The rows' two-sided sampling interval at ``confidence`` from the table's 95% one
    (see the module docstring); NaN where a row has no interval."""
    value, lower, upper = (np.asarray(a, dtype=np.float64) for a in (value, lower, upper))
    if len(value) == 0 or (confidence == INTERVAL_CONFIDENCE and unit != "ratio"):
        return lower, upper
    has = ~(np.isnan(lower) | np.isnan(upper))
    lo, hi = (np.array(a, dtype=np.float64) for a in
              rescale_interval(value, lower, upper, confidence))
    alpha = 1.0 - confidence
    if unit == "ratio":
        n = np.asarray(samples, dtype=np.float64)
        ok = has & (n > 0) & (value >= 0) & (value <= 1)
        if ok.any():
            # Round: value * samples is a count up to the last bit of the stored rate.
            lo[ok], hi[ok] = exact_binomial_interval(np.rint(value[ok] * n[ok]), n[ok], alpha)
    elif unit in ("count", "calls/min"):
        ok = has & (value >= 0)
        if ok.any():
            lo[ok], hi[ok] = poisson_interval(value[ok], alpha)
    return np.where(has, lo, np.nan), np.where(has, hi, np.nan)


def _judged(rows: pd.DataFrame, unit: str | None, confidence: float, use_bound: bool,
            side: str, suffix: str = "") -> np.ndarray:
    """The value, or its ``lower``/``upper`` bound at ``confidence`` where it has one."""
    value = rows["value" + suffix].to_numpy(dtype="float64")
    if not use_bound:
        return value
    lo, hi = bounds_at(value, rows["lower" + suffix].to_numpy(dtype="float64"),
                       rows["upper" + suffix].to_numpy(dtype="float64"),
                       rows["samples" + suffix].to_numpy(dtype="float64"), unit, confidence)
    bound = lo if side == "lower" else hi
    return np.where(np.isnan(bound), value, bound)


def _threshold_masks(rule: ThresholdRule, rows: pd.DataFrame,
                     ) -> tuple[np.ndarray, np.ndarray, pd.Series]:
    """(warning-or-worse, critical) masks over ``rows`` and the series that was judged:
    the bound nearest the level, so only a confidently bad slice breaches."""
    x = _judged(rows, rule.unit, rule.confidence, rule.use_bound,
                "upper" if rule.direction == "below" else "lower")
    judged = pd.Series(x, index=rows.index)

    def breach(level: float | None) -> np.ndarray:
        if level is None:
            return np.zeros(len(x), dtype=bool)
        return x < level if rule.direction == "below" else x > level

    crit = breach(rule.critical)
    return breach(rule.warning) | crit, crit, judged


def _threshold_findings(name: str, rule: ThresholdRule, frame: MetricFrame) -> list[Finding]:
    rows = frame.rows(rule.metric, rule.dimensions, rule.min_samples)
    if rows.empty:
        return []
    warn, crit, judged = _threshold_masks(rule, rows)
    op = "<" if rule.direction == "below" else ">"
    levels = ", ".join(f"{sev} {op} {format_value(rule.level(sev), rule.unit)}"
                       for sev in ("warning", "critical") if rule.level(sev) is not None)
    out = []
    for i in np.flatnonzero(warn):
        (dim, slc), row = rows.index[i], rows.iloc[i]
        severity: Level = "critical" if crit[i] else "warning"
        level = rule.level(severity)
        value = float(row["value"])
        shown = format_value(value, rule.unit)
        if rule.use_bound and judged.iloc[i] != value:
            side = "upper" if rule.direction == "below" else "lower"
            shown += f" ({side} bound {format_value(float(judged.iloc[i]), rule.unit)})"
        summary = (f"{metric_label(rule.metric)} {shown} {op} {format_value(level, rule.unit)} "
                   f"{_where(dim, slc)} ({_samples(rule.metric, row['samples'])})")
        extra = {"levels": levels}
        if rule.metric == UNPRICED_REQUESTS and dim == "model":
            from promptops.metrics.pricing import unpriced_note

            extra["closest_priced_model"] = unpriced_note(str(slc))
            summary += f"; {extra['closest_priced_model']}"
        if rule.use_bound:
            extra["confidence"] = _confidence_note(rule.confidence)
        out.append(_finding(name, rule, severity, "threshold", rule.metric, dim, slc, summary,
                            value, level, extra))
    return out


@dataclass
class _Compared:
    """One comparison of now against one baseline hour, per joined (dimension, slice)."""

    joined: pd.DataFrame
    warn: np.ndarray
    crit: np.ndarray
    #: Per severity: how far beyond ``base x ratio`` the value had to lie (sampling error).
    ratio_margin: dict[str, np.ndarray]


def _compare(rule: ComparisonRule, now_rows: pd.DataFrame, base_rows: pd.DataFrame) -> _Compared:
    joined = now_rows.join(base_rows, how="inner", suffixes=("", "_base"))
    cur = joined["value"].to_numpy(dtype="float64")
    base = joined["value_base"].to_numpy(dtype="float64")
    # Sampling error of each side: the half-width of its interval on the side the change
    # moves towards (now's lower side and the baseline's upper side for ``above``).
    up = rule.direction == "above"
    cur_m = np.abs(cur - _judged(joined, rule.unit, rule.confidence, rule.use_bound,
                                 "lower" if up else "upper"))
    base_m = np.abs(_judged(joined, rule.unit, rule.confidence, rule.use_bound,
                            "upper" if up else "lower", "_base") - base)

    def margins(level: Change) -> tuple[np.ndarray, np.ndarray]:
        """How far beyond each limit the point values must lie: a two-sample test at the
        rule's confidence (the two sides' errors add in quadrature)."""
        scale = level.ratio if up else 1.0 / level.ratio
        return np.hypot(cur_m, scale * base_m), np.hypot(cur_m, base_m)

    def holds(level: Change | None) -> np.ndarray:
        if level is None:
            return np.zeros(len(cur), dtype=bool)
        by_ratio, by_change = margins(level)
        if up:
            return ((cur - base * level.ratio >= by_ratio)
                    & (cur - base - level.change >= by_change))
        return ((base / level.ratio - cur >= by_ratio)
                & (base - cur - level.change >= by_change))

    crit = holds(rule.critical)
    return _Compared(joined, holds(rule.warning) | crit, crit,
                     {sev: margins(lvl)[0] for sev, lvl in
                      (("warning", rule.warning), ("critical", rule.critical))
                      if lvl is not None})


def _comparison_findings(name: str, rule: ComparisonRule, frame: MetricFrame,
                         history: MetricHistory, hour: datetime) -> list[Finding]:
    then = hour - BASELINE_OFFSETS[rule.against]
    before = history.frame(then)
    if before is None:
        log.info("rule %s: no metrics for %s (%s), comparison skipped", name,
                 f"{then:%Y-%m-%d %H:%M}", rule.against)
        return []
    now_rows = frame.rows(rule.metric, rule.dimensions, rule.min_samples)
    base_rows = before.rows(rule.metric, rule.dimensions, rule.min_samples)
    if now_rows.empty or base_rows.empty:
        return []
    main = _compare(rule, now_rows, base_rows)
    joined, warn, crit = main.joined, main.warn.copy(), main.crit.copy()
    also: list[tuple[str, _Compared]] = []
    for extra in rule.also_against:
        other = history.frame(hour - BASELINE_OFFSETS[extra])
        if other is None:
            continue  # no evidence either way: the main baseline decides
        c = _compare(rule, now_rows, other.rows(rule.metric, rule.dimensions, rule.min_samples))
        # A slice without a row then (no traffic) does not overrule the main baseline.
        warn &= _on(c.warn, c.joined.index, joined.index)
        crit &= _on(c.crit, c.joined.index, joined.index)
        also.append((extra, c))
    cur = joined["value"].to_numpy(dtype="float64")
    base = joined["value_base"].to_numpy(dtype="float64")
    up = rule.direction == "above"
    against = rule.against.replace("_", " ")
    out = []
    for i in np.flatnonzero(warn):
        dim, slc = joined.index[i]
        severity: Level = "critical" if crit[i] else "warning"
        level = rule.level(severity)
        assert level is not None  # no row holds at a missing level
        now_v, base_v = float(cur[i]), float(base[i])
        detail = _change_text(rule, now_v, base_v, against)
        summary = (f"{metric_label(rule.metric)} {format_value(now_v, rule.unit)} is "
                   f"{_factor(now_v, base_v)} the {against} ({format_value(base_v, rule.unit)}) "
                   f"{_where(dim, slc)} ({_samples(rule.metric, joined['samples'].iloc[i])})")
        threshold = base_v * level.ratio if up else base_v / level.ratio
        ann = {"comparison": detail, "baseline_hour": f"{then:%Y-%m-%dT%H:%MZ}",
               "levels": f"ratio >= {level.ratio:g} and change >= "
                         f"{format_value(level.change, rule.unit)} ({severity})"}
        margin = float(main.ratio_margin[severity][i])
        if rule.use_bound and margin > 0:
            ann["judged"] = (f"beyond {format_value(threshold, rule.unit)} by more than its "
                             f"sampling error ({format_value(margin, rule.unit)} at "
                             f"{rule.confidence * 100:g}% confidence)")
        seen = [_change_text(rule, now_v, float(c.joined["value_base"].loc[(dim, slc)]),
                             extra.replace("_", " "))
                for extra, c in also if (dim, slc) in c.joined.index]
        if seen:
            ann["also_against"] = "; ".join(seen)
        out.append(_finding(name, rule, severity, "comparison", rule.metric, dim, slc, summary,
                            now_v, threshold, ann))
    return out


def _on(mask: np.ndarray, index: pd.Index, target: pd.Index) -> np.ndarray:
    """``mask`` (over ``index``) on ``target``'s rows; True where ``index`` lacks the row."""
    return pd.Series(mask, index=index).reindex(target, fill_value=True).to_numpy(dtype=bool)


def _factor(now_v: float, base_v: float) -> str:
    return f"x{now_v / base_v:.1f}" if base_v else "new"


def _change_text(rule: ComparisonRule, now_v: float, base_v: float, against: str) -> str:
    return (f"{_factor(now_v, base_v)} vs {against}: {format_value(base_v, rule.unit)} -> "
            f"{format_value(now_v, rule.unit)}")


def _condition_mask(cond: Condition, rule: CompositeRule, frame: MetricFrame,
                    config: ThresholdsConfig) -> tuple[pd.DataFrame, str, str]:
    """Rows (indexed by dimension, slice) where one condition holds, plus how to show it."""
    if cond.level is not None:
        ref_name, ref = config.threshold_rule_for(cond, rule.source)
        min_samples = cond.min_samples if cond.min_samples is not None else max(
            ref.min_samples, rule.min_samples)
        rows = frame.rows(cond.metric, rule.dimensions, min_samples)
        if rows.empty:
            return rows, "", ""
        warn, crit, _ = _threshold_masks(ref, rows)
        op = "<" if ref.direction == "below" else ">"
        return (rows[crit if cond.level == "critical" else warn], ref.unit,
                f"{op} {format_value(ref.level(cond.level), ref.unit)}")
    min_samples = cond.min_samples if cond.min_samples is not None else rule.min_samples
    rows = frame.rows(cond.metric, rule.dimensions, min_samples)
    x = _judged(rows, cond.unit, rule.confidence, rule.use_bound,
                "lower" if cond.op in (">", ">=") else "upper")
    v = cond.value
    mask = {">": x > v, ">=": x >= v, "<": x < v, "<=": x <= v}[cond.op]  # type: ignore[index]
    return rows[mask], cond.unit or "count", f"{cond.op} {format_value(v, cond.unit)}"


def _composite_findings(name: str, rule: CompositeRule, frame: MetricFrame,
                        config: ThresholdsConfig) -> list[Finding]:
    legs = [_condition_mask(cond, rule, frame, config) for cond in rule.conditions]
    common = legs[0][0].index
    for rows, _, _ in legs[1:]:
        common = common.intersection(rows.index)
    out = []
    for dim, slc in common:
        parts = [f"{metric_label(cond.metric)} "
                 f"{format_value(float(rows.loc[(dim, slc), 'value']), unit)} {shown}"
                 for cond, (rows, unit, shown) in zip(rule.conditions, legs, strict=True)]
        first = float(legs[0][0].loc[(dim, slc), "value"])
        summary = " AND ".join(parts) + f" {_where(dim, slc)}"
        metrics = "+".join(c.metric for c in rule.conditions)
        out.append(_finding(name, rule, rule.severity, "composite", metrics, dim, slc, summary,
                            first, None, {"conditions": "; ".join(parts)}))
    return out


def _budget_findings(name: str, rule: BudgetRule, frame: MetricFrame,
                     history: MetricHistory, hour: datetime) -> list[Finding]:
    if rule.budget is None:  # off until a person sets a budget
        return []
    budget: float = rule.budget
    hour = hour.replace(minute=0, second=0, microsecond=0)
    day = _day_start(hour)
    hours = [day + timedelta(hours=i) for i in range(hour.hour + 1)]
    observed: dict[datetime, pd.Series] = {}
    missing: list[datetime] = []
    for h in hours:
        f = frame if h == hour else history.frame(h)
        if f is None:
            missing.append(h)
        else:
            observed[h] = f.values(rule.metric, rule.dimensions)
    indexes = [s.index for s in observed.values() if len(s)]
    if not indexes:
        return []
    union = reduce(lambda a, b: a.union(b), indexes[1:], indexes[0])
    # A slice absent from an observed hour had no traffic (0); a null stays NaN = unknown.
    table = pd.DataFrame({h: s.reindex(union, fill_value=0.0) for h, s in observed.items()})
    spent = table.sum(axis=1, skipna=True).to_numpy()
    n_obs = table.notna().sum(axis=1).to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        projected = np.where(n_obs > 0, spent / n_obs * 24.0, np.nan)
    projecting = n_obs >= rule.min_hours
    judged = np.where(projecting, projected, spent)
    crit = judged >= budget * rule.critical if rule.critical is not None else \
        np.zeros(len(judged), dtype=bool)
    warn = (judged >= budget * rule.warning) | crit
    out = []
    for i in np.flatnonzero(warn):
        dim, slc = union[i]
        severity: Level = "critical" if crit[i] else "warning"
        share = rule.level(severity)
        assert share is not None  # crit is all False without a critical level
        unknown = [h for h in table.columns if pd.isna(table.iloc[i][h])]
        gaps = sorted(missing + unknown)
        fmt = lambda v: format_value(v, rule.unit)  # noqa: E731
        label = f"daily {metric_label(rule.metric)}"
        if projecting[i]:
            head = (f"{label} projected {fmt(projected[i])} by end of day vs budget "
                    f"{fmt(budget)} (x{projected[i] / budget:.1f}); "
                    f"spent {fmt(spent[i])} by {hour:%H}:59 UTC")
        else:
            head = (f"{label} spent {fmt(spent[i])} by {hour:%H}:59 UTC vs budget "
                    f"{fmt(budget)} (x{spent[i] / budget:.1f})")
        summary = f"{head} {_where(dim, slc)}"
        method = (f"spent {fmt(spent[i])} over {int(n_obs[i])} observed hour(s) of "
                  f"{len(hours)} since 00:00 UTC; projected = spent / {int(n_obs[i])} x 24 = "
                  f"{fmt(projected[i])}")
        if not projecting[i]:
            method += (f" (fewer than {rule.min_hours} observed hours: judged on what was "
                       "spent, not the projection)")
        ann = {"budget": method, "budget_level": f"{severity} at {share:g} x {fmt(budget)}",
               "missing_hours": ", ".join(f"{h:%H:00}" for h in gaps) or "none"}
        if gaps:
            summary += f"; {len(gaps)} hour(s) missing: {ann['missing_hours']}"
        out.append(_finding(name, rule, severity, "budget", rule.metric, dim, slc, summary,
                            float(judged[i]), budget * share, ann))
    return out


# -- helpers ------------------------------------------------------------------------------


def _finding(name: str, rule: Any, severity: str, kind: str, metric: str, dim: str, slc: str,
             summary: str, value: float | None, threshold: float | None,
             extra: dict[str, str]) -> Finding:
    labels = {"metric": metric, "dimension": str(dim), "slice": str(slc), "service": rule.service}
    if dim != OVERALL:
        labels.setdefault(str(dim), str(slc))
    annotations = {"window": format_window(rule.window), **extra}
    if rule.description:
        annotations["description"] = rule.description
    if rule.runbook:
        annotations["runbook"] = rule.runbook
    if rule.heal and SEVERITY_ORDER[severity] >= SEVERITY_ORDER[rule.heal_on]:
        annotations["heal_playbook"] = rule.heal
    return Finding(rule=name, severity=severity, kind=kind, labels=labels,  # type: ignore[arg-type]
                   summary=summary, value=value, threshold=threshold, pending_for=rule.for_,
                   keep_firing_for=rule.keep_firing_for, annotations=annotations)


def _confidence_note(confidence: float) -> str:
    return f"judged on the {confidence * 100:g}% sampling interval's bound nearest the level"


def _where(dim: str, slc: str) -> str:
    return "overall" if dim == OVERALL else f"on {dim}={slc}"


def _samples(metric: str, n: Any) -> str:
    return f"{int(n):,} {SAMPLE_NOUNS.get(metric, 'calls')}"


def _what(hour: datetime) -> str:
    return f"metrics of {as_utc(hour):%Y-%m-%d %H:%M} UTC"


def _day_start(hour: datetime) -> datetime:
    return as_utc(hour).replace(hour=0, minute=0, second=0, microsecond=0)
