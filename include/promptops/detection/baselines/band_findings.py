"""The hourly check against the day's bands: a value outside its band, far enough from
what was expected, on enough samples, becomes a :class:`~promptops.contracts.findings.Finding`.

A row fires when all hold:

- it is outside ``[lower, upper]`` on the metric's bad side (``direction``: a high error rate,
  a low success rate; ``both`` for request counts);
- ``|value - expected|`` is at least ``min_change`` (metric unit) and at least
  ``min_relative_change x |expected|``, so a narrow band around a quiet slice does not page;
- ``samples >= min_samples`` (counts and sums need none: a drop to nothing is the point).

For rates (error rate, success rate, intent accuracy) the band is first widened to the Wilson
interval of the expected rate at the hour's sample count, so binomial noise on a small slice
does not fire.

Severity is ``critical`` when the value is also outside the band widened ``critical_factor``
times around expected (``|value - expected| >= critical_factor x`` the half-width on that
side; a zero-width band, from a constant history, makes every finding critical), else
``warning``. Rule name ``baseline_<metric>``, kind ``baseline``.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from promptops.contracts.findings import Finding
from promptops.contracts.metric_table import METRICS, OVERALL
from promptops.detection.baselines.bands import read_bands, refit_baselines
from promptops.detection.baselines.config import METRIC_UNITS, BaselineConfig, metric_bounds
from promptops.detection.baselines.holt_winters import HOLT_WINTERS
from promptops.detection.rules import SAMPLE_NOUNS, format_value, metric_label
from promptops.errors import InvalidInput, MissingData
from promptops.stats import wilson_interval
from promptops.timeutil import as_utc, hour_floor

if TYPE_CHECKING:
    from promptops.lake.store import Lake

log = logging.getLogger(__name__)

_KEY = ["metric", "dimension", "slice"]
_METHOD_WORDS = {HOLT_WINTERS: "Holt-Winters", "median_mad": "median/MAD fallback"}
_SUFFIXES = ("%", " ms", " tokens", "/5", " calls/min")


def band_findings(current: pa.Table | None, bands: pa.Table | None, hour: datetime,
                  config: BaselineConfig | None = None) -> list[Finding]:
    """Findings for the metric rows of ``hour`` in ``current`` (METRICS_SCHEMA) that breach
    their band for that hour in ``bands`` (BANDS_SCHEMA), sorted by rule, dimension, slice."""
    config = config if config is not None else BaselineConfig()
    hour = hour_floor(hour)
    if current is None or bands is None or current.num_rows == 0 or bands.num_rows == 0:
        return []
    now = _rows_of_hour(current, hour, ["metric", "dimension", "slice", "value", "samples"])
    band = _rows_of_hour(bands, hour, ["metric", "dimension", "slice", "expected", "lower",
                                       "upper", "method", "reason", "fitted_at"])
    try:
        df = now.merge(band, on=_KEY, how="inner", validate="one_to_one")
    except pd.errors.MergeError:
        dup = now[now.duplicated(_KEY)] if now.duplicated(_KEY).any() else band[
            band.duplicated(_KEY)]
        first = dup.iloc[0]
        raise InvalidInput(f"baseline check for {hour:%Y-%m-%d %H:%M} UTC: duplicate rows for "
                         f"metric={first.metric} {first.dimension}={first.slice}; pass one "
                         "hour's metrics and one day's bands") from None
    df = df[df["value"].notna() & df["expected"].notna() & df["lower"].notna()
            & df["upper"].notna()]
    if df.empty:
        return []
    metrics = df["metric"].to_numpy()
    lookup = {m: {f: config.for_metric(f, m) for f in ("direction", "min_change",
                                                       "min_relative_change", "min_samples")}
              for m in set(metrics)}
    value = df["value"].to_numpy(dtype="float64")
    expected = df["expected"].to_numpy(dtype="float64")
    lower, upper = df["lower"].to_numpy(dtype="float64"), df["upper"].to_numpy(dtype="float64")
    samples = df["samples"].to_numpy(dtype="float64")
    # A rate on n calls cannot be judged finer than its binomial noise: widen the band to
    # the Wilson interval of the expected rate at this hour's n (a quiet slice whose usual
    # error rate is 0 has 2 errors in 69 calls by chance, not an incident).
    rate = np.array([metric_bounds(m) == (0.0, 1.0) for m in metrics])
    # At the band's own coverage (z); n <= 0 gives [0, 1].
    w_lo, w_hi = wilson_interval(np.clip(expected, 0, 1) * samples, samples,
                                 alpha=1 - config.coverage)
    widened = rate & ((w_lo < lower) | (w_hi > upper))
    lower = np.where(rate, np.fmin(lower, w_lo), lower)
    upper = np.where(rate, np.fmax(upper, w_hi), upper)
    direction = np.array([lookup[m]["direction"] for m in metrics])
    needed = np.maximum([lookup[m]["min_change"] for m in metrics],
                        np.array([lookup[m]["min_relative_change"] for m in metrics])
                        * np.abs(expected))
    enough = df["samples"].to_numpy() >= np.array([lookup[m]["min_samples"] for m in metrics])
    high = (value > upper) & (direction != "below")
    low = (value < lower) & (direction != "above")
    change = np.abs(value - expected)
    fires = (high | low) & (change >= needed) & (change > 0) & enough
    half = np.where(high, upper - expected, expected - lower)
    critical = (change >= config.critical_factor * half) & ~np.isin(metrics, config.warning_only)

    out = []
    for i in np.flatnonzero(fires):
        row = df.iloc[i]
        unit = METRIC_UNITS.get(row.metric, "count")
        fmt = lambda v, unit=unit: format_value(float(v), unit)  # noqa: E731
        band_text = _range(fmt(lower[i]), fmt(upper[i]))
        method = _METHOD_WORDS.get(row.method, row.method)
        summary = (f"{metric_label(row.metric)} {fmt(value[i])} outside expected {band_text} "
                   f"({method}, same hour's band) {_where(row.dimension, row.slice)} "
                   f"({_samples(row.metric, row.samples)})")
        fitted = as_utc(pd.Timestamp(row.fitted_at).to_pydatetime())
        rel = lookup[row.metric]["min_relative_change"]
        levels = (f"outside the band and at least {fmt(needed[i])} from expected"
                  + (f" (the larger of {fmt(lookup[row.metric]['min_change'])} and {rel:.0%} "
                     "of expected)" if rel else "")
                  + f"; critical beyond {config.critical_factor:g}x the band's half-width")
        labels = {"metric": row.metric, "dimension": row.dimension, "slice": row.slice,
                  "service": config.service}
        if row.dimension != OVERALL:
            labels.setdefault(row.dimension, row.slice)
        annotations = {
            "window": "1h",
            "band": f"{band_text}, expected {fmt(expected[i])} ({method}, fitted "
                    f"{fitted:%Y-%m-%d %H:%M} UTC)",
            "baseline_method": str(row.method),
            "baseline_reason": str(row.reason),
            "levels": levels,
        }
        if widened[i]:
            annotations["band"] += (f"; widened to the binomial interval for "
                                    f"{int(samples[i]):,} samples")
        out.append(Finding(
            rule=f"baseline_{row.metric}", severity="critical" if critical[i] else "warning",
            kind="baseline", labels=labels, summary=summary, value=float(value[i]),
            threshold=float(upper[i] if high[i] else lower[i]), pending_for=config.pending_for,
            keep_firing_for=config.keep_firing_for, annotations=annotations))
    return sorted(out, key=lambda f: (f.rule, f.labels["dimension"], f.labels["slice"]))


def baseline_findings_for_hour(lake: Lake, hour: datetime, config: BaselineConfig | None = None,
                               *, fit_missing: bool = True) -> list[Finding]:
    """The hourly evaluation's baseline half: the hour's metrics partition against the
    bands stored for its day. When the day has no bands yet (the daily refit has not run,
    or a backfill reaches back before it), ``fit_missing`` fits and stores them first
    (a few seconds, once per day); otherwise there are no findings."""
    config = config if config is not None else BaselineConfig()
    hour = hour_floor(hour)
    current = lake.read_partition(METRICS, hour)
    if current is None:
        raise MissingData(f"no metrics partition for {hour.isoformat()} in "
                          f"{lake.partition_dir(METRICS, hour)}; run the metrics task first")
    bands = read_bands(lake, hour)
    if bands is None and fit_missing:
        log.info("no baselines for %s yet: fitting them now", f"{hour:%Y-%m-%d}")
        refit_baselines(lake, hour, config)
        bands = read_bands(lake, hour)
    elif bands is None:
        log.info("no baselines for %s: baseline check skipped", f"{hour:%Y-%m-%d}")
    return band_findings(current, bands, hour, config)


def _rows_of_hour(table: pa.Table, hour: datetime, columns: list[str]) -> pd.DataFrame:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise InvalidInput(f"baseline check: table lacks column(s) {', '.join(missing)}")
    if "hour" in table.column_names:
        hours = table.column("hour")
        table = table.filter(pc.equal(hours, pa.scalar(hour, hours.type)))
    return table.select(columns).to_pandas()


def _range(lo: str, hi: str) -> str:
    """``0.3-0.9%`` rather than ``0.3%-0.9%`` when both ends share a unit suffix."""
    for suffix in _SUFFIXES:
        if lo.endswith(suffix) and hi.endswith(suffix):
            return f"{lo[: -len(suffix)]}-{hi}"
    return f"{lo}-{hi}"


def _where(dim: str, slc: str) -> str:
    return "overall" if dim == OVERALL else f"on {dim}={slc}"


def _samples(metric: str, n: float) -> str:
    count = 0 if n is None or (isinstance(n, float) and math.isnan(n)) else int(n)
    return f"{count:,} {SAMPLE_NOUNS.get(metric, 'calls')}"
