"""Real OpenTelemetry GenAI spans for the ``otel`` source's tests and bench.

- :func:`instrumented_openai`: the ``opentelemetry-sdk`` with the official
  ``opentelemetry-instrumentation-openai-v2`` around the real ``openai`` client; the spans
  end up in an ``InMemorySpanExporter``.
- :func:`collector_json`: finished spans serialised as the Collector's file / S3 exporter
  writes them: OTLP protobuf (the SDK's own ``encode_spans``) to JSON, then the OTLP/JSON
  spec's differences from protobuf's JSON mapping applied as the Collector's ``pdata``
  marshaler does: trace and span ids in hex (protobuf JSON writes bytes as base64), enums as
  integers; 64-bit integers stay decimal strings.
- :func:`write_landing`: a file under the S3 exporter's default key layout.
- :func:`write_synthetic_spans`: N valid span records, fast, for bench (``bench/ingest.py
  --source otel``): SDK spans encoded once, then replicated with new ids and times.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from google.protobuf.json_format import MessageToDict
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

_ID_KEYS = ("traceId", "spanId", "parentSpanId")


class AttributesProcessor(SpanProcessor):
    """Sets attributes on every span as it starts: how a team adds ``user.id`` or its own
    ``promptops.team`` to the spans an instrumentation makes (as baggage processors do)."""

    def __init__(self, attributes: Mapping[str, Any]) -> None:
        self.attributes = dict(attributes)

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        span.set_attributes(self.attributes)


@contextlib.contextmanager
def instrumented_openai(resource: Mapping[str, Any], span_attributes: Mapping[str, Any]
                        | None = None) -> Iterator[InMemorySpanExporter]:
    """OpenAI client calls made inside the block are traced by the official instrumentation
    into the exporter it yields."""
    from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create(dict(resource)))
    if span_attributes:
        provider.add_span_processor(AttributesProcessor(span_attributes))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        yield exporter
    finally:
        instrumentor.uninstrument()
        provider.shutdown()


def _collector_ids(obj: Any) -> Any:
    """Protobuf JSON's base64 ids to OTLP/JSON's hex, wherever they are (spans, links)."""
    import base64

    if isinstance(obj, dict):
        return {k: (base64.b64decode(v).hex() if k in _ID_KEYS and isinstance(v, str)
                    else _collector_ids(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_collector_ids(v) for v in obj]
    return obj


def collector_dict(spans: Sequence[ReadableSpan]) -> dict[str, Any]:
    """One ``ExportTraceServiceRequest`` as the Collector's JSON marshaler writes it."""
    message = encode_spans(spans)
    return _collector_ids(MessageToDict(message, use_integers_for_enums=True))


def collector_json(spans: Sequence[ReadableSpan]) -> bytes:
    """One line of the Collector's file exporter (no newline)."""
    return orjson.dumps(collector_dict(spans))


def hour_key(hour: datetime, minute: int = 0) -> str:
    """The S3 exporter's default partition: ``year=%Y/month=%m/day=%d/hour=%H/minute=%M``."""
    return f"year={hour:%Y}/month={hour:%m}/day={hour:%d}/hour={hour:%H}/minute={minute:02d}"


def write_landing(root: Path, hour: datetime, lines: Sequence[bytes], name: str = "spans",
                  minute: int = 0) -> Path:
    """Write the lines (ExportTraceServiceRequests) as one file filed under ``hour``."""
    path = root / hour_key(hour, minute) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


# -- synthetic spans for bench ------------------------------------------------------------------

_MODELS = (("gpt-4o", "openai"), ("gpt-4o-mini", "openai"),
           ("claude-3-5-sonnet", "anthropic"), ("gemini-1.5-flash", "gcp.gemini"))


def _templates(hour: datetime) -> list[dict[str, Any]]:
    """One encoded SDK span per model, success and error, in the Collector's JSON."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "bench-app",
                                                        "cloud.region": "eu-west-1"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("opentelemetry.instrumentation.openai_v2")
    t0 = int(hour.timestamp() * 1e9)
    for model, system in _MODELS:
        for failed in (False, True):
            span = tracer.start_span(f"chat {model}", kind=SpanKind.CLIENT, start_time=t0,
                                     attributes={"gen_ai.operation.name": "chat",
                                                 "gen_ai.request.model": model,
                                                 "gen_ai.provider.name": system,
                                                 "user.id": "user-001"})
            if failed:
                span.set_attribute("error.type", "InternalServerError")
                span.set_attribute("http.response.status_code", 500)
                span.set_status(Status(StatusCode.ERROR))
            else:
                span.set_attributes({"gen_ai.response.model": model,
                                     "gen_ai.usage.input_tokens": 420,
                                     "gen_ai.usage.output_tokens": 180,
                                     "gen_ai.usage.cache_read.input_tokens": 64})
            span.end(end_time=t0 + 350_000_000)
    request = collector_dict(exporter.get_finished_spans())
    provider.shutdown()
    return request["resourceSpans"][0]["scopeSpans"][0]["spans"]


def write_synthetic_spans(root: Path, n: int, hour: datetime, *, error_share: float = 0.02,
                          per_line: int = 512, per_file: int = 100_000,
                          seed: int = 0) -> list[Path]:
    """``n`` valid GenAI span records started in ``hour``, in OTLP JSON files filed under
    ``hour`` in ``root`` (``per_line`` spans per ExportTraceServiceRequest, as a batch span
    processor sends them). Returns the files."""
    rng = random.Random(seed)
    templates = _templates(hour)
    ok = [t for t in templates if "status" not in t or not t["status"]]
    bad = [t for t in templates if t.get("status")]
    resource = {"attributes": [
        {"key": "service.name", "value": {"stringValue": "bench-app"}},
        {"key": "cloud.region", "value": {"stringValue": "eu-west-1"}}]}
    scope = {"name": "opentelemetry.instrumentation.openai_v2"}
    base = int(hour.replace(tzinfo=UTC).timestamp() * 1e9)
    files: list[Path] = []
    lines: list[bytes] = []
    written = 0
    while written < n:
        count = min(per_line, n - written)
        spans = []
        for _ in range(count):
            t = dict(rng.choice(bad if rng.random() < error_share else ok))
            start = base + rng.randrange(3_599_000_000_000)
            t["traceId"] = f"{rng.getrandbits(128) | 1:032x}"
            t["spanId"] = f"{rng.getrandbits(64) | 1:016x}"
            t["startTimeUnixNano"] = str(start)
            t["endTimeUnixNano"] = str(start + rng.randrange(50_000_000, 3_000_000_000))
            spans.append(t)
        lines.append(orjson.dumps({"resourceSpans": [
            {"resource": resource, "scopeSpans": [{"scope": scope, "spans": spans}]}]}))
        written += count
        if len(lines) * per_line >= per_file or written >= n:
            files.append(write_landing(root, hour, lines, name=f"bench-{len(files):05d}",
                                       minute=len(files) % 60))
            lines = []
    return files


def spans_hour(spans: Sequence[ReadableSpan]) -> datetime:
    """The hour the first span started in (UTC)."""
    first = min(s.start_time or 0 for s in spans)
    return datetime.fromtimestamp(first / 1e9, UTC).replace(minute=0, second=0, microsecond=0)


def wait_out_the_hour(margin_s: float = 60.0) -> None:
    """Real spans carry the wall clock: sleep past the top of the hour when it is less than
    ``margin_s`` away, so the spans a test makes next all start in one hour."""
    import time

    now = datetime.now(UTC)
    left = (now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
            - now).total_seconds()
    if left < margin_s:
        time.sleep(left + 0.5)
