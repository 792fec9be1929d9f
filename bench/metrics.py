"""Benchmark: the hourly metrics on an N-record hour beside a DuckDB SQL reference.

    .venv/bin/python bench/metrics.py 1000000 [--repeat 3] [--top-n-users 20]
                                              [--unpriced mistral-7b-instruct]

1. Builds (once; reused from ``data/bench/``) an N-record ``calls`` partition: the platform
   simulator's generator makes the hour in this process (flat traffic, seed 11), our record
   validation and lake writer store it page by page, as ingest does for a polled hour.
2. Times ``promptops.metrics.hourly`` on it (reading the partition included), in a fresh
   process, ``--repeat`` times, and records that process's peak RSS.
3. Times DuckDB computing the same aggregates on the same file with SQL (one query with
   GROUPING SETS over the dimensions, ``quantile_cont`` for the percentiles, the user top-N,
   the confusion counts and the peak calls per minute), in another fresh process, using all
   cores.
4. Prints both times (best and median), their ratio, our peak RSS, and cross-checks the
   aggregates both computed, printing any mismatch.

``--unpriced MODEL`` drops a model from the price table on both sides, to time the unpriced
path too. DuckDB is a bench-only dependency (requirements-dev.txt).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HOUR = datetime(2026, 11, 20, 13, tzinfo=UTC)
SEED = 11
DIMENSIONS = ("model", "provider", "app", "team", "user", "template", "region", "gpu_node")


# -- the partition ----------------------------------------------------------------------------

def _generated_pages(records: int, page_size: int = 10_000):
    """The simulator's generator for one hour, served as record pages (lists of dicts)."""
    from promptops.simulator.records import build_records
    from promptops.simulator.scenario import DataFaults
    from promptops.simulator.traffic import Effects, generate_hour

    batch = generate_hour(int(HOUR.timestamp()) // 3600, seed=SEED, calls_per_hour=records,
                          flat=True, data_faults=DataFaults(), incidents=[], effects=Effects())
    for first in range(0, len(batch), page_size):
        yield build_records(batch, np.arange(first, min(first + page_size, len(batch))))


def partition_file(records: int) -> Path:
    """The cached partition for N records, built on first use: simulator pages through our
    record validation into our lake writer, one row group per page as ingest writes them
    (no faults are injected, so there is nothing to reject or deduplicate)."""
    from promptops.contracts.datasets import CALLS
    from promptops.contracts.records import CALLS_SCHEMA, validate_page
    from promptops.lake.store import Lake

    lake = Lake(f"file://{ROOT / 'data' / 'bench' / f'metrics-{records}-seed{SEED}'}")
    target = Path(lake.partition_file(CALLS, HOUR).path)
    if not target.exists():
        print(f"building a {records:,}-record partition (once) ...", flush=True)
        t0 = time.perf_counter()
        end = HOUR + timedelta(hours=1)
        with lake.partition_writer(CALLS, HOUR, CALLS_SCHEMA) as writer:
            for page in _generated_pages(records):
                checked = validate_page(page, HOUR, end)
                if checked.rejects:
                    raise RuntimeError(f"the generator made invalid records: "
                                       f"{checked.reject_counts}")
                writer.write(checked.good)
        print(f"  {writer.rows:,} records written in {time.perf_counter() - t0:.1f} s "
              f"to {target}", flush=True)
    return target


# -- the two sides, each in its own process -----------------------------------------------------

def _prices(unpriced: list[str]):
    from promptops.metrics.pricing import load_price_table

    return load_price_table(use_env=False).without(*unpriced)


def run_ours(path: Path, repeat: int, top_n: int, unpriced: list[str], out: Path) -> dict:
    import pyarrow.parquet as pq

    from promptops.metrics.hourly import INPUT_COLUMNS, compute_hourly_metrics

    prices = _prices(unpriced)
    # Warm the lazy imports (scikit-learn, statsmodels) outside the timings, as DuckDB's
    # extension loading is outside its timings: a long-lived worker pays them once.
    import sklearn.metrics  # noqa: F401
    import statsmodels.stats.proportion  # noqa: F401

    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        calls = pq.read_table(path, columns=list(INPUT_COLUMNS))
        table = compute_hourly_metrics(calls, HOUR, prices, top_n_users=top_n)
        times.append(time.perf_counter() - t0)
        del calls
    pq.write_table(table, out)
    return {"times": times, "rows": table.num_rows,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def duckdb_sql(path: Path, top_n: int) -> list[str]:
    """The reference: the same aggregates in SQL (temp table, then three queries)."""
    grouping = ", ".join(f"({d})" for d in DIMENSIONS)
    dimension = " ".join(f"WHEN grouping({d}) = 0 THEN '{d}'" for d in DIMENSIONS)
    slice_ = ", ".join(DIMENSIONS)
    z = 1.959963984540054
    return [
        f"""
        CREATE OR REPLACE TEMP TABLE g AS
        WITH c AS (
            SELECT coalesce(r.model, '(none)') AS model, coalesce(r.provider, '(none)') AS provider,
                   coalesce(app, '(none)') AS app, coalesce(team, '(none)') AS team, user_id,
                   CASE WHEN prompt_template IS NULL THEN '(none)'
                        ELSE prompt_template || '@' || coalesce(prompt_version, '(none)') END
                       AS template,
                   coalesce(region, '(none)') AS region, coalesce(gpu_node, '(none)') AS gpu_node,
                   status = 'success' AS ok, latency_ms, prompt_tokens, completion_tokens,
                   least(coalesce(cached_tokens, 0), prompt_tokens) AS cached,
                   (prompt_tokens - least(coalesce(cached_tokens, 0), prompt_tokens)) * p.inp
                     + least(coalesce(cached_tokens, 0), prompt_tokens) * p.cached_rate
                     + completion_tokens * p.outp AS cost,
                   expected_intent, predicted_intent, relevance_score, ts
            FROM read_parquet('{path}') r LEFT JOIN prices p ON p.model = r.model
        ),
        u AS (SELECT user_id, count(*) AS n, coalesce(sum(cost), 0) AS spend
              FROM c GROUP BY user_id),
        top AS ((SELECT user_id FROM u ORDER BY n DESC, user_id LIMIT {top_n})
                UNION
                (SELECT user_id FROM u WHERE spend > 0 ORDER BY spend DESC, user_id
                 LIMIT {top_n}))
        SELECT c.* EXCLUDE (user_id),
               user_id AS user_name,
               CASE WHEN user_id IS NULL THEN '(none)'
                    WHEN user_id IN (SELECT user_id FROM top) THEN user_id
                    ELSE 'other' END AS "user"
        FROM c
        """,
        f"""
        SELECT CASE {dimension} ELSE 'overall' END AS dimension,
               coalesce({slice_}, '*') AS slice,
               count(*) AS requests,
               count(*) - count_if(ok) AS errors,
               avg(latency_ms) AS latency_mean_ms,
               quantile_cont(latency_ms, [0.5, 0.95, 0.99]) AS latency_q,
               sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens,
               sum(cached) AS cached_tokens,
               sum(cost) AS cost_usd, count(cost) AS priced,
               sum(CASE WHEN cost IS NULL THEN prompt_tokens + completion_tokens END)
                   AS unpriced_tokens,
               count(expected_intent) AS labelled,
               count_if(expected_intent IS NOT NULL
                        AND predicted_intent IS NOT DISTINCT FROM expected_intent) AS correct,
               correct / nullif(labelled, 0) AS intent_accuracy,
               (intent_accuracy + {z * z} / (2 * labelled)
                 - {z} * sqrt(intent_accuracy * (1 - intent_accuracy) / labelled
                              + {z * z} / (4 * labelled * labelled)))
                 / (1 + {z * z} / labelled) AS accuracy_lower,
               avg(relevance_score) AS relevance_mean, count(relevance_score) AS scored
        FROM g
        GROUP BY GROUPING SETS ((), {grouping})
        """,
        """
        SELECT expected_intent, coalesce(predicted_intent, '(none)') AS predicted, count(*) AS n
        FROM g WHERE expected_intent IS NOT NULL GROUP BY ALL
        """,
        """
        SELECT coalesce("user", '*') AS slice, max(n) AS peak
        FROM (SELECT "user", user_name, time_bucket(INTERVAL 1 minute, ts) AS m, count(*) AS n
              FROM g GROUP BY ALL)
        GROUP BY GROUPING SETS ((), ("user"))
        """,
    ]


def run_duckdb(path: Path, repeat: int, top_n: int, unpriced: list[str], out: Path) -> dict:
    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq

    prices = _prices(unpriced)
    names = list(prices.models)
    inp, cached, outp = prices.rates(names)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    price_table = pa.table({"model": names, "inp": inp, "cached_rate": cached, "outp": outp})
    con.register("prices_arrow", price_table)
    con.execute("CREATE TABLE prices AS SELECT * FROM prices_arrow")
    statements = duckdb_sql(path, top_n)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        con.execute(statements[0])
        results = [con.sql(s).to_arrow_table() for s in statements[1:]]
        times.append(time.perf_counter() - t0)
    for name, table in zip(("groups", "confusion", "peak"), results, strict=True):
        pq.write_table(table, out.with_suffix(f".{name}.parquet"))
    threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
    return {"times": times, "threads": threads,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


# -- cross-check ----------------------------------------------------------------------------

def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def cross_check(ours_file: Path, duck_file: Path) -> list[str]:
    import pyarrow.parquet as pq

    ours = {(r["metric"], r["dimension"], r["slice"]): r
            for r in pq.read_table(ours_file).to_pylist()}
    mismatches: list[str] = []
    compared = 0

    def check(metric: str, dimension: str, slice_: str, expect: float | None,
              field: str = "value") -> None:
        nonlocal compared
        compared += 1
        row = ours.get((metric, dimension, slice_))
        got = None if row is None else row[field]
        if not _close(got, None if expect is None else float(expect)):
            mismatches.append(f"{metric}/{field} [{dimension}={slice_}]: ours {got}, "
                              f"duckdb {expect}")

    for r in pq.read_table(duck_file.with_suffix(".groups.parquet")).to_pylist():
        key = (r["dimension"], r["slice"])
        check("requests", *key, r["requests"])
        check("errors", *key, r["errors"])
        check("latency_mean_ms", *key, r["latency_mean_ms"])
        for metric, q in zip(("latency_p50_ms", "latency_p95_ms", "latency_p99_ms"),
                             r["latency_q"], strict=True):
            check(metric, *key, q)
        check("prompt_tokens", *key, r["prompt_tokens"])
        check("completion_tokens", *key, r["completion_tokens"])
        check("cached_tokens", *key, r["cached_tokens"])
        check("cost_usd", *key, r["cost_usd"] if r["priced"] else None)
        if r["labelled"]:
            check("intent_accuracy", *key, r["intent_accuracy"])
            check("intent_accuracy", *key, r["accuracy_lower"], field="lower")
        if r["scored"]:
            check("relevance_mean", *key, r["relevance_mean"])
        if r["unpriced_tokens"] is not None:
            check("unpriced_tokens", *key, r["unpriced_tokens"])
    for r in pq.read_table(duck_file.with_suffix(".confusion.parquet")).to_pylist():
        check("intent_confusion", "intent_pair", f"{r['expected_intent']}|{r['predicted']}",
              r["n"])
    for r in pq.read_table(duck_file.with_suffix(".peak.parquet")).to_pylist():
        dim = "overall" if r["slice"] == "*" else "user"
        check("peak_calls_per_minute", dim, r["slice"], r["peak"])
    groups = len(pq.read_table(duck_file.with_suffix(".groups.parquet")))
    ours_requests = sum(1 for k in ours if k[0] == "requests")
    if groups != ours_requests:
        mismatches.append(f"slices: ours {ours_requests}, duckdb {groups}")
    print(f"cross-check: {compared:,} values compared, {len(mismatches)} mismatches")
    return mismatches


# -- driver ---------------------------------------------------------------------------------

def _worker(side: str, args: argparse.Namespace, path: Path, out: Path) -> dict:
    cmd = [sys.executable, __file__, str(args.records), "--worker", side, "--file", str(path),
           "--out", str(out), "--repeat", str(args.repeat), "--top-n-users", str(args.top_n_users)]
    for model in args.unpriced:
        cmd += ["--unpriced", model]
    done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", type=int, nargs="?", default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--top-n-users", type=int, default=20)
    parser.add_argument("--unpriced", action="append", default=[],
                        help="drop this model from the price table (both sides)")
    parser.add_argument("--worker", choices=("ours", "duckdb"), help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        run = run_ours if args.worker == "ours" else run_duckdb
        print(json.dumps(run(args.file, args.repeat, args.top_n_users, args.unpriced, args.out)))
        return

    path = partition_file(args.records)
    size_mb = path.stat().st_size / 1e6
    with tempfile.TemporaryDirectory(prefix="promptops-bench-") as tmp:
        ours_out, duck_out = Path(tmp) / "ours.parquet", Path(tmp) / "duckdb.parquet"
        ours = _worker("ours", args, path, ours_out)
        duck = _worker("duckdb", args, path, duck_out)
        mismatches = cross_check(ours_out, duck_out)

    best_o, best_d = min(ours["times"]), min(duck["times"])
    med_o, med_d = statistics.median(ours["times"]), statistics.median(duck["times"])
    print(f"partition          {args.records:>12,} records, {size_mb:.1f} MB ({path})")
    print(f"cores              {os.cpu_count():>12}   (duckdb threads: {duck['threads']})")
    print(f"ours   best/median {best_o:>8.3f} s / {med_o:.3f} s   ({ours['rows']:,} metric rows)")
    print(f"duckdb best/median {best_d:>8.3f} s / {med_d:.3f} s")
    print(f"ratio ours/duckdb  {best_o / best_d:>12.2f}x best, {med_o / med_d:.2f}x median")
    print(f"ours peak RSS      {ours['peak_rss_mb']:>12,.0f} MB   (duckdb process: "
          f"{duck['peak_rss_mb']:,.0f} MB)")
    for line in mismatches[:20]:
        print("  MISMATCH", line)
    if mismatches:
        sys.exit(1)


if __name__ == "__main__":
    main()
