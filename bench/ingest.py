"""Benchmark: one simulated hour of N call records through client, validation and write.

    .venv/bin/python bench/ingest.py 1000000

Starts the platform simulator as its own process (flat traffic: exactly N records in the
hour), then times `promptops.ingest.pull.ingest_hour` in this process: paging through the API,
validating every page, deduplicating and writing the Parquet partition to a temporary lake.
Prints wall seconds, records per second, this (client) process's CPU seconds and peak RSS.

By default pages come through ``PlatformClient.iter_call_record_page_bodies`` (records read
straight into Arrow); ``--dict-pages`` feeds the same ingest from ``iter_call_record_pages``
(orjson dicts, validated on the dict path) for comparison.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from datetime import UTC, datetime, timedelta

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", type=int, nargs="?", default=1_000_000)
    parser.add_argument("--page-size", type=int, default=10_000)
    parser.add_argument("--dict-pages", action="store_true",
                        help="parse pages into dicts (orjson) and validate those")
    args = parser.parse_args()

    hour = (datetime.now(UTC) - timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
    with SimulatorProcess("--calls-per-hour", str(args.records), "--flat",
                          api_key="bench-key", seed=11) as sim, \
            tempfile.TemporaryDirectory() as lake_dir:
        client = PlatformClient(sim.url, sim.api_key, read_timeout=120)
        lake = Lake(f"file://{lake_dir}")
        cpu0, wall0 = time.process_time(), time.perf_counter()
        source = DictPages(client) if args.dict_pages else client
        result = ingest_hour(source, lake, hour, run_id="bench", page_size=args.page_size)
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
        client.close()
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"records received   {result.received:>12,}")
    print(f"records written    {result.written:>12,}  ({result.pages} pages of {args.page_size:,})")
    print(f"wall seconds       {wall:>12.2f}")
    print(f"records / s (wall) {result.received / wall:>12,.0f}")
    print(f"client CPU seconds {cpu:>12.2f}  ({result.received / cpu:,.0f} records per CPU-s)")
    print(f"client peak RSS    {peak_rss_mb:>12,.0f} MB")
    print(f"pages              {'dicts (orjson)' if args.dict_pages else 'Arrow (pyarrow.json)':>12}")


if __name__ == "__main__":
    main()
