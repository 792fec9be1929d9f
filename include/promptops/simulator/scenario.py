"""Scenario files: the incidents and faults a simulator run plays, validated with pydantic.

Times are absolute RFC 3339 or relative to the simulator's start floored to the hour
(``now-5h``, ``now-1d+30m``). A validation error names the file, the incident and the problem.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from promptops.errors import ERROR_CODES
from promptops.simulator.catalog import slice_values
from promptops.simulator.faults import FaultRule
from promptops.simulator.timeutil import format_ts, parse_time_spec

IncidentKind = Literal["error_burst", "latency_spike", "user_flood", "token_surge",
                       "intent_drop", "relevance_drop", "gpu_saturation", "api_down",
                       "traffic_dip", "scheduled_batch", "prompt_rollout",
                       "app_traffic_drop"]


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBurstParams(_Params):
    error_rate: float = Field(default=0.3, gt=0, le=1)
    error_codes: list[int] = Field(default_factory=lambda: [5000], min_length=1)

    @field_validator("error_codes")
    @classmethod
    def _known(cls, v: list[int]) -> list[int]:
        bad = [c for c in v if c not in ERROR_CODES]
        if bad:
            raise ValueError(f"unknown platform error codes {bad}; known: {sorted(ERROR_CODES)}")
        return v


class LatencySpikeParams(_Params):
    multiplier: float = Field(default=5.0, gt=1)


class UserFloodParams(_Params):
    calls_per_minute: int = Field(default=300, ge=1, le=20_000)


class TokenSurgeParams(_Params):
    multiplier: float = Field(default=4.0, gt=1)


class IntentDropParams(_Params):
    #: Classifier accuracy on the slice after the change.
    accuracy: float = Field(default=0.7, ge=0, le=1)
    #: The prompt_version the template switches to (default: one after its current version).
    version: str | None = Field(default=None, pattern=r"^v[1-9]$")


class RelevanceDropParams(_Params):
    #: Approximate mean relevance_score on the slice (normal: about 4.6).
    mean: float = Field(default=2.8, ge=1, lt=4.6)


class GpuSaturationParams(_Params):
    utilization_pct: float = Field(default=98.5, ge=90, le=100)
    latency_multiplier: float = Field(default=1.6, ge=1)


class ApiDownParams(_Params):
    #: The code /v1 answers with while down (a 5xx one).
    error_code: Literal[5000, 4003, 2001] = 5000
    #: Share of the platform's own calls that fail meanwhile (visible in the records later).
    record_error_rate: float = Field(default=0.5, ge=0, le=1)


class TrafficDipParams(_Params):
    """Not an incident: a holiday or a planned quiet day. Traffic is scaled by ``multiplier``
    and nothing breaks; a good detector stays quiet."""

    multiplier: float = Field(default=0.4, gt=0, lt=1)


class ScheduledBatchParams(_Params):
    """Not an incident: a service account's recurring job. Every day (from the incident's
    start date to its end) between ``daily_start`` and ``daily_start + minutes`` the slice's
    user sends ``calls_per_minute_min..max`` calls a minute (a fixed number each minute,
    drawn from the range) with long prompts; a good detector learns it as normal load."""

    daily_start: str = Field(default="02:00", pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
    minutes: int = Field(default=60, ge=1, le=1440)
    calls_per_minute_min: int = Field(default=50, ge=1, le=5000)
    calls_per_minute_max: int = Field(default=80, ge=1, le=5000)
    #: Mean prompt and completion tokens per call (lognormal around them).
    prompt_tokens: int = Field(default=2000, ge=1, le=200_000)
    completion_tokens: int = Field(default=300, ge=1, le=50_000)
    #: The model the job calls (hosted by default: no GPU load).
    model: str = "gpt-4o-mini"
    #: The app and template it runs under (default: the user's home app, its first template).
    app: str | None = None
    prompt_template: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ScheduledBatchParams:
        if self.calls_per_minute_max < self.calls_per_minute_min:
            raise ValueError("calls_per_minute_max is below calls_per_minute_min")
        known = slice_values()
        for name, value, dim in (("model", self.model, "model"), ("app", self.app, "app"),
                                 ("prompt_template", self.prompt_template, "prompt_template")):
            if value is not None and value not in known[dim]:
                raise ValueError(f"{name} {value!r} names nothing the platform has "
                                 f"(known: {', '.join(known[dim])})")
        return self

    @property
    def start_minute(self) -> int:
        hh, mm = self.daily_start.split(":")
        return int(hh) * 60 + int(mm)


class PromptRolloutParams(_Params):
    """Not an incident: the slice's template moves to ``version`` with unchanged quality; its
    prompts change length by ``prompt_tokens_multiplier``."""

    version: str = Field(pattern=r"^v[1-9]$")
    prompt_tokens_multiplier: float = Field(default=1.08, gt=0, le=3)
    #: Share of the template's calls on the new version (1.0 = fully rolled out).
    share: float = Field(default=1.0, gt=0, le=1)


class AppTrafficDropParams(_Params):
    """A client failing before it reaches the API (auth, DNS, a broken release): only
    ``multiplier`` of the slice's calls arrive; nothing else changes."""

    multiplier: float = Field(default=0.2, ge=0, lt=1)


PARAMS_BY_KIND: dict[str, type[_Params]] = {
    "error_burst": ErrorBurstParams, "latency_spike": LatencySpikeParams,
    "user_flood": UserFloodParams, "token_surge": TokenSurgeParams,
    "intent_drop": IntentDropParams, "relevance_drop": RelevanceDropParams,
    "gpu_saturation": GpuSaturationParams, "api_down": ApiDownParams,
    "traffic_dip": TrafficDipParams, "scheduled_batch": ScheduledBatchParams,
    "prompt_rollout": PromptRolloutParams, "app_traffic_drop": AppTrafficDropParams,
}
#: Kinds that are labelled look-alikes, not incidents: nothing should alert on them.
HARMLESS_KINDS = frozenset({"traffic_dip", "scheduled_batch", "prompt_rollout"})
#: Slice dimensions a kind cannot do without.
REQUIRED_SLICE = {"user_flood": "user_id", "intent_drop": "prompt_template",
                  "gpu_saturation": "gpu_node", "scheduled_batch": "user_id",
                  "prompt_rollout": "prompt_template", "app_traffic_drop": "app"}


class IncidentSpec(BaseModel):
    """An incident as written in a scenario (times may still be relative)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    kind: IncidentKind
    start: str | datetime
    end: str | datetime | None = None
    slice: dict[str, str] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("slice")
    @classmethod
    def _known_slice(cls, v: dict[str, str]) -> dict[str, str]:
        known = slice_values()
        for dim, value in v.items():
            if dim not in known:
                raise ValueError(f"unknown slice dimension {dim!r}; known: {sorted(known)}")
            if value not in known[dim]:
                sample = ", ".join(known[dim][:8])
                raise ValueError(f"slice {dim}={value!r} names nothing the platform has "
                                 f"(e.g. {sample})")
        return v

    def typed_params(self) -> _Params:
        return PARAMS_BY_KIND[self.kind].model_validate(self.params)

    def check(self) -> None:
        """Kind-specific rules pydantic cannot express per field."""
        self.typed_params()
        need = REQUIRED_SLICE.get(self.kind)
        if need and need not in self.slice:
            raise ValueError(f"a {self.kind} incident needs slice.{need}")
        if self.kind == "scheduled_batch" and set(self.slice) != {"user_id"}:
            raise ValueError("a scheduled_batch names its caller only (slice: {user_id: ...}); "
                             "set its app, template and model in params")


class DataFaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    malformed_rate: float = Field(default=0.0, ge=0, le=0.5)
    duplicate_rate: float = Field(default=0.0, ge=0, le=0.5)
    late_rate: float = Field(default=0.0, ge=0, le=1)


class ScenarioFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int | None = Field(default=None, ge=0)
    calls_per_hour: int | None = Field(default=None, ge=0, le=5_000_000)
    flat: bool | None = None
    data_faults: DataFaults | None = None
    incidents: list[IncidentSpec] = Field(default_factory=list)
    faults: list[FaultRule] = Field(default_factory=list)


@dataclass(frozen=True)
class Incident:
    """An incident with absolute times, as the generator and the ground truth use it."""

    name: str
    kind: str
    start: datetime
    end: datetime | None
    slice: dict[str, str]
    params: Any  # the kind's params model
    #: Set when a restart_service action ended the incident early.
    ended_by: str | None = None

    def active(self, at: datetime) -> bool:
        return self.start <= at and (self.end is None or at < self.end)

    def truth(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "start": format_ts(self.start),
                "end": None if self.end is None else format_ts(self.end),
                "slice": dict(self.slice), "params": self.params.model_dump(),
                "ended_by": self.ended_by}


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message names file, incident and problem."""


def _where(source: str, data: Any, loc: tuple[Any, ...]) -> str:
    if len(loc) >= 2 and loc[0] == "incidents" and isinstance(loc[1], int):
        try:
            name = data["incidents"][loc[1]].get("name", "?")
        except (KeyError, IndexError, TypeError, AttributeError):
            name = "?"
        rest = ".".join(str(p) for p in loc[2:])
        return f"{source}: incident #{loc[1] + 1} ({name!r}){': ' + rest if rest else ''}"
    return f"{source}: {'.'.join(str(p) for p in loc) or 'top level'}"


def parse_scenario(data: Any, source: str = "<scenario>") -> ScenarioFile:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: a scenario must be a YAML mapping")
    try:
        sc = ScenarioFile.model_validate(data)
    except ValidationError as exc:
        problems = [f"{_where(source, data, tuple(e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise ScenarioError("; ".join(problems)) from None
    names = set()
    for i, inc in enumerate(sc.incidents):
        label = f"{source}: incident #{i + 1} ({inc.name!r})"
        if inc.name in names:
            raise ScenarioError(f"{label}: the name is used twice")
        names.add(inc.name)
        try:
            inc.check()
        except ValidationError as exc:
            probs = ", ".join(f"params.{'.'.join(map(str, e['loc']))}: {e['msg']}"
                              for e in exc.errors())
            raise ScenarioError(f"{label}: {probs}") from None
        except ValueError as exc:
            raise ScenarioError(f"{label}: {exc}") from None
    return sc


def load_scenario(path: str | Path) -> ScenarioFile:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: not valid YAML: {exc}") from None
    return parse_scenario(data, str(path))


def resolve_incidents(specs: list[IncidentSpec], anchor: datetime,
                      source: str = "<scenario>") -> list[Incident]:
    """Absolute times for every incident; ``anchor`` is the sim start floored to the hour."""
    out = []
    for i, spec in enumerate(specs):
        label = f"{source}: incident #{i + 1} ({spec.name!r})"
        try:
            start = parse_time_spec(spec.start, anchor)
            end = None if spec.end is None else parse_time_spec(spec.end, anchor)
        except ValueError as exc:
            raise ScenarioError(f"{label}: {exc}") from None
        if end is not None and end <= start:
            raise ScenarioError(f"{label}: end {end.isoformat()} is not after start "
                                f"{start.isoformat()}")
        out.append(Incident(spec.name, spec.kind, start, end, dict(spec.slice),
                            spec.typed_params()))
    return out

