"""Root-cause localisation: which dimension-value combinations explain a change.

- :mod:`.localization`: the algorithm, on any leaf cube (:func:`localize`, the measures,
  the ranked :class:`Localization` and its words);
- :mod:`.cube`: the leaf cube of one hour from the lake's ``calls`` partitions
  (:func:`leaf_cube`) and the hourly run's entry point (:func:`explain_hour`);
- :mod:`.findings`: the hourly findings' root causes, each within its alerted slice, with
  one primary cause and at most two secondaries (:func:`.findings.annotate_findings`; not
  imported here, so that the command starts light);
- :mod:`.cli`: the command ``python -m promptops.detection.root_cause`` on a CSV of leaves.
"""

from promptops.detection.root_cause.cube import (
    CUBE_DIMENSIONS,
    DEFAULT_DIMS,
    baseline_hours,
    explain_hour,
    leaf_cube,
)
from promptops.detection.root_cause.localization import (
    ALL,
    CALL_QUANTITIES,
    MEASURES,
    NONE_VALUE,
    Cube,
    Localization,
    Measure,
    RootCause,
    check_columns,
    format_value,
    localize,
    measure,
)

__all__ = ["ALL", "CALL_QUANTITIES", "CUBE_DIMENSIONS", "DEFAULT_DIMS", "MEASURES", "NONE_VALUE",
           "Cube", "Localization", "Measure", "RootCause", "baseline_hours", "check_columns",
           "explain_hour", "format_value", "leaf_cube", "localize", "measure"]
