"""Benchmark: one simulated hour of N call records through a source, validation and write.

    .venv/bin/python bench/ingest.py 1000000 [--source platform_api|otel|litellm]

Starts the platform simulator as its own process (flat traffic: exactly N records in the
hour), then times `promptops.ingest.pull.ingest_hour` in this process: paging through the API,
validating every page, deduplicating and writing the Parquet partition to a temporary lake.
Prints wall seconds, records per second, this (client) process's CPU seconds and peak RSS.

By default pages come through ``PlatformClient.iter_call_record_page_bodies`` (records read
straight into Arrow); ``--dict-pages`` feeds the same ingest from ``iter_call_record_pages``
(orjson dicts, validated on the dict path) for comparison.

``--source otel`` writes N GenAI spans as OTLP JSON lines (the Collector's file exporter's
format) into a temporary landing folder first, and times ``OtelSpanSource``; ``--source
litellm`` COPYs N spend-log rows into a fresh database on the local Postgres (LiteLLM's own
table, from its schema.prisma) and times ``SpendLogSource``. The loading is not timed.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from promptops.ingest.pull import ingest_hour
from promptops.lake.store import Lake
from promptops.platform.client import PlatformClient
from promptops.platform.paging import CallRecordPage
from promptops.simulator.process import SimulatorProcess


class DictPages:
    """The client's dict pages, handed to ingest as pages without Arrow columns."""

    def __init__(self, client: PlatformClient) -> None:
        self.client = client

    def iter_call_record_page_bodies(self, start, end, limit):
        for records in self.client.iter_call_record_pages(start, end, limit):
            yield CallRecordPage(b"", None, records)


@contextlib.contextmanager
def platform_source(records: int, dict_pages: bool, hour: datetime) -> Iterator[Any]:
    with SimulatorProcess("--calls-per-hour", str(records), "--flat",
                          api_key="bench-key", seed=11) as sim:
        client = PlatformClient(sim.url, sim.api_key, read_timeout=120)
        try:
            yield DictPages(client) if dict_pages else client
        finally:
            client.close()


@contextlib.contextmanager
def otel_source(records: int, hour: datetime) -> Iterator[Any]:
    from promptops.ingest.sources.mapping import load_source_mapping
    from promptops.ingest.sources.otel import OtelSpanSource
    from tests.helpers.otel_spans import write_synthetic_spans  # SDK spans, replicated

    with tempfile.TemporaryDirectory() as landing:
        t0 = time.perf_counter()
        write_synthetic_spans(Path(landing), records, hour)
        print(f"landing written    {time.perf_counter() - t0:>12.2f} s (not timed below)")
        yield OtelSpanSource(f"file://{landing}", load_source_mapping().otel)


@contextlib.contextmanager
def litellm_source(records: int, hour: datetime) -> Iterator[Any]:
    import psycopg

    from promptops.ingest.sources.litellm import SpendLogSource
    from promptops.ingest.sources.mapping import load_source_mapping
    from tests.helpers.litellm_db import PG_DSN, bulk_load, connector, fresh_database

    with fresh_database("litellm_bench") as db:
        t0 = time.perf_counter()
        with psycopg.connect(f"{PG_DSN} dbname={db}") as conn:
            bulk_load(conn, records, hour, hour + timedelta(hours=1))
            conn.execute('ANALYZE "LiteLLM_SpendLogs"')
        print(f"rows loaded (COPY) {time.perf_counter() - t0:>12.2f} s (not timed below)")
        yield SpendLogSource(connector(db), load_source_mapping().litellm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", type=int, nargs="?", default=1_000_000)
    parser.add_argument("--page-size", type=int, default=10_000)
    parser.add_argument("--source", choices=("platform_api", "otel", "litellm"),
                        default="platform_api", help="where the records come from")
    parser.add_argument("--dict-pages", action="store_true",
                        help="platform_api: parse pages into dicts (orjson) and validate those")
    args = parser.parse_args()
    # The test helpers that build spans and spend-log rows (bench only).
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

    hour = (datetime.now(UTC) - timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
    sources = {"platform_api": lambda: platform_source(args.records, args.dict_pages, hour),
               "otel": lambda: otel_source(args.records, hour),
               "litellm": lambda: litellm_source(args.records, hour)}
    with sources[args.source]() as source, tempfile.TemporaryDirectory() as lake_dir:
        lake = Lake(f"file://{lake_dir}")
        cpu0, wall0 = time.process_time(), time.perf_counter()
        result = ingest_hour(source, lake, hour, run_id="bench", page_size=args.page_size)
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"records received   {result.received:>12,}")
    print(f"records written    {result.written:>12,}  ({result.pages} pages of {args.page_size:,})")
    print(f"wall seconds       {wall:>12.2f}")
    print(f"records / s (wall) {result.received / wall:>12,.0f}")
    print(f"client CPU seconds {cpu:>12.2f}  ({result.received / cpu:,.0f} records per CPU-s)")
    print(f"client peak RSS    {peak_rss_mb:>12,.0f} MB")
    print(f"source             {args.source:>12}")
    if args.source == "platform_api":
        print(f"pages              "
              f"{'dicts (orjson)' if args.dict_pages else 'Arrow (pyarrow.json)':>12}")


if __name__ == "__main__":
    main()
