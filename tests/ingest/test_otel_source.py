"""The ``otel`` source on real spans: the official OpenAI instrumentation around the real
``openai`` client calling the simulator's ``/v1/chat/completions``, exported in memory and
serialised as the Collector's file exporter writes it; then read back through
:class:`OtelSpanSource`, validated and ingested into a lake."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import openai
import orjson
import pytest
from google.protobuf.json_format import MessageToDict
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import format_span_id, format_trace_id

from promptops.ingest.pull import ingest_hour, validate_call_page
from promptops.ingest.sources.mapping import FieldPaths, load_source_mapping
from promptops.ingest.sources.otel import OtelSpanSource
from promptops.lake.store import Lake
from promptops.simulator import SimulatorProcess
from tests.helpers.otel_spans import (
    collector_dict,
    collector_json,
    instrumented_openai,
    spans_hour,
    wait_out_the_hour,
    write_landing,
    write_synthetic_spans,
)
from tests.helpers.simulator import settled_log

JUDGE_PATH = "/v1/chat/completions"
RESOURCE = {"service.name": "support-chat", "service.namespace": "payments",
            "cloud.region": "eu-west-1"}
QUESTIONS = ["Why was I charged twice?", "How do I reset my password?",
             "Cancel my subscription", "Where is my invoice?", "Change my address"]
MAPPING = load_source_mapping().otel


@pytest.fixture(scope="module")
def traffic() -> dict[str, Any]:
    """Five answered calls and two failed ones (the simulator's 500), inside a request span
    of the app (not a GenAI call) next to a tool span (a GenAI span, not a model call)."""
    wait_out_the_hour()
    with SimulatorProcess(api_key="otel-key") as sim, \
            instrumented_openai(RESOURCE, {"user.id": "user-042"}) as exporter:
        client = openai.OpenAI(base_url=sim.url + "/v1", api_key=sim.api_key, max_retries=0)
        from opentelemetry.trace import get_tracer

        # The instrumentor's provider is not global: the app's own spans use one like it.
        provider = TracerProvider(resource=Resource.create(RESOURCE))
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = get_tracer("support-chat.handlers", tracer_provider=provider)
        usages = []
        with tracer.start_as_current_span("POST /ask"):
            for q in QUESTIONS:
                r = client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": q}])
                usages.append((r.usage.prompt_tokens, r.usage.completion_tokens, r.model))
            with tracer.start_as_current_span("execute_tool lookup_invoice",
                                              attributes={"gen_ai.operation.name":
                                                          "execute_tool"}):
                pass
            sim.set_faults([{"kind": "error", "code": 5000, "times": 2,
                             "path_prefix": JUDGE_PATH}])
            for q in QUESTIONS[:2]:
                with pytest.raises(openai.InternalServerError):
                    client.chat.completions.create(
                        model="gpt-4o-mini", messages=[{"role": "user", "content": q}])
        assert len(settled_log(sim, 7, JUDGE_PATH)) == 7
        spans = list(exporter.get_finished_spans())
    calls = [s for s in spans if s.attributes.get("gen_ai.request.model")]
    assert len(calls) == 7 and len(spans) == 9
    return {"spans": spans, "calls": calls, "usages": usages, "hour": spans_hour(spans)}


def _read(root, hour: datetime, mapping: FieldPaths = MAPPING, limit: int = 10_000,
          **kw: Any):
    source = OtelSpanSource(f"file://{root}", mapping, **kw)
    pages = list(source.iter_call_record_page_bodies(hour, hour + timedelta(hours=1),
                                                     limit=limit))
    return source, pages


def _call_id(span) -> str:
    return f"{format_trace_id(span.context.trace_id)}:{format_span_id(span.context.span_id)}"


def test_real_spans_become_call_records(traffic, tmp_path):
    hour = traffic["hour"]
    write_landing(tmp_path, hour, [collector_json(traffic["spans"])])
    source, pages = _read(tmp_path, hour)
    records = [r for p in pages for r in p.records()]
    assert [p.rejects for p in pages] == [[]]
    # The two spans that are no model call are skipped and counted, nothing else.
    assert dict(source.skipped) == {"not_genai": 1, "not_model_call": 1}
    by_id = {r["call_id"]: r for r in records}
    assert list(by_id) == [_call_id(s) for s in traffic["calls"]]

    for span, (prompt, completion, model) in zip(traffic["calls"][:5], traffic["usages"],
                                                 strict=True):
        r = by_id[_call_id(span)]
        assert (r["prompt_tokens"], r["completion_tokens"], r["model"]) == \
            (prompt, completion, model)
        assert r["status"] == "success" and r["provider"] == "openai"
        start = datetime.fromtimestamp(span.start_time // 1000 / 1e6, UTC)
        assert r["ts"] == start.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        assert r["latency_ms"] == pytest.approx((span.end_time - span.start_time) / 1e6)
        # The mapping's defaults: resource service.name / service.namespace / cloud.region,
        # the span's user.id (set by the app's span processor).
        assert (r["app"], r["team"], r["region"], r["user_id"]) == \
            ("support-chat", "payments", "eu-west-1", "user-042")
        # Nothing gives these: absent (null), never invented.
        for name in ("prompt_template", "prompt_version", "gpu_node", "relevance_score",
                     "predicted_intent", "error_code", "cached_tokens"):
            assert name not in r
    for span in traffic["calls"][5:]:
        r = by_id[_call_id(span)]
        assert r["status"] == "error" and r["model"] == "gpt-4o-mini"
        assert (r["prompt_tokens"], r["completion_tokens"]) == (0, 0)

    checked = validate_call_page(pages[0], hour, hour + timedelta(hours=1))
    assert checked.rejects == [] and checked.good.num_rows == 7
    good = checked.good.to_pylist()
    assert [g["status"] for g in good].count("error") == 2
    assert {g["prompt_template"] for g in good} == {None}


def test_protobuf_json_ids_in_base64_read_as_the_same_calls(traffic, tmp_path):
    hour = traffic["hour"]
    proto_json = orjson.dumps(MessageToDict(encode_spans(traffic["spans"])))
    assert b"STATUS_CODE_ERROR" in proto_json  # protobuf's own mapping: enum names, base64
    write_landing(tmp_path / "proto", hour, [proto_json])
    write_landing(tmp_path / "collector", hour, [collector_json(traffic["spans"])])
    _, a = _read(tmp_path / "proto", hour)
    _, b = _read(tmp_path / "collector", hour)
    assert a[0].records() == b[0].records()


def test_ingest_hour_late_files_rerun_and_next_hour(traffic, tmp_path):
    hour = traffic["hour"]
    spans = traffic["spans"]
    # Exported in two batches: the second one filed under the next hour (late).
    write_landing(tmp_path / "landing", hour, [collector_json(spans[:4])], minute=59)
    write_landing(tmp_path / "landing", hour + timedelta(hours=1),
                  [collector_json(spans[4:])], minute=2)
    lake = Lake(f"file://{tmp_path / 'lake'}")
    source = OtelSpanSource(f"file://{tmp_path / 'landing'}", MAPPING)
    first = ingest_hour(source, lake, hour, run_id="r1", page_size=3)
    want = [_call_id(s) for s in traffic["calls"]]
    got = lake.read_partition("calls", hour).column("call_id").to_pylist()
    assert got == want and first.written == 7 and first.pages == 3
    # A rerun reads the same files: the same partition.
    again = ingest_hour(source, lake, hour, run_id="r2", page_size=3)
    assert lake.read_partition("calls", hour).column("call_id").to_pylist() == want
    assert again.written == 7 and again.duplicates == 0
    # The next hour does not take the late spans of this one.
    nxt = ingest_hour(source, lake, hour + timedelta(hours=1), run_id="r3")
    assert nxt.received == 0
    # Without the lateness hour, the late batch is not seen.
    strict = OtelSpanSource(f"file://{tmp_path / 'landing'}", MAPPING, lateness_hours=0)
    _, pages = (strict, list(strict.iter_call_record_page_bodies(
        hour, hour + timedelta(hours=1))))
    assert sum(len(p.records()) for p in pages) == sum(
        1 for s in spans[:4] if s.attributes.get("gen_ai.request.model"))


def test_malformed_spans_and_lines_reach_the_quarantine_once(traffic, tmp_path):
    hour = traffic["hour"]
    request = collector_dict(traffic["calls"][:1])
    span = request["resourceSpans"][0]["scopeSpans"][0]["spans"][0]

    def variant(**changes: Any) -> bytes:
        bad = copy.deepcopy(request)
        bad["resourceSpans"][0]["scopeSpans"][0]["spans"][0].update(changes)
        return orjson.dumps(bad)

    lines = [
        b'{"resourceSpans": [ {"resource"',                     # cut off mid-write
        variant(traceId="not-hex"),
        variant(spanId="0000000000000000"),                    # the spec's "no id"
        variant(endTimeUnixNano=str(int(span["startTimeUnixNano"]) - 1)),
        variant(startTimeUnixNano="yesterday"),
        b"[1, 2]",
    ]
    write_landing(tmp_path / "landing", hour, lines)
    lake = Lake(f"file://{tmp_path / 'lake'}")
    source = OtelSpanSource(f"file://{tmp_path / 'landing'}", MAPPING)
    result = ingest_hour(source, lake, hour, run_id="r1")
    assert result.written == 0
    assert result.rejected == {"invalid_json": 1, "invalid_value": 2, "bad_timestamp": 2,
                               "not_an_object": 1}
    q = lake.read_partition("quarantine", hour).to_pylist()
    fields = sorted((r["reason"], r["field"] or "") for r in q)
    assert fields == [("bad_timestamp", "endTimeUnixNano"),
                      ("bad_timestamp", "startTimeUnixNano"), ("invalid_json", ""),
                      ("invalid_value", "spanId"), ("invalid_value", "traceId"),
                      ("not_an_object", "resourceSpans")]
    bad_end = next(r for r in q if r["field"] == "endTimeUnixNano")
    assert bad_end["call_id"] == _call_id(traffic["calls"][0])
    assert json.loads(bad_end["raw"])["name"] == "chat gpt-4o-mini"
    # The hour before reads this hour's files too (late spans), but what has no start time
    # of its own stays with the hour of its file: quarantined once, not twice.
    before = ingest_hour(source, lake, hour - timedelta(hours=1), run_id="r1")
    assert before.received == 0


def test_older_attribute_names_and_cache_tokens(tmp_path):
    """Spans as older instrumentations (OpenLLMetry, OpenLIT) still emit them: gen_ai.system,
    prompt/completion token names, cache reads and writes, no operation name."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "rag-bot"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("opentelemetry.instrumentation.anthropic")
    with tracer.start_as_current_span("anthropic.chat", attributes={
            "gen_ai.system": "anthropic", "gen_ai.request.model": "claude-3-5-sonnet",
            "gen_ai.usage.prompt_tokens": 1200, "gen_ai.usage.completion_tokens": 80,
            "gen_ai.usage.cache_read_input_tokens": 1000,
            "gen_ai.usage.cache_creation_input_tokens": 150, "http.status_code": 200,
            "promptops.prompt_template": "rag_answer"}):
        pass
    with tracer.start_as_current_span("anthropic.chat", attributes={
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": "anthropic",
            "gen_ai.request.model": "claude-3-5-sonnet",
            "gen_ai.response.model": "claude-3-5-sonnet-20241022",
            "gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 2,
            "gen_ai.usage.cache_read.input_tokens": 4,
            "gen_ai.usage.cache_creation.input_tokens": 6}):
        pass
    with tracer.start_as_current_span("anthropic.chat", attributes={
            "gen_ai.operation.name": "chat", "gen_ai.request.model": "claude-3-5-sonnet",
            "error.type": "overloaded_error", "http.response.status_code": 529}):
        pass
    spans = exporter.get_finished_spans()
    hour = spans_hour(spans)
    write_landing(tmp_path, hour, [collector_json(spans)])
    _, pages = _read(tmp_path, hour)
    old, new, failed = pages[0].records()
    assert (old["provider"], old["model"], old["prompt_tokens"], old["completion_tokens"],
            old["cached_tokens"], old["cache_creation_tokens"], old["http_status"],
            old["prompt_template"], old["app"]) == \
        ("anthropic", "claude-3-5-sonnet", 1200, 80, 1000, 150, 200, "rag_answer", "rag-bot")
    assert "error_code" not in old and old["status"] == "success"
    assert (new["model"], new["cached_tokens"], new["cache_creation_tokens"]) == \
        ("claude-3-5-sonnet-20241022", 4, 6)
    # error.type alone (status left unset by the instrumentation) is a failed call.
    assert (failed["status"], failed["error_code"], failed["http_status"]) == \
        ("error", 529, 529)
    checked = validate_call_page(pages[0], hour, hour + timedelta(hours=1))
    assert checked.rejects == [] and checked.good.num_rows == 3


def test_a_successful_call_without_usage_is_quarantined_not_counted_as_zero(tmp_path):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("x").start_as_current_span("chat gpt-4o", attributes={
            "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o"}):
        pass
    spans = exporter.get_finished_spans()
    hour = spans_hour(spans)
    write_landing(tmp_path, hour, [collector_json(spans)])
    _, pages = _read(tmp_path, hour)
    checked = validate_call_page(pages[0], hour, hour + timedelta(hours=1))
    assert checked.good.num_rows == 0
    assert [(r["reason"], r["field"]) for r in checked.rejects] == \
        [("missing_field", "prompt_tokens")]


def test_mapping_file_paths_choose_the_fields(traffic, tmp_path):
    hour = traffic["hour"]
    write_landing(tmp_path, hour, [collector_json(traffic["calls"][:1])])
    mapping = FieldPaths(app=["span.nothing.here", "scope.name"], team=["span.user.id"],
                         user_id=["resource.enduser.id"])
    _, pages = _read(tmp_path, hour, mapping)
    (r,) = pages[0].records()
    assert r["app"] == traffic["calls"][0].instrumentation_scope.name
    assert r["team"] == "user-042"
    assert "user_id" not in r and "region" not in r


def test_an_s3_landing_area(s3_landing, traffic):
    hour = traffic["hour"]
    key = (f"otel/year={hour:%Y}/month={hour:%m}/day={hour:%d}/hour={hour:%H}/minute=07/"
           "traces_1.json")
    s3_landing.put_object(Bucket="push-landing", Key=key,
                          Body=collector_json(traffic["spans"]) + b"\n")
    s3_landing.put_object(Bucket="push-landing", Key=key.replace("traces_1", ".traces_2"),
                          Body=b"half a file")  # hidden: still being written
    from promptops.airflow_adapters.resources import storage_path

    for factory in (None, storage_path):
        kw = {"storage_path": factory} if factory else {}
        source = OtelSpanSource("s3://push-landing/otel", MAPPING, **kw)
        pages = list(source.iter_call_record_page_bodies(hour, hour + timedelta(hours=1)))
        assert [r["call_id"] for p in pages for r in p.records()] == \
            [_call_id(s) for s in traffic["calls"]]
        assert source.files_read == 1


def test_synthetic_bench_spans_are_valid(tmp_path):
    hour = datetime(2026, 11, 20, 13, tzinfo=UTC)
    files = write_synthetic_spans(tmp_path, 2_000, hour, per_line=100, per_file=1_000)
    assert len(files) == 2
    _, pages = _read(tmp_path, hour, limit=500)
    assert [len(p) for p in pages] == [500] * 4
    checked = [validate_call_page(p, hour, hour + timedelta(hours=1)) for p in pages]
    assert sum(c.good.num_rows for c in checked) == 2_000
    assert not any(c.rejects for c in checked)
    ids = {r for c in checked for r in c.good.column("call_id").to_pylist()}
    assert len(ids) == 2_000
    errors = sum(c.good.column("status").to_pylist().count("error") for c in checked)
    assert 10 <= errors <= 80  # the default 2% of 2000


def test_gzip_files_as_the_s3_exporter_compresses_them(traffic, tmp_path):
    import gzip

    hour = traffic["hour"]
    path = write_landing(tmp_path, hour, [collector_json(traffic["spans"])])
    path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
    path.unlink()
    source, pages = _read(tmp_path, hour)
    assert source.files_read == 1
    assert [r["call_id"] for r in pages[0].records()] == [_call_id(s) for s in traffic["calls"]]
    # A file cut off mid-upload: its whole lines are read, the rest is quarantined.
    whole = gzip.compress(collector_json(traffic["spans"]) + b"\n")
    path.with_name("cut.json.gz").write_bytes(whole[: len(whole) - 12])
    source, pages = _read(tmp_path, hour)
    (reject,) = [r for p in pages for r in p.rejects]
    assert reject["reason"] == "unreadable_file" and reject["field"] == "file"
    assert "cut.json.gz" in json.loads(reject["raw"])["file"]


def test_bad_lateness_is_refused():
    with pytest.raises(ValueError, match="lateness_hours is -1"):
        OtelSpanSource("file:///tmp/x", MAPPING, lateness_hours=-1)
