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
from tests.helpers.root_cause import as_set, element_label, synthetic_cube  # noqa: E402

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
    times, hits, n_leaves = [], 0, 0
    for seed in range(seeds):
        cube = make_cube(cards, anomalies, ratio, extra, seed, leaves)
        n_leaves = len(cube)
        start = time.perf_counter()
        result = localize(cube, dims, **(RATIO if ratio else {}))
        times.append(time.perf_counter() - start)
        hits += as_set(result.label) == want
    return {"case": name, "dims": len(dims), "leaves": n_leaves,
            "median_s": statistics.median(times), "max_s": max(times),
            "accuracy": hits / seeds}


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
    args = parser.parse_args()

    print(f"{'case':44} {'dims':>4} {'leaves':>7} {'median s':>9} {'max s':>8} {'accuracy':>8}")
    rows = [run_case(name, args.seeds, args.leaves) for name in CASES]
    for r in rows:
        print(f"{r['case']:44} {r['dims']:>4} {r['leaves']:>7} {r['median_s']:>9.4f} "
              f"{r['max_s']:>8.4f} {r['accuracy']:>8.0%}")
    worst = max(r["max_s"] for r in rows)
    print(f"\nworst case: {worst:.4f} s per cube (target <= 0.2 s); mean accuracy "
          f"{statistics.mean(r['accuracy'] for r in rows):.0%} over {args.seeds} seeds per case")
    median, best, out = run_command(args.leaves)
    print(f"command on a {args.leaves}-leaf CSV: {median:.2f} s wall median, {best:.2f} s best "
          f"(process start and imports included); printed {out!r}")


if __name__ == "__main__":
    main()
