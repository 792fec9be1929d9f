"""``python -m promptops.detection.baselines score IN.csv [-o OUT.csv] [--season N]``.

Scores a ``timestamp,value`` CSV causally (each point from earlier points only) with the
same fitting code the daily baselines use, and writes ``timestamp,value,anomaly_score``
(score in [0, 1): 0.9 at a 1% tail probability, 0.99 at 1e-4), one line per input line.
This is how the detector is checked against labelled series from outside the project. Settings (history length, band coverage...) come from the
``PROMPTOPS_BASELINE_*`` environment variables.
"""

from __future__ import annotations

import argparse
import sys

from promptops.detection.baselines.config import BaselineConfigError, load_baseline_config
from promptops.detection.baselines.scoring import CsvError, score_csv


def _season(value: str) -> int:
    try:
        season = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of points, got {value!r}") from None
    if season < 1:
        raise argparse.ArgumentTypeError("must be >= 1 (1 = no seasonality)")
    return season


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m promptops.detection.baselines",
                                     description=__doc__.split("\n\n")[1])
    sub = parser.add_subparsers(dest="command", required=True)
    score = sub.add_parser("score", help="score a timestamp,value CSV causally",
                           description="Write timestamp,value,anomaly_score for IN.csv.")
    score.add_argument("input", metavar="IN.csv", help="CSV with a header naming 'timestamp' "
                       "and 'value' (ISO 8601, or Unix seconds or milliseconds; any order; "
                       "repeated or jittered stamps are placed on the series' grid)")
    score.add_argument("-o", "--output", metavar="OUT.csv", default="-",
                       help="where to write the scores (default: standard output)")
    score.add_argument("--season", type=_season, default=None,
                       help="points per season (default: from the interval: 24 for hourly, "
                            "288 for 5-minute, 7 for daily data; 1 = none)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_baseline_config()
        done = score_csv(args.input, args.output, season=args.season, config=config)
    except (CsvError, BaselineConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    target = "standard output" if args.output == "-" else args.output
    notes = [f"{done[key]} {word}" for key, word in (
        ("missing", "missing"), ("unordered", "out of order"),
        ("snapped", "placed on the grid"), ("merged", "sharing a slot")) if done[key]]
    interval = ("no regular interval: scored in time order" if done["sequence"]
                else f"interval {done['interval_s']:g} s")
    print(f"scored {done['points']} points ({interval}, season {done['season']}"
          f"{', ' + ', '.join(notes) if notes else ''}) -> {target}; highest score "
          f"{done['max_score']:.6f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
