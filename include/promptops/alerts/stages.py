"""One evaluation of the alert engine, stage by stage, as Alertmanager's notification pipeline.

:func:`plan_evaluation` runs the stages in order, each a pure function of typed inputs:

1. :func:`advance`: each alert's state machine (pending -> firing -> resolved bookkeeping);
2. :func:`mute`: silences and inhibition, one muting stage as Alertmanager's
   ``notify.MuteStage``;
3. :func:`group`: alerts into notification groups by their route's ``group_by``;
4. :func:`schedule`: what each group is sent now (``new``, ``resolved`` or ``repeat``,
   ``group_interval`` and messages still in flight respected);
5. :func:`log_rows`: the evaluation's alert-log rows.

:func:`plan_gap_fill` is the backfill's plan (an older evaluation time never done before),
in its own stages. Neither sends anything: the engine (:mod:`promptops.alerts.engine`)
commits the plan's state, then delivers its messages.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from functools import cached_property
from typing import Any

from promptops.alerts import fanout, incidents
from promptops.alerts.config import AlertingConfig, Route, matches_all
from promptops.alerts.incidents import is_incident
from promptops.alerts.silences import Silence
from promptops.alerts.state import (
    FIRING,
    PENDING,
    RESOLVED,
    STATE_VERSION,
    AlertRecord,
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
from promptops.contracts.findings import SEVERITY_ORDER, Finding
from promptops.errors import InvalidInput


def _hash(*parts: Any) -> str:
    raw = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:20]


@dataclass
class Plan:
    """What an evaluation decided before anything is sent: the new state (to commit), the
    messages due now, the outcome and the evaluation's alert-log rows."""

    state: AlertState
    messages: list[OutboxEntry]
    outcome: EvaluationOutcome
    log_rows: list[LogRow]

    @cached_property
    def doc(self) -> dict[str, Any]:
        """The new state as the store commits it (made once, then kept)."""
        return self.state.to_dict()

    @property
    def entries(self) -> list[dict[str, Any]]:
        """The messages as the outbox keeps them (the store claims them by ``id``)."""
        return [asdict(e) for e in self.messages]


# -- 1. advance -------------------------------------------------------------------------------

def advance(records: dict[str, AlertRecord], findings: dict[str, Finding],
            now: datetime) -> dict[str, AlertRecord]:
    """One evaluation of every alert's state machine (pure: returns new records)."""
    out: dict[str, AlertRecord] = {}
    for fp, f in findings.items():
        old = records.get(fp)
        rec = AlertRecord.start(f, now) if old is None or old.status == RESOLVED \
            else old.seen(f, now)
        if rec.status == PENDING and rec.hits >= max(1, f.pending_for):
            rec = replace(rec, status=FIRING, fired_at=iso(now))
        out[fp] = rec
    for fp, rec in records.items():
        if fp in findings or rec.status == PENDING:  # a pending alert that clears is dropped
            continue
        if rec.status == FIRING:
            misses = rec.misses + 1
            rec = replace(rec, misses=misses)
            if misses > rec.keep_firing_for:
                rec = replace(rec, status=RESOLVED, resolved_at=iso(now))
        out[fp] = rec
    return out


# -- 2. mute ----------------------------------------------------------------------------------

def mute(records: dict[str, AlertRecord], config: AlertingConfig,
         silences: list[Silence]) -> dict[str, str]:
    """Why each muted alert is muted: ``silence:<id>`` or ``inhibit:<rule>:<source fp>``.

    Resolved alerts can be silenced (no resolved message); only firing ones are inhibited,
    and only by firing sources at least as severe (silenced sources still inhibit, as in
    Alertmanager)."""
    firing = [r for r in records.values() if r.status == FIRING]
    out: dict[str, str] = {}
    for rec in records.values():
        silence = next((s for s in silences if s.matches(rec.identity)), None)
        if silence is not None:
            out[rec.fingerprint] = f"silence:{silence.id}"
        elif rec.status == FIRING:
            source = _inhibited_by(rec, firing, config)
            if source is not None:
                out[rec.fingerprint] = source
    return out


def _inhibited_by(rec: AlertRecord, firing: list[AlertRecord],
                  config: AlertingConfig) -> str | None:
    """The first inhibit rule and firing source that mute ``rec``, as ``inhibit:...``."""
    labels = rec.identity
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
                return f"inhibit:{rule.name or i}:{src.fingerprint}"
    return None


# -- 3. group ---------------------------------------------------------------------------------

@dataclass
class Group:
    """One notification group of an evaluation."""

    key: str
    labels: dict[str, str]
    route_index: int
    route: Route
    #: Its unmuted firing alerts at this evaluation, by fingerprint.
    firing: list[AlertRecord] = field(default_factory=list)
    #: Incidents: every firing member, muted ones included (fingerprints).
    members: list[str] = field(default_factory=list)


def group_for(rec: AlertRecord, config: AlertingConfig) -> Group:
    index, route = config.route_for(rec.identity)
    identity = rec.identity
    labels = {k: identity.get(k, "") for k in config.group_by_for(route)}
    key = f"{index}:" + json.dumps(labels, sort_keys=True, separators=(",", ":"))
    return Group(key, labels, index, route)


def group(records: dict[str, AlertRecord], muted: dict[str, str],
          known: dict[str, GroupState], config: AlertingConfig) -> dict[str, Group]:
    """The evaluation's groups by key (sorted): those of its alerts, with their unmuted
    firing alerts, and those the state knows (Slack may have to hear they resolved)."""
    groups: dict[str, Group] = {}
    for rec in sorted(records.values(), key=lambda r: r.fingerprint):
        g = group_for(rec, config)
        g = groups.setdefault(g.key, g)
        if rec.status == FIRING and rec.fingerprint not in muted:
            g.firing.append(rec)
    for key, gs in known.items():
        if key not in groups:
            index = gs.route_index
            route = config.route_at(index)
            groups[key] = Group(key, gs.labels, index, route)
    return dict(sorted(groups.items()))


def incident_groups(records: dict[str, AlertRecord], muted: dict[str, str],
                    known: dict[str, GroupState], placed: dict[str, str],
                    config: AlertingConfig) -> dict[str, Group]:
    """One group per open incident (``grouping: incidents``): its unmuted firing members,
    routed as its worst member is (a critical incident pages, a warning one does not)."""
    groups: dict[str, Group] = {}
    for key, gs in sorted(known.items()):
        members = sorted(fp for fp, k in placed.items() if k == key)
        shown = [records[fp] for fp in members if fp not in muted]
        lead = incidents.worst(shown)
        if lead is not None:
            index, route = config.route_for(lead.identity)
        else:
            index, route = gs.route_index, config.route_at(gs.route_index)
        shown.sort(key=lambda r: (-SEVERITY_ORDER.get(r.severity, -1), r.rule,
                                  r.labels.get("dimension", ""), r.labels.get("slice", "")))
        groups[key] = Group(key, gs.labels, index, route, shown, members)
    return groups


# -- 4. schedule ------------------------------------------------------------------------------

@dataclass
class Schedule:
    #: The messages due now, one per group at most.
    entries: list[OutboxEntry]
    #: The group states the new state keeps.
    groups: dict[str, GroupState]


def schedule(groups: dict[str, Group], records: dict[str, AlertRecord], muted: dict[str, str],
             known: dict[str, GroupState], waiting: set[str], now: datetime,
             config: AlertingConfig, *, scope: str, run_id: str | None,
             run_url: str | None, peers: Sequence[incidents.Peer] = ()) -> Schedule:
    """What each group is sent now. A group whose older message may still be in flight
    (``waiting``) is sent nothing until it is delivered or abandoned; the all-clear of an
    incident shared with other scopes (``peers``) is sent once, by the last scope to
    recover (:func:`_all_clear_now`)."""
    open_in = {p.key: p for p in peers}
    entries: list[OutboxEntry] = []
    kept: dict[str, GroupState] = {}
    for key, g in groups.items():
        gs = known.get(key) or GroupState(g.labels, g.route_index)
        seen = gs.notified
        resolved = _resolved_views(seen, records, muted, now)
        if resolved and not config.send_resolved_for(g.route):
            gone = {r["fingerprint"] for r in resolved}
            gs = replace(gs, notified={fp: v for fp, v in seen.items() if fp not in gone})
            resolved = []
        if is_incident(key):
            reason = _incident_reason(g, gs, bool(resolved), now, config)
            if reason == "resolved":
                gs, reason = _all_clear_now(gs, open_in.get(key), scope, now)
            elif g.firing and gs.all_clear_waits:
                gs = replace(gs, all_clear_waits=False)
        else:
            reason = _reason(g, seen, gs.last_notified_at, bool(resolved), now, config)
        if reason is not None and key not in waiting:
            new = [r.fingerprint for r in g.firing if r.fingerprint not in seen]
            entry = _message(_hash(scope, key, iso(now)), g, now, run_id, run_url, reason,
                             g.firing, resolved, new)
            if is_incident(key):
                entry = _with_incident(entry, gs)
            entries.append(entry)
        if g.firing or g.members or gs.notified or key in waiting or reason is not None:
            kept[key] = gs
    return Schedule(entries, kept)


def _all_clear_now(gs: GroupState, peer: incidents.Peer | None, scope: str,
                   now: datetime) -> tuple[GroupState, str | None]:
    """An incident shared with another scope gets one all-clear, from the last scope to
    recover: while the other still has it firing this one waits; when the other closed
    it meanwhile (it sent the all-clear) this one closes silently; when both wait, the
    scope first in name order sends."""
    if peer is not None and peer.firing:
        return replace(gs, all_clear_waits=True), None
    if gs.all_clear_waits and peer is not None and peer.closed:  # the other one sent it
        return replace(gs, notified={}, last_notified_at=iso(now), all_clear_waits=False), \
            None
    if peer is not None and peer.all_clear_waits and peer.scope < scope:
        return replace(gs, all_clear_waits=True), None
    return gs, "resolved"


def _resolved_views(seen: dict[str, AlertView], records: dict[str, AlertRecord],
                    muted: dict[str, str], now: datetime) -> list[AlertView]:
    """Alerts Slack saw firing that no longer fire (resolved, or gone): a resolved message.
    One silenced at this evaluation gets none."""
    out = []
    for fp, seen_view in sorted(seen.items()):
        rec = records.get(fp)
        if (rec is not None and rec.status == FIRING) or fp in muted:
            continue
        out.append(rec.view() if rec is not None and rec.status == RESOLVED
                   else {**seen_view, "status": RESOLVED, "resolved_at": iso(now)})
    return out


def _reason(g: Group, seen: dict[str, AlertView], last: str | None, any_resolved: bool,
            now: datetime, config: AlertingConfig) -> str | None:
    """``new`` (an alert Slack has not seen firing), ``resolved``, ``repeat`` or None."""
    new = any(r.fingerprint not in seen for r in g.firing)
    repeat_due = bool(g.firing) and (
        last is None or now - parse_iso(last) >= config.repeat_interval_for(g.route))
    # group_interval: a change to a group Slack already knows about waits; the first
    # message of a group and its all-clear do not.
    change_due = not seen or not g.firing or last is None or \
        now - parse_iso(last) >= config.group_interval_for(g.route)
    return "new" if new and change_due else \
        "resolved" if any_resolved and change_due else \
        "repeat" if repeat_due else None


def _incident_reason(g: Group, gs: GroupState, any_resolved: bool, now: datetime,
                     config: AlertingConfig) -> str | None:
    """An incident's message now: ``new`` (its first), ``update`` (its severity or scope
    changed), ``repeat`` or ``resolved``; None when nothing is due.

    At most one message per route per ``incidents.min_message_interval`` (its first on a
    route goes out at once, so an escalation pages without waiting); a change otherwise
    waits ``group_interval`` since the last message unless the severity rose."""
    if not _floor_ok(g, gs, now, config):
        return None
    seen = list(gs.notified.values())
    if not g.firing:
        return "resolved" if any_resolved and seen else None
    if not seen:  # a scope continuing another's incident adds to a thread Slack knows
        return "update" if gs.labels.get("linked") else "new"
    views = [r.view() for r in g.firing]
    severity, was = incidents.severity_of(views), incidents.severity_of(seen)
    changed = severity != was or incidents.scope_of(views) != incidents.scope_of(seen)
    last = gs.last_notified_at
    since = now - parse_iso(last) if last is not None else None
    if changed and (severity > was or since is None
                    or since >= config.group_interval_for(g.route)):
        return "update"
    if since is None or since >= config.repeat_interval_for(g.route):
        return "repeat"
    return None


def _floor_ok(g: Group, gs: GroupState, now: datetime, config: AlertingConfig) -> bool:
    """Whether the incident may message ``g``'s route now: some connection of the route
    has had no message of the incident (on any route) within ``min_message_interval``. A
    warning's channel that the critical route also posts to is not messaged twice in an
    hour; an escalation that reaches a new channel is."""
    floor = config.incidents.min_message_interval
    if not g.route.connections:
        last = gs.route_sent.get(str(g.route_index))
        return last is None or now - parse_iso(last) >= floor
    recent: set[str] = set()
    for index, at in gs.route_sent.items():
        if now - parse_iso(at) < floor:
            recent.update(config.route_at(int(index)).connections)
    return not set(g.route.connections) <= recent


def _with_incident(entry: OutboxEntry, gs: GroupState) -> OutboxEntry:
    return replace(entry, incident_id=incidents.incident_id(entry.group_key), cause=gs.cause,
                   opened_at=gs.opened_at, threads=dict(gs.threads),
                   first_on_route=str(entry.route_index) not in gs.route_sent)


def _message(entry_id: str, g: Group, evaluated_at: datetime, run_id: str | None,
             run_url: str | None, reason: str, firing: list[AlertRecord],
             resolved: list[AlertView], new: list[str]) -> OutboxEntry:
    return OutboxEntry(id=entry_id, group_key=g.key, group_labels=g.labels,
                       route_index=g.route_index, connections=list(g.route.connections),
                       evaluated_at=iso(evaluated_at), run_id=run_id, run_url=run_url,
                       reason=reason, firing=[r.view() for r in firing], resolved=resolved,
                       new=new, created_unix=time.time())


# -- 5. log -----------------------------------------------------------------------------------

def log_rows(records: dict[str, AlertRecord], muted: dict[str, str],
             entries: list[OutboxEntry], in_flight: set[str], now: datetime, *, scope: str,
             run_id: str | None) -> list[LogRow]:
    """The evaluation's alert-log rows: each firing alert and each that resolved now, with
    its delivery (``muted``, ``pending``, ``in_flight`` for an alert of a group whose older
    message may still be in flight, else ``not_due``)."""
    entry_of = {a["fingerprint"]: e for e in entries for a in e.firing + e.resolved}
    rows = []
    for rec in sorted(records.values(), key=lambda r: (r.rule, r.fingerprint)):
        if rec.status == FIRING:
            event = "fired" if rec.fired_at == iso(now) else "firing"
        elif rec.status == RESOLVED and rec.resolved_at == iso(now):
            event = "resolved"
        else:
            continue
        fp = rec.fingerprint
        e = entry_of.get(fp)
        delivery = "muted" if fp in muted else "pending" if e else \
            "in_flight" if fp in in_flight else "not_due"
        rows.append(_row(rec.view(muted.get(fp)), event, now, scope, run_id, e, delivery))
    return rows


def _row(view: AlertView, event: str, now: datetime, scope: str, run_id: str | None,
         entry: OutboxEntry | None, delivery: str, **more: Any) -> LogRow:
    return {**view, "event": event, **more, "evaluated_at": iso(now), "scope": scope,
            "run_id": run_id, "notification_id": entry.id if entry else None,
            "delivery": delivery, "connection_id": None}


# -- the pipeline -----------------------------------------------------------------------------

def plan_evaluation(state: AlertState | None, findings: dict[str, Finding], now: datetime,
                    config: AlertingConfig, silences: list[Silence], *, scope: str,
                    run_id: str | None, run_url: str | None,
                    peers: Sequence[incidents.Peer] = ()) -> Plan:
    """The new state, the messages to send and the outcome of an evaluation at ``now`` (the
    latest one), before delivery. ``state`` is not changed. ``peers``: the open incidents
    of the other linked scopes (:func:`promptops.alerts.incidents.peers_of`)."""
    state = state.copy() if state is not None else AlertState(scope)
    state.remember(now, findings, config.replay_window)
    records = advance(state.alerts, findings, now)
    muted = mute(records, config, silences)
    records, groups, known = _grouped(state, records, muted, now, config, scope, peers)
    # Older evaluations' messages: keep the ones that may still be in flight (their groups
    # wait); drop failed or abandoned ones, whose groups are simply due again.
    in_flight = [e for e in state.outbox if e.in_flight(config.claim_timeout)]
    # Only a Slack message in flight holds its group back; targets have their own copies.
    waiting = {e.group_key for e in in_flight if e.target is None}
    due = schedule(groups, records, muted, known, waiting, now, config, scope=scope,
                   run_id=run_id, run_url=run_url, peers=peers)
    # The routes' alert targets: a copy of each message, Alertmanager's refresh of each
    # open incident, and older copies still to deliver (promptops.alerts.fanout).
    copies = fanout.target_copies(due.entries, {**known, **due.groups}, config)
    copies += fanout.refresh_copies(
        _open_groups(groups, due.groups, waiting, now, config, scope, run_id, run_url),
        due.entries + copies, config)
    retried = fanout.retained(state.outbox, in_flight, copies, config, now)
    sends = due.entries + copies + retried

    state.version, state.scope = STATE_VERSION, scope
    state.last_evaluated_at, state.last_run_id = iso(now), run_id
    state.alerts, state.outbox = records, in_flight + sends
    state.groups = {**_closed_kept(state.groups, now), **due.groups}
    # Keep resolved alerts while a message may still have to tell Slack about them.
    state.prune_resolved()
    waiting_alerts = {r.fingerprint for g in groups.values() if g.key in waiting
                      for r in g.firing}
    state.last_log_rows = log_rows(state.alerts, muted, due.entries, waiting_alerts, now,
                                   scope=scope, run_id=run_id)
    state.last_log_rows += incident_rows(groups, known, state.alerts, muted, due.entries,
                                         now, scope=scope, run_id=run_id)
    outcome = _outcome(state.alerts, muted, sends, now, scope=scope, run_id=run_id)
    return Plan(state, sends, outcome, state.last_log_rows)


def _open_groups(groups: dict[str, Group], states: dict[str, GroupState], waiting: set[str],
                 now: datetime, config: AlertingConfig, scope: str, run_id: str | None,
                 run_url: str | None) -> list[tuple[OutboxEntry, GroupState | None]]:
    """Each open, unmuted group whose route has an Alertmanager target, as the message
    that refreshes it there (no other group is built: most routes have none)."""
    out: list[tuple[OutboxEntry, GroupState | None]] = []
    for key, g in groups.items():
        if not g.firing or key in waiting or not any(
                t in config.targets and config.targets[t].type == "alertmanager"
                for t in g.route.targets):
            continue
        gs = states.get(key)
        entry = _message(_hash(scope, key, iso(now), fanout.REFRESH), g, now, run_id, run_url,
                         fanout.REFRESH, g.firing, [], [])
        if is_incident(key) and gs is not None:
            entry = _with_incident(entry, gs)
        out.append((entry, gs))
    return out


def _grouped(state: AlertState, records: dict[str, AlertRecord], muted: dict[str, str],
             now: datetime, config: AlertingConfig, scope: str,
             peers: Sequence[incidents.Peer] = ()
             ) -> tuple[dict[str, AlertRecord], dict[str, Group], dict[str, GroupState]]:
    """The records (tagged with their incidents), the evaluation's groups and the group
    states they start from. Switching to incidents drops the label groups of before (their
    alerts are posted again, once, as incidents)."""
    if config.grouping != "incidents":
        return records, group(records, muted, state.groups, config), state.groups
    # An incident Slack heard resolve is closed: what fires next opens a new one.
    known = {k: gs for k, gs in state.groups.items() if is_incident(k)
             and not incidents.is_closed(gs)}
    placed = incidents.assign(records, known, config, iso(now), scope, peers)
    _share_floor(known, peers)
    records = incidents.tag(records, placed)
    return records, incident_groups(records, muted, known, placed, config), known


def _closed_kept(groups: dict[str, GroupState], now: datetime) -> dict[str, GroupState]:
    """Closed incidents of the last ``CLOSED_KEPT``: the scopes sharing one read that its
    all-clear went out (:func:`_all_clear_now`)."""
    since = now - incidents.CLOSED_KEPT
    return {k: gs for k, gs in groups.items() if is_incident(k) and incidents.is_closed(gs)
            and gs.last_notified_at is not None and parse_iso(gs.last_notified_at) >= since}


def _share_floor(known: dict[str, GroupState], peers: Sequence[incidents.Peer]) -> None:
    """An incident open in several scopes has one floor per route and one thread: each
    scope takes the other's latest message per route and its thread ids."""
    for peer in peers:
        gs = known.get(peer.key)
        if gs is None:
            continue
        for route, at in peer.route_sent.items():
            mine = gs.route_sent.get(route)
            if mine is None or parse_iso(at) > parse_iso(mine):
                gs.route_sent[route] = at
        for connection, ts in peer.threads.items():
            gs.threads.setdefault(connection, ts)


def incident_rows(groups: dict[str, Group], known: dict[str, GroupState],
                  records: dict[str, AlertRecord], muted: dict[str, str],
                  entries: list[OutboxEntry], now: datetime, *, scope: str,
                  run_id: str | None) -> list[LogRow]:
    """One alert-log row per incident with a firing member or one that resolved now
    (``kind="incident"``, ``rule="incident"``, ``fingerprint`` = incident id, labels
    ``cause`` and ``members``): ``opened``, ``firing`` or ``resolved``."""
    entry_of = {e.group_key: e for e in entries}
    rows = []
    for key, g in groups.items():
        if not is_incident(key):
            continue
        gs, iid = known[key], incidents.incident_id(key)
        ended = [r for r in records.values() if r.incident_id == iid
                 and r.resolved_at == iso(now)]
        members = [records[fp] for fp in g.members] or ended
        if not members:
            continue
        event = "resolved" if not g.members else \
            "opened" if gs.opened_at == iso(now) else "firing"
        lead = incidents.worst(members)
        assert lead is not None
        names = [f"{r.rule} ({incidents.key_text(incidents.slice_key(r.labels)) or 'overall'})"
                 for r in members]
        e = entry_of.get(key)
        all_muted = all(r.fingerprint in muted for r in members) and bool(g.members)
        view = {"fingerprint": iid, "rule": "incident", "severity": lead.severity,
                "kind": "incident", "incident_id": iid,
                "labels": {"cause": gs.cause or "overall", "members": ",".join(
                    sorted(r.fingerprint for r in members))},
                "summary": f"{gs.cause or 'overall'}: {len(members)} alert(s): "
                           + ", ".join(sorted(names)),
                "value": None, "threshold": None, "active_since": gs.opened_at,
                "fired_at": gs.opened_at, "resolved_at": iso(now) if event == "resolved"
                else None, "muted_by": "all members muted" if all_muted else None}
        delivery = "muted" if all_muted else "pending" if e else "not_due"
        rows.append(_row(view, event, now, scope, run_id, e, delivery))
    return rows


def _outcome(records: dict[str, AlertRecord], muted: dict[str, str],
             entries: list[OutboxEntry], now: datetime, *, scope: str,
             run_id: str | None) -> EvaluationOutcome:
    views = {fp: r.view(muted.get(fp)) for fp, r in records.items()}
    ordered = sorted(records.items())
    return EvaluationOutcome(
        scope=scope, evaluated_at=now, run_id=run_id, latest_evaluated_at=now,
        firing=[views[fp] for fp, r in ordered if r.status == FIRING],
        pending=[views[fp] for fp, r in ordered if r.status == PENDING],
        resolved=[views[fp] for fp, r in ordered
                  if r.status == RESOLVED and r.resolved_at == iso(now)],
        notifications=[NotificationReport.pending(e) for e in entries],
        heal_requests=_heal_requests(records, muted, now, stale=False))


def _heal_requests(records: dict[str, AlertRecord], muted: dict[str, str], now: datetime, *,
                   stale: bool) -> list[dict[str, Any]]:
    """Unmuted firing alerts with a heal playbook. ``stale``: found by an evaluation older
    than the latest one (a backfill), which the heal path must not act on."""
    return [{"fingerprint": r.fingerprint, "rule": r.rule, "severity": r.severity,
             "playbook": r.annotations["heal_playbook"], "labels": dict(r.labels),
             "summary": r.summary, "value": r.value, "threshold": r.threshold,
             "fired_at": r.fired_at, "newly_fired": r.fired_at == iso(now),
             "annotations": dict(r.annotations), "evaluated_at": iso(now), "stale": stale}
            for fp, r in sorted(records.items())
            if r.status == FIRING and fp not in muted and r.annotations.get("heal_playbook")]


# -- a backfill filling a gap -----------------------------------------------------------------

class _History:
    """The remembered evaluations of a scope: which alerts held at each evaluation time.

    Evaluations are one step apart (the DAG's schedule), taken as the smallest gap between
    remembered times; a time not remembered breaks a streak, as nothing is known of it."""

    def __init__(self, evaluations: dict[str, list[str]]) -> None:
        self.held = {parse_iso(t): set(fps) for t, fps in evaluations.items()}
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


def plan_gap_fill(state: AlertState, findings: dict[str, Finding], now: datetime,
                  config: AlertingConfig, silences: list[Silence],
                  latest_silences: list[Silence], *, scope: str, run_id: str | None,
                  run_url: str | None) -> Plan:
    """An evaluation at ``now``, older than the last one and never done before: a backfill
    completing the history (see :mod:`promptops.alerts.engine`). ``silences`` are those
    active at ``now``, ``latest_silences`` those active at the latest evaluation, which
    messages speak for. ``state`` is not changed.

    The latest evaluation's decisions stand: nothing resolves, no alert state changes except
    a pending alert whose streak this evaluation completes, which fires."""
    last_evaluated_at = state.last_evaluated_at
    if last_evaluated_at is None:
        raise InvalidInput("a gap fill needs the latest evaluation; this state has none")
    state = state.copy()
    latest = parse_iso(last_evaluated_at)
    state.remember(now, findings, config.replay_window)
    history = _History(state.evaluations or {})

    then = _alerts_then(findings, history, now)
    firing_then = {fp: r for fp, r in then.items() if r.status == FIRING}
    muted_then = mute(firing_then, config, silences)
    promoted = _promote(state.alerts, history, latest, now)
    muted = mute(state.alerts, config, latest_silences)
    entries = _schedule_promoted(state, promoted, muted, latest, now, config, scope=scope,
                                 run_id=run_id, run_url=run_url)
    entries += fanout.target_copies(entries, state.groups, config)
    state.outbox = state.outbox + entries
    rows = _gap_log_rows(firing_then, muted_then, state.alerts, entries, history, now,
                         scope=scope, run_id=run_id)
    outcome = EvaluationOutcome(
        scope=scope, evaluated_at=now, run_id=run_id, replay="gap", latest_evaluated_at=latest,
        firing=[r.view(muted_then.get(fp)) for fp, r in firing_then.items()],
        pending=[r.view() for r in then.values() if r.status == PENDING],
        notifications=[NotificationReport.pending(e) for e in entries],
        heal_requests=_heal_requests(firing_then, muted_then, now, stale=True))
    return Plan(state, entries, outcome, rows)


def _alerts_then(findings: dict[str, Finding], history: _History,
                 now: datetime) -> dict[str, AlertRecord]:
    """The alerts as they stood at ``now``, from the streaks the history knows."""
    then: dict[str, AlertRecord] = {}
    for fp, f in sorted(findings.items()):
        streak = history.streak(fp, now)
        need = max(1, f.pending_for)
        rec = replace(AlertRecord.start(f, streak[0]), last_seen_at=iso(now), hits=len(streak))
        if len(streak) >= need:
            rec = replace(rec, status=FIRING, fired_at=iso(streak[need - 1]))
        then[fp] = rec
    return then


def _promote(records: dict[str, AlertRecord], history: _History, latest: datetime,
             now: datetime) -> list[str]:
    """Fire each pending alert of the latest evaluation whose streak ``now`` completes (in
    ``records``); returns their fingerprints."""
    promoted = []
    for fp, rec in sorted(records.items()):
        if rec.status != PENDING:
            continue
        streak = history.streak(fp, latest)
        need = max(1, rec.pending_for)
        if now in streak and len(streak) >= need:
            records[fp] = replace(rec, status=FIRING, hits=len(streak),
                                  active_since=iso(streak[0]), fired_at=iso(streak[need - 1]))
            promoted.append(fp)
    return promoted


def _schedule_promoted(state: AlertState, promoted: list[str], muted: dict[str, str],
                       latest: datetime, now: datetime, config: AlertingConfig, *, scope: str,
                       run_id: str | None, run_url: str | None) -> list[OutboxEntry]:
    """The promoted alerts' groups get a message, as the latest evaluation would have sent,
    unless one is in flight or the group waits for its group_interval (a later evaluation
    sends it). Adds the state of a group messaged for the first time."""
    records = state.alerts
    waiting = {e.group_key for e in state.outbox
               if e.target is None and e.in_flight(config.claim_timeout)}
    if config.grouping == "incidents":
        return _schedule_promoted_incidents(state, promoted, muted, waiting, latest, now,
                                            config, scope=scope, run_id=run_id,
                                            run_url=run_url)
    entries: list[OutboxEntry] = []
    for fp in promoted:
        g = group_for(records[fp], config)
        if fp in muted or g.key in waiting or any(e.group_key == g.key for e in entries):
            continue
        gs = state.groups.get(g.key) or GroupState(g.labels, g.route_index)
        firing = [r for k, r in sorted(records.items()) if r.status == FIRING
                  and k not in muted and group_for(r, config).key == g.key]
        new = [r.fingerprint for r in firing if r.fingerprint not in gs.notified]
        last = gs.last_notified_at
        if new and (not gs.notified or last is None or
                    latest - parse_iso(last) >= config.group_interval_for(g.route)):
            entries.append(_message(_hash(scope, g.key, iso(latest), "gap", iso(now)), g,
                                    latest, run_id, run_url, "new", firing, [], new))
            state.groups[g.key] = gs
    return entries


def _schedule_promoted_incidents(state: AlertState, promoted: list[str],
                                 muted: dict[str, str], waiting: set[str], latest: datetime,
                                 now: datetime, config: AlertingConfig, *, scope: str,
                                 run_id: str | None, run_url: str | None
                                 ) -> list[OutboxEntry]:
    """The promoted alerts join (or open) incidents as of the latest evaluation; an
    incident they open or change gets its message as the latest evaluation would have sent
    it (``new`` or ``update``, the incident's intervals respected)."""
    if not promoted:
        return []
    records, groups, known = _grouped(state, state.alerts, muted, latest, config, scope)
    state.alerts = records
    state.groups.update(known)
    entries: list[OutboxEntry] = []
    for key, g in groups.items():
        if key in waiting or not any(r.fingerprint in promoted for r in g.firing):
            continue
        gs = known[key]
        reason = _incident_reason(g, gs, False, latest, config)
        if reason in ("new", "update"):
            new = [r.fingerprint for r in g.firing if r.fingerprint not in gs.notified]
            entries.append(_with_incident(_message(
                _hash(scope, key, iso(latest), "gap", iso(now)), g, latest, run_id, run_url,
                reason, g.firing, [], new), gs))
    return entries


def _gap_log_rows(firing_then: dict[str, AlertRecord], muted_then: dict[str, str],
                  records: dict[str, AlertRecord], entries: list[OutboxEntry],
                  history: _History, now: datetime, *, scope: str,
                  run_id: str | None) -> list[LogRow]:
    """The backfilled evaluation's rows: each alert firing then, ``still_open`` when it
    fires at the latest evaluation, else ``past`` with the time it ended if known."""
    entry_of = {a["fingerprint"]: e for e in entries for a in e.firing}
    rows = []
    for rec in sorted(firing_then.values(), key=lambda r: (r.rule, r.fingerprint)):
        fp = rec.fingerprint
        e = entry_of.get(fp)
        open_now = fp in records and records[fp].status == FIRING
        ended = None if open_now else history.ended_at(fp, now)
        delivery = "muted" if fp in muted_then else "pending" if e else \
            "still_open" if open_now else "past"
        rows.append(_row(rec.view(muted_then.get(fp)),
                         "fired" if rec.fired_at == iso(now) else "firing", now, scope, run_id,
                         e, delivery, resolved_at=iso(ended) if ended else None))
    return rows


__all__ = ["Group", "Plan", "Schedule", "advance", "group", "group_for", "log_rows", "mute",
           "plan_evaluation", "plan_gap_fill", "schedule"]
