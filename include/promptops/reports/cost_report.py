"""The daily cost report: one UTC day of hourly metrics -> HTML, charts, CSVs and a summary.

:func:`build_report` reads the day's ``metrics`` partitions (every dimension), the overall
totals of the 7 days before it and of the month so far, and the day's alert log, and writes
under ``<lake>/reports/date=YYYY-MM-DD/``:

- ``index.html``: one self-contained page (charts embedded as base64 PNGs), so the same file
  works opened from the lake, attached, or served by the Airflow UI plugin;
- one ``<chart>.png`` and ``<chart>.csv`` per chart (the CSV is exactly the table the chart
  was drawn from), a CSV per plain table (unpriced models, incidents, hours);
- ``summary.json``: the headline numbers, missing hours and backfill commands.

Each part of the report is a section (:func:`report_sections`: completeness, totals, cost by
hour, by team, app and user, tokens, trend, month, quality, unpriced models, incidents, cost
movers) that returns its own tables, charts and headline numbers from the day's rows
(:func:`read_report_day`); :func:`build_report` assembles them and writes the files.

Completeness comes first: an hour without a metrics partition is *missing* (named, marked in
every chart, and given the exact ``airflow backfill create`` command that fills it), never
zero traffic. Hours that have not ended yet are *pending*. Comparisons are like for like:
day over day and the 7-day average are taken on the hours the report day has, and previous
days with missing hours are left out of the average rather than dragging it down. The month
end projection is the observed hourly rate times the hours in the month.

Cost is the priced part (an unpriced model's cost is unknown, never 0); unpriced models are
listed with their requests and tokens. The user ranking sums the per-hour user slices (top
users by cost and by calls each hour, everybody else ``other``), so a user's figure is a
lower bound when they fell into ``other`` in some hours.

:func:`slack_summary` turns a :class:`ReportResult` into a Block Kit message with the
headline numbers and a link; :func:`send_slack_summary` posts it through the Airflow Slack
provider. :func:`list_report_dates` and :func:`read_report_file` are what the UI plugin
serves from.
"""

from __future__ import annotations

import base64
import calendar
import contextlib
import io
import json
import logging
import math
import os
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from promptops.contracts import metric_table as mt
from promptops.contracts.datasets import CALLS, REPORTS
from promptops.errors import PromptOpsError
from promptops.lake.store import Lake
from promptops.reports import cost_movers
from promptops.reports.completeness import backfill_command
from promptops.timeutil import as_utc

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from upath import UPath

    from promptops.alerts.slack import SlackWebhooks
    from promptops.detection.thresholds import ThresholdsConfig

log = logging.getLogger(__name__)

#: The DAG whose runs fill an hour's partitions (the backfill command names it).
#: Where the UI plugin serves the reports (``/promptops-reports/YYYY-MM-DD/``).
UI_URL_PREFIX = "/promptops-reports"
#: What the report says where no budget is set (budgets are off until a person sets one).
NO_BUDGET = "no budget set"
TEMPLATE = "daily_report.html.j2"

#: Chart names: each is ``<name>.png`` + ``<name>.csv`` beside ``index.html``.
CHARTS = ("cost_by_hour", "cost_by_team", "cost_by_app", "top_users", "tokens_vs_budget",
          "daily_trend", "month_to_date", "quality")
#: Plain tables written as CSV too.
TABLES = ("unpriced_models", "incidents", "hours", "cost_movers", "budgets")
#: Names the plugin may serve from a report folder.
REPORT_FILE_RE = re.compile(r"^[a-z0-9_]+\.(?:html|png|csv|json)$")
_DATE_DIR_RE = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")

#: Stacked-by-model chart: the costliest models get a colour each, the rest one bar.
MAX_MODELS_STACKED = 8
TOP_USERS = 10
_DAY_METRICS = (mt.COST_USD, mt.TOTAL_TOKENS, mt.PROMPT_TOKENS, mt.COMPLETION_TOKENS,
                mt.REQUESTS, mt.ERRORS, mt.UNPRICED_REQUESTS, mt.UNPRICED_TOKENS,
                mt.INTENT_ACCURACY, mt.RELEVANCE_MEAN, "relevance_judge_mean", "judge_cost_usd")
_TOTAL_METRICS = (mt.COST_USD, mt.TOTAL_TOKENS, mt.REQUESTS)
_SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}


class ReportError(PromptOpsError):
    """The report could not be built or delivered; the message says what to do."""


@dataclass(frozen=True)
class HourStatus:
    hour: datetime
    #: ``ok`` (metrics partition present), ``missing`` (hour over, no partition) or
    #: ``pending`` (the hour has not ended yet).
    status: str
    #: Whether the raw ``calls`` partition exists (tells ingest from analysis failures).
    calls_present: bool


@dataclass(frozen=True)
class ReportResult:
    day: date
    #: Folder URI of the report (``.../reports/date=YYYY-MM-DD``).
    uri: str
    html_uri: str
    #: File name -> URI of everything written (charts, CSVs, summary.json, index.html).
    files: dict[str, str]
    #: The headline numbers (also ``summary.json``); JSON-safe, small enough for XCom.
    summary: dict[str, Any]
    missing_hours: list[datetime] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.missing_hours


# -- completeness ---------------------------------------------------------------------------

def day_bounds(day: date | datetime | str) -> tuple[date, datetime, datetime]:
    """The UTC day as (date, start, end)."""
    if isinstance(day, str):
        try:
            day = date.fromisoformat(day)
        except ValueError:
            raise ReportError(f"report day {day!r}: expected YYYY-MM-DD") from None
    if isinstance(day, datetime):
        day = as_utc(day).date()
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return day, start, start + timedelta(days=1)


def hour_statuses(lake: Lake, day: date, *, now: datetime | None = None) -> list[HourStatus]:
    """One status per hour of the day: which metrics partitions exist."""
    _, start, _ = day_bounds(day)
    now = as_utc(now) if now is not None else datetime.now(UTC)
    out = []
    for i in range(24):
        hour = start + timedelta(hours=i)
        if lake.has_partition(mt.METRICS, hour):
            status = "ok"
        elif hour + timedelta(hours=1) > now:
            status = "pending"
        else:
            status = "missing"
        out.append(HourStatus(hour, status, lake.has_partition(CALLS, hour)))
    return out


def hour_ranges(hours: Iterable[datetime]) -> list[tuple[datetime, datetime]]:
    """Contiguous runs of hours as (first, last), both inclusive."""
    ranges: list[tuple[datetime, datetime]] = []
    for hour in sorted(hours):
        if ranges and hour - ranges[-1][1] == timedelta(hours=1):
            ranges[-1] = (ranges[-1][0], hour)
        else:
            ranges.append((hour, hour))
    return ranges


# -- reading the lake -----------------------------------------------------------------------

def _read_hours(lake: Lake, hours: Iterable[datetime], metrics: Iterable[str],
                dimensions: Iterable[str] | None) -> pd.DataFrame:
    """Rows of the given metrics (and dimensions) from every hour that has a partition."""
    columns = ["hour", "metric", "dimension", "slice", "value", "samples"]
    wanted_metrics = pa.array(list(metrics), pa.string())
    wanted_dims = pa.array(list(dimensions), pa.string()) if dimensions is not None else None
    frames = []
    for hour in hours:
        table = lake.read_partition(mt.METRICS, hour, columns=columns)
        if table is None:
            continue
        mask = pc.is_in(table["metric"], value_set=wanted_metrics)
        if wanted_dims is not None:
            mask = pc.and_(mask, pc.is_in(table["dimension"], value_set=wanted_dims))
        frames.append(table.filter(mask).to_pandas())
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in (
            ("hour", "datetime64[us, UTC]"), ("metric", object), ("dimension", object),
            ("slice", object), ("value", float), ("samples", "int64"))})
    return pd.concat(frames, ignore_index=True)


def _hourly_totals(lake: Lake, start: datetime, end: datetime) -> pd.DataFrame:
    """Overall cost, tokens and requests for every hour in ``[start, end)`` that has a
    partition (index: hour)."""
    hours = [start + timedelta(hours=i) for i in range(int((end - start) / timedelta(hours=1)))]
    rows = _read_hours(lake, hours, _TOTAL_METRICS, [mt.OVERALL])
    present = [h for h in hours if lake.has_partition(mt.METRICS, h)]
    # One overall row per (hour, metric); "first" keeps a null cost null.
    wide = rows.pivot_table(index="hour", columns="metric", values="value", aggfunc="first",
                            dropna=False) if len(rows) else pd.DataFrame()
    wide = wide.reindex(_utc_hours(present))
    for metric in _TOTAL_METRICS:
        if metric not in wide:
            wide[metric] = float("nan")
    return wide[list(_TOTAL_METRICS)]


# -- the tables behind the charts -----------------------------------------------------------

def _utc_hours(hours: Iterable[datetime]) -> pd.DatetimeIndex:
    """An hour index that stays UTC-aware when empty (a day without data), so comparing it
    with the day's bounds never mixes naive and aware times."""
    return pd.DatetimeIndex(list(hours), dtype="datetime64[us, UTC]", name="hour")


def _hour_index(statuses: list[HourStatus]) -> pd.DatetimeIndex:
    return _utc_hours(s.hour for s in statuses)


def _with_status(frame: pd.DataFrame, statuses: list[HourStatus]) -> pd.DataFrame:
    """Reindex to all 24 hours; hours without data stay empty (NaN), never 0."""
    frame = frame.reindex(_hour_index(statuses))
    frame.insert(0, "status", [s.status for s in statuses])
    return frame


def _sum_by_slice(day: pd.DataFrame, dimension: str) -> pd.DataFrame:
    """Per slice of a dimension: cost, tokens, requests and unpriced counts over the day.
    A slice whose cost is unknown in every hour keeps a null cost."""
    rows = day[day["dimension"] == dimension]
    if rows.empty:
        return pd.DataFrame(columns=["cost_usd", "total_tokens", "requests",
                                     "unpriced_requests"]).rename_axis(dimension)
    wide = rows.pivot_table(index="slice", columns="metric", values="value",
                            aggfunc=lambda s: s.sum(min_count=1), dropna=False)
    out = pd.DataFrame(index=wide.index)
    for metric in ("cost_usd", "total_tokens", "requests", "unpriced_requests"):
        out[metric] = wide[metric] if metric in wide else float("nan")
    out["unpriced_requests"] = out["unpriced_requests"].fillna(0)
    out = out.sort_values(["cost_usd", "requests"], ascending=False, na_position="last")
    return out.rename_axis(dimension)


def cost_by_hour_table(day: pd.DataFrame, statuses: list[HourStatus]) -> pd.DataFrame:
    """Hours x models (costliest first, the rest as ``other models``), plus ``status``."""
    rows = day[(day["dimension"] == "model") & (day["metric"] == mt.COST_USD)]
    present = _utc_hours(s.hour for s in statuses if s.status == "ok")
    wide = rows.pivot_table(index="hour", columns="slice", values="value",
                            aggfunc=lambda s: s.sum(min_count=1), dropna=False)
    seen = rows.pivot_table(index="hour", columns="slice", values="samples", aggfunc="size")
    wide, seen = wide.reindex(present), seen.reindex(index=present, columns=wide.columns)
    # No row for a model in an hour that has data: no traffic of it, 0. A row with a null
    # cost: unpriced, unknown, stays empty (and a never-priced model gets no column; the
    # unpriced section lists it). Missing and pending hours stay empty.
    wide = wide.mask(seen.isna(), 0.0).dropna(axis=1, how="all")
    order = wide.sum().sort_values(ascending=False).index.tolist()
    keep, rest = order[:MAX_MODELS_STACKED], order[MAX_MODELS_STACKED:]
    table = wide[keep].copy()
    if rest:
        table["other models"] = wide[rest].sum(axis=1, min_count=1)
    table = _with_status(table, statuses)
    table["total_usd"] = table.drop(columns="status").sum(axis=1, min_count=1)
    table.loc[table["status"] != "ok", "total_usd"] = float("nan")
    return table


def tokens_table(day: pd.DataFrame, statuses: list[HourStatus],
                 budget: float | None) -> pd.DataFrame:
    overall = day[(day["dimension"] == mt.OVERALL) & (day["metric"] == mt.TOTAL_TOKENS)]
    tokens = overall.groupby("hour")["value"].sum()
    table = _with_status(pd.DataFrame({"total_tokens": tokens}), statuses)
    # Cumulative over the hours that have data; missing hours have no value (a gap).
    table["cumulative_tokens"] = table["total_tokens"].fillna(0).cumsum()
    table.loc[table["status"] != "ok", "cumulative_tokens"] = float("nan")
    table["budget_tokens"] = float("nan") if budget is None else float(budget)
    return table


def quality_table(day: pd.DataFrame, statuses: list[HourStatus]) -> pd.DataFrame:
    overall = day[day["dimension"] == mt.OVERALL]
    out = pd.DataFrame(index=_hour_index(statuses))
    for metric in (mt.INTENT_ACCURACY, mt.RELEVANCE_MEAN, "relevance_judge_mean"):
        rows = overall[overall["metric"] == metric].set_index("hour")
        if metric == "relevance_judge_mean" and rows.empty:
            continue
        out[metric] = rows["value"]
        out[f"{metric}_samples"] = rows["samples"]
    return _with_status(out, statuses)


def weighted_mean(values: pd.Series, samples: pd.Series) -> float | None:
    ok = values.notna() & samples.notna() & (samples > 0)
    if not ok.any():
        return None
    return float((values[ok] * samples[ok]).sum() / samples[ok].sum())


def daily_trend_table(totals: pd.DataFrame, day: date, day_hours: list[datetime]
                      ) -> pd.DataFrame:
    """The report day and the 7 before it: totals, hours with data, and the cost on the
    hours the report day has (the like-for-like figure the comparisons use)."""
    hours_of_day = {h.hour for h in day_hours}
    rows = []
    for back in range(7, -1, -1):
        d = day - timedelta(days=back)
        _, start, end = day_bounds(d)
        part = totals[(totals.index >= start) & (totals.index < end)]
        same = part[[h.hour in hours_of_day for h in part.index]]
        rows.append({
            "date": d.isoformat(), "hours_present": len(part), "complete": len(part) == 24,
            "cost_usd": _sum(part[mt.COST_USD]) if len(part) else None,
            "total_tokens": _sum(part[mt.TOTAL_TOKENS]) if len(part) else None,
            "requests": _sum(part[mt.REQUESTS]) if len(part) else None,
            "cost_usd_same_hours": _sum(same[mt.COST_USD]) if len(part) else None,
            "same_hours_present": len(same),
        })
    return pd.DataFrame(rows).set_index("date")


def month_table(totals: pd.DataFrame, day: date) -> pd.DataFrame:
    first = date(day.year, day.month, 1)
    rows = []
    for i in range((day - first).days + 1):
        d = first + timedelta(days=i)
        _, start, end = day_bounds(d)
        part = totals[(totals.index >= start) & (totals.index < end)]
        rows.append({"date": d.isoformat(), "hours_present": len(part),
                     "cost_usd": _sum(part[mt.COST_USD]) if len(part) else None})
    table = pd.DataFrame(rows).set_index("date")
    # A day whose cost is unknown (no data, or nothing priced) has no cumulative figure.
    cost = table["cost_usd"].astype(float)
    table["cumulative_cost_usd"] = cost.fillna(0).cumsum().where(cost.notna())
    return table


def _sum(series: pd.Series) -> float | None:
    value = series.sum(min_count=1)
    return None if pd.isna(value) else float(value)


def unpriced_table(day: pd.DataFrame) -> pd.DataFrame:
    rows = day[(day["dimension"] == "model")
               & day["metric"].isin([mt.UNPRICED_REQUESTS, mt.UNPRICED_TOKENS])]
    wide = rows.pivot_table(index="slice", columns="metric", values="value", aggfunc="sum")
    for metric in (mt.UNPRICED_REQUESTS, mt.UNPRICED_TOKENS):
        if metric not in wide:
            wide[metric] = 0.0
    wide = wide[wide[mt.UNPRICED_REQUESTS] > 0]
    hours = rows[rows["metric"] == mt.UNPRICED_REQUESTS].query("value > 0") \
        .groupby("slice")["hour"].nunique()
    wide["hours"] = hours.reindex(wide.index).fillna(0).astype(int)
    return wide[[mt.UNPRICED_REQUESTS, mt.UNPRICED_TOKENS, "hours"]] \
        .sort_values(mt.UNPRICED_REQUESTS, ascending=False).rename_axis("model")


def incidents_table(lake: Lake, start: datetime, end: datetime,
                    scopes: Iterable[str] = ("hourly",)) -> pd.DataFrame:
    """The day's incidents: one row per incident (its members listed), and one per alert
    logged without an incident (label grouping, backfilled hours, older logs)."""
    from promptops.alerts.store import AlertStore

    columns = ["rule", "severity", "slice", "status", "fired_at", "resolved_at", "summary",
               "muted_by", "fingerprint", "scope", "incident_id", "members"]
    frames = []
    for scope in scopes:
        # An hour is evaluated at its end, so the day's evaluations run from 01:00 to 00:00
        # the next day; the log is partitioned by evaluation time.
        table = AlertStore(lake, scope=scope).read_alert_log(start + timedelta(hours=1),
                                                             end + timedelta(hours=1))
        if table is not None and table.num_rows:
            frames.append(table.to_pandas())
    if not frames:
        return pd.DataFrame(columns=columns)
    log_rows = pd.concat(frames, ignore_index=True)
    if "incident_id" not in log_rows:  # logs written before incidents
        log_rows["incident_id"] = None
    log_rows = log_rows[(log_rows["evaluated_at"] > start) & (log_rows["evaluated_at"] <= end)]
    is_incident = log_rows["kind"] == "incident"
    incident_ids = set(log_rows.loc[is_incident, "incident_id"].dropna())
    alerts = log_rows[~is_incident & log_rows["event"].isin(["fired", "firing", "resolved"])]
    grouped = alerts["incident_id"].isin(incident_ids)
    out = [_incident_row(iid, rows, alerts[alerts["incident_id"] == iid])
           for iid, rows in log_rows[is_incident].sort_values("evaluated_at")
           .groupby("incident_id")]
    out += [_alert_row(fingerprint, group) for fingerprint, group
            in alerts[~grouped].sort_values("evaluated_at").groupby("fingerprint")]
    table = pd.DataFrame(out, columns=columns)
    table["_rank"] = table["severity"].map(_SEVERITY_RANK).fillna(9)
    return table.sort_values(["_rank", "fired_at", "rule"]).drop(columns="_rank") \
        .reset_index(drop=True)


def _slice_text(labels: dict[str, str]) -> str:
    dimension, slice_ = labels.get("dimension"), labels.get("slice")
    return "overall" if not dimension or dimension == mt.OVERALL else f"{dimension}={slice_}"


def _incident_row(iid: str, rows: pd.DataFrame, members: pd.DataFrame) -> dict[str, Any]:
    """One incident from its own log rows, its members from theirs."""
    last = rows.iloc[-1]
    labels = json.loads(last["labels"]) if last["labels"] else {}
    shown = sorted({f"{m['rule']} ({_slice_text(json.loads(m['labels'] or '{}'))})"
                    for _, m in members.iterrows()})
    worst = min(rows["severity"], key=lambda sev: _SEVERITY_RANK.get(sev, 9))
    resolved = rows.loc[rows["event"] == "resolved", "resolved_at"].dropna()
    return {
        "rule": ", ".join(sorted(set(members["rule"]))) or "incident", "severity": worst,
        "slice": labels.get("cause") or "overall",
        "status": "resolved" if last["event"] == "resolved" else "firing",
        "fired_at": rows["fired_at"].dropna().min() if rows["fired_at"].notna().any()
        else None,
        "resolved_at": resolved.max() if len(resolved) else None,
        "summary": last["summary"], "muted_by": last["muted_by"], "fingerprint": iid,
        "scope": last["scope"], "incident_id": iid, "members": "; ".join(shown)}


def _alert_row(fingerprint: str, group: pd.DataFrame) -> dict[str, Any]:
    """One alert logged without an incident."""
    last = group.iloc[-1]
    labels = json.loads(last["labels"]) if last["labels"] else {}
    fired = group["fired_at"].dropna()
    # A backfill that filled a gap logs incidents already over by then as "past", with
    # their end where a later hour of the gap knew it.
    past = group["delivery"] == "past"
    resolved = group.loc[(group["event"] == "resolved") | past, "resolved_at"].dropna()
    return {
        "rule": last["rule"], "severity": last["severity"], "slice": _slice_text(labels),
        "status": "resolved" if last["event"] == "resolved"
        else "over" if last["delivery"] == "past" else "firing",
        "fired_at": fired.min() if len(fired) else None,
        "resolved_at": resolved.max() if len(resolved) else None,
        "summary": last["summary"], "muted_by": last["muted_by"],
        "fingerprint": fingerprint, "scope": last["scope"],
        "incident_id": last["incident_id"] if pd.notna(last["incident_id"]) else None,
        "members": f"{last['rule']} ({_slice_text(labels)})"}


# -- charts (matplotlib, Agg, no pyplot: no global state, safe in any process) ---------------

def _figure(width: float = 9.0, height: float = 4.0) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _mark_gaps(ax: Axes, hours: list[int], statuses: list[str]) -> None:
    """Shade missing (and pending) hours so they read as gaps, not as zero."""
    labelled = set()
    for h, status in zip(hours, statuses, strict=True):
        if status == "ok":
            continue
        missing = status == "missing"
        label = ("missing (no data)" if missing else "pending") if status not in labelled \
            else None
        labelled.add(status)
        ax.axvspan(h - 0.5, h + 0.5, facecolor="#f2c4c4" if missing else "#e8e8e8",
                   hatch="//" if missing else None, edgecolor="#c0392b" if missing else "#999",
                   linewidth=0, alpha=0.6, label=label, zorder=0)


def chart_cost_by_hour(table: pd.DataFrame) -> bytes:
    fig = _figure()
    ax = fig.subplots()
    hours = [h.hour for h in table.index]
    models = [c for c in table.columns if c not in ("status", "total_usd")]
    bottom = pd.Series(0.0, index=table.index)
    for model in models:
        values = table[model].fillna(0.0)
        ax.bar(hours, values, bottom=bottom, label=model, width=0.8, zorder=2)
        bottom += values
    _mark_gaps(ax, hours, table["status"].tolist())
    ax.set_xticks(range(0, 24, 2))
    ax.set_xlim(-0.5, 23.5)
    ax.set_xlabel("hour (UTC)")
    ax.set_ylabel("cost (USD)")
    ax.set_title("Cost by hour, by model")
    ax.legend(fontsize=7, ncols=2, loc="upper left")
    return _png(fig)


def chart_bars(table: pd.DataFrame, column: str, title: str, xlabel: str) -> bytes:
    """Horizontal bars, largest on top; a null value (unpriced) is drawn as nothing."""
    data = table[column].head(15)
    fig = _figure(8.0, max(2.5, 0.35 * len(data) + 1.2))
    ax = fig.subplots()
    labels = [str(i) for i in data.index][::-1]
    ax.barh(labels, data.fillna(0.0).tolist()[::-1], color="#2e86c1")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    if data.empty:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    return _png(fig)


def chart_tokens(table: pd.DataFrame) -> bytes:
    fig = _figure()
    ax = fig.subplots()
    hours = [h.hour for h in table.index]
    ax.bar(hours, table["total_tokens"].fillna(0.0), color="#85c1e9", label="tokens in the hour",
           zorder=2)
    ax.plot(hours, table["cumulative_tokens"], marker="o", color="#1b4f72",
            label="cumulative", zorder=3)
    budget = float(table["budget_tokens"].iloc[0]) if len(table) else float("nan")
    if not math.isnan(budget):
        ax.axhline(budget, color="#c0392b", linestyle="--", label=f"daily budget {budget:,.0f}")
    _mark_gaps(ax, hours, table["status"].tolist())
    ax.set_xticks(range(0, 24, 2))
    ax.set_xlim(-0.5, 23.5)
    ax.set_xlabel("hour (UTC)")
    ax.set_ylabel("tokens")
    ax.set_title("Tokens against the daily budget" if not math.isnan(budget) else
                 f"Tokens per hour ({NO_BUDGET})")
    ax.legend(fontsize=7, loc="upper left")
    return _png(fig)


def chart_daily_trend(table: pd.DataFrame, avg7: float | None) -> bytes:
    fig = _figure()
    ax = fig.subplots()
    positions = list(range(len(table)))
    colors = ["#2e86c1" if c else "#d5d8dc" for c in table["complete"]]
    bars = ax.bar(positions, table["cost_usd"].fillna(0.0), color=colors, zorder=2)
    ax.set_xticks(positions, [d[5:] for d in table.index])
    for bar, (_, row) in zip(bars, table.iterrows(), strict=True):
        if not row["complete"]:
            bar.set_hatch("//")
            ax.annotate(f"{row['hours_present']}/24 h", (bar.get_x() + bar.get_width() / 2,
                                                          bar.get_height()),
                        ha="center", va="bottom", fontsize=7, color="#c0392b")
    if avg7 is not None:
        ax.axhline(avg7, color="#c0392b", linestyle="--", label=f"7-day average ${avg7:,.2f}")
        ax.legend(fontsize=7)
    ax.set_ylabel("cost (USD)")
    ax.set_title("Daily cost: the report day and the 7 before (hatched: hours missing)")
    return _png(fig)


def chart_month(table: pd.DataFrame, day: date, projected: float | None) -> bytes:
    fig = _figure()
    ax = fig.subplots()
    days = [int(d[8:]) for d in table.index]
    ax.bar(days, table["cost_usd"].fillna(0.0), color="#85c1e9", label="daily cost", zorder=2)
    ax.plot(days, table["cumulative_cost_usd"], marker="o", color="#1b4f72",
            label="month to date", zorder=3)
    month_days = calendar.monthrange(day.year, day.month)[1]
    known = table["cumulative_cost_usd"].dropna()
    if projected is not None and len(known):
        ax.plot([int(known.index[-1][8:]), month_days], [known.iloc[-1], projected],
                linestyle="--", color="#c0392b", label=f"projected ${projected:,.2f}")
    ax.set_xlim(0.5, month_days + 0.5)
    ax.set_xlabel(f"day of {day:%B %Y}")
    ax.set_ylabel("cost (USD)")
    ax.set_title("Month to date and projected month end")
    ax.legend(fontsize=7, loc="upper left")
    return _png(fig)


def chart_quality(table: pd.DataFrame) -> bytes:
    fig = _figure(9.0, 5.0)
    top, bottom = fig.subplots(2, 1, sharex=True)
    hours = [h.hour for h in table.index]
    top.plot(hours, table[mt.INTENT_ACCURACY] * 100, marker="o", color="#1e8449")
    top.set_ylabel("intent accuracy (%)")
    top.set_title("Quality by hour")
    bottom.plot(hours, table[mt.RELEVANCE_MEAN], marker="o", color="#7d3c98",
                label="relevance (platform)")
    if "relevance_judge_mean" in table:
        bottom.plot(hours, table["relevance_judge_mean"], marker="s", color="#af7ac5",
                    label="relevance (LLM judge)")
    bottom.set_ylabel("relevance (mean score)")
    bottom.legend(fontsize=7)
    for ax in (top, bottom):
        _mark_gaps(ax, hours, table["status"].tolist())
        ax.set_xlim(-0.5, 23.5)
    bottom.set_xticks(range(0, 24, 2))
    bottom.set_xlabel("hour (UTC)")
    return _png(fig)


# -- the report -----------------------------------------------------------------------------

def configured_budgets(thresholds: ThresholdsConfig | None = None
                       ) -> tuple[float | None, float | None]:
    """(daily token budget, daily cost budget) from the thresholds config (default: the
    file's, without the Variable's overrides a DAG task passes in); None where none is set
    or the rule is disabled."""
    from promptops.detection.thresholds import load_thresholds

    rules = (thresholds if thresholds is not None else load_thresholds()).rules

    def budget(name: str) -> float | None:
        rule = rules.get(name)
        value = getattr(rule, "budget", None) if rule is not None and rule.enabled else None
        return float(value) if value is not None else None

    return budget("daily_tokens"), budget("daily_cost")


def _change(now: float | None, before: float | None) -> float | None:
    if now is None or before is None or before == 0:
        return None
    return now / before - 1.0


def compare_cost_movers(lake: Lake, day: date, present: list[datetime], day_rows: pd.DataFrame,
                        min_usd: float) -> list[cost_movers.Comparison]:
    """The report day's slice costs against each comparison day, on the hours both have."""
    out = []
    for against, back in cost_movers.COMPARISONS:
        shift = timedelta(days=back)
        other = day - shift
        common = [h for h in present if lake.has_partition(mt.METRICS, h - shift)]
        note = (f"no data for {day.isoformat()}" if not present
                else f"no data for {other.isoformat()}" if not common
                else f"on the {len(common)} hours both days have" if len(common) < 24
                else None)
        before = _read_hours(lake, [h - shift for h in common], [mt.COST_USD],
                             cost_movers.DIMENSIONS)
        out.append(cost_movers.compare(
            against, other, day_rows[day_rows["hour"].isin(_utc_hours(common))], before,
            hours=len(common), note=note, min_usd=min_usd))
    return out


def report_folder(lake: Lake, day: date) -> UPath:
    return lake.root / REPORTS / f"date={day.isoformat()}"


@dataclass(frozen=True)
class ReportDay:
    """What the sections read: the UTC day, its hours' statuses and the lake rows behind
    them."""

    lake: Lake
    day: date
    start: datetime
    end: datetime
    #: Hours ending after it are *pending*, not missing.
    now: datetime
    statuses: list[HourStatus]
    #: The day's rows of every metric the report shows (every dimension), from the hours
    #: that have a partition.
    rows: pd.DataFrame
    #: Overall cost, tokens and requests per hour, from the month's start or the week before
    #: the day, whichever is earlier, to the day's end.
    totals: pd.DataFrame

    @property
    def present(self) -> list[datetime]:
        return [s.hour for s in self.statuses if s.status == "ok"]

    @property
    def missing(self) -> list[datetime]:
        return [s.hour for s in self.statuses if s.status == "missing"]

    @property
    def pending(self) -> list[datetime]:
        return [s.hour for s in self.statuses if s.status == "pending"]

    @property
    def month_start(self) -> datetime:
        return datetime(self.day.year, self.day.month, 1, tzinfo=UTC)


def read_report_day(lake: Lake, day: date | datetime | str, *,
                    now: datetime | None = None) -> ReportDay:
    """Read what the report of ``day`` needs from the lake (``now``: default the clock)."""
    day, start, end = day_bounds(day)
    now = as_utc(now) if now is not None else datetime.now(UTC)
    statuses = hour_statuses(lake, day, now=now)
    present = [s.hour for s in statuses if s.status == "ok"]
    rows = _read_hours(lake, present, _DAY_METRICS, None)
    month_start = datetime(day.year, day.month, 1, tzinfo=UTC)
    totals = _hourly_totals(lake, min(month_start, start - timedelta(days=7)), end)
    return ReportDay(lake, day, start, end, now, statuses, rows, totals)


@dataclass(frozen=True)
class Section:
    """One part of the report: its tables (a CSV each, and the page's tables), its charts
    (PNG) and its headline numbers (``summary.json``, the Slack summary)."""

    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    charts: dict[str, bytes] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


def completeness_section(d: ReportDay, cost_by_hour: pd.DataFrame,
                         tokens: pd.DataFrame) -> Section:
    """Which hours have data, the commands that fill the missing ones, and the per-hour
    table (status, calls partition, requests, cost, tokens)."""
    missing = d.missing
    return Section(
        tables={"hours": _hours_table(cost_by_hour, tokens, d.rows, d.statuses)},
        summary={
            "hours_present": len(d.present), "hours_missing": len(missing),
            "hours_pending": len(d.pending), "complete": not missing and not d.pending,
            "missing_hours": [h.isoformat() for h in missing],
            "pending_hours": [h.isoformat() for h in d.pending],
            "backfill_commands": [backfill_command(a, b) for a, b in hour_ranges(missing)],
        })


def totals_section(d: ReportDay, budget_tokens: float | None, budget_cost_usd: float | None
                   ) -> Section:
    """The day's cost, requests and tokens, against the budgets."""
    overall = d.rows[d.rows["dimension"] == mt.OVERALL]
    cost = _sum(overall.loc[overall["metric"] == mt.COST_USD, "value"])
    tokens = _sum(overall.loc[overall["metric"] == mt.TOTAL_TOKENS, "value"])
    requests = _sum(overall.loc[overall["metric"] == mt.REQUESTS, "value"])
    present = d.present
    tokens_projected = tokens / len(present) * 24 if tokens is not None and present \
        and len(present) < 24 else None
    return Section(summary={
        "cost_usd": cost, "requests": requests,
        "total_tokens": tokens, "budget_tokens": budget_tokens,
        "tokens_budget_share": tokens / budget_tokens if tokens is not None and budget_tokens
        else None,
        "tokens_projected_day": tokens_projected,
        "budget_cost_usd": budget_cost_usd,
        "cost_budget_share": cost / budget_cost_usd if cost is not None and budget_cost_usd
        else None,
    })


def cost_by_hour_section(d: ReportDay) -> Section:
    table = cost_by_hour_table(d.rows, d.statuses)
    return Section(tables={"cost_by_hour": table},
                   charts={"cost_by_hour": chart_cost_by_hour(table)})


def breakdown_section(d: ReportDay) -> Section:
    """Cost by team, by app and the top users (everybody else's cost in the summary)."""
    team = _sum_by_slice(d.rows, "team")
    app = _sum_by_slice(d.rows, "app")
    users = _sum_by_slice(d.rows, "user")
    other_users = users.loc[mt.OTHER_SLICE] if mt.OTHER_SLICE in users.index else None
    users = users.drop(index=[mt.OTHER_SLICE], errors="ignore").head(TOP_USERS)
    return Section(
        tables={"cost_by_team": team, "cost_by_app": app, "top_users": users},
        charts={
            "cost_by_team": chart_bars(team, "cost_usd", "Cost by team", "cost (USD)"),
            "cost_by_app": chart_bars(app, "cost_usd", "Cost by app", "cost (USD)"),
            "top_users": chart_bars(users, "cost_usd", f"Top {TOP_USERS} users by cost",
                                    "cost (USD)"),
        },
        summary={"other_users_cost_usd": _none(other_users["cost_usd"])
                 if other_users is not None else None})


def tokens_section(d: ReportDay, budget_tokens: float | None) -> Section:
    table = tokens_table(d.rows, d.statuses, budget_tokens)
    return Section(tables={"tokens_vs_budget": table},
                   charts={"tokens_vs_budget": chart_tokens(table)})


def trend_section(d: ReportDay, cost: float | None) -> Section:
    """The day against the day before and the 7-day average, like for like: on the hours
    the report day has, over the complete days only."""
    trend = daily_trend_table(d.totals, d.day, d.present)
    yesterday = trend.iloc[-2]
    previous = trend.iloc[:-1]
    complete_days = previous[previous["complete"]]
    avg7_same = float(complete_days["cost_usd_same_hours"].mean()) if len(complete_days) \
        else None
    avg7_full = float(complete_days["cost_usd"].mean()) if len(complete_days) else None
    return Section(
        tables={"daily_trend": trend},
        charts={"daily_trend": chart_daily_trend(trend, avg7_full)},
        summary={
            "previous_day": {
                "date": trend.index[-2], "cost_usd": _none(yesterday["cost_usd"]),
                "complete": bool(yesterday["complete"]),
                "cost_usd_same_hours": _none(yesterday["cost_usd_same_hours"]),
                "same_hours": int(yesterday["same_hours_present"]),
            },
            "day_over_day": _change(cost, _none(yesterday["cost_usd_same_hours"]))
            if yesterday["same_hours_present"] == len(d.present) else None,
            "avg7_cost_usd": avg7_full, "avg7_cost_usd_same_hours": avg7_same,
            "avg7_days_used": len(complete_days),
            "avg7_days_left_out": previous.index[~previous["complete"]].tolist(),
            "vs_avg7": _change(cost, avg7_same),
        })


def month_section(d: ReportDay) -> Section:
    """Month to date and the month-end projection: the observed hourly rate times the hours
    in the month."""
    month = month_table(d.totals, d.day)
    mtd_cost = _sum(month["cost_usd"])
    mtd_hours = int(month["hours_present"].sum())
    month_hours = calendar.monthrange(d.day.year, d.day.month)[1] * 24
    elapsed = min(d.end, max(d.now, d.start)) - d.month_start
    elapsed_hours = int(elapsed / timedelta(hours=1))
    projected = mtd_cost / mtd_hours * month_hours if mtd_cost is not None and mtd_hours \
        else None
    return Section(
        tables={"month_to_date": month},
        charts={"month_to_date": chart_month(month, d.day, projected)},
        summary={
            "mtd_cost_usd": mtd_cost, "mtd_hours_present": mtd_hours,
            "mtd_hours_missing": max(0, elapsed_hours - mtd_hours),
            "projected_month_end_usd": projected, "month_hours": month_hours,
        })


def quality_section(d: ReportDay) -> Section:
    """Intent accuracy and relevance by hour, and over the day weighted by their samples."""
    quality = quality_table(d.rows, d.statuses)
    summary = {
        "intent_accuracy": weighted_mean(quality[mt.INTENT_ACCURACY],
                                         quality[f"{mt.INTENT_ACCURACY}_samples"]),
        "intent_labelled": int(quality[f"{mt.INTENT_ACCURACY}_samples"].sum()),
        "relevance_mean": weighted_mean(quality[mt.RELEVANCE_MEAN],
                                        quality[f"{mt.RELEVANCE_MEAN}_samples"]),
        "relevance_scored": int(quality[f"{mt.RELEVANCE_MEAN}_samples"].sum()),
    }
    if "relevance_judge_mean" in quality:
        summary["relevance_judge_mean"] = weighted_mean(
            quality["relevance_judge_mean"], quality["relevance_judge_mean_samples"])
    return Section(tables={"quality": quality}, charts={"quality": chart_quality(quality)},
                   summary=summary)


def unpriced_section(d: ReportDay) -> Section:
    """Models without a price: their requests and tokens (their cost is unknown, never 0)."""
    unpriced = unpriced_table(d.rows)
    return Section(tables={"unpriced_models": unpriced}, summary={"unpriced_models": [
        {"model": m, "requests": int(r[mt.UNPRICED_REQUESTS]),
         "tokens": int(r[mt.UNPRICED_TOKENS])} for m, r in unpriced.iterrows()]})


def incidents_section(d: ReportDay) -> Section:
    incidents = incidents_table(d.lake, d.start, d.end)
    return Section(tables={"incidents": incidents}, summary={
        "incidents": len(incidents),
        "incidents_critical": int((incidents["severity"] == "critical").sum()),
    })


def movers_section(d: ReportDay) -> Section:
    """The slices whose cost moved most against each comparison day."""
    config = cost_movers.MoversConfig()
    movers = compare_cost_movers(d.lake, d.day, d.present, d.rows, config.min_usd)
    return Section(tables={"cost_movers": cost_movers.to_table(movers)}, summary={
        "cost_movers": {"min_cost_usd": config.min_usd,
                        "comparisons": [c.as_dict(config.top) for c in movers]}})


def budgets_section(d: ReportDay, budgets: Any = None) -> Section:
    """Every budget of ``budgets.yaml`` as of the day's end: per scope (the nearest to their
    amount first), spent, the projection with its interval and method, the thresholds
    crossed this period and the heal each asks for. Read only: nothing is claimed."""
    from promptops.detection.budgets.config import load_budgets
    from promptops.detection.budgets.evaluate import crossing_fingerprints, evaluate_budgets
    from promptops.heal.audit import read_audit

    config = budgets if budgets is not None else load_budgets()
    columns = ["budget", "scope", "metric", "period", "amount", "spent", "used", "projected",
               "lower", "upper", "method", "crossed", "heal", "actions"]
    if not config.budgets:
        return Section(tables={"budgets": pd.DataFrame(columns=columns)},
                       summary={"budgets": 0, "budgets_crossed": 0})
    at = min(d.end, d.now)
    outcome = evaluate_budgets(d.lake, config, at, claim=False)
    # What the heal path did about the crossings: the audit's steps of their alerts.
    earliest = min((datetime.fromisoformat(r.period_start) for r in outcome.rows), default=at)
    steps: dict[str, list[str]] = {}
    for a in read_audit(d.lake, earliest, at + timedelta(days=1)):
        if a.alert_fingerprint:
            steps.setdefault(a.alert_fingerprint, []).append(
                f"{a.action} {a.target}: {a.decision}"
                + (f", {a.platform_status}" if a.platform_status else ""))
    records = []
    for r in outcome.rows:
        budget = config.get(r.budget)
        done = [s for fp in (crossing_fingerprints(r, budget) if budget else [])
                for s in steps.get(fp, [])]
        heals = sorted({t.heal for t in budget.thresholds if t.heal and any(
            c.endswith(f"{t.at * 100:g}%") for c in r.crossed)}) if budget else []
        records.append({
            "budget": r.budget + (" (soft)" if r.soft else ""),
            "scope": "overall" if r.dimension == "overall" else f"{r.dimension}={r.value}",
            "metric": r.metric, "period": r.period, "amount": r.amount, "spent": r.spent,
            "used": r.spent / r.amount if r.amount else None, "projected": r.projected,
            "lower": r.lower, "upper": r.upper,
            "method": r.method + (f" ({r.reason})" if r.reason else ""),
            "crossed": ", ".join(r.crossed) + (" (may exceed)" if r.may_exceed else ""),
            "heal": ", ".join(heals), "actions": "; ".join(done)})
    table = pd.DataFrame(records, columns=columns).set_index("budget")
    return Section(tables={"budgets": table}, summary={
        "budgets": len(config.budgets),
        "budgets_crossed": sum(1 for r in outcome.rows if r.crossed),
        "budget_missing_hours": outcome.missing_hours})


def report_sections(d: ReportDay, budget_tokens: float | None, budget_cost_usd: float | None
                    ) -> dict[str, Section]:
    """Every section of the day's report, in the order their files are written."""
    cost_by_hour = cost_by_hour_section(d)
    tokens = tokens_section(d, budget_tokens)
    totals = totals_section(d, budget_tokens, budget_cost_usd)
    return {
        "cost_by_hour": cost_by_hour,
        "breakdown": breakdown_section(d),
        "tokens": tokens,
        "totals": totals,
        "trend": trend_section(d, totals.summary["cost_usd"]),
        "month": month_section(d),
        "quality": quality_section(d),
        "unpriced": unpriced_section(d),
        "incidents": incidents_section(d),
        "movers": movers_section(d),
        "budgets": budgets_section(d),
        "completeness": completeness_section(d, cost_by_hour.tables["cost_by_hour"],
                                             tokens.tables["tokens_vs_budget"]),
    }


def build_report(lake: Lake, day: date | datetime | str, *, budget_tokens: float | None = None,
                 budget_cost_usd: float | None = None, run_url: str | None = None,
                 now: datetime | None = None,
                 thresholds: ThresholdsConfig | None = None) -> ReportResult:
    """Build the day's report and write it to ``<lake>/reports/date=YYYY-MM-DD/``.

    ``budget_tokens`` / ``budget_cost_usd``: default to the ``daily_tokens`` /
    ``daily_cost`` budgets of ``thresholds`` (default: the file's); where none is set the
    report says "no budget set". ``run_url``: the Airflow run, linked in the
    footer. ``now``: hours ending after it are *pending*, not missing (default: the clock).
    Rebuilding a day replaces its files."""
    day, _, _ = day_bounds(day)
    if budget_tokens is None or budget_cost_usd is None:
        cfg_tokens, cfg_cost = configured_budgets(thresholds)
        budget_tokens = cfg_tokens if budget_tokens is None else budget_tokens
        budget_cost_usd = cfg_cost if budget_cost_usd is None else budget_cost_usd
    if budget_tokens is not None and budget_tokens <= 0:
        raise ReportError(f"token budget {budget_tokens!r}: must be positive (thresholds "
                          f"rule daily_tokens.budget)")

    d = read_report_day(lake, day, now=now)
    sections = report_sections(d, budget_tokens, budget_cost_usd)
    tables = {k: v for s in sections.values() for k, v in s.tables.items()}
    pngs = {k: v for s in sections.values() for k, v in s.charts.items()}
    summary: dict[str, Any] = {
        "day": day.isoformat(),
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **sections["completeness"].summary, **sections["totals"].summary,
        **sections["trend"].summary, **sections["month"].summary,
        **sections["unpriced"].summary, **sections["quality"].summary,
        **sections["incidents"].summary, **sections["breakdown"].summary,
        "run_url": run_url,
        **sections["movers"].summary,
        **sections["budgets"].summary,
    }
    if "relevance_judge_mean" in summary:  # last in summary.json, where it has always been
        summary["relevance_judge_mean"] = summary.pop("relevance_judge_mean")
    html = render_html(day=day, summary=summary, tables=tables, pngs=pngs,
                       statuses=d.statuses, run_url=run_url)

    files: dict[str, bytes] = {}
    for name, png in pngs.items():
        files[f"{name}.png"] = png
    for name, table in tables.items():
        files[f"{name}.csv"] = to_csv(table)
    files["summary.json"] = json.dumps(summary, indent=2, default=str).encode()
    files["index.html"] = html.encode()  # last: a reader never sees a page without its files
    folder = report_folder(lake, day)
    written = {name: _write_file(lake, folder, name, data) for name, data in files.items()}
    log.info("daily report %s: %d files in %s (%d of 24 hours, %d missing)", day,
             len(written), folder, len(d.present), len(d.missing))
    return ReportResult(day=day, uri=str(folder), html_uri=written["index.html"],
                        files=written, summary=summary, missing_hours=d.missing)


def _none(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def _hours_table(cost: pd.DataFrame, tokens: pd.DataFrame, day: pd.DataFrame,
                 statuses: list[HourStatus]) -> pd.DataFrame:
    overall = day[(day["dimension"] == mt.OVERALL) & (day["metric"] == mt.REQUESTS)]
    table = pd.DataFrame({
        "status": cost["status"],
        "calls_partition": ["yes" if s.calls_present else "no" for s in statuses],
        "requests": overall.set_index("hour")["value"].reindex(cost.index),
        "cost_usd": cost["total_usd"], "total_tokens": tokens["total_tokens"],
    })
    return table


def to_csv(table: pd.DataFrame) -> bytes:
    """CSV with the index as the first column; unknown values are empty cells, never 0."""
    out = table.copy()
    if isinstance(out.index, pd.DatetimeIndex):
        out.index = [h.isoformat() for h in out.index]
        out.index.name = "hour"
    for column in out.columns:
        if pd.api.types.is_datetime64_any_dtype(out[column]):
            out[column] = out[column].map(lambda v: v.isoformat() if pd.notna(v) else None)
    return out.to_csv(index=out.index.name is not None or not isinstance(
        out.index, pd.RangeIndex), na_rep="").encode()


def render_html(*, day: date, summary: dict[str, Any], tables: dict[str, pd.DataFrame],
                pngs: dict[str, bytes], statuses: list[HourStatus], run_url: str | None) -> str:
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(loader=PackageLoader("promptops.reports", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(usd=fmt_usd, num=fmt_num, pct=fmt_pct, signed_pct=fmt_signed_pct,
                       ratio=cost_movers.fmt_ratio, change_usd=cost_movers.fmt_change,
                       hhmm=lambda ts: "" if ts is None or pd.isna(ts)
                       else pd.Timestamp(ts).strftime("%Y-%m-%d %H:%M"))
    images = {name: "data:image/png;base64," + base64.b64encode(png).decode("ascii")
              for name, png in pngs.items()}

    def records(name: str) -> list[dict[str, Any]]:
        table = tables[name]
        if isinstance(table.index, pd.DatetimeIndex):
            table = table.set_axis([h.isoformat() for h in table.index]).rename_axis("hour")
        index = table.index.name or "key"
        frame = table.reset_index() if not isinstance(table.index, pd.RangeIndex) else table
        frame = frame.rename(columns={"index": index})
        return [{k: (None if not isinstance(v, str) and pd.isna(v) else v) for k, v in r.items()}
                for r in frame.to_dict("records")]

    return env.get_template(TEMPLATE).render(
        day=day, s=summary, images=images, records=records, run_url=run_url,
        statuses=statuses, ui_prefix=UI_URL_PREFIX, hours_table=records("hours"),
        charts=CHARTS)


# -- number formats (HTML and Slack share them) ---------------------------------------------

def fmt_usd(value: float | None) -> str:
    return "n/a" if value is None or pd.isna(value) else f"${value:,.2f}"


def fmt_num(value: float | None) -> str:
    if value is None or pd.isna(value):
        return "n/a"
    return f"{value:,.0f}"


def fmt_pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None or pd.isna(value) else f"{value * 100:.{digits}f}%"


def fmt_signed_pct(value: float | None) -> str:
    return "n/a" if value is None or pd.isna(value) else f"{value * 100:+.1f}%"


# -- writing and reading report files -------------------------------------------------------

def _write_file(lake: Lake, folder: UPath, name: str, data: bytes) -> str:
    """Write one file so that a reader sees the old one or the new one, never half."""
    target = folder / name
    if lake.is_local:
        os.makedirs(folder.path, exist_ok=True)
        tmp = os.path.join(folder.path, f".{name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, target.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
    else:  # one object upload: visible whole or not at all
        folder.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as fh:
            fh.write(data)
    return str(target)


def list_report_dates(lake: Lake) -> list[date]:
    """Days that have a report (an ``index.html``), newest first."""
    base = lake.root / REPORTS
    if not base.exists():
        return []
    days = []
    for folder in base.iterdir():
        match = _DATE_DIR_RE.match(folder.name)
        if match and (folder / "index.html").exists():
            with contextlib.suppress(ValueError):
                days.append(date.fromisoformat(match.group(1)))
    return sorted(days, reverse=True)


def read_report_file(lake: Lake, day: date, name: str = "index.html") -> bytes | None:
    """One file of a day's report, or None if it does not exist. Only plain report file
    names (``REPORT_FILE_RE``) are read: no path traversal."""
    if not REPORT_FILE_RE.match(name):
        return None
    target = report_folder(lake, day) / name
    try:
        with target.open("rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def report_url(base_url: str, day: date | datetime | str) -> str:
    """The report's address in the Airflow UI (``[api] base_url`` + the plugin's route).
    A timestamp (a run's interval start) stands for its UTC day: the route takes a date."""
    day, _, _ = day_bounds(day)
    return f"{base_url.rstrip('/')}{UI_URL_PREFIX}/{day.isoformat()}/"


# -- Slack ----------------------------------------------------------------------------------

def slack_summary(result: ReportResult, report_url: str | None) -> dict[str, Any]:
    """A Block Kit message (``text`` + ``blocks``) with the headline numbers and a link,
    validated against Slack's limits with ``slack_sdk.models``."""
    from slack_sdk.models.blocks import (
        ActionsBlock,
        ButtonElement,
        ContextBlock,
        HeaderBlock,
        MarkdownTextObject,
        PlainTextObject,
        SectionBlock,
    )

    from promptops.alerts.slack import escape, validate_message

    s = result.summary
    emoji = ":warning:" if s["missing_hours"] else ":bar_chart:"
    blocks = [
        HeaderBlock(text=PlainTextObject(text=f"{emoji} promptops daily cost · {s['day']}",
                                         emoji=True)),
        SectionBlock(fields=[MarkdownTextObject(text=f[:2000])
                             for f in _summary_fields(result)]),
    ]
    blocks.append(SectionBlock(text=MarkdownTextObject(text=_movers_text(s)[:3000])))
    if s["backfill_commands"]:
        blocks.append(SectionBlock(text=MarkdownTextObject(text=(
            "*Incomplete day:* missing hours are left out, not counted as zero. Fill them "
            "with:\n" + "\n".join(f"`{escape(c)}`" for c in s["backfill_commands"][:5]))[:3000])))
    if report_url:
        blocks.append(ActionsBlock(elements=[ButtonElement(
            text=PlainTextObject(text="Open the report"), url=report_url,
            action_id="open_report")]))
    context = f"report files: `{escape(result.uri)}`"
    if s.get("run_url"):
        context += f" · <{s['run_url']}|Airflow run>"
    blocks.append(ContextBlock(elements=[MarkdownTextObject(text=context[:3000])]))
    hours = f"{s['hours_present']}/24 h"
    tokens = f"{fmt_pct(s['tokens_budget_share'], 0)} of budget" if s["budget_tokens"] else \
        f"{fmt_num(s['total_tokens'])} ({NO_BUDGET})"
    text = (f"promptops daily cost {s['day']}: {fmt_usd(s['cost_usd'])} ({hours}), tokens "
            f"{tokens}, MTD {fmt_usd(s['mtd_cost_usd'])}")
    top = next((c for c in s["cost_movers"]["comparisons"] if c["movers"]), None)
    if top:
        m = top["movers"][0]
        text += (f", top cost mover {m['dimension']} {m['slice']} "
                 f"{cost_movers.fmt_change(m['change_usd'])} "
                 f"({cost_movers.fmt_ratio(m['ratio'])}) vs {top['date']}")
    if report_url:
        text += f" · {report_url}"
    message = {"text": text, "blocks": [b.to_dict() for b in blocks]}
    validate_message(message)
    return message


def _summary_fields(result: ReportResult) -> list[str]:
    """The headline fields of the Slack summary: cost, tokens, the comparisons (or why one is
    n/a), the month, missing hours, unpriced models, quality and incidents."""
    from promptops.alerts.slack import escape

    s = result.summary
    hours = f"{s['hours_present']}/24 h"
    tokens = f"{fmt_num(s['total_tokens'])} of {fmt_num(s['budget_tokens'])} " \
             f"({fmt_pct(s['tokens_budget_share'], 0)})" if s["budget_tokens"] else \
        f"{fmt_num(s['total_tokens'])} ({NO_BUDGET})"
    previous = s["previous_day"]
    # Why a comparison is n/a: the report day itself first, then the days it is compared to.
    no_cost_today = (f"no data for {s['day']}" if not s["hours_present"] else
                     f"no priced calls on {s['day']}" if s["cost_usd"] is None else None)
    if s["day_over_day"] is not None:
        dod = f"{fmt_signed_pct(s['day_over_day'])} vs {previous['date']}"
        if not result.complete:
            dod += f" (same {previous['same_hours']} h)"
    else:
        dod = "n/a (" + (no_cost_today or (
            f"no data for {previous['date']}" if not previous["same_hours"] else
            f"{previous['date']} lacks some of these hours"
            if previous["same_hours"] < s["hours_present"] else
            f"no priced calls on {previous['date']}")) + ")"
    avg7 = f"{fmt_signed_pct(s['vs_avg7'])} ({s['avg7_days_used']} complete days)" \
        if s["vs_avg7"] is not None else \
        f"n/a ({no_cost_today or 'no complete day in the last 7'})"
    missing = "none" if not s["missing_hours"] else \
        f"*{len(s['missing_hours'])}*: " + ", ".join(h[11:16] for h in s["missing_hours"][:12]) \
        + (" …" if len(s["missing_hours"]) > 12 else "")
    unpriced = "none" if not s["unpriced_models"] else ", ".join(
        f"{u['model']} ({u['requests']:,} req)" for u in s["unpriced_models"][:5])
    fields = [
        f"*Cost* ({hours})\n{fmt_usd(s['cost_usd'])}",
        f"*Tokens vs budget*\n{tokens}",
        f"*Day over day*\n{dod}",
        f"*vs 7-day average*\n{avg7}",
        f"*Month to date*\n{fmt_usd(s['mtd_cost_usd'])}",
        f"*Projected month end*\n{fmt_usd(s['projected_month_end_usd'])}",
        f"*Missing hours*\n{missing}",
        f"*Unpriced models*\n{escape(unpriced)}",
        f"*Quality*\nintent accuracy {fmt_pct(s['intent_accuracy'])}, "
        f"relevance {s['relevance_mean']:.2f}" if s["relevance_mean"] is not None
        else f"*Quality*\nintent accuracy {fmt_pct(s['intent_accuracy'])}",
        f"*Incidents*\n{s['incidents']} ({s['incidents_critical']} critical)",
    ]
    return fields


def _movers_text(s: dict[str, Any], per_comparison: int = 3) -> str:
    from promptops.alerts.slack import escape

    movers = s["cost_movers"]
    lines = [f"*Cost movers* (slices over {fmt_usd(movers['min_cost_usd'])}, largest change "
             "first)"]
    for c in movers["comparisons"]:
        head = f"vs {c['date']} ({c['against']}" + (
            f", {c['note']}" if c["note"] and c["hours"] else "") + "): "
        if not c["hours"]:
            lines.append(head + c["note"])
        elif not c["movers"]:
            lines.append(head + f"no slice over {fmt_usd(movers['min_cost_usd'])}")
        else:
            lines.append(head + " · ".join(
                f"{m['dimension']} *{escape(m['slice'])}* {fmt_usd(m['before_usd'])} → "
                f"{fmt_usd(m['cost_usd'])} ({cost_movers.fmt_change(m['change_usd'])}, "
                f"{cost_movers.fmt_ratio(m['ratio'])})"
                for m in c["movers"][:per_comparison]))
    return "\n".join(lines)


def send_slack_summary(message: dict[str, Any], *, webhooks: SlackWebhooks,
                       conn_id: str = "slack_alerts", timeout_s: float = 10.0,
                       max_retries: int = 3) -> None:
    """Post the summary to the webhook of connection ``conn_id`` (in a DAG task through the
    Airflow Slack provider, connection of type ``slackwebhook``), retrying rate limits,
    server errors and dropped connections.
    Raises :class:`ReportError` naming the connection, never the webhook URL."""
    from promptops.alerts.slack import SlackSendError, send_message

    try:
        send_message(message, conn_id=conn_id, webhooks=webhooks, what="the daily summary",
                     timeout_s=timeout_s, max_retries=max_retries)
    except SlackSendError as exc:
        raise ReportError(f"{exc}; the report itself is written, rerun the task to resend"
                          ) from None
