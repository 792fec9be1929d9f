"""Silences: time-boxed mutes an operator sets without touching the rules.

Two sources, read at every evaluation: the YAML file named by the alerting config
(``include/config/silences.yaml``) and the Airflow Variable ``promptops_silences`` (a JSON
list), so a silence can be set from the Airflow UI during an incident. A silence mutes the
alerts whose identity labels match all of its matchers while ``starts_at <= now < ends_at``,
``now`` being the evaluation time; expired and future silences are ignored.

A broken source is reported (:class:`SilenceError`, naming the file or Variable, the entry
and the key) and the engine goes on without that source's silences: a typo in a silence
must never stop alerts from being sent.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from promptops.alerts.config import (
    AlertingConfig,
    AlertingConfigError,
    Matcher,
    describe_validation_error,
    matches_all,
)

log = logging.getLogger(__name__)


class SilenceError(AlertingConfigError):
    """A silence source could not be read or holds an invalid silence."""


class Silence(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    #: Optional; a stable hash of the content when not given.
    id: str = ""
    matchers: list[Matcher] = Field(min_length=1)
    starts_at: datetime = Field(validation_alias=AliasChoices("starts_at", "startsAt"))
    ends_at: datetime = Field(validation_alias=AliasChoices("ends_at", "endsAt"))
    created_by: str = Field(min_length=1, validation_alias=AliasChoices("created_by", "createdBy"))
    comment: str = Field(min_length=1)
    #: Where it came from (file path or ``variable:<name>``), for messages and the alert log.
    source: str = ""

    @field_validator("starts_at", "ends_at")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("needs a time zone, e.g. 2026-11-20T13:00:00Z")
        return v.astimezone(UTC)

    @model_validator(mode="after")
    def _window_and_id(self) -> Silence:
        if self.ends_at <= self.starts_at:
            raise ValueError(f"ends_at {self.ends_at.isoformat()} is not after starts_at "
                             f"{self.starts_at.isoformat()}")
        if not self.id:
            raw = json.dumps([[str(m) for m in self.matchers], self.starts_at.isoformat(),
                              self.ends_at.isoformat(), self.created_by], sort_keys=True)
            object.__setattr__(self, "id", hashlib.sha256(raw.encode()).hexdigest()[:12])
        return self

    def active_at(self, now: datetime) -> bool:
        return self.starts_at <= now < self.ends_at

    def matches(self, labels: dict[str, str]) -> bool:
        return matches_all(self.matchers, labels)


def parse_silences(data: Any, source: str) -> list[Silence]:
    """Validate a list of silences; errors name the source, the entry and the key."""
    if data is None:
        return []
    if not isinstance(data, list):
        raise SilenceError(f"{source}: silences must be a list, got {type(data).__name__}")
    out = []
    for i, item in enumerate(data):
        label = f"{source}: silence #{i + 1}"
        if isinstance(item, dict) and item.get("id"):
            label += f" ({item['id']!r})"
        if not isinstance(item, dict):
            raise SilenceError(f"{label}: must be a mapping with matchers, starts_at, ends_at, "
                               f"created_by and comment")
        try:
            out.append(Silence.model_validate({**item, "source": source}))
        except ValidationError as exc:
            raise SilenceError(f"{label}: {describe_validation_error(exc)}") from None
    return out


def load_silences_file(path: Path) -> list[Silence]:
    """Silences from a YAML file; a missing file means none."""
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise SilenceError(f"{path}: cannot read the silences file: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise SilenceError(f"{path}: not valid YAML: {exc}") from None
    return parse_silences(data, str(path))


class SilenceSource:
    """Loads silences from the file and the Airflow Variable.

    ``variable_reader`` returns a Variable's raw value (None when unset): in a DAG task
    ``airflow_adapters.connections.variable`` (see ``airflow_adapters.resources.silences``);
    tests pass a function returning JSON. Without one only the file is read.
    """

    def __init__(self, path: Path | None, variable: str | None = "promptops_silences", *,
                 variable_reader: Callable[[str], str | None] | None = None) -> None:
        self.path = path
        self._read_variable = variable_reader
        self.variable = variable or None

    @classmethod
    def from_config(cls, config: AlertingConfig, *,
                    variable_reader: Callable[[str], str | None] | None = None) -> SilenceSource:
        return cls(config.silences_file, config.silences_variable,
                   variable_reader=variable_reader)

    def load(self) -> tuple[list[Silence], list[str]]:
        """All silences of every source that reads cleanly, and one problem line per source
        that does not (the caller logs them and goes on)."""
        silences: list[Silence] = []
        problems: list[str] = []
        if self.path is not None:
            try:
                silences += load_silences_file(self.path)
            except SilenceError as exc:
                problems.append(f"{exc}; its silences are ignored until it is fixed")
        if self.variable and self._read_variable is not None:
            source = f"Airflow Variable {self.variable!r}"
            try:
                raw = self._read_variable(self.variable)
                if raw is not None and raw.strip():
                    try:
                        data = json.loads(raw)
                    except json.JSONDecodeError as exc:
                        raise SilenceError(f"{source}: not valid JSON ({exc.msg} at line "
                                           f"{exc.lineno} column {exc.colno}); it must be a "
                                           f"JSON list of silences") from None
                    silences += parse_silences(data, source)
            except SilenceError as exc:
                problems.append(f"{exc}; its silences are ignored until it is fixed")
            except Exception as exc:  # a secrets backend or API server hiccup
                problems.append(f"{source}: could not be read ({type(exc).__name__}); its "
                                f"silences are ignored this evaluation")
        for problem in problems:
            log.error("%s", problem)
        return silences, problems

    def active(self, now: datetime) -> tuple[list[Silence], list[str]]:
        silences, problems = self.load()
        return [s for s in silences if s.active_at(now)], problems
