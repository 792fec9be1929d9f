"""The anomaly model: a scikit-learn IsolationForest over per-hour, per-slice features.

Daily, :func:`train` reads the hourly ``metrics`` partitions of a training window and learns
what a normal hour of a slice looks like; hourly, :func:`score_hour` scores every slice of
an hour and names the features that moved.

Features, one vector per (hour, dimension, slice) of the tidy metric table
(:mod:`promptops.contracts.metric_table`):

==================  ===========================================  ===============
feature             from                                          scale
==================  ===========================================  ===============
``call_rate``       ``requests`` (calls in the hour)              log1p
``error_rate``      ``error_rate``                                as is
``latency_p95_ms``  ``latency_p95_ms``                            log1p
``tokens_per_call`` ``total_tokens / requests``                   log1p
``cost_usd``        ``cost_usd`` (null when unpriced)             log1p
``intent_accuracy`` ``intent_accuracy`` (labelled calls only)     as is
``relevance_mean``  ``relevance_mean`` (scored calls only)        as is
==================  ===========================================  ===============

Each feature is then expressed as a robust z-score against *the slice's own* training
history (median and 1.4826 x MAD, floored so a slice that never varied does not divide by
zero): a slow model is not anomalous for being slow, only for being slower than usual. A
slice the training window never saw is compared with its dimension's pooled history. A
missing feature (no labelled calls, an unpriced model) is imputed at the median and flagged
by a missing-indicator column (scikit-learn ``SimpleImputer(add_indicator=True)``), so the
forest can also learn "this slice usually has relevance scores".

Persistence: ``<lake>/models/anomaly/version=<YYYY-MM-DD>/model.joblib`` (the fitted
pipeline and the per-slice medians and scales) and ``metadata.json`` (version, training
window, features, sample count, scikit-learn version, the joblib file's SHA-256). The
version is the last day of the training window, so a rerun for a day replaces that day's
model; the metadata is written last, so a version without it is incomplete and ignored.
The model files are trusted lake data (a joblib file runs code when loaded).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from upath import UPath

from promptops.contracts import metric_table as mt
from promptops.contracts.datasets import ANOMALY_MODELS as MODEL_DIR
from promptops.errors import InvalidInput, MissingData
from promptops.lake.store import Lake
from promptops.timeutil import as_utc, hour_floor

log = logging.getLogger(__name__)

#: The features, in model order.
FEATURES = ("call_rate", "error_rate", "latency_p95_ms", "tokens_per_call", "cost_usd",
            "intent_accuracy", "relevance_mean")
#: Features modelled on a log scale (heavy-tailed, positive).
LOG_FEATURES = frozenset({"call_rate", "latency_p95_ms", "tokens_per_call", "cost_usd"})
#: Metric-table dimensions that get scored (intent and intent_pair describe classes, not
#: traffic slices).
DIMENSIONS = (mt.OVERALL, "model", "provider", "app", "team", "user", "template", "region",
              "gpu_node")
_METRICS = (mt.REQUESTS, mt.ERROR_RATE, mt.LATENCY_P95_MS, mt.TOTAL_TOKENS, mt.COST_USD,
            mt.INTENT_ACCURACY, mt.RELEVANCE_MEAN)

MODEL_FILE = "model.joblib"
METADATA_FILE = "metadata.json"

#: A slice needs this many training hours for its own median and scale.
MIN_SLICE_HOURS = 6
#: Robust z-scores are clipped here before the forest sees them (a split does not care how
#: far beyond the training range a value lies).
Z_CLIP = 50.0
#: Floors of a slice's scale: a share of the feature's pooled scale and (linear features)
#: of its median.
POOLED_SCALE_FLOOR = 0.1
MEDIAN_SCALE_FLOOR = 0.05


class NotEnoughData(MissingData):
    """The training window holds too few metric rows to train on."""


@dataclass(frozen=True)
class ModelInfo:
    """What a trained model is: the metadata written beside it (JSON-able, fit for XCom)."""

    version: str
    window_start: str  # ISO 8601, UTC, inclusive
    window_end: str  # ISO 8601, UTC, exclusive
    features: tuple[str, ...]
    n_samples: int
    n_slices: int
    hours: int
    sklearn_version: str
    contamination: float
    uri: str
    sha256: str

    def to_dict(self) -> dict:
        return {**asdict(self), "features": list(self.features)}

    @classmethod
    def from_dict(cls, data: dict) -> ModelInfo:
        fields = set(cls.__dataclass_fields__)
        missing = fields - set(data)
        if missing:
            raise InvalidInput(f"model metadata lacks {', '.join(sorted(missing))}")
        return cls(**{**{k: data[k] for k in fields}, "features": tuple(data["features"])})


@dataclass
class AnomalyModel:
    """A trained model: its metadata, the fitted pipeline and the training baselines."""

    info: ModelInfo
    #: scikit-learn Pipeline: SimpleImputer(add_indicator=True) -> IsolationForest.
    pipeline: Any  # untyped library
    #: Per (dimension, slice): ``<feature>_median`` and ``<feature>_scale`` columns.
    slice_stats: pd.DataFrame
    #: The same per dimension, for slices the training window did not see.
    dimension_stats: pd.DataFrame


# -- features ----------------------------------------------------------------------------------

def feature_frame(metrics: pa.Table) -> pd.DataFrame:
    """Tidy metric rows -> one row per (hour, dimension, slice) with the raw features (natural
    units, NaN where unknown) and ``requests``. Slices with no requests are left out."""
    if metrics is None or metrics.num_rows == 0:
        return pd.DataFrame(columns=["hour", "dimension", "slice", "requests", *FEATURES])
    table = metrics.filter(pc.is_in(metrics.column("metric"),
                                    value_set=pa.array(_METRICS, pa.string())))
    table = table.filter(pc.is_in(table.column("dimension"),
                                  value_set=pa.array(DIMENSIONS, pa.string())))
    df = table.select(["hour", "dimension", "slice", "metric", "value"]).to_pandas()
    wide = df.pivot_table(index=["hour", "dimension", "slice"], columns="metric",
                          values="value", aggfunc="first", dropna=False)
    wide = wide.reindex(columns=list(_METRICS))
    requests = wide[mt.REQUESTS].astype("float64")
    out = pd.DataFrame(index=wide.index)
    out["requests"] = requests
    out["call_rate"] = requests
    out["error_rate"] = wide[mt.ERROR_RATE]
    out["latency_p95_ms"] = wide[mt.LATENCY_P95_MS]
    out["tokens_per_call"] = wide[mt.TOTAL_TOKENS] / requests.where(requests > 0)
    out["cost_usd"] = wide[mt.COST_USD]
    out["intent_accuracy"] = wide[mt.INTENT_ACCURACY]
    out["relevance_mean"] = wide[mt.RELEVANCE_MEAN]
    out = out[out["requests"] > 0].reset_index()
    out["dimension"] = out["dimension"].astype(str)
    out["slice"] = out["slice"].astype(str)
    return out


def _transformed(frame: pd.DataFrame) -> pd.DataFrame:
    x = frame[list(FEATURES)].astype("float64").copy()
    for f in LOG_FEATURES:
        x[f] = np.log1p(x[f].clip(lower=0))
    return x


def _robust_stats(x: pd.DataFrame, keys: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Median and 1.4826 x MAD of each feature per group (NaN ignored), and the row count."""
    data = pd.concat([keys[by].reset_index(drop=True), x.reset_index(drop=True)], axis=1)
    features = list(FEATURES)
    grouped = data.groupby(by, sort=False)
    deviation = (data[features] - grouped[features].transform("median")).abs()
    deviation[by] = data[by]
    stats = pd.concat([grouped[features].median().add_suffix("_median"),
                       (deviation.groupby(by, sort=False)[features].median() * 1.4826
                        ).add_suffix("_scale")], axis=1)
    stats["hours"] = grouped.size()
    return stats


def _floor_scales(stats: pd.DataFrame, pooled: pd.Series) -> pd.DataFrame:
    stats = stats.copy()
    for f in FEATURES:
        floor = POOLED_SCALE_FLOOR * pooled[f]
        if f not in LOG_FEATURES:  # on a log scale the value is already relative
            floor = np.maximum(floor, MEDIAN_SCALE_FLOOR * stats[f"{f}_median"].abs().fillna(0))
        stats[f"{f}_scale"] = np.maximum(stats[f"{f}_scale"].fillna(0), floor)
    return stats


def _baselines(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    x = _transformed(frame)
    keys = frame[["dimension", "slice"]]
    pooled_mad = (x - x.median()).abs().median() * 1.4826
    # A feature that never varied anywhere still needs a positive scale.
    pooled = pooled_mad.where(pooled_mad > 0, 1e-3).fillna(1e-3)
    slice_stats = _floor_scales(_robust_stats(x, keys, ["dimension", "slice"]), pooled)
    slice_stats = slice_stats[slice_stats["hours"] >= MIN_SLICE_HOURS]
    dimension_stats = _floor_scales(_robust_stats(x, keys, ["dimension"]), pooled)
    return slice_stats, dimension_stats


def _z_scores(frame: pd.DataFrame, slice_stats: pd.DataFrame,
              dimension_stats: pd.DataFrame) -> pd.DataFrame:
    """Per row and feature: (value - training median) / training scale, in model units; the
    slice's own history where it has one, else its dimension's."""
    x = _transformed(frame).reset_index(drop=True)
    own = slice_stats.reindex(pd.MultiIndex.from_frame(frame[["dimension", "slice"]]))
    pooled = dimension_stats.reindex(frame["dimension"])
    has_own = own["hours"].notna().to_numpy()
    z = pd.DataFrame(index=x.index)
    for f in FEATURES:
        median = np.where(has_own, own[f"{f}_median"].to_numpy(), pooled[f"{f}_median"].to_numpy())
        scale = np.where(has_own, own[f"{f}_scale"].to_numpy(), pooled[f"{f}_scale"].to_numpy())
        with np.errstate(invalid="ignore", divide="ignore"):
            z[f] = np.clip((x[f].to_numpy() - median) / scale, -Z_CLIP, Z_CLIP)
    return z


# -- training ----------------------------------------------------------------------------------

def _pipeline(contamination: float, random_state: int, n_estimators: int) -> Any:
    from sklearn.ensemble import IsolationForest
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline

    # A missing z-score is imputed at 0 (the slice's median) and flagged.
    return make_pipeline(
        SimpleImputer(strategy="constant", fill_value=0.0, add_indicator=True,
                      keep_empty_features=True),
        IsolationForest(n_estimators=n_estimators, contamination=contamination,
                        random_state=random_state))


def fit(frame: pd.DataFrame, *, contamination: float = 0.01, random_state: int = 0,
        n_estimators: int = 200) -> tuple[object, pd.DataFrame, pd.DataFrame]:
    """Fit on a :func:`feature_frame`: the pipeline and the slice and dimension baselines."""
    slice_stats, dimension_stats = _baselines(frame)
    z = _z_scores(frame, slice_stats, dimension_stats)
    pipeline = _pipeline(contamination, random_state, n_estimators)
    pipeline.fit(z.to_numpy())
    return pipeline, slice_stats, dimension_stats


def train(lake: Lake, day: datetime, window_days: int = 14, *, contamination: float = 0.01,
          random_state: int = 0, min_samples: int = 50) -> ModelInfo:
    """Train on the ``window_days`` days ending with ``day`` (inclusive) and persist the model
    as version ``day`` (YYYY-MM-DD), replacing an earlier model of that version.

    Raises :class:`NotEnoughData` when the window's metric partitions give fewer than
    ``min_samples`` slice-hours.
    """
    import sklearn

    if window_days < 1:
        raise InvalidInput(f"window_days must be at least 1, got {window_days}")
    if not 0 < contamination <= 0.5:
        raise InvalidInput(f"contamination must be in (0, 0.5], got {contamination}")
    first_day = as_utc(day).replace(hour=0, minute=0, second=0, microsecond=0)
    end = first_day + timedelta(days=1)
    start = end - timedelta(days=window_days)
    metrics = lake.read_range(mt.METRICS, start, end, columns=list(mt.METRICS_SCHEMA.names))
    frame = feature_frame(metrics)
    if len(frame) < min_samples:
        raise NotEnoughData(
            f"the {window_days}-day window [{start:%Y-%m-%d}, {end:%Y-%m-%d}) holds "
            f"{len(frame)} slice-hours in the {mt.METRICS!r} partitions of {lake}; training "
            f"needs at least {min_samples}. Run the hourly metrics for those days first "
            f"(backfill promptops_hourly), or train later.")
    pipeline, slice_stats, dimension_stats = fit(frame, contamination=contamination,
                                                 random_state=random_state)
    version = f"{first_day:%Y-%m-%d}"
    blob = _dump({"pipeline": pipeline, "slice_stats": slice_stats,
                  "dimension_stats": dimension_stats})
    directory = _version_dir(lake, version)
    info = ModelInfo(
        version=version, window_start=start.isoformat(), window_end=end.isoformat(),
        features=FEATURES, n_samples=len(frame),
        n_slices=int(frame[["dimension", "slice"]].drop_duplicates().shape[0]),
        hours=int(frame["hour"].nunique()), sklearn_version=sklearn.__version__,
        contamination=contamination, uri=str(directory / MODEL_FILE),
        sha256=hashlib.sha256(blob).hexdigest())
    _write_bytes(lake, directory / MODEL_FILE, blob)
    # Metadata last: a version is complete only once it exists.
    _write_bytes(lake, directory / METADATA_FILE,
                 json.dumps(info.to_dict(), indent=2, sort_keys=True).encode())
    log.info("anomaly model %s: %d slice-hours, %d slices, %d hours -> %s", version,
             info.n_samples, info.n_slices, info.hours, info.uri)
    return info


# -- persistence -------------------------------------------------------------------------------

def _dump(obj: object) -> bytes:
    import joblib

    buffer = io.BytesIO()
    joblib.dump(obj, buffer, compress=3)
    return buffer.getvalue()


def _version_dir(lake: Lake, version: str) -> UPath:
    return lake.root / MODEL_DIR / f"version={version}"


def _write_bytes(lake: Lake, path: UPath, data: bytes) -> None:
    """Whole-file replace: a temp file renamed into place on local disk, one object upload
    on an object store (visible whole)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not lake.is_local:
        path.write_bytes(data)
        return
    directory = path.parent.path
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path.path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def list_versions(lake: Lake) -> list[ModelInfo]:
    """Every complete model version in the lake (with metadata), oldest first."""
    base = lake.root / MODEL_DIR
    if not base.exists():
        return []
    infos = []
    for child in base.iterdir():
        meta = child / METADATA_FILE
        if not child.name.startswith("version=") or not meta.exists():
            continue
        try:
            infos.append(ModelInfo.from_dict(json.loads(meta.read_bytes())))
        except (ValueError, TypeError) as exc:
            log.warning("skipping anomaly model %s: unreadable metadata (%s)", child, exc)
    return sorted(infos, key=lambda i: i.version)


def load(lake: Lake, version: str) -> AnomalyModel:
    """The model of one version; raises ``LookupError`` if it is not in the lake and
    ``ValueError`` if its file does not match its metadata."""
    import joblib
    import sklearn

    directory = _version_dir(lake, version)
    meta = directory / METADATA_FILE
    if not meta.exists():
        known = ", ".join(i.version for i in list_versions(lake)) or "none"
        raise MissingData(f"no anomaly model version {version!r} in {lake}; versions: {known}")
    info = ModelInfo.from_dict(json.loads(meta.read_bytes()))
    blob = (directory / MODEL_FILE).read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != info.sha256:
        raise InvalidInput(f"anomaly model {version}: {MODEL_FILE} does not match its metadata "
                         f"(sha256 {digest[:12]} vs {info.sha256[:12]}); retrain the day "
                         f"to replace it")
    if info.sklearn_version != sklearn.__version__:
        log.warning("anomaly model %s was trained with scikit-learn %s, running %s; retrain "
                    "if scores look off", version, info.sklearn_version, sklearn.__version__)
    parts = joblib.load(io.BytesIO(blob))
    return AnomalyModel(info, parts["pipeline"], parts["slice_stats"], parts["dimension_stats"])


def load_latest(lake: Lake, as_of: datetime | None = None) -> AnomalyModel | None:
    """The newest model, or with ``as_of`` the newest whose training window ended by then
    (a backfilled hour is scored by the model of its time, not a later one). None if none."""
    infos = list_versions(lake)
    if as_of is not None:
        cutoff = as_utc(as_of)
        infos = [i for i in infos if datetime.fromisoformat(i.window_end) <= cutoff]
    return load(lake, infos[-1].version) if infos else None


# -- scoring -----------------------------------------------------------------------------------

def score_frame(model: AnomalyModel, frame: pd.DataFrame, *, top_features: int = 3,
                min_requests: int = 20) -> pd.DataFrame:
    """Score a :func:`feature_frame`: columns ``hour, dimension, slice, requests, score,
    is_anomaly, moved, top_features`` plus ``z_<feature>``, most anomalous first.

    ``score`` is the IsolationForest anomaly score (about 0.5 for ordinary points, towards 1
    for anomalies); ``is_anomaly`` is the forest's verdict at the training contamination,
    and never for slices with fewer than ``min_requests`` calls (too small to trust).
    ``moved`` names the ``top_features`` features furthest from the slice's training median,
    e.g. ``error_rate +9.1σ (0.12 vs 0.005)``; ``top_features`` lists their names.
    """
    columns = ["hour", "dimension", "slice", "requests", "score", "is_anomaly", "moved",
               "top_features", *[f"z_{f}" for f in FEATURES]]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    frame = frame.reset_index(drop=True)
    z = _z_scores(frame, model.slice_stats, model.dimension_stats)
    x = z.to_numpy()
    score = -model.pipeline.score_samples(x)
    verdict = model.pipeline.predict(x) == -1
    out = frame[["hour", "dimension", "slice", "requests"]].copy()
    out["score"] = score
    out["is_anomaly"] = verdict & (frame["requests"].to_numpy() >= min_requests)
    moved, names = _moved(frame, z, model, top_features)
    out["moved"] = moved
    out["top_features"] = names
    for f in FEATURES:
        out[f"z_{f}"] = z[f].to_numpy()
    return out.sort_values(["score", "dimension", "slice"], ascending=[False, True, True],
                           kind="stable").reset_index(drop=True)[columns]


def _moved(frame: pd.DataFrame, z: pd.DataFrame, model: AnomalyModel,
           top: int) -> tuple[list[str], list[list[str]]]:
    """Per row: the features furthest from their training median, in words."""
    absz = np.nan_to_num(np.abs(z.to_numpy()), nan=0.0)
    order = np.argsort(-absz, axis=1, kind="stable")[:, :top]
    own = model.slice_stats.reindex(pd.MultiIndex.from_frame(frame[["dimension", "slice"]]))
    pooled = model.dimension_stats.reindex(frame["dimension"])
    has_own = own["hours"].notna().to_numpy()
    texts, names = [], []
    # A loop over the scored rows (slices of one hour, a few hundred), for the words only.
    for i in range(len(frame)):
        parts, picked = [], []
        for j in order[i]:
            if absz[i, j] < 1.0:
                break
            f = FEATURES[j]
            stats = own if has_own[i] else pooled
            median = stats[f"{f}_median"].iloc[i]
            if f in LOG_FEATURES:
                median = float(np.expm1(median))
            parts.append(f"{f} {z[f].iloc[i]:+.1f}σ ({_fmt(frame[f].iloc[i])} vs "
                         f"{_fmt(median)})")
            picked.append(f)
        texts.append("; ".join(parts))
        names.append(picked)
    return texts, names


def _fmt(value: float) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def score_hour(lake: Lake, hour: datetime, model: AnomalyModel | None = None, *,
               top_features: int = 3, min_requests: int = 20) -> pd.DataFrame:
    """Score every slice of the hour's ``metrics`` partition (see :func:`score_frame`).

    ``model`` defaults to the newest one trained before the hour (:func:`load_latest`).
    Raises ``LookupError`` when there is no model or no metrics partition for the hour.
    """
    hour = hour_floor(hour)
    if model is None:
        model = load_latest(lake, as_of=hour)
        if model is None:
            raise MissingData(f"no anomaly model trained before {hour:%Y-%m-%d %H:00} in "
                              f"{lake}; run the daily training (promptops_daily) first")
    metrics = lake.read_partition(mt.METRICS, hour, columns=list(mt.METRICS_SCHEMA.names))
    if metrics is None:
        raise MissingData(f"no metrics partition for {hour:%Y-%m-%d %H:00} in "
                          f"{lake.partition_dir(mt.METRICS, hour)}; run the hourly analysis "
                          f"for the hour first")
    return score_frame(model, feature_frame(metrics), top_features=top_features,
                       min_requests=min_requests)
