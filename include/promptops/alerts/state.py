"""What the alert engine remembers between evaluations and what it hands over, typed.

One scope's state (:class:`AlertState`) is a JSON document in the lake
(:mod:`promptops.alerts.store`), one per committed version:

- ``alerts``: each alert's state machine (:class:`AlertRecord`);
- ``groups``: what Slack has seen of each notification group (:class:`GroupState`);
- ``outbox``: the planned messages not delivered yet (:class:`OutboxEntry`);
- ``evaluations`` and ``history_from``: which alerts held at each evaluation time within
  ``replay_window`` (the history a backfill fills its gap from);
- ``last_outcome`` and ``last_log_rows``: the last evaluation's outcome and alert-log rows,
  which a rerun of it returns and rewrites.

The engine works on these classes; they become plain dicts only at the edges: the store's
JSON (:meth:`AlertState.from_dict`, :meth:`AlertState.to_dict`) and the outcome's XCom
(:meth:`EvaluationOutcome.as_dict`). Times in the state stay ISO strings, exactly as
stored, because the engine compares some of them as text. The JSON keeps the shape it had
before it was typed: documents written by earlier versions load, and convert back to the
same JSON.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from promptops.contracts.findings import Finding

if TYPE_CHECKING:
    from collections.abc import Iterable

    from promptops.alerts.engine import Delivery

STATE_VERSION = 1
PENDING, FIRING, RESOLVED = "pending", "firing", "resolved"

#: An alert as messages, outcomes and the alert log show it: :meth:`AlertRecord.view`.
AlertView = dict[str, Any]
#: A row of the alert log (:data:`promptops.alerts.store.ALERT_LOG_SCHEMA`).
LogRow = dict[str, Any]


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat()


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


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
    #: The incident this alert belongs to (``grouping: incidents``), once it fired.
    incident_id: str | None = None

    @classmethod
    def start(cls, f: Finding, now: datetime) -> AlertRecord:
        return cls(f.fingerprint, f.rule, f.severity, f.kind, dict(f.labels), f.summary,
                   f.value, f.threshold, dict(f.annotations), f.pending_for,
                   f.keep_firing_for, PENDING, iso(now), iso(now))

    def seen(self, f: Finding, now: datetime) -> AlertRecord:
        return replace(self, summary=f.summary, value=f.value, threshold=f.threshold,
                       annotations=dict(f.annotations), pending_for=f.pending_for,
                       keep_firing_for=f.keep_firing_for, kind=f.kind, last_seen_at=iso(now),
                       hits=self.hits + 1, misses=0)

    @property
    def identity(self) -> dict[str, str]:
        return {"rule": self.rule, "severity": self.severity, **self.labels}

    def view(self, muted_by: str | None = None) -> AlertView:
        """The JSON form messages, outcomes and the alert log use."""
        return {**asdict(self), "muted_by": muted_by}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AlertRecord:
        # A view (with muted_by) or a record with keys this version does not know loads too.
        return cls(**_known(cls, data))


@dataclass
class GroupState:
    """What Slack has seen of one notification group: with ``grouping: incidents`` one
    incident (its key starts with ``incident:``), which also keeps who belongs to it."""

    labels: dict[str, str]
    route_index: int
    #: The alerts Slack saw firing in the group's last delivered message.
    notified: dict[str, AlertView] = field(default_factory=dict)
    last_notified_at: str | None = None
    failures: int = 0
    last_error: str | None = None
    #: Incidents: every alert that joined it while it was open (fingerprints).
    members: list[str] = field(default_factory=list)
    #: Incidents: the correlation keys of its members (``dim=value&dim=value``, sorted).
    keys: list[str] = field(default_factory=list)
    #: Incidents: the primary cause shown in its header (``dim=value&...``; "" = overall).
    cause: str = ""
    opened_at: str | None = None
    #: Incidents: the last delivered message per route index (the hourly floor per route).
    route_sent: dict[str, str] = field(default_factory=dict)
    #: The signature of the last message each alert target received (by target name).
    target_sent: dict[str, str] = field(default_factory=dict)
    #: Incidents with a bot token: the ``ts`` of its opening message per connection, which
    #: updates reply to (``thread_ts``) and ``chat.update`` rewrites.
    threads: dict[str, str] = field(default_factory=dict)
    #: Incidents shared between scopes: its all-clear is due here but another scope still
    #: had it firing, so this scope waits (see :func:`promptops.alerts.stages.schedule`).
    all_clear_waits: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GroupState:
        return cls(**_known(cls, data))


@dataclass
class OutboxEntry:
    """One planned message for one group, committed in the state before it is sent."""

    id: str
    group_key: str
    group_labels: dict[str, str]
    route_index: int
    connections: list[str]
    evaluated_at: str
    reason: str
    firing: list[AlertView]
    resolved: list[AlertView]
    run_id: str | None = None
    run_url: str | None = None
    #: Fingerprints among ``firing`` that Slack has not seen firing yet.
    new: list[str] = field(default_factory=list)
    #: ``pending`` (planned, not sent yet) or ``failed``; a delivered entry leaves the outbox.
    status: str = "pending"
    attempt: int = 0
    #: Wall-clock time it was planned: an older evaluation's pending entry counts as in
    #: flight for ``claim_timeout`` after it.
    created_unix: float = 0
    error: str | None = None
    connection_id: str | None = None
    #: Incidents: its id, primary cause ("" = overall), when it opened, and the ``ts`` of
    #: its opening message per connection (a bot token's thread; empty with webhooks).
    incident_id: str | None = None
    cause: str = ""
    opened_at: str | None = None
    threads: dict[str, str] = field(default_factory=dict)
    #: Incidents: the incident's first message on this route (its opening, or an escalation
    #: reaching the paging route): what a pager counts as a page.
    first_on_route: bool = False
    #: The alert target this copy of the message goes to (None: the route's Slack
    #: connections). A target's copy has its own id, claim and retries.
    target: str | None = None
    #: A target's copy: what makes it the same message as one the target already got
    #: (:func:`promptops.alerts.fanout.signature`).
    signature: str = ""

    def in_flight(self, claim_timeout: timedelta) -> bool:
        """An older evaluation's message that its run may still be sending."""
        return (self.status == "pending"
                and time.time() - self.created_unix < claim_timeout.total_seconds())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OutboxEntry:
        return cls(**_known(cls, data))


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
    incident_id: str | None = None
    #: The alert target it went to; None: the route's Slack connections.
    target: str | None = None

    @classmethod
    def pending(cls, entry: OutboxEntry) -> NotificationReport:
        return cls(entry.id, entry.group_key, entry.group_labels, entry.reason,
                   len(entry.firing), len(entry.resolved), "pending",
                   incident_id=entry.incident_id, target=entry.target)

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
    firing: list[AlertView] = field(default_factory=list)
    pending: list[AlertView] = field(default_factory=list)
    #: Alerts that resolved in this evaluation.
    resolved: list[AlertView] = field(default_factory=list)
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
        """JSON-safe (for XCom and the state): times as ISO strings."""
        out = asdict(self)
        out["evaluated_at"] = iso(self.evaluated_at)
        if self.latest_evaluated_at is not None:
            out["latest_evaluated_at"] = iso(self.latest_evaluated_at)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvaluationOutcome:
        latest = data.get("latest_evaluated_at")
        return cls(**{**_known(cls, data), "evaluated_at": parse_iso(data["evaluated_at"]),
                      "latest_evaluated_at": parse_iso(latest) if latest else None,
                      "notifications": [NotificationReport(**n)
                                        for n in data.get("notifications", [])]})


@dataclass
class AlertState:
    """One scope's state document (see the module doc)."""

    scope: str
    version: int = STATE_VERSION
    last_evaluated_at: str | None = None
    last_run_id: str | None = None
    alerts: dict[str, AlertRecord] = field(default_factory=dict)
    groups: dict[str, GroupState] = field(default_factory=dict)
    outbox: list[OutboxEntry] = field(default_factory=list)
    last_outcome: EvaluationOutcome | None = None
    last_log_rows: list[LogRow] = field(default_factory=list)
    #: Evaluation time -> the fingerprints that held then. None in a state written before
    #: evaluations were remembered: it knows nothing before its ``last_evaluated_at``.
    evaluations: dict[str, list[str]] | None = field(default_factory=dict)
    #: The oldest time the history knows of (None: from the scope's first evaluation).
    history_from: str | None = None

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> AlertState:
        outcome = doc.get("last_outcome")
        return cls(
            scope=doc["scope"], version=doc.get("version", STATE_VERSION),
            last_evaluated_at=doc.get("last_evaluated_at"), last_run_id=doc.get("last_run_id"),
            alerts={fp: AlertRecord.from_dict(a) for fp, a in doc.get("alerts", {}).items()},
            groups={k: GroupState.from_dict(g) for k, g in doc.get("groups", {}).items()},
            outbox=[OutboxEntry.from_dict(e) for e in doc.get("outbox", [])],
            last_outcome=EvaluationOutcome.from_dict(outcome) if outcome else None,
            last_log_rows=list(doc.get("last_log_rows", [])),
            evaluations=doc.get("evaluations"), history_from=doc.get("history_from"))

    def to_dict(self) -> dict[str, Any]:
        """The JSON document the store commits (independent of this object)."""
        doc: dict[str, Any] = {
            "version": self.version, "scope": self.scope,
            "last_evaluated_at": self.last_evaluated_at, "last_run_id": self.last_run_id,
            "alerts": {fp: asdict(r) for fp, r in self.alerts.items()},
            "groups": {k: asdict(g) for k, g in self.groups.items()},
            "outbox": [asdict(e) for e in self.outbox],
            "last_outcome": self.last_outcome.as_dict() if self.last_outcome else None,
            "last_log_rows": copy.deepcopy(self.last_log_rows)}
        if self.evaluations is not None:  # an old state keeps its shape until remembered
            doc["evaluations"] = copy.deepcopy(self.evaluations)
            doc["history_from"] = self.history_from
        return doc

    def copy(self) -> AlertState:
        return copy.deepcopy(self)

    def remember(self, now: datetime, fingerprints: Iterable[str], window: timedelta) -> None:
        """Note which alerts held at ``now``; forget evaluations beyond ``window``."""
        if self.evaluations is None:  # a state from before evaluations were remembered
            self.evaluations = {}
            self.history_from = self.last_evaluated_at
        evaluations = self.evaluations
        evaluations[iso(now)] = sorted(fingerprints)
        oldest = max(parse_iso(t) for t in evaluations) - window
        self.evaluations = {t: fps for t, fps in sorted(evaluations.items())
                            if parse_iso(t) >= oldest}

    def older_than_history(self, now: datetime, window: timedelta) -> str | None:
        """Why an evaluation older than the last one cannot fill a gap, or None when it can."""
        if iso(now) in (self.evaluations or {}):
            return "was done before"
        known_from = self.history_from if self.evaluations is not None \
            else self.last_evaluated_at
        if known_from is not None and now < parse_iso(known_from):
            return f"is older than the history this state remembers (from {known_from})"
        last = self.last_evaluated_at
        if last is not None and now < parse_iso(last) - window:
            return f"is beyond the replay window (replay_window: {window})"
        return None

    def prune_resolved(self) -> None:
        """Forget resolved alerts no message has to tell Slack about any more (those that
        resolved at the last evaluation stay for its rerun)."""
        referenced = {fp for g in self.groups.values() for fp in g.notified}
        referenced |= {a["fingerprint"] for e in self.outbox for a in e.resolved}
        self.alerts = {fp: r for fp, r in self.alerts.items()
                       if r.status != RESOLVED or fp in referenced
                       or r.resolved_at == self.last_evaluated_at}


__all__ = ["FIRING", "PENDING", "RESOLVED", "STATE_VERSION", "AlertRecord", "AlertState",
           "AlertView", "EvaluationOutcome", "GroupState", "LogRow", "NotificationReport",
           "OutboxEntry", "iso", "parse_iso"]
