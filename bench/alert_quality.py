"""The alerting quality harness (issue 13 §6): a labelled multi-week simulation that starts
with an EMPTY lake, run as the DAGs would run it, scored the way an on-call engineer feels it.

Every hour, in order: generate the hour (the in-process simulator, the generator the HTTP
server serves), validate, write the calls partition; every 5 minutes of it the health
evaluation (API rows from the last 5 minutes of calls, GPU rows from the simulator, the
``source: health`` rules, alert engine scope ``health``); at the hour's end analyse_hour,
findings_for_hour and the alert engine (scope ``hourly``); every midnight the daily work
(refit_baselines, IsolationForest training). Messages are counted only through the Notifier
protocol (``deliver(notification)``), so the harness keeps working while the engine
changes what it sends.

Week 1 is warm-up and is scored too: it must not page. Incidents of every kind fall in
weeks 2-3; a nightly service-account batch (every night from day 0), a harmless prompt
rollout and a holiday dip are labelled look-alikes; a control run of the same length has
the look-alikes and no incident. The pure scoring functions at the bottom are unit-tested
(tests/bench/test_alert_quality.py); :func:`run_quality` returns the whole report as a dict.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

START = datetime(2026, 9, 7, tzinfo=UTC)  # a Monday
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
#: Messages this long after an incident's end still belong to it (keep-firing, resolution).
GRACE = timedelta(hours=2)
#: How far back an evaluation of each scope looks: an hourly run at 04:00 judges 03:00-04:00
#: (a batch that ended at 03:00 did not open its alert); a health run its last 5 minutes,
#: twice for a rule with ``for: 2``; the daily run its day.
LOOKS_BACK = {"hourly": timedelta(hours=1), "health": timedelta(minutes=10),
              "daily": timedelta(days=1)}
#: The per-caller rules: on a caller's first window, with no history yet, they judge by the
#: ceiling alone (issue 13 section 2), so a batch's first night may warn.
CALLER_RULES = frozenset({"token_burst_5m", "abusive_caller_5m", "abusive_caller"})
#: Incident kinds first seen by the 5-minute health evaluation: detected within 10 minutes.
HEALTH_KINDS = frozenset({"api_down", "gpu_saturation", "user_flood"})
HEALTH_DEADLINE = timedelta(minutes=10)
HARMLESS = frozenset({"scheduled_batch", "prompt_rollout", "traffic_dip"})
#: Simulator slice keys -> metric dimensions.
DIMENSION_OF = {"user_id": "user", "prompt_template": "template"}
FIRING_REASONS = frozenset({"new", "repeat", "update"})
BATCH_USER = "svc-nightly-batch"

#: (kind, day, start hour, hours, slice, params): incidents of every kind in weeks 2-3.
INCIDENTS: list[tuple[str, int, float, float, dict, dict]] = [
    ("error_burst", 8, 10, 2, {"model": "claude-3-5-sonnet"}, {"error_rate": 0.3}),
    ("latency_spike", 8, 20, 1, {"region": "eu-west-1"}, {"multiplier": 4.0}),
    ("user_flood", 9, 9, 1, {"user_id": "user-042"}, {"calls_per_minute": 300}),
    ("token_surge", 9, 15, 2, {"app": "code-assistant"}, {"multiplier": 4.0}),
    ("intent_drop", 11, 11, 2, {"prompt_template": "support_triage"},
     {"accuracy": 0.7, "version": "v3"}),
    ("relevance_drop", 15, 14, 2, {"app": "search-qa"}, {"mean": 2.8}),
    ("gpu_saturation", 16, 13, 1, {"gpu_node": "gpu-node-02"}, {}),
    ("api_down", 17, 16, 1, {}, {"record_error_rate": 0.5}),
    ("app_traffic_drop", 18, 10, 3, {"app": "support-chat"}, {"multiplier": 0.2}),
]
#: Look-alikes (both runs): the nightly batch from day 0 on, a holiday, a rollout. Day 0 is a
#: Monday; no incident shares a day with a look-alike other than the nightly batch.
LOOKALIKES: list[tuple[str, int, float, float | None, dict, dict]] = [
    ("scheduled_batch", 0, 0, None, {"user_id": BATCH_USER},
     {"daily_start": "02:00", "minutes": 60}),
    ("prompt_rollout", 14, 10, None, {"prompt_template": "support_answer"},
     {"version": "v4", "prompt_tokens_multiplier": 1.08}),
    ("traffic_dip", 10, 0, 24, {}, {"multiplier": 0.4}),  # a Thursday holiday
]


_ERR = frozenset({"success_rate", "error_rate", "errors"})
_LAT = frozenset({"latency_mean_ms", "latency_p95_ms", "latency_p99_ms"})
_TOK = frozenset({"total_tokens", "prompt_tokens", "completion_tokens", "cost_usd",
                  "tokens_per_minute_peak"})
_VOL = _TOK | {"requests", "peak_calls_per_minute"}
#: The metrics an event of each kind moves: an alert on another metric in its window is
#: noise that happened to coincide, not a detection (None: every metric, e.g. a holiday).
KIND_METRICS: dict[str, frozenset[str] | None] = {
    "error_burst": _ERR, "latency_spike": _LAT, "user_flood": _VOL,
    "token_surge": _TOK | _LAT, "intent_drop": frozenset({"intent_accuracy"}),
    "relevance_drop": frozenset({"relevance_mean"}),
    "gpu_saturation": _LAT | {"gpu_utilization_pct"}, "api_down": _ERR | _LAT | {"api_up"},
    "app_traffic_drop": _VOL, "scheduled_batch": _VOL, "prompt_rollout": _TOK,
    "traffic_dip": None,
}
#: A rollout's effects show within two days (same hour yesterday, the next refits).
ROLLOUT_WATCH = timedelta(days=2)


def alert_slice(a: dict) -> str:
    labels = a.get("labels") or {}
    if labels.get("dimension") in (None, "overall"):
        return "overall"
    return f"{labels['dimension']}={labels.get('slice')}"


@dataclass
class Label:
    """One labelled event of the run: an incident or a look-alike."""

    name: str
    kind: str
    start: datetime
    end: datetime
    slice: dict[str, str]
    #: Daily (start, end) windows of a recurring look-alike; empty = [start, end) only.
    windows: list[tuple[datetime, datetime]] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def harmless(self) -> bool:
        return self.kind in HARMLESS

    @property
    def truth(self) -> str:
        return truth_of(self.slice)

    @property
    def deadline(self) -> datetime:
        """The latest evaluation that still counts as detecting it in time: the first hourly
        run that saw a whole hour of it, or 10 minutes for a health kind."""
        if self.kind in HEALTH_KINDS:
            return self.start + HEALTH_DEADLINE
        return ceil_hour(self.start + HOUR)

    def relevant(self, a: dict) -> bool:
        """Whether an alert is about this event: on its own slice (or localised to it), on
        a metric its kind moves, or an alert whose metric is unknown."""
        where = alert_slice(a)
        if self.slice and (matches(where, self.truth) or matches(cause_of(a), self.truth)):
            return True
        if self.kind == "prompt_rollout":
            template = self.slice.get("prompt_template", "")
            if template and template in where:
                return True
        metrics = KIND_METRICS.get(self.kind)
        metric = (a.get("labels") or {}).get("metric") or a.get("metric")
        return metrics is None or metric is None or metric in metrics

    def claims(self, m: Msg) -> bool:
        """In the window and about this event (a message without alerts: by time alone).
        A new alert must have looked at some of the window (an hourly one at the hour
        before it); its updates and all-clear may come up to :data:`GRACE` after."""
        if m.reason == "new":
            seen = m.at - LOOKS_BACK.get(m.scope, HOUR)
            in_time = any(a < m.at and seen < b for a, b in self.spans)
        else:
            in_time = self.covers(m.at)
        return in_time and (not m.alerts or any(self.relevant(a) for a in m.alerts))

    @property
    def spans(self) -> list[tuple[datetime, datetime]]:
        return self.windows or [(self.start, self.end)]

    def covers(self, at: datetime, grace: timedelta = GRACE) -> bool:
        return any(a < at <= b + grace for a, b in self.spans)


@dataclass(frozen=True)
class Msg:
    """What the harness keeps of one delivered notification."""

    scope: str
    reason: str
    severity: str
    at: datetime
    route: tuple[str, ...]
    alerts: tuple[dict, ...]
    incident_id: str | None = None
    root_cause: str | None = None
    #: The alert target this copy went to (``targets:`` in alerting.yaml); None: Slack.
    target: str | None = None

    @property
    def is_page(self) -> bool:
        """A message on the critical route that is not an all-clear."""
        return self.severity == "critical" and self.reason != "resolved"

    @property
    def is_warning(self) -> bool:
        return self.reason == "new" and self.severity == "warning"

    @property
    def firing(self) -> bool:
        return self.reason != "resolved" and bool(self.alerts)


def msg_of(notification: Any) -> Msg:
    """A notification as a :class:`Msg`; unknown reasons and missing attributes are fine."""
    get = lambda name, default=None: getattr(notification, name, default)  # noqa: E731
    # A resolution lists its alerts as resolved: kept, so it is attributed like the rest.
    firing = tuple(get("firing") or ()) or tuple(get("resolved") or ())
    return Msg(str(get("scope", "")), str(get("reason", "")), str(get("severity", "info")),
               get("evaluated_at"), tuple(get("connections") or ()), firing,
               get("incident_id"), _incident_cause(notification), get("target"))


def _incident_cause(notification: Any) -> str | None:
    """The engine's cause of the message's incident. An hourly incident without one moved
    platform-wide ("overall"); the 5-minute sensor localises nothing, so its messages are
    read from their alerts' slices."""
    cause = getattr(notification, "cause", None)
    if cause is None:
        return _text_or_none(getattr(notification, "root_cause", None))
    if cause:
        return str(cause)
    hourly = getattr(notification, "scope", "") == "hourly"
    return "overall" if hourly and getattr(notification, "incident_id", None) else None


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


class Recorder:
    """A notifier that keeps what would have been posted (the Notifier protocol only)."""

    def __init__(self) -> None:
        self.sent: list[Msg] = []

    def deliver(self, notification: Any) -> Any:
        from promptops.alerts.engine import Delivery

        self.sent.append(msg_of(notification))
        return Delivery(ok=True, connection_id="recorder")


# -- pure scoring (unit-tested) ----------------------------------------------------------------
def ceil_hour(t: datetime) -> datetime:
    floor = t.replace(minute=0, second=0, microsecond=0)
    return floor if floor == t else floor + HOUR


def truth_of(slc: dict[str, str]) -> str:
    if not slc:
        return "overall"
    return "&".join(f"{DIMENSION_OF.get(k, k)}={v}" for k, v in sorted(slc.items()))


def cause_of(alert: dict) -> str:
    """Top-1 root cause of one alert: the first localised set if there is one, else the
    alert's own slice."""
    annotations = alert.get("annotations") or {}
    located = annotations.get("root_cause_set")
    if located:
        return str(located).split(";")[0].strip()
    labels = alert.get("labels") or {}
    if labels.get("dimension") in (None, "overall"):
        return "overall"
    return f"{labels['dimension']}={labels.get('slice')}"


def matches(found: str, truth: str) -> bool:
    """Exactly the truth's dimensions and values (a more or less specific set is wrong);
    ``*`` (everything moved alike) is right for a platform-wide incident; a template slice
    ``name@version`` matches the template's name."""
    if truth == "overall":
        return found in ("overall", "*", "")
    want = dict(part.split("=", 1) for part in truth.split("&"))
    got = dict(part.split("=", 1) for part in found.split("&") if "=" in part)
    return set(got) == set(want) and all(
        got[k] == v or got[k].split("@")[0] == v for k, v in want.items())


_SEVERITY_RANK = {"critical": 0, "warning": 1, "info": 2}


def message_cause(m: Msg, label: Label | None = None) -> str:
    """The cause a message names: the incident's own root cause where the engine gives one,
    else the most severe, most specific alert's (among those about ``label``, if given)."""
    if m.root_cause:
        return m.root_cause
    alerts = [a for a in m.alerts if label is None or label.relevant(a)] or list(m.alerts)
    if not alerts:
        return ""
    best = min(alerts, key=lambda a: (
        _SEVERITY_RANK.get(a.get("severity", "info"), 3),
        (a.get("labels") or {}).get("dimension") in (None, "overall")))
    return cause_of(best)


def attribute(messages: list[Msg], labels: list[Label]) -> list[str | None]:
    """Per message, the name of the incident it belongs to (None = outside incidents).

    A message belongs to an incident whose window (plus :data:`GRACE`) holds its evaluation
    time and that one of its alerts is about (:meth:`Label.relevant`), the earliest-starting
    one when several do. A message that carries an engine
    ``incident_id`` already seen on an attributed message follows it (a late resolution)."""
    incidents = sorted((x for x in labels if not x.harmless), key=lambda x: x.start)
    by_id: dict[str, str] = {}
    out: list[str | None] = []
    for m in sorted(messages, key=lambda m: m.at):
        owner = next((x.name for x in incidents if x.claims(m)), None)
        if owner is None and m.incident_id is not None:
            owner = by_id.get(m.incident_id)
        if owner is not None and m.incident_id is not None:
            by_id.setdefault(m.incident_id, owner)
        out.append(owner)
    order = sorted(range(len(messages)), key=lambda i: messages[i].at)
    result: list[str | None] = [None] * len(messages)
    for pos, i in enumerate(order):
        result[i] = out[pos]
    return result


def day_index(at: datetime, start: datetime = START) -> int:
    """The simulated day an evaluation belongs to; midnight's run closes the day before."""
    return (at - start - timedelta(microseconds=1)) // DAY


def per_day(messages: Iterable[Msg], days: int, start: datetime = START) -> dict[str, list[int]]:
    """Pages and warnings per simulated day."""
    pages, warnings = [0] * days, [0] * days
    for m in messages:
        d = day_index(m.at, start)
        if 0 <= d < days:
            pages[d] += m.is_page
            warnings[d] += m.is_warning
    return {"pages": pages, "warnings": warnings}


def split_weeks(counts: dict[str, list[int]]) -> dict[str, dict[str, int]]:
    return {"week1": {k: sum(v[:7]) for k, v in counts.items()},
            "later": {k: sum(v[7:]) for k, v in counts.items()}}


def max_per_route_hour(messages: Iterable[Msg]) -> int:
    """The most messages one route got within one hourly run's hour (an evaluation at 11:00
    and the health runs of 10:05-11:00 share the hour ending 11:00)."""
    slots = Counter((m.route, ceil_hour(m.at)) for m in messages)
    return max(slots.values(), default=0)


def score_incident(label: Label, mine: list[Msg]) -> dict[str, Any]:
    """Detection, delay, top-1 cause and message counts of one incident."""
    firing = sorted((m for m in mine if m.firing), key=lambda m: m.at)
    row: dict[str, Any] = {"name": label.name, "kind": label.kind,
                           "start": label.start.isoformat(), "truth": label.truth,
                           "detected": bool(firing), "messages": len(mine),
                           "pages": sum(m.is_page for m in mine),
                           "max_per_route_hour": max_per_route_hour(mine)}
    if not firing:
        row.update(delay_min=None, within=False, cause=None, cause_ok=False)
        return row
    first = firing[0]
    # The cause is read from the first messages that localise one: the 5-minute sensor sees
    # the platform as a whole, so its early page names no slice; the hourly run does.
    located = [m for m in firing if m.scope != "health" and (m.root_cause or any(
        (a.get("annotations") or {}).get("root_cause_set") for a in m.alerts))]
    named = located[0] if located else first
    firsts = [m for m in (located or firing) if m.at == named.at]
    causes = [message_cause(m, label) for m in sorted(firsts, key=lambda m: (
        _SEVERITY_RANK.get(m.severity, 3), m.scope))]
    cause = causes[0]
    row.update(delay_min=round((first.at - label.start) / timedelta(minutes=1), 1),
               within=first.at <= label.deadline, cause=cause,
               cause_ok=matches(cause, label.truth))
    return row


def offenders(messages: Iterable[Msg], top: int = 10) -> list[tuple[str, str, int]]:
    """(rule, slice, count) of the alerts in the given messages, most frequent first."""
    counts: Counter[tuple[str, str]] = Counter()
    for m in messages:
        for a in m.alerts:
            labels = a.get("labels") or {}
            where = ("overall" if labels.get("dimension") in (None, "overall")
                     else f"{labels.get('dimension')}={labels.get('slice')}")
            counts[(str(a.get("rule", labels.get("rule", "?"))), where)] += 1
    return [(rule, where, n) for (rule, where), n in counts.most_common(top)]


def lookalike_hits(outside: list[Msg], labels: list[Label]) -> dict[str, dict[str, int]]:
    """Messages outside incidents that fall in each look-alike's window. A recurring one's
    first window is counted apart (``first_window``) when only per-caller rules spoke: the
    caller had no history yet and was judged by its ceiling alone, as section 2 asks."""
    out: dict[str, dict[str, int]] = {}
    for x in labels:
        if not x.harmless:
            continue
        opened = {m.incident_id: x.claims(m) for m in outside
                  if m.reason == "new" and m.incident_id is not None}
        # An update or all-clear belongs where its incident opened (a noise warning
        # opened before the batch is not the batch's when it resolves during it).
        mine = [m for m in outside if opened.get(m.incident_id, True) and x.claims(m)]
        first = [m for m in mine if x.windows and m.alerts
                 and x.windows[0][0] < m.at <= x.windows[0][1] + GRACE
                 and all(a.get("rule") in CALLER_RULES for a in m.alerts)]
        mine = [m for m in mine if m not in first]
        out[x.kind] = {"messages": len(mine), "pages": sum(m.is_page for m in mine),
                       "warnings": sum(m.is_warning for m in mine),
                       "first_window": len(first),
                       "first_window_pages": sum(m.is_page for m in first)}
    return out


def target_summary(copies: list[Msg], owners: list[str | None]) -> dict[str, Any]:
    """Per alert target: its copies per incident by reason, and those outside incidents
    (Alertmanager's per-evaluation ``refresh`` copies counted apart: they notify nobody)."""
    out: dict[str, Any] = {}
    for m, owner in zip(copies, owners, strict=True):
        t = out.setdefault(str(m.target), {"incidents": {}, "outside": 0, "outside_new": 0,
                                           "refresh": 0})
        if m.reason == "refresh":
            t["refresh"] += 1
        elif owner is None:
            t["outside"] += 1
            t["outside_new"] += m.reason == "new"
        else:
            reasons = t["incidents"].setdefault(owner, {})
            reasons[m.reason] = reasons.get(m.reason, 0) + 1
    return out


def score(messages: list[Msg], labels: list[Label], days: int,
          start: datetime = START) -> dict[str, Any]:
    """The whole report of one run, as a JSON-safe dict. Copies for alert targets are
    summarised apart (``targets``); everything else scores the Slack messages."""
    copies = [m for m in messages if m.target is not None]
    targets = target_summary(copies, attribute(copies, labels)) if copies else {}
    messages = [m for m in messages if m.target is None]
    owners = attribute(messages, labels)
    grouped: dict[str | None, list[Msg]] = defaultdict(list)
    for m, owner in zip(messages, owners, strict=True):
        grouped[owner].append(m)
    incidents = [score_incident(x, grouped.get(x.name, [])) for x in labels if not x.harmless]
    by_kind: dict[str, dict[str, Any]] = {}
    for row in incidents:
        k = by_kind.setdefault(row["kind"], {"incidents": 0, "detected": 0, "within": 0,
                                              "delay_min": []})
        k["incidents"] += 1
        k["detected"] += row["detected"]
        k["within"] += row["within"]
        if row["delay_min"] is not None:
            k["delay_min"].append(row["delay_min"])
    outside = grouped.get(None, [])
    counts = per_day(outside, days, start)
    return {
        "incidents": incidents,
        "recall_by_kind": by_kind,
        "root_cause_top1": {"correct": sum(r["cause_ok"] for r in incidents),
                            "of": len(incidents)},
        "messages_per_incident": {r["name"]: r["messages"] for r in incidents},
        "max_per_incident_route_hour": max((r["max_per_route_hour"] for r in incidents),
                                           default=0),
        "outside": {"per_day": counts, **split_weeks(counts),
                    "max_warnings_per_day": max(counts["warnings"], default=0)},
        "lookalikes": lookalike_hits(outside, labels),
        "top_offenders": offenders([m for m in outside if m.firing]),
        "messages_total": len(messages),
        "targets": targets,
    }


def done_when(result: dict[str, Any], control: dict[str, Any] | None) -> dict[str, bool]:
    """The issue's acceptance checks on a scored run (and its control run)."""
    rows = result["incidents"]
    runs = [result] + ([control] if control else [])
    return {
        "every incident detected in time": all(r["within"] for r in rows),
        "root cause top-1 for every incident": all(r["cause_ok"] for r in rows),
        "<= 1 message per incident per route per hour":
            result["max_per_incident_route_hour"] <= 1,
        "0 pages outside incidents (week 1 included)":
            all(sum(r["outside"]["per_day"]["pages"]) == 0 for r in runs),
        "<= 1 warning a day outside incidents":
            all(r["outside"]["max_warnings_per_day"] <= 1 for r in runs),
        "nothing on the batch, the rollout or the holiday":
            all(v["messages"] == 0 and v.get("first_window_pages", 0) == 0
                for r in runs for v in r["lookalikes"].values()),
    }


# -- the scenario -------------------------------------------------------------------------------
def labels_for(days: int, incidents: bool, start: datetime = START) -> list[Label]:
    """The run's labelled events, cut to ``days`` (events starting later are left out)."""
    end = start + days * DAY
    out: list[Label] = []
    specs = [*(INCIDENTS if incidents else []), *LOOKALIKES]
    for kind, day, hour, hours, slc, params in specs:
        a = start + day * DAY + timedelta(hours=hour)
        if a >= end:
            continue
        b = end if hours is None else min(end, a + timedelta(hours=hours))
        windows = []
        if kind == "scheduled_batch":
            hh, mm = (int(x) for x in params["daily_start"].split(":"))
            windows = [(start + d * DAY + timedelta(hours=hh, minutes=mm),
                        start + d * DAY + timedelta(hours=hh, minutes=mm + params["minutes"]))
                       for d in range(day, days)]
        if kind == "prompt_rollout":
            windows = [(a, min(b, a + ROLLOUT_WATCH))]
        out.append(Label(f"{kind}@day{day}", kind, a, b, dict(slc), windows, dict(params)))
    return out


def scenario_doc(labels: list[Label], seed: int, calls_per_hour: int) -> dict[str, Any]:
    return {"seed": seed, "calls_per_hour": calls_per_hour,
            "data_faults": {"malformed_rate": 0.0, "duplicate_rate": 0.0, "late_rate": 0.0},
            "incidents": [{"name": x.name, "kind": x.kind, "start": x.start.isoformat(),
                           "end": x.end.isoformat(), "slice": x.slice, "params": x.params}
                          for x in labels],
            "faults": []}


# -- the run ------------------------------------------------------------------------------------
def _api_health_table(platform: Any, at: datetime) -> Any:
    """``api_up`` and the /health latency, as metrics.health.api_health_rows makes them."""
    from promptops.contracts import metric_table as mt
    from promptops.metrics.gpu import metric_rows
    from promptops.metrics.health import API_HEALTH_LATENCY_MS, API_UP

    if platform.api_down(at) is not None:
        return metric_rows([(API_UP, mt.OVERALL, mt.ALL, 0.0, 1),
                            (API_HEALTH_LATENCY_MS, mt.OVERALL, mt.ALL, None, 0)], at)
    return metric_rows([(API_UP, mt.OVERALL, mt.ALL, 1.0, 1),
                        (API_HEALTH_LATENCY_MS, mt.OVERALL, mt.ALL, 40.0, 1)], at)


def health_table(platform: Any, calls: Any, at: datetime) -> Any:
    """One 5-minute evaluation's rows: /health, the last 5 minutes of calls (none while the
    API is down: the sensor cannot fetch them) and the simulator's GPU readings."""
    import pyarrow as pa

    from promptops.contracts.metric_table import METRICS_SCHEMA
    from promptops.metrics.gpu import gpu_rows, platform_readings
    from promptops.metrics.health import recent_call_rows

    tables = [_api_health_table(platform, at)]
    if platform.api_down(at) is None:
        tables.append(recent_call_rows(calls, at, minutes=5))
    tables.append(gpu_rows(platform_readings(platform.gpu_metrics(at)), at))
    return pa.concat_tables([t.cast(METRICS_SCHEMA) for t in tables])


def health_findings(lake: Any, at: datetime, table: Any, thresholds: Any) -> list:
    """One health evaluation as the health DAG judges it: the rows are stored, then
    :func:`promptops.pipelines.health.health_findings` (the ``source: health`` rules, with
    the per-caller rules judged against the caller's own history)."""
    from promptops.metrics.health import write_health_metrics
    from promptops.pipelines.health import health_findings as judge

    write_health_metrics(lake, at, table)
    judged = _judged_metrics(thresholds)
    if judged is not None:  # same findings, less pandas work: only the metrics rules read
        import pyarrow as pa
        import pyarrow.compute as pc

        table = table.filter(pc.is_in(table.column("metric"), pa.array(sorted(judged))))
    return judge(lake, at, table, thresholds)


class _Lazy:
    def __init__(self) -> None:
        self.value: Any = None

    def get(self) -> Any:
        if self.value is None:
            from promptops.detection.rules import MetricHistory

            self.value = MetricHistory.from_tables({})
        return self.value


_EMPTY_HISTORY = _Lazy()


def _judged_metrics(thresholds: Any) -> set[str] | None:
    """Metrics the health rules read; None when a rule's metrics cannot be told."""
    out: set[str] = set()
    for rule in thresholds.rules_for("health").values():
        metric = getattr(rule, "metric", None)
        conditions = getattr(rule, "conditions", None)
        if isinstance(metric, str):
            out.add(metric)
        elif conditions:
            out.update(c.metric for c in conditions)
        else:
            return None
    return out


def daily_work(lake: Any, midnight: datetime, notes: list[str]) -> None:
    """What the daily DAG does for the day that just ended (failures are noted: an empty
    lake's first days have nothing to fit)."""
    from promptops.detection.anomaly_model import train
    from promptops.detection.baselines import refit_baselines
    from promptops.pipelines.daily import build_caller_profiles

    for name, step in (("caller_profiles", lambda: build_caller_profiles(lake, midnight)),
                       ("refit_baselines", lambda: refit_baselines(lake, midnight)),
                       ("train", lambda: train(lake, midnight - DAY))):
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - a bench notes and goes on, as a retry would
            notes.append(f"{midnight:%Y-%m-%d} {name}: {type(exc).__name__}: {exc}"[:200])


@dataclass
class RunOutput:
    messages: list[Msg]
    labels: list[Label]
    days: int
    seconds: dict[str, float]
    notes: list[str]


def simulate(days: int, seed: int, *, incidents: bool, calls_per_hour: int = 2000,
             keep: Path | None = None, progress: bool = True) -> RunOutput:
    """One labelled run from an empty lake; every hourly, 5-minute and daily step in order."""
    from promptops.alerts.config import load_alerting_config
    from promptops.alerts.engine import AlertEngine
    from promptops.alerts.store import AlertStore
    from promptops.contracts.datasets import CALLS
    from promptops.contracts.records import validate_page
    from promptops.detection.thresholds import load_thresholds
    from promptops.lake.store import Lake
    from promptops.metrics.pricing import load_price_table
    from promptops.pipelines.hourly import analyse_hour, check_budgets, findings_for_hour
    from promptops.simulator import Platform, SimConfig

    work = Path(tempfile.mkdtemp(prefix="promptops-alert-quality-"))
    lake_dir = keep / f"{'incidents' if incidents else 'control'}-{seed}" if keep else work / "lake"
    labels = labels_for(days, incidents)
    scenario_file = work / "scenario.yaml"
    scenario_file.write_text(yaml.safe_dump(scenario_doc(labels, seed, calls_per_hour)))
    platform = Platform(SimConfig.build(scenario_file))
    lake = Lake(f"file://{lake_dir}")
    prices, thresholds = load_price_table(), load_thresholds()
    recorder = Recorder()
    config = load_alerting_config().model_copy(update={"silences_file": None,
                                                       "silences_variable": ""})
    engines = {scope: AlertEngine(config, AlertStore(lake, scope=scope), recorder, silences=[])
               for scope in ("hourly", "health")}
    seconds = dict.fromkeys(("generate", "health", "hourly", "daily"), 0.0)
    notes: list[str] = []
    end = START + days * DAY
    truth_now = end + DAY
    began = time.perf_counter()
    hour = START
    while hour < end:
        t0 = time.perf_counter()
        if hour.hour == 0 and hour > START:
            daily_work(lake, hour, notes)
        t1 = time.perf_counter()
        served = platform.served_with_truth(hour, hour + HOUR, now=truth_now)
        calls = validate_page([s.record for s in served], hour, hour + HOUR).good
        lake.write_partition(CALLS, hour, calls)
        t2 = time.perf_counter()
        for k in range(1, 13):
            at = hour + timedelta(minutes=5 * k)
            found = health_findings(lake, at, health_table(platform, calls, at), thresholds)
            engines["health"].evaluate(found, at, run_id=f"health-{at:%Y%m%dT%H%M}")
        t3 = time.perf_counter()
        analyse_hour(lake, hour, prices=prices)
        found = findings_for_hour(lake, hour, prices=prices)
        found += check_budgets(lake, hour + HOUR)[0]  # none unless PROMPTOPS_BUDGETS_FILE
        engines["hourly"].evaluate(found, hour + HOUR, run_id=f"hourly-{hour:%Y%m%dT%H}")
        t4 = time.perf_counter()
        for key, dt in (("daily", t1 - t0), ("generate", t2 - t1), ("health", t3 - t2),
                        ("hourly", t4 - t3)):
            seconds[key] += dt
        hour += HOUR
        if progress and hour.hour == 0:
            print(f"  {'incidents' if incidents else 'control'} run: day "
                  f"{(hour - START).days - 1:2d} done ({time.perf_counter() - began:6.1f} s, "
                  f"{len(recorder.sent)} messages)", flush=True)
    seconds["total"] = time.perf_counter() - began
    if keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return RunOutput(recorder.sent, labels, days, seconds, notes)


def _scored_run(days: int, seed: int, incidents: bool, calls_per_hour: int,
                keep: Path | None, progress: bool) -> dict[str, Any]:
    logging.basicConfig(level=logging.CRITICAL)
    for name in ("promptops", "airflow"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    run = simulate(days, seed, incidents=incidents, calls_per_hour=calls_per_hour, keep=keep,
                   progress=progress)
    return {**score(run.messages, run.labels, days), "seconds": run.seconds,
            "notes": run.notes[:5], "incidents_simulated": incidents,
            "raw_messages": [msg_to_json(m) for m in run.messages]}


def msg_to_json(m: Msg) -> dict[str, Any]:
    """A message as JSON (what scoring reads), so a saved run can be scored again."""
    keep = ("rule", "severity", "labels", "summary")
    alerts = [{**{k: a.get(k) for k in keep},
               "annotations": {k: v for k, v in (a.get("annotations") or {}).items()
                               if k.startswith("root_cause")}} for a in m.alerts]
    return {"scope": m.scope, "reason": m.reason, "severity": m.severity,
            "at": m.at.isoformat(), "route": list(m.route), "alerts": alerts,
            "incident_id": m.incident_id, "root_cause": m.root_cause, "target": m.target}


def msg_from_json(d: dict[str, Any]) -> Msg:
    return Msg(d["scope"], d["reason"], d["severity"], datetime.fromisoformat(d["at"]),
               tuple(d["route"]), tuple(d["alerts"]), d.get("incident_id"), d.get("root_cause"),
               d.get("target"))


def rescore(report: dict[str, Any]) -> dict[str, Any]:
    """Score a saved report's raw messages again (after a change to the scoring only)."""
    days = report["days"]
    for key in ("incidents_run", "control_run"):
        run = report.get(key)
        if not run:
            continue
        messages = [msg_from_json(d) for d in run["raw_messages"]]
        labels = labels_for(days, run.get("incidents_simulated", key == "incidents_run"))
        run.update(score(messages, labels, days))
    if "incidents_run" in report:
        report["done_when"] = done_when(report["incidents_run"], report.get("control_run"))
    return report


def run_quality(days: int = 21, seed: int = 11, *, control: bool = True,
                incidents: bool = True, calls_per_hour: int = 2000,
                keep: Path | None = None, progress: bool = True,
                parallel: bool = True) -> dict[str, Any]:
    """The incidents run and its control run (another seed, same look-alikes), scored."""
    report: dict[str, Any] = {"days": days, "seed": seed, "calls_per_hour": calls_per_hour}
    jobs = {key: (days, run_seed, key == "incidents_run", calls_per_hour, keep, progress)
            for key, run_seed, wanted in (("incidents_run", seed, incidents),
                                          ("control_run", seed + 1000, control)) if wanted}
    if parallel and len(jobs) > 1:
        # Two independent runs: one process each (the machine's second core).
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(len(jobs)) as pool:
            futures = {key: pool.submit(_scored_run, *args) for key, args in jobs.items()}
            report.update({key: f.result() for key, f in futures.items()})
    else:
        report.update({key: _scored_run(*args) for key, args in jobs.items()})
    if incidents:
        report["done_when"] = done_when(report["incidents_run"], report.get("control_run"))
    return report


# -- printing -----------------------------------------------------------------------------------
def _days_line(values: list[int]) -> str:
    return " ".join(f"{v:d}" for v in values)


def print_report(report: dict[str, Any]) -> None:
    run = report.get("incidents_run")
    if run:
        print(f"\nINCIDENTS RUN ({report['days']} days from an empty lake, seed "
              f"{report['seed']}, {report['calls_per_hour']} calls/h)")
        print(f"{'incident':26} {'start (UTC)':12} {'det':>3} {'delay':>8} {'in time':>7} "
              f"{'msgs':>4} {'pages':>5} {'max/rt/h':>8}  root cause found -> truth")
        for r in run["incidents"]:
            delay = "-" if r["delay_min"] is None else f"{r['delay_min']:.0f} min"
            start = datetime.fromisoformat(r["start"])
            print(f"{r['name']:26} {start:%a %d %H:%M} {'yes' if r['detected'] else 'no':>3} "
                  f"{delay:>8} {'yes' if r['within'] else 'no':>7} {r['messages']:4d} "
                  f"{r['pages']:5d} {r['max_per_route_hour']:8d}  {str(r['cause'])[:48]} -> "
                  f"{r['truth']} {'OK' if r['cause_ok'] else 'WRONG'}")
        print("\nrecall per kind: " + ", ".join(
            f"{k} {v['within']}/{v['incidents']} in time ({v['detected']} detected)"
            for k, v in run["recall_by_kind"].items()))
        rc = run["root_cause_top1"]
        print(f"root cause top-1: {rc['correct']}/{rc['of']}")
        msgs = list(run["messages_per_incident"].values())
        print(f"messages per incident: mean {sum(msgs) / max(1, len(msgs)):.1f}, max "
              f"{max(msgs, default=0)}; max per incident per route per hour "
              f"{run['max_per_incident_route_hour']}; all messages {run['messages_total']}")
        _print_outside("incidents run", run)
        _print_targets("incidents run", run)
    control = report.get("control_run")
    if control:
        print(f"\nCONTROL RUN (no incidents, seed {report['seed'] + 1000}, same look-alikes)")
        _print_outside("control run", control)
        _print_targets("control run", control)
    if "done_when" in report:
        print("\nDONE WHEN")
        for check, ok in report["done_when"].items():
            print(f"  {'PASS' if ok else 'FAIL'}  {check}")


def _print_targets(name: str, run: dict[str, Any]) -> None:
    """Each alert target's copies (PROMPTOPS_ALERTING_FILE with routes naming targets)."""
    for target, t in sorted((run.get("targets") or {}).items()):
        per = t["incidents"]
        opened = [r.get("new", 0) for r in per.values()]
        total = [sum(r.values()) for r in per.values()]
        print(f"target {target} ({name}): {len(per)} incidents reached, openings per "
              f"incident max {max(opened, default=0)}, messages per incident mean "
              f"{sum(total) / max(1, len(total)):.1f} max {max(total, default=0)}; outside "
              f"incidents {t['outside']} ({t['outside_new']} openings); refreshes "
              f"{t['refresh']}")


def _print_outside(name: str, run: dict[str, Any]) -> None:
    out = run["outside"]
    print(f"outside incidents ({name}), per day:")
    print(f"  pages    {_days_line(out['per_day']['pages'])}")
    print(f"  warnings {_days_line(out['per_day']['warnings'])}")
    print(f"  week 1: {out['week1']['pages']} pages, {out['week1']['warnings']} warnings; "
          f"later weeks: {out['later']['pages']} pages, {out['later']['warnings']} warnings; "
          f"max warnings in a day {out['max_warnings_per_day']}")
    print("  look-alikes: " + ", ".join(
        f"{k} {v['pages']} pages/{v['warnings']} warnings/{v['messages']} messages"
        for k, v in run["lookalikes"].items()))
    for k, v in run["lookalikes"].items():
        if v.get("first_window"):
            print(f"  {k}'s first window: {v['first_window']} message(s) from the per-caller "
                  f"rules, {v['first_window_pages']} page(s): a caller with no history is "
                  f"judged by its ceiling alone (section 2); counted apart, never a page")
    if run["top_offenders"]:
        print("  top offenders outside incidents (rule, slice, alerts in messages):")
        for rule, where, n in run["top_offenders"]:
            print(f"    {n:4d}  {rule:38} {where}")
    secs = run["seconds"]
    print("  time: " + ", ".join(f"{k} {v:.0f} s" for k, v in secs.items()))
    for note in run["notes"]:
        print(f"  note: {note}")
