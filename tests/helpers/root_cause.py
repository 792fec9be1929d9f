"""Synthetic leaf cubes with injected anomalies, for the root-cause tests and
``bench/root_cause.py``.

Leaves are every combination of the dimension values. Each leaf has a true level (lognormal,
so leaves differ in size as real slices do); the expected value is a baseline estimated from
``baseline_days`` noisy earlier hours and the actual value one noisy draw, so both carry
sampling noise. An anomaly multiplies the true level of every leaf inside its element (the
calls for an additive cube, the error rate for a ratio cube).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import pyarrow as pa


def dimension_values(cards: dict[str, int]) -> dict[str, list[str]]:
    return {d: [f"{d}{i}" for i in range(k)] for d, k in cards.items()}


def _inside(frame: pd.DataFrame, element: dict[str, str]) -> np.ndarray:
    mask = np.ones(len(frame), dtype=bool)
    for d, v in element.items():
        mask &= (frame[d] == v).to_numpy()
    return mask


def synthetic_cube(cards: dict[str, int], anomalies: list[tuple[dict[str, str], float]], *,
                   ratio: bool = False, seed: int = 0, mean: float = 40.0,
                   error_rate: float = 0.02, baseline_days: int = 7,
                   traffic: list[tuple[dict[str, str], float]] = (),
                   rate_of: dict[str, float] | None = None) -> pd.DataFrame:
    """A leaf cube: dimension columns, ``actual`` and ``expected``; for ``ratio`` the value
    columns are errors and ``actual_den`` / ``expected_den`` are calls.

    ``anomalies``: ``(element, factor)`` pairs, e.g. ``({"model": "model1"}, 3.0)``.
    ``traffic`` (ratio cubes): the same for the calls of the hour (a traffic shift);
    ``rate_of``: ``{"dim=value": factor}`` makes some slices' usual error rate higher.
    """
    rng = np.random.default_rng(seed)
    values = dimension_values(cards)
    rows = list(itertools.product(*values.values()))
    frame = pd.DataFrame(rows, columns=list(values))
    n = len(frame)
    level = mean * rng.lognormal(0.0, 0.8, n)
    factor = np.ones(n)
    for element, k in anomalies:
        factor[_inside(frame, element)] *= k
    if not ratio:
        frame["expected"] = rng.poisson(level, (baseline_days, n)).mean(axis=0)
        frame["actual"] = rng.poisson(level * factor)
        return frame
    rate = error_rate * rng.lognormal(0.0, 0.3, n)
    for key, k in (rate_of or {}).items():
        d, v = key.split("=")
        rate[_inside(frame, {d: v})] *= k
    rate = np.clip(rate, 0, 1)
    shift = np.ones(n)
    for element, k in traffic:
        shift[_inside(frame, element)] *= k
    base_calls = rng.poisson(level, (baseline_days, n))
    base_errors = rng.binomial(base_calls, rate)
    calls = rng.poisson(level * shift)
    frame["expected"] = base_errors.mean(axis=0)
    frame["expected_den"] = base_calls.mean(axis=0)
    frame["actual"] = rng.binomial(calls, np.clip(rate * factor, 0, 1))
    frame["actual_den"] = calls
    return frame


#: Squeeze-style cube shape: 4 dimensions of 10-24 values, 21,600 leaves.
SQUEEZE_CARDS = {"a": 10, "b": 12, "c": 15, "d": 12}


def squeeze_cube(n_causes: int, n_dims: int, *, seed: int = 0,
                 cards: dict[str, int] | None = None, noise: float = 0.05
                 ) -> tuple[pd.DataFrame, set[str]]:
    """A Squeeze/RiskLoc-style additive cube and its injected root-cause labels.

    Every leaf of ``cards`` has a real value (lognormal, heavy-tailed). The forecast
    (``expected``) is the real value with multiplicative noise ``N(0, noise)``; inside each of
    ``n_causes`` disjoint elements of one ``n_dims``-dimension cuboid (``n_dims=0``: each
    cause in a cuboid of 1-3 dimensions of its own) the real value
    (``actual``) is instead scaled up (x1.5-3) or down (x0.2-0.7), the direction drawn per
    cause, so some causes move against the total. Each anomalous leaf keeps its own noise.
    """
    rng = np.random.default_rng(seed)
    cards = cards or SQUEEZE_CARDS
    values = dimension_values(cards)
    frame = pd.DataFrame(list(itertools.product(*values.values())), columns=list(values))
    n = len(frame)
    real = np.round(rng.lognormal(3.0, 1.2, n) + 1.0, 1)
    forecast = real * np.clip(1 + rng.normal(0.0, noise, n), 0.05, None)
    dims = list(cards)
    chosen = sorted(rng.choice(len(dims), n_dims, replace=False).tolist()) if n_dims else []
    causes: list[dict[str, str]] = []
    taken = np.zeros(n, dtype=bool)
    while len(causes) < n_causes:
        if not n_dims:  # mixed: each cause its own 1-3 dimensions
            k = int(rng.integers(1, 4))
            chosen = sorted(rng.choice(len(dims), k, replace=False).tolist())
        element = {dims[d]: values[dims[d]][int(rng.integers(cards[dims[d]]))] for d in chosen}
        inside = _inside(frame, element)
        if not (inside & taken).any():  # causes are disjoint
            causes.append(element)
            taken |= inside
    actual = real.copy()
    for element in causes:
        inside = _inside(frame, element)
        up = rng.random() < 0.5
        factor = rng.uniform(1.5, 3.0) if up else rng.uniform(0.2, 0.7)
        actual[inside] = forecast[inside] * factor * (1 + rng.normal(0.0, noise, inside.sum()))
    frame["actual"] = np.round(np.clip(actual, 0.0, None), 1)
    frame["expected"] = np.round(forecast, 1)
    return frame, {element_label(e, dims) for e in causes}


def set_f1(found: set[str], truth: set[str]) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) of one cube's answer."""
    tp = len(found & truth)
    return tp, len(found - truth), len(truth - found)


def as_set(label: str) -> set[str]:
    """``"a=1&b=2;c=3"`` -> ``{"a=1&b=2", "c=3"}``."""
    return set(label.split(";")) if label else set()


def element_label(element: dict[str, str], dims: list[str]) -> str:
    """An element as :func:`promptops.detection.root_cause.localize` labels it (dimension order)."""
    return "&".join(f"{d}={element[d]}" for d in dims if d in element)


# -- call records and metric tables for lake fixtures -------------------------------------------

def call_records(hour, rows: list[dict]) -> pa.Table:
    """Records (``model``, ``app``, ``region``, ``status``... plus defaults) -> a calls table
    in the lake schema, through the real record validation."""
    from datetime import timedelta

    from promptops.contracts.records import validate_page

    records = []
    for i, row in enumerate(rows):
        rec = {"call_id": f"{hour:%Y%m%d%H}-{i}",
               "ts": (hour + timedelta(seconds=i % 3600)).strftime("%Y-%m-%dT%H:%M:%SZ"),
               "user_id": "u1", "app": "chat", "model": "gpt-4o", "status": "success",
               "latency_ms": 100.0, "prompt_tokens": 100, "completion_tokens": 50}
        rec.update(row)
        records.append(rec)
    page = validate_page(records, hour, hour + timedelta(hours=1))
    assert not page.rejects, page.rejects[:3]
    return page.good



def lake_week(lake, hour, *, error_rate=None, latency=None, extra=(), seed: int = 0,
              calls: float = 40.0, models=("m0", "m1", "m2", "m3"),
              apps=("chat", "search-qa", "code"), regions=("eu", "us"),
              latency_shape: float = 4.0) -> None:
    """Seven earlier same hours and ``hour`` itself in ``lake``'s calls partitions.

    Every (model, app, region) gets Poisson(``calls``) calls an hour at a 1% error rate and
    400 ms on average (gamma, ``latency_shape`` 1: exponential, heavy-tailed enough). This hour only: ``error_rate`` maps ``(model, app)`` (``app`` None: every
    app) to another rate, ``latency`` maps a model or a region to a latency factor, and ``extra`` adds
    records as they are (e.g. three failing calls of a tiny model)."""
    from datetime import timedelta

    rng = np.random.default_rng(seed)
    error_rate, latency = error_rate or {}, latency or {}
    for days in range(7, -1, -1):
        h = hour - timedelta(days=days)
        rows = []
        for model, app, region in itertools.product(models, apps, regions):
            rate = 0.01
            if days == 0:
                rate = error_rate.get((model, app), error_rate.get((model, None), rate))
            factor = latency.get(model, 1.0) * latency.get(region, 1.0) if days == 0 else 1.0
            for _ in range(int(rng.poisson(calls))):
                rows.append({"model": model, "app": app, "region": region,
                             "status": "error" if rng.random() < rate else "success",
                             "latency_ms": float(factor * rng.gamma(latency_shape,
                                                                    400.0 / latency_shape))})
        if days == 0:
            rows += list(extra)
        lake.write_partition("calls", h, call_records(h, rows))
