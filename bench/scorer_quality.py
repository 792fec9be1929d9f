"""Quality of the CSV scorer (``python -m promptops.detection.baselines score``) on labelled
series that look like real exports.

    .venv/bin/python bench/scorer_quality.py [--seed 13] [--days 21]

1. Builds one labelled series per anomaly shape (seeded): 15-minute samples with a daily
   cycle, noise, and the faults real exports have: jittered timestamps (+/-20% of the
   interval), duplicated stamps (1%), missing samples (2%), a few rows out of order, CRLF
   line endings. After a quiet first week it holds three anomalies of one shape: spikes,
   level shifts, drifts, seasonal breaks (the daily cycle inverted) or variance changes.
   Every row inside an anomaly is labelled.
2. Writes each series to a temporary CSV and scores it with
   :func:`promptops.detection.baselines.score_csv`. A file the scorer refuses is counted as
   refused and scored again after cleaning (sorted, snapped to the grid, first of each
   duplicate stamp kept; the dropped rows score 0), so a ranking figure exists either way.
3. Prints per shape and overall: precision and recall at the threshold with the best F1 (per
   row), event recall at that threshold (an anomaly counts when one of its rows is above
   it), the share of normal and of all rows scoring above 0.99, the number of rows tied at
   the top score, and the same for a rolling z-score (the previous day's mean and standard
   deviation, scored as erf(|z|/sqrt 2)); plus CPU seconds per series (imports excluded).

``scorer_quality(seed=...)`` returns the figures as a dict (bench/detection.py calls it).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPES = ("spike", "level_shift", "drift", "seasonal_break", "variance_change")
INTERVAL_S = 900
PER_DAY = 86_400 // INTERVAL_S
START = 1_767_225_600  # 2026-01-01T00:00:00Z
WARMUP_DAYS = 8


def make_series(shape: str, rng: np.random.Generator, days: int = 21
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unix seconds, values, event id per row: -1 normal, else the anomaly's number) in
    row order, with the export's faults (jitter, duplicates, gaps, a few swapped rows)."""
    n = days * PER_DAY
    t = np.arange(n)
    level = rng.uniform(50, 500)
    amp = rng.uniform(0.2, 0.5)
    noise = rng.uniform(0.02, 0.05) * level
    phase = 2 * np.pi * t / PER_DAY
    clean = level * (1 + amp * np.sin(phase - 2))
    values = clean + noise * rng.standard_normal(n)
    event = np.full(n, -1)
    starts = np.sort(rng.choice(np.arange(WARMUP_DAYS * PER_DAY, n - PER_DAY, PER_DAY),
                                3, replace=False)) + rng.integers(0, PER_DAY // 2, 3)
    for k, s in enumerate(starts):
        if shape == "spike":
            values[s] += rng.choice([-1, 1]) * rng.uniform(6, 10) * noise
            event[s] = k
            continue
        length = {"level_shift": 16, "drift": 24, "seasonal_break": 32,
                  "variance_change": 24}[shape]
        seg = slice(s, s + length)
        if shape == "level_shift":
            values[seg] += rng.choice([-1, 1]) * rng.uniform(4, 6) * noise
        elif shape == "drift":
            values[seg] += np.linspace(0, rng.uniform(6, 9), length) * noise
        elif shape == "seasonal_break":  # the cycle mirrored around its level
            values[seg] += 2 * (level - clean[seg])
        else:
            values[seg] += rng.uniform(3, 5) * noise * rng.standard_normal(length)
        event[seg] = k
    stamps = START + t * INTERVAL_S + rng.uniform(-0.2, 0.2, n) * INTERVAL_S
    keep = rng.random(n) > 0.02
    keep[event >= 0] = True  # the anomalies stay whole
    stamps, values, event = stamps[keep], values[keep], event[keep]
    dup = np.flatnonzero(rng.random(len(stamps)) < 0.01)
    order = np.argsort(np.concatenate([np.arange(len(stamps)), dup]), kind="stable")
    stamps = np.concatenate([stamps, stamps[dup]])[order]
    values = np.concatenate([values, values[dup] + noise * rng.standard_normal(len(dup))])[order]
    event = np.concatenate([event, event[dup]])[order]
    for i in rng.choice(len(stamps) - 1, 5, replace=False):  # a few rows out of order
        for arr in (stamps, values, event):
            arr[[i, i + 1]] = arr[[i + 1, i]]
    return np.round(stamps).astype(np.int64), np.round(values, 2), event


def write_csv(path: Path, stamps: np.ndarray, values: np.ndarray) -> None:
    lines = ["timestamp,value"] + [f"{s},{v:.2f}" for s, v in zip(stamps, values, strict=True)]
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())


def read_scores(path: Path) -> np.ndarray:
    import pandas as pd

    return pd.read_csv(path)["anomaly_score"].to_numpy(dtype="float64")


def score_file(path: Path, stamps: np.ndarray, values: np.ndarray, work: Path
               ) -> tuple[np.ndarray, bool, float]:
    """Scores per input row, whether the raw file was refused, CPU seconds."""
    from promptops.detection.baselines import CsvError, score_csv

    out = work / "out.csv"
    began = time.process_time()
    try:
        score_csv(path, out)
        return read_scores(out), False, time.process_time() - began
    except CsvError:
        pass
    # Refused: clean it as a user would (sort, snap to the grid, drop repeated stamps).
    slot = np.round((stamps - START) / INTERVAL_S).astype(np.int64)
    order = np.argsort(slot, kind="stable")
    _, first = np.unique(slot[order], return_index=True)
    rows = order[first]
    clean = work / "clean.csv"
    write_csv(clean, START + slot[rows] * INTERVAL_S, values[rows])
    began = time.process_time()
    score_csv(clean, out)
    cpu = time.process_time() - began
    scores = np.zeros(len(stamps))
    scores[rows] = read_scores(out)
    return scores, True, cpu


def rolling_z(stamps: np.ndarray, values: np.ndarray, window: int = PER_DAY) -> np.ndarray:
    """The plain comparison: |z| against the previous ``window`` rows in time order."""
    import pandas as pd
    from scipy.special import erf

    order = np.argsort(stamps, kind="stable")
    x = pd.Series(values[order])
    mean = x.rolling(window, min_periods=10).mean().shift(1)
    sd = x.rolling(window, min_periods=10).std().shift(1)
    z = ((x - mean).abs() / sd).to_numpy()
    out = np.zeros(len(values))
    out[order] = np.nan_to_num(erf(z / math.sqrt(2)), nan=0.0)
    return out


def figures(scores: np.ndarray, event: np.ndarray) -> dict:
    """Best-F1 precision/recall per row, event recall there, shares above 0.99, top ties."""
    from sklearn.metrics import precision_recall_curve

    labels = event >= 0
    prec, rec, thr = precision_recall_curve(labels, scores)
    f1 = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-12), 0)[:-1]
    best = int(np.argmax(f1))
    cut = thr[best]
    events = np.unique(event[labels])
    caught = sum(bool(np.any(scores[event == e] >= cut)) for e in events)
    top = scores.max()
    return {"precision": float(prec[best]), "recall": float(rec[best]),
            "f1": float(f1[best]), "threshold": float(cut),
            "event_recall": caught / max(len(events), 1),
            "above_099_normal": float(np.mean(scores[~labels] > 0.99)),
            "above_099_all": float(np.mean(scores > 0.99)),
            "tied_at_top": int(np.sum(scores == top))}


def scorer_quality(seed: int = 13, days: int = 21) -> dict:
    """Per shape and overall, for the scorer and the rolling z-score: the figures of
    :func:`figures`; plus refused files and CPU seconds per series."""
    import warnings

    import scipy.stats  # noqa: F401 - imports are not scoring time
    import statsmodels.tsa.holtwinters  # noqa: F401

    rng = np.random.default_rng(seed)
    result: dict = {"shapes": {}, "refused": 0, "cpu_s": []}
    pooled: dict[str, list] = {"scorer": [], "zscore": [], "event": []}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        work = Path(tmp)
        for offset, shape in enumerate(SHAPES):
            stamps, values, event = make_series(shape, rng, days)
            path = work / f"{shape}.csv"
            write_csv(path, stamps, values)
            scores, refused, cpu = score_file(path, stamps, values, work)
            z = rolling_z(stamps, values)
            result["refused"] += int(refused)
            result["cpu_s"].append(cpu)
            result["shapes"][shape] = {"scorer": figures(scores, event),
                                       "zscore": figures(z, event), "refused": refused,
                                       "rows": len(stamps), "cpu_s": cpu}
            pooled["scorer"].append(scores)
            pooled["zscore"].append(z)
            pooled["event"].append(np.where(event >= 0, event + 10 * offset, -1))
    event_all = np.concatenate(pooled["event"])
    result["overall"] = {name: figures(np.concatenate(pooled[name]), event_all)
                         for name in ("scorer", "zscore")}
    return result


def _line(label: str, f: dict) -> str:
    return (f"P {f['precision']:.2f} R {f['recall']:.2f} F1 {f['f1']:.2f} "
            f"event-R {f['event_recall']:.2f} >0.99: normal {f['above_099_normal']:.2%} "
            f"all {f['above_099_all']:.2%}  top ties {f['tied_at_top']}")


def print_scorer_quality(res: dict, seed: int, days: int) -> None:
    print(f"CSV scorer on {len(SHAPES)} labelled 15-minute series of {days} days "
          f"(jitter, duplicates, gaps, unordered rows, CRLF); seed {seed}")
    for shape, r in res["shapes"].items():
        note = " (raw file REFUSED; scored after cleaning)" if r["refused"] else ""
        print(f"  {shape:16s} {r['rows']} rows, {r['cpu_s']:.2f} s CPU{note}")
        print(f"    scorer   {_line('scorer', r['scorer'])}")
        print(f"    z-score  {_line('zscore', r['zscore'])}")
    for name in ("scorer", "zscore"):
        print(f"  overall {name:7s} {_line(name, res['overall'][name])}")
    print(f"  refused files: {res['refused']} of {len(SHAPES)}; CPU per series: mean "
          f"{np.mean(res['cpu_s']):.2f} s, max {np.max(res['cpu_s']):.2f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--days", type=int, default=21)
    args = parser.parse_args(argv)
    print_scorer_quality(scorer_quality(seed=args.seed, days=args.days), args.seed, args.days)
    return 0


if __name__ == "__main__":
    sys.exit(main())
