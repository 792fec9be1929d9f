"""Cost movers: which app, team or model moved the day's cost.

A day's total can hide a slice that jumped: a 7.7x jump of one small app reads as +3.7% day
over day overall. :func:`compare` sets each slice's cost on the report day against a
comparison day (the day before, the same weekday last week) *on the hours both days have*,
and ranks the slices by absolute change in USD, with the ratio beside it. A slice takes part
only if it cost at least ``PROMPTOPS_COST_MOVERS_MIN_USD`` on one of the two days, so a
$0.01 -> $0.05 slice never tops the list. A comparison day without data is "no data for
<date>", never $0; a slice whose cost is unknown (an unpriced model) is left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

import pandas as pd
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from promptops.contracts import metric_table as mt

#: The dimensions whose slices can be movers (users are cut to a top-N per hour plus
#: "other", so their day totals are not comparable between days).
DIMENSIONS = ("app", "team", "model")
#: (label, days back) of the comparison days.
COMPARISONS = (("the day before", 1), ("the same weekday last week", 7))
COLUMNS = ["dimension", "slice", "cost_usd", "before_usd", "change_usd", "ratio"]


class MoversConfig(BaseSettings):
    """``PROMPTOPS_COST_MOVERS_MIN_USD`` and ``PROMPTOPS_COST_MOVERS_TOP``."""

    model_config = SettingsConfigDict(env_prefix="PROMPTOPS_COST_MOVERS_", extra="ignore")

    #: A slice is a mover only if it cost at least this much on one of the two days
    #: (over the compared hours).
    min_usd: float = Field(default=1.0, ge=0)
    #: Movers kept per dimension in the summary (the CSV has every slice over the minimum).
    top: int = Field(default=3, ge=1)


@dataclass(frozen=True)
class Comparison:
    against: str
    day: date
    #: Hours of the day present on both days (what the costs are summed over).
    hours: int
    #: Why the comparison is partial or missing; None when both days are complete.
    note: str | None
    #: Every slice over the minimum cost, largest absolute change first (``COLUMNS``).
    table: pd.DataFrame

    def as_dict(self, top: int) -> dict[str, Any]:
        """JSON-safe, with the ``top`` movers of each dimension, largest change first."""
        movers = self.table.groupby("dimension", sort=False).head(top)
        return {"against": self.against, "date": self.day.isoformat(), "hours": self.hours,
                "note": self.note, "movers": [
                    {k: (None if pd.isna(v) else v) for k, v in row.items()}
                    for row in movers.to_dict("records")]}


def slice_costs(rows: pd.DataFrame) -> pd.Series:
    """Cost per (dimension, slice) over the rows' hours; a slice with no known cost in any
    hour (unpriced) is NaN, not 0."""
    costs = rows[(rows["metric"] == mt.COST_USD) & rows["dimension"].isin(DIMENSIONS)]
    return costs.groupby(["dimension", "slice"])["value"].sum(min_count=1)


def compare(against: str, day: date, today: pd.DataFrame, before: pd.DataFrame, *,
            hours: int, note: str | None, min_usd: float) -> Comparison:
    """``today`` and ``before``: the two days' metric rows on the same hours of the day."""
    if not hours:
        return Comparison(against, day, 0, note, pd.DataFrame(columns=COLUMNS))
    # A slice without rows on one day had no traffic then: 0, known. NaN stays unknown.
    both = pd.concat({"cost_usd": slice_costs(today), "before_usd": slice_costs(before)},
                     axis=1)
    seen_today = both.index.isin(slice_costs(today).index)
    seen_before = both.index.isin(slice_costs(before).index)
    both.loc[~seen_today, "cost_usd"] = 0.0
    both.loc[~seen_before, "before_usd"] = 0.0
    both = both.dropna()
    both = both[both.max(axis=1) >= min_usd]
    both["change_usd"] = both["cost_usd"] - both["before_usd"]
    both["ratio"] = (both["cost_usd"] / both["before_usd"]).where(both["before_usd"] > 0)
    both["_size"] = both["change_usd"].abs()
    table = both.reset_index().sort_values(["_size", "dimension", "slice"],
                                           ascending=[False, True, True])
    return Comparison(against, day, hours, note,
                      table[COLUMNS].reset_index(drop=True))


def to_table(comparisons: list[Comparison]) -> pd.DataFrame:
    """Every comparison's slices in one table (the report's ``cost_movers.csv``)."""
    frames = [c.table.assign(against=c.against, date=c.day.isoformat(), hours=c.hours)
              for c in comparisons if len(c.table)]
    columns = ["against", "date", "hours", *COLUMNS]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]


def fmt_ratio(ratio: float | None) -> str:
    """``7.7×``; ``new`` when the slice cost nothing before."""
    return "new" if ratio is None or pd.isna(ratio) else f"{ratio:.1f}×"


def fmt_change(change: float) -> str:
    return f"{'+' if change >= 0 else '−'}${abs(change):,.2f}"
