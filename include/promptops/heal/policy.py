"""The heal DAG's library half: validated requests, policy, playbooks, scripts and the audit.

A heal request (the heal DAG's conf, from the UI form or another DAG) is checked in three
layers before anything reaches ``POST /v1/ops/actions``:

1. :class:`HealRequest` validates its shape against ``include/config/heal_policy.yaml``:
   the action is one of :data:`ACTIONS`, the target is a configured service, a user id that
   matches the policy's pattern, a priced model or an allowlisted playbook, and numeric
   parameters lie within the policy's bounds. Targets with shell metacharacters or ``..``
   are refused before any of that, with a message saying what was found.
2. :func:`check_policy` decides, from the audit history, whether it may run now (cool-down
   per target, a cap per rolling hour) and whether a person must approve it.
3. :func:`idempotency_key` derives the ``Idempotency-Key`` from the run and step, so a retried
   task or a re-triggered run cannot act twice.

Playbooks (``include/config/playbooks.yaml``) expand an alert's labels into an ordered list of
requests (:func:`expand_playbook`). Custom scripts run only from ``include/playbooks/``
(:func:`run_script`), as an argv list, never through a shell, with a timeout.

Every heal step leaves one audit record in the lake (:mod:`promptops.heal.audit`), the
history the policy reads. This module imports no pyarrow, so DAG files can use it.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import string
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from promptops.errors import ConfigError, PromptOpsError
from promptops.settings import PROJECT_ROOT
from promptops.timeutil import as_utc

if TYPE_CHECKING:  # the audit and price table pull in pyarrow; DAG files import this module
    from promptops.heal.audit import AuditRecord
    from promptops.metrics.pricing import ModelPrice, PriceTable

POLICY_PATH = PROJECT_ROOT / "include" / "config" / "heal_policy.yaml"
PLAYBOOKS_PATH = PROJECT_ROOT / "include" / "config" / "playbooks.yaml"
#: The script allowlist: only files in this folder can run.
SCRIPT_DIR = PROJECT_ROOT / "include" / "playbooks"


class HealConfError(PromptOpsError, ValueError):
    """A heal request, policy or playbook that cannot be used; the message says what is wrong
    and what is allowed."""


class Action(StrEnum):
    restart_service = "restart_service"
    scale_out = "scale_out"
    rate_limit = "rate_limit"
    switch_model = "switch_model"
    run_playbook = "run_playbook"


ACTIONS = tuple(a.value for a in Action)
#: The actions the platform carries out; run_playbook expands or runs a script instead.
PLATFORM_ACTIONS = ACTIONS[:4]

#: Parameters per action and their kind ("int" bounded by the policy, "model", "args").
_PARAMS: dict[str, dict[str, str]] = {
    "restart_service": {},
    "scale_out": {"replicas": "int"},
    "rate_limit": {"requests_per_minute": "int", "ttl_minutes": "int"},
    "switch_model": {"to": "model"},
    "run_playbook": {"args": "args", "labels": "labels"},
}

# Characters a shell would interpret, and whitespace: never part of a service, user or model.
_SHELL_META = set(";|&$`<>(){}[]*?!~#'\"\\\n\r\t ")
# The platform's id alphabet: user ids may be emails (`@`), models carry `:` tags. The first
# character is a letter or digit, so a target can never pass for an option (`-rf`).
_SAFE_TARGET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
_PLAIN = "letters, digits, '.', '_', ':', '@', '-'"


# -- policy --------------------------------------------------------------------------------

class Bounds(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    min: int = Field(ge=0, strict=True)
    max: int = Field(ge=1, strict=True)

    @model_validator(mode="after")
    def _ordered(self) -> Bounds:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class ActionPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    auto_approve: bool = False
    #: scale_out only: auto-approve up to this many replicas, ask above.
    auto_approve_max_replicas: int | None = Field(default=None, ge=1)
    default_params: dict[str, Any] = Field(default_factory=dict)


class Verification(BaseModel):
    """How a heal is checked: wait ``settle`` after the platform finished the action, then
    re-measure the alert's metric over the next ``window`` of call records."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    settle: timedelta = timedelta(minutes=2)
    window: timedelta = timedelta(minutes=5)
    #: How often the waiting tasks look again (each look frees the worker in between).
    poke_interval: timedelta = timedelta(seconds=30)
    #: Give up waiting for the platform to finish an action after this long.
    action_timeout: timedelta = timedelta(minutes=15)
    #: How long after a call the platform's API may still be missing its record: the
    #: re-measurement waits this long past the window's end.
    ingest_lag: timedelta = timedelta(seconds=60)

    @field_validator("settle", "window", "poke_interval", "action_timeout", "ingest_lag",
                     mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        return parse_duration(v) if isinstance(v, str) else v

    @model_validator(mode="after")
    def _sane(self) -> Verification:
        if self.window < timedelta(minutes=1):
            raise ValueError("window: at least 1m (rates per minute need whole minutes)")
        if self.poke_interval < timedelta(seconds=1):
            raise ValueError("poke_interval: at least 1s")
        return self


class AutoHeal(BaseModel):
    """What the hourly and health DAGs do with a firing alert that names a playbook."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: Trigger the heal DAG at all (off: the alert only suggests the playbook).
    enabled: bool = True
    #: Triggered heals as dry runs (change nothing, report what would happen).
    dry_run: bool = False


class FindingAge(BaseModel):
    """How old an evaluation may be, per evaluating DAG, for its alerts to trigger a heal.
    Older ones (a backfill, a replay, a run stuck in the queue) are reported, not acted on."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: The run for [10:00, 11:00) evaluates at 11:00 and runs a few minutes later; by 12:00
    #: the next hour's evaluation is the current one.
    hourly: timedelta = timedelta(hours=1)
    #: The health run judges the last 5 minutes of calls, every 5 minutes.
    health: timedelta = timedelta(minutes=10)

    @field_validator("hourly", "health", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        return parse_duration(v) if isinstance(v, str) else v

    @field_validator("hourly", "health")
    @classmethod
    def _positive(cls, v: timedelta) -> timedelta:
        if v <= timedelta(0):
            raise ValueError("must be longer than 0")
        return v


#: The evaluating DAGs whose alerts may trigger heals.
SCOPES = tuple(FindingAge.model_fields)


class HealPolicy(BaseModel):
    """``heal_policy.yaml`` once validated; ``models`` is resolved to model names."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    services: tuple[str, ...] = Field(min_length=1)
    user_id_pattern: str
    models: tuple[str, ...] = Field(min_length=1)
    max_replicas: int = Field(ge=1, le=1000)
    bounds: dict[str, Bounds]
    actions: dict[Action, ActionPolicy]
    cooldown: timedelta
    max_actions_per_hour: int = Field(ge=1)
    approval_timeout: timedelta
    dry_run_needs_approval: bool = False
    verification: Verification = Field(default_factory=Verification)
    auto_heal: AutoHeal = Field(default_factory=AutoHeal)
    max_finding_age: FindingAge = Field(default_factory=FindingAge)
    #: Slack connections for heal reports and approval requests (the first that exists).
    slack_connections: tuple[str, ...] = ("slack_alerts",)

    @field_validator("user_id_pattern")
    @classmethod
    def _regex(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return v

    @field_validator("cooldown", "approval_timeout", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        return parse_duration(v) if isinstance(v, str) else v

    @model_validator(mode="after")
    def _complete(self) -> HealPolicy:
        missing = [a for a in ACTIONS if a not in self.actions]
        if missing:
            raise ValueError(f"actions: missing {', '.join(missing)} (every action needs an entry)")
        for name in ("requests_per_minute", "ttl_minutes"):
            if name not in self.bounds:
                raise ValueError(f"bounds.{name}: required ({{min: .., max: ..}})")
        return self

    def bounds_of(self, param: str) -> Bounds:
        if param == "replicas":
            return Bounds(min=1, max=self.max_replicas)
        return self.bounds[param]

    def user_ok(self, user_id: str) -> bool:
        return re.fullmatch(self.user_id_pattern, user_id) is not None


@dataclass(frozen=True)
class Timing:
    """The policy's durations the heal DAG's operators need when the DAG file is parsed."""

    approval_timeout: timedelta
    verification: Verification


def policy_timing(path: str | Path | None = None) -> Timing:
    """``approval_timeout`` and ``verification`` alone, read cheaply (no price table): the
    heal DAG file needs them at parse time, where loading the whole policy is too heavy."""
    path = Path(path or os.environ.get("PROMPTOPS_HEAL_POLICY_FILE") or POLICY_PATH)
    data = _read_yaml(path)
    try:
        return Timing(parse_duration(data.get("approval_timeout", "30m")),
                      Verification.model_validate(data.get("verification") or {}))
    except ValidationError as exc:
        raise HealConfError(_format_validation(f"{path.name}: verification", exc)) from None
    except ValueError as exc:
        raise HealConfError(f"{path.name}: approval_timeout: {exc}") from None


def parse_duration(text: str) -> timedelta:
    """``30m``, ``2h``, ``90s``, ``1d`` (or a number of seconds) as a timedelta."""
    m = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", str(text))
    if not m:
        raise ConfigError(f"{text!r} is not a duration; use e.g. 90s, 30m, 2h or 1d")
    unit = {"s": "seconds", "": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m[2]]
    return timedelta(**{unit: int(m[1])})


def _format_validation(source: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{source}: {loc}: {msg}")
    return "; ".join(lines)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise HealConfError(f"{path}: file not found; create it or point to another file") from None
    except yaml.YAMLError as exc:
        raise HealConfError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise HealConfError(f"{path}: must be a mapping at the top level")
    return data


def load_policy(path: str | Path | None = None,
                price_table: PriceTable | None = None) -> HealPolicy:
    """Read and validate the heal policy; ``models: price_table`` becomes the table's models."""
    path = Path(path or os.environ.get("PROMPTOPS_HEAL_POLICY_FILE") or POLICY_PATH)
    data = _read_yaml(path)
    if data.get("models") == "price_table":
        from promptops.metrics.pricing import load_price_table

        data["models"] = (price_table or load_price_table()).models
    try:
        return HealPolicy.model_validate(data)
    except ValidationError as exc:
        raise HealConfError(_format_validation(path.name, exc)) from None


# -- requests ------------------------------------------------------------------------------

def check_target_safe(target: str) -> None:
    """Refuse targets that could smuggle a shell command or a path; say what was found."""
    if not isinstance(target, str) or not target:
        raise ConfigError("must be a non-empty string")
    found = sorted({c for c in target if c in _SHELL_META})
    if found:
        shown = " ".join(repr(c) for c in found)
        raise ConfigError(f"{target!r} contains shell metacharacter(s) {shown}; targets are "
                         f"plain names ({_PLAIN})")
    if ".." in target or "/" in target or target.startswith("."):
        raise ConfigError(f"{target!r} looks like a path (path traversal is not allowed); "
                         "targets are plain names, never paths")
    if not _SAFE_TARGET.fullmatch(target):
        raise ConfigError(f"{target!r} is not a plain name ({_PLAIN}; starting with a letter "
                         "or digit, at most 128 characters)")


class HealRequest(BaseModel):
    """One heal: the heal DAG's conf. Validate with :func:`parse_request` (or
    ``HealRequest.model_validate(conf, context={"policy": policy})``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    action: Action
    target: str
    params: dict[str, Any] = Field(default_factory=dict)
    dry_run: bool = Field(default=True, strict=True)
    reason: str = Field(default="", max_length=2000)
    requested_by: str = Field(default="manual", min_length=1, max_length=200)
    alert_fingerprint: str | None = Field(default=None, pattern=r"^[0-9a-f]{8,64}$")

    @field_validator("target")
    @classmethod
    def _safe_target(cls, v: str) -> str:
        check_target_safe(v)
        return v

    @model_validator(mode="after")
    def _against_policy(self, info: ValidationInfo) -> HealRequest:
        ctx = info.context or {}
        policy: HealPolicy = ctx.get("policy") or load_policy()
        script_dir = Path(ctx.get("script_dir") or SCRIPT_DIR)
        playbook_names = ctx.get("playbook_names")
        action, target = self.action.value, self.target
        if action in ("restart_service", "scale_out") and target not in policy.services:
            raise ValueError(f"target: unknown service {target!r} for {action}; allowed: "
                             f"{', '.join(policy.services)}")
        if action == "rate_limit" and not policy.user_ok(target):
            raise ValueError(f"target: {target!r} is not a user id for rate_limit; user ids "
                             f"match {policy.user_id_pattern} (heal_policy.yaml "
                             "user_id_pattern)")
        if action == "switch_model" and target not in policy.models:
            raise ValueError(f"target: unknown model {target!r} for switch_model; allowed: "
                             f"the priced models ({', '.join(policy.models)})")
        if action == "run_playbook":
            if playbook_names is None:
                playbook_names = tuple(load_playbooks().playbooks)
            if target not in playbook_names:
                try:
                    resolve_script(target, script_dir)
                except HealConfError as exc:
                    raise ValueError(f"target: {target!r} is neither a playbook "
                                     f"({', '.join(playbook_names)}) nor an allowed script: "
                                     f"{exc}") from None
        self._check_params(policy)
        return self

    def _check_params(self, policy: HealPolicy) -> None:
        action = self.action.value
        spec = _PARAMS[action]
        merged = {**policy.actions[self.action].default_params, **self.params}
        extra = sorted(set(merged) - set(spec))
        if extra:
            allowed = ", ".join(spec) or "none (use {})"
            raise ConfigError(f"params: unknown for {action}: {', '.join(extra)}; allowed: "
                             f"{allowed}")
        for name, kind in spec.items():
            if kind in ("args", "labels"):
                continue
            if name not in merged:
                raise ConfigError(f"params.{name}: required for {action}")
            value = merged[name]
            if kind == "int":
                b = policy.bounds_of(name)
                if type(value) is not int or not b.min <= value <= b.max:
                    raise ConfigError(f"params.{name}: {value!r} is out of range; must be an "
                                     f"integer from {b.min} to {b.max}")
            elif kind == "model":
                if value not in policy.models:
                    raise ConfigError(f"params.{name}: unknown model {value!r}; allowed: the "
                                     f"priced models ({', '.join(policy.models)})")
                if value == self.target:
                    raise ConfigError(f"params.{name}: same model as the target ({value})")
        args = merged.get("args", [])
        if not isinstance(args, list) or not all(
                isinstance(a, str) and "\x00" not in a and len(a) <= 1000 for a in args):
            raise ConfigError("params.args: must be a list of strings (each at most 1000 "
                             "characters, no NUL)")
        labels = merged.get("labels", {})
        if not isinstance(labels, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise ConfigError("params.labels: must be a mapping of strings to strings")
        # Frozen model: fill the defaults in place once validated.
        object.__setattr__(self, "params", merged)

    def platform_body(self) -> dict[str, Any]:
        """The ``POST /v1/ops/actions`` body (platform actions only)."""
        if self.action.value not in PLATFORM_ACTIONS:
            raise HealConfError(f"{self.action.value} is not a platform action; expand the "
                                "playbook or run the script instead")
        return {"action": self.action.value, "target": self.target, "params": dict(self.params),
                "dry_run": self.dry_run, "reason": self.reason}


def parse_request(conf: Mapping[str, Any], policy: HealPolicy | None = None, *,
                  playbook_names: Sequence[str] | None = None,
                  script_dir: Path | None = None) -> HealRequest:
    """Validate a heal conf; :class:`HealConfError` lists every problem found."""
    ctx = {"policy": policy or load_policy(), "playbook_names": playbook_names,
           "script_dir": script_dir}
    try:
        return HealRequest.model_validate(dict(conf), context=ctx)
    except ValidationError as exc:
        raise HealConfError(_format_validation("heal request", exc)) from None


# -- policy check --------------------------------------------------------------------------

@dataclass(frozen=True)
class PolicyDecision:
    allowed: bool
    needs_approval: bool
    reason: str


def check_policy(request: HealRequest, history: Sequence[AuditRecord], now: datetime,
                 policy: HealPolicy | None = None) -> PolicyDecision:
    """May ``request`` run at ``now`` given the audit ``history``, and does it need a person?

    Only real actions in the history count (not dry runs, not ones never posted): a target
    acted on within the cool-down is refused, and so is any action once the rolling hour
    holds ``max_actions_per_hour``.
    """
    policy = policy or load_policy()
    now = as_utc(now)
    rule = policy.actions[request.action]
    needs = not rule.auto_approve
    why = f"{request.action.value} auto-approves" if rule.auto_approve else \
        f"{request.action.value} needs approval by policy"
    if request.action is Action.scale_out and rule.auto_approve_max_replicas is not None:
        replicas = request.params.get("replicas", 0)
        if replicas > rule.auto_approve_max_replicas:
            needs = True
            why = (f"scale_out to {replicas} replicas needs approval (auto-approved up to "
                   f"{rule.auto_approve_max_replicas})")
    if request.dry_run:
        return PolicyDecision(True, policy.dry_run_needs_approval,
                              "dry run: changes nothing, so cool-down and hourly cap do not apply")
    applied = [r for r in history if r.counts_as_action]
    same_target = [r for r in applied if r.target == request.target
                   and now - policy.cooldown < as_utc(r.requested_at) <= now]
    if same_target:
        last = max(as_utc(r.requested_at) for r in same_target)
        free_at = last + policy.cooldown
        return PolicyDecision(False, needs, (
            f"target {request.target} is cooling down: last action at {last:%Y-%m-%d %H:%M} "
            f"UTC, cool-down {_fmt_td(policy.cooldown)}, next allowed at "
            f"{free_at:%Y-%m-%d %H:%M} UTC"))
    in_hour = [r for r in applied if now - timedelta(hours=1) < as_utc(r.requested_at) <= now]
    if len(in_hour) >= policy.max_actions_per_hour:
        return PolicyDecision(False, needs, (
            f"hourly cap reached: {len(in_hour)} actions in the last hour, policy allows "
            f"{policy.max_actions_per_hour}"))
    return PolicyDecision(True, needs, why)


def _fmt_td(td: timedelta) -> str:
    minutes = int(td.total_seconds() // 60)
    return f"{minutes}m" if minutes < 120 or minutes % 60 else f"{minutes // 60}h"


# -- idempotency ---------------------------------------------------------------------------

def idempotency_key(run_id: str, step: str | int) -> str:
    """The ``Idempotency-Key`` for one step of one heal run: stable across retries and
    processes, short, and free of whatever characters the run id carries."""
    raw = f"{run_id}\x1f{step}".encode()
    return "heal-" + hashlib.sha256(raw).hexdigest()[:32]


# -- playbooks -----------------------------------------------------------------------------

class PlaybookStep(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    action: Action
    target: str
    params: dict[str, Any] = Field(default_factory=dict)


class Playbook(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    description: str = ""
    steps: tuple[PlaybookStep, ...] = Field(min_length=1)


class Playbooks(BaseModel):
    """``playbooks.yaml`` once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    cheaper_models: dict[str, str] = Field(default_factory=dict)
    playbooks: dict[str, Playbook] = Field(min_length=1)


def load_playbooks(path: str | Path | None = None,
                   price_table: PriceTable | None = None) -> Playbooks:
    """Read and validate the playbooks; cheaper_models must name priced, cheaper models."""
    path = Path(path) if path else PLAYBOOKS_PATH
    try:
        books = Playbooks.model_validate(_read_yaml(path))
    except ValidationError as exc:
        raise HealConfError(_format_validation(path.name, exc)) from None
    from promptops.metrics.pricing import load_price_table

    table = price_table or load_price_table()
    for src, dst in books.cheaper_models.items():
        for m in (src, dst):
            if m not in table:
                raise HealConfError(f"{path.name}: cheaper_models.{src}: model {m!r} is not in "
                                    "the price table; add it there or remove the entry")
        if _unit_cost(table, dst) >= _unit_cost(table, src):
            raise HealConfError(f"{path.name}: cheaper_models.{src}: {dst} is not cheaper than "
                                f"{src}")
    return books


def _price(table: PriceTable, model: str) -> ModelPrice:
    """The price of a model the caller has checked is in the table."""
    p = table.get(model)
    assert p is not None
    return p


def _unit_cost(table: PriceTable, model: str) -> float:
    """Input plus output price per token: a simple 'which is cheaper' yardstick."""
    p = _price(table, model)
    return p.input_cost_per_token + p.output_cost_per_token


def cheaper_model(model: str, books: Playbooks, table: PriceTable,
                  candidates: Sequence[str] | None = None) -> str | None:
    """The configured stand-in, else the cheapest model of the same provider and mode
    (chat stays chat) priced per token that costs less (among ``candidates`` when given),
    else None. LiteLLM's map prices realtime and audio models per second (no token price):
    never a stand-in for a chat model."""
    if model in books.cheaper_models:
        return books.cheaper_models[model]
    price = table.get(model)
    if price is None:
        return None
    pool = [m for m in (candidates or table.models) if m != model and m in table
            and _price(table, m).litellm_provider == price.litellm_provider
            and _price(table, m).mode == price.mode
            and 0 < _unit_cost(table, m) < _unit_cost(table, model)]
    return min(pool, key=lambda m: (_unit_cost(table, m), m), default=None)


def _with_slice_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """Alert labels plus ``{dimension: slice}`` (``dimension=user_id, slice=user-042`` gives
    ``user_id=user-042``), so playbooks can name the slice by its dimension."""
    out = {str(k): str(v) for k, v in labels.items()}
    dim, slc = out.get("dimension"), out.get("slice")
    if dim and slc and dim not in out:
        out[dim] = slc
    if "user" in out and "user_id" not in out:  # the metrics call the dimension `user`
        out["user_id"] = out["user"]
    return out


def _fill(value: Any, labels: Mapping[str, str], where: str) -> Any:
    if isinstance(value, str):
        try:
            return string.Template(value).substitute(labels)
        except KeyError as exc:
            raise HealConfError(f"{where}: needs label {exc.args[0]!r}, which the alert does "
                                f"not carry (labels: {', '.join(sorted(labels)) or 'none'})"
                                ) from None
        except ValueError as exc:
            raise HealConfError(f"{where}: bad placeholder in {value!r}: {exc}") from None
    if isinstance(value, dict):
        return {k: _fill(v, labels, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, labels, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def expand_playbook(name: str, labels: Mapping[str, str], *, dry_run: bool = True,
                    reason: str = "", requested_by: str | None = None,
                    alert_fingerprint: str | None = None,
                    policy: HealPolicy | None = None, playbooks: Playbooks | None = None,
                    price_table: PriceTable | None = None) -> list[HealRequest]:
    """The playbook's steps with placeholders filled from ``labels``, each validated."""
    from promptops.metrics.pricing import load_price_table

    table = price_table or load_price_table()
    books = playbooks or load_playbooks(price_table=table)
    policy = policy or load_policy(price_table=table)
    if name not in books.playbooks:
        raise HealConfError(f"unknown playbook {name!r}; known: {', '.join(books.playbooks)}")
    values = _with_slice_labels(labels)
    if "model" in values and "cheaper_model" not in values:
        cheaper = cheaper_model(values["model"], books, table, policy.models)
        if cheaper:
            values["cheaper_model"] = cheaper
    out = []
    for i, step in enumerate(books.playbooks[name].steps, start=1):
        where = f"playbook {name} step {i}"
        conf = {"action": step.action.value,
                "target": _fill(step.target, values, f"{where}.target"),
                "params": _fill(step.params, values, f"{where}.params"),
                "dry_run": dry_run, "reason": reason or f"playbook {name}",
                "requested_by": requested_by or f"playbook:{name}",
                "alert_fingerprint": alert_fingerprint}
        try:
            out.append(parse_request(conf, policy, playbook_names=tuple(books.playbooks)))
        except HealConfError as exc:
            raise HealConfError(f"{where}: {exc}") from None
    return out


# -- custom scripts ------------------------------------------------------------------------

@dataclass(frozen=True)
class ScriptResult:
    script: str
    argv: tuple[str, ...]
    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


#: Captured output kept per stream; a chatty script cannot bloat XCom or the audit.
MAX_OUTPUT_CHARS = 64_000


def resolve_script(name: str, script_dir: Path | None = None) -> Path:
    """The allowlisted script's real path, or :class:`HealConfError`. Symlinks are resolved
    first, so a link pointing out of the folder is refused like ``../x``."""
    folder = Path(script_dir or SCRIPT_DIR).resolve()
    if not isinstance(name, str) or not name or "\x00" in name:
        raise HealConfError("script name must be a non-empty string")
    if Path(name).is_absolute():
        raise HealConfError(f"script {name!r}: absolute paths are not allowed; name a file "
                            f"in {folder}")
    path = (folder / name).resolve()
    if not path.is_relative_to(folder) or path == folder:
        raise HealConfError(f"script {name!r} resolves outside the allowlisted folder {folder}; "
                            "only files inside it can run")
    if not path.is_file():
        known = sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
        raise HealConfError(f"script {name!r} not found in {folder}; available: "
                            f"{', '.join(known) or 'none'}")
    if not os.access(path, os.X_OK):
        raise HealConfError(f"script {name!r} is not executable; chmod +x it (with a #! line)")
    return path


def run_script(name: str, args: Sequence[str] = (), timeout_s: float = 60, *,
               script_dir: Path | None = None) -> ScriptResult:
    """Run an allowlisted script with ``args`` as argv (no shell), a minimal environment
    (no secrets inherited) and a timeout that kills its whole process group."""
    path = resolve_script(name, script_dir)
    argv = [str(path), *(str(a) for a in args)]
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    # A new session, so a timeout can kill the script's children too; otherwise a child
    # holding the pipes open would keep us waiting past the timeout.
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            cwd=path.parent, start_new_session=True, shell=False)
    timed_out = False
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    return ScriptResult(path.name, tuple(argv[1:]), None if timed_out else proc.returncode,
                        _clip(out), _clip(err), timed_out)


def _clip(data: bytes) -> str:
    text = data.decode("utf-8", errors="replace")
    return text if len(text) <= MAX_OUTPUT_CHARS else text[:MAX_OUTPUT_CHARS] + "\n[truncated]"
