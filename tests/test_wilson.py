"""One Wilson interval (statsmodels'), the same numbers as the hand-written ones it replaced."""

from __future__ import annotations

import math

import numpy as np
import pytest

from promptops.stats import wilson_interval
from tests.helpers import ROOT

Z95 = 1.959963984540054


def by_hand(k: float, n: float, z: float) -> tuple[float, float]:
    """The textbook formula, as metrics and baselines wrote it before."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return min(max(centre - half, 0.0), 1.0), min(max(centre + half, 0.0), 1.0)


COUNTS = [(0, 1), (1, 1), (0, 7), (7, 7), (2, 5), (8, 10), (49, 50), (1, 3), (999, 1000),
          (12_345, 54_321), (3, 100_000)]


@pytest.mark.parametrize(("k", "n"), COUNTS)
def test_counts_give_the_textbook_interval(k, n):
    lo, hi = wilson_interval(k, n)
    want = by_hand(k, n, Z95)
    assert abs(lo - want[0]) < 1e-12 and abs(hi - want[1]) < 1e-12
    assert lo <= k / n <= hi


def test_arrays_and_another_level():
    """The baselines ask at their band's coverage (z 2.97 for 99.7%), for rates on n."""
    coverage = 0.997
    z = 2.967737925342008  # norm.ppf(0.5 + coverage / 2)
    p = np.array([0.0, 0.01, 0.25, 0.5, 0.999, 1.0])
    n = np.array([69.0, 1.0, 12.0, 1000.0, 50.0, 3.0])
    lo, hi = wilson_interval(p * n, n, alpha=1 - coverage)
    for i in range(len(p)):
        want = by_hand(p[i] * n[i], n[i], z)
        assert abs(lo[i] - want[0]) < 1e-12 and abs(hi[i] - want[1]) < 1e-12


def test_no_trials_know_nothing():
    lo, hi = wilson_interval(np.array([0.0, 3.0, 0.0]), np.array([0.0, 4.0, np.nan]))
    assert lo[0] == 0.0 and hi[0] == 1.0 and lo[2] == 0.0 and hi[2] == 1.0
    assert 0 < lo[1] < 0.75 < hi[1] < 1


def test_one_wilson_interval_in_the_library():
    """Static: nothing else in the library computes one."""
    places = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "include").rglob("*.py")
                    if "proportion_confint" in p.read_text() or "def _wilson" in p.read_text())
    assert places == ["include/promptops/stats.py"]
