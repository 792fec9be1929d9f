"""Budgets judged each hour: exact spend per scope, its end-of-period projection, and each
threshold fired once per period per scope.

For every budget of ``budgets.yaml`` (:mod:`promptops.detection.budgets.config`) and every
scope value it covers, at the end of the evaluated hour:

- **spent**: the exact sum of the period so far, from the hourly spend per scope
  (:mod:`promptops.metrics.spend`: every user, team, app and key, not the metrics' top N);
- **projected**: spent plus the forecast of the rest of the period with its interval
  (:mod:`promptops.detection.budgets.forecast`): a Holt-Winters fit for named scopes, the
  platform's forecast scaled by the scope's share for "every user"-style selectors, linear
  (and saying so) with too little history;
- **thresholds**: ``on: spent`` crosses when spent reaches ``at`` times the amount; ``on:
  forecast`` ("will exceed") when the projection's *lower* end does, never on a linear
  projection (no page on a fallback). A forecast whose upper end reaches the amount while
  its lower end does not gives a "may exceed" note (severity info), once per period.

**Once per period per scope.** A crossing is claimed in the lake's budget ledger
(``budget_ledger/<budget>/<period>/<scope>/<threshold>``) with an exclusive create: the
evaluation that creates it raises the finding, a rerun of that same evaluation raises it
again (the alert engine answers a rerun with its stored outcome), and every later
evaluation of the period finds it claimed and stays silent. The next period has other
keys: the thresholds re-arm by themselves. The finding keeps firing for the rest of the
period (``keep_firing_for``), so the alert engine neither reminds nor resolves it before
the period ends; the ``budget`` route of ``alerting.yaml`` sends no reminder and no
all-clear.

Soft budgets are evaluated and reported, never alerted.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from promptops.contracts.datasets import BUDGET_LEDGER
from promptops.contracts.findings import Finding
from promptops.detection.budgets.config import (
    Budget,
    BudgetsConfig,
    Threshold,
    scope_dimension,
    scope_values,
)
from promptops.detection.budgets.forecast import (
    Projection,
    project_series,
    project_shares,
)
from promptops.detection.budgets.periods import Period, hour_bounds, period_at
from promptops.lake.store import Lake
from promptops.timeutil import as_utc

log = logging.getLogger(__name__)

LEDGER = BUDGET_LEDGER
RULE = "budget"
#: Hours of hourly spend a forecast is fitted on, and over which shares are measured.
HISTORY = timedelta(days=21)
SHARE_WINDOW = timedelta(days=7)
#: Scopes listed one by one that are still fitted one by one (beyond, shares are used).
MAX_FITTED = 25
#: Rows kept per budget for the report and the run's XCom: the scopes nearest their amount.
TOP_ROWS = 20


@dataclass
class ScopeRow:
    """One scope of one budget at one evaluation."""

    budget: str
    dimension: str
    value: str
    metric: str
    period: str
    period_start: str
    period_end: str
    amount: float
    spent: float
    projected: float
    lower: float
    upper: float
    method: str
    reason: str
    soft: bool
    #: Thresholds crossed this period (``80%``, ``forecast 100%``), and those newly crossed
    #: by this evaluation.
    crossed: list[str] = field(default_factory=list)
    fired: list[str] = field(default_factory=list)
    may_exceed: bool = False

    @property
    def used(self) -> float:
        return self.spent / self.amount if self.amount else math.inf


@dataclass
class BudgetOutcome:
    evaluated_at: datetime
    rows: list[ScopeRow]
    findings: list[Finding]
    #: Scopes evaluated per budget (all of them, beyond the rows kept).
    scopes: dict[str, int] = field(default_factory=dict)
    #: Hours of a budget's period with no spend data (its figure is then a floor).
    missing_hours: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"evaluated_at": self.evaluated_at.isoformat(),
                "rows": [asdict(r) for r in self.rows],
                "findings": [f.rule + ":" + f.labels.get("budget", "") for f in self.findings],
                "scopes": self.scopes, "missing_hours": self.missing_hours}


def threshold_label(t: Threshold) -> str:
    pct = f"{t.at * 100:g}%"
    return pct if t.on == "spent" else f"forecast {pct}"


class Ledger:
    """Who claimed which crossing, once per period (exclusive create in the lake)."""

    def __init__(self, lake: Lake) -> None:
        from promptops.alerts.store import blob_store

        self.blobs = blob_store(lake.root / LEDGER, local=lake.is_local)

    def claim(self, budget: str, period: Period, value: str, threshold: str,
              at: datetime) -> bool:
        """True when this evaluation raises the crossing: it created the claim now, or it
        created it before (a rerun of the same evaluation)."""
        scope = hashlib.sha256(value.encode()).hexdigest()[:16]
        slug = threshold.replace(" ", "_").replace("%", "pct")
        key = f"{budget}/{period.key}/{scope}/{slug}"
        stamp = at.isoformat().encode()
        if self.blobs.create(key, stamp):
            return True
        return self.blobs.read(key) == stamp


def evaluate_budgets(lake: Lake, config: BudgetsConfig, at: datetime, *,
                     claim: bool = True) -> BudgetOutcome:
    """Judge every budget at ``at`` (the evaluated hour's end). ``claim=False`` only reads
    (the daily report): what is crossed is said, nothing is claimed or raised."""
    from promptops.metrics.spend import spend_between

    at = as_utc(at)
    ledger = Ledger(lake)
    rows: list[ScopeRow] = []
    findings: list[Finding] = []
    scopes: dict[str, int] = {}
    missing: dict[str, int] = {}
    for budget in config.budgets:
        # The period the evaluated hour belongs to (its end may be the next period's start);
        # a rolling window is the N days up to the evaluation.
        moment = at if budget.period == "rolling" else at - timedelta(microseconds=1)
        period = period_at(budget, moment)
        dim = scope_dimension(budget) or "overall"
        values = scope_values(budget)
        first, _ = hour_bounds(period)  # whole UTC hours (a +05:30 midnight is mid-hour)
        sums = spend_between(lake, first, at, dim, None if dim == "overall" else values)
        missing[budget.name] = len(sums.missing_hours)
        column = "cost_usd" if budget.metric == "cost" else "tokens"
        table = sums.table
        names = [str(v) for v in table.column("value").to_pylist()] if table.num_rows else []
        spent = np.asarray(table.column(column).to_numpy(zero_copy_only=False), dtype="float64") \
            if table.num_rows else np.zeros(0)
        if values is not None and dim != "overall":  # listed scopes count even when idle
            known = dict(zip(names, spent, strict=True))
            names = list(values)
            spent = np.array([known.get(v, 0.0) for v in names], dtype="float64")
        if dim == "overall" and not names:
            names, spent = ["*"], np.zeros(1)
        scopes[budget.name] = len(names)
        projections = _project(lake, budget, dim, names, spent, period, at)
        budget_rows = [_row(budget, dim, name, period, proj)
                       for name, proj in zip(names, projections, strict=True)]
        for row in budget_rows:
            _judge(row, budget, ledger if claim else None, period, at)
            if not budget.soft and claim:
                findings += _findings(row, budget, period, at)
        budget_rows.sort(key=lambda r: (-max(r.used, r.projected / r.amount), r.value))
        rows += budget_rows[:TOP_ROWS]  # nearest their amount first: the crossed ones
    return BudgetOutcome(at, rows, findings, scopes, missing)


def _row(budget: Budget, dim: str, value: str, period: Period, p: Projection) -> ScopeRow:
    return ScopeRow(budget.name, dim, value, budget.metric, period.key,
                    period.start.isoformat(), period.end.isoformat(), budget.amount_for(value),
                    p.spent, p.expected, p.lower, p.upper, p.method, p.reason, budget.soft)


def _project(lake: Lake, budget: Budget, dim: str, names: list[str], spent: np.ndarray,
             period: Period, at: datetime) -> list[Projection]:
    from promptops.metrics.spend import hourly_series, hourly_series_of, spend_between

    first, end = hour_bounds(period)
    elapsed = (at - first) / timedelta(hours=1)
    left = max(0, int((end - at) / timedelta(hours=1)))
    if len(names) <= MAX_FITTED:
        histories = hourly_series_of(lake, at - HISTORY, at, dim, names, metric=budget.metric)
        return [project_series(float(s), histories[name], elapsed, left)
                for name, s in zip(names, spent, strict=True)]
    # Many scopes: the platform's forecast of the rest, scaled by each one's share.
    overall_spent = float(spent.sum())
    history = hourly_series(lake, at - HISTORY, at, "overall", "*", metric=budget.metric)
    platform = project_series(overall_spent, history, elapsed, left)
    window = spend_between(lake, at - SHARE_WINDOW, at, dim, None).table
    column = "cost_usd" if budget.metric == "cost" else "tokens"
    by_value = dict(zip((str(v) for v in window.column("value").to_pylist()),
                        zip(window.column(column).to_pylist(),
                            window.column("calls").to_pylist(), strict=True),
                        strict=True)) if window.num_rows else {}
    total = sum(v for v, _ in by_value.values()) or math.nan
    share = np.array([by_value.get(n, (0.0, 0))[0] / total for n in names], dtype="float64")
    calls = np.array([by_value.get(n, (0.0, 0))[1] for n in names], dtype="float64")
    many = project_shares(spent, share, calls, platform, elapsed, left)
    return [Projection(float(s), float(e), float(lo), float(hi),
                       "linear" if flat else many.method, many.reason if flat else "")
            for s, e, lo, hi, flat in zip(spent, many.expected, many.lower, many.upper,
                                          many.linear, strict=True)]


def _judge(row: ScopeRow, budget: Budget, ledger: Ledger | None, period: Period,
           at: datetime) -> None:
    interval = row.method not in ("linear", "period_over")
    for t in budget.thresholds:
        level = t.at * row.amount
        hit = row.spent >= level if t.on == "spent" else (interval and row.lower >= level)
        if not hit:
            continue
        label = threshold_label(t)
        row.crossed.append(label)
        if not budget.soft and ledger is not None and \
                ledger.claim(budget.name, period, row.value, label, at):
            row.fired.append(label)
    if interval and row.upper >= row.amount > row.lower and row.spent < row.amount:
        row.may_exceed = True
        if not budget.soft and ledger is not None and \
                ledger.claim(budget.name, period, row.value, "may exceed", at):
            row.fired.append("may exceed")


def finding_labels(row: ScopeRow, threshold: str) -> dict[str, str]:
    """The identity labels of a crossing's finding (its fingerprint with rule and
    severity): what the heal audit's ``alert_fingerprint`` refers to."""
    return {"metric": f"budget_{row.metric}", "dimension": row.dimension, "slice": row.value,
            "budget": row.budget, "threshold": threshold}


def crossing_fingerprints(row: ScopeRow, budget: Budget) -> list[str]:
    """The fingerprints of the findings this row's crossed thresholds raised."""
    out = []
    for t in budget.thresholds:
        label = threshold_label(t)
        if label in row.crossed:
            out.append(Finding(rule=RULE, severity=t.severity, kind="budget",
                               labels=finding_labels(row, label), summary="").fingerprint)
    return out


def _fmt(metric: str, value: float) -> str:
    return f"${value:,.2f}" if metric == "cost" else f"{value:,.0f} tokens"


def _findings(row: ScopeRow, budget: Budget, period: Period, at: datetime) -> list[Finding]:
    out = []
    hours_left = max(1, int((hour_bounds(period)[1] - at) / timedelta(hours=1)))
    where = "the platform" if row.dimension == "overall" else f"{row.dimension}={row.value}"
    for label in row.fired:
        t = next((t for t in budget.thresholds if threshold_label(t) == label), None)
        severity = t.severity if t is not None else "info"
        how = "Holt-Winters" if row.method == "holt_winters" else row.method.replace("_", " ")
        projection = (f"projected {_fmt(row.metric, row.projected)} "
                      f"[{_fmt(row.metric, row.lower)} - {_fmt(row.metric, row.upper)}] by the "
                      f"period's end ({how})")
        if label == "may exceed":
            head = f"may exceed its budget: {projection}"
        elif t is not None and t.on == "forecast":
            head = f"will exceed {label.split()[-1]} of its budget: {projection}"
        else:
            head = (f"spent {_fmt(row.metric, row.spent)} = {row.used:.0%} of its budget "
                    f"(threshold {label}); {projection}")
        summary = (f"Budget '{budget.name}' of {where} ({budget.period} {row.metric}, "
                   f"{_fmt(row.metric, row.amount)}, period {period.key}) {head}")
        annotations = {"budget": budget.name, "budget_period": period.key,
                       "budget_amount": f"{row.amount:g}", "projection_method": row.method}
        if row.reason:
            annotations["projection_note"] = row.reason
        if t is not None and t.heal:
            annotations["heal_playbook"] = t.heal
        labels = finding_labels(row, label)
        out.append(Finding(rule=RULE, severity=severity, kind="budget", labels=labels,
                           summary=summary, value=row.spent, threshold=row.amount,
                           pending_for=1, keep_firing_for=hours_left,
                           annotations=annotations))
    return out


__all__ = ["LEDGER", "RULE", "BudgetOutcome", "Ledger", "ScopeRow", "crossing_fingerprints",
           "finding_labels",
           "evaluate_budgets", "threshold_label"]
