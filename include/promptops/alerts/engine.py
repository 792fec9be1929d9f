"""The alert engine: Prometheus Alertmanager semantics over batch evaluations.

Each evaluation hands the engine the findings that hold *now* (the run's data-interval end)
and the engine answers with what to post. Per alert (identity = rule + severity + labels,
:attr:`Finding.fingerprint`):

``inactive --seen--> pending --seen pending_for times in a row--> firing``
``pending --not seen--> inactive`` (no message)
``firing --not seen more than keep_firing_for times in a row--> resolved``
``firing --seen again while keep-firing--> firing`` (no new message: flapping is absorbed)

Firing alerts are muted by silences (:mod:`promptops.alerts.silences`) and inhibition rules (a
firing source mutes matching targets with equal labels that are no more severe than it).
Muted alerts keep their state and still inhibit others; they are simply not posted. Unmuted
firing alerts are grouped by the route's ``group_by`` labels, and a group gets one message
in an evaluation when it has an alert Slack has not seen firing, a resolved alert Slack saw
firing (``send_resolved``), or when ``repeat_interval`` has passed since its last delivered
message. Changes to a group that Slack already saw firing wait ``group_interval`` since its
last message (Alertmanager's knob), except the all-clear, which goes out at once. A message
lists every firing alert of its group, as Alertmanager's do. What Slack has seen changes
only when a message is delivered, so a failed delivery is simply due again at the next
evaluation.

Runs, processes and concurrency:

- State lives in the lake (:class:`promptops.alerts.store.AlertStore`) and is committed as a
  new version with an exclusive create: of two runs that evaluate at once, one commits and
  the other re-reads, sees the evaluation already done and does not plan it again.
- The messages an evaluation plans are committed in its state (the *outbox*) before they are
  sent, and each is sent only by the run that creates its claim object: the same message is
  never posted twice, even by two processes evaluating the same hour together. A message
  whose sender died is retaken after ``claim_timeout`` (at-least-once).
- Replays: an evaluation at the time of the last one (a rerun, an Airflow retry) changes no
  alert state; it returns the stored outcome and only (re)sends that evaluation's messages
  that are not delivered yet. An evaluation older than the last one that was done before,
  or more than ``replay_window`` before it, changes nothing and sends nothing.
- Gaps: an older evaluation time never evaluated before (the backfill that arrives after the
  scheduler's run for the latest hour) completes the history. The state remembers which
  alerts held at each evaluation time within ``replay_window``; from that the gap's findings
  are placed in their streaks. An alert still pending at the latest evaluation whose streak
  the gap completes fires and is posted once, as the latest evaluation would have. An alert
  that fired in the gap but no longer fires at the latest evaluation is over: it goes to the
  alert log (``delivery="past"``) for the daily report and is never posted. A gap never
  resolves anything, and its heal requests say ``stale: true``: the heal path acts only on
  the latest evaluation.
- If the store cannot be read or written, the engine evaluates from what it has (no state
  when it cannot read it), sends without claims and logs a warning: a store outage may
  cause a duplicate message, never a lost one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from promptops.alerts.config import AlertingConfig, Route, matches_all
from promptops.alerts.silences import Silence, SilenceSource
from promptops.alerts.store import AlertStore, StateConflict, StoreUnavailable
from promptops.contracts.findings import SEVERITY_ORDER, Finding
from promptops.timeutil import as_utc

log = logging.getLogger(__name__)

STATE_VERSION = 1
#: Claims are pruned every this many state versions, once older than CLAIM_RETENTION.
CLAIM_PRUNE_EVERY = 50
CLAIM_RETENTION = timedelta(days=2)
PENDING, FIRING, RESOLVED = "pending", "firing", "resolved"


# -- small helpers ----------------------------------------------------------------------------

def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat()


def _dt(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _utc(now: datetime) -> datetime:
    if not isinstance(now, datetime) or now.tzinfo is None:
        raise ValueError(f"evaluation time must be an aware datetime (the run's data interval "
                         f"end, UTC), got {now!r}")
    return as_utc(now)


def _hash(*parts: Any) -> str:
    raw = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:20]


# -- alert state ----------------------------------------------------------------------------

@dataclass
class AlertRecord:
    """What the engine remembers about one alert between evaluations."""

    fingerprint: str
    rule: str
    severity: str
    kind: str
    labels: dict[str, str]
    summary: str
    value: float | None
    threshold: float | None
    annotations: dict[str, str]
    pending_for: int
    keep_firing_for: int
    status: str
    #: First evaluation of the current streak in which the condition held ("since when").
    active_since: str
    last_seen_at: str
    #: Consecutive evaluations the condition held (this streak).
    hits: int = 1
    #: Consecutive evaluations it did not, while firing.
    misses: int = 0
    fired_at: str | None = None
    resolved_at: str | None = None

    @classmethod
    def start(cls, f: Finding, now: datetime) -> AlertRecord:
        return cls(f.fingerprint, f.rule, f.severity, f.kind, dict(f.labels), f.summary,
                   f.value, f.threshold, dict(f.annotations), f.pending_for,
                   f.keep_firing_for, PENDING, _iso(now), _iso(now))

    def seen(self, f: Finding, now: datetime) -> AlertRecord:
        return replace(self, summary=f.summary, value=f.value, threshold=f.threshold,
                       annotations=dict(f.annotations), pending_for=f.pending_for,
                       keep_firing_for=f.keep_firing_for, kind=f.kind, last_seen_at=_iso(now),
                       hits=self.hits + 1, misses=0)

    @property
    def identity(self) -> dict[str, str]:
        return {"rule": self.rule, "severity": self.severity, **self.labels}

    def view(self, muted_by: str | None = None) -> dict[str, Any]:
        """The JSON form messages, outcomes and the alert log use."""
        return {**asdict(self), "muted_by": muted_by}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AlertRecord:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})


def advance(records: dict[str, AlertRecord], findings: dict[str, Finding],
            now: datetime) -> dict[str, AlertRecord]:
    """One evaluation of every alert's state machine (pure: returns new records)."""
    out: dict[str, AlertRecord] = {}
    for fp, f in findings.items():
        old = records.get(fp)
        rec = AlertRecord.start(f, now) if old is None or old.status == RESOLVED \
            else old.seen(f, now)
        if rec.status == PENDING and rec.hits >= max(1, f.pending_for):
            rec = replace(rec, status=FIRING, fired_at=_iso(now))
        out[fp] = rec
    for fp, rec in records.items():
        if fp in findings or rec.status == PENDING:  # a pending alert that clears is dropped
            continue
        if rec.status == FIRING:
            misses = rec.misses + 1
            rec = replace(rec, misses=misses)
            if misses > rec.keep_firing_for:
                rec = replace(rec, status=RESOLVED, resolved_at=_iso(now))
        out[fp] = rec
    return out


def mute_reasons(records: dict[str, AlertRecord], config: AlertingConfig,
                 silences: list[Silence]) -> dict[str, str]:
    """Why each muted alert is muted: ``silence:<id>`` or ``inhibit:<rule>:<source fp>``.

    Resolved alerts can be silenced (no resolved message); only firing ones are inhibited,
    and only by firing sources at least as severe (silenced sources still inhibit, as in
    Alertmanager)."""
    firing = [r for r in records.values() if r.status == FIRING]
    out: dict[str, str] = {}
    for rec in records.values():
        labels = rec.identity
        silence = next((s for s in silences if s.matches(labels)), None)
        if silence is not None:
            out[rec.fingerprint] = f"silence:{silence.id}"
            continue
        if rec.status != FIRING:
            continue
        for i, rule in enumerate(config.inhibit_rules):
            if not matches_all(rule.target_matchers, labels):
                continue
            target_is_source = matches_all(rule.source_matchers, labels)
            for src in firing:
                if src.fingerprint == rec.fingerprint:
                    continue
                sl = src.identity
                if not matches_all(rule.source_matchers, sl):
                    continue
                if target_is_source and matches_all(rule.target_matchers, sl):
                    continue  # alerts matching both sides do not inhibit each other
                if not rule.may_mute(src.severity, rec.severity):
                    continue  # a milder alert never hides a worse one (unless opted in)
                if all(sl.get(k, "") == labels.get(k, "") for k in rule.equal):
                    out[rec.fingerprint] = f"inhibit:{rule.name or i}:{src.fingerprint}"
                    break
            if rec.fingerprint in out:
                break
    return out


# -- notifications --------------------------------------------------------------------------

@dataclass(frozen=True)
class Notification:
    """One message for one group, as the engine hands it to a :class:`Notifier`."""

    id: str
    scope: str
    group_key: str
    group_labels: dict[str, str]
    #: ``new`` (an alert Slack has not seen firing), ``resolved`` or ``repeat``.
    reason: str
    #: The route's connections; the notifier uses the first one that exists.
    connections: list[str]
    evaluated_at: datetime
    run_id: str | None
    run_url: str | None
    firing: list[dict[str, Any]]
    resolved: list[dict[str, Any]]
    #: Fingerprints among ``firing`` that Slack has not seen firing yet.
    new: list[str] = field(default_factory=list)

    @property
    def severity(self) -> str:
        alerts = self.firing or self.resolved
        return max((a["severity"] for a in alerts), key=lambda s: SEVERITY_ORDER.get(s, -1),
                   default="info")

    @classmethod
    def from_entry(cls, e: dict[str, Any], scope: str) -> Notification:
        return cls(e["id"], scope, e["group_key"], e["group_labels"], e["reason"],
                   list(e["connections"]), _dt(e["evaluated_at"]), e.get("run_id"),
                   e.get("run_url"), e["firing"], e["resolved"], list(e.get("new", [])))


@dataclass(frozen=True)
class Delivery:
    """What a notifier reports back. ``error`` never holds a secret (webhook URL)."""

    ok: bool
    connection_id: str | None = None
    attempts: int = 1
    error: str | None = None
    #: True when retrying cannot help until someone fixes the configuration.
    permanent: bool = False


class Notifier(Protocol):
    def deliver(self, notification: Notification) -> Delivery: ...


@dataclass
class NotificationReport:
    """One message of an evaluation and what became of it."""

    notification_id: str
    group_key: str
    group_labels: dict[str, str]
    reason: str
    firing: int
    resolved: int
    #: ``pending`` (planned, not tried yet), ``sent``, ``failed``, or ``claimed_elsewhere``
    #: (another run is delivering it).
    status: str
    connection_id: str | None = None
    attempts: int = 0
    error: str | None = None
    #: False when the result could not be written to the state store.
    recorded: bool = True

    def update_from(self, delivery: Delivery) -> None:
        self.status = "sent" if delivery.ok else "failed"
        self.connection_id = delivery.connection_id
        self.attempts += delivery.attempts
        self.error = delivery.error


@dataclass
class EvaluationOutcome:
    scope: str
    evaluated_at: datetime
    run_id: str | None
    #: None for a normal evaluation; ``same`` (a rerun of the last evaluation time),
    #: ``gap`` (an older time never evaluated: completes the history, see the module doc) or
    #: ``older`` (an older time done before or beyond the replay window: nothing changed,
    #: nothing sent).
    replay: str | None = None
    #: The newest evaluation time the state knows; later than ``evaluated_at`` for a replay
    #: of an older time, whose findings are stale.
    latest_evaluated_at: datetime | None = None
    #: The state store was unreachable: evaluated from what could be read, sent unclaimed.
    degraded: bool = False
    firing: list[dict[str, Any]] = field(default_factory=list)
    pending: list[dict[str, Any]] = field(default_factory=list)
    #: Alerts that resolved in this evaluation.
    resolved: list[dict[str, Any]] = field(default_factory=list)
    notifications: list[NotificationReport] = field(default_factory=list)
    #: Unmuted firing alerts carrying ``annotations["heal_playbook"]``; each says the
    #: ``evaluated_at`` that found it and ``stale`` (True when older than the latest
    #: evaluation: report it, never act on it).
    heal_requests: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    state_seq: int | None = None

    @property
    def sent(self) -> list[NotificationReport]:
        return [n for n in self.notifications if n.status == "sent"]

    @property
    def failed(self) -> list[NotificationReport]:
        return [n for n in self.notifications if n.status == "failed"]

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe (for XCom): times as ISO strings."""
        out = asdict(self)
        out["evaluated_at"] = _iso(self.evaluated_at)
        if self.latest_evaluated_at is not None:
            out["latest_evaluated_at"] = _iso(self.latest_evaluated_at)
        return out


# -- planning (pure) ------------------------------------------------------------------------

@dataclass
class _Group:
    key: str
    labels: dict[str, str]
    route_index: int
    route: Route


def group_for(rec: AlertRecord, config: AlertingConfig) -> _Group:
    index, route = config.route_for(rec.identity)
    identity = rec.identity
    labels = {k: identity.get(k, "") for k in config.group_by_for(route)}
    key = f"{index}:" + json.dumps(labels, sort_keys=True, separators=(",", ":"))
    return _Group(key, labels, index, route)


@dataclass
class _Plan:
    doc: dict[str, Any]
    entries: list[dict[str, Any]]
    outcome: EvaluationOutcome
    log_rows: list[dict[str, Any]]


def _empty_state(scope: str) -> dict[str, Any]:
    return {"version": STATE_VERSION, "scope": scope, "last_evaluated_at": None,
            "last_run_id": None, "alerts": {}, "groups": {}, "outbox": [],
            "last_outcome": None, "last_log_rows": [], "evaluations": {},
            "history_from": None}


def _remember(state: dict[str, Any], now: datetime, fingerprints: Iterable[str],
              window: timedelta) -> None:
    """Note in ``state`` which alerts held at ``now``; forget evaluations beyond ``window``."""
    if "evaluations" not in state:  # a state from before evaluations were remembered
        state["evaluations"] = {}
        state["history_from"] = state.get("last_evaluated_at")
    evaluations = state["evaluations"]
    evaluations[_iso(now)] = sorted(fingerprints)
    oldest = max(_dt(t) for t in evaluations) - window
    state["evaluations"] = {t: fps for t, fps in sorted(evaluations.items())
                            if _dt(t) >= oldest}


def older_than_history(doc: dict[str, Any], now: datetime, window: timedelta) -> str | None:
    """Why an evaluation older than the last one cannot fill a gap, or None when it can."""
    if _iso(now) in doc.get("evaluations", {}):
        return "was done before"
    known_from = doc.get("history_from") if "evaluations" in doc else doc["last_evaluated_at"]
    if known_from is not None and now < _dt(known_from):
        return f"is older than the history this state remembers (from {known_from})"
    if now < _dt(doc["last_evaluated_at"]) - window:
        return f"is beyond the replay window (replay_window: {window})"
    return None


class _History:
    """The remembered evaluations of a scope: which alerts held at each evaluation time.

    Evaluations are one step apart (the DAG's schedule), taken as the smallest gap between
    remembered times; a time not remembered breaks a streak, as nothing is known of it."""

    def __init__(self, evaluations: dict[str, list[str]]) -> None:
        self.held = {_dt(t): set(fps) for t, fps in evaluations.items()}
        times = sorted(self.held)
        self.step = min((b - a for a, b in zip(times, times[1:], strict=False)), default=None)

    def streak(self, fp: str, end: datetime) -> list[datetime]:
        """The evaluations in a row up to ``end`` in which ``fp`` held, oldest first."""
        out, t = [], end
        while fp in self.held.get(t, ()):
            out.append(t)
            if self.step is None:
                break
            t -= self.step
        return out[::-1]

    def ended_at(self, fp: str, start: datetime) -> datetime | None:
        """The first evaluation after ``start`` in which ``fp`` no longer held, if known."""
        t = start
        while self.step is not None:
            t += self.step
            if t not in self.held:
                return None
            if fp not in self.held[t]:
                return t
        return None


def _entry_in_flight(entry: dict[str, Any], claim_timeout: timedelta) -> bool:
    """An older evaluation's message that its run may still be sending."""
    return (entry["status"] == "pending"
            and time.time() - entry.get("created_unix", 0) < claim_timeout.total_seconds())


def plan_evaluation(doc: dict[str, Any] | None, findings: dict[str, Finding], now: datetime,
                    config: AlertingConfig, silences: list[Silence], *, scope: str,
                    run_id: str | None, run_url: str | None) -> _Plan:
    """The new state document, the messages to send and the outcome (before delivery)."""
    state = json.loads(json.dumps(doc)) if doc else _empty_state(scope)
    _remember(state, now, findings, config.replay_window)
    records = {fp: AlertRecord.from_dict(d) for fp, d in state["alerts"].items()}
    records = advance(records, findings, now)
    muted = mute_reasons(records, config, silences)

    # Older evaluations' messages: keep the ones that may still be in flight (their groups
    # wait); drop failed or abandoned ones, whose groups are simply due again.
    outbox = [e for e in state["outbox"] if _entry_in_flight(e, config.claim_timeout)]
    waiting = {e["group_key"] for e in outbox}

    groups: dict[str, _Group] = {}
    firing_by_group: dict[str, list[AlertRecord]] = {}
    for rec in sorted(records.values(), key=lambda r: r.fingerprint):
        g = group_for(rec, config)
        groups.setdefault(g.key, g)
        if rec.status == FIRING and rec.fingerprint not in muted:
            firing_by_group.setdefault(g.key, []).append(rec)
    for key, g in state["groups"].items():
        if key not in groups:
            index = g["route_index"]
            route = config.routes[index] if 0 <= index < len(config.routes) \
                else Route(connections=config.default_connections)
            groups[key] = _Group(key, g["labels"], index, route)

    entries: list[dict[str, Any]] = []
    new_groups: dict[str, Any] = {}
    for key, g in sorted(groups.items()):
        gs = state["groups"].get(key) or _group_state(g)
        firing = firing_by_group.get(key, [])
        notified: dict[str, Any] = gs["notified"]
        # Alerts Slack saw firing that no longer fire (resolved, or gone): a resolved message.
        resolved_views = []
        for fp, seen_view in sorted(notified.items()):
            rec = records.get(fp)
            if rec is not None and rec.status == FIRING:
                continue
            if fp in muted:  # silenced at this evaluation: no resolved message
                continue
            view = rec.view() if rec is not None and rec.status == RESOLVED \
                else {**seen_view, "status": RESOLVED, "resolved_at": _iso(now)}
            resolved_views.append(view)
        send_resolved = config.send_resolved_for(g.route)
        if not send_resolved and resolved_views:
            gs = {**gs, "notified": {fp: v for fp, v in notified.items()
                                     if fp not in {r["fingerprint"] for r in resolved_views}}}
            resolved_views = []
        new = [r.fingerprint for r in firing if r.fingerprint not in notified]
        last = gs["last_notified_at"]
        repeat_due = bool(firing) and (
            last is None or now - _dt(last) >= config.repeat_interval_for(g.route))
        # group_interval: a change to a group Slack already knows about waits; the first
        # message of a group and its all-clear do not.
        change_due = not notified or not firing or last is None or \
            now - _dt(last) >= config.group_interval_for(g.route)
        reason = "new" if new and change_due else \
            "resolved" if resolved_views and change_due else \
            "repeat" if repeat_due else None
        if reason is not None and key not in waiting:
            entries.append(_entry(_hash(scope, key, _iso(now)), g, now, run_id, run_url,
                                  reason, firing, resolved_views, new))
        if firing or gs["notified"] or key in waiting or reason is not None:
            new_groups[key] = gs

    outbox += entries
    # Keep resolved alerts while a message may still have to tell Slack about them.
    referenced = {fp for gs in new_groups.values() for fp in gs["notified"]}
    referenced |= {a["fingerprint"] for e in outbox for a in e["resolved"]}
    records = {fp: r for fp, r in records.items()
               if r.status != RESOLVED or fp in referenced or r.resolved_at == _iso(now)}

    entry_of = {}
    for e in entries:
        for a in e["firing"] + e["resolved"]:
            entry_of[a["fingerprint"]] = e
    waiting_of = {r.fingerprint for k, rs in firing_by_group.items() if k in waiting for r in rs}
    log_rows = []
    for rec in sorted(records.values(), key=lambda r: (r.rule, r.fingerprint)):
        if rec.status == FIRING:
            event = "fired" if rec.fired_at == _iso(now) else "firing"
        elif rec.status == RESOLVED and rec.resolved_at == _iso(now):
            event = "resolved"
        else:
            continue
        e = entry_of.get(rec.fingerprint)
        delivery = "muted" if rec.fingerprint in muted else "pending" if e else \
            "in_flight" if rec.fingerprint in waiting_of else "not_due"
        log_rows.append({**rec.view(muted.get(rec.fingerprint)), "event": event,
                         "evaluated_at": _iso(now), "scope": scope, "run_id": run_id,
                         "notification_id": e["id"] if e else None, "delivery": delivery,
                         "connection_id": None})

    views = {fp: r.view(muted.get(fp)) for fp, r in records.items()}
    outcome = EvaluationOutcome(
        scope=scope, evaluated_at=now, run_id=run_id, latest_evaluated_at=now,
        firing=[views[fp] for fp, r in sorted(records.items()) if r.status == FIRING],
        pending=[views[fp] for fp, r in sorted(records.items()) if r.status == PENDING],
        resolved=[views[fp] for fp, r in sorted(records.items())
                  if r.status == RESOLVED and r.resolved_at == _iso(now)],
        notifications=[_pending_report(e) for e in entries],
        heal_requests=_heal_requests(records, muted, now, stale=False))

    new_doc = {**state, "version": STATE_VERSION, "scope": scope,
               "last_evaluated_at": _iso(now), "last_run_id": run_id,
               "alerts": {fp: asdict(r) for fp, r in records.items()},
               "groups": new_groups, "outbox": outbox, "last_log_rows": log_rows}
    return _Plan(new_doc, entries, outcome, log_rows)


def _group_state(g: _Group) -> dict[str, Any]:
    return {"labels": g.labels, "route_index": g.route_index, "notified": {},
            "last_notified_at": None, "failures": 0, "last_error": None}


def _entry(entry_id: str, g: _Group, evaluated_at: datetime, run_id: str | None,
           run_url: str | None, reason: str, firing: list[AlertRecord],
           resolved: list[dict[str, Any]], new: list[str]) -> dict[str, Any]:
    """One planned message (an outbox entry of the state)."""
    return {"id": entry_id, "group_key": g.key, "group_labels": g.labels,
            "route_index": g.route_index, "connections": list(g.route.connections),
            "evaluated_at": _iso(evaluated_at), "run_id": run_id, "run_url": run_url,
            "reason": reason, "firing": [r.view() for r in firing], "resolved": resolved,
            "new": new, "status": "pending", "attempt": 0, "created_unix": time.time(),
            "error": None, "connection_id": None}


def _pending_report(e: dict[str, Any]) -> NotificationReport:
    return NotificationReport(e["id"], e["group_key"], e["group_labels"], e["reason"],
                              len(e["firing"]), len(e["resolved"]), "pending")


def _heal_requests(records: dict[str, AlertRecord], muted: dict[str, str], now: datetime, *,
                   stale: bool) -> list[dict[str, Any]]:
    """Unmuted firing alerts with a heal playbook. ``stale``: found by an evaluation older
    than the latest one (a backfill), which the heal path must not act on."""
    return [{"fingerprint": r.fingerprint, "rule": r.rule, "severity": r.severity,
             "playbook": r.annotations["heal_playbook"], "labels": dict(r.labels),
             "summary": r.summary, "value": r.value, "threshold": r.threshold,
             "fired_at": r.fired_at, "newly_fired": r.fired_at == _iso(now),
             "annotations": dict(r.annotations), "evaluated_at": _iso(now), "stale": stale}
            for fp, r in sorted(records.items())
            if r.status == FIRING and fp not in muted and r.annotations.get("heal_playbook")]


def plan_gap_fill(doc: dict[str, Any], findings: dict[str, Finding], now: datetime,
                  config: AlertingConfig, silences: list[Silence],
                  latest_silences: list[Silence], *, scope: str, run_id: str | None,
                  run_url: str | None) -> _Plan:
    """An evaluation at ``now``, older than the last one and never done before: a backfill
    completing the history (see the module doc). ``silences`` are those active at ``now``,
    ``latest_silences`` those active at the latest evaluation, which messages speak for.

    The latest evaluation's decisions stand: nothing resolves, no alert state changes except
    a pending alert whose streak this evaluation completes, which fires."""
    state = json.loads(json.dumps(doc))
    latest = _dt(state["last_evaluated_at"])
    _remember(state, now, findings, config.replay_window)
    history = _History(state["evaluations"])
    records = {fp: AlertRecord.from_dict(d) for fp, d in state["alerts"].items()}

    # The alerts as they stood at `now`, from the streaks the history knows.
    then: dict[str, AlertRecord] = {}
    for fp, f in sorted(findings.items()):
        streak = history.streak(fp, now)
        need = max(1, f.pending_for)
        rec = replace(AlertRecord.start(f, streak[0]), last_seen_at=_iso(now), hits=len(streak))
        if len(streak) >= need:
            rec = replace(rec, status=FIRING, fired_at=_iso(streak[need - 1]))
        then[fp] = rec
    firing_then = {fp: r for fp, r in then.items() if r.status == FIRING}
    muted_then = mute_reasons(firing_then, config, silences)

    # A pending alert of the latest evaluation whose streak now reaches pending_for fires.
    promoted = []
    for fp, rec in sorted(records.items()):
        if rec.status != PENDING:
            continue
        streak = history.streak(fp, latest)
        need = max(1, rec.pending_for)
        if now in streak and len(streak) >= need:
            records[fp] = replace(rec, status=FIRING, hits=len(streak),
                                  active_since=_iso(streak[0]), fired_at=_iso(streak[need - 1]))
            promoted.append(fp)
    muted = mute_reasons(records, config, latest_silences)

    # Their groups get a message, as the latest evaluation would have sent, unless one is
    # in flight or the group waits for its group_interval (a later evaluation sends it).
    waiting = {e["group_key"] for e in state["outbox"] if _entry_in_flight(e, config.claim_timeout)}
    entries: list[dict[str, Any]] = []
    for fp in promoted:
        g = group_for(records[fp], config)
        if fp in muted or g.key in waiting or any(e["group_key"] == g.key for e in entries):
            continue
        gs = state["groups"].get(g.key) or _group_state(g)
        firing = [r for k, r in sorted(records.items()) if r.status == FIRING
                  and k not in muted and group_for(r, config).key == g.key]
        new = [r.fingerprint for r in firing if r.fingerprint not in gs["notified"]]
        last = gs["last_notified_at"]
        if new and (not gs["notified"] or last is None or
                    latest - _dt(last) >= config.group_interval_for(g.route)):
            entries.append(_entry(_hash(scope, g.key, _iso(latest), "gap", _iso(now)), g,
                                  latest, run_id, run_url, "new", firing, [], new))
            state["groups"][g.key] = gs

    entry_of = {a["fingerprint"]: e for e in entries for a in e["firing"]}
    log_rows = []
    for rec in sorted(firing_then.values(), key=lambda r: (r.rule, r.fingerprint)):
        fp = rec.fingerprint
        e = entry_of.get(fp)
        open_now = fp in records and records[fp].status == FIRING
        ended = None if open_now else history.ended_at(fp, now)
        delivery = "muted" if fp in muted_then else "pending" if e else \
            "still_open" if open_now else "past"
        log_rows.append({**rec.view(muted_then.get(fp)),
                         "event": "fired" if rec.fired_at == _iso(now) else "firing",
                         "resolved_at": _iso(ended) if ended else None,
                         "evaluated_at": _iso(now), "scope": scope, "run_id": run_id,
                         "notification_id": e["id"] if e else None, "delivery": delivery,
                         "connection_id": None})

    outcome = EvaluationOutcome(
        scope=scope, evaluated_at=now, run_id=run_id, replay="gap", latest_evaluated_at=latest,
        firing=[r.view(muted_then.get(fp)) for fp, r in firing_then.items()],
        pending=[r.view() for r in then.values() if r.status == PENDING],
        notifications=[_pending_report(e) for e in entries],
        heal_requests=_heal_requests(firing_then, muted_then, now, stale=True))
    new_doc = {**state, "alerts": {fp: asdict(r) for fp, r in records.items()},
               "outbox": state["outbox"] + entries}
    return _Plan(new_doc, entries, outcome, log_rows)


def mark_log_rows(rows: list[dict[str, Any]], notification_id: str, delivery: str,
                  connection_id: str | None) -> None:
    for row in rows:
        if row.get("notification_id") == notification_id:
            row.update(delivery=delivery, connection_id=connection_id)


def apply_delivery(doc: dict[str, Any], entry: dict[str, Any], delivery: Delivery,
                   attempt: int) -> dict[str, Any]:
    """Record one delivery result in a state document (pure; idempotent per entry)."""
    doc = json.loads(json.dumps(doc))
    current = next((e for e in doc["outbox"] if e["id"] == entry["id"]), None)
    if current is not None and current["status"] == "sent":
        return doc
    gs = doc["groups"].setdefault(entry["group_key"], {
        "labels": entry["group_labels"], "route_index": entry["route_index"], "notified": {},
        "last_notified_at": None, "failures": 0, "last_error": None})
    status = "sent" if delivery.ok else "failed"
    if delivery.ok:
        last = gs["last_notified_at"]
        if last is None or _dt(entry["evaluated_at"]) >= _dt(last):
            # What Slack has now seen firing for this group: exactly this message's alerts.
            gs["notified"] = {a["fingerprint"]: a for a in entry["firing"]}
            gs["last_notified_at"] = entry["evaluated_at"]
        gs["failures"], gs["last_error"] = 0, None
        doc["outbox"] = [e for e in doc["outbox"] if e["id"] != entry["id"]]
        referenced = {fp for g in doc["groups"].values() for fp in g["notified"]}
        referenced |= {a["fingerprint"] for e in doc["outbox"] for a in e["resolved"]}
        last_eval = doc.get("last_evaluated_at")
        doc["alerts"] = {fp: a for fp, a in doc["alerts"].items()
                         if a["status"] != RESOLVED or fp in referenced
                         or a["resolved_at"] == last_eval}
    else:
        gs["failures"] = gs.get("failures", 0) + 1
        gs["last_error"] = delivery.error
        if current is not None:
            current.update(status="failed", attempt=attempt + 1, error=delivery.error)
    mark_log_rows(doc.get("last_log_rows", []), entry["id"], status, delivery.connection_id)
    outcome = doc.get("last_outcome")
    if outcome and outcome.get("evaluated_at") == entry["evaluated_at"]:
        for n in outcome["notifications"]:
            if n["notification_id"] == entry["id"]:
                n.update(status=status, connection_id=delivery.connection_id,
                         attempts=n.get("attempts", 0) + delivery.attempts,
                         error=delivery.error)
    return doc


# -- the engine -----------------------------------------------------------------------------

class AlertEngine:
    """Evaluate findings against the stored state, post what is due, remember what was sent.

    ``silences`` is a :class:`SilenceSource` (default: the config's file and Variable) or a
    fixed list."""

    def __init__(self, config: AlertingConfig, store: AlertStore, notifier: Notifier, *,
                 silences: SilenceSource | list[Silence] | None = None,
                 max_conflicts: int = 20) -> None:
        self.config = config
        self.store = store
        self.notifier = notifier
        self.silences = silences if silences is not None else SilenceSource.from_config(config)
        self.max_conflicts = max_conflicts

    @property
    def scope(self) -> str:
        return self.store.scope

    def evaluate(self, findings: Iterable[Finding], now: datetime, *, run_id: str,
                 run_url: str | None = None) -> EvaluationOutcome:
        """One evaluation at ``now`` (the run's data-interval end, never wall-clock)."""
        now = _utc(now)
        warnings: list[str] = []
        by_fp: dict[str, Finding] = {}
        for f in findings:
            if f.fingerprint in by_fp:
                warnings.append(f"finding {f.rule} {f.labels} appears twice in one evaluation; "
                                f"the first one is used")
                continue
            by_fp[f.fingerprint] = f
        active, problems = self._active_silences(now)
        warnings += problems

        for _ in range(self.max_conflicts):
            try:
                snap = self.store.load()
            except StoreUnavailable as exc:
                return self._degraded(None, by_fp, now, active, run_id, run_url, warnings, exc)
            last = (snap.doc or {}).get("last_evaluated_at")
            if last is not None and now == _dt(last):
                return self._replay(snap.seq, snap.doc, now, run_id, warnings)
            if last is not None and now < _dt(last):
                why = older_than_history(snap.doc, now, self.config.replay_window)
                if why is not None:
                    warnings.append(f"evaluation at {_iso(now)} is older than the last one "
                                    f"({last}) and {why}: state unchanged, nothing sent")
                    return EvaluationOutcome(self.scope, now, run_id, replay="older",
                                             latest_evaluated_at=_dt(last),
                                             warnings=warnings, state_seq=snap.seq)
                latest_silences, problems = self._active_silences(_dt(last))
                plan = plan_gap_fill(snap.doc, by_fp, now, self.config, active,
                                     latest_silences, scope=self.scope, run_id=run_id,
                                     run_url=run_url)
                notes = [p for p in problems if p not in warnings]
                notes.append(self._gap_summary(plan.outcome, plan.log_rows, last))
            else:
                plan = plan_evaluation(snap.doc, by_fp, now, self.config, active,
                                       scope=self.scope, run_id=run_id, run_url=run_url)
                plan.doc["last_outcome"] = plan.outcome.as_dict()
                notes = []
            try:
                self.store.commit(snap.seq + 1, plan.doc, keep=self.config.keep_state_versions)
            except StateConflict:
                continue  # another run committed first: re-read, most likely a replay now
            except StoreUnavailable as exc:
                return self._degraded(plan, by_fp, now, active, run_id, run_url,
                                      warnings + notes, exc)
            plan.outcome.state_seq = snap.seq + 1
            plan.outcome.warnings = warnings + notes
            self._deliver_and_record(plan.entries, plan.outcome, plan.log_rows)
            self._write_log(now, plan.outcome, plan.log_rows)
            if (snap.seq + 1) % CLAIM_PRUNE_EVERY == 0:
                # Claims only matter while a message can still be retried; keep them long
                # enough that a late rerun never mistakes a delivered message for a new one.
                self.store.prune_claims(max(CLAIM_RETENTION.total_seconds(),
                                            10 * self.config.claim_timeout.total_seconds()))
            return plan.outcome
        raise RuntimeError(f"alert state of scope {self.scope!r}: {self.max_conflicts} "
                           f"concurrent commits in a row; is a run stuck in a loop?")

    # -- paths ----------------------------------------------------------------------------

    def _active_silences(self, now: datetime) -> tuple[list[Silence], list[str]]:
        if isinstance(self.silences, SilenceSource):
            return self.silences.active(now)
        return [s for s in self.silences if s.active_at(now)], []

    @staticmethod
    def _gap_summary(outcome: EvaluationOutcome, rows: list[dict[str, Any]], last: str) -> str:
        past = sum(r["delivery"] == "past" for r in rows)
        return (f"evaluation at {_iso(outcome.evaluated_at)} fills a gap before the latest one "
                f"({last}): {len(outcome.notifications)} message(s) for alerts still firing "
                f"now, {past} alert(s) over by then logged for the report, not posted; heal "
                f"requests are stale")

    def _replay(self, seq: int, doc: dict[str, Any], now: datetime, run_id: str | None,
                warnings: list[str]) -> EvaluationOutcome:
        """A rerun of the last evaluation: no state change; deliver what is still due."""
        stored = doc.get("last_outcome") or {}
        outcome = EvaluationOutcome(
            self.scope, now, run_id, replay="same",
            firing=stored.get("firing", []), pending=stored.get("pending", []),
            resolved=stored.get("resolved", []),
            notifications=[NotificationReport(**n) for n in stored.get("notifications", [])],
            latest_evaluated_at=now,
            heal_requests=[{"evaluated_at": _iso(now), "stale": False, **h}
                           for h in stored.get("heal_requests", [])],
            warnings=[*warnings, f"evaluation at {_iso(now)} was already done (run "
                                 f"{doc.get('last_run_id')!r}); alert state unchanged"],
            state_seq=seq)
        todo = [e for e in doc["outbox"] if e["evaluated_at"] == _iso(now)
                and e["status"] in ("pending", "failed")]
        if todo:
            rows = doc.get("last_log_rows", [])
            self._deliver_and_record(todo, outcome, rows)
            self._write_log(now, outcome, rows)
        return outcome

    def _degraded(self, plan: _Plan | None, by_fp: dict[str, Finding], now: datetime,
                  active: list[Silence], run_id: str | None, run_url: str | None,
                  warnings: list[str], exc: StoreUnavailable) -> EvaluationOutcome:
        """The store is unreachable: notify anyway (at-least-once), without claims."""
        log.warning("%s; notifying without state (duplicates possible, nothing lost)", exc)
        if plan is None:
            plan = plan_evaluation(None, by_fp, now, self.config, active, scope=self.scope,
                                   run_id=run_id, run_url=run_url)
        outcome = plan.outcome
        outcome.degraded = True
        outcome.warnings = [*warnings, f"{exc}; sent without state, so a message may repeat "
                                       f"once the store is back"]
        reports = {n.notification_id: n for n in outcome.notifications}
        for entry in plan.entries:
            delivery = self._send(entry)
            reports[entry["id"]].update_from(delivery)
            reports[entry["id"]].recorded = False
            mark_log_rows(plan.log_rows, entry["id"], "unrecorded" if delivery.ok else "failed",
                          delivery.connection_id)
        self._write_log(now, outcome, plan.log_rows, reread=False)
        return outcome

    # -- delivery -------------------------------------------------------------------------

    def _deliver_and_record(self, entries: list[dict[str, Any]], outcome: EvaluationOutcome,
                            log_rows: list[dict[str, Any]]) -> None:
        reports = {n.notification_id: n for n in outcome.notifications}
        results: list[tuple[dict[str, Any], Delivery, int]] = []
        for entry in entries:
            report = reports.get(entry["id"])
            if report is None:
                report = NotificationReport(entry["id"], entry["group_key"],
                                            entry["group_labels"], entry["reason"],
                                            len(entry["firing"]), len(entry["resolved"]),
                                            "pending")
                outcome.notifications.append(report)
            try:
                attempt = self._claim(entry, outcome.run_id)
            except StoreUnavailable as exc:
                log.warning("%s; sending %s without a claim", exc, entry["id"])
                outcome.warnings.append(f"{exc}; message {entry['id']} sent without a claim")
                attempt = entry["attempt"]
            if attempt is None:
                report.status = "claimed_elsewhere"
                continue
            delivery = self._send(entry)
            report.update_from(delivery)
            mark_log_rows(log_rows, entry["id"], report.status, delivery.connection_id)
            results.append((entry, delivery, attempt))
        if results:
            self._record(results, outcome)

    def _claim(self, entry: dict[str, Any], run_id: str | None) -> int | None:
        """The attempt number this run claimed, or None when another run holds it."""
        timeout = self.config.claim_timeout.total_seconds()
        for attempt in range(entry["attempt"], entry["attempt"] + 5):
            if self.store.claim(entry["id"], attempt, {"run_id": run_id}):
                return attempt
            held = self.store.read_claim(entry["id"], attempt)
            age = time.time() - float((held or {}).get("claimed_at_unix", 0))
            if held is not None and age < timeout:
                return None  # another run is delivering it right now
            log.warning("claim %s.%d is %.0fs old and was never reported back; retaking it "
                        "(the message may have been sent once already)", entry["id"], attempt,
                        age)
        return None

    def _send(self, entry: dict[str, Any]) -> Delivery:
        try:
            return self.notifier.deliver(Notification.from_entry(entry, self.scope))
        except Exception as exc:  # a notifier bug must not lose the alert record
            log.exception("notifier failed on message %s", entry["id"])
            return Delivery(ok=False, error=f"notifier raised {type(exc).__name__}")

    def _record(self, results: list[tuple[dict[str, Any], Delivery, int]],
                outcome: EvaluationOutcome) -> None:
        for _ in range(self.max_conflicts):
            try:
                snap = self.store.load()
                doc = snap.doc or _empty_state(self.scope)
                for entry, delivery, attempt in results:
                    doc = apply_delivery(doc, entry, delivery, attempt)
                self.store.commit(snap.seq + 1, doc, keep=self.config.keep_state_versions)
                outcome.state_seq = snap.seq + 1
                return
            except StateConflict:
                continue
            except StoreUnavailable as exc:
                break_msg = (f"{exc}; delivery results not recorded, so these messages may "
                             f"be sent again")
                log.warning("%s", break_msg)
                outcome.warnings.append(break_msg)
                for entry, _, _ in results:
                    for n in outcome.notifications:
                        if n.notification_id == entry["id"]:
                            n.recorded = False
                return
        outcome.warnings.append("delivery results not recorded: too many concurrent commits")

    def _write_log(self, now: datetime, outcome: EvaluationOutcome,
                   rows: list[dict[str, Any]], *, reread: bool = True) -> None:
        """Replace this evaluation's rows in its hour's alert log partition.

        The rows come from the newest state when it is still this evaluation's, since
        another run may have recorded a delivery of it since."""
        if reread:
            try:
                doc = self.store.load().doc or {}
                if doc.get("last_evaluated_at") == _iso(now):
                    rows = doc.get("last_log_rows", rows)
            except StoreUnavailable:
                pass  # the rows we have are good enough; the write below reports the outage
        try:
            self.store.write_alert_log(now, rows)
        except StoreUnavailable as exc:
            outcome.warnings.append(f"{exc} (alert log of {_iso(now)} not written)")


__all__ = ["AlertEngine", "AlertRecord", "Delivery", "EvaluationOutcome", "Notification",
           "NotificationReport", "Notifier", "advance", "apply_delivery",
           "mark_log_rows", "mute_reasons", "older_than_history", "plan_evaluation",
           "plan_gap_fill"]
