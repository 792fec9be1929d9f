"""The command ``python -m promptops.detection.root_cause``, run as a real process on CSV files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.root_cause import synthetic_cube

CARDS = {"model": 6, "app": 5, "region": 4}


def run(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "promptops.detection.root_cause", *map(str, args)],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def two_causes_csv(tmp_path_factory) -> Path:
    cube = synthetic_cube(CARDS, [({"model": "model1"}, 3.0),
                                  ({"region": "region2", "app": "app4"}, 3.0)], seed=3)
    path = tmp_path_factory.mktemp("cli") / "two_causes.csv"
    # Other column names than the defaults, and an extra column nobody asked for.
    cube.rename(columns={"actual": "now", "expected": "usual"}).assign(note="x").to_csv(
        path, index=False)
    return path


def test_prints_the_ranked_set(two_causes_csv):
    proc = run(two_causes_csv, "--dims", "model,app,region", "--actual", "now",
               "--expected", "usual")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "model=model1;app=app4&region=region2\n"


def test_top_limits_the_set(two_causes_csv):
    proc = run(two_causes_csv, "--dims", "model,app,region", "--actual", "now",
               "--expected", "usual", "--top", "1")
    assert proc.stdout == "model=model1\n"


def test_ratio_and_explain(tmp_path):
    cube = synthetic_cube(CARDS, [({"region": "region3"}, 8.0)], ratio=True, seed=1)
    path = tmp_path / "ratio.csv"
    cube.to_csv(path, index=False)
    proc = run(path, "--dims", "model,app,region", "--actual-den", "actual_den",
               "--expected-den", "expected_den", "--explain")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "region=region3\n"
    assert "explained by region=region3 in all models and apps" in proc.stderr
    assert "| region=region3 |" in proc.stderr


def test_nothing_significant_prints_an_empty_line(tmp_path):
    path = tmp_path / "quiet.csv"
    synthetic_cube(CARDS, [], seed=2).to_csv(path, index=False)
    proc = run(path, "--dims", "model,app,region")
    assert proc.returncode == 0
    assert proc.stdout == "\n"


def test_missing_column_names_it_and_lists_the_present_ones(two_causes_csv):
    proc = run(two_causes_csv, "--dims", "model,tenant", "--actual", "now",
               "--expected", "usual")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "'tenant' (given by --dims)" in proc.stderr
    assert "columns present: model, app, region, usual, now, note" in proc.stderr


def test_default_value_columns_missing(two_causes_csv):
    proc = run(two_causes_csv, "--dims", "model")
    assert proc.returncode == 2
    assert "'actual' (given by --actual) or 'expected' (given by --expected)" in proc.stderr


def test_non_numeric_value_names_the_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("model,actual,expected\na,1,2\nb,three,2\nc,,4\n")
    proc = run(path, "--dims", "model")
    assert proc.returncode == 2
    assert "'actual'" in proc.stderr and "not numbers" in proc.stderr
    assert "line 3, line 4" in proc.stderr


def test_negative_value(tmp_path):
    path = tmp_path / "neg.csv"
    path.write_text("model,actual,expected\na,1,2\nb,-1,2\n")
    proc = run(path, "--dims", "model")
    assert proc.returncode == 2
    assert "negative" in proc.stderr and "line 3" in proc.stderr


def test_ragged_row(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text("model,actual,expected\na,1,2\nb,1\n")
    proc = run(path, "--dims", "model")
    assert proc.returncode == 2
    assert "line 3 has a different number of fields" in proc.stderr


@pytest.mark.parametrize("content", ["", None])
def test_empty_or_missing_file(tmp_path, content):
    path = tmp_path / "cube.csv"
    if content is not None:
        path.write_text(content)
    proc = run(path, "--dims", "model")
    assert proc.returncode == 2
    assert str(path) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_half_a_ratio_is_refused(two_causes_csv):
    proc = run(two_causes_csv, "--dims", "model", "--actual-den", "now")
    assert proc.returncode == 2
    assert "both --actual-den and --expected-den" in proc.stderr


def test_the_command_is_a_module_of_its_own_that_starts_light():
    """The algorithm, the lake's cube and the command are separate modules; the command loads
    neither pandas, pyarrow nor the lake (a hand-made CSV must not pay for them)."""
    code = ("import sys, promptops.detection.root_cause.cli; print(sorted(m for m in "
            "('pandas', 'pyarrow', 'promptops.lake.store') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "[]\n"
