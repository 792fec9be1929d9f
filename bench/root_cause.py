"""Benchmark: root-cause localisation on 20,000-leaf cubes, and the command on one of them.

    .venv/bin/python bench/root_cause.py [--seeds 10] [--leaves 20000]

For each case, ``--seeds`` synthetic cubes (``tests/helpers/root_cause.py``: leaves of
uneven size, noisy baseline and actual, anomalies injected into one- or two-dimension
elements) are localised with :func:`promptops.detection.root_cause.localize`. Printed per case:
seconds per cube (median and worst, the cube already in memory, cuboids included) and
accuracy (the share of cubes whose returned root-cause set is exactly the injected one).

Two cube shapes: 5 dimensions whose full product is the leaf count (10 x 10 x 5 x 8 x 5),
and 8 dimensions (up to 92 cuboids) with ``--leaves`` leaves sampled from a 172,800-cell
product. Finally the command ``python -m promptops.detection.root_cause`` runs on a CSV of one
20,000-leaf cube: wall seconds per run (process start, imports, reading the CSV included).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The synthetic cubes are the root-cause tests' own (tests.helpers.root_cause).
sys.path.insert(0, str(ROOT))

from promptops.detection.root_cause import localize  # noqa: E402
from tests.helpers.root_cause import (  # noqa: E402
    as_set,
    element_label,
    set_f1,
    squeeze_cube,
    synthetic_cube,
)

FULL = {"model": 10, "app": 10, "region": 5, "team": 8, "template": 5}
WIDE = {"model": 8, "app": 6, "region": 5, "team": 5, "template": 4, "provider": 4,
        "gpu_node": 3, "tier": 3}

#: name -> (cards, anomalies, ratio, extra synthetic_cube arguments)
CASES = {
    "additive, 1 dim (model x2)": (FULL, [({"model": "model2"}, 2.0)], False, {}),
    "additive, 2 dims (app&region x2.5)": (FULL, [({"app": "app7", "region": "region3"}, 2.5)],
                                          False, {}),
    "additive, two causes": (FULL, [({"model": "model1"}, 1.8),
                                    ({"team": "team2", "template": "template4"}, 2.5)],
                             False, {}),
    "additive, everywhere (x1.5)": (FULL, [({}, 1.5)], False, {}),
    "additive, no anomaly": (FULL, [], False, {}),
    "ratio, 1 dim (model errors x5)": (FULL, [({"model": "model2"}, 5.0)], True, {}),
    "ratio, 2 dims (model&region x8)": (FULL, [({"model": "model2", "region": "region0"}, 8.0)],
                                        True, {}),
    "ratio, traffic shift to high-error model": (
        FULL, [], True, {"rate_of": {"model=model3": 6.0},
                         "traffic": [({"model": "model3"}, 5.0)]}),
    "ratio, no anomaly": (FULL, [], True, {}),
    "8 dims, additive 2 dims": (WIDE, [({"provider": "provider1", "region": "region2"}, 2.5)],
                                False, {}),
    "8 dims, ratio 1 dim": (WIDE, [({"gpu_node": "gpu_node0"}, 5.0)], True, {}),
}
RATIO = {"actual_den": "actual_den", "expected_den": "expected_den"}


def make_cube(cards, anomalies, ratio, extra, seed, leaves):
    # Mean calls per leaf: 5 (100,000 calls an hour over 20,000 leaves); error rate 1%.
    cube = synthetic_cube(cards, anomalies, ratio=ratio, seed=seed, mean=5.0,
                          error_rate=0.01, **extra)
    if len(cube) > leaves:
        cube = cube.sample(n=leaves, random_state=seed).reset_index(drop=True)
    return cube


def run_case(name: str, seeds: int, leaves: int) -> dict:
    cards, anomalies, ratio, extra = CASES[name]
    dims = list(cards)
    want = {element_label(e, dims) or "*" for e, _ in anomalies}
    if "traffic" in extra:
        want = {element_label(e, dims) for e, _ in extra["traffic"]}
    times, cpu, hits, n_leaves = [], [], 0, 0
    for seed in range(seeds):
        cube = make_cube(cards, anomalies, ratio, extra, seed, leaves)
        n_leaves = len(cube)
        start, start_cpu = time.perf_counter(), time.process_time()
        result = localize(cube, dims, **(RATIO if ratio else {}))
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        hits += as_set(result.label) == want
    return {"case": name, "dims": len(dims), "leaves": n_leaves,
            "median_s": statistics.median(times), "max_s": max(times),
            "cpu_s": statistics.median(cpu), "max_cpu_s": max(cpu), "accuracy": hits / seeds}


def run_squeeze(seeds: int) -> list[dict]:
    """F1 per (causes, dimensions per cause) on Squeeze-style cubes (sums of TP/FP/FN)."""
    # (0, 0): noise only; (c, 0): c causes of 1-3 dimensions each, mixed in one cube.
    cases = [(0, 0)] + [(c, d) for c in (1, 2, 3) for d in (1, 2, 3, 0)]
    return [_squeeze_case(n_causes, n_dims, seeds) for n_causes, n_dims in cases]


def _squeeze_case(n_causes: int, n_dims: int, seeds: int) -> dict:
    tp = fp = fn = 0
    times, cpu = [], []
    against = [0, 0]  # causes moving against the total: found, injected
    for seed in range(seeds):
        cube, truth = squeeze_cube(n_causes, n_dims, seed=1000 * n_causes + 100 * n_dims + seed)
        dims = [c for c in cube.columns if c not in ("actual", "expected")]
        start, start_cpu = time.perf_counter(), time.process_time()
        result = localize(cube, dims)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        found = as_set(result.label)
        a, b, c = set_f1(found, truth)
        tp, fp, fn = tp + a, fp + b, fn + c
        excess = cube["actual"] - cube["expected"]
        total = float(excess.sum())
        for label in truth:
            if float(excess[_mask(cube, label)].sum()) * total < 0:
                against[1] += 1
                against[0] += label in found
    return {"causes": n_causes, "dims": n_dims, "tp": tp, "fp": fp, "fn": fn,
            "cpu_s": statistics.mean(cpu), "max_s": max(times), "against": tuple(against)}


def _mask(cube, label: str):
    mask = None
    for part in label.split("&"):
        d, v = part.split("=")
        m = cube[d] == v
        mask = m if mask is None else mask & m
    return mask


def _f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0


def print_squeeze(seeds: int) -> None:
    rows = run_squeeze(seeds)
    print(f"\nSqueeze-style cubes (4 dims, 21,600 leaves, {seeds} per case): F1 per "
          f"(causes, dims per cause)")
    print("(dims 0: each cause has its own 1-3 dimensions)")
    print(f"{'causes':>6} {'dims':>4} {'F1':>6} {'prec':>6} {'recall':>6} "
          f"{'against total found':>20} {'cpu s/cube':>10} {'max wall s':>10}")
    for r in rows:
        prec = r["tp"] / (r["tp"] + r["fp"]) if r["tp"] + r["fp"] else 1.0
        rec = r["tp"] / (r["tp"] + r["fn"]) if r["tp"] + r["fn"] else 1.0
        got, of = r["against"]
        if not r["causes"]:
            print(f"{0:>6} {'-':>4} {'-':>6} {'-':>6} {'-':>6} {'noise only':>20} "
                  f"{r['cpu_s']:>10.4f} {r['max_s']:>10.4f}  {r['fp']} false cause(s)")
            continue
        print(f"{r['causes']:>6} {r['dims']:>4} {_f1(r['tp'], r['fp'], r['fn']):>6.3f} "
              f"{prec:>6.3f} {rec:>6.3f} {f'{got}/{of}':>20} {r['cpu_s']:>10.4f} "
              f"{r['max_s']:>10.4f}")
    tp, fp, fn = (sum(r[k] for r in rows if r["causes"]) for k in ("tp", "fp", "fn"))
    by_dims = {d: _f1(*(sum(r[k] for r in rows if r["dims"] == d and r["causes"])
                        for k in ("tp", "fp", "fn"))) for d in (1, 2, 3, 0)}
    print(f"overall F1 {_f1(tp, fp, fn):.3f} (1 dim {by_dims[1]:.3f}, 2 dims {by_dims[2]:.3f}, "
          f"3 dims {by_dims[3]:.3f}, mixed {by_dims[0]:.3f}); {statistics.mean(r['cpu_s'] for r in rows):.4f} s CPU "
          f"per cube on average (target F1 >= 0.97 at <= 0.2 s)")


def run_findings() -> None:
    """The hourly path: dozens of findings annotated, one leaf cube per measure."""
    from datetime import UTC, datetime

    from promptops.contracts.findings import Finding
    from promptops.detection.root_cause.findings import annotate_findings
    from promptops.lake.store import Lake
    from tests.helpers.root_cause import lake_week

    hour = datetime(2026, 11, 20, 14, tzinfo=UTC)
    models, apps, regions = [f"m{i}" for i in range(6)], ["chat", "search-qa", "code", "sql"], \
        ["eu", "us", "asia"]
    with tempfile.TemporaryDirectory() as tmp:
        lake = Lake(f"file://{tmp}/lake")
        lake_week(lake, hour, error_rate={("m2", "search-qa"): 0.4}, latency={"m4": 2.0},
                  calls=30.0, models=models, apps=apps, regions=regions)
        slices = [("overall", "*")] + [("model", m) for m in models] + \
            [("app", a) for a in apps] + [("region", r) for r in regions]
        findings = [Finding(rule=f"{metric}_rule", severity="warning", kind="threshold",
                            labels={"metric": metric, "dimension": d, "slice": v}, summary="")
                    for metric in ("error_rate", "latency_p95_ms", "requests") for d, v in slices]
        start, start_cpu = time.perf_counter(), time.process_time()
        out = annotate_findings(lake, hour, findings)
        wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    with_cause = sum("root_cause" in f.annotations for f in out)
    print(f"\nhourly findings: {len(findings)} findings (3 measures) annotated in {wall:.2f} s "
          f"wall, {cpu:.2f} s CPU (leaf cubes read from the lake included); {with_cause} with "
          f"a cause")


def run_command(leaves: int, repeat: int = 5) -> tuple[float, float, str]:
    cards, anomalies, ratio, extra = CASES["ratio, 2 dims (model&region x8)"]
    cube = make_cube(cards, anomalies, ratio, extra, 0, leaves)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cube.csv"
        cube.to_csv(path, index=False)
        cmd = [sys.executable, "-m", "promptops.detection.root_cause", str(path), "--dims",
               ",".join(cards), "--actual-den", "actual_den", "--expected-den", "expected_den"]
        walls, out = [], ""
        for _ in range(repeat):
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            walls.append(time.perf_counter() - start)
            out = proc.stdout.strip()
    return statistics.median(walls), min(walls), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--leaves", type=int, default=20_000)
    parser.add_argument("--squeeze-seeds", type=int, default=20,
                        help="Squeeze-style cubes per (causes, dims) case")
    parser.add_argument("--squeeze-only", action="store_true")
    parser.add_argument("--findings-only", action="store_true")
    args = parser.parse_args()
    if args.squeeze_only:
        print_squeeze(args.squeeze_seeds)
        return
    if args.findings_only:
        run_findings()
        return

    print(f"{'case':44} {'dims':>4} {'leaves':>7} {'median s':>9} {'max s':>8} {'cpu s':>7} "
          f"{'max cpu':>7} {'accuracy':>8}")
    rows = [run_case(name, args.seeds, args.leaves) for name in CASES]
    for r in rows:
        print(f"{r['case']:44} {r['dims']:>4} {r['leaves']:>7} {r['median_s']:>9.4f} "
              f"{r['max_s']:>8.4f} {r['cpu_s']:>7.4f} {r['max_cpu_s']:>7.4f} {r['accuracy']:>8.0%}")
    worst, worst_cpu = max(r["max_s"] for r in rows), max(r["max_cpu_s"] for r in rows)
    print(f"\nworst case: {worst:.4f} s wall, {worst_cpu:.4f} s CPU per cube (target <= 0.2 s; "
          f"wall includes waiting for a shared CPU); mean accuracy "
          f"{statistics.mean(r['accuracy'] for r in rows):.0%} over {args.seeds} seeds per case")
    print_squeeze(args.squeeze_seeds)
    run_findings()
    median, best, out = run_command(args.leaves)
    print(f"command on a {args.leaves}-leaf CSV: {median:.2f} s wall median, {best:.2f} s best "
          f"(process start and imports included); printed {out!r}")


if __name__ == "__main__":
    main()
