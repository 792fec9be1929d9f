"""Recurring load is normal: per-caller rules judged against the caller's own history.

A service account that sends its nightly batch at 02:00 every day is busy, not abusive. The
per-caller rules (``abusive_caller``, ``abusive_caller_5m``, ``token_burst_5m``: one user's
busiest minute against a ceiling from ``thresholds.yaml``) therefore alert only when BOTH
hold:

1. the absolute ceiling is crossed (the rule's own finding), and
2. the caller is unusual against its own history at this time of day.

The own-history test, per finding (user, metric, the evaluation's time span ``[start, end]``):

- For each of the previous ``days`` days (default 7) the profile knows about ("covered":
  the health sensor ran then), the caller's *daily peak* is the highest value of the metric
  it reached in the evaluations within ``window_minutes`` (default 60) either side of the
  same time of day; 0 when it was not seen there.
- Its *usual peak* is the median of those daily peaks (robust to one odd day: a single
  earlier burst does not make the next one normal).
- The caller is **usual** (and the finding is dropped) when it was seen at this time on at
  least ``min_days`` previous days (default 1: today is at least the second occurrence), its
  usual peak is below the rule's critical level (abuse repeated daily is still abuse), and
  the current value is at most ``margin`` (default 1.5) times the usual peak.
- Otherwise it is **unusual** and the finding stands, with the usual peak as context. A new
  caller, or one never seen at this time of day, has a usual peak of 0: the ceiling alone
  decides.

Why 1.5: the usual peak is already the maximum over ~24 five-minute evaluations a day, so a
repeat of the same load exceeds it rarely and only slightly. At the ceilings that matter
(100 calls/min) a Poisson count's standard deviation is about 10, so 1.5x the usual peak is
more than 4 standard deviations above it (``tests/detection/test_caller_history.py`` checks
the false-alarm rate on simulated Poisson batches), while a caller at 3x its usual load is
caught.

Cost: the 5-minute sensor reads one small file. :func:`build_caller_profiles` (the daily
run, at midnight) condenses the last ``days`` days of ``health_metrics`` into the dataset
``caller_profiles`` (one record file per day), keeping only the values that could ever
explain a crossing (at least the lowest warning level / ``margin``). Without a profile
(the first day, or the daily run has not run), the evaluation falls back to yesterday's
profile, else to the ceiling alone, and says so in the log.

Settings: ``PROMPTOPS_CALLER_HISTORY_<FIELD>`` (e.g. ``PROMPTOPS_CALLER_HISTORY_MARGIN=2``,
``PROMPTOPS_CALLER_HISTORY_RULES=abusive_caller,token_burst_5m``,
``PROMPTOPS_CALLER_HISTORY_ENABLED=false``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Annotated, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from promptops.contracts.datasets import CALLER_PROFILES, HEALTH_METRICS
from promptops.contracts.findings import Finding
from promptops.detection.rules import format_value
from promptops.detection.thresholds import ThresholdRule, ThresholdsConfig, load_thresholds
from promptops.lake.store import Lake
from promptops.timeutil import as_utc, hour_floor

log = logging.getLogger(__name__)

#: The per-caller rules of the shipped thresholds.yaml.
DEFAULT_RULES = ("abusive_caller", "abusive_caller_5m", "token_burst_5m")
USER_DIMENSION = "user"
PROFILE_RECORD = "profile"
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)

PROFILE_SCHEMA = pa.schema([
    pa.field("user", pa.string(), nullable=False),
    pa.field("metric", pa.string(), nullable=False),
    #: The health evaluation's time (the end of its 5-minute window).
    pa.field("at", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("peak", pa.float64(), nullable=False),
])


class CallerHistoryConfig(BaseSettings):
    """How per-caller rules use the caller's own history (env ``PROMPTOPS_CALLER_HISTORY_``)."""

    model_config = SettingsConfigDict(env_prefix="PROMPTOPS_CALLER_HISTORY_", extra="ignore",
                                      frozen=True)

    #: False: every per-caller rule is judged by its ceiling alone.
    enabled: bool = True
    #: The rules judged against the caller's history (threshold rules on dimension ``user``).
    rules: Annotated[tuple[str, ...], NoDecode] = DEFAULT_RULES
    #: Previous days of history the usual peak is taken over.
    days: int = Field(default=7, ge=1, le=28)
    #: Minutes either side of this time of day that count as "the same time".
    window_minutes: int = Field(default=60, ge=5, le=720)
    #: The current value must exceed the usual peak by this factor to be unusual.
    margin: float = Field(default=1.5, gt=1.0)
    #: Previous days the caller must have been seen at this time for its load to be usual.
    min_days: int = Field(default=1, ge=1)

    @field_validator("rules", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            return tuple(json.loads(text) if text.startswith("[")
                         else (p.strip() for p in text.split(",") if p.strip()))
        return value

    @property
    def window(self) -> timedelta:
        return timedelta(minutes=self.window_minutes)


# -- the statistic -----------------------------------------------------------------------


@dataclass(frozen=True)
class Usual:
    """A caller's usual peak at one time of day."""

    #: Median of the daily peaks over the covered days (a day it was not seen counts 0).
    peak: float
    #: Covered days on which the caller was seen at this time of day.
    days_seen: int
    #: Previous days the profile covers at this time of day.
    days_covered: int

    @classmethod
    def of(cls, daily_peaks: Sequence[float | None]) -> Usual:
        """From one peak per covered day, None where the caller was not seen."""
        values = [0.0 if p is None else float(p) for p in daily_peaks]
        seen = sum(p is not None for p in daily_peaks)
        return cls(float(np.median(values)) if values else 0.0, seen, len(values))

    def describe(self, unit: str | None = None) -> str:
        if self.days_seen == 0:
            return (f"not seen at this time of day in {self.days_covered} day(s) of history: "
                    "judged by the ceiling alone")
        return (f"usual peak at this time of day {format_value(self.peak, unit)} "
                f"(median of {self.days_covered} day(s), seen on {self.days_seen})")


def is_unusual(current: float, usual: Usual, *, margin: float, min_days: int,
               critical: float | None = None) -> bool:
    """The own-history test (see the module docstring): True keeps the alert."""
    if usual.days_seen < min_days:
        return True  # new, or not (yet) recurring at this time: the ceiling alone decides
    if critical is not None and usual.peak >= critical:
        return True  # a load at the critical level is abuse even when it recurs
    return current > margin * usual.peak


# -- the profile ---------------------------------------------------------------------------


@dataclass
class CallerProfile:
    """The daily peaks the previous days' health evaluations saw, per (user, metric)."""

    #: The day the profile is for (its history ends at this day's start).
    built_for: datetime
    #: Hours (their start) in which the health sensor ran.
    covered_hours: frozenset[datetime]
    _series: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @classmethod
    def from_table(cls, table: pa.Table) -> CallerProfile:
        meta = json.loads((table.schema.metadata or {}).get(b"promptops", b"{}"))
        covered = frozenset(datetime.fromisoformat(h) for h in meta.get("covered_hours", []))
        profile = cls(datetime.fromisoformat(meta["built_for"]), covered)
        if table.num_rows:
            users = table.column("user").to_pylist()
            metrics = table.column("metric").to_pylist()
            at = table.column("at").cast(pa.int64()).to_numpy()
            peak = table.column("peak").to_numpy()
            keys = np.asarray([f"{m}\x00{u}" for u, m in zip(users, metrics, strict=True)])
            order = np.lexsort((at, keys))
            names, first = np.unique(keys[order], return_index=True)
            bounds = [*first.tolist(), len(order)]
            for n, name in enumerate(names.tolist()):
                metric, user = name.split("\x00", 1)
                idx = order[bounds[n]:bounds[n + 1]]
                profile._series[(user, metric)] = (at[idx].astype(np.int64),
                                                   peak[idx].astype(np.float64))
        return profile

    def usual(self, user: str, metric: str, start: datetime, end: datetime, *, days: int,
              window: timedelta) -> Usual:
        """The caller's usual peak for an evaluation covering ``[start, end]``: one daily
        peak per previous day the profile covers at that time of day."""
        times, peaks = self._series.get((user, metric), (np.empty(0, np.int64), np.empty(0)))
        daily: list[float | None] = []
        for k in range(1, days + 1):
            lo, hi = as_utc(start) - k * DAY - window, as_utc(end) - k * DAY + window
            if not self._covers(lo, hi):
                continue
            i = int(np.searchsorted(times, _us(lo), side="left"))
            j = int(np.searchsorted(times, _us(hi), side="right"))
            daily.append(float(peaks[i:j].max()) if j > i else None)
        return Usual.of(daily)

    def _covers(self, lo: datetime, hi: datetime) -> bool:
        h = hour_floor(lo)
        while h <= hi:
            if h in self.covered_hours:
                return True
            h += HOUR
        return False


def _us(t: datetime) -> int:
    return int(as_utc(t).timestamp() * 1_000_000)


def per_caller_rules(thresholds: ThresholdsConfig,
                     config: CallerHistoryConfig) -> dict[str, ThresholdRule]:
    """The configured rules that exist: threshold rules with direction ``above``."""
    out = {}
    for name in config.rules:
        rule = thresholds.rules.get(name)
        if isinstance(rule, ThresholdRule) and rule.direction == "above":
            out[name] = rule
        elif rule is not None:
            log.warning("caller history: rule %s is not an 'above' threshold rule; it is "
                        "judged by its ceiling alone (remove it from "
                        "PROMPTOPS_CALLER_HISTORY_RULES)", name)
    return out


def _floors(thresholds: ThresholdsConfig, config: CallerHistoryConfig) -> dict[str, float]:
    """Per metric, the smallest value that could make a crossing usual: the lowest level of
    the rules on it, divided by the margin. Smaller peaks are not kept."""
    floors: dict[str, float] = {}
    for rule in per_caller_rules(thresholds, config).values():
        level = min(v for v in (rule.warning, rule.critical) if v is not None)
        floors[rule.metric] = min(floors.get(rule.metric, np.inf), level / config.margin)
    return floors


def build_caller_profiles(lake: Lake, day: datetime, thresholds: ThresholdsConfig | None = None,
                          config: CallerHistoryConfig | None = None) -> dict:
    """Build the profile for ``day`` (its start) from the ``days`` days of ``health_metrics``
    before it, and store it in ``caller_profiles`` (replacing that day's). Idempotent per
    day. Returns a JSON-safe summary."""
    config = config or CallerHistoryConfig()
    thresholds = thresholds if thresholds is not None else load_thresholds()
    day = as_utc(day).replace(hour=0, minute=0, second=0, microsecond=0)
    floors = _floors(thresholds, config)
    tables, covered = [], []
    h = day - config.days * DAY
    while h < day:
        table = lake.read_records(HEALTH_METRICS, h, h + HOUR)
        if table is not None:
            covered.append(h)
            kept = _keep(table, floors)
            if kept.num_rows:
                tables.append(kept)
        h += HOUR
    profile = (pa.concat_tables(tables) if tables else PROFILE_SCHEMA.empty_table())
    meta = {"built_for": day.isoformat(), "days": config.days,
            "covered_hours": [c.isoformat() for c in covered],
            "floors": floors, "margin": config.margin}
    profile = profile.replace_schema_metadata({"promptops": json.dumps(meta)})
    info = lake.write_record(CALLER_PROFILES, day, PROFILE_RECORD, profile)
    callers = len(set(profile.column("user").to_pylist()))
    log.info("caller profiles for %s: %d peaks of %d caller(s) from %d hour(s) of health "
             "evaluations", day.date(), profile.num_rows, callers, len(covered))
    return {"day": day.date().isoformat(), "uri": info.uri, "rows": profile.num_rows,
            "callers": callers, "covered_hours": len(covered)}


def _keep(table: pa.Table, floors: dict[str, float]) -> pa.Table:
    """The per-user rows of the profiled metrics at or above their floor."""
    if not floors or table.num_rows == 0:
        return PROFILE_SCHEMA.empty_table()
    metric = table.column("metric").cast(pa.string())
    value = table.column("value").cast(pa.float64())
    keep = pc.and_(pc.equal(table.column("dimension").cast(pa.string()), USER_DIMENSION),
                   pc.is_valid(value))
    above = None
    for name, floor in floors.items():
        cond = pc.and_(pc.equal(metric, name), pc.greater_equal(value, floor))
        above = cond if above is None else pc.or_(above, cond)
    rows = table.filter(pc.and_(keep, above))
    return pa.table({"user": rows.column("slice").cast(pa.string()),
                     "metric": rows.column("metric").cast(pa.string()),
                     "at": rows.column("hour").cast(PROFILE_SCHEMA.field("at").type),
                     "peak": rows.column("value").cast(pa.float64())}, schema=PROFILE_SCHEMA)


def read_caller_profile(lake: Lake, at: datetime) -> CallerProfile | None:
    """The profile for ``at``'s day, else yesterday's (the daily run may not have run
    yet); None when there is neither (logged: the ceiling alone decides)."""
    today = as_utc(at).replace(hour=0, minute=0, second=0, microsecond=0)
    for day in (today, today - DAY):
        table = lake.read_record(CALLER_PROFILES, day, PROFILE_RECORD)
        if table is not None:
            if day != today:
                log.info("caller history: no profile for %s yet (the daily run builds it "
                         "after midnight); using the one of %s", today.date(), day.date())
            return CallerProfile.from_table(table)
    log.info("caller history: no caller profile for %s or the day before (the first day, or "
             "the daily run has not run): per-caller rules are judged by their ceiling alone",
             today.date())
    return None


# -- judging findings ------------------------------------------------------------------------


@dataclass(frozen=True)
class OwnHistoryOutcome:
    #: The findings that stand (per-caller ones annotated with the caller's usual peak).
    findings: list[Finding]
    #: The per-caller findings dropped as the caller's usual load (JSON-safe, for the log).
    suppressed: list[dict[str, Any]]


def judge_findings(findings: Iterable[Finding], profile: CallerProfile | None,
                   start: datetime, end: datetime, thresholds: ThresholdsConfig,
                   config: CallerHistoryConfig | None = None) -> OwnHistoryOutcome:
    """Drop the per-caller findings that are the caller's usual load at this time of day.
    ``[start, end]``: the times of the evaluations the findings' values cover."""
    config = config or CallerHistoryConfig()
    rules = per_caller_rules(thresholds, config) if config.enabled else {}
    kept: list[Finding] = []
    suppressed: list[dict[str, Any]] = []
    for f in findings:
        rule = rules.get(f.rule)
        if rule is None or f.labels.get("dimension") != USER_DIMENSION or f.value is None:
            kept.append(f)
            continue
        user = f.labels.get("slice", "")
        usual = (profile.usual(user, rule.metric, start, end, days=config.days,
                               window=config.window)
                 if profile is not None else Usual(0.0, 0, 0))
        note = usual.describe(rule.unit) if profile is not None else \
            "no caller profile yet: judged by the ceiling alone"
        if is_unusual(f.value, usual, margin=config.margin, min_days=config.min_days,
                      critical=rule.critical):
            kept.append(replace(f, annotations={**f.annotations, "own_history": note}))
            continue
        entry = {"rule": f.rule, "user": user, "severity": f.severity, "value": f.value,
                 "usual_peak": usual.peak, "days_seen": usual.days_seen,
                 "days_covered": usual.days_covered}
        log.info("recurring load, not alerted: %s on user=%s: %s now, %s; within %.1fx",
                 f.rule, user, format_value(f.value, rule.unit), usual.describe(rule.unit),
                 config.margin)
        suppressed.append(entry)
    return OwnHistoryOutcome(kept, suppressed)


def apply_own_history(lake: Lake, findings: list[Finding], start: datetime, end: datetime,
                      thresholds: ThresholdsConfig,
                      config: CallerHistoryConfig | None = None) -> OwnHistoryOutcome:
    """:func:`judge_findings` with the lake's profile (read only when a per-caller finding
    needs it). A profile that cannot be read never fails the evaluation: the ceiling alone
    decides, and the log says why."""
    config = config or CallerHistoryConfig()
    rules = set(per_caller_rules(thresholds, config)) if config.enabled else set()
    if not any(f.rule in rules for f in findings):
        return OwnHistoryOutcome(list(findings), [])
    try:
        profile = read_caller_profile(lake, start)
    except Exception as exc:  # context for the alert, never a reason to lose it
        log.warning("caller history: the caller profile could not be read (%s); per-caller "
                    "rules are judged by their ceiling alone until the daily run rebuilds "
                    "it (clear its 'Build caller profiles' task to rebuild now)", exc)
        profile = None
    return judge_findings(findings, profile, start, end, thresholds, config)
