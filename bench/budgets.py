"""Benchmark: exact spend per user for budgets, one hour and a whole month.

    .venv/bin/python bench/budgets.py [--users 5000] [--calls 50000] [--days 31]
                                      [--repeat 3] [--lake DIR]

The platform simulator has 200 users, so the calls are synthesised in
``promptops.contracts.records.CALLS_SCHEMA``: ``--users`` users (every one of them calls in
every hour, the rest of the calls Zipf-distributed over them), each with a fixed team (20),
app (the simulator's 5) and hashed API key (one per two users), the models and providers of
the user's app, token counts like the simulator's.

1. Times ``promptops.metrics.spend.hour_spend`` on one such hour of ``--calls`` calls, in a
   fresh process, ``--repeat`` times, and records that process's peak RSS.
2. Writes ``--days`` x 24 hourly ``spend`` partitions to a temporary lake (or ``--lake``,
   reused when it has them all): each one ``hour_spend`` of a synthetic hour. Not timed as a
   result; the build time is printed.
3. Times, in another fresh process, the readers over the whole month: ``spend_between`` for
   every user, for 100 named users, ``shares`` of every user and one user's
   ``hourly_series``; with that process's peak RSS.

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

MONTH = datetime(2026, 10, 1, tzinfo=UTC)  # a 31-day month
SEED = 5
TEAMS = 20


def synthetic_calls(hour: datetime, users: int, calls: int, seed: int = SEED) -> Any:
    """One hour of ``calls`` call records by ``users`` users, in CALLS_SCHEMA."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from promptops.contracts.records import CALLS_SCHEMA
    from promptops.simulator.catalog import APPS, MODELS

    if calls < users:
        raise SystemExit(f"--calls ({calls}) must be at least --users ({users}): every user "
                         f"calls in every hour")
    world = np.random.default_rng(seed)  # who the users are: the same every hour
    weight = 1.0 / np.arange(1, users + 1) ** 1.1
    weight = world.permutation(weight / weight.sum())
    team_of = world.integers(0, TEAMS, users)
    app_of = world.choice(len(APPS), users, p=[a.weight for a in APPS])

    rng = np.random.default_rng([seed, int(hour.timestamp()) // 3600])
    user = np.concatenate([np.arange(users), rng.choice(users, calls - users, p=weight)])
    app = app_of[user]
    model_names = [m.name for m in MODELS]
    model = np.empty(calls, dtype=np.int32)
    for i, a in enumerate(APPS):  # a handful of apps, not a loop over calls
        here = np.flatnonzero(app == i)
        model[here] = rng.choice([model_names.index(m) for m in a.models], len(here),
                                 p=a.model_weights)
    providers = sorted({m.provider for m in MODELS})
    provider = np.array([providers.index(m.provider) for m in MODELS], dtype=np.int32)[model]
    prompt = rng.lognormal(7.0, 1.0, calls).astype(np.int64) + 1
    cached = (prompt * rng.uniform(0, 0.5, calls)).astype(np.int64)

    def dim(codes: np.ndarray, names: list[str]) -> pa.DictionaryArray:
        return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)),
                                              pa.array(names, type=pa.string()))

    start = np.datetime64(hour.replace(tzinfo=None), "us")
    columns = {
        "call_id": pc.binary_join_element_wise(
            f"c{hour:%Y%m%d%H}-", pa.array(np.arange(calls)).cast(pa.string()), ""),
        "ts": pa.array(start + np.sort(rng.integers(0, 3_600_000_000, calls))
                       .astype("timedelta64[us]")),
        "user_id": dim(user, [f"user-{i:05d}" for i in range(users)]),
        "team": dim(team_of[user], [f"team-{i:02d}" for i in range(TEAMS)]),
        "app": dim(app, [a.name for a in APPS]),
        "model": dim(model, model_names),
        "provider": dim(provider, providers),
        "status": dim((rng.random(calls) < 0.03).astype(np.int32), ["success", "error"]),
        "latency_ms": pa.array(rng.lognormal(6.5, 0.5, calls)),
        "prompt_tokens": pa.array(prompt),
        "completion_tokens": pa.array(rng.lognormal(5.0, 1.0, calls).astype(np.int64)),
        "cached_tokens": pa.array(cached),
        "api_key_hash": dim(user // 2, [f"{i:064x}" for i in range((users + 1) // 2)]),
    }
    return pa.table({f.name: columns[f.name] if f.name in columns
                     else pa.nulls(calls, f.type) for f in CALLS_SCHEMA}).cast(CALLS_SCHEMA)


def _prices() -> Any:
    from promptops.metrics.pricing import load_price_table

    return load_price_table(use_env=False)


def _timed(fn: Callable[[], Any], repeat: int) -> tuple[list[float], Any]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- the workers, each in its own process ------------------------------------------------------

def worker_hour(args: argparse.Namespace) -> dict:
    from promptops.metrics.spend import hour_spend

    prices = _prices()
    calls = synthetic_calls(MONTH, args.users, args.calls)
    base = _rss_mb()
    times, table = _timed(lambda: hour_spend(calls, MONTH, prices), args.repeat)
    users = sum(1 for d in table.column("dimension").to_pylist() if d == "user")
    return {"times": times, "rows": table.num_rows, "users": users,
            "rss_before_mb": base, "peak_rss_mb": _peak_mb()}


def worker_month(args: argparse.Namespace) -> dict:
    from promptops.lake.store import Lake
    from promptops.metrics.spend import hourly_series, shares, spend_between

    lake = Lake(f"file://{args.lake}")
    end = MONTH + timedelta(days=args.days)
    base = _rss_mb()
    out: dict[str, Any] = {"rss_before_mb": base}
    every, sums = _timed(lambda: spend_between(lake, MONTH, end, "user"), args.repeat)
    out["spend_between_every_user"] = every
    out["users"] = sums.table.num_rows
    out["missing_hours"] = len(sums.missing_hours)
    out["month_cost_usd"] = float(np.sum(sums.table.column("cost_usd").to_numpy()))
    named = sums.table.column("value").to_pylist()[:100]
    out["spend_between_100_users"], _ = _timed(
        lambda: spend_between(lake, MONTH, end, "user", named), args.repeat)
    out["shares_every_user"], _ = _timed(lambda: shares(lake, MONTH, end, "user"), args.repeat)
    out["hourly_series_one_user"], series = _timed(
        lambda: hourly_series(lake, MONTH, end, "user", named[0]), args.repeat)
    out["series_hours"] = len(series)
    # What the hourly run does: every user's monthly budget judged at the month's last hour
    # (exact spend, the platform's forecast scaled by share, the thresholds and the ledger).
    from promptops.detection.budgets.config import BudgetsConfig
    from promptops.detection.budgets.evaluate import evaluate_budgets

    config = BudgetsConfig.model_validate({"budgets": [{
        "name": "every-user-monthly", "scope": {"user": "*"}, "metric": "cost",
        "amount": 50.0, "period": "month", "timezone": "UTC",
        "thresholds": [{"at": 0.8, "severity": "warning"},
                       {"at": 1.0, "severity": "critical", "on": "forecast"}]}]})
    at = end - timedelta(hours=1)
    out["evaluate_every_user"], outcome = _timed(
        lambda: evaluate_budgets(lake, config, at), args.repeat)
    out["evaluated_scopes"] = outcome.scopes["every-user-monthly"]
    out["findings"] = len(outcome.findings)
    out["peak_rss_mb"] = _peak_mb()
    return out


def _worker(kind: str, args: argparse.Namespace, lake: Path | None = None) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--users", str(args.users),
           "--calls", str(args.calls), "--days", str(args.days), "--repeat", str(args.repeat)]
    if lake is not None:
        cmd += ["--lake", str(lake)]
    done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- the month's partitions --------------------------------------------------------------------

def build_month(lake_dir: Path, args: argparse.Namespace) -> None:
    from promptops.lake.store import Lake
    from promptops.metrics.spend import SPEND, hour_spend, write_hour_spend

    lake = Lake(f"file://{lake_dir}")
    hours = [MONTH + timedelta(hours=i) for i in range(args.days * 24)]
    todo = [h for h in hours if not lake.has_partition(SPEND, h)]
    if not todo:
        print(f"reusing {len(hours)} spend partitions in {lake_dir}", flush=True)
        return
    print(f"writing {len(todo)} hourly spend partitions of {args.users:,} users "
          f"({args.calls:,} calls each) to {lake_dir} ...", flush=True)
    prices = _prices()
    t0 = time.perf_counter()
    for h in todo:
        write_hour_spend(lake, h, hour_spend(synthetic_calls(h, args.users, args.calls), h,
                                             prices))
    print(f"  built in {time.perf_counter() - t0:.1f} s", flush=True)


def _fmt(times: list[float]) -> str:
    return (f"best {min(times) * 1000:8.1f} ms   median {statistics.median(times) * 1000:8.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--calls", type=int, default=50_000, help="calls per hour")
    parser.add_argument("--days", type=int, default=31)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--lake", type=Path, help="a folder to keep (and reuse) the month in")
    parser.add_argument("--worker", choices=("hour", "month"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker == "hour":
        print(json.dumps(worker_hour(args)))
        return
    if args.worker == "month":
        print(json.dumps(worker_month(args)))
        return

    hour = _worker("hour", args)
    print(f"hour_spend, {args.calls:,} calls by {hour['users']:,} users "
          f"({hour['rows']:,} spend rows):")
    print(f"  {_fmt(hour['times'])}   peak RSS {hour['peak_rss_mb']:.0f} MB "
          f"(the hour's calls and the price table loaded: {hour['rss_before_mb']:.0f} MB)")

    with tempfile.TemporaryDirectory(prefix="bench-budgets-") as tmp:
        lake_dir = args.lake.resolve() if args.lake else Path(tmp)
        build_month(lake_dir, args)
        month = _worker("month", args, lake_dir)
    print(f"over {args.days} days ({month['series_hours']} hourly partitions, "
          f"{month['missing_hours']} missing), {month['users']:,} users, "
          f"month cost {month['month_cost_usd']:,.2f} USD:")
    for key, what in (("spend_between_every_user", "spend_between, every user"),
                      ("spend_between_100_users", "spend_between, 100 named users"),
                      ("shares_every_user", "shares, every user"),
                      ("hourly_series_one_user", "hourly_series, one user"),
                      ("evaluate_every_user", "evaluate_budgets, every user")):
        print(f"  {what:32s} {_fmt(month[key])}")
    print(f"  evaluate_budgets judged {month['evaluated_scopes']:,} users "
          f"({month['findings']:,} thresholds newly crossed on the first run; a rerun of "
          f"the same hour raises the same ones)")
    print(f"  peak RSS {month['peak_rss_mb']:.0f} MB (after imports: "
          f"{month['rss_before_mb']:.0f} MB)")


if __name__ == "__main__":
    main()
