"""Benchmark: Holt-Winters baselines, fit + 24-hour forecast with bands, for many series.

    .venv/bin/python bench/baselines.py [--series 200] [--days 14] [--workers 2] [--repeat 3]

1. Builds a synthetic metrics history in the tidy layout: ``--series`` series (four
   metrics x ``series / 4`` model slices) of ``--days`` days hourly, with daily
   seasonality of random amplitude and phase, slow trends, noise, and the faults the fit
   must survive: missing hours (a few percent of partitions), occasional outliers, a
   handful of sparse or constant series.
2. Times :func:`promptops.detection.baselines.fit_all` on it (series extraction, every fit, the
   simulated prediction bands, the bands table): with 1 worker (in this process), then with
   ``--workers`` processes, cold (the pool starts, each worker imports statsmodels) and warm
   (the pool is reused, as in a long-lived worker).
3. Prints series per second for each, and how many series got Holt-Winters vs the fallback.

The statsmodels import (about 1-3 s) is timed separately and excluded from the figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa

DAY = datetime(2026, 11, 20, tzinfo=UTC)
SEED = 7
METRICS = ("requests", "error_rate", "latency_p95_ms", "cost_usd")


def synthetic_history(series: int, days: int, seed: int = SEED) -> pa.Table:
    """A tidy metrics table: ``series`` series over ``days`` days of hours before DAY."""
    from promptops.contracts.metric_table import METRICS_SCHEMA

    rng = np.random.default_rng(seed)
    slices = max(1, series // len(METRICS))
    n = days * 24
    start = DAY - timedelta(days=days)
    hour_of_day = (np.arange(n) % 24)[None, :]
    t = np.arange(n)[None, :]
    amp = rng.uniform(0.2, 0.8, (slices, 1))
    phase = rng.uniform(0, 2 * np.pi, (slices, 1))
    shape = 1 + amp * np.sin(2 * np.pi * hour_of_day / 24 + phase)
    trend = 1 + rng.normal(0, 0.02, (slices, 1)) * t / 24
    level = rng.lognormal(6, 1, (slices, 1))
    requests = np.maximum(level * shape * trend * (1 + 0.05 * rng.standard_normal((slices, n))), 0)
    blocks = {
        "requests": np.round(requests),
        "error_rate": np.clip(rng.uniform(0.002, 0.03, (slices, 1))
                              * (1 + 0.3 * rng.standard_normal((slices, n))), 0, 1),
        "latency_p95_ms": rng.uniform(400, 3000, (slices, 1)) * (2 - shape / 2)
        * (1 + 0.08 * rng.standard_normal((slices, n))),
        "cost_usd": requests * rng.uniform(1e-4, 5e-3, (slices, 1))
        * (1 + 0.05 * rng.standard_normal((slices, n))),
    }
    # Faults: outliers, a sparse and a constant series per metric.
    for values in blocks.values():
        spikes = rng.random(values.shape) < 0.003
        values[spikes] *= rng.uniform(3, 10, spikes.sum())
        values[0] = np.where(rng.random(n) < 0.8, 0.0, values[0])
        values[1 % slices] = values[1 % slices, 0]
    present = rng.random(n) > 0.03  # ~3% of hours have no partition at all
    hours = np.array([start + timedelta(hours=int(h)) for h in range(n)], dtype=object)
    cols: dict[str, list] = {name: [] for name in METRICS_SCHEMA.names}
    for metric, values in blocks.items():
        for s in range(slices):
            keep = present
            cols["hour"].extend(hours[keep])
            cols["metric"].extend([metric] * int(keep.sum()))
            cols["dimension"].extend(["model"] * int(keep.sum()))
            cols["slice"].extend([f"model-{s:03d}"] * int(keep.sum()))
            cols["value"].extend(values[s, keep].tolist())
            cols["samples"].extend(np.round(requests[s, keep]).astype(int).tolist())
            cols["lower"].extend([None] * int(keep.sum()))
            cols["upper"].extend([None] * int(keep.sum()))
    return pa.table(cols, schema=METRICS_SCHEMA)


def timed(fn, repeat: int) -> tuple[list[float], object]:
    times, result = [], None
    for _ in range(repeat):
        began = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - began)
    return times, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=200)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    began = time.perf_counter()
    import statsmodels.tsa.holtwinters  # noqa: F401

    from promptops.detection.baselines import BaselineConfig, fit_all
    import_s = time.perf_counter() - began

    table = synthetic_history(args.series, args.days)
    slices = max(1, args.series // len(METRICS))
    common = {"history_days": args.days, "metrics": list(METRICS), "dimensions": ["model"],
              "max_slices": slices, "parallel_min_series": 1}
    one = BaselineConfig(**common, workers=1)
    many = BaselineConfig(**common, workers=args.workers)
    print(f"{args.series} series x {args.days} days hourly ({table.num_rows:,} metric rows), "
          f"{os.cpu_count()} CPUs; statsmodels import {import_s:.1f} s (not counted)")

    seq_times, bands = timed(lambda: fit_all(table, DAY, one), args.repeat)
    n = bands.num_rows // 24
    cold_times, _ = timed(lambda: fit_all(table, DAY, many), 1)
    warm_times, pbands = timed(lambda: fit_all(table, DAY, many), args.repeat)
    same = bands.drop_columns(["fitted_at"]).equals(pbands.drop_columns(["fitted_at"]))

    methods = bands.column("method").to_pylist()[::24]
    counts = {m: methods.count(m) for m in sorted(set(methods))}
    rows = [("1 worker (in process)", seq_times),
            (f"{args.workers} workers, cold pool", cold_times),
            (f"{args.workers} workers, warm pool", warm_times)]
    for label, times in rows:
        best, med = min(times), statistics.median(times)
        print(f"  {label:28s} best {best:6.2f} s  median {med:6.2f} s  "
              f"{n / best:7.1f} series/s (best)  {n / med:7.1f} series/s (median)")
    print(f"  methods: {counts}; pool and in-process bands identical: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
