"""Root-cause localisation: which dimension-value combinations explain a change.

An aggregate moved (the hour's error rate, cost, calls...). Cut the hour's calls into *leaf
slices*, one per combination of dimension values (``model=X & app=a & region=eu``), each with
an actual and an expected value. :func:`localize` returns the smallest set of *elements*
(combinations of one or a few dimension values, e.g. ``model=X`` or
``region=eu-west & model=Y``) that explains the change of the aggregate, ranked.

The method is a layer-by-layer search over cuboids (every set of up to ``max_layer``
dimensions), in the line of HotSpot (Sun et al., 2018), Squeeze (Li et al., 2019) and RiskLoc
(Kalander, 2022), with one score for additive and ratio measures:

1. Every leaf gets an *excess* ``e`` (its part of the aggregate change, in measure units, so
   excesses add up to the aggregate's) and a *variance unit* ``w`` (what its noise scales
   with).

   - Additive measures (calls, tokens, cost): ``e = actual - expected``, ``w = level ** p``
     with ``level = (actual + expected) / 2``. The power ``p`` in [1, 2] is read off the
     leaves (:func:`_variance_power`): 1 for counts (quasi-Poisson), 2 for forecasts that
     are off by a percentage (multiplicative noise, as in Squeeze's cubes).
   - Ratio measures ``N / D`` (error rate = errors / calls, cost per call): numerator and
     denominator are localised jointly by splitting the aggregate change exactly into a
     *rate* part (the leaf's ratio moved: ``N - D * r_exp``) and a *mix* part (traffic moved
     towards leaves whose expected ratio differs from the aggregate's:
     ``(D - s * D_exp) * (r_exp - R_exp)``, ``s`` the aggregate traffic ratio). Their sum over
     all leaves is ``sum(D) * (R - R_exp)``: the excess errors of the hour.

2. An element's score is ``(sum e)**2 / sum w`` over its leaves, whatever the sign of its
   excess (a cause may move against the aggregate, partly offsetting another cause; its
   share is then negative): a chi-square-like statistic that rewards explaining
   much of the change (explanatory power) and penalises normal leaves inside the element
   (diluting an abnormal element with normal leaves adds variance, not excess), while a
   sub-element that leaves abnormal leaves out loses excess quadratically. It therefore
   peaks at the right granularity. A per-layer factor (``0.9`` per dimension) prefers the
   more succinct element when two explain about as well (the ripple effect: a root cause's
   children all move alike, so the parent explains them at least as well); among near ties
   the purest element (most change per variance unit) wins. An element that holds every
   remaining leaf (a dimension with one value) is no candidate. When the leaves outside the
   best element moved about as much as the element itself (their own values, for a ratio
   not the traffic mix), the change is everywhere and the whole cube (``*``) is the answer.

3. Greedy: take the best element, remove its leaves, repeat, while the next element explains
   at least ``min_share`` of the change (none by default for an additive measure) and is
   significant: its score over the noise level passes a Bonferroni-corrected chi-square
   test over all candidate elements. The noise level (dispersion) is the residual of the
   remaining leaves once the candidate's own change is fitted out, so it adapts to the unit
   and to overdispersion of the measure; when that fails, the best element outside the
   candidate is fitted out too, so that a second cause cannot mask the first.

Everything is numpy on integer codes: one ``bincount`` per cuboid and step, no Python loop
over leaves; a 20,000-leaf cube takes milliseconds (``bench/root_cause.py``).

Building the cube from the lake is :mod:`.cube`; the command line is :mod:`.cli`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from promptops.errors import InvalidInput

#: A leaf cube: a pandas DataFrame, a pyarrow Table or a dict of columns (name -> values).
Cube = Any

#: Label of the whole cube (no dimension constrained), as in the metric table.
ALL = "*"
NONE_VALUE = "(none)"

#: Score factor per constrained dimension: a deeper element must explain clearly better.
LAYER_FACTOR = 0.9
#: The change counts as everywhere when the slices outside the best element moved at least
#: this much (per variance unit) relative to the element.
SPREAD = 0.7
#: Elements whose ranked scores are within this fraction of the best count as tied.
TIE = 0.05
#: Among near ties, those explaining less than this fraction of the largest excess are out.
TIE_EXCESS = 0.75
#: Default ``min_share`` of a ratio measure (an additive one has none).
RATIO_MIN_SHARE = 0.05


# -- measures ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Measure:
    """What is localised and how it is worded.

    ``numerator`` (and ``denominator`` for a ratio) name per-call quantities
    (:data:`CALL_QUANTITIES`) when the cube comes from the lake.
    """

    name: str
    #: Words for the sentence: "error rate", "cost".
    label: str
    numerator: str = "value"
    #: None for an additive measure; the ratio's denominator otherwise.
    denominator: str | None = None
    #: How values print: "percent", "usd", "count", "ms" or "" (plain).
    unit: str = ""
    #: What the excess counts ("errors" -> "94% of the excess errors"); None: "the change".
    noun: str | None = None
    #: A ratio in [0, 1] (a rate): binomial noise instead of quasi-Poisson.
    bounded: bool = False
    #: What the denominator counts, for texts.
    den_label: str = "calls"

    @property
    def is_ratio(self) -> bool:
        return self.denominator is not None


#: Per-call quantities a leaf cube can sum (see :func:`leaf_cube`).
#: ``labelled``: calls with an expected intent; ``correct``: those whose predicted intent is
#: it; ``scored``: calls with a relevance score; ``relevance``: the score (0 when unscored).
CALL_QUANTITIES = ("calls", "errors", "successes", "tokens", "cost_usd", "latency_ms",
                   "labelled", "correct", "scored", "relevance")

MEASURES: dict[str, Measure] = {m.name: m for m in (
    Measure("calls", "calls", "calls", unit="count", noun="calls"),
    Measure("errors", "errors", "errors", unit="count", noun="errors"),
    Measure("tokens", "tokens", "tokens", unit="count", noun="tokens"),
    Measure("cost_usd", "cost", "cost_usd", unit="usd", noun="cost"),
    Measure("error_rate", "error rate", "errors", "calls", "percent", "errors", bounded=True),
    Measure("success_rate", "success rate", "successes", "calls", "percent", "successes",
            bounded=True),
    Measure("cost_per_call", "cost per call", "cost_usd", "calls", "usd", "cost"),
    Measure("tokens_per_call", "tokens per call", "tokens", "calls", "count", "tokens"),
    Measure("latency_mean_ms", "mean latency", "latency_ms", "calls", "ms", "latency"),
    # As the metric table: correct / labelled calls, and the mean score of the scored calls.
    Measure("intent_accuracy", "intent accuracy", "correct", "labelled", "percent",
            "correct intents", bounded=True, den_label="labelled calls"),
    Measure("relevance_mean", "mean relevance", "relevance", "scored", "", "relevance",
            den_label="scored calls"),
)}


def measure(name: str) -> Measure:
    """The measure called ``name`` (a key of :data:`MEASURES`)."""
    try:
        return MEASURES[name]
    except KeyError:
        raise InvalidInput(f"unknown measure {name!r}; known: {', '.join(MEASURES)}") from None


def format_value(value: float, unit: str = "") -> str:
    """A value as the sentence and table print it (3 significant digits)."""
    if value is None or not math.isfinite(value):
        return "n/a"
    if unit == "percent":
        return f"{100 * value:.3g}%"
    if unit == "usd":
        return f"${value:,.2f}" if abs(value) >= 100 else f"${value:.3g}"
    if unit == "ms":
        return f"{value:,.0f} ms" if abs(value) >= 100 else f"{value:.3g} ms"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


# -- results -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class RootCause:
    """One element of the root-cause set."""

    #: ``{dim: value}``; empty means the whole cube (the change is everywhere).
    combination: dict[str, str]
    #: The part of the aggregate change this element explains (beyond earlier causes);
    #: negative for an element that moved against the aggregate.
    share: float
    #: The element's own actual and expected value of the measure (a ratio for a ratio).
    actual: float
    expected: float
    #: Score over the noise level (a chi-square statistic with one degree of freedom).
    significance: float
    #: One clause for texts: "model=X in all apps and regions: 94% of the excess errors".
    sentence: str

    @property
    def label(self) -> str:
        """``dim=value&dim=value``, or ``*`` for the whole cube."""
        return "&".join(f"{d}={v}" for d, v in self.combination.items()) or ALL


@dataclass(frozen=True)
class Localization:
    """The ranked root-cause set of one anomalous moment, and its words."""

    measure: Measure
    dims: tuple[str, ...]
    #: The aggregate's actual and expected value (a ratio for a ratio measure).
    actual: float
    expected: float
    causes: list[RootCause] = field(default_factory=list)
    leaves: int = 0
    #: Candidate elements the search compared (the whole cube included).
    candidates: int = 1

    @property
    def label(self) -> str:
        """The ranked set as ``dim=value&dim=value;dim=value`` (empty when none)."""
        return ";".join(c.label for c in self.causes)

    @property
    def explained_share(self) -> float:
        return float(sum(c.share for c in self.causes))

    @property
    def sentence(self) -> str:
        """One sentence for an alert, e.g. "error rate 12% vs 0.5% expected, explained by
        model=claude-3-5-sonnet in all regions: 94% of the excess errors"."""
        m = self.measure
        head = (f"{m.label} {format_value(self.actual, m.unit)} vs "
                f"{format_value(self.expected, m.unit)} expected")
        if not self.causes:
            return f"{head}; no dimension value explains the change significantly"
        return f"{head}, explained by " + "; and by ".join(c.sentence for c in self.causes)

    def table(self, max_rows: int = 10) -> str:
        """A small Markdown table: cause, actual, expected, share of the change."""
        u = self.measure.unit
        lines = ["| root cause | actual | expected | share of change |",
                 "|---|---|---|---|"]
        for c in self.causes[:max_rows]:
            lines.append(f"| {_md(c.label)} | {format_value(c.actual, u)} | "
                         f"{format_value(c.expected, u)} | {c.share:.0%} |")
        lines.append(f"| total | {format_value(self.actual, u)} | "
                     f"{format_value(self.expected, u)} | {self.explained_share:.0%} explained |")
        return "\n".join(lines)


def _md(text: str) -> str:
    return text.replace("|", "\\|")


# -- the leaves --------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Leaves:
    codes: list[np.ndarray]  # per dimension: int64 code per leaf
    labels: list[np.ndarray]  # per dimension: label per code
    excess: np.ndarray  # each leaf's part of the aggregate change
    weight: np.ndarray  # variance unit for element scores
    null_weight: np.ndarray  # variance unit under "nothing happened", for the dispersion
    rate_excess: np.ndarray  # the part of the excess from leaves' own values moving (no mix)
    rate_weight: np.ndarray  # what it scales with under a change everywhere
    shape: np.ndarray  # how a leaf's excess scales under a proportional change of the element
    num: np.ndarray  # actual numerator (additive: actual)
    num_exp: np.ndarray
    den: np.ndarray | None  # actual denominator (ratio measures)
    den_exp: np.ndarray | None


def _column(cube: Cube, name: str) -> Any:
    column = cube[name]
    if hasattr(column, "to_numpy") and hasattr(column, "combine_chunks"):  # pyarrow
        return column.to_numpy()
    return column


def _column_names(cube: Cube) -> list[str]:
    if hasattr(cube, "column_names"):  # pyarrow
        return list(cube.column_names)
    if hasattr(cube, "columns"):  # pandas
        return [str(c) for c in cube.columns]
    return list(cube)


def _numbers(cube: Cube, column: str, role: str, row: Callable[[int], Any]) -> np.ndarray:
    raw = _column(cube, column)
    try:
        values = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):  # some text: find which (error path only)
        values = np.array([_float(v) for v in raw], dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        rows = ", ".join(str(row(int(i))) for i in np.flatnonzero(bad)[:5])
        raise InvalidInput(f"column {column!r} ({role}) has {int(bad.sum())} value(s) that are "
                         f"missing or not numbers, e.g. at row(s) {rows}; give a number for "
                         f"every leaf")
    if (values < 0).any():
        rows = ", ".join(str(row(int(i))) for i in np.flatnonzero(values < 0)[:5])
        raise InvalidInput(f"column {column!r} ({role}) has negative values, e.g. at row(s) "
                         f"{rows}; the measure must be non-negative")
    return values


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _factorize(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes and their labels; a missing value is the label ``(none)``."""
    if hasattr(values, "factorize"):  # pandas: fast and NaN-aware
        import pandas as pd

        codes, uniques = pd.factorize(values, use_na_sentinel=False)
        names = [NONE_VALUE if pd.isna(x) else str(x) for x in uniques]
        return codes.astype(np.int64), np.array(names, dtype=object)
    arr = np.asarray(values)
    if arr.dtype == object:
        # numpy's stubs reject None as an operand; on object arrays it compares elementwise.
        is_none = np.equal(arr, None)  # type: ignore[call-overload]
        arr = np.where(is_none, NONE_VALUE, arr).astype(str)
    labels, codes = np.unique(arr, return_inverse=True)
    return codes.ravel().astype(np.int64), labels.astype(str).astype(object)


def check_columns(cube: Cube, columns: dict[str, str], what: str = "the cube") -> None:
    """Raise if a needed column is missing, naming it and listing the columns present.

    ``columns`` maps each needed column to what it is for (e.g. ``{"region": "--dims"}``).
    """
    present = _column_names(cube)
    missing = [f"{c!r} (given by {role})" for c, role in columns.items() if c not in present]
    if missing:
        raise InvalidInput(f"{what} has no column {' or '.join(missing)}; columns present: "
                         f"{', '.join(present) or 'none'}")


def _leaves(cube: Cube, dims: Sequence[str], actual: str, expected: str,
            actual_den: str | None, expected_den: str | None, bounded: bool | None,
            row: Callable[[int], Any]) -> _Leaves:
    codes, labels = [], []
    for d in dims:
        c, u = _factorize(_column(cube, d))
        codes.append(c)
        labels.append(u)
    num = _numbers(cube, actual, "actual value", row)
    num_exp = _numbers(cube, expected, "expected value", row)
    if actual_den is None or expected_den is None:  # both or neither (_check_arguments)
        # Additive: variance a power of the value, 1 (quasi-Poisson: counts) to 2
        # (multiplicative noise: forecasts off by a percentage), read off the leaves.
        excess, level = num - num_exp, (num + num_exp) / 2
        power = _variance_power(excess, num_exp)
        unit = float(np.median(level[level > 0])) if (level > 0).any() else 1.0
        weight = unit * (level / unit) ** power
        null_weight = unit * (num_exp / unit) ** power
        # A change everywhere moves every leaf in proportion to its level (the spread test).
        return _Leaves(codes, labels, excess, weight, null_weight, excess, level, level,
                       num, num_exp, None, None)

    den = _numbers(cube, actual_den, "actual denominator", row)
    den_exp = _numbers(cube, expected_den, "expected denominator", row)
    total_den, total_den_exp = den.sum(), den_exp.sum()
    if total_den <= 0 or total_den_exp <= 0:
        raise InvalidInput(f"the denominators sum to {total_den:g} (actual) and "
                         f"{total_den_exp:g} (expected); a ratio needs both above 0")
    ratio_exp = num_exp.sum() / total_den_exp
    # A leaf without expected traffic (new this hour) is expected at the aggregate's ratio.
    with np.errstate(divide="ignore", invalid="ignore"):
        leaf_ratio_exp = np.where(den_exp > 0, num_exp / den_exp, ratio_exp)
        leaf_ratio = np.where(den > 0, num / den, leaf_ratio_exp)
    scale = total_den / total_den_exp
    mix_traffic = den - scale * den_exp
    mix_weight = (leaf_ratio_exp - ratio_exp) ** 2
    rate_part = num - den * leaf_ratio_exp
    excess = rate_part + mix_traffic * (leaf_ratio_exp - ratio_exp)
    if bounded is None:  # a rate when no numerator exceeds its denominator
        bounded = bool((num <= den).all() and (num_exp <= den_exp).all())
    mean_ratio = (leaf_ratio + leaf_ratio_exp) / 2
    if bounded:  # binomial noise of the numerator
        mean_ratio = np.clip(mean_ratio, 0.0, 1.0)
        expected_ratio = np.clip(leaf_ratio_exp, 0.0, 1.0)
        rate_var = den * mean_ratio * (1 - mean_ratio)
        rate_null = den * expected_ratio * (1 - expected_ratio)
    else:  # a mean of per-call amounts (latency, cost): their spread scales with the mean
        rate_var, rate_null = den * mean_ratio ** 2, den * leaf_ratio_exp ** 2
    weight = rate_var + (den + scale * den_exp) / 2 * mix_weight
    null_weight = rate_null + scale * den_exp * mix_weight
    # A proportional change of the ratio moves a leaf by its numerator's level; for a rate
    # that is about its binomial variance, so the variance unit serves as the shape.
    shape = weight if bounded else den * mean_ratio
    return _Leaves(codes, labels, excess, weight, null_weight, rate_part, rate_var, shape,
                   num, num_exp, den, den_exp)


def _variance_power(excess: np.ndarray, level: np.ndarray, bins: int = 10) -> float:
    """The power ``p`` of ``variance ~ level ** p`` of the leaves' noise, in [1, 2].

    ``level`` is the expected value: anomalous leaves stay in their own bins. Once the median
    relative change is fitted out, the lower quartile of the squared excess in each of
    ``bins`` quantile bins of the level gives one point; the slope of their logarithms is
    ``p``. A quartile ignores the minority of anomalous leaves. Small cubes (under 200 leaves
    a bin) or all-zero excesses keep 1, the quasi-Poisson of counts."""
    keep = level > 0
    if keep.sum() < 200 * bins:
        return 1.0
    # Fit out a change shared by most leaves (a change everywhere is signal, not noise).
    common = float(np.median(excess[keep] / level[keep]))
    lv, sq = np.log(level[keep]), (excess[keep] - common * level[keep]) ** 2
    order = np.argsort(lv, kind="stable")
    xs, ys = [], []
    for part in np.array_split(order, bins):
        m = float(np.quantile(sq[part], 0.25))
        if m > 0:
            xs.append(float(np.median(lv[part])))
            ys.append(math.log(m))
    if len(xs) < 3 or max(xs) - min(xs) < 1.0:
        return 1.0
    slope = float(np.polyfit(xs, ys, 1)[0])
    return float(min(max(slope, 1.0), 2.0))


# -- cuboids -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Cuboid:
    dims: tuple[int, ...]  # dimension positions
    group: np.ndarray  # element index per leaf
    size: int  # number of elements


def _dense(codes: np.ndarray, space: int) -> tuple[np.ndarray, int]:
    """Codes in ``[0, space)`` -> dense codes ``[0, k)`` of the k values that occur."""
    if space <= 4 * len(codes) + 4096:  # a lookup table: O(n), no sort
        used = np.flatnonzero(np.bincount(codes, minlength=space))
        remap = np.zeros(space, dtype=np.int64)
        remap[used] = np.arange(len(used))
        return remap[codes], len(used)
    keys, group = np.unique(codes, return_inverse=True)
    return group.ravel().astype(np.int64), len(keys)


def _cuboid(leaves: _Leaves, dims: tuple[int, ...]) -> _Cuboid:
    combined = np.zeros(len(leaves.excess), dtype=np.int64)
    space = 1
    for d in dims:
        card = len(leaves.labels[d])
        if space * card >= 2 ** 62:  # keep the mixed-radix code inside int64
            combined, space = _dense(combined, space)
        combined = combined * card + leaves.codes[d]
        space *= card
    group, size = _dense(combined, space)
    return _Cuboid(dims, group, size)


def _decode(leaves: _Leaves, cuboid: _Cuboid, element: int, dims: Sequence[str]
            ) -> dict[str, str]:
    """The element's ``{dim: value}``, read off its first leaf."""
    leaf = int(np.flatnonzero(cuboid.group == element)[0])
    return {dims[d]: str(leaves.labels[d][leaves.codes[d][leaf]]) for d in cuboid.dims}


def _chi2_isf(p: float) -> float:
    """Upper quantile of chi-square with one degree of freedom (no scipy import needed)."""
    z = NormalDist().inv_cdf(1 - p / 2)
    return z * z


# -- the search --------------------------------------------------------------------------------

def localize(cube: Cube, dims: Sequence[str], *, actual: str = "actual",
             expected: str = "expected", actual_den: str | None = None,
             expected_den: str | None = None, measure: Measure | str | None = None,
             max_layer: int = 3, max_causes: int = 5, min_share: float | None = None,
             alpha: float = 0.01, bounded: bool | None = None,
             row_name: Callable[[int], Any] | None = None) -> Localization:
    """The ranked root-cause set of one anomalous moment.

    ``cube`` (a pandas DataFrame, a pyarrow Table or a dict of columns) has one row per
    leaf: a column per dimension in ``dims`` (any values; missing ones are ``(none)``) and
    the measure's actual and expected value (columns ``actual`` / ``expected``). Rows with
    the same dimension values add up. For a ratio measure
    (error rate = errors / calls) the value columns hold the numerator and
    ``actual_den`` / ``expected_den`` the denominator. ``measure`` (a :class:`Measure` or a
    name in :data:`MEASURES`) only words the texts. ``bounded`` says the ratio is a rate in
    [0, 1]; by default it is when no numerator exceeds its denominator.

    Elements combine up to ``max_layer`` dimensions; at most ``max_causes`` are returned,
    each explaining at least ``min_share`` of the change (in absolute value: an element
    that moved against the aggregate has a negative share; default 0.05 for a ratio, 0
    for an additive measure) and significant at level ``alpha`` (Bonferroni over every
    candidate element). Raises ``ValueError`` naming the
    column for missing columns, missing or non-numeric or negative values; ``row_name`` turns
    a row position into the name errors use (default: the DataFrame index, else the
    position).
    """
    dims = tuple(dims)
    if min_share is None:
        # A ratio's traffic-mix part spreads a small echo of a traffic shift over every
        # other leaf; additive measures have none, and a small cause is still a cause.
        min_share = RATIO_MIN_SHARE if actual_den is not None else 0.0
    _check_arguments(cube, dims, actual, expected, actual_den, expected_den, max_layer,
                     max_causes, min_share, alpha)
    spec = _measure_spec(measure, actual_den)
    if bounded is None and spec.is_ratio and spec.bounded:
        bounded = True

    if row_name is None:
        index = getattr(cube, "index", None)
        row_name = (lambda i: index[i]) if index is not None else (lambda i: i)
    leaves = _leaves(cube, dims, actual, expected, actual_den, expected_den, bounded, row_name)
    agg_actual, agg_expected = _value(leaves, np.ones(len(leaves.excess), dtype=bool))
    result = Localization(spec, dims, agg_actual, agg_expected, [], len(leaves.excess))
    total = float(leaves.excess.sum())
    if len(leaves.excess) == 0 or total == 0 or not math.isfinite(total):
        return result

    causes, candidates = _search(leaves, spec, dims, total, max_layer=max_layer,
                                 max_causes=max_causes, min_share=min_share, alpha=alpha)
    return Localization(spec, dims, agg_actual, agg_expected, causes, len(leaves.excess),
                        candidates)


def _check_arguments(cube: Cube, dims: tuple[str, ...], actual: str, expected: str,
                     actual_den: str | None, expected_den: str | None, max_layer: int,
                     max_causes: int, min_share: float, alpha: float) -> None:
    """Raise ``ValueError`` for arguments :func:`localize` cannot work with."""
    if not dims:
        raise InvalidInput("localize needs at least one dimension")
    if len(set(dims)) != len(dims):
        raise InvalidInput(f"dimensions repeat: {', '.join(dims)}")
    if (actual_den is None) != (expected_den is None):
        raise InvalidInput("a ratio measure needs both actual_den and expected_den")
    if max_layer < 1 or max_causes < 1:
        raise InvalidInput(f"max_layer and max_causes must be at least 1, got {max_layer} and "
                         f"{max_causes}")
    if not (0 <= min_share < 1 and 0 < alpha < 1):
        raise InvalidInput(f"min_share must be in [0, 1) and alpha in (0, 1), got {min_share} "
                         f"and {alpha}")
    needed = {d: "dims" for d in dims}
    needed |= {actual: "actual", expected: "expected"}
    if actual_den is not None and expected_den is not None:
        needed |= {actual_den: "actual_den", expected_den: "expected_den"}
    check_columns(cube, needed)


def _measure_spec(measure: Measure | str | None, actual_den: str | None) -> Measure:
    """The measure that words the texts; a ratio when the cube has denominators."""
    if isinstance(measure, str):
        spec = MEASURES.get(measure) or Measure(measure, measure)
    else:
        spec = measure or Measure("value", "value")
    if actual_den is not None and not spec.is_ratio:
        spec = Measure(spec.name, spec.label, spec.numerator, actual_den, spec.unit, spec.noun,
                       spec.bounded, den_label=actual_den)
    return spec


def _search(leaves: _Leaves, spec: Measure, dims: tuple[str, ...], total: float, *,
            max_layer: int, max_causes: int, min_share: float, alpha: float
            ) -> tuple[list[RootCause], int]:
    """The greedy layer-by-layer search over every cuboid of up to ``max_layer`` dimensions
    (steps 2 and 3 of the module's description); ``total`` is the aggregate excess. Returns
    the causes and the number of candidate elements (for Bonferroni corrections)."""
    layers = min(max_layer, len(dims))
    cuboids = [_cuboid(leaves, combo) for k in range(1, layers + 1)
               for combo in itertools.combinations(range(len(dims)), k)]
    n_tests = 1 + sum(c.size for c in cuboids)
    critical = _chi2_isf(alpha / n_tests)
    sign = 1.0 if total > 0 else -1.0
    remaining = np.ones(len(leaves.excess), dtype=bool)
    causes: list[RootCause] = []
    for _ in range(max_causes):
        e = np.where(remaining, leaves.excess, 0.0)
        w = np.where(remaining, leaves.weight, 0.0)
        best = _best_element(cuboids, e, w, remaining)
        if best is None:
            break
        cuboid: _Cuboid | None  # None once the change is everywhere (below)
        raw, excess, cuboid, element = best
        members = remaining & (cuboid.group == element)
        outside = remaining & ~members
        if _spread(leaves, remaining, members, outside):
            # The rest of the cube moved alike: the change is everywhere, not in the element.
            cuboid, members = None, remaining.copy()
            excess, weight = float(e.sum()), float(w.sum())
            raw = excess * excess / weight
        share = excess / total
        significance = raw / _dispersion(leaves, e, remaining, members)
        outside = remaining & ~members
        if significance < critical and outside.any():
            # Perhaps masked by a second cause: fit the best element outside out as well.
            found = _best_element(cuboids, np.where(outside, e, 0.0), np.where(outside, w, 0.0),
                                  outside)
            if found is not None:
                rival = outside & (found[2].group == found[3])
                significance = raw / _dispersion(leaves, e, remaining, members, rival)
        if abs(share) < min_share or significance < critical:
            break
        combination = {} if cuboid is None else _decode(leaves, cuboid, element, dims)
        el_actual, el_expected = _value(leaves, members)
        traffic = _traffic(leaves, members)
        causes.append(RootCause(combination, share, el_actual, el_expected, significance,
                                _clause(spec, dims, combination, share, el_actual,
                                        el_expected, sign, traffic)))
        remaining &= ~members
        if cuboid is None or not remaining.any():
            break
    return causes, n_tests


def _best_element(cuboids: list[_Cuboid], e: np.ndarray, w: np.ndarray, remaining: np.ndarray
                  ) -> tuple[float, float, _Cuboid, int] | None:
    """(raw score, excess, cuboid, element) of the best element, or None.

    Elements of either sign compete (a cause may move against the aggregate). An element
    holding every remaining leaf (a dimension with one value) localises nothing: whether
    the change is everywhere is :func:`_spread`'s question.

    Ranking uses the score times ``LAYER_FACTOR ** layer``. Among near ties (within
    ``TIE`` of the best) that explain about as much (``TIE_EXCESS``) the purest element wins: the one whose leaves moved most per
    variance unit, i.e. with the fewest normal leaves inside. The raw score is returned for
    the significance test."""
    tops = []  # per cuboid: ranked score, purity, raw score, excess, cuboid, element
    left = remaining.astype(np.float64)
    n_left = float(left.sum())
    for cuboid in cuboids:
        se = np.bincount(cuboid.group, weights=e, minlength=cuboid.size)
        sw = np.bincount(cuboid.group, weights=w, minlength=cuboid.size)
        count = np.bincount(cuboid.group, weights=left, minlength=cuboid.size)
        ok = (se != 0) & (sw > 0) & (count < n_left)
        if not ok.any():
            continue
        score = np.where(ok, se * se / np.where(sw > 0, sw, 1.0), 0.0)
        j = int(np.argmax(score))
        tops.append((score[j] * LAYER_FACTOR ** len(cuboid.dims), abs(se[j]) / sw[j],
                     float(score[j]), float(se[j]), cuboid, j))
    if not tops:
        return None
    best_ranked = max(t[0] for t in tops)
    ties = [t for t in tops if t[0] >= (1 - TIE) * best_ranked]
    # Explanatory power first: a near tie explaining clearly less of the change is out.
    most = max(abs(t[3]) for t in ties)
    _, _, raw, excess, cuboid, j = max((t for t in ties if abs(t[3]) >= TIE_EXCESS * most),
                                       key=lambda t: t[1])
    return raw, excess, cuboid, j


def _spread(leaves: _Leaves, remaining: np.ndarray, members: np.ndarray,
            outside: np.ndarray) -> bool:
    """True when the change is everywhere: the leaves' own values moved (not the traffic mix,
    which is concentrated by nature: it names where traffic went), and outside the best
    element they moved, per variance unit, at least ``SPREAD`` as much as inside it."""
    own = leaves.rate_excess
    if abs(own[remaining].sum()) < 0.5 * abs(leaves.excess[remaining].sum()):
        return False  # mostly a traffic-mix change
    w_in = float(leaves.rate_weight[members].sum())
    w_out = float(leaves.rate_weight[outside].sum())
    if w_out <= 0 or w_in <= 0:
        return False
    rate_in = float(own[members].sum()) / w_in
    rate_out = float(own[outside].sum()) / w_out
    return rate_in != 0 and rate_out / rate_in >= SPREAD


def _dispersion(leaves: _Leaves, e: np.ndarray, remaining: np.ndarray,
                members: np.ndarray, rival: np.ndarray | None = None) -> float:
    """The noise level under the candidate's own explanation: its leaves moved alike (the
    ripple effect), the other remaining leaves did not. Squared residual excess over the
    remaining leaves' variance units under "nothing happened"; the candidate's own signal
    is fitted out, so it cannot mask itself, and so is the best element outside it
    (``rival``), so that a second cause cannot mask the first.

    The fit's shape is proportional to the level under a proportional change of the element
    (for a ratio, its variance unit ``w``: the expected value under a proportional change,
    the actual one for a leaf that is new, never zero where a sparse baseline saw nothing)."""
    total_w = float(leaves.null_weight[remaining].sum())
    if total_w <= 0:
        return 1e-300
    residual = e * e
    for group in (members, rival):
        if group is None:
            continue
        inside = remaining & group
        # Weighted least squares of the group's excesses on its shape.
        shape, var = leaves.shape[inside], leaves.weight[inside]
        safe = np.where(var > 0, var, 1.0)
        fit = float((shape * shape / safe).sum())
        shift = float((e[inside] * shape / safe).sum()) / fit if fit > 0 else 0.0
        residual = np.where(inside, (e - shift * leaves.shape) ** 2, residual)
    return max(float(residual[remaining].sum()) / total_w, 1e-300)


def _value(leaves: _Leaves, mask: np.ndarray) -> tuple[float, float]:
    """Actual and expected value of the measure over the masked leaves."""
    num, num_exp = float(leaves.num[mask].sum()), float(leaves.num_exp[mask].sum())
    if leaves.den is None or leaves.den_exp is None:  # both or neither
        return num, num_exp
    den, den_exp = float(leaves.den[mask].sum()), float(leaves.den_exp[mask].sum())
    return (num / den if den > 0 else math.nan, num_exp / den_exp if den_exp > 0 else math.nan)


def _traffic(leaves: _Leaves, mask: np.ndarray) -> tuple[float, float] | None:
    """Actual and expected denominator over the masked leaves (ratio measures)."""
    if leaves.den is None or leaves.den_exp is None:  # both or neither
        return None
    return float(leaves.den[mask].sum()), float(leaves.den_exp[mask].sum())


def _plural(dim: str) -> str:
    name = dim.replace("_", " ")
    return name if name.endswith("s") else f"{name}s"


def _where(dims: Sequence[str], combination: dict[str, str]) -> str:
    """``model=X in all apps and regions``; ``all slices`` for the whole cube."""
    if not combination:
        return "all slices alike (no single dimension value stands out)"
    text = " & ".join(f"{d}={v}" for d, v in combination.items())
    free = [d for d in dims if d not in combination]
    if not free:
        return text
    if len(free) <= 2:
        return f"{text} in all {' and '.join(_plural(d) for d in free)}"
    return f"{text} across all other dimensions"


def _clause(spec: Measure, dims: Sequence[str], combination: dict[str, str], share: float,
            actual: float, expected: float, sign: float,
            traffic: tuple[float, float] | None) -> str:
    what = (f"the {'excess' if sign > 0 else 'missing'} {spec.noun}" if spec.noun
            else "the change")
    own = ""
    if combination:
        own = (f" ({spec.label} there {format_value(actual, spec.unit)} vs "
               f"{format_value(expected, spec.unit)}")
        if traffic is not None:  # a ratio: say whether the traffic moved too
            own += (f", {spec.den_label} {format_value(traffic[0], 'count')} vs "
                    f"{format_value(traffic[1], 'count')}")
        own += ")"
    if share < 0:  # this element moved against the aggregate and offset part of it
        return f"{_where(dims, combination)}: moved the other way, {-share:.0%} of {what}{own}"
    return f"{_where(dims, combination)}: {share:.0%} of {what}{own}"
