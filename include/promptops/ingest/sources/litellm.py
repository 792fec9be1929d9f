"""The LiteLLM proxy's spend logs (``LiteLLM_SpendLogs`` in its Postgres) as call records.

The table is read exactly as LiteLLM defines it (model ``LiteLLM_SpendLogs`` of the
``schema.prisma`` shipped in the ``litellm`` package), one ``[start, end)`` window at a
time by ``"startTime"``, in keyset pages ordered by ``("startTime", request_id)`` (the
table's own index), so a rerun of an hour reads the same rows and a row written late lands
in its own hour when that hour is re-read. Only the columns and metadata keys the mapping
needs are selected: never ``messages``, ``response`` or ``proxy_server_request``.

Fixed places (the rest is the mapping's, :mod:`.mapping`):

- ``request_id`` -> ``call_id``; ``model`` (``model_group`` when ``model`` is empty) ->
  ``model`` (neither: rejected, ``missing_field``); ``custom_llm_provider`` -> ``provider``.
- ``"startTime"`` -> ``ts``. Prisma stores ``DateTime`` as UTC in ``timestamp(3)`` without a
  zone, and LiteLLM writes UTC (``_ensure_datetime_utc``), so the column is read as UTC.
- ``latency_ms`` = ``"endTime" - "startTime"``: the whole request as the proxy saw it
  (LiteLLM's own ``request_duration_ms``). ``"completionStartTime"`` is the first token of a
  stream (time to first token), not the call's latency, so it is not used.
- ``status``: ``success`` -> ``success``, ``failure`` -> ``error``; null (rows written before
  LiteLLM had the column, when it logged successes only) -> ``success``; anything else is
  rejected (``invalid_value``). A failure's ``metadata.error_information.error_code`` (an
  HTTP status as text) -> ``http_status``.
- ``prompt_tokens``, ``completion_tokens``; cache reads -> ``cached_tokens`` and cache
  writes -> ``cache_creation_tokens`` from the metadata LiteLLM keeps them in
  (``additional_usage_values``, else ``usage_object``; Anthropic's ``cache_*_input_tokens``
  or OpenAI's ``prompt_tokens_details``).
- ``spend`` -> ``source_cost_usd`` (LiteLLM's own figure, kept beside promptops' price).
- ``api_key`` -> ``api_key_hash``: LiteLLM stores the SHA-256 of the virtual key (its
  ``hash_token``). A value that is not such a hash (a clear ``sk-...`` key logged by a
  misconfigured proxy) is hashed the same way here, so a clear key is never stored, logged
  or kept in a reject.

Mapping paths: ``column.<column>`` reads a column; ``metadata.<key>[.<key>...]`` a key of
the JSON ``metadata`` (e.g. ``metadata.spend_logs_metadata.app`` for the ``spend_logs_metadata``
a caller sends); ``metadata.tags.<prefix>`` the ``<prefix>:<value>`` tag of the request's
tags: LiteLLM keeps them in the ``request_tags`` column (read first) and some versions in
``metadata.tags`` too. Empty strings are no value (LiteLLM's column default is ``""``).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from promptops.contracts.records import INVALID_VALUE, MISSING_FIELD, WRONG_TYPE
from promptops.errors import ConfigError, InvalidInput, PromptOpsError
from promptops.ingest.sources.base import SourcePage, source_reject
from promptops.ingest.sources.mapping import FieldPaths

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

TABLE = "LiteLLM_SpendLogs"
#: The table's columns, as LiteLLM's schema.prisma defines them (``column.`` paths must
#: name one of these).
COLUMNS = frozenset({
    "request_id", "call_type", "api_key", "spend", "total_tokens", "prompt_tokens",
    "completion_tokens", "startTime", "endTime", "request_duration_ms", "completionStartTime",
    "model", "model_id", "model_group", "custom_llm_provider", "api_base", "user", "metadata",
    "cache_hit", "cache_key", "request_tags", "team_id", "organization_id", "end_user",
    "requester_ip_address", "messages", "response", "session_id", "status",
    "mcp_namespaced_tool_name", "billing_agent_id", "agent_id", "proxy_server_request",
    "litellm_call_id", "created_at", "updated_at"})
#: Columns never read: request and response bodies (prompts, answers) are not call metrics.
_NEVER = frozenset({"messages", "response", "proxy_server_request"})
MAX_PAGE_LIMIT = 50_000
_STRING_FIELDS = ("app", "team", "user_id", "prompt_template", "prompt_version", "region",
                  "gpu_node", "predicted_intent", "expected_intent")
_NUMBER_FIELDS = ("relevance_score",)
#: Where LiteLLM keeps cache reads and writes in a row's metadata, first found wins.
_CACHE_READ = (("additional_usage_values", "cache_read_input_tokens"),
               ("additional_usage_values", "prompt_tokens_details", "cached_tokens"),
               ("usage_object", "cache_read_input_tokens"),
               ("usage_object", "prompt_tokens_details", "cached_tokens"))
_CACHE_WRITE = (("additional_usage_values", "cache_creation_input_tokens"),
                ("additional_usage_values", "prompt_tokens_details", "cache_creation_tokens"),
                ("usage_object", "cache_creation_input_tokens"),
                ("usage_object", "prompt_tokens_details", "cache_creation_tokens"))
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_STATUS = {"success": "success", "failure": "error", None: "success"}


class SpendLogUnavailable(PromptOpsError):
    """The LiteLLM database could not be read (connection or query failed)."""


def hash_api_key(value: str | None) -> str | None:
    """The key as LiteLLM stores it: its SHA-256 hex (``hash_token``). A value that already is
    one is kept; anything else (a clear key) is hashed; empty -> None."""
    if not value:
        return None
    if _SHA256_HEX.fullmatch(value):
        return value
    token = value[7:] if value[:7].lower() == "bearer " else value
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class _Getter:
    """One mapping path compiled: the result column it reads, and for tags the prefix."""

    kind: str  # "value" (a selected column or metadata value) or "tag"
    index: int
    prefix: str = ""


def _sql_path(keys: tuple[str, ...] | list[str]) -> str:
    # Keys are literals in the query (not identifiers), quoted as Postgres text literals.
    return "ARRAY[" + ",".join("'" + k.replace("'", "''") + "'" for k in keys) + "]::text[]"


def _quote(column: str) -> str:
    return '"' + column.replace('"', '""') + '"'


class SpendLogSource:
    """Pages of call records from ``LiteLLM_SpendLogs`` (see the module docstring).

    ``connect`` opens a psycopg connection to the proxy's database
    (:func:`promptops.airflow_adapters.connections.postgres_connector`); ``mapping`` says
    which column or metadata key gives the mapped fields
    (``load_source_mapping().litellm``)."""

    def __init__(self, connect: Callable[[], psycopg.Connection], mapping: FieldPaths) -> None:
        self._connect = connect
        self.mapping = mapping
        self._select, self._getters = self._compile(mapping)

    # -- the query ------------------------------------------------------------------------

    _FIXED = ('request_id, "startTime", model, model_group, custom_llm_provider, status, '
              "prompt_tokens, completion_tokens, spend, api_key, "
              '(EXTRACT(EPOCH FROM ("endTime" - "startTime")) * 1000)::float8, '
              "jsonb_typeof(metadata), "
              "metadata #>> '{error_information,error_code}'")
    _N_FIXED = 13

    @classmethod
    def _compile(cls, mapping: FieldPaths) -> tuple[str, dict[str, list[_Getter]]]:
        """The SELECT list and, per mapped field, how to read each of its paths."""
        extra: list[str] = []
        index: dict[str, int] = {}

        def column(expr: str) -> int:
            if expr not in index:
                index[expr] = cls._N_FIXED + len(extra)
                extra.append(expr)
            return index[expr]

        def first_of(paths: tuple[tuple[str, ...], ...]) -> str:
            # JSON null is a value to Postgres; NULLIF makes it SQL NULL so COALESCE skips it.
            return "COALESCE(" + ", ".join(f"NULLIF(metadata #> {_sql_path(p)}, 'null'::jsonb)"
                                           for p in paths) + ")"

        column(first_of(_CACHE_READ))
        column(first_of(_CACHE_WRITE))
        getters: dict[str, list[_Getter]] = {}
        for name in (*_STRING_FIELDS, *_NUMBER_FIELDS):
            out = []
            for path in mapping.paths(name):
                kind, _, rest = path.partition(".")
                if kind == "column":
                    if rest not in COLUMNS or rest in _NEVER:
                        raise ConfigError(
                            f"source mapping litellm.{name}: {path!r} names no readable column "
                            f"of {TABLE}; use one of {', '.join(sorted(COLUMNS - _NEVER))}")
                    out.append(_Getter("value", column(_quote(rest))))
                elif rest.startswith("tags.") and rest != "tags.":
                    prefix = rest[5:]
                    out.append(_Getter("tag", column("request_tags"), prefix))
                    out.append(_Getter("tag", column("metadata -> 'tags'"), prefix))
                else:
                    out.append(_Getter("value", column(f"metadata #> {_sql_path(rest.split('.'))}")))
            getters[name] = out
        return ", ".join([cls._FIXED, *extra]), getters

    def _query(self, limit: int, after: bool) -> str:
        keyset = ' AND ("startTime", request_id) > (%s, %s)' if after else ""
        # Identifiers are quoted and metadata keys escaped as literals (_compile); the window
        # and the keyset are parameters.
        return (f"SELECT {self._select} FROM {_quote(TABLE)} "  # noqa: S608
                f'WHERE "startTime" >= %s AND "startTime" < %s{keyset} '
                f'ORDER BY "startTime", request_id LIMIT {int(limit)}')

    # -- pages ----------------------------------------------------------------------------

    def iter_call_record_page_bodies(self, start: datetime, end: datetime,
                                     limit: int = 10_000) -> Iterator[SourcePage]:
        """The rows with ``start <= "startTime" < end`` as pages of at most ``limit`` rows,
        in ``("startTime", request_id)`` order."""
        if not 1 <= limit <= MAX_PAGE_LIMIT:
            raise InvalidInput(f"limit must be 1..{MAX_PAGE_LIMIT}, got {limit}")
        if start.tzinfo is None or end.tzinfo is None:
            raise InvalidInput("start and end must be timezone-aware (UTC)")
        if not start < end:
            raise InvalidInput(f"start {start.isoformat()} must be before end {end.isoformat()}")
        # The columns are timestamp(3) without zone, holding UTC.
        lo = start.astimezone(UTC).replace(tzinfo=None)
        hi = end.astimezone(UTC).replace(tzinfo=None)
        first, more = self._query(limit, after=False), self._query(limit, after=True)
        try:
            conn = self._connect()
        except Exception as exc:
            raise SpendLogUnavailable(
                f"cannot connect to the LiteLLM database ({type(exc).__name__}: "
                f"{_first_line(exc)}); check the Airflow Postgres connection (host, port, "
                f"login, password, schema = the proxy's database)") from None
        try:
            _fast_json(conn)
            with conn.cursor() as cur:
                last: tuple[datetime, str] | None = None
                while True:
                    try:
                        if last is None:
                            cur.execute(first, (lo, hi))
                        else:
                            cur.execute(more, (lo, hi, *last))
                        rows = cur.fetchall()
                    except Exception as exc:
                        raise SpendLogUnavailable(
                            f"reading {TABLE} failed ({type(exc).__name__}: {_first_line(exc)});"
                            f" the table must be LiteLLM's (schema.prisma, model {TABLE}) in "
                            f"the connection's database") from None
                    if not rows:
                        return
                    yield self._page(rows)
                    if len(rows) < limit:
                        return
                    last = (rows[-1][1], rows[-1][0])
        finally:
            conn.close()

    def _page(self, rows: list[tuple]) -> SourcePage:
        records: list[dict[str, Any]] = []
        rejects: list[dict[str, Any]] = []
        getters = self._getters
        for row in rows:
            (request_id, start_time, model, model_group, provider, status, prompt, completion,
             spend, api_key, latency, meta_type, error_code, cache_read,
             cache_write) = row[:15]
            problem = None
            if not model and not model_group:
                problem = (MISSING_FIELD, "model", "neither model nor model_group is set")
            elif status not in _STATUS:
                problem = (INVALID_VALUE, "status",
                           f"status {status!r} is neither 'success' nor 'failure'")
            elif meta_type not in (None, "object"):
                problem = (WRONG_TYPE, "metadata", f"metadata is a JSON {meta_type}, not an object")
            if problem is not None:
                rejects.append(self._reject(row, *problem))
                continue
            record: dict[str, Any] = {
                "call_id": request_id,
                "ts": start_time.isoformat() + "+00:00",
                "model": model or model_group,
                "provider": provider or None,
                "status": _STATUS[status],
                "latency_ms": latency,
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "source_cost_usd": spend,
                "api_key_hash": hash_api_key(api_key),
                "cached_tokens": _count(cache_read),
                "cache_creation_tokens": _count(cache_write),
            }
            if status == "failure" and error_code and error_code.isdigit() and \
                    100 <= int(error_code) <= 599:
                record["http_status"] = int(error_code)
            for name, paths in getters.items():
                value = None
                for g in paths:
                    value = (_tag(row[g.index], g.prefix) if g.kind == "tag"
                             else _scalar(row[g.index]))
                    if value is not None:
                        break
                if value is not None and name in _STRING_FIELDS:
                    value = str(value) if not isinstance(value, str) else value
                elif value is not None:  # a number field: a numeric string is a number
                    value = _number(value)
                record[name] = value
            records.append(record)
        return SourcePage(records, rejects)

    @staticmethod
    def _reject(row: tuple, reason: str, field: str, why: str) -> dict[str, Any]:
        raw = {"request_id": row[0], "startTime": row[1], "model": row[2],
               "model_group": row[3], "custom_llm_provider": row[4], "status": row[5],
               "prompt_tokens": row[6], "completion_tokens": row[7], "spend": row[8],
               "api_key_hash": hash_api_key(row[9]), "problem": why}
        return source_reject(reason, raw, field=field,
                             call_id=row[0] if isinstance(row[0], str) else None)


def _scalar(value: Any) -> Any:
    """A column or metadata value usable as a field: empty strings, objects and lists are
    no value."""
    if value is None or value == "" or isinstance(value, dict | list):
        return None
    return value


def _tag(tags: Any, prefix: str) -> str | None:
    """The value of the first ``<prefix>:<value>`` tag in a JSON list of tags."""
    if isinstance(tags, str):  # a list LiteLLM stored as JSON text
        try:
            tags = orjson.loads(tags)
        except orjson.JSONDecodeError:
            return None
    if not isinstance(tags, list):
        return None
    head = prefix + ":"
    for t in tags:
        if isinstance(t, str) and t.startswith(head) and len(t) > len(head):
            return t[len(head):]
    return None


def _count(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _number(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value  # the shared validation rejects it, naming the field
    return value


def _first_line(exc: Exception) -> str:
    # psycopg messages carry no password; keep only their first line.
    return (str(exc).strip().splitlines() or [""])[0][:300]


def _fast_json(conn: Any) -> None:
    """Parse jsonb with orjson on this connection (the metadata values are many and small)."""
    from psycopg.types.json import set_json_loads

    set_json_loads(orjson.loads, conn)
