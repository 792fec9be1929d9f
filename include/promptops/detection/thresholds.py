"""Alert rules as configuration: ``include/config/thresholds.yaml``, validated when loaded.

The file holds four kinds of rule, keyed by rule name (the name becomes ``Finding.rule``):

- ``threshold``: a metric against warning / critical levels with an explicit direction
  (``below`` = bad when below the level, a success rate; ``above`` = bad when above, a latency).
- ``comparison``: a metric against itself one hour, one day or one week earlier; both a
  ratio and an absolute change must be exceeded, on enough samples on both sides.
- ``composite``: several conditions that must all hold on the same (dimension, slice).
- ``budget``: a daily total (tokens, cost) against a budget, projected to the end of the day.
  A budget is off until a person sets one: ``budget: null`` (the shipped default) disables
  the rule.

A ``defaults`` block fills fields a rule leaves out (only fields that rule kind has).

Threshold, comparison and composite rules judge an estimate together with its sampling
error: the end of its two-sided ``confidence`` interval nearest the level (``use_bound``,
on by default; the metric table's ``lower``/``upper`` re-derived at the rule's confidence).
A higher ``confidence`` asks for stronger evidence: fewer false alerts on small slices, a
real change needs more calls to show. The shipped file sets 0.99 in ``defaults`` (0.95 for
the 5-minute rules, which need two bad windows in a row); a file that sets none gets 0.95.

Single values can be changed without editing the file, lowest to highest precedence:

1. the Airflow Variable ``promptops_thresholds``, a JSON object ``{rule: {field: value}}``
   (read by the DAG tasks, ``airflow_adapters.resources.thresholds``, and handed in as
   ``variable_overrides``);
2. environment variables ``PROMPTOPS_THRESHOLD__<rule>__<field>=<value>`` (rule and field
   names case-insensitive; ``__`` descends further, e.g.
   ``PROMPTOPS_THRESHOLD__latency_p95_vs_last_week__warning__ratio=3``; the value is read
   as YAML, so ``0.98``, ``true`` and ``[model, app]`` work);
3. the ``overrides`` argument of :func:`load_thresholds`.

Every error names the file, the key path and what is wrong, and says which override touched
the key when one did, e.g. ``thresholds.yaml: rules.success_rate.critical: must be below
warning for direction 'below'``.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from promptops.errors import ConfigError, PromptOpsError
from promptops.settings import PROJECT_ROOT

DEFAULT_PATH = PROJECT_ROOT / "include" / "config" / "thresholds.yaml"
FILE_ENV = "PROMPTOPS_THRESHOLDS_FILE"
OVERRIDE_ENV_PREFIX = "PROMPTOPS_THRESHOLD__"
VARIABLE_KEY = "promptops_thresholds"

Direction = Literal["above", "below"]
Level = Literal["warning", "critical"]
Source = Literal["hourly", "health"]
Baseline = Literal["previous_hour", "same_hour_yesterday", "same_hour_last_week"]
#: Units decide how values are written in summaries (``ratio`` is a fraction shown as %).
Unit = Literal["ratio", "pct", "ms", "tokens", "usd", "score", "calls/min", "count"]
Op = Literal[">", ">=", "<", "<="]

#: How far back each comparison baseline lies.
BASELINE_OFFSETS: dict[str, timedelta] = {
    "previous_hour": timedelta(hours=1),
    "same_hour_yesterday": timedelta(days=1),
    "same_hour_last_week": timedelta(weeks=1),
}

_DURATION = re.compile(r"^\s*(\d+)\s*(m|min|h|d)\s*$")
_DURATION_UNITS = {"m": "minutes", "min": "minutes", "h": "hours", "d": "days"}


class ThresholdsConfigError(PromptOpsError, ValueError):
    """The thresholds file or an override is invalid; the message lists every problem."""


def parse_window(value: Any) -> timedelta:
    """``"5m"``, ``"1h"``, ``"1d"`` (or a timedelta) -> timedelta."""
    if isinstance(value, timedelta):
        return value
    match = _DURATION.match(str(value)) if isinstance(value, str) else None
    if not match or int(match.group(1)) == 0:
        raise ConfigError(f"must be a positive duration like '5m', '1h' or '1d', got {value!r}")
    return timedelta(**{_DURATION_UNITS[match.group(2)]: int(match.group(1))})


def format_window(window: timedelta) -> str:
    seconds = int(window.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class RuleBase(_Strict):
    """Fields every rule kind shares."""

    description: str | None = None
    enabled: bool = True
    #: Dimensions to evaluate (``overall``, ``model``, ...); ``None`` = every dimension present.
    dimensions: list[str] | None = None
    #: Which evaluation feeds the rule: the hourly metrics or the 5-minute health sensor.
    source: Source = "hourly"
    #: The evaluation window the rule's metric covers (``5m``, ``1h``, ``1d``).
    window: Annotated[timedelta, Field(description="e.g. 5m, 1h, 1d")] = timedelta(hours=1)
    #: Evaluations the condition must hold before the alert fires (Prometheus ``for``).
    for_: int = Field(default=1, ge=1, alias="for")
    #: Evaluations the alert keeps firing after the condition cleared.
    keep_firing_for: int = Field(default=0, ge=0)
    #: ``service`` label, so an outage alert can inhibit the symptoms of the same service.
    service: str = Field(default="platform-api", min_length=1)
    #: Heal playbook to suggest (Finding.annotations["heal_playbook"]) ...
    heal: str | None = None
    #: ... from this severity up.
    heal_on: Level = "critical"
    #: One line telling the operator where to look first.
    runbook: str | None = None

    @field_validator("window", mode="before")
    @classmethod
    def _window(cls, value: Any) -> timedelta:
        return parse_window(value)

    @field_validator("dimensions")
    @classmethod
    def _dimensions(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("must list at least one dimension (or be left out for all)")
        return value


class _Judged(RuleBase):
    """A rule that judges estimates with their sampling error.

    ``use_bound``: a threshold judges the interval bound nearest its level (``upper`` for
    ``below``) instead of the point value, so a small sample only alerts when it is
    confidently bad; a comparison's change must hold beyond the sampling error of both
    sides (a two-sample test: the sides' half-widths added in quadrature); a composite's
    ``op``/``value`` conditions judge the bound nearest the value (``>``: lower bound), its
    level conditions follow their threshold rule's own settings. ``confidence``: the
    two-sided level of those intervals (0.95: a bound is a one-sided 97.5% bound)."""

    use_bound: bool = True
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)


class ThresholdRule(_Judged):
    kind: Literal["threshold"] = "threshold"
    metric: str = Field(min_length=1)
    #: ``below``: bad when the value is below the level; ``above``: bad when above it.
    direction: Direction
    unit: Unit
    warning: float
    critical: float | None = None
    #: Fewer samples than this and the slice is not judged (too little evidence).
    min_samples: int = Field(default=0, ge=0)

    @field_validator("critical")
    @classmethod
    def _critical_beyond_warning(cls, value: float | None, info: ValidationInfo) -> float | None:
        warning, direction = info.data.get("warning"), info.data.get("direction")
        if value is None or warning is None or direction is None:
            return value
        if direction == "below" and value > warning:
            raise ValueError(f"must be below warning ({warning:g}) for direction 'below'")
        if direction == "above" and value < warning:
            raise ValueError(f"must be above warning ({warning:g}) for direction 'above'")
        return value

    def level(self, severity: Level) -> float | None:
        return self.warning if severity == "warning" else self.critical


class Change(_Strict):
    """How far a value must move from its baseline: both limits must be exceeded."""

    #: Factor: ``above`` fires at ``current >= baseline * ratio``, ``below`` at
    #: ``current <= baseline / ratio``.
    ratio: float = Field(gt=1.0)
    #: Minimum absolute change, in the metric's unit, so a tiny base does not page.
    change: float = Field(ge=0.0)


class ComparisonRule(_Judged):
    kind: Literal["comparison"] = "comparison"
    metric: str = Field(min_length=1)
    direction: Direction
    against: Baseline
    #: Further baselines the change must also hold against (where they have the slice):
    #: a rebound after a holiday is x2 yesterday but not x2 last week.
    also_against: list[Baseline] = Field(default_factory=list)
    unit: Unit
    warning: Change
    critical: Change | None = None
    #: Minimum samples on both sides (now and at the baseline).
    min_samples: int = Field(default=0, ge=0)

    @field_validator("critical")
    @classmethod
    def _critical_stricter(cls, value: Change | None, info: ValidationInfo) -> Change | None:
        warning = info.data.get("warning")
        if value is not None and warning is not None and (
                value.ratio < warning.ratio or value.change < warning.change):
            raise ValueError("ratio and change must be at least the warning's "
                             f"(ratio {warning.ratio:g}, change {warning.change:g})")
        return value

    def level(self, severity: Level) -> Change | None:
        return self.warning if severity == "warning" else self.critical


class Condition(_Strict):
    """One leg of a composite: ``metric op value``, or a threshold rule at a level."""

    metric: str = Field(min_length=1)
    op: Op | None = None
    value: float | None = None
    #: ``warning`` holds when the threshold rule is at warning or worse.
    level: Level | None = None
    #: The threshold rule the level refers to (found by metric when left out).
    rule: str | None = None
    unit: Unit | None = None
    #: Defaults to the composite's ``min_samples`` (or the referenced rule's).
    min_samples: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _one_form(self) -> Condition:
        by_value = self.op is not None or self.value is not None
        by_level = self.level is not None or self.rule is not None
        if by_value == by_level:
            raise ValueError("give either op and value, or level (and optionally rule)")
        if by_value and (self.op is None or self.value is None):
            raise ValueError("op and value go together")
        if by_level and self.level is None:
            raise ValueError("rule needs a level (warning or critical)")
        return self


class CompositeRule(_Judged):
    kind: Literal["composite"] = "composite"
    conditions: list[Condition] = Field(min_length=2)
    severity: Level = "critical"
    min_samples: int = Field(default=0, ge=0)


class BudgetRule(RuleBase):
    """A daily (UTC) total against a budget; the levels are shares of the budget."""

    kind: Literal["budget"] = "budget"
    metric: str = Field(min_length=1)
    unit: Unit
    #: None (the default): no budget set, the rule judges nothing until a person sets one.
    budget: float | None = Field(default=None, gt=0)
    #: Fire when the projected end-of-day figure reaches this share of the budget.
    warning: float = Field(default=1.0, gt=0)
    critical: float | None = Field(default=None, gt=0)
    #: Before this many observed hours the projection is too noisy: judge what was spent.
    min_hours: int = Field(default=3, ge=1, le=24)
    dimensions: list[str] | None = ["overall"]

    @field_validator("critical")
    @classmethod
    def _critical_above(cls, value: float | None, info: ValidationInfo) -> float | None:
        warning = info.data.get("warning")
        if value is not None and warning is not None and value < warning:
            raise ValueError(f"must be at least warning ({warning:g})")
        return value

    def level(self, severity: Level) -> float | None:
        return self.warning if severity == "warning" else self.critical


Rule = Annotated[
    Annotated[ThresholdRule, Tag("threshold")] | Annotated[ComparisonRule, Tag("comparison")]
    | Annotated[CompositeRule, Tag("composite")] | Annotated[BudgetRule, Tag("budget")],
    Discriminator(lambda v: v.get("kind") if isinstance(v, dict) else getattr(v, "kind", None),
                  custom_error_type="rule_kind",
                  custom_error_message="kind must be one of threshold, comparison, "
                                       "composite, budget"),
]
RULE_CLASSES: dict[str, type[RuleBase]] = {
    "threshold": ThresholdRule, "comparison": ComparisonRule,
    "composite": CompositeRule, "budget": BudgetRule,
}
_RULE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class ThresholdsConfig(_Strict):
    version: Literal[1] = 1
    #: Values every rule inherits unless it sets its own (only fields its kind has).
    defaults: dict[str, Any] = Field(default_factory=dict)
    rules: dict[str, Rule]

    @model_validator(mode="before")
    @classmethod
    def _apply_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("rules"), dict):
            return data
        defaults = data.get("defaults") or {}
        if not isinstance(defaults, dict):
            return data
        rules = {}
        for name, rule in data["rules"].items():
            klass = (RULE_CLASSES.get(rule["kind"])
                     if isinstance(rule, dict) and "kind" in rule else None)
            if klass is not None:
                accepted = {f.alias or n for n, f in klass.model_fields.items()} | set(
                    klass.model_fields)
                rule = {**{k: v for k, v in defaults.items() if k in accepted}, **rule}
            rules[name] = rule
        return {**data, "rules": rules}

    @field_validator("defaults")
    @classmethod
    def _known_defaults(cls, value: dict[str, Any]) -> dict[str, Any]:
        known = set().union(*({f.alias or n for n, f in k.model_fields.items()}
                              for k in RULE_CLASSES.values()))
        unknown = sorted(set(value) - known - {"kind"})
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(known))}")
        return value

    @field_validator("rules")
    @classmethod
    def _rule_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        bad = [n for n in value if not _RULE_NAME.match(n)]
        if bad:
            raise ValueError(f"rule names must be lower_snake_case: {', '.join(bad)}")
        return value

    @model_validator(mode="after")
    def _resolve_composites(self) -> ThresholdsConfig:
        problems = []
        for name, rule in self.rules.items():
            if not isinstance(rule, CompositeRule):
                continue
            for i, cond in enumerate(rule.conditions):
                if cond.level is None:
                    continue
                where = f"rules.{name}.conditions.{i}"
                if cond.rule is not None:
                    target = self.rules.get(cond.rule)
                    if not isinstance(target, ThresholdRule) or target.metric != cond.metric:
                        problems.append(f"{where}.rule: '{cond.rule}' is not a threshold rule "
                                        f"on metric '{cond.metric}'")
                    elif cond.level == "critical" and target.critical is None:
                        problems.append(f"{where}.level: rule '{cond.rule}' has no critical level")
                    continue
                matches = [n for n, r in self.rules.items()
                           if isinstance(r, ThresholdRule) and r.metric == cond.metric
                           and r.source == rule.source]
                if len(matches) != 1:
                    what = "no threshold rule" if not matches else \
                        f"several threshold rules ({', '.join(matches)}); name one in 'rule'"
                    problems.append(f"{where}.metric: {what} on metric '{cond.metric}'")
        if problems:
            # Raised as ValueError so it reaches the loader as one more located message.
            raise ValueError("; ".join(problems))
        return self

    def rules_for(self, source: Source | None = "hourly") -> dict[str, Any]:
        """Enabled rules of one source (``None``: every source). A budget rule without a
        budget is off."""
        return {n: r for n, r in self.rules.items()
                if r.enabled and (source is None or r.source == source)
                and not (isinstance(r, BudgetRule) and r.budget is None)}

    def threshold_rule_for(self, cond: Condition,
                           source: Source | None = None) -> tuple[str, ThresholdRule]:
        """The threshold rule a level-condition refers to (validated at load time)."""
        if cond.rule is not None:
            return cond.rule, self.rules[cond.rule]  # type: ignore[return-value]
        for name, rule in self.rules.items():
            if isinstance(rule, ThresholdRule) and rule.metric == cond.metric and (
                    source is None or rule.source == source):
                return name, rule
        raise KeyError(cond.metric)


# -- loading ------------------------------------------------------------------------------


def load_thresholds(path: str | os.PathLike[str] | None = None,
                    overrides: Mapping[str, Mapping[str, Any]] | None = None, *,
                    env: Mapping[str, str] | None = None,
                    variable_overrides: Mapping[str, Any] | None = None) -> ThresholdsConfig:
    """Read, override and validate the thresholds file.

    ``path``: the file; default ``$PROMPTOPS_THRESHOLDS_FILE`` or
    ``include/config/thresholds.yaml``. ``overrides``: ``{rule: {field: value}}`` applied
    last. ``env``: the environment to read ``PROMPTOPS_THRESHOLD__...`` from (default
    ``os.environ``). ``variable_overrides``: the Airflow Variable ``promptops_thresholds``
    as :func:`parse_variable_overrides` reads it (DAG tasks pass it; elsewhere there is none).
    """
    env = os.environ if env is None else env
    file = Path(path or env.get(FILE_ENV) or DEFAULT_PATH)
    name = file.name
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ThresholdsConfigError(
            f"{file}: file not found; create it (see include/config/thresholds.yaml) or fix "
            f"{FILE_ENV}") from None
    except yaml.YAMLError as exc:
        raise ThresholdsConfigError(f"{name}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ThresholdsConfigError(f"{name}: must be a mapping with 'rules' at the top level")

    layers: list[tuple[str, Mapping[str, Any]]] = []
    if variable_overrides is not None:
        layers.append((f"Airflow Variable {VARIABLE_KEY}", variable_overrides))
    layers.extend(_env_overrides(env))
    if overrides:
        layers.append(("overrides argument", overrides))

    data = copy.deepcopy(raw)
    touched: dict[tuple[str, ...], str] = {}
    for origin, layer in layers:
        _apply_override(name, data, layer, origin, touched)

    try:
        return ThresholdsConfig.model_validate(data)
    except ValidationError as exc:
        raise ThresholdsConfigError(_describe(name, exc, touched)) from None


def _apply_override(name: str, data: dict, layer: Mapping[str, Any], origin: str,
                    touched: dict[tuple[str, ...], str]) -> None:
    if not isinstance(layer, Mapping):
        raise ThresholdsConfigError(f"{name}: {origin}: must be a JSON object "
                                    "{rule: {field: value}}")
    rules = data.setdefault("rules", {})
    for rule_key, fields in layer.items():
        rule_name = _match_key(rules, rule_key)
        if rule_name is None:
            raise ThresholdsConfigError(
                f"{name}: {origin}: rules.{rule_key}: no such rule; known rules: "
                f"{', '.join(sorted(rules))}")
        if not isinstance(fields, Mapping):
            raise ThresholdsConfigError(
                f"{name}: {origin}: rules.{rule_name}: must map field names to values")
        for field_path, value in _flatten(fields):
            target = rules[rule_name]
            path = [rule_name]
            for part in field_path[:-1]:
                key = _match_key(target, part) or part
                if not isinstance(target.get(key), dict):
                    target[key] = {}
                target, path = target[key], [*path, key]
            key = _match_key(target, field_path[-1]) or field_path[-1]
            target[key] = value
            touched[("rules", *path, key)] = origin


def _flatten(fields: Mapping[str, Any],
             prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    for key, value in fields.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, (*prefix, str(key)))
        else:
            yield (*prefix, str(key)), value


def _match_key(mapping: Mapping[str, Any], key: str) -> str | None:
    if key in mapping:
        return key
    lowered = key.lower()
    return next((k for k in mapping if str(k).lower() == lowered), None)


def _env_overrides(env: Mapping[str, str]) -> list[tuple[str, Mapping[str, Any]]]:
    layers: list[tuple[str, Mapping[str, Any]]] = []
    for var in sorted(env):
        if not var.upper().startswith(OVERRIDE_ENV_PREFIX):
            continue
        parts = [p for p in var[len(OVERRIDE_ENV_PREFIX):].split("__")]
        if len(parts) < 2 or not all(parts):
            raise ThresholdsConfigError(
                f"env {var}: expected {OVERRIDE_ENV_PREFIX}<rule>__<field>[__<subfield>]")
        try:
            value = yaml.safe_load(env[var])
        except yaml.YAMLError:
            value = env[var]
        nested: Any = value
        for part in reversed(parts[1:]):
            nested = {part.lower(): nested}
        layers.append((f"env {var}", {parts[0].lower(): nested}))
    return layers


def parse_variable_overrides(raw: Any) -> Mapping[str, Any] | None:
    """The overrides in the raw value of the Variable ``promptops_thresholds`` (JSON text);
    None when it is unset or blank."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if not isinstance(raw, str):
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ThresholdsConfigError(
            f"Airflow Variable {VARIABLE_KEY}: not valid JSON ({exc.msg} at line {exc.lineno} "
            f"column {exc.colno}); expected {{rule: {{field: value}}}}") from None


def _describe(name: str, exc: ValidationError, touched: dict[tuple[str, ...], str]) -> str:
    lines: list[str] = []
    for err in exc.errors():
        # Drop the union tag pydantic inserts after the rule name (rules.x.threshold.warning).
        loc = [str(p) for p in err["loc"]]
        if len(loc) >= 3 and loc[0] == "rules" and loc[2] in RULE_CLASSES:
            del loc[2]
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; see the other rules for the field names)"
        elif err["type"] == "missing":
            msg = "required field is missing"
        if not loc:  # a whole-file check that locates its own problems
            lines.extend(f"{name}: {part}" for part in msg.split("; "))
            continue
        lines.append(f"{name}: {'.'.join(loc)}: {msg}" + _origin_note(loc, touched))
    return "\n".join(lines)


def _origin_note(loc: list[str], touched: dict[tuple[str, ...], str]) -> str:
    """Which override set this key, or failing that, touched the same rule."""
    exact = [o for k, o in touched.items() if tuple(loc[:len(k)]) == k]
    if exact:
        return f" (value from {exact[-1]})"
    same_rule = sorted({o for k, o in touched.items() if k[:2] == tuple(loc[:2])})
    return f" (rule overridden by {', '.join(same_rule)})" if same_rule else ""
