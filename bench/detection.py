"""Alerting quality (issue 13 §6): a labelled multi-week simulation from an EMPTY lake, every
hourly, 5-minute and daily step in order, scored as an on-call engineer feels it.

    python bench/detection.py [--days 21] [--seed 11] [--calls-per-hour 2000]
                              [--skip-control | --control-only] [--serial] [--keep DIR]
                              [--json FILE] [--no-scorer]

Prints recall and detection delay per incident kind (hourly kinds within one hourly run,
health kinds within 10 minutes), the root cause top-1 per incident, messages per incident
(and the most per incident per route per hour), pages and warnings outside incidents per
day (week 1, the warm-up, and later weeks), anything on the nightly batch, the prompt
rollout and the holiday dip, the top offenders, and the same for a no-incident control run.
It also scores the CSV scorer on labelled series (bench/scorer_quality.py; ``--no-scorer``
skips it). The harness itself is
bench/alert_quality.py; ``run_quality()`` returns the report as a dict.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from alert_quality import print_report, rescore, run_quality


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=int, default=21, help="simulated days (>= 14 to score "
                    "weeks 2-3; incidents start on day 8)")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--calls-per-hour", type=int, default=2000)
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--skip-control", action="store_true", help="no control run")
    group.add_argument("--control-only", action="store_true", help="only the control run")
    ap.add_argument("--keep", type=Path, help="keep the lakes in this folder")
    ap.add_argument("--serial", action="store_true",
                    help="run the control run after the incidents run, not beside it")
    ap.add_argument("--json", type=Path, help="also write the report as JSON here")
    ap.add_argument("--no-scorer", dest="scorer", action="store_false",
                    help="skip scoring the CSV scorer on labelled series (bench/scorer_quality.py)")
    ap.add_argument("--rescore", type=Path, metavar="JSON",
                    help="score the raw messages of a report saved with --json again, no run")
    args = ap.parse_args()
    if args.days < 1:
        ap.error("--days must be at least 1")
    if args.rescore:
        print_report(rescore(json.loads(args.rescore.read_text())))
        return

    report = run_quality(args.days, args.seed, control=not args.skip_control,
                         incidents=not args.control_only, calls_per_hour=args.calls_per_hour,
                         keep=args.keep, parallel=not args.serial)
    if args.scorer:
        from scorer_quality import print_scorer_quality, scorer_quality

        report["scorer"] = scorer_quality(seed=args.seed)
    print_report(report)
    if args.scorer:
        print()
        print_scorer_quality(report["scorer"], args.seed, 21)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
