"""Budgets as configuration: ``include/config/budgets.yaml``, validated strictly when loaded.

A budget caps the cost (USD) or tokens of one scope over one period:

- ``scope``: ``overall``, or exactly one dimension among ``user``, ``team``, ``app`` and
  ``key`` (the hashed API key) mapped to a list of values or to ``"*"`` (every value of that
  dimension, each judged on its own against the amount);
- ``amount`` for each scope value, overridden per value by ``amounts``;
- ``period``: ``day``, ``week`` (starting ``week_starts``) or calendar ``month`` in the
  budget's ``timezone``, or ``rolling`` over the last ``rolling_days`` days
  (see :mod:`promptops.detection.budgets.periods`);
- ``thresholds``: shares of the amount (0.8 = 80%), each with a severity and an optional heal,
  judged on the spend so far (``on: spent``) or on the projection's lower bound
  (``on: forecast``, "will exceed"); kept sorted by ``at``;
- ``soft``: report only, never alerts or heals;
- ``switch_model`` (``app`` scopes only): the cheaper model a ``heal: switch_model`` threshold
  switches the app to, switched back when the next period starts if ``restore``.

Contract: :func:`load_budgets` returns a :class:`BudgetsConfig` or raises
:class:`BudgetConfigError` (a :class:`~promptops.errors.ConfigError`) whose every line names
the file, the budget and the field, e.g. ``budgets.yaml: budget 'search-app':
thresholds.1.at: must be > 0``, and ``(from Airflow Variable promptops_budgets)`` when an
override set or touched that budget. Nothing here imports Airflow: DAG tasks read the
Variable and hand it in as a parsed mapping.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from promptops.errors import ConfigError
from promptops.settings import PROJECT_ROOT

DEFAULT_PATH = PROJECT_ROOT / "include" / "config" / "budgets.yaml"
FILE_ENV = "PROMPTOPS_BUDGETS_FILE"
VARIABLE_KEY = "promptops_budgets"
VARIABLE_ORIGIN = f"Airflow Variable {VARIABLE_KEY}"

ScopeDimension = Literal["user", "team", "app", "key"]
SCOPE_DIMENSIONS: tuple[str, ...] = ("user", "team", "app", "key")
Severity = Literal["info", "warning", "critical"]
Metric = Literal["cost", "tokens"]
PeriodKind = Literal["day", "week", "month", "rolling"]
WeekStart = Literal["monday", "sunday"]

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
#: A threshold above this share is almost surely a percentage written as a number (80 for
#: 80%); 10 = 1000% leaves room for deliberate "ten times over" alarms.
MAX_THRESHOLD_SHARE = 10.0


class BudgetConfigError(ConfigError):
    """The budgets file or the Variable's overrides are invalid; the message lists every
    problem, one per line, each naming the file, the budget and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _timezone_problem(value: str) -> str | None:
    """What is wrong with a time zone name, or None (raised by the validators that call it,
    so pydantic locates it)."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        return (f"unknown time zone {value!r}; use an IANA name such as 'Europe/Berlin', "
                "'America/Los_Angeles' or 'UTC'")
    return None


def _known_timezone(value: str) -> str:
    problem = _timezone_problem(value)
    if problem:
        raise ConfigError(problem)
    return value


#: An IANA time zone name, refused (with the reason) when zoneinfo does not know it.
TimeZoneName = Annotated[str, AfterValidator(_known_timezone)]


class Threshold(_Strict):
    #: Share of the amount: 0.8 = 80%.
    at: float = Field(gt=0)
    severity: Severity
    #: A heal playbook or action name (``switch_model``, ``rate_limit_user``) to run when the
    #: threshold fires; None = alert only.
    heal: str | None = Field(default=None, min_length=1)
    #: ``spent``: fires when the spend so far crosses; ``forecast``: when the end-of-period
    #: projection's lower bound crosses ("will exceed"). A "may exceed" note on the upper
    #: bound is the evaluator's, not a threshold.
    on: Literal["spent", "forecast"] = "spent"

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: Any) -> Any:
        # YAML 1.1 (PyYAML) reads a bare `on:` key as the boolean true; take it back.
        if isinstance(data, Mapping) and True in data and "on" not in data:
            data = {("on" if k is True else k): v for k, v in data.items()}
        return data

    @field_validator("at")
    @classmethod
    def _share(cls, value: float) -> float:
        if value > MAX_THRESHOLD_SHARE:
            raise ValueError(f"must be a share of the amount (0.8 = 80%), at most "
                             f"{MAX_THRESHOLD_SHARE:g}; got {value:g}")
        return value


class SwitchModel(_Strict):
    #: The cheaper model the app is switched to.
    to: str = Field(min_length=1)
    #: Switch the original model back when the next period starts (itself an audited heal).
    restore: bool = True


class Budget(_Strict):
    name: str
    #: ``"overall"`` or ``{dimension: [values] | "*"}`` with exactly one dimension; see
    #: :func:`scope_dimension` and :func:`scope_values`.
    scope: Literal["overall"] | dict[ScopeDimension, list[str] | Literal["*"]]
    metric: Metric
    #: USD for ``cost``, tokens for ``tokens``; per scope value unless ``amounts`` says
    #: otherwise.
    amount: float = Field(gt=0)
    #: Per-value amounts overriding ``amount`` (user, team, app or key scopes only).
    amounts: dict[str, float] = Field(default_factory=dict)
    period: PeriodKind
    #: Length of a ``rolling`` period in days (required for it, not allowed otherwise).
    rolling_days: int | None = Field(default=None, ge=1, le=90)
    #: IANA name; default the file's top-level ``timezone``.
    timezone: TimeZoneName = "UTC"
    week_starts: WeekStart = "monday"
    thresholds: list[Threshold] = Field(min_length=1)
    #: Report only: never alerts or heals.
    soft: bool = False
    switch_model: SwitchModel | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"{value!r} must be lowercase letters, digits, '_', '.' or '-', "
                             "starting with a letter or digit")
        return value

    @field_validator("scope", mode="before")
    @classmethod
    def _scope(cls, value: Any) -> Any:
        # Checked by hand before pydantic's union so the message says what a scope looks
        # like instead of listing every union member's failure.
        if value == "overall":
            return value
        shape = ("must be 'overall' or one dimension (user, team, app or key) mapped to a "
                 "list of values or '*' (every value), e.g. {user: '*'} or {app: [search-qa]}")
        if not isinstance(value, Mapping) or len(value) != 1:
            raise ValueError(shape)
        ((dim, values),) = value.items()
        if dim not in SCOPE_DIMENSIONS:
            raise ValueError(f"unknown dimension {dim!r}; {shape}")
        if values == "*":
            return {dim: "*"}
        if isinstance(values, str):
            raise ValueError(f"{dim}: write a list, [{values}], or '*' for every {dim}")
        if not isinstance(values, list) or not values:
            raise ValueError(f"{dim}: must be a non-empty list of values or '*'")
        bad = [v for v in values if not isinstance(v, str) or not v]
        if bad:
            raise ValueError(f"{dim}: values must be non-empty strings, got {bad[0]!r}")
        dupes = sorted({v for v in values if values.count(v) > 1})
        if dupes:
            raise ValueError(f"{dim}: {', '.join(dupes)} listed more than once")
        return {dim: list(values)}

    @field_validator("amounts")
    @classmethod
    def _amounts(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in value.items() if not v > 0}
        if bad:
            key, amount = next(iter(bad.items()))
            raise ValueError(f"{key}: must be > 0, got {amount:g}")
        return value

    @field_validator("thresholds")
    @classmethod
    def _thresholds(cls, value: list[Threshold]) -> list[Threshold]:
        ordered = sorted(value, key=lambda t: (t.at, t.on))
        seen: set[tuple[float, str]] = set()
        for t in ordered:
            if (t.at, t.on) in seen:
                raise ValueError(f"two thresholds at {t.at:g} on {t.on!r}; keep one")
            seen.add((t.at, t.on))
        return ordered

    @model_validator(mode="after")
    def _consistent(self) -> Budget:
        # Each message starts with the field it is about: the loader puts it in the location.
        problems: list[str] = []
        if self.period == "rolling" and self.rolling_days is None:
            problems.append("rolling_days: required for period 'rolling' (1 to 90 days)")
        if self.period != "rolling" and self.rolling_days is not None:
            problems.append(f"rolling_days: only for period 'rolling' (this budget's period "
                            f"is {self.period!r}); remove it")
        if "week_starts" in self.model_fields_set and self.period != "week":
            problems.append(f"week_starts: only for period 'week' (this budget's period is "
                            f"{self.period!r}); remove it")
        dim, values = scope_dimension(self), scope_values(self)
        if self.amounts and dim is None:
            problems.append("amounts: only for user, team, app or key scopes; an overall "
                            "budget has one amount")
        elif values is not None:
            unlisted = sorted(set(self.amounts) - set(values))
            if unlisted:
                problems.append(f"amounts: {', '.join(unlisted)} not in scope.{dim}; add them "
                                f"to the scope or use {dim}: '*'")
        if self.switch_model is not None and dim != "app":
            problems.append("switch_model: only for app scopes (it switches an app's model)")
        for i, t in enumerate(self.thresholds):
            if self.soft and t.heal is not None:
                problems.append(f"thresholds.{i}.heal: a soft budget only reports and never "
                                "heals; remove heal or set soft: false")
            elif t.heal == "switch_model" and self.switch_model is None:
                problems.append(f"thresholds.{i}.heal: switch_model needs the budget's "
                                "switch_model: {to: <cheaper model>}")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def amount_for(self, value: str | None = None) -> float:
        """The amount for one scope value (``amounts`` first, else ``amount``)."""
        return self.amounts.get(value, self.amount) if value is not None else self.amount


class BudgetsConfig(_Strict):
    #: Default time zone of every budget that sets none.
    timezone: TimeZoneName = "UTC"
    budgets: list[Budget] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _inherit_timezone(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and isinstance(data.get("budgets"), list):
            tz = data.get("timezone", "UTC")
            if _timezone_problem(tz):
                return data  # reported once, at the top-level field, not again per budget
            data = {**data, "budgets": [
                {"timezone": tz, **b} if isinstance(b, Mapping) and "timezone" not in b else b
                for b in data["budgets"]]}
        return data

    @model_validator(mode="after")
    def _unique_names(self) -> BudgetsConfig:
        names = [b.name for b in self.budgets]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError("\n".join(f"budget {d!r}: name: used by more than one budget "
                                       "(names must be unique)" for d in dupes))
        return self

    def get(self, name: str) -> Budget | None:
        """The budget called ``name``, or None."""
        return next((b for b in self.budgets if b.name == name), None)


def scope_dimension(budget: Budget) -> str | None:
    """The budget's scope dimension (``user``, ``team``, ``app``, ``key``); None = overall."""
    if budget.scope == "overall":
        return None
    return next(iter(budget.scope))


def scope_values(budget: Budget) -> list[str] | None:
    """The listed scope values; None = every value of the dimension (``"*"``) or overall."""
    if budget.scope == "overall":
        return None
    values = next(iter(budget.scope.values()))
    return None if values == "*" else list(values)


# -- loading ------------------------------------------------------------------------------


def parse_variable(text: str | None) -> Mapping[str, Any] | None:
    """The Airflow Variable ``promptops_budgets`` as :func:`load_budgets` takes it; None
    when it is unset or empty."""
    if text is None or not text.strip():
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BudgetConfigError(f"Airflow Variable {VARIABLE_KEY}: not valid JSON ({exc.msg} "
                                f"at line {exc.lineno}); write {{\"budgets\": [...]}}") from None
    if not isinstance(data, dict):
        raise BudgetConfigError(f"Airflow Variable {VARIABLE_KEY}: must be a JSON object "
                                f"{{\"budgets\": [...]}}, got {type(data).__name__}")
    return data


def load_budgets(path: str | os.PathLike[str] | None = None,
                 variable_overrides: Mapping[str, Any] | None = None) -> BudgetsConfig:
    """Read the budgets file, apply the Variable's overrides, validate.

    ``path``: default ``$PROMPTOPS_BUDGETS_FILE``, else ``include/config/budgets.yaml``.
    ``variable_overrides``: the Airflow Variable ``promptops_budgets`` parsed from JSON,
    ``{"budgets": [...]}``: an entry whose ``name`` is in the file is deep-merged into that
    budget field by field (mappings merge; lists, ``scope`` and plain values replace; null
    drops the field back to its default), a new name adds a budget, and
    ``{"name": X, "remove": true}`` removes budget X.
    """
    # Read from os.environ here, not from promptops.settings: the settings model has no
    # budgets field, and this keeps the budgets feature out of that shared module.
    file = Path(path or os.environ.get(FILE_ENV) or DEFAULT_PATH)
    name = file.name
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BudgetConfigError(
            f"{file}: file not found; create it (see include/config/budgets.yaml) or fix "
            f"{FILE_ENV}") from None
    except yaml.YAMLError as exc:
        raise BudgetConfigError(f"{name}: not valid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise BudgetConfigError(f"{name}: must be a mapping with 'budgets' (a list) at the "
                                "top level")
    if not isinstance(raw.get("budgets", []), list):
        raise BudgetConfigError(f"{name}: budgets: must be a list of budgets")
    data = copy.deepcopy(raw)
    touched: set[str] = set()
    if variable_overrides is not None:
        _apply_overrides(name, data, variable_overrides, touched)
    try:
        return BudgetsConfig.model_validate(data)
    except ValidationError as exc:
        raise BudgetConfigError(_describe(name, data, exc, touched)) from None


def _apply_overrides(name: str, data: dict[str, Any], layer: Any, touched: set[str]) -> None:
    where = f"{name}: {VARIABLE_ORIGIN}"
    if not isinstance(layer, Mapping) or set(layer) != {"budgets"} or not isinstance(
            layer["budgets"], list):
        raise BudgetConfigError(f"{where}: must be a JSON object {{\"budgets\": [...]}} "
                                "holding a list of budgets (or parts of budgets) by name")
    budgets: list[Any] = data.setdefault("budgets", [])
    for i, entry in enumerate(layer["budgets"]):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            raise BudgetConfigError(f"{where}: budgets.{i}: each entry needs a 'name' (the "
                                    "budget to change, add or remove)")
        target = entry["name"]
        index = next((j for j, b in enumerate(budgets)
                      if isinstance(b, Mapping) and b.get("name") == target), None)
        if "remove" in entry:
            if entry["remove"] is not True or set(entry) != {"name", "remove"}:
                raise BudgetConfigError(f"{where}: budget {target!r}: remove: write "
                                        f"{{\"name\": \"{target}\", \"remove\": true}} and "
                                        "nothing else to remove a budget")
            if index is None:
                raise BudgetConfigError(f"{where}: budget {target!r}: remove: no such budget "
                                        f"in {name}; known: {_known(budgets)}")
            del budgets[index]
            continue
        touched.add(target)
        if index is None:
            budgets.append(dict(entry))
        else:
            budgets[index] = _merge(budgets[index], entry)


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if value is None:
            out.pop(key, None)
        elif key != "scope" and isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            # A scope is replaced whole: merging {team: [...]} into {user: '*'} would make a
            # two-dimension scope nobody wrote.
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _known(budgets: list[Any]) -> str:
    names = sorted(b["name"] for b in budgets
                   if isinstance(b, Mapping) and isinstance(b.get("name"), str))
    return ", ".join(names) or "none"


_MESSAGES = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than_equal": "must be <= {le}",
    "too_short": "must hold at least {min_length} item(s)",
    "missing": "required field is missing",
    "extra_forbidden": "unknown field (check the spelling; see include/config/budgets.yaml)",
}


def _describe(name: str, data: Mapping[str, Any], exc: ValidationError,
              touched: set[str]) -> str:
    budgets = data.get("budgets") or []
    lines: list[str] = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        template = _MESSAGES.get(err["type"])
        ctx = {k: f"{v:g}" if isinstance(v, float) else v for k, v in err.get("ctx", {}).items()}
        msg = (template.format(**ctx) if template
               else err["msg"].removeprefix("Value error, "))
        if err["type"] == "literal_error" and "expected" in err.get("ctx", {}):
            msg = f"must be one of {err['ctx']['expected']}, got {err['input']!r}"
        where, origin = name, ""
        if len(loc) >= 2 and loc[0] == "budgets" and loc[1].isdigit():
            entry = budgets[int(loc[1])] if int(loc[1]) < len(budgets) else None
            label = entry.get("name") if isinstance(entry, Mapping) else None
            where += f": budget {label!r}" if isinstance(label, str) else f": budgets.{loc[1]}"
            if label in touched:
                origin = f" (from {VARIABLE_ORIGIN})"
            loc = loc[2:]
            if loc[:1] == ["scope"]:
                loc = loc[:1]  # the union's member names are noise after our own message
        if err["type"] == "value_error" and not loc:
            # Cross-field checks: one problem a line, each starting with its field.
            lines.extend(f"{where}: {part}{origin}" for part in msg.split("\n"))
            continue
        field = f"{'.'.join(loc)}: " if loc else ""
        lines.append(f"{where}: {field}{msg}{origin}")
    return "\n".join(lines)
