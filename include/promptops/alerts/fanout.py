"""Copies of an evaluation's messages for the alert targets of their routes (planning, pure).

The engine plans one message per incident (or label group) and evaluation; its route's
Slack connections get it. Each target the route names (``targets:`` in ``alerting.yaml``)
gets its own copy: an outbox entry with its own id, claim, attempts and retries, so that
one target failing never re-sends to another, and an Airflow retry of the run re-sends only
the copies not delivered yet. What the targets have seen is kept per incident
(``GroupState.target_sent``):

- A copy whose message the target already got is not planned again. The Slack message that
  failed is planned anew at the next evaluation (its incident is simply due again); its
  copy for a target that got the first one would be the same message, so it is dropped.
  "The same" is: the same reason, the same firing and resolved alerts, planned after the
  same last delivered message of the incident.
- A failed copy is retried at later evaluations for ``target_retry_for`` (evaluation time),
  unless a newer copy of the same incident for that target replaces it: a pager must not
  miss its resolve because the network was down in the hour the incident ended.
- Alertmanager expects a firing alert to be re-sent until it resolves, else it lapses at its
  ``endsAt``. Every evaluation in which an incident is open and unmuted, and no other copy
  goes to an Alertmanager target, it gets a ``refresh`` copy (the same alerts, a later
  ``endsAt``); Alertmanager deduplicates it by labels, so nobody is paged twice.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import datetime

from promptops.alerts.config import AlertingConfig
from promptops.alerts.state import GroupState, OutboxEntry, parse_iso

#: The reason of Alertmanager's per-evaluation copy of an open incident.
REFRESH = "refresh"


def signature(entry: OutboxEntry, last_notified_at: str | None) -> str:
    """What makes two copies the same message for a target (see the module doc)."""
    raw = json.dumps([entry.reason, sorted((a["fingerprint"], a["severity"])
                                           for a in entry.firing),
                      sorted(a["fingerprint"] for a in entry.resolved), last_notified_at],
                     separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def copy_for(entry: OutboxEntry, target: str, sig: str) -> OutboxEntry:
    return replace(entry, id=f"{entry.id}.{target}", target=target, signature=sig,
                   connections=[], status="pending", attempt=0, error=None,
                   connection_id=None)


def target_copies(entries: Iterable[OutboxEntry], groups: Mapping[str, GroupState],
                  config: AlertingConfig) -> list[OutboxEntry]:
    """The copies of the planned messages ``entries`` for their routes' targets that want
    their reason and have not had the same message yet."""
    out: list[OutboxEntry] = []
    for entry in entries:
        if entry.target is not None:
            continue
        gs = groups.get(entry.group_key)
        seen = gs.target_sent if gs is not None else {}
        sig = signature(entry, gs.last_notified_at if gs is not None else None)
        for name in config.route_at(entry.route_index).targets:
            target = config.targets.get(name)
            if target is None or entry.reason not in target.wanted or seen.get(name) == sig:
                continue
            out.append(copy_for(entry, name, sig))
    return out


def refresh_copies(open_groups: Iterable[tuple[OutboxEntry, GroupState | None]],
                   planned: Iterable[OutboxEntry], config: AlertingConfig) -> list[OutboxEntry]:
    """Alertmanager copies for open incidents that get no other copy to that target in
    this evaluation. ``open_groups``: a message (reason ``refresh``) listing each open,
    unmuted group's firing alerts, with its group state."""
    going = {(e.group_key, e.target) for e in planned}
    out: list[OutboxEntry] = []
    for entry, gs in open_groups:
        if not entry.firing:
            continue
        for name in config.route_at(entry.route_index).targets:
            target = config.targets.get(name)
            if target is None or target.type != "alertmanager" or \
                    (entry.group_key, name) in going:
                continue
            last = gs.last_notified_at if gs is not None else None
            out.append(copy_for(entry, name, signature(entry, last)))
    return out


def retained(outbox: Iterable[OutboxEntry], in_flight: Iterable[OutboxEntry],
             planned: Iterable[OutboxEntry], config: AlertingConfig,
             now: datetime) -> list[OutboxEntry]:
    """Older target copies still to deliver: failed (or abandoned by their run), younger
    than ``target_retry_for`` and not replaced by a newer copy of the same incident for the
    same target. Refresh copies are never retried: the next evaluation sends a fresh one."""
    flying = {e.id for e in in_flight}
    newer = {(e.group_key, e.target) for e in planned if e.target is not None}
    keep: list[OutboxEntry] = []
    for e in outbox:
        if e.target is None or e.id in flying or e.reason == REFRESH:
            continue
        if (e.group_key, e.target) in newer:
            continue
        if now - parse_iso(e.evaluated_at) > config.target_retry_for:
            continue
        keep.append(e)
    return keep


def record_sent(groups: dict[str, GroupState], entry: OutboxEntry) -> None:
    """A target received ``entry``: remember it for its incident (never re-creating the
    state of an incident that closed meanwhile)."""
    gs = groups.get(entry.group_key)
    if gs is not None and entry.target is not None and entry.reason != REFRESH:
        gs.target_sent[entry.target] = entry.signature


__all__ = ["REFRESH", "copy_for", "record_sent", "refresh_copies", "retained",
           "signature", "target_copies"]
