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

The planning is pure and lives in :mod:`promptops.alerts.stages` (advance, mute, group,
schedule, log); the state it plans from and the outcome are typed in
:mod:`promptops.alerts.state`. This module commits plans, delivers their messages and
records what became of them.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Protocol

from promptops.alerts import fanout, incidents
from promptops.alerts.config import AlertingConfig
from promptops.alerts.silences import Silence, SilenceSource
from promptops.alerts.stages import Plan, plan_evaluation, plan_gap_fill
from promptops.alerts.state import (
    AlertState,
    AlertView,
    EvaluationOutcome,
    GroupState,
    LogRow,
    NotificationReport,
    OutboxEntry,
    iso,
    parse_iso,
)
from promptops.alerts.store import AlertStore, StateConflict, StoreUnavailable
from promptops.contracts.findings import SEVERITY_ORDER, Finding
from promptops.errors import InvalidInput, StepIncomplete
from promptops.timeutil import as_utc

log = logging.getLogger(__name__)

#: Claims are pruned every this many state versions, once older than CLAIM_RETENTION.
CLAIM_PRUNE_EVERY = 50
CLAIM_RETENTION = timedelta(days=2)


def _utc(now: datetime) -> datetime:
    if not isinstance(now, datetime) or now.tzinfo is None:
        raise InvalidInput(f"evaluation time must be an aware datetime (the run's data interval "
                         f"end, UTC), got {now!r}")
    return as_utc(now)


# -- notifications --------------------------------------------------------------------------

@dataclass(frozen=True)
class Notification:
    """One message for one group (with ``grouping: incidents``, one incident), as the
    engine hands it to a :class:`Notifier`."""

    id: str
    scope: str
    group_key: str
    group_labels: dict[str, str]
    #: Why it is sent. Incidents: ``new`` (the incident opened: its first message),
    #: ``update`` (its severity or scope changed: members joined, rose, or some recovered),
    #: ``repeat`` (still firing after ``repeat_interval``, nothing changed) or ``resolved``
    #: (no member fires any more). Label groups: ``new`` (an alert Slack has not seen
    #: firing), ``resolved`` or ``repeat``.
    reason: str
    #: The route's connections; the notifier uses the first one that exists.
    connections: list[str]
    evaluated_at: datetime
    run_id: str | None
    run_url: str | None
    firing: list[AlertView]
    resolved: list[AlertView]
    #: Fingerprints among ``firing`` that Slack has not seen firing yet.
    new: list[str] = field(default_factory=list)
    #: Incidents: its id (None for label groups), primary cause (``dim=value&...``; ""
    #: for overall), when it opened, and its opening message's ``ts`` per connection
    #: (bot tokens thread updates under it; webhooks have none).
    incident_id: str | None = None
    cause: str = ""
    opened_at: str | None = None
    threads: dict[str, str] = field(default_factory=dict)
    #: Incidents: its first message on this route: the opening, or an escalation reaching
    #: a route it had not used (a warning incident turning critical). A page is a critical
    #: notification with ``first_on_route``.
    first_on_route: bool = False
    #: The alert target this copy goes to (a name under the config's ``targets:``); None:
    #: the route's Slack connections. ``refresh`` notifications (Alertmanager only) re-send
    #: an open incident each evaluation so that it stays open there.
    target: str | None = None

    @property
    def severity(self) -> str:
        alerts = self.firing or self.resolved
        return max((a["severity"] for a in alerts), key=lambda s: SEVERITY_ORDER.get(s, -1),
                   default="info")

    @classmethod
    def from_entry(cls, e: OutboxEntry, scope: str) -> Notification:
        return cls(e.id, scope, e.group_key, e.group_labels, e.reason, list(e.connections),
                   parse_iso(e.evaluated_at), e.run_id, e.run_url, e.firing, e.resolved,
                   list(e.new), e.incident_id, e.cause, e.opened_at, dict(e.threads),
                   e.first_on_route, e.target)


@dataclass(frozen=True)
class Delivery:
    """What a notifier reports back. ``error`` never holds a secret (webhook URL)."""

    ok: bool
    connection_id: str | None = None
    attempts: int = 1
    error: str | None = None
    #: True when retrying cannot help until someone fixes the configuration.
    permanent: bool = False
    #: A bot token's ``ts`` of the posted message (an incident's thread); None for webhooks.
    ts: str | None = None


class Notifier(Protocol):
    def deliver(self, notification: Notification) -> Delivery: ...


def mark_log_rows(rows: list[LogRow], notification_id: str, delivery: str,
                  connection_id: str | None) -> None:
    for row in rows:
        if row.get("notification_id") == notification_id:
            row.update(delivery=delivery, connection_id=connection_id)


def apply_delivery(state: AlertState, entry: OutboxEntry, delivery: Delivery,
                   attempt: int) -> AlertState:
    """Record one delivery result in a state (pure: returns a new one; idempotent per
    entry)."""
    state = state.copy()
    current = next((e for e in state.outbox if e.id == entry.id), None)
    if current is not None and current.status == "sent":
        return state
    if entry.target is not None:  # a target's copy: only its own outbox entry and ledger
        if delivery.ok:
            fanout.record_sent(state.groups, entry)
            state.outbox = [e for e in state.outbox if e.id != entry.id]
        elif current is not None:
            current.status, current.attempt, current.error = "failed", attempt + 1, \
                delivery.error
        _report(state, entry, delivery)
        return state
    gs = state.groups.setdefault(entry.group_key,
                                 GroupState(entry.group_labels, entry.route_index))
    status = "sent" if delivery.ok else "failed"
    if delivery.ok:
        last = gs.last_notified_at
        if last is None or parse_iso(entry.evaluated_at) >= parse_iso(last):
            # What Slack has now seen firing for this group: exactly this message's alerts.
            gs.notified = {a["fingerprint"]: a for a in entry.firing}
            gs.last_notified_at = entry.evaluated_at
        if entry.incident_id is not None:
            # The hourly floor per route, the route its all-clear takes, and its thread.
            route = str(entry.route_index)
            prev = gs.route_sent.get(route)
            if prev is None or entry.evaluated_at > prev:
                gs.route_sent[route] = entry.evaluated_at
            gs.route_index = entry.route_index
            if delivery.ts and delivery.connection_id and \
                    delivery.connection_id not in gs.threads:
                gs.threads[delivery.connection_id] = delivery.ts
        gs.failures, gs.last_error = 0, None
        state.outbox = [e for e in state.outbox if e.id != entry.id]
        state.prune_resolved()
    else:
        gs.failures += 1
        gs.last_error = delivery.error
        if current is not None:
            current.status, current.attempt, current.error = "failed", attempt + 1, \
                delivery.error
    mark_log_rows(state.last_log_rows, entry.id, status, delivery.connection_id)
    _report(state, entry, delivery)
    return state


def _report(state: AlertState, entry: OutboxEntry, delivery: Delivery) -> None:
    """The delivery in the stored outcome of its evaluation (what a rerun returns)."""
    outcome = state.last_outcome
    if outcome:
        for n in outcome.notifications:
            if n.notification_id == entry.id:
                n.status = "sent" if delivery.ok else "failed"
                n.connection_id, n.error = delivery.connection_id, delivery.error
                n.attempts += delivery.attempts


# -- the engine -----------------------------------------------------------------------------

class AlertEngine:
    """Evaluate findings against the stored state, post what is due, remember what was sent.

    ``silences`` is a :class:`SilenceSource` (default: the config's file; a DAG task's adds
    the Variable, see ``pipelines.hourly.alert_on_findings``) or a fixed list."""

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
        peers = self._peers(warnings)

        for _ in range(self.max_conflicts):
            try:
                snap = self.store.load()
            except StoreUnavailable as exc:
                return self._degraded(None, by_fp, now, active, run_id, run_url, warnings, exc)
            state = snap.state
            last = state.last_evaluated_at if state is not None else None
            if state is not None and last is not None and now == parse_iso(last):
                return self._replay(snap.seq, state, now, run_id, warnings)
            if state is not None and last is not None and now < parse_iso(last):
                why = state.older_than_history(now, self.config.replay_window)
                if why is not None:
                    warnings.append(f"evaluation at {iso(now)} is older than the last one "
                                    f"({last}) and {why}: state unchanged, nothing sent")
                    return EvaluationOutcome(self.scope, now, run_id, replay="older",
                                             latest_evaluated_at=parse_iso(last),
                                             warnings=warnings, state_seq=snap.seq)
                latest_silences, problems = self._active_silences(parse_iso(last))
                plan = plan_gap_fill(state, by_fp, now, self.config, active,
                                     latest_silences, scope=self.scope, run_id=run_id,
                                     run_url=run_url)
                notes = [p for p in problems if p not in warnings]
                notes.append(self._gap_summary(plan.outcome, plan.log_rows, last))
            else:
                plan = plan_evaluation(state, by_fp, now, self.config, active,
                                       scope=self.scope, run_id=run_id, run_url=run_url,
                                       peers=peers)
                # What a rerun of this evaluation returns (before delivery; deliveries
                # update it as they are recorded).
                plan.state.last_outcome = copy.deepcopy(plan.outcome)
                notes = []
            try:
                self.store.commit_state(snap.seq + 1, plan.state,
                                        keep=self.config.keep_state_versions)
            except StateConflict:
                continue  # another run committed first: re-read, most likely a replay now
            except StoreUnavailable as exc:
                return self._degraded(plan, by_fp, now, active, run_id, run_url,
                                      warnings + notes, exc)
            plan.outcome.state_seq = snap.seq + 1
            plan.outcome.warnings = warnings + notes
            self._deliver_and_record(plan.messages, plan.outcome, plan.log_rows)
            self._write_log(now, plan.outcome, plan.log_rows)
            if (snap.seq + 1) % CLAIM_PRUNE_EVERY == 0:
                # Claims only matter while a message can still be retried; keep them long
                # enough that a late rerun never mistakes a delivered message for a new one.
                self.store.prune_claims(max(CLAIM_RETENTION.total_seconds(),
                                            10 * self.config.claim_timeout.total_seconds()))
            return plan.outcome
        raise StepIncomplete(f"alert state of scope {self.scope!r}: {self.max_conflicts} "
                           f"concurrent commits in a row; is a run stuck in a loop?")

    # -- paths ----------------------------------------------------------------------------

    def _peers(self, warnings: list[str]) -> list[incidents.Peer]:
        """The open incidents of the other scopes this one shares incidents with
        (``incidents.link_scopes``), from their last committed state. Unreadable: none,
        with a warning (each scope then keeps its own incidents)."""
        linked = self.config.incidents.link_scopes
        if self.config.grouping != "incidents" or self.scope not in linked:
            return []
        out: list[incidents.Peer] = []
        for scope in linked:
            if scope == self.scope:
                continue
            try:
                state = AlertStore(self.store.lake, scope).load().state
            except (StoreUnavailable, InvalidInput) as exc:
                warnings.append(f"incidents of scope {scope!r} not read ({exc}); this "
                                f"evaluation links none of them")
                continue
            if state is not None:
                out += incidents.peers_of(scope, state)
        return out

    def _active_silences(self, now: datetime) -> tuple[list[Silence], list[str]]:
        if isinstance(self.silences, SilenceSource):
            return self.silences.active(now)
        return [s for s in self.silences if s.active_at(now)], []

    @staticmethod
    def _gap_summary(outcome: EvaluationOutcome, rows: list[LogRow], last: str) -> str:
        past = sum(r["delivery"] == "past" for r in rows)
        return (f"evaluation at {iso(outcome.evaluated_at)} fills a gap before the latest one "
                f"({last}): {len(outcome.notifications)} message(s) for alerts still firing "
                f"now, {past} alert(s) over by then logged for the report, not posted; heal "
                f"requests are stale")

    def _replay(self, seq: int, state: AlertState, now: datetime, run_id: str | None,
                warnings: list[str]) -> EvaluationOutcome:
        """A rerun of the last evaluation: no state change; deliver what is still due."""
        stored = state.last_outcome or EvaluationOutcome(self.scope, now, run_id)
        outcome = EvaluationOutcome(
            self.scope, now, run_id, replay="same",
            firing=stored.firing, pending=stored.pending, resolved=stored.resolved,
            notifications=[replace(n) for n in stored.notifications],
            latest_evaluated_at=now,
            heal_requests=[{"evaluated_at": iso(now), "stale": False, **h}
                           for h in stored.heal_requests],
            warnings=[*warnings, f"evaluation at {iso(now)} was already done (run "
                                 f"{state.last_run_id!r}); alert state unchanged"],
            state_seq=seq)
        todo = [e for e in state.outbox if e.evaluated_at == iso(now)
                and e.status in ("pending", "failed")]
        if todo:
            rows = state.last_log_rows
            self._deliver_and_record(todo, outcome, rows)
            self._write_log(now, outcome, rows)
        return outcome

    def _degraded(self, plan: Plan | None, by_fp: dict[str, Finding], now: datetime,
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
        for entry in plan.messages:
            delivery = self._send(entry)
            reports[entry.id].update_from(delivery)
            reports[entry.id].recorded = False
            mark_log_rows(plan.log_rows, entry.id, "unrecorded" if delivery.ok else "failed",
                          delivery.connection_id)
        self._write_log(now, outcome, plan.log_rows, reread=False)
        return outcome

    # -- delivery -------------------------------------------------------------------------

    def _deliver_and_record(self, entries: list[OutboxEntry], outcome: EvaluationOutcome,
                            log_rows: list[LogRow]) -> None:
        reports = {n.notification_id: n for n in outcome.notifications}
        results: list[tuple[OutboxEntry, Delivery, int]] = []
        for entry in entries:
            report = reports.get(entry.id)
            if report is None:
                report = NotificationReport.pending(entry)
                outcome.notifications.append(report)
            try:
                attempt = self._claim(entry, outcome.run_id)
            except StoreUnavailable as exc:
                log.warning("%s; sending %s without a claim", exc, entry.id)
                outcome.warnings.append(f"{exc}; message {entry.id} sent without a claim")
                attempt = entry.attempt
            if attempt is None:
                report.status = "claimed_elsewhere"
                continue
            delivery = self._send(entry)
            report.update_from(delivery)
            mark_log_rows(log_rows, entry.id, report.status, delivery.connection_id)
            results.append((entry, delivery, attempt))
        if results:
            self._record(results, outcome)

    def _claim(self, entry: OutboxEntry, run_id: str | None) -> int | None:
        """The attempt number this run claimed, or None when another run holds it."""
        timeout = self.config.claim_timeout.total_seconds()
        for attempt in range(entry.attempt, entry.attempt + 5):
            if self.store.claim(entry.id, attempt, {"run_id": run_id}):
                return attempt
            held = self.store.read_claim(entry.id, attempt)
            age = time.time() - float((held or {}).get("claimed_at_unix", 0))
            if held is not None and age < timeout:
                return None  # another run is delivering it right now
            log.warning("claim %s.%d is %.0fs old and was never reported back; retaking it "
                        "(the message may have been sent once already)", entry.id, attempt,
                        age)
        return None

    def _send(self, entry: OutboxEntry) -> Delivery:
        try:
            return self.notifier.deliver(Notification.from_entry(entry, self.scope))
        except Exception as exc:  # a notifier bug must not lose the alert record
            log.exception("notifier failed on message %s", entry.id)
            return Delivery(ok=False, error=f"notifier raised {type(exc).__name__}")

    def _record(self, results: list[tuple[OutboxEntry, Delivery, int]],
                outcome: EvaluationOutcome) -> None:
        for _ in range(self.max_conflicts):
            try:
                snap = self.store.load()
                state = snap.state or AlertState(self.scope)
                for entry, delivery, attempt in results:
                    state = apply_delivery(state, entry, delivery, attempt)
                self.store.commit_state(snap.seq + 1, state,
                                        keep=self.config.keep_state_versions)
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
                        if n.notification_id == entry.id:
                            n.recorded = False
                return
        outcome.warnings.append("delivery results not recorded: too many concurrent commits")

    def _write_log(self, now: datetime, outcome: EvaluationOutcome,
                   rows: list[LogRow], *, reread: bool = True) -> None:
        """Replace this evaluation's rows in its hour's alert log partition.

        The rows come from the newest state when it is still this evaluation's, since
        another run may have recorded a delivery of it since."""
        if reread:
            try:
                state = self.store.load().state
                if state is not None and state.last_evaluated_at == iso(now):
                    rows = state.last_log_rows
            except StoreUnavailable:
                pass  # the rows we have are good enough; the write below reports the outage
        try:
            self.store.write_alert_log(now, rows)
        except StoreUnavailable as exc:
            outcome.warnings.append(f"{exc} (alert log of {iso(now)} not written)")


__all__ = ["AlertEngine", "Delivery", "EvaluationOutcome", "Notification",
           "NotificationReport", "Notifier", "apply_delivery", "mark_log_rows"]
