"""Baseline settings: which series get a baseline, how it is fitted, when a value breaches it.

Every knob reads from ``PROMPTOPS_BASELINE_<FIELD>`` (e.g. ``PROMPTOPS_BASELINE_HISTORY_DAYS=21``).
List fields take JSON or a comma-separated list (``PROMPTOPS_BASELINE_METRICS=requests,error_rate``);
per-metric fields take a JSON object that is merged over the defaults, with ``"*"`` for every
metric not named (``PROMPTOPS_BASELINE_MIN_CHANGE='{"error_rate": 0.01}'``).
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from promptops.contracts import metric_table as mt
from promptops.errors import ConfigError, PromptOpsError

ENV_PREFIX = "PROMPTOPS_BASELINE_"

Direction = Literal["above", "below", "both"]

#: Metrics that get a baseline unless configured otherwise.
DEFAULT_METRICS = [mt.REQUESTS, mt.ERROR_RATE, mt.SUCCESS_RATE, mt.LATENCY_P95_MS,
                   mt.LATENCY_MEAN_MS, mt.TOTAL_TOKENS, mt.COST_USD, mt.INTENT_ACCURACY,
                   mt.RELEVANCE_MEAN]
DEFAULT_DIMENSIONS = [mt.OVERALL, "model", "app", "team"]

#: Every metric name the hourly metrics and the health sensor write (config is checked
#: against it so a typo fails loudly instead of baselining nothing).
KNOWN_METRICS = frozenset({
    mt.REQUESTS, mt.ERRORS, mt.SUCCESS_RATE, mt.ERROR_RATE, mt.LATENCY_MEAN_MS,
    mt.LATENCY_P50_MS, mt.LATENCY_P95_MS, mt.LATENCY_P99_MS, mt.PROMPT_TOKENS,
    mt.COMPLETION_TOKENS, mt.CACHED_TOKENS, mt.TOTAL_TOKENS, mt.COST_USD,
    mt.UNPRICED_REQUESTS, mt.UNPRICED_TOKENS, mt.INTENT_ACCURACY, mt.INTENT_PRECISION,
    mt.INTENT_RECALL, mt.INTENT_F1, mt.RELEVANCE_MEAN, mt.RELEVANCE_COVERAGE,
    mt.PEAK_CALLS_PER_MINUTE, "gpu_utilization_pct",
})

#: Counts and sums: an observed hour without a row for a slice means zero (the slice had no
#: traffic). For every other metric a missing row is unknown, never zero.
VOLUME_METRICS = frozenset({
    mt.REQUESTS, mt.ERRORS, mt.PROMPT_TOKENS, mt.COMPLETION_TOKENS, mt.CACHED_TOKENS,
    mt.TOTAL_TOKENS, mt.COST_USD, mt.UNPRICED_REQUESTS, mt.UNPRICED_TOKENS,
})

#: Where a metric's values can lie; bands are clipped to it.
METRIC_BOUNDS: dict[str, tuple[float, float]] = {
    mt.SUCCESS_RATE: (0.0, 1.0), mt.ERROR_RATE: (0.0, 1.0), mt.INTENT_ACCURACY: (0.0, 1.0),
    mt.INTENT_PRECISION: (0.0, 1.0), mt.INTENT_RECALL: (0.0, 1.0), mt.INTENT_F1: (0.0, 1.0),
    mt.RELEVANCE_COVERAGE: (0.0, 1.0), mt.RELEVANCE_MEAN: (0.0, 5.0),
    "gpu_utilization_pct": (0.0, 100.0),
}
_NON_NEGATIVE = (0.0, math.inf)

#: The unit a metric is shown in (the units of :func:`promptops.detection.rules.format_value`).
METRIC_UNITS: dict[str, str] = {
    mt.SUCCESS_RATE: "ratio", mt.ERROR_RATE: "ratio", mt.INTENT_ACCURACY: "ratio",
    mt.INTENT_PRECISION: "ratio", mt.INTENT_RECALL: "ratio", mt.INTENT_F1: "ratio",
    mt.RELEVANCE_COVERAGE: "ratio", mt.LATENCY_MEAN_MS: "ms", mt.LATENCY_P50_MS: "ms",
    mt.LATENCY_P95_MS: "ms", mt.LATENCY_P99_MS: "ms", mt.PROMPT_TOKENS: "tokens",
    mt.COMPLETION_TOKENS: "tokens", mt.CACHED_TOKENS: "tokens", mt.TOTAL_TOKENS: "tokens",
    mt.UNPRICED_TOKENS: "tokens", mt.COST_USD: "usd", mt.RELEVANCE_MEAN: "score",
    mt.PEAK_CALLS_PER_MINUTE: "calls/min", "gpu_utilization_pct": "pct",
}

# Per-metric defaults; "*" is every metric not named. Values are in the metric's unit.
_DEFAULT_DIRECTION: dict[str, Direction] = {
    "*": "both", mt.ERROR_RATE: "above", mt.SUCCESS_RATE: "below",
    mt.LATENCY_P95_MS: "above", mt.LATENCY_MEAN_MS: "above", mt.LATENCY_P50_MS: "above",
    mt.LATENCY_P99_MS: "above", mt.TOTAL_TOKENS: "above", mt.COST_USD: "above",
    mt.INTENT_ACCURACY: "below", mt.RELEVANCE_MEAN: "below",
}
_DEFAULT_MIN_CHANGE: dict[str, float] = {
    "*": 0.0, mt.REQUESTS: 50.0, mt.ERROR_RATE: 0.02, mt.SUCCESS_RATE: 0.02,
    mt.LATENCY_P95_MS: 250.0, mt.LATENCY_MEAN_MS: 150.0, mt.TOTAL_TOKENS: 50_000.0,
    mt.COST_USD: 1.0, mt.INTENT_ACCURACY: 0.05, mt.RELEVANCE_MEAN: 0.3,
}
# Volumes move by about half with weekends and holidays (a weekly cycle a baseline sees only
# after two weeks): a volume band finding needs a move of three quarters of expected.
_DEFAULT_MIN_RELATIVE_CHANGE: dict[str, float] = {
    "*": 0.1, mt.REQUESTS: 0.75, mt.LATENCY_P95_MS: 0.25, mt.LATENCY_MEAN_MS: 0.25,
    mt.TOTAL_TOKENS: 0.75, mt.COST_USD: 0.75, mt.ERROR_RATE: 0.0, mt.SUCCESS_RATE: 0.0,
    mt.INTENT_ACCURACY: 0.0, mt.RELEVANCE_MEAN: 0.0,
}
_DEFAULT_MIN_SAMPLES: dict[str, int] = {
    # Volume metrics are judged on any hour: a traffic drop to nothing is the point.
    "*": 50, mt.REQUESTS: 0, mt.TOTAL_TOKENS: 0, mt.COST_USD: 0,
}


class BaselineConfigError(PromptOpsError, ValueError):
    """A baseline setting is invalid; the message names the variable and the problem."""


def _split_list(value: Any) -> Any:
    """JSON list or ``a,b,c`` from the environment; lists pass through."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"not a valid JSON list ({exc.msg}); or give a,b,c") from None
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


#: The shipped per-metric mappings, by field.
_PER_METRIC_DEFAULTS: dict[str, dict[str, Any]] = {
    "direction": _DEFAULT_DIRECTION, "min_change": _DEFAULT_MIN_CHANGE,
    "min_relative_change": _DEFAULT_MIN_RELATIVE_CHANGE, "min_samples": _DEFAULT_MIN_SAMPLES,
}


def _merged(defaults: dict[str, Any], value: Any) -> dict[str, Any]:
    if value is None:
        return dict(defaults)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"not valid JSON ({exc.msg}); expected an object like "
                             '{"error_rate": 0.01, "*": 0}') from None
    if not isinstance(value, dict):
        raise ConfigError("must be a mapping {metric: value} (use \"*\" for every other metric)")
    return {**defaults, **value}


class BaselineConfig(BaseSettings):
    """How baselines are fitted and judged (env prefix ``PROMPTOPS_BASELINE_``)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    #: Days of hourly history each fit uses (the fit window ends where the forecast begins).
    history_days: int = Field(default=14, ge=3, le=120)
    metrics: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(DEFAULT_METRICS))
    dimensions: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_DIMENSIONS))
    #: Teams with the most requests in the window that get their own baselines.
    top_teams: int = Field(default=5, ge=0)
    #: At most this many slices per other dimension (most requests first).
    max_slices: int = Field(default=20, ge=1)
    #: Share of values a band should hold; sets the band's z (0.997 -> z = 2.97).
    coverage: float = Field(default=0.997, gt=0.5, lt=1.0)
    #: Damp the additive trend so a day-ahead forecast does not run away.
    damped_trend: bool = True
    #: Weekly seasonality (168 h) instead of daily once this much history is observed.
    weekly_min_days: int = Field(default=21, ge=14)
    #: Below this many observed hours the series gets the median/MAD fallback.
    min_history_hours: int = Field(default=72, ge=24)
    #: Above this share of missing hours (gaps) in the window: fallback instead of filling.
    max_gap_share: float = Field(default=0.25, ge=0.0, le=1.0)
    #: Above this share of zero values the series is too sparse for Holt-Winters.
    max_zero_share: float = Field(default=0.5, ge=0.0, le=1.0)
    #: History values this many robust deviations from their hour's median are clipped
    #: before fitting (and their errors left out of the band), so a past incident does not
    #: become the expected shape. Not much lower: a heavy-tailed metric's own tail would go
    #: too, and its band would come out too narrow.
    outlier_mads: float = Field(default=10.0, gt=0.0)
    #: A single whole day whose level (mean) is more than this many times below or above
    #: the robust level of the window's other days is fitted as missing (imputed from the
    #: day before), so a holiday (0.3-0.45x) or a one-day surge does not drag the next
    #: day's band; two or more such days in a row are a level shift and are kept. 2 (0.5x
    #: and 2x, symmetric in log) stays clear of a quiet weekend (~0.55x): a lone Saturday at
    #: the window's end is the level Sunday follows. ``inf`` turns the imputation off.
    odd_day_ratio: float = Field(default=2.0, gt=1.0)
    #: ...and only when it is more than this many robust day-to-day spreads (1.4826 x the
    #: MAD of the other days' log levels) away, so a noisy small slice keeps its days.
    odd_day_spreads: float = Field(default=5.0, ge=0.0)
    #: Simulated forecast paths per series for the prediction band (its tails are
    #: quantiles of these paths, so enough of them to reach past the coverage).
    simulations: int = Field(default=2000, ge=200, le=20_000)
    #: Processes that fit series in parallel (1 = in this process).
    workers: int = Field(default=2, ge=1, le=64)
    #: Below this many series the fits run in this process (a pool costs ~1-3 s to start).
    parallel_min_series: int = Field(default=300, ge=1)

    # -- judging a value against its band (per metric, "*" = the rest) ---------------------
    #: Which side of the band is bad.
    direction: Annotated[dict[str, Direction], NoDecode] = Field(
        default_factory=lambda: dict(_DEFAULT_DIRECTION))
    #: Minimum |value - expected| in the metric's unit, so a narrow band does not page.
    min_change: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=lambda: dict(_DEFAULT_MIN_CHANGE))
    #: Minimum |value - expected| as a share of expected (both minimums must be exceeded).
    min_relative_change: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=lambda: dict(_DEFAULT_MIN_RELATIVE_CHANGE))
    #: Minimum ``samples`` under the current value.
    min_samples: Annotated[dict[str, int], NoDecode] = Field(
        default_factory=lambda: dict(_DEFAULT_MIN_SAMPLES))
    #: Critical when the value is outside the band widened this many times around expected.
    critical_factor: float = Field(default=2.0, ge=1.0)
    #: Metrics whose band departures never page (at most warning): volumes move with
    #: holidays, launches and the weekly cycle a 2-week daily-season fit cannot see; money is
    #: paged by the budget rules, abuse by the abuse rule, outages by the success rate.
    warning_only: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: sorted(VOLUME_METRICS))
    #: A band fitted on less history than this (days since the series' first value) may
    #: warn but never pages; a median/MAD fallback band never pages either.
    min_page_history_days: float = Field(default=7.0, ge=0.0)
    #: Below this much history a band finding is not raised at all (one or two days say
    #: too little about an hour to warn on).
    min_warn_history_days: float = Field(default=2.0, ge=0.0)
    #: Volumes (requests, tokens, cost) follow the weekly cycle, which a band cannot know
    #: before it has seen a whole week and the weekday again: until then their departures
    #: are not raised (the first Monday after the first weekend is outside every daily band).
    #: The comparison rules (same hour yesterday / last week) watch volumes meanwhile.
    min_volume_history_days: float = Field(default=8.0, ge=0.0)
    #: A slice's volume (requests, tokens, cost...) outside its band is not a finding when
    #: it lies inside its band rescaled by how far the rest of the platform moved this hour
    #: (actual / expected of the overall row less the slice): on a holiday at 0.4x every
    #: slice is at 0.4x, and only a slice that moved against the platform (one app at 0.2x
    #: while the rest is steady, one user's flood) is news. False judges each slice alone.
    judge_slices_against_platform: bool = True
    #: ...only while the platform's move is within this factor either way (4: 0.25x-4x).
    #: Holidays (0.3-0.45x), weekends (~0.55x) and launch days (2-3x) lie inside; a
    #: platform at 0.05x is an outage, and then each slice is judged alone again, so the
    #: breakdown still shows which slices went down with it (the overall row fires too).
    platform_move_max: float = Field(default=4.0, gt=1.0)
    #: Coverage of the metric table's ``lower``/``upper`` (this hour's sampling interval,
    #: 95% by the metric table's contract); sets the z that turns it into a standard error.
    sampling_coverage: float = Field(default=0.95, gt=0.5, lt=1.0)
    pending_for: int = Field(default=1, ge=1)
    keep_firing_for: int = Field(default=1, ge=0)
    service: str = Field(default="platform-api", min_length=1)

    @field_validator("metrics", "dimensions", "warning_only", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must name at least one metric")
        unknown = sorted(set(value) - KNOWN_METRICS)
        if unknown:
            raise ValueError(f"unknown metric(s) {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(KNOWN_METRICS))}")
        return list(dict.fromkeys(value))

    @field_validator("dimensions")
    @classmethod
    def _some_dimensions(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must name at least one dimension (e.g. overall)")
        return list(dict.fromkeys(value))

    @field_validator("direction", "min_change", "min_relative_change", "min_samples",
                     mode="before")
    @classmethod
    def _with_defaults(cls, value: Any, info: ValidationInfo) -> dict[str, Any]:
        """A per-metric mapping given in part keeps the shipped values of the others."""
        return _merged(_PER_METRIC_DEFAULTS[str(info.field_name)], value)

    @field_validator("min_change", "min_relative_change", "min_samples")
    @classmethod
    def _non_negative(cls, value: dict[str, Any]) -> dict[str, Any]:
        bad = {k: v for k, v in value.items() if v < 0}
        if bad:
            raise ValueError(f"must be >= 0, got {bad}")
        return value

    # -- lookups ------------------------------------------------------------------------

    @property
    def z(self) -> float:
        """The band's half-width in standard deviations for the configured coverage."""
        from scipy.stats import norm

        return float(norm.ppf(0.5 + self.coverage / 2))

    def for_metric(self, field: str, metric: str) -> Any:
        """A per-metric setting (``direction``, ``min_change``...) for one metric."""
        table = getattr(self, field)
        return table.get(metric, table["*"])


def metric_bounds(metric: str | None) -> tuple[float, float]:
    """Where a metric's values can lie (non-negative unless known otherwise)."""
    if metric is None:
        return (-math.inf, math.inf)
    return METRIC_BOUNDS.get(metric, _NON_NEGATIVE)


def load_baseline_config(**overrides: Any) -> BaselineConfig:
    """The config from the environment (and ``overrides``), with errors that name the
    ``PROMPTOPS_BASELINE_*`` variable to fix."""
    try:
        return BaselineConfig(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            where = ".".join(str(p) for p in err["loc"])
            problems.append(f"{ENV_PREFIX}{field.upper()} ({where}): {err['msg']}")
        raise BaselineConfigError("invalid baseline settings: " + "; ".join(problems)) from None
