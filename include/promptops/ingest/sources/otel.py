"""OpenTelemetry GenAI spans as call records (``PROMPTOPS_SOURCE=otel``).

**What is read.** OTLP JSON: one ``ExportTraceServiceRequest`` per line, as the
OpenTelemetry Collector's ``file`` exporter (``format: json``) and its ``awss3`` exporter
(``marshaler: otlp_json``) write it, optionally gzip-compressed (``.gz``). That is the
OTLP/JSON encoding of the spec, which differs from protobuf's own JSON mapping:

- ``traceId`` / ``spanId`` are lowercase **hex** (32 and 16 characters), not base64. Ids in
  base64 (what ``google.protobuf.json_format`` writes) are accepted too and turned to hex.
- enums (``kind``, ``status.code``) are integers (``2`` = error); their names
  (``STATUS_CODE_ERROR``) are accepted too; 64-bit integers (``startTimeUnixNano``,
  ``intValue``) are decimal strings, or numbers.

**Where.** Under the landing area (``PROMPTOPS_OTEL_LANDING_URI``, ``file://`` or ``s3://``,
read through a ``UPath`` or Airflow's ``ObjectStoragePath`` as push delivery does), in
hour-partitioned keys::

    <landing>/year=YYYY/month=MM/day=DD/hour=HH/[anything below]/<name>.json[l][.gz]

which is what the S3 exporter writes with its default ``s3_partition_format``
(``year=%Y/month=%m/day=%d/hour=%H/minute=%M``) when the landing URI is
``s3://<s3_bucket>/<s3_prefix>``. The file exporter has no time
partitioning of its own: point its ``path`` (with ``rotation``) at such a folder, or have
whatever ships its files file them so. Hidden files (``.``/``_`` prefixes) are skipped, so a
file still being written under a temporary name is not read half-way.

**Which hour a span belongs to.** The hour of its *start time*. The Collector files a span
under the hour it *exported* it, which is the same hour or a later one (a Collector whose
clock runs behind the app's could file it earlier: such a span is not found), so reading
``[start, end)`` reads the files of those hours and of the ``lateness_hours`` hours after
(default 1), keeping only the spans that started inside the window. A late span lands in its
own hour on the next hourly run (which re-reads the hour before), and a rerun of an hour reads
the same files and gives the same records, in the same order (files sorted by key). What
cannot be placed by its start time (a line that is not JSON, a span with an unreadable start)
belongs to the hour of its file's key, so it is quarantined exactly once.

**Mapping** (the GenAI semantic conventions, and the older names instrumentations still
emit): ``call_id`` = ``<traceId>:<spanId>``; ``ts`` = start (RFC 3339, microseconds);
``latency_ms`` = end - start; ``model`` = ``gen_ai.response.model`` else
``gen_ai.request.model``; ``provider`` = ``gen_ai.provider.name`` (``gen_ai.system``);
tokens from ``gen_ai.usage.input_tokens`` / ``output_tokens`` (``prompt_tokens`` /
``completion_tokens``), cache reads and writes from their attributes (:data:`CACHE_READ`,
:data:`CACHE_WRITE`); ``status`` is ``error`` when the span's status is error or it has
``error.type``; ``http_status`` and ``error_code`` from ``http.response.status_code``. The
fields of the mapping (``app``, ``team``, ``user_id``...) come from its ``span.`` /
``resource.`` / ``scope.`` paths, null when none holds a value. A failed call that reports
no usage had none billed: its tokens are 0. A successful one without usage keeps its tokens
missing, so validation quarantines it (``missing_field``) rather than inventing a count.

**Skipped** (counted in :attr:`OtelSpanSource.skipped` and logged): spans that are not GenAI
calls (no ``gen_ai.operation.name`` nor ``gen_ai.request.model``) and GenAI spans of an
operation that is not a model call (``execute_tool``, ``invoke_agent``...).
**Rejected** (on the page, so they reach the quarantine with their reason): a line that is
not JSON (``invalid_json``) or not an OTLP object (``not_an_object``), a bad trace or span id
(``invalid_value``), an unreadable start or end, or an end before the start
(``bad_timestamp``).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import logging
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from upath import UPath

from promptops.contracts.records import (
    BAD_TIMESTAMP,
    INVALID_VALUE,
    NOT_AN_OBJECT,
)
from promptops.errors import InvalidInput
from promptops.ingest.sources.base import SourcePage, source_reject
from promptops.ingest.sources.mapping import FieldPaths
from promptops.timeutil import as_utc, hour_floor, hours_between

log = logging.getLogger(__name__)

#: Reject reason of a line that does not parse as JSON (as push delivery names it).
INVALID_JSON = "invalid_json"
#: Reject reason of a compressed file that cannot be read (to its end).
UNREADABLE_FILE = "unreadable_file"
#: Operations that are one call to a model (GenAI semantic conventions, and older names).
MODEL_CALLS = frozenset({"chat", "text_completion", "completion", "generate_content",
                         "embeddings", "embedding"})
#: Cached input tokens (reads), current name first; then cache writes (Anthropic bills them).
CACHE_READ = ("gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read_input_tokens",
              "gen_ai.usage.cached_tokens")
CACHE_WRITE = ("gen_ai.usage.cache_creation.input_tokens",
               "gen_ai.usage.cache_creation_input_tokens")
INPUT_TOKENS = ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")
OUTPUT_TOKENS = ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens")
PROVIDER = ("gen_ai.provider.name", "gen_ai.system")
HTTP_STATUS = ("http.response.status_code", "http.status_code")
#: Record fields read from the span's own attributes, first name that holds a value.
_FIXED = (("provider", PROVIDER), ("http_status", HTTP_STATUS),
          ("prompt_tokens", INPUT_TOKENS), ("completion_tokens", OUTPUT_TOKENS),
          ("cached_tokens", CACHE_READ), ("cache_creation_tokens", CACHE_WRITE))
#: Status code ERROR in OTLP (an integer in OTLP/JSON, its name in protobuf's JSON).
_STATUS_ERROR = (2, "STATUS_CODE_ERROR")
_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")
_HOUR_KEY = "year={:%Y}/month={:%m}/day={:%d}/hour={:%H}"

StoragePathFactory = Callable[[str], UPath]


class _Unreadable(str):
    """What stopped a file from being read to its end."""


class _Malformed(Exception):
    def __init__(self, reason: str, field: str) -> None:
        self.reason, self.field = reason, field


def _value(v: Any) -> Any:
    """The Python value of an OTLP ``AnyValue`` (``{"stringValue": ...}`` etc.)."""
    if not isinstance(v, dict):
        return None
    if "stringValue" in v:
        return v["stringValue"]
    if "intValue" in v:
        try:
            return int(v["intValue"])  # a decimal string in OTLP/JSON
        except (TypeError, ValueError):
            return None
    if "doubleValue" in v:
        d = v["doubleValue"]
        return float(d) if isinstance(d, int | float | str) else None
    if "boolValue" in v:
        return v["boolValue"]
    if "arrayValue" in v:
        return [_value(x) for x in (v["arrayValue"] or {}).get("values") or []]
    return None


def _attributes(kvs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not isinstance(kvs, list):
        return out
    for kv in kvs:
        try:
            key, value = kv["key"], kv["value"]
            # Strings first: most attributes are, and this runs for every one of them.
            text = value.get("stringValue")
            out[key] = text if text is not None else _value(value)
        except (KeyError, TypeError, AttributeError):
            continue
    return out


def _hex_id(raw: Any, size: int, name: str) -> str:
    """An id as lowercase hex: OTLP/JSON's hex, or protobuf JSON's base64; all zeros is
    invalid (the spec's "no id")."""
    data = b""
    if isinstance(raw, str):
        try:
            data = bytes.fromhex(raw) if len(raw) == 2 * size else \
                base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            data = b""
    if len(data) != size or not any(data):
        raise _Malformed(INVALID_VALUE, name)
    return raw.lower() if len(raw) == 2 * size else data.hex()


def _nanos(raw: Any, name: str) -> int:
    try:
        value = int(raw)  # a decimal string in OTLP/JSON
    except (TypeError, ValueError):
        raise _Malformed(BAD_TIMESTAMP, name) from None
    if value <= 0:
        raise _Malformed(BAD_TIMESTAMP, name)
    return value


_MINUTES: dict[int, str] = {}


def _rfc3339(nanos: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (the minute's prefix is formatted once)."""
    secs, rest = divmod(nanos, 1_000_000_000)
    minute, sec = divmod(secs, 60)
    prefix = _MINUTES.get(minute)
    if prefix is None:
        if len(_MINUTES) > 10_000:
            _MINUTES.clear()
        prefix = _MINUTES[minute] = datetime.fromtimestamp(
            minute * 60, UTC).strftime("%Y-%m-%dT%H:%M:")
    return f"{prefix}{sec:02d}.{rest // 1000:06d}Z"


class OtelSpanSource:
    """Call records from OTLP JSON span files in the landing area (see the module's doc).

    ``skipped`` counts the spans that were not model calls, per reason, over this source's
    life; ``files_read`` the files opened."""

    def __init__(self, landing_uri: str, mapping: FieldPaths, *, lateness_hours: int = 1,
                 storage_path: StoragePathFactory = UPath) -> None:
        if lateness_hours < 0:
            raise InvalidInput(f"lateness_hours is {lateness_hours}: use 0 or more hours")
        self.landing_uri = landing_uri
        self.root = storage_path(landing_uri.rstrip("/"))
        self.lateness_hours = lateness_hours
        self.skipped: Counter[str] = Counter()
        self.files_read = 0
        # Mapped fields: (field, [(where, key)]) with where span/resource/scope.
        self._paths: list[tuple[str, list[tuple[str, str]]]] = []
        for name in FieldPaths.model_fields:
            paths = [tuple(p.split(".", 1)) for p in mapping.paths(name)]
            self._paths.append((name, [(w, k) for w, k in paths]))

    def __repr__(self) -> str:
        return f"OtelSpanSource({self.landing_uri!r})"

    # -- files ----------------------------------------------------------------------------

    def files_for_hour(self, hour: datetime) -> list[UPath]:
        """The span files filed under ``hour``'s key, sorted (hidden files left out)."""
        directory = self.root / _HOUR_KEY.format(hour, hour, hour, hour)
        if not directory.exists():
            return []
        found = [p for p in directory.rglob("*")
                 if p.name.endswith(_SUFFIXES) and not p.name.startswith((".", "_"))
                 and not any(part.startswith((".", "_")) for part in
                             p.path[len(directory.path):].split("/")[:-1])]
        return sorted((p for p in found if p.is_file()), key=lambda p: p.path)

    def _lines(self, path: UPath) -> Iterator[bytes | _Unreadable]:
        self.files_read += 1
        with path.open("rb") as raw:
            fh = gzip.open(raw, "rb") if path.name.endswith(".gz") else raw
            try:
                for line in fh:
                    if line.strip():
                        yield line
            except (OSError, EOFError, zlib.error) as exc:  # a corrupt or cut-off .gz
                yield _Unreadable(f"{type(exc).__name__}: {exc}")

    # -- pages ----------------------------------------------------------------------------

    def iter_call_record_page_bodies(self, start: datetime, end: datetime,
                                     limit: int = 10_000) -> Iterator[SourcePage]:
        """Pages of at most ``limit`` records (and rejects) for the spans that started in
        ``[start, end)``."""
        if limit < 1:
            raise InvalidInput(f"limit is {limit}: a page holds at least 1 record")
        start, end = as_utc(start), as_utc(end)
        lo, hi = _epoch_nanos(start), _epoch_nanos(end)
        last = hour_floor(end - timedelta(microseconds=1))
        hours = hours_between(hour_floor(start),
                              last + timedelta(hours=self.lateness_hours + 1))
        records: list[dict[str, Any]] = []
        rejects: list[dict[str, Any]] = []
        counts: Counter[str] = Counter()
        for hour in hours:
            # Only this key's own hour takes what cannot be placed by a start time.
            own = start <= hour < end
            for path in self.files_for_hour(hour):
                for line in self._lines(path):
                    if isinstance(line, _Unreadable):
                        log.warning("span file %s: unreadable after the lines above (%s)",
                                    path, line)
                        if own:
                            rejects.append(source_reject(
                                UNREADABLE_FILE, {"file": str(path), "error": str(line)},
                                field="file"))
                            counts["rejected"] += 1
                        continue
                    self._line(line, lo, hi, own, records, rejects, counts)
                    # One line (a batch of spans) may fill several pages.
                    while len(records) + len(rejects) >= limit:
                        take = rejects[:limit]
                        rest = limit - len(take)
                        yield SourcePage(records[:rest], take)
                        records, rejects = records[rest:], rejects[len(take):]
        if records or rejects:
            yield SourcePage(records, rejects)
        skipped = {k: v for k, v in counts.items() if k.startswith("skipped:")}
        self.skipped.update({k.split(":", 1)[1]: v for k, v in skipped.items()})
        log.info("otel spans %s..%s from %s (%d hours of files): %d calls, %d rejected, "
                 "skipped %s", start.isoformat(), end.isoformat(), self.landing_uri,
                 len(hours), counts["calls"], counts["rejected"],
                 {k.split(":", 1)[1]: v for k, v in skipped.items()} or "none")

    def _line(self, line: bytes, lo: int, hi: int, own: bool, records: list[dict[str, Any]],
              rejects: list[dict[str, Any]], counts: Counter[str]) -> None:
        try:
            request = orjson.loads(line)
        except orjson.JSONDecodeError:
            if own:
                rejects.append(source_reject(
                    INVALID_JSON, line.decode("utf-8", errors="replace").rstrip("\r\n")))
                counts["rejected"] += 1
            return
        resource_spans = request.get("resourceSpans") if isinstance(request, dict) else None
        if not isinstance(resource_spans, list):
            if own:
                rejects.append(source_reject(NOT_AN_OBJECT, request, field="resourceSpans"))
                counts["rejected"] += 1
            return
        for rs in resource_spans:
            if not isinstance(rs, dict):
                continue
            resource = _attributes((rs.get("resource") or {}).get("attributes"))
            for ss in rs.get("scopeSpans") or ():
                if not isinstance(ss, dict):
                    continue
                scope = ss.get("scope") or {}
                fields = self._compile(resource, {"name": scope.get("name"),
                                                  "version": scope.get("version")})
                for span in ss.get("spans") or ():
                    self._span(span, fields, lo, hi, own, records, rejects, counts)

    def _compile(self, resource: dict[str, Any],
                 scope: dict[str, Any]) -> list[tuple[str, list[str], Any]]:
        """The mapping for one resource and scope: per field, the span attributes to try in
        order, then the value of the first resource/scope path that holds one (paths after
        it can never win)."""
        compiled = []
        for name, paths in self._paths:
            keys: list[str] = []
            fallback = None
            for where, key in paths:
                if where == "span":
                    keys.append(key)
                    continue
                fallback = (resource if where == "resource" else scope).get(key)
                if fallback is not None:
                    break
            if keys or fallback is not None:
                compiled.append((name, keys, fallback))
        return compiled

    def _span(self, span: Any, fields: list[tuple[str, list[str], Any]], lo: int, hi: int, own: bool, records: list[dict[str, Any]],
              rejects: list[dict[str, Any]], counts: Counter[str]) -> None:
        if not isinstance(span, dict):
            if own:
                rejects.append(source_reject(NOT_AN_OBJECT, span))
                counts["rejected"] += 1
            return
        attrs = _attributes(span.get("attributes"))
        operation = attrs.get("gen_ai.operation.name")
        if operation is None and attrs.get("gen_ai.request.model") is None:
            counts["skipped:not_genai"] += 1
            return
        if operation is not None and operation not in MODEL_CALLS:
            counts["skipped:not_model_call"] += 1
            return
        try:
            start = _nanos(span.get("startTimeUnixNano"), "startTimeUnixNano")
        except _Malformed as bad:
            if own:
                rejects.append(source_reject(bad.reason, span, field=bad.field))
                counts["rejected"] += 1
            return
        if not lo <= start < hi:
            return  # another hour's span (its own read places it)
        call_id = None
        try:
            call_id = (f"{_hex_id(span.get('traceId'), 16, 'traceId')}:"
                       f"{_hex_id(span.get('spanId'), 8, 'spanId')}")
            end = _nanos(span.get("endTimeUnixNano"), "endTimeUnixNano")
            if end < start:
                raise _Malformed(BAD_TIMESTAMP, "endTimeUnixNano")
        except _Malformed as bad:
            rejects.append(source_reject(bad.reason, span, field=bad.field, call_id=call_id))
            counts["rejected"] += 1
            return
        records.append(self._record(call_id, start, end, span, attrs, fields))
        counts["calls"] += 1

    @staticmethod
    def _record(call_id: str, start: int, end: int, span: dict[str, Any],
                attrs: dict[str, Any], fields: list[tuple[str, list[str], Any]]
                ) -> dict[str, Any]:
        get = attrs.get
        status = span.get("status")
        code = status.get("code") if isinstance(status, dict) else None
        failed = code in _STATUS_ERROR or get("error.type") is not None
        record: dict[str, Any] = {
            "call_id": call_id,
            "ts": _rfc3339(start),
            "latency_ms": (end - start) / 1e6,
            "status": "error" if failed else "success",
        }
        # Keys with no value are left out, as the API leaves out optional fields.
        model = get("gen_ai.response.model") or get("gen_ai.request.model")
        if model is not None:
            record["model"] = model
        for name, names in _FIXED:
            for key in names:
                value = get(key)
                if value is not None:
                    record[name] = value
                    break
        if "http_status" in record and failed:
            record["error_code"] = record["http_status"]
        if failed:  # a failed call that reports no usage was billed none
            record.setdefault("prompt_tokens", 0)
            record.setdefault("completion_tokens", 0)
        for name, keys, fallback in fields:
            value = None
            for key in keys:
                value = get(key)
                if value is not None:
                    break
            else:
                value = fallback
            if value is not None:
                record[name] = value
        return record


def _epoch_nanos(ts: datetime) -> int:
    delta = ts - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
