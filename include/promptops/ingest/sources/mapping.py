"""Which attribute, column or metadata key gives each call-record field, per source.

``include/config/sources.yaml`` (another file: ``PROMPTOPS_SOURCE_MAPPING_FILE``) maps the
call-record fields a source has no fixed place for to an ordered list of *paths*; the first
path that holds a value wins, and a field with no path, or none that holds a value, is null.
Path syntax is the source's own:

- ``otel``: ``span.<attribute>`` (the span's attributes), ``resource.<attribute>`` (its
  resource's), ``scope.name``;
- ``litellm``: ``column.<column>`` (a column of ``LiteLLM_SpendLogs``) and
  ``metadata.<key>[.<key>...]`` (its JSON ``metadata``; ``metadata.tags.<prefix>`` reads a
  ``<prefix>:<value>`` tag of its ``tags`` list).

A file that names a source replaces the default paths of the fields it names, field by
field; the other fields keep their defaults. Errors name the file, the source and the
field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from promptops.errors import ConfigError

#: The call-record fields a mapping may give (the rest have fixed places in each source).
MappedField = Literal["app", "team", "user_id", "prompt_template", "prompt_version", "region",
                      "gpu_node", "predicted_intent", "expected_intent", "relevance_score"]
DEFAULT_FILE = Path(__file__).resolve().parents[3] / "config" / "sources.yaml"
_PREFIXES = {"otel": ("span.", "resource.", "scope."), "litellm": ("column.", "metadata.")}


class FieldPaths(BaseModel):
    """One source's paths per field (a field left out keeps its default)."""

    model_config = ConfigDict(extra="forbid")

    app: list[str] | None = None
    team: list[str] | None = None
    user_id: list[str] | None = None
    prompt_template: list[str] | None = None
    prompt_version: list[str] | None = None
    region: list[str] | None = None
    gpu_node: list[str] | None = None
    predicted_intent: list[str] | None = None
    expected_intent: list[str] | None = None
    relevance_score: list[str] | None = None

    def paths(self, name: str) -> list[str]:
        return list(getattr(self, name) or [])


class SourceMapping(BaseModel):
    """The whole file: one :class:`FieldPaths` per source."""

    model_config = ConfigDict(extra="forbid")

    otel: FieldPaths = Field(default_factory=FieldPaths)
    litellm: FieldPaths = Field(default_factory=FieldPaths)

    @field_validator("otel", "litellm")
    @classmethod
    def _known_paths(cls, value: FieldPaths, info: ValidationInfo) -> FieldPaths:
        prefixes = _PREFIXES[str(info.field_name)]
        for name, paths in value.model_dump(exclude_none=True).items():
            for p in paths:
                if not isinstance(p, str) or not p.startswith(prefixes) or p.endswith("."):
                    raise ValueError(f"{name}: path {p!r} must start with one of "
                                     f"{', '.join(prefixes)} and name a key")
        return value

    def for_source(self, source: Literal["otel", "litellm"]) -> FieldPaths:
        return getattr(self, source)


def _read(path: Path) -> SourceMapping:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"source mapping {path}: cannot read it ({exc}); set "
                          f"PROMPTOPS_SOURCE_MAPPING_FILE to a readable file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"source mapping {path}: not valid YAML ({exc})") from None
    try:
        return SourceMapping.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}"
                             for e in exc.errors())
        raise ConfigError(f"source mapping {path}: {problems}. Each source (otel, litellm) "
                          f"maps fields ({', '.join(FieldPaths.model_fields)}) to a list of "
                          f"paths") from None


def load_source_mapping(path: str | Path | None = None) -> SourceMapping:
    """The shipped defaults, with the fields named in ``path`` (if any) replaced."""
    defaults = _read(DEFAULT_FILE)
    if path is None or Path(path).resolve() == DEFAULT_FILE:
        return defaults
    mine = _read(Path(path))
    merged = {}
    for source in ("otel", "litellm"):
        base = getattr(defaults, source).model_dump()
        base.update(getattr(mine, source).model_dump(exclude_none=True))
        merged[source] = base
    return SourceMapping.model_validate(merged)
