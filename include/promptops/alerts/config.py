"""Alerting configuration: grouping, repeat interval, routes, inhibition rules, silences file.

The shape follows Prometheus Alertmanager's ``alertmanager.yml`` where it can (``group_by``,
``repeat_interval``, ``send_resolved``, ``inhibit_rules`` with ``source_matchers``,
``target_matchers`` and ``equal``), so an operator who knows Alertmanager can read it. What
differs: evaluations are batch runs, so there is no ``group_wait``; by default
(``grouping: incidents``) alerts that share a root cause form one incident with one thread
of messages (:mod:`promptops.alerts.incidents`, ``incidents:`` settings) instead of groups
of ``group_by`` labels (``grouping: labels``); and a route names Airflow Slack connections,
the first one that exists being used.

Matchers are Alertmanager's strings: ``name="value"``, ``name!="value"``, ``name=~"regex"``,
``name!~"regex"`` (regexes match the whole value; a missing label is the empty string). The
mapping form of Alertmanager's API (``{name, value, isRegex, isEqual}``) is accepted too.
Labels that matchers see are a finding's identity: ``rule``, ``severity`` and its labels.

Inhibition differs from Alertmanager in one way: a source mutes a target only when it is at
least as severe (``info`` < ``warning`` < ``critical``), unless the rule sets
``allow_less_severe_source: true``. A milder alert must not hide a worse one, so a rule whose
``severity`` matchers could only ever pair a milder source with a worse target is refused at
load time, as is a ``severity`` matcher naming no known severity.
"""

from __future__ import annotations

import re
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from promptops.contracts.findings import SEVERITY_ORDER
from promptops.errors import ConfigError, PromptOpsError
from promptops.settings import PROJECT_ROOT

DEFAULT_CONFIG_PATH = PROJECT_ROOT / "include" / "config" / "alerting.yaml"


class AlertingConfigError(PromptOpsError):
    """The alerting configuration (or a silence) is invalid; the message names where."""


# -- durations ------------------------------------------------------------------------------

_DURATION_RE = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(value: Any) -> Any:
    """``"4h"``, ``"1h30m"``, ``"2d"``, ``"90s"`` or a number of seconds -> timedelta.

    Anything else is handed on to pydantic (ISO 8601 ``PT4H`` still works)."""
    if isinstance(value, bool):
        raise ConfigError("a duration, e.g. '4h' or '30m', not a boolean")
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    if isinstance(value, str):
        text = value.strip()
        m = _DURATION_RE.match(text)
        if text and m and any(m.groups()):
            d, h, mins, s = (int(g or 0) for g in m.groups())
            return timedelta(days=d, hours=h, minutes=mins, seconds=s)
        if not text.upper().startswith("P"):  # ISO 8601 (PT4H) goes on to pydantic
            raise ConfigError(f"{value!r} is not a duration; write e.g. 30m, 4h, 1d or 1h30m")
    return value


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


# -- matchers -------------------------------------------------------------------------------

MatchOp = Literal["=", "!=", "=~", "!~"]
_MATCHER_RE = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$')


class Matcher(BaseModel):
    """One label matcher, as in Alertmanager: equality or a fully anchored regex."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    op: MatchOp = "="
    value: str = ""

    @model_validator(mode="before")
    @classmethod
    def _from_text_or_api_form(cls, data: Any) -> Any:
        if isinstance(data, str):
            return _parse_matcher_text(data)
        if isinstance(data, dict) and ("isRegex" in data or "isEqual" in data):
            data = dict(data)
            regex, equal = bool(data.pop("isRegex", False)), bool(data.pop("isEqual", True))
            data["op"] = {(False, True): "=", (False, False): "!=",
                          (True, True): "=~", (True, False): "!~"}[(regex, equal)]
        return data

    @model_validator(mode="after")
    def _regex_compiles(self) -> Matcher:
        if self.op in ("=~", "!~"):
            try:
                re.compile(self.value)
            except re.error as exc:
                raise ValueError(f"matcher {self}: invalid regex: {exc}") from None
        return self

    @cached_property
    def _pattern(self) -> re.Pattern[str]:
        return re.compile(self.value)

    def matches(self, labels: dict[str, str]) -> bool:
        actual = labels.get(self.name, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        hit = self._pattern.fullmatch(actual) is not None
        return hit if self.op == "=~" else not hit

    def __str__(self) -> str:
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"')
        return f'{self.name}{self.op}"{escaped}"'


def _parse_matcher_text(text: str) -> dict[str, str]:
    m = _MATCHER_RE.match(text)
    if not m:
        raise ConfigError(f"{text!r} is not a matcher; write name=\"value\", name!=\"value\", "
                         f"name=~\"regex\" or name!~\"regex\"")
    name, op, value = m.groups()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1]
        if text.strip().endswith('"'):
            value = value.replace('\\"', '"').replace("\\\\", "\\")
    return {"name": name, "op": op, "value": value}


def matches_all(matchers: list[Matcher], labels: dict[str, str]) -> bool:
    return all(m.matches(labels) for m in matchers)


_KNOWN_SEVERITIES = ", ".join(SEVERITY_ORDER)


def severities_matched(matchers: list[Matcher], what: str) -> list[str]:
    """The severities an alert matching every matcher can have, mildest first.

    Raises ValueError (for pydantic) when a ``severity`` matcher names an unknown severity or
    the matchers together match none: such a rule or route could never apply."""
    for m in matchers:
        if m.name == "severity" and m.op in ("=", "!=") and m.value not in SEVERITY_ORDER:
            raise ConfigError(f"{what}: {m} names an unknown severity {m.value!r}; severities "
                             f"are {_KNOWN_SEVERITIES}")
    on_severity = [m for m in matchers if m.name == "severity"]
    levels = [s for s in SEVERITY_ORDER if matches_all(on_severity, {"severity": s})]
    if not levels:
        shown = ", ".join(str(m) for m in matchers if m.name == "severity")
        raise ConfigError(f"{what}: {shown} matches no severity; severities are "
                         f"{_KNOWN_SEVERITIES}")
    return levels


# -- the configuration ----------------------------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


#: Incident messages a target gets: its opening, its updates, its reminders, its all-clear.
MessageReason = Literal["new", "update", "repeat", "resolved"]

#: What each kind of target gets by default. A pager opens on ``new``, follows severity
#: changes (same dedup key: the same PagerDuty incident) and resolves; a reminder would
#: only repeat a trigger PagerDuty already holds. Alertmanager is also sent every
#: evaluation that its incident is open (``refresh``), which holds the alert open there.
DEFAULT_TARGET_MESSAGES: dict[str, list[str]] = {
    "alertmanager": ["new", "update", "repeat", "resolved"],
    "pagerduty": ["new", "update", "resolved"],
    "webhook": ["new", "update", "repeat", "resolved"],
    "email": ["new", "update", "resolved"],
}


class TargetConfig(_Strict):
    """A place alerts go beside Slack (see :mod:`promptops.alerts.targets`)."""

    type: Literal["alertmanager", "pagerduty", "webhook", "email"]
    #: The Airflow connection it sends with (URL, routing key, HMAC secret, SMTP server).
    connection: str = Field(min_length=1)
    #: The messages it gets; default per type (:data:`DEFAULT_TARGET_MESSAGES`).
    messages: list[MessageReason] | None = None
    #: Alertmanager: ``endsAt`` is this far past the evaluation, so the alert stays open
    #: until the next evaluation re-sends it and lapses on its own if promptops stops.
    hold: Duration = timedelta(hours=2)
    #: Email: recipients (else the connection's extra ``to``); subject prefix.
    to: list[str] = Field(default_factory=list)
    subject_prefix: str = "[promptops]"
    #: HTTP targets: retries of connection errors, 429 and 5xx, with exponential backoff.
    max_retries: int = Field(default=3, ge=0, le=10)
    timeout: Duration = timedelta(seconds=10)

    @property
    def wanted(self) -> list[str]:
        return list(self.messages) if self.messages is not None \
            else DEFAULT_TARGET_MESSAGES[self.type]

    @model_validator(mode="after")
    def _hold_positive(self) -> TargetConfig:
        if self.hold <= timedelta(0):
            raise ConfigError("hold must be positive, e.g. 2h (longer than the time between "
                              "two evaluations)")
        return self


class Route(_Strict):
    """Alerts matching every matcher go to the first of ``connections`` that exists, and to
    every one of ``targets``."""

    matchers: list[Matcher] = Field(default_factory=list)
    #: Slack connections, the first that exists being used; may be empty when the route has
    #: targets.
    connections: list[str] = Field(default_factory=list)
    #: Names of entries of the config's ``targets:`` (Alertmanager, PagerDuty, ...).
    targets: list[str] = Field(default_factory=list)
    #: Per-route overrides of the top-level settings.
    group_by: list[str] | None = None
    group_interval: Duration | None = None
    repeat_interval: Duration | None = None
    send_resolved: bool | None = None

    def matches(self, labels: dict[str, str]) -> bool:
        return matches_all(self.matchers, labels)

    @model_validator(mode="after")
    def _known_severities(self) -> Route:
        severities_matched(self.matchers, "matchers")
        if not self.connections and not self.targets:
            raise ConfigError("a route needs Slack connections, targets, or both")
        return self


class InhibitRule(_Strict):
    """A firing source alert mutes target alerts whose ``equal`` labels have the same values,
    when the source is at least as severe as the target.

    As in Alertmanager, an alert never inhibits itself, and alerts that match both sides do
    not inhibit each other."""

    name: str = ""
    source_matchers: list[Matcher] = Field(min_length=1)
    target_matchers: list[Matcher] = Field(min_length=1)
    equal: list[str] = Field(default_factory=list)
    #: Let a milder source mute a worse target (e.g. a maintenance notice muting everything).
    allow_less_severe_source: bool = False

    def may_mute(self, source_severity: str, target_severity: str) -> bool:
        """Severity alone: may a source of this severity mute a target of that one?"""
        return self.allow_less_severe_source or \
            SEVERITY_ORDER.get(source_severity, -1) >= SEVERITY_ORDER.get(target_severity, -1)

    @model_validator(mode="after")
    def _can_mute(self) -> InhibitRule:
        rule = f"inhibit rule {self.name!r}" if self.name else "this inhibit rule"
        sources = severities_matched(self.source_matchers, f"{rule} source_matchers")
        targets = severities_matched(self.target_matchers, f"{rule} target_matchers")
        if not any(self.may_mute(s, t) for s in sources for t in targets):
            raise ValueError(
                f"{rule} can never mute anything: its sources ({', '.join(sources)}) are "
                f"always less severe than its targets ({', '.join(targets)}), and a milder "
                f"alert must not hide a worse one; fix the severity matchers, or set "
                f"allow_less_severe_source: true if that is really meant")
        return self


class IncidentsConfig(_Strict):
    """How findings become incidents (``grouping: incidents``; see
    :mod:`promptops.alerts.incidents`)."""

    #: Rules whose alerts are never correlated: each alert is an incident of its own (an
    #: unpriced model is not caused by that model's error burst).
    standalone_rules: list[str] = Field(default_factory=list)
    #: The floor between two messages of one incident on one route (updates, repeats and
    #: the all-clear alike; the opening message and the first one on a newly reached route,
    #: such as a page after an escalation, go out at once).
    min_message_interval: Duration = timedelta(hours=1)
    #: Scopes (evaluating DAGs) that share incidents: a new incident of one whose cause
    #: relates to an open incident of another continues that incident (same id, same
    #: thread, one floor per route), and its all-clear waits until no scope still has it
    #: firing. Empty: every scope keeps its own incidents.
    link_scopes: list[str] = Field(default_factory=lambda: ["health", "hourly"])
    #: Alerts without a cause of their own (bare slices) that no incident explains join the
    #: one incident of their scope opened this long ago or less: symptoms that follow an
    #: incident within minutes (the GPUs a caller's flood loads) are that incident, not
    #: another one. 0 turns it off.
    concurrent_window: Duration = timedelta(minutes=15)


class AlertingConfig(_Strict):
    #: ``incidents`` (default): findings that share a root cause form one incident with one
    #: thread of messages; ``labels``: Alertmanager's grouping by ``group_by`` labels.
    grouping: Literal["incidents", "labels"] = "incidents"
    incidents: IncidentsConfig = Field(default_factory=IncidentsConfig)
    #: Labels whose values form a group (``grouping: labels`` only): one message per group
    #: per evaluation.
    group_by: list[str] = Field(default_factory=lambda: ["rule"])
    #: A group that is still firing and has nothing new is re-sent after this long
    #: (evaluation time, not wall-clock).
    repeat_interval: Duration = timedelta(hours=4)
    #: Alertmanager's ``group_interval``: after a group's first message, changes to it (an
    #: alert joining, some of its alerts resolving) wait this long since its last message.
    #: A group's first message and its all-clear (nothing left firing) go out at once.
    group_interval: Duration = timedelta(0)
    send_resolved: bool = True
    #: First matching route wins; alerts no route matches go to ``default_connections``.
    routes: list[Route] = Field(default_factory=list)
    default_connections: list[str] = Field(default_factory=lambda: ["slack_alerts"], min_length=1)
    #: Targets of alerts no route matches.
    default_targets: list[str] = Field(default_factory=list)
    #: Alert targets beside Slack, by name (routes and ``default_targets`` name them).
    targets: dict[str, TargetConfig] = Field(default_factory=dict)
    #: A target's failed message is retried at later evaluations for this long, unless a
    #: newer message of the same incident to that target replaces it.
    target_retry_for: Duration = timedelta(days=1)
    inhibit_rules: list[InhibitRule] = Field(default_factory=list)
    #: YAML list of silences; relative paths are resolved against the config file's folder.
    silences_file: Path | None = None
    #: Airflow Variable with more silences (a JSON list); empty string to not read one.
    silences_variable: str = "promptops_silences"
    #: How long a run may take to deliver a claimed notification before another run may
    #: retake it (wall-clock: a lease between processes). Also how long a newer evaluation
    #: waits for an older run's in-flight message of the same group.
    claim_timeout: Duration = timedelta(minutes=10)
    #: Alerts shown one by one in a message; the rest are summarised (Slack allows 50 blocks).
    max_alerts_per_message: int = Field(default=20, ge=1, le=23)
    #: State document versions kept in the store (older ones are deleted).
    keep_state_versions: int = Field(default=20, ge=2)
    #: How far behind the latest evaluation a backfill still completes the history (its
    #: incidents still open are posted, those over are logged); older replays change nothing.
    replay_window: Duration = timedelta(days=7)

    @field_validator("repeat_interval", "group_interval", "claim_timeout", "replay_window")
    @classmethod
    def _positive(cls, v: timedelta) -> timedelta:
        if v < timedelta(0):
            raise ValueError("must not be negative")
        return v

    @model_validator(mode="after")
    def _targets_known(self) -> AlertingConfig:
        named = [(f"routes.{i}.targets", t) for i, r in enumerate(self.routes)
                 for t in r.targets] + [("default_targets", t) for t in self.default_targets]
        for where, name in named:
            if name not in self.targets:
                known = ", ".join(sorted(self.targets)) or "none are defined"
                raise ConfigError(f"{where}: no target {name!r} under targets: ({known})")
        return self

    def route_for(self, labels: dict[str, str]) -> tuple[int, Route]:
        """The index (-1 = default) and route for an alert's identity labels."""
        for i, route in enumerate(self.routes):
            if route.matches(labels):
                return i, route
        return -1, self.default_route()

    def route_at(self, index: int) -> Route:
        """The route a group was planned on; a route removed from the config since (or -1)
        sends to the defaults."""
        return self.routes[index] if 0 <= index < len(self.routes) else self.default_route()

    def default_route(self) -> Route:
        """Where alerts no route matches go (and groups of a route removed since)."""
        return Route(connections=self.default_connections, targets=self.default_targets)

    def group_by_for(self, route: Route) -> list[str]:
        return route.group_by if route.group_by is not None else self.group_by

    def repeat_interval_for(self, route: Route) -> timedelta:
        return route.repeat_interval if route.repeat_interval is not None else self.repeat_interval

    def group_interval_for(self, route: Route) -> timedelta:
        return route.group_interval if route.group_interval is not None else self.group_interval

    def send_resolved_for(self, route: Route) -> bool:
        return route.send_resolved if route.send_resolved is not None else self.send_resolved


def parse_alerting_config(data: Any, source: str = "<alerting config>",
                          base_dir: Path | None = None) -> AlertingConfig:
    """Validate a mapping; errors name ``source`` and the key path of every problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise AlertingConfigError(f"{source}: the alerting config must be a YAML mapping, "
                                  f"got {type(data).__name__}")
    try:
        config = AlertingConfig.model_validate(data)
    except ValidationError as exc:
        raise AlertingConfigError(f"{source}: " + describe_validation_error(exc)) from None
    if config.silences_file is not None and not config.silences_file.is_absolute() and base_dir:
        config = config.model_copy(update={"silences_file": base_dir / config.silences_file})
    return config


def load_alerting_config(path: str | Path | None = None) -> AlertingConfig:
    """Read ``path``, else ``PROMPTOPS_ALERTING_FILE``, else ``include/config/alerting.yaml``."""
    if path is None:
        from promptops.settings import get_settings

        path = get_settings().alerting_file or DEFAULT_CONFIG_PATH
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise AlertingConfigError(f"{path}: cannot read the alerting config: "
                                  f"{exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise AlertingConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_alerting_config(data, str(path), base_dir=path.parent)


def describe_validation_error(exc: ValidationError) -> str:
    """``key.path: problem`` for every error, joined; what pydantic says, minus its URLs."""
    problems = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {msg}")
    return "; ".join(problems)
