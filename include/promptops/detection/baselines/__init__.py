"""Seasonal baselines: Holt-Winters bands per metric series, the hourly check against them,
and a causal scorer for any ``timestamp,value`` CSV.

- :mod:`~promptops.detection.baselines.config`: :class:`BaselineConfig` (``PROMPTOPS_BASELINE_*``).
- :mod:`~promptops.detection.baselines.holt_winters`: one series -> :class:`BaselineFit`
  (Holt-Winters, or the median/MAD fallback with the reason).
- :mod:`~promptops.detection.baselines.bands`: the metric history -> the day's bands (:func:`fit_all`,
  in parallel), stored in the lake dataset ``baselines`` (:func:`write_bands`,
  :func:`read_bands`, :func:`refit_baselines` for the daily DAG).
- :mod:`~promptops.detection.baselines.band_findings`: an hour's metrics against its bands ->
  findings (``band_findings.band_findings``, :func:`baseline_findings_for_hour` for the hourly
  DAG).
- :mod:`~promptops.detection.baselines.scoring`: :func:`score_series` / :func:`score_csv`, also
  ``python -m promptops.detection.baselines score IN.csv -o OUT.csv [--season N]``.

Names are imported on first use (PEP 562), and statsmodels and joblib only inside the
functions that fit: importing this package in a DAG file stays cheap, and the CSV command
does not load Airflow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Public name -> the module that defines it.
_EXPORTS = {
    # Not ``band_findings`` itself: once its submodule is imported, the package attribute
    # of that name is the module, so callers import the function from the submodule.
    "baseline_findings_for_hour": "band_findings",
    "BANDS": "bands", "BANDS_SCHEMA": "bands", "fit_all": "bands", "fit_many": "bands",
    "history_series": "bands", "read_bands": "bands", "read_history": "bands",
    "refit_baselines": "bands", "write_bands": "bands",
    "BaselineConfig": "config", "BaselineConfigError": "config",
    "load_baseline_config": "config",
    "HOLT_WINTERS": "holt_winters", "MEDIAN_MAD": "holt_winters",
    "BaselineFit": "holt_winters", "fit_series": "holt_winters",
    "CsvError": "scoring", "score_csv": "scoring", "score_series": "scoring",
}
__all__ = [
    "BANDS", "BANDS_SCHEMA", "HOLT_WINTERS", "MEDIAN_MAD", "BaselineConfig",
    "BaselineConfigError", "BaselineFit", "CsvError", "baseline_findings_for_hour", "fit_all", "fit_many", "fit_series", "history_series",
    "load_baseline_config", "read_bands", "read_history", "refit_baselines", "score_csv",
    "score_series", "write_bands",
]

if TYPE_CHECKING:
    from promptops.detection.baselines.band_findings import baseline_findings_for_hour
    from promptops.detection.baselines.bands import (
        BANDS,
        BANDS_SCHEMA,
        fit_all,
        fit_many,
        history_series,
        read_bands,
        read_history,
        refit_baselines,
        write_bands,
    )
    from promptops.detection.baselines.config import (
        BaselineConfig,
        BaselineConfigError,
        load_baseline_config,
    )
    from promptops.detection.baselines.holt_winters import (
        HOLT_WINTERS,
        MEDIAN_MAD,
        BaselineFit,
        fit_series,
    )
    from promptops.detection.baselines.scoring import CsvError, score_csv, score_series


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'promptops.detection.baselines' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"promptops.detection.baselines.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
