"""The command ``python -m promptops.detection.root_cause``: localise one CSV of leaves.

``python -m promptops.detection.root_cause CSV --dims model,app,region --actual actual
--expected expected [--top 3]`` prints the ranked set as ``dim=value&dim=value;dim=value``
(``*`` when the whole cube moved, nothing when no cause is significant). With
``--actual-den`` and ``--expected-den`` the measure is the ratio ``actual / actual-den``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence

import numpy as np

from promptops.detection.root_cause.localization import check_columns, localize
from promptops.errors import InvalidInput


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m promptops.detection.root_cause",
        description="Localise the root cause of one anomalous moment. The CSV has one row "
                    "per leaf slice: a column per dimension plus the actual and expected "
                    "value of the measure. Prints the ranked root-cause set as "
                    "dim=value&dim=value;dim=value ('*' when everything moved alike, an "
                    "empty line when nothing explains the change significantly).")
    p.add_argument("csv", help="the leaf slices (CSV with a header row)")
    p.add_argument("--dims", required=True, help="dimension columns, comma separated")
    p.add_argument("--actual", default="actual", help="column of the actual value")
    p.add_argument("--expected", default="expected", help="column of the expected value")
    p.add_argument("--actual-den", help="ratio measure: column of the actual denominator "
                                        "(--actual is then the numerator)")
    p.add_argument("--expected-den", help="ratio measure: column of the expected denominator")
    p.add_argument("--top", type=int, default=3, help="at most this many causes (default 3)")
    p.add_argument("--max-layer", type=int, default=3,
                   help="at most this many dimensions in one cause (default 3)")
    p.add_argument("--min-share", type=float, default=None,
                   help="a cause explains at least this share of the change (default: 0.05 "
                        "for a ratio, none for an additive measure)")
    p.add_argument("--explain", action="store_true",
                   help="also print the sentence and the Markdown table (to stderr)")
    return p


def read_cube_csv(path: str) -> dict[str, np.ndarray]:
    """A CSV with a header row as ``{column: values as text}`` (the standard library's
    reader: the command must not pay for importing pandas)."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header:
            raise InvalidInput(f"{path} is empty; expected a header row and one row per leaf")
        rows = list(reader)
    if len(set(header)) != len(header):
        raise InvalidInput(f"{path}: column names repeat in the header: {', '.join(header)}")
    widths = {len(r) for r in rows}
    if widths - {len(header)}:
        line = next(i + 2 for i, r in enumerate(rows) if len(r) != len(header))
        raise InvalidInput(f"{path}: line {line} has a different number of fields than the "
                         f"header ({len(header)})")
    if not rows:
        return {name: np.array([], dtype=object) for name in header}
    return {name: np.array(col, dtype=object) for name, col in zip(header, zip(*rows,
                                                                                strict=True),
                                                                 strict=True)}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    dims = [d.strip() for d in args.dims.split(",") if d.strip()]
    if not dims:
        print("error: --dims names no column", file=sys.stderr)
        return 2
    if (args.actual_den is None) != (args.expected_den is None):
        print("error: a ratio measure needs both --actual-den and --expected-den",
              file=sys.stderr)
        return 2
    if args.top < 1 or args.max_layer < 1:
        print("error: --top and --max-layer must be at least 1", file=sys.stderr)
        return 2
    try:
        cube = read_cube_csv(args.csv)
    except (OSError, ValueError, csv.Error, UnicodeDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    needed = {d: "--dims" for d in dims}
    for flag in ("actual", "expected", "actual_den", "expected_den"):
        column = getattr(args, flag)
        if column is not None:
            needed.setdefault(column, f"--{flag.replace('_', '-')}")
    try:
        check_columns(cube, needed, what=args.csv)
        # Rows as the file numbers its lines (the header is line 1).
        result = localize(cube, dims, actual=args.actual, expected=args.expected,
                          actual_den=args.actual_den, expected_den=args.expected_den,
                          max_layer=args.max_layer, max_causes=args.top,
                          min_share=args.min_share, row_name=lambda i: f"line {i + 2}")
    except ValueError as exc:
        print(f"error: {args.csv}: {exc}", file=sys.stderr)
        return 2
    print(result.label)
    if args.explain:
        print(result.sentence, file=sys.stderr)
        print(result.table(), file=sys.stderr)
    return 0
