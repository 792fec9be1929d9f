"""Root causes for the hourly findings: one cause a person can check, within the alerted slice.

A finding says a metric of one slice (``model=gpt-4o``, or ``overall``) is off. This module
localises the change among that slice's own leaves (a finding on ``app=search-qa`` looks at
``app=search-qa``'s models, regions, templates...), and keeps:

- one **primary** cause: the coarsest set of dimension values that explains most of the
  slice's excess (single values first, then pairs, then triples), with at least
  ``min_calls`` calls and significant against its own sampling noise: binomial for a rate
  (errors, intent accuracy), Poisson for calls and errors, the standard error for a mean
  (latency, relevance), a compound Poisson for tokens and cost;
- at most two **secondary** causes under the same tests. Causes are localised greedily on
  disjoint leaves, so their shares of the excess are disjoint and add up to 100% or less.

When the whole slice moved alike, the slice itself is the cause. Every number in the sentence
can be checked against the hour's metric table (value and calls of the slice and of a
one-dimension cause) and the same hour of the last 7 days (the expected value).

Annotations written on each finding (the alert engine and the incident grouping read them):
``root_cause`` (the sentence), ``root_cause_table`` (Markdown), ``root_cause_primary`` (the
primary's absolute label) and ``root_cause_set`` (primary then secondaries, ``;``-separated).
Labels are absolute: the alerted slice's own constraint is included and dimensions are in
alphabetical order (``app=search-qa&model=gpt-4o``), unless the cause's own values imply it:
on ``model=llama-3-70b``, a cause on ``gpu_node=gpu-node-02``, which serves no other model
(this hour or the baseline, in the whole cube), is labelled ``gpu_node=gpu-node-02``. A
whole slice that moved alike keeps its constraint (``model=llama-3-70b``). A finding on
``overall`` whose change is everywhere gets no label.

``root_cause_context`` (absolute label format; absent when empty): the dimension values
outside the primary cause that every one of its calls shares, this hour and in the
baseline, over the whole cube (``user`` and the missing value ``(none)`` aside). A cause
``template=code_review@v1`` whose calls all come from one app and team gets
``app=code-assistant&team=support``: the incident grouping sees it lies within the app's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from promptops.contracts.findings import Finding
from promptops.contracts.metric_table import OTHER_SLICE, OVERALL
from promptops.detection.root_cause.cube import CUBE_DIMENSIONS, DEFAULT_DIMS, SQUARES, leaf_cube
from promptops.detection.root_cause.localization import (
    MEASURES,
    NONE_VALUE,
    Localization,
    Measure,
    RootCause,
    format_value,
    localize,
)
from promptops.errors import MissingData

if TYPE_CHECKING:
    import pandas as pd

    from promptops.lake.store import Lake
    from promptops.metrics.pricing import PriceTable

log = logging.getLogger(__name__)

#: The root-cause measure that explains a finding's metric.
ROOT_CAUSE_MEASURES = {
    "success_rate": "error_rate", "error_rate": "error_rate", "errors": "errors",
    "requests": "calls", "total_tokens": "tokens", "prompt_tokens": "tokens",
    "completion_tokens": "tokens", "cost_usd": "cost_usd", "latency_mean_ms": "latency_mean_ms",
    "latency_p95_ms": "latency_mean_ms", "latency_p99_ms": "latency_mean_ms",
    "intent_accuracy": "intent_accuracy", "relevance_mean": "relevance_mean",
}
#: A primary cause explaining at least this share of the excess ends the search for a
#: coarser answer (an operator acts on "region=eu-west-1", not on a triple).
SUFFICIENT_SHARE = 0.5
#: A deeper cause replaces the coarse one it narrows when it explains this share of it.
REFINE = 0.9
#: A cause rests on at least this many calls (this hour's or the baseline's, the larger).
MIN_CAUSE_CALLS = 50
#: One-sided level of each cause's own test against sampling noise, Bonferroni-corrected
#: over the candidate elements the localisation compared.
CAUSE_ALPHA = 0.01
MAX_SECONDARY = 2
#: Candidates asked of the localisation before the support and significance filters.
CANDIDATES = 6


def measure_for(metric: str) -> str | None:
    """The root-cause measure of a finding's metric; a composite's metric label joins its
    conditions' metrics with "+" (the first one with a measure counts)."""
    return next((ROOT_CAUSE_MEASURES[m] for m in metric.split("+") if m in ROOT_CAUSE_MEASURES),
                None)


def absolute_label(parts: dict[str, str]) -> str:
    """``dim=value&dim=value`` in alphabetical order of the dimensions."""
    return "&".join(f"{d}={parts[d]}" for d in sorted(parts))


def parse_label(label: str) -> dict[str, str]:
    """``"app=a&model=m"`` -> ``{"app": "a", "model": "m"}`` (values may hold ``=``)."""
    return dict(part.split("=", 1) for part in label.split("&") if "=" in part)


def within(narrow: str, broad: str) -> bool:
    """True when the cause ``narrow`` lies inside ``broad`` (``app=a&model=m`` is within
    ``model=m``): findings on different slices whose causes nest share a root cause."""
    inner, outer = parse_label(narrow), parse_label(broad)
    return bool(outer) and outer.items() <= inner.items()


@dataclass(frozen=True)
class Cause:
    """One reported cause, with the numbers its sentence prints."""

    #: The alerted slice's constraint plus the cause's own dimension values.
    parts: dict[str, str]
    calls: float
    actual: float
    expected: float
    #: Its share of the slice's excess, disjoint from the other causes' (sum <= 1).
    share: float

    @property
    def label(self) -> str:
        return absolute_label(self.parts)


@dataclass(frozen=True)
class SliceExplanation:
    """The root cause of one slice's change of one measure."""

    measure: Measure
    #: The alerted slice's constraint (empty for overall).
    scope: dict[str, str]
    actual: float
    expected: float
    calls: float
    causes: list[Cause] = field(default_factory=list)
    min_calls: int = MIN_CAUSE_CALLS
    #: Where the expected value comes from when not from the slice's own past.
    baseline_note: str = ""
    #: Dimension values outside the primary cause that all of its calls share.
    context: dict[str, str] = field(default_factory=dict)

    @property
    def primary(self) -> Cause | None:
        return self.causes[0] if self.causes else None

    @property
    def labels(self) -> list[str]:
        """Absolute labels; none for "everywhere" on overall (nothing narrows it)."""
        return [c.label for c in self.causes if c.parts]

    @property
    def sentence(self) -> str:
        m = self.measure
        head = (f"{m.label} {format_value(self.actual, m.unit)} vs "
                f"{format_value(self.expected, m.unit)} expected{self.baseline_note}")
        if m.name != "calls":
            head += f" over {format_value(self.calls, 'count')} calls"
        if not self.causes:
            return (f"{head}; no set of dimension values with at least {self.min_calls} calls "
                    f"explains it significantly")
        first, *rest = self.causes
        text = f"{head}, {self._clause(first, primary=True)}"
        return text + "".join(f"; also {self._clause(c, primary=False)}" for c in rest)

    def _clause(self, cause: Cause, *, primary: bool) -> str:
        m = self.measure
        what = (f"the {'excess' if self.actual >= self.expected else 'missing'} "
                f"{m.noun or 'change'}")
        share = f"{_percent(cause.share)} of {what}"
        if cause.parts == self.scope:  # the whole slice moved alike
            where = "all of " + (cause.label or "the traffic")
            return f"{'explained by ' if primary else ''}{where} alike: {share}"
        numbers = (f"{format_value(cause.calls, 'count')} calls, "
                   f"{format_value(cause.actual, m.unit)} vs {format_value(cause.expected, m.unit)}")
        if m.name == "calls":
            numbers = f"{format_value(cause.actual, 'count')} vs " \
                      f"{format_value(cause.expected, 'count')} calls"
        return f"{'explained by ' if primary else ''}{cause.label} ({numbers}): {share}"

    def table(self) -> str:
        """Markdown: each cause and the slice total, with calls, actual, expected, share."""
        u = self.measure.unit
        lines = ["| root cause | calls | actual | expected | share of excess |",
                 "|---|---|---|---|---|"]
        for c in self.causes:
            lines.append(f"| {(c.label or 'everywhere').replace('|', chr(92) + '|')} | "
                         f"{format_value(c.calls, 'count')} | {format_value(c.actual, u)} | "
                         f"{format_value(c.expected, u)} | {_percent(c.share)} |")
        total = absolute_label(self.scope) or "overall"
        lines.append(f"| {total} (alerted) | {format_value(self.calls, 'count')} | "
                     f"{format_value(self.actual, u)} | {format_value(self.expected, u)} | "
                     f"{_percent(sum(c.share for c in self.causes))} explained |")
        return "\n".join(lines)


def _percent(share: float) -> str:
    # Rounded down, so the printed shares never add up to more than 100%.
    return f"{math.floor(100 * share + 1e-9):d}%"


# -- one slice ---------------------------------------------------------------------------------

def explain_slice(cube: pd.DataFrame, dims: Sequence[str], spec: Measure,
                  scope: dict[str, str], *, min_calls: int = MIN_CAUSE_CALLS,
                  baseline_hours: int | None = None) -> SliceExplanation | None:
    """The root cause of ``scope``'s change in a leaf cube (:func:`.cube.leaf_cube`'s
    columns); None when the slice has no leaves or did not move. ``baseline_hours``: how
    many hours the expected values average (default: the cube's own note, else 7)."""
    if baseline_hours is None:
        baseline_hours = int(cube.attrs.get("baseline_hours", 7))
    mask = np.ones(len(cube), dtype=bool)
    for d, v in scope.items():
        mask &= (cube[d] == v).to_numpy()
    sub = cube[mask].reset_index(drop=True)
    if sub.empty:
        return None
    actual, expected = _values(sub, np.ones(len(sub), dtype=bool), spec)
    note = ""
    if not math.isfinite(expected) and "@" in scope.get("template", ""):
        # A prompt version new this hour has no past of its own: its template's earlier
        # versions are what it is expected to do (a rollout that broke the intents).
        sub = _template_family(cube, dims, scope)
        actual, expected = _values(sub, np.ones(len(sub), dtype=bool), spec)
        note = f" (from {scope['template'].rsplit('@', 1)[0]}'s earlier versions)"
    calls = float(sub["actual_calls"].sum())
    if not (math.isfinite(actual) and math.isfinite(expected)) or actual == expected:
        return None
    free = [d for d in dims if d not in scope]
    ratio: dict[str, Any] = ({"actual_den": "actual_den", "expected_den": "expected_den"}
                             if spec.is_ratio else {})

    if not free:
        return SliceExplanation(spec, dict(scope), actual, expected, calls, [], min_calls,
                                note)
    locs = [localize(sub, free, measure=spec, max_layer=layers, max_causes=CANDIDATES,
                     min_share=0.0, **ratio) for layers in range(1, min(3, len(free)) + 1)]
    # Every layer is looked at: the causes' own tests are corrected for all their elements.
    candidates = max(loc.candidates for loc in locs)

    def localise(layers: int) -> SliceExplanation:
        loc = locs[min(layers, len(locs)) - 1]
        causes = _checked_causes(loc, sub, spec, scope, min_calls, baseline_hours, candidates,
                                 expected)
        return SliceExplanation(spec, dict(scope), actual, expected, calls, causes, min_calls,
                                note)

    # Labels are shortened only once the layer is chosen: _narrows compares whole parts.
    return _shortened(_coarsest_explanation(localise), cube, dims)


def _template_family(cube: pd.DataFrame, dims: Sequence[str],
                     scope: dict[str, str]) -> pd.DataFrame:
    """The leaves of ``scope`` with the expected side of every version of its template: this
    hour's calls of the new version against the baseline of the template's earlier ones."""
    version = scope["template"]
    family = cube[cube["template"].astype(str).str.startswith(
        version.rsplit("@", 1)[0] + "@")].copy()
    for d, v in scope.items():
        if d != "template":
            family = family[family[d] == v]
    others = (family["template"] != version).to_numpy()
    for column in [c for c in family.columns if c.startswith("actual")]:
        family.loc[others, column] = 0.0
    family["template"] = version
    out = family.groupby(list(dims), sort=False, as_index=False).sum(numeric_only=True)
    out.attrs.update(cube.attrs)
    return out


def _shortened(explanation: SliceExplanation, cube: pd.DataFrame,
               dims: Sequence[str]) -> SliceExplanation:
    """The causes without the scope constraints their own values imply, and the primary's
    context, both judged on the full cube (a value the slice's leaves all share may still
    be one of several outside it)."""
    if not explanation.causes:
        return explanation
    scope = explanation.scope
    causes = [c if c.parts == scope else replace(c, parts=_implied_dropped(cube, scope, c.parts))
              for c in explanation.causes]
    primary = causes[0].parts
    context = _shared_values(cube, dims, primary) if primary else {}
    return replace(explanation, causes=causes, context=context)


def _with_calls(cube: pd.DataFrame, parts: dict[str, str]) -> np.ndarray:
    """The leaves of ``parts`` with calls this hour or in the baseline."""
    calls = (cube["actual_calls"] > 0).to_numpy() | (cube["expected_calls"] > 0).to_numpy()
    return _members(cube, parts) & calls


def _implied_dropped(cube: pd.DataFrame, scope: dict[str, str],
                     parts: dict[str, str]) -> dict[str, str]:
    """``parts`` less each scope constraint that every call of the rest already meets
    (``gpu_node=g2`` serving only ``model=m1`` needs no ``model=m1``): the smallest set of
    values naming the same calls."""
    out = dict(parts)
    for d, v in scope.items():
        rest = {k: x for k, x in out.items() if k != d}
        if not rest:
            continue
        inside = _with_calls(cube, rest)
        if inside.any() and bool((cube[d].to_numpy()[inside] == v).all()):
            out = rest
    return out


def _shared_values(cube: pd.DataFrame, dims: Sequence[str],
                   parts: dict[str, str]) -> dict[str, str]:
    """The values of the other dimensions (``user`` aside) that every call of ``parts``
    has; a missing value (``(none)``) is no context."""
    inside = _with_calls(cube, parts)
    if not inside.any():
        return {}
    out = {}
    for d in dims:
        if d in parts or d == "user":
            continue
        values = cube[d].to_numpy()[inside]
        first = values[0]
        if first is None or first != first or str(first) == NONE_VALUE:  # missing, NaN
            continue
        if bool((values == first).all()):
            out[d] = str(first)
    return out


def _coarsest_explanation(localise: Callable[[int], Any]) -> Any:
    """Single dimension values first, then pairs, then triples: the first layer whose primary
    cause explains most of the change (``SUFFICIENT_SHARE``) wins, unless a deeper layer
    narrows that very cause and explains about as much (``REFINE`` of its share): then the
    rest of the coarse cause did not move, and the narrower one is what happened. An
    operator acts on "region=eu-west-1"; a three-way combination that merely holds the
    heaviest calls of that region is a worse answer even when its score is higher (means of
    heavy-tailed measures such as latency favour such cells)."""
    best = None
    for layers in (1, 2, 3):
        loc = localise(layers)
        if best is None:
            if loc.causes and loc.causes[0].share >= SUFFICIENT_SHARE or layers == 3:
                best = loc
            continue
        if loc.causes and _narrows(loc.causes[0], best.causes[0]):
            best = loc
    return best


def _narrows(fine: Any, coarse: Any) -> bool:
    """True when ``fine`` is a strict part of ``coarse`` explaining nearly as much (REFINE)
    on clearly fewer calls (REFINE too): a part holding (almost) all of the coarse cause's
    calls is the same cause, worded longer."""
    inner, outer = fine.parts.items(), coarse.parts.items()
    return (outer < inner and fine.share >= REFINE * coarse.share
            and fine.calls <= REFINE * coarse.calls)


def _checked_causes(loc: Localization, sub: pd.DataFrame, spec: Measure,
                    scope: dict[str, str], min_calls: int, hours: int,
                    candidates: int, reference: float | None = None) -> list[Cause]:
    """The localisation's causes that move with the slice, rest on ``min_calls`` calls and
    pass their own test: the primary and at most two secondaries, shares summing to <= 1.
    ``reference``: the slice's expected value, what a cause new this hour is tested against."""
    sign = 1.0 if loc.actual >= loc.expected else -1.0
    taken = np.zeros(len(sub), dtype=bool)  # leaves of earlier causes (localize's greedy)
    kept: list[tuple[RootCause, np.ndarray]] = []
    for cause in loc.causes:
        first = not taken.any()
        members = _members(sub, cause.combination) & ~taken
        taken |= members
        if cause.share <= 0 or (not cause.combination and not first):
            continue  # moved against the slice, or "the rest, alike" after a cause
        support = max(float(sub["actual_calls"][members].sum()),
                      float(sub["expected_calls"][members].sum()))
        level = CAUSE_ALPHA / max(candidates, 1)
        if support < min_calls or _p_value(sub, members, spec, sign, hours,
                                                      reference) >= level:
            continue
        kept.append((cause, members))
        if len(kept) > MAX_SECONDARY:
            break
    if not kept:
        return []
    scale = max(1.0, sum(c.share for c, _ in kept))
    return [Cause({**scope, **c.combination}, float(sub["actual_calls"][m].sum()),
                  c.actual, c.expected, c.share / scale) for c, m in kept]


def _members(sub: pd.DataFrame, combination: dict[str, str]) -> np.ndarray:
    mask = np.ones(len(sub), dtype=bool)
    for d, v in combination.items():
        mask &= (sub[d] == v).to_numpy()
    return mask


def _values(sub: pd.DataFrame, mask: np.ndarray, spec: Measure) -> tuple[float, float]:
    num, num_exp = float(sub["actual"][mask].sum()), float(sub["expected"][mask].sum())
    if not spec.is_ratio:
        return num, num_exp
    den, den_exp = float(sub["actual_den"][mask].sum()), float(sub["expected_den"][mask].sum())
    return (num / den if den > 0 else math.nan, num_exp / den_exp if den_exp > 0 else math.nan)


def _p_value(sub: pd.DataFrame, mask: np.ndarray, spec: Measure, sign: float,
             hours: int, reference: float | None = None) -> float:
    """One-sided p-value of the cause's change in the slice's direction, under the sampling
    noise of its measure in both this hour and the ``hours`` baseline hours its expected
    value averages (a baseline that happened to be low is no cause). A rate or mean cause
    with no baseline calls (new this hour) is tested against ``reference``, the slice's
    expected value, under this hour's noise alone."""

    def total(column: str) -> float:
        return float(sub[column][mask].sum())

    a, e = total("actual"), total("expected")
    n, n_exp = total("actual_calls"), total("expected_calls")
    if spec.is_ratio and spec.bounded:
        # Rates: given all errors of the hour and the baseline, this hour's share of them
        # is binomial in its share of the calls (the conditional test of two rates).
        den, den_base = total("actual_den"), hours * total("expected_den")
        if den_base <= 0:
            return _one_sample(a, den, reference, sign)
        share = den / (den + den_base) if den > 0 else 0.0
        if a + hours * e > 0.5 * (den + den_base):
            # A common outcome (a 90% intent accuracy) is not Poisson: test its complement,
            # the rare one (the misses), which moves the other way.
            return _conditional(den - a, den_base - hours * e, share, -sign)
        return _conditional(a, hours * e, share, sign)
    if spec.name in ("calls", "errors"):  # Poisson counts: this hour against the baseline's
        return _conditional(a, hours * e, 1.0 / (1.0 + hours), sign)
    if spec.is_ratio and spec.numerator in SQUARES:
        # A mean (latency, relevance): Welch's standard error over the calls it averages
        # (the denominator: all calls for latency, the scored ones for relevance).
        m, m_exp = total("actual_den"), total("expected_den")
        if m <= 1 or (m_exp <= 0 and reference is None):
            return 1.0
        mean = a / m
        var = max(total("actual_sq") / m - mean * mean, 0.0)
        if m_exp <= 0:
            return _normal(sign * (mean - float(reference or 0.0)), math.sqrt(var / m))
        mean_exp = e / m_exp
        var_exp = max(total("expected_sq") / m_exp - mean_exp * mean_exp, 0.0)
        se = math.sqrt(var / m + var_exp / (hours * m_exp))
        return _normal(sign * (mean - mean_exp), se)
    # Tokens, cost: a compound Poisson (calls Poisson, per-call amounts with CV about 1).
    per_call = e / n_exp if n_exp > 0 else (a / n if n > 0 else 0.0)
    return _normal(sign * (a - e), per_call * math.sqrt(2 * max(n_exp, 1.0) * (1 + 1 / hours)))


def _one_sample(count: float, den: float, rate: float | None, sign: float) -> float:
    """P(X >= count) (``sign`` > 0) or P(X <= count) for X ~ Binomial(den, rate): a rate
    with no past of its own against the slice's expected rate."""
    from scipy.special import bdtr, bdtrc

    n, k = round(den), round(count)
    if rate is None or n <= 0 or not 0 < rate < 1:
        return 1.0
    if sign > 0:
        return 1.0 if k <= 0 else float(bdtrc(k - 1, n, rate))
    return float(bdtr(k, n, rate))


def _conditional(now: float, base: float, p: float, sign: float) -> float:
    """P(X >= now) (``sign`` > 0) or P(X <= now) for X ~ Binomial(now + base, p)."""
    from scipy.special import bdtr, bdtrc  # scipy.special: scipy.stats imports for seconds

    k, now = round(now + base), round(now)
    if k <= 0 or not 0 < p < 1:
        return 1.0
    if sign > 0:
        return 1.0 if now <= 0 else float(bdtrc(now - 1, k, p))
    return float(bdtr(now, k, p))


def _normal(delta: float, se: float) -> float:
    """P(Z >= delta / se) for a standard normal Z."""
    from scipy.special import ndtr

    if se <= 0:
        return 0.0 if delta > 0 else 1.0
    return float(ndtr(-delta / se))


# -- the hour's findings -----------------------------------------------------------------------

def annotate_findings(lake: Lake, hour: datetime, findings: list[Finding], *,
                      prices: PriceTable | None = None, min_calls: int = MIN_CAUSE_CALLS,
                      baseline: str = "same_hour_avg_7d") -> list[Finding]:
    """Each finding with the root cause of its own slice (see the module's description) and
    what the IsolationForest saw move on it. One leaf cube per measure and hour, filtered
    per slice; one localisation per (measure, slice). Never fails the evaluation: a root
    cause is context, the alert goes out without it."""
    cubes: dict[tuple[str, bool], tuple[pd.DataFrame, tuple[str, ...]] | None] = {}
    explained: dict[tuple[str, str, str], SliceExplanation | None] = {}
    moved = _isolation_forest_view(lake, hour)
    out = []
    for f in findings:
        notes = dict(f.annotations)
        name = measure_for(f.labels.get("metric", ""))
        dimension, slice_ = f.labels.get("dimension", ""), f.labels.get("slice", "")
        scope = _scope(dimension, slice_)
        if name is not None and scope is not None:
            key = (name, dimension, slice_)
            if key not in explained:
                explained[key] = _explain(lake, hour, name, scope, cubes, prices=prices,
                                          min_calls=min_calls, baseline=baseline)
            notes |= cause_annotations(explained[key])
        view = moved.get((dimension, slice_))
        if view:
            notes["moved"] = view
        out.append(replace(f, annotations=notes))
    return out


def cause_annotations(explanation: SliceExplanation | None) -> dict[str, str]:
    """The finding annotations of one explanation (none without a cause)."""
    if explanation is None or explanation.primary is None:
        return {}
    notes = {"root_cause": explanation.sentence, "root_cause_table": explanation.table()}
    labels = explanation.labels
    if labels:
        notes["root_cause_set"] = ";".join(labels)
    if explanation.primary.parts:
        notes["root_cause_primary"] = explanation.primary.label
    if explanation.context:
        notes["root_cause_context"] = absolute_label(explanation.context)
    return notes


def _scope(dimension: str, slice_: str) -> dict[str, str] | None:
    """The leaf-cube constraint of a metric-table slice; None when the cube cannot cut it
    (a dimension the cube lacks, or the users outside the top list)."""
    if dimension == OVERALL:
        return {}
    if dimension not in CUBE_DIMENSIONS or (dimension == "user" and slice_ == OTHER_SLICE):
        return None
    return {dimension: slice_}


def _explain(lake: Lake, hour: datetime, name: str, scope: dict[str, str],
             cubes: dict[tuple[str, bool], tuple[pd.DataFrame, tuple[str, ...]] | None], *,
             prices: PriceTable | None, min_calls: int, baseline: str
             ) -> SliceExplanation | None:
    # Volume surges are often one caller: calls and tokens look at users too.
    with_user = name in ("calls", "tokens") or "user" in scope
    if (name, with_user) not in cubes:
        dims = DEFAULT_DIMS + (("user",) if with_user else ())
        try:
            cubes[(name, with_user)] = (_leaf_cube(lake, hour, name, dims, baseline, prices),
                                        dims)
        except Exception as exc:  # no baseline yet, unreadable partition...
            log.warning("root cause for %s at %s skipped: %s", name, hour.isoformat(), exc)
            cubes[(name, with_user)] = None
    built = cubes[(name, with_user)]
    if built is None:
        return None
    cube, dims = built
    try:
        return explain_slice(cube, dims, MEASURES[name], scope, min_calls=min_calls)
    except Exception as exc:
        log.warning("root cause for %s on %s at %s skipped: %s", name,
                    absolute_label(scope) or OVERALL, hour.isoformat(), exc)
        return None


#: A lake younger than the baseline (no same hour on any earlier day): the hours just before.
YOUNG_LAKE_BASELINE = "previous_3h"


def _leaf_cube(lake: Lake, hour: datetime, name: str, dims: tuple[str, ...], baseline: str,
               prices: PriceTable | None) -> pd.DataFrame:
    """The hour's leaf cube against ``baseline``; in a lake too young for it (the first day
    of a deployment), against the hours just before, so a first incident still names its
    cause (those hours may hold the incident's own start: a cause is then less likely to
    be found, never a wrong one)."""
    try:
        return leaf_cube(lake, hour, name, dims, baseline, prices)
    except MissingData:
        if baseline == YOUNG_LAKE_BASELINE:
            raise
        log.info("root cause for %s at %s: no %s baseline yet, comparing with %s", name,
                 hour.isoformat(), baseline, YOUNG_LAKE_BASELINE)
        cube = leaf_cube(lake, hour, name, dims, YOUNG_LAKE_BASELINE, prices)
        return cube


def _isolation_forest_view(lake: Lake, hour: datetime) -> dict[tuple[str, str], str]:
    """(dimension, slice) -> "anomaly score 0.71; moved: error_rate +9.1σ (...)" for the
    slices the newest model trained before the hour calls anomalous."""
    from promptops.detection.anomaly_model import load_latest, score_hour

    try:
        model = load_latest(lake, as_of=hour)
        if model is None:
            return {}
        scored = score_hour(lake, hour, model)
    except Exception as exc:
        log.warning("isolation forest scoring at %s skipped: %s", hour.isoformat(), exc)
        return {}
    rows = scored[scored["is_anomaly"]]
    return {(r.dimension, r.slice): f"anomaly score {r.score:.2f}; moved: {r.moved}"
            for r in rows.itertuples()}
