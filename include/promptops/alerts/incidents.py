"""Findings become incidents: alerts that share a root cause are one incident, one thread.

An alert's *correlation key* is a set of ``(dimension, value)`` pairs: its primary root
cause (``annotations["root_cause_set"]``, primary first, ``;``-separated, each an absolute
``dim=value&dim=value`` label) joined with its own slice, or its slice alone when it has no
cause (or one that contradicts its slice). The overall slice has the empty key.

Two keys are *related* when the smaller is a non-empty subset of the other: ``model=gpt-4o``
and ``app=chat&model=gpt-4o`` are one incident; ``model=gpt-4o`` and ``app=chat`` are two.

Each evaluation, firing alerts (muted ones too, so the log names their incident) are placed:

1. an alert already a member of an open incident stays there;
2. new alerts with a key, together with the open incidents (through their primary cause,
   fixed when they open), are joined through related keys (transitively); a connected part holding open incidents joins the oldest of them, one
   without opens a new incident, unless its alerts are bare slices (no cause beyond their
   slice) of a metric that moved platform-wide: an overall alert of that metric without a
   cause, with bare slices spanning two values of one dimension (every model failing in an
   API outage), or an open overall incident having it. Those join the overall incident;
3. new alerts with the empty key (overall, no cause) join the only incident of this
   evaluation with a firing member of the same metric, if there is exactly one (the overall
   success rate follows the one model whose success rate fell); else they join an open
   overall incident that has their metric or opened within ``min_message_interval`` (the
   other symptoms of one outage), or open one together;
4. alerts of ``incidents.standalone_rules`` are each an incident of their own;
5. new alerts without any localised cause (a slice that moved too little to localise, such
   as a team whose error rate rose a little with one model's burst) that relate to no
   open incident join the one incident of this evaluation that explains them: a located
   cause on other dimensions than theirs and a member of the same metric; with no such
   incident at all, the one incident of the scope opened within
   ``incidents.concurrent_window`` (the GPU load a
   caller's flood causes minutes after it opened). With none, or more than one, bare
   slices of one metric and dimension are one incident together (several GPU nodes at
   once). Such symptoms never bring their slice to the incident's keys.

A key also *lies within* another alert's context: ``annotations["root_cause_context"]``
holds the dimension values every call of the alert's cause shares, so a template used by
one app only joins that app's incident.

Incidents are shared between the scopes of ``incidents.link_scopes`` (the 5-minute health
sensor and the hourly run): a new incident whose cause relates to an open incident of
another scope (both overall, or related keys) continues it. It takes that incident's id,
thread and last message per route (one floor per route across scopes), its first message
is an ``update``, and its all-clear waits while the other scope still has it firing
(:class:`Peer`, read from that scope's last committed state).

An incident is open while its :class:`~promptops.alerts.state.GroupState` lives: from its
first firing member until Slack has heard it resolved (or, never posted, until no member
fires). A member that fires again meanwhile simply continues it. Only a joining alert brings its
key: a member whose cause annotation changes later does not widen its incident, and an
overall incident never becomes joinable by its symptoms' slices.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta

from promptops.alerts.config import AlertingConfig
from promptops.alerts.state import FIRING, AlertRecord, AlertState, GroupState, iso, parse_iso
from promptops.contracts.findings import SEVERITY_ORDER
from promptops.contracts.metric_table import ALL, OVERALL

INCIDENT_PREFIX = "incident:"
#: A closed incident stays in its scope's state this long, so that a scope sharing it
#: knows its all-clear was sent.
CLOSED_KEPT = timedelta(days=1)

Key = frozenset[tuple[str, str]]


def is_incident(group_key: str) -> bool:
    return group_key.startswith(INCIDENT_PREFIX)


def incident_id(group_key: str) -> str:
    return group_key.removeprefix(INCIDENT_PREFIX)


def parse_key(text: str) -> Key:
    """``dim=value&dim=value`` -> pairs (``*`` and "" are the empty key)."""
    pairs = []
    for part in text.split("&"):
        dim, sep, value = part.strip().partition("=")
        if sep and dim:
            pairs.append((dim.strip(), value.strip()))
    return frozenset(pairs)


def key_text(key: Iterable[tuple[str, str]]) -> str:
    return "&".join(f"{d}={v}" for d, v in sorted(key))


def slice_key(labels: dict[str, str]) -> Key:
    """The alert's own slice as pairs; a multi-dimension slice is ``a,b`` / ``x,y``."""
    dim, value = labels.get("dimension", ""), labels.get("slice", "")
    if not dim or dim == OVERALL or value == ALL:
        return frozenset()
    dims, values = dim.split(","), value.split(",")
    if len(dims) > 1 and len(dims) == len(values):
        return frozenset(zip(dims, values, strict=True))
    return frozenset({(dim, value)})


def correlation_key(rec: AlertRecord) -> Key:
    """The alert's primary cause joined with its slice; its slice when the cause is absent
    or names another value of one of the slice's own dimensions; the cause alone when its
    calls all lie in the slice anyway (``root_cause_context``: a finding on the model a
    saturated GPU node serves has the node as its cause, not the node and the model)."""
    own = slice_key(rec.labels)
    primary = (rec.annotations.get("root_cause_set") or "").split(";")[0]
    cause = parse_key(primary)
    own_dims = dict(own)
    if any(d in own_dims and own_dims[d] != v for d, v in cause):
        return own
    if cause and own <= cause | parse_key(rec.annotations.get("root_cause_context") or ""):
        return cause
    return own | cause


def related(a: Key, b: Key) -> bool:
    small, big = (a, b) if len(a) <= len(b) else (b, a)
    return bool(small) and small <= big


def context_key(rec: AlertRecord, key: Key) -> Key:
    """``key`` plus the dimension values every call of the alert's located cause shares
    (``annotations["root_cause_context"]``): a template used only by one app lies within
    that app's incident."""
    if not rec.annotations.get("root_cause_set"):
        return key
    return key | parse_key(rec.annotations.get("root_cause_context") or "")


def _touches(a: Key, a_ctx: Key, b: Key, b_ctx: Key) -> bool:
    """Related keys, or one key lying within the other's context."""
    return related(a, b) or (bool(a) and a <= b_ctx) or (bool(b) and b <= a_ctx)


@dataclass(frozen=True)
class Peer:
    """An open incident of another scope (``incidents.link_scopes``), as its last committed
    state holds it: a new incident here that it relates to continues it."""

    scope: str
    #: Its group key (``incident:<id>``): a linked incident here uses the same one.
    key: str
    cause: str
    overall: bool
    opened_at: str | None
    route_sent: dict[str, str]
    threads: dict[str, str]
    #: It has members firing there: an all-clear here waits for that scope's.
    firing: bool
    #: Slack has heard of it (from that scope, or from the one it continues): a new
    #: incident here may continue it.
    heard: bool = True
    #: Nothing fires there any more, and its all-clear waits for this scope's.
    all_clear_waits: bool = False
    #: That scope sent its all-clear (kept a day after, see ``CLOSED_KEPT``).
    closed: bool = False


def is_closed(gs: GroupState) -> bool:
    """Slack heard the incident resolve (what fires next opens a new one)."""
    return gs.last_notified_at is not None and not gs.notified


def peers_of(scope: str, state: AlertState) -> list[Peer]:
    """The incidents of ``scope``'s state that are open, or closed within ``CLOSED_KEPT``."""
    out = []
    for key, gs in sorted(state.groups.items()):
        if not is_incident(key) or gs.labels.get("standalone"):
            continue
        if is_closed(gs):
            out.append(Peer(scope, key, gs.cause, _is_overall(gs), gs.opened_at, {}, {},
                            firing=False, heard=False, closed=True))
            continue
        firing = any((rec := state.alerts.get(fp)) is not None and rec.status == FIRING
                     for fp in gs.members)
        heard = bool(gs.notified) or bool(gs.labels.get("linked"))
        if firing or heard:
            out.append(Peer(scope, key, gs.cause, _is_overall(gs), gs.opened_at,
                            dict(gs.route_sent), dict(gs.threads), firing, heard,
                            gs.all_clear_waits and not firing))
    return out


def _link(peers: Sequence[Peer], key: Key | None, groups: dict[str, GroupState]) -> Peer | None:
    """The oldest open peer incident a new incident continues: one whose cause relates to
    ``key``, or an overall one for an overall incident (``key`` None)."""
    found = [p for p in peers if p.heard and not p.closed and p.key not in groups and (
        p.overall if key is None else (not p.overall and related(key, parse_key(p.cause))))]
    return min(found, key=lambda p: (p.opened_at or "", p.key), default=None)


def _new_id(scope: str, now: str, fps: list[str]) -> str:
    raw = json.dumps([scope, now, sorted(fps)], separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()[:12]


class _Union:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def join(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def assign(records: dict[str, AlertRecord], groups: dict[str, GroupState],
           config: AlertingConfig, now: str, scope: str,
           peers: Sequence[Peer] = ()) -> dict[str, str]:
    """Place every firing alert in an incident (see the module doc). Updates ``groups`` in
    place (new incidents, members, keys, cause) and returns fingerprint -> group key. A new
    incident that relates to an open incident of another scope (``peers``) continues it."""
    incidents = {k: gs for k, gs in groups.items() if is_incident(k)}
    member_of = {fp: k for k, gs in incidents.items() for fp in gs.members}
    standalone = set(config.incidents.standalone_rules)
    firing = sorted(fp for fp, r in records.items() if r.status == FIRING)
    out = {fp: member_of[fp] for fp in firing if fp in member_of}
    fresh = [fp for fp in firing if fp not in out]
    keys = {fp: correlation_key(records[fp]) for fp in firing}

    for fp in (fp for fp in fresh if records[fp].rule in standalone):
        out[fp] = _open(groups, scope, now, [fp], standalone=records[fp].rule)
    keyed = [fp for fp in fresh if fp not in out and keys[fp]]
    overall = [fp for fp in fresh if fp not in out and not keys[fp]]
    platform = _platform_metrics(overall, keyed, records, keys, out, incidents)
    opener = _Opener(groups, scope, now, peers)
    deferred = _place_keyed(keyed, records, keys, out, groups, incidents, platform, opener,
                            config.incidents.concurrent_window)
    _place_overall(overall, deferred, records, out, groups, incidents, opener,
                   config.incidents.min_message_interval)

    for fp in fresh:  # only a joining alert brings its key: a member's cause annotation
        gs = groups[out[fp]]  # may wander later, and must not make its incident a magnet
        gs.members.append(fp)
        text = "" if fp in opener.symptoms else key_text(keys[fp])
        if text and text not in gs.keys and not gs.labels.get("standalone") \
                and not gs.labels.get("overall"):
            gs.keys.append(text)
        if not gs.cause or gs.opened_at == now:  # fixed once the incident is out
            gs.cause = primary_cause(gs.keys)
    return out


def _place_keyed(keyed: list[str], records: dict[str, AlertRecord], keys: dict[str, Key],
                 out: dict[str, str], groups: dict[str, GroupState],
                 incidents: dict[str, GroupState], platform: set[str], opener: _Opener,
                 concurrent: timedelta) -> list[str]:
    """Join new keyed alerts through related keys with each other and the open incidents
    (transitively): a connected part with open incidents joins the oldest, one without
    opens an incident, unless all its alerts are bare slices of platform-wide metrics:
    those are returned, for the overall incident."""
    # An open incident is joined through its primary cause, not through every member's
    # key: a coarse slice that joined it (an app the cause lies in) must not pull in every
    # later problem of that app.
    joinable = {k: parse_key(gs.cause) for k, gs in incidents.items()
                if gs.cause and not gs.labels.get("standalone")}
    ctx = {fp: context_key(records[fp], keys[fp]) for fp in keyed}
    uf = _Union()
    for i, a in enumerate(keyed):
        uf.find(a)
        for b in keyed[i + 1:]:
            if _touches(keys[a], ctx[a], keys[b], ctx[b]):
                uf.join(a, b)
        for k, cause in joinable.items():
            if _touches(keys[a], ctx[a], cause, cause):
                uf.join(a, k)
    parts: dict[str, list[str]] = {}
    for node in [*keyed, *(k for k in joinable if k in uf.parent)]:
        parts.setdefault(uf.find(node), []).append(node)
    deferred: list[str] = []
    bare_parts: list[list[str]] = []
    for nodes in parts.values():
        alerts = [n for n in nodes if n in records]
        # The part's own primary cause must relate to the incident's: an hour whose
        # latency moved in one region touches the open burst of one model through the
        # model's slice, but is not that burst.
        own = parse_key(primary_cause([key_text(keys[fp]) for fp in alerts]))
        own_ctx = own.union(*(ctx[fp] - keys[fp] for fp in alerts))
        olds = sorted((n for n in nodes if n in incidents and _touches(
                           own, own_ctx, joinable[n], joinable[n])),
                      key=lambda k: (incidents[k].opened_at or "", k))
        if not olds and all(_metric(records[fp]) in platform
                            and keys[fp] == slice_key(records[fp].labels) for fp in alerts):
            deferred += alerts
            continue
        # No localised cause at all (not even "the slice itself"): a slice that moved too
        # little to localise; placed once every caused incident is known.
        if not olds and not any(records[fp].annotations.get("root_cause_set")
                                for fp in alerts):
            bare_parts.append(alerts)
            continue
        target = olds[0] if olds else opener.open(alerts, own)
        for fp in alerts:
            out[fp] = target
    # Bare slices of one metric and dimension that nothing explains are one symptom (load
    # on several GPU nodes at once), not an incident per slice.
    together: dict[tuple[frozenset[str], frozenset[str]], str] = {}
    for alerts in bare_parts:
        explaining = _explaining_incidents(alerts, records, keys, out, groups)
        found = explaining[0] if len(explaining) == 1 else None if explaining \
            else _concurrent_incident(groups, opener.now, concurrent)
        if found is not None:
            opener.symptoms.update(alerts)  # explained: their slices are no cause
        else:
            shape = (frozenset(_metric(records[fp]) for fp in alerts),
                     frozenset(d for fp in alerts for d, _ in keys[fp]))
            if shape not in together:
                together[shape] = opener.open(alerts, frozenset().union(
                    *(keys[fp] for fp in alerts)))
            found = together[shape]
        for fp in alerts:
            out[fp] = found
    return deferred


def _concurrent_incident(groups: dict[str, GroupState], now: str,
                         window: timedelta) -> str | None:
    """The one open incident of the scope opened within ``window`` of ``now`` (this
    evaluation's included), which symptoms no incident could explain join; None when none
    or several."""
    if window <= timedelta(0):
        return None
    since = parse_iso(now) - window
    recent = [k for k, gs in groups.items() if is_incident(k)
              and not gs.labels.get("standalone") and gs.opened_at is not None
              and parse_iso(gs.opened_at) >= since]
    return recent[0] if len(recent) == 1 else None


def _explaining_incidents(alerts: list[str], records: dict[str, AlertRecord],
                          keys: dict[str, Key], out: dict[str, str],
                          groups: dict[str, GroupState]) -> list[str]:
    """The incidents that could explain bare slices (no cause of their own, such as a team
    whose error rate rose a little with one model's burst): those with a located cause on
    other dimensions than the slices' and a member of the same metric. One explains them;
    with several it is ambiguous and they are an incident."""
    dims = {d for fp in alerts for d, _ in keys[fp]}
    metrics = {_metric(records[fp]) for fp in alerts}
    found: dict[str, tuple[set[str], set[str]]] = {}
    for fp, k in out.items():
        gs = groups[k]
        if gs.labels.get("standalone") or gs.labels.get("overall"):
            continue
        cause_dims, member_metrics = found.setdefault(k, (set(), set()))
        # Only a localised cause explains other slices: a member's located primary cause
        # (its slice itself when the whole slice moved), never a bare member's slice.
        located = (records[fp].annotations.get("root_cause_set") or "").split(";")[0]
        own = dict(slice_key(records[fp].labels))
        # Within a slice, the slice's own dimension is no cause (team=support's cause
        # "model=M&team=support" is the model); a whole slice that moved is its own cause.
        inner = {d for d, _ in parse_key(located) if d not in own}
        cause_dims.update(inner or {d for d, _ in parse_key(located)})
        member_metrics.add(_metric(records[fp]))
    candidates = [k for k, (cause_dims, member_metrics) in found.items()
                  if cause_dims and not cause_dims & dims and metrics & member_metrics]
    return candidates


def _platform_metrics(overall: list[str], keyed: list[str], records: dict[str, AlertRecord],
                      keys: dict[str, Key], out: dict[str, str],
                      incidents: dict[str, GroupState]) -> set[str]:
    """Metrics that moved platform-wide: those of a member of an open overall incident, and
    those of a new overall alert without a cause whose bare slices (no cause of their own)
    span two values of one dimension (an API outage fails every model; one model's burst
    is that model's incident). Their bare slices are symptoms, not incidents of their own."""
    bare: dict[str, set[tuple[str, str]]] = {}
    for fp in keyed:
        if keys[fp] == slice_key(records[fp].labels):
            bare.setdefault(_metric(records[fp]), set()).update(keys[fp])
    broad = {m for m, pairs in bare.items()
             if len({d for d, _ in pairs}) < len(pairs)}  # some dimension has 2+ values
    metrics = {_metric(records[fp]) for fp in overall} & broad
    return metrics | {_metric(records[fp]) for fp, k in out.items()
                      if k in incidents and _is_overall(incidents[k])}


def _is_overall(gs: GroupState) -> bool:
    """An incident of the whole platform (its symptoms' slices never make it joinable)."""
    return bool(gs.labels.get("overall")) or (not gs.keys and not gs.labels.get("standalone"))


def _metric(rec: AlertRecord) -> str:
    return rec.labels.get("metric") or rec.rule


def _place_overall(overall: list[str], symptoms: list[str], records: dict[str, AlertRecord],
                   out: dict[str, str], groups: dict[str, GroupState],
                   incidents: dict[str, GroupState], opener: _Opener,
                   recent_window: timedelta) -> None:
    """Overall alerts without a cause: each joins the only incident of this evaluation with
    a firing member of the same metric (the overall success rate follows the one model
    whose success rate fell); the others join an open overall incident with that metric or
    opened within ``recent_window``, else open one together."""
    live: dict[str, set[str]] = {}
    for fp, k in out.items():
        if not groups[k].labels.get("standalone"):
            live.setdefault(k, set()).add(_metric(records[fp]))
    rest = list(symptoms)  # slices of a platform-wide move go where the overall alerts go
    moved = {_metric(records[fp]) for fp in symptoms}
    for fp in overall:
        same = [k for k, metrics in live.items() if _metric(records[fp]) in metrics]
        if len(same) == 1 and _metric(records[fp]) not in moved:
            out[fp] = same[0]
        else:
            rest.append(fp)
    if not rest:
        return
    # An open overall incident takes them when it already has this metric, or opened
    # recently (the other symptoms of one outage); a week-old budget alert does not.
    recent = parse_iso(opener.now) - recent_window
    overall_open = sorted((k for k in incidents if _is_overall(incidents[k])),
                          key=lambda k: (incidents[k].opened_at or "", k))
    fresh_rest = []
    for fp in rest:
        target = next((k for k in overall_open if _metric(records[fp]) in live.get(k, set())),
                      None) or next((k for k in overall_open if (opened := incidents[k].opened_at)
                                     and parse_iso(opened) >= recent), None)
        if target is None:
            fresh_rest.append(fp)
        else:
            out[fp] = target
    if fresh_rest:
        target = opener.open(fresh_rest, None)
        for fp in fresh_rest:
            out[fp] = target


class _Opener:
    """Opens this evaluation's new incidents: with a fresh id, or continuing the open
    incident of another scope that it relates to (same id and thread; the floor per route
    carries over)."""

    def __init__(self, groups: dict[str, GroupState], scope: str, now: str,
                 peers: Sequence[Peer]) -> None:
        self.groups, self.scope, self.now, self.peers = groups, scope, now, peers
        #: Bare alerts placed in an incident that explains them: their keys stay out of it.
        self.symptoms: set[str] = set()

    def open(self, fps: list[str], key: Key | None) -> str:
        """A new incident of alerts ``fps`` with primary cause ``key`` (None: overall)."""
        overall = key is None
        link = _link(self.peers, key, self.groups) if overall or key else None
        if link is None:
            return _open(self.groups, self.scope, self.now, fps, overall=overall)
        labels = {"incident": incident_id(link.key), "linked": link.scope,
                  **({"overall": "true"} if overall else {})}
        self.groups[link.key] = GroupState(labels, -1, opened_at=self.now,
                                           route_sent=dict(link.route_sent),
                                           threads=dict(link.threads))
        return link.key


def _open(groups: dict[str, GroupState], scope: str, now: str, fps: list[str],
          standalone: str | None = None, overall: bool = False) -> str:
    iid = _new_id(scope, now, fps)
    key = INCIDENT_PREFIX + iid
    labels = {"incident": iid, **({"standalone": standalone} if standalone else {}),
              **({"overall": "true"} if overall else {})}
    groups[key] = GroupState(labels, -1, opened_at=now)
    return key


def primary_cause(keys: list[str]) -> str:
    """The incident's primary cause: its most general non-empty key, the one most of its
    members' keys contain ("" for an overall incident)."""
    parsed = [parse_key(k) for k in keys if k]
    if not parsed:
        return ""
    best = min(parsed, key=lambda k: (len(k), -sum(k <= o for o in parsed), key_text(k)))
    return key_text(best)


def worst(records: Iterable[AlertRecord]) -> AlertRecord | None:
    """The member that sets an incident's severity and route (worst, then by rule)."""
    return min(records, key=lambda r: (-SEVERITY_ORDER.get(r.severity, -1), r.rule,
                                       r.fingerprint), default=None)


def tag(records: dict[str, AlertRecord], placed: dict[str, str]) -> dict[str, AlertRecord]:
    """The records with their incident ids (resolved ones keep theirs)."""
    return {fp: replace(r, incident_id=incident_id(placed[fp])) if fp in placed else r
            for fp, r in records.items()}


def scope_of(views: Iterable[dict]) -> set[tuple[str, str, str]]:
    """An incident's scope: (rule, dimension, slice) of its members."""
    return {(v["rule"], v.get("labels", {}).get("dimension", ""),
             v.get("labels", {}).get("slice", "")) for v in views}


def severity_of(views: Iterable[dict]) -> int:
    return max((SEVERITY_ORDER.get(v["severity"], -1) for v in views), default=-1)


__all__ = ["INCIDENT_PREFIX", "assign", "correlation_key", "incident_id", "is_incident",
           "iso", "key_text", "parse_key", "primary_cause", "related", "scope_of",
           "severity_of", "slice_key", "tag", "worst"]
