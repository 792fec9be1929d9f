"""The causal scorer and its CSV command: scores in [0, 1], a spike scores highest, a later
value never changes an earlier score, and bad files get errors that name the line."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from promptops.detection.baselines import BaselineConfig, CsvError, score_series
from promptops.detection.baselines.__main__ import main
from promptops.detection.baselines.scoring import read_series_csv, season_for_interval
from tests.helpers import ROOT
from tests.helpers.baselines import seasonal

CFG = BaselineConfig()


def hourly(n: int, start: str = "2024-05-01") -> pd.DatetimeIndex:
    return pd.date_range(start, periods=n, freq="h", tz="UTC")


def write_csv(path: Path, times, values) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", "value"])
        for t, v in zip(times, values, strict=True):
            w.writerow([t, "" if v is None or (isinstance(v, float) and np.isnan(v)) else v])
    return path


def read_scores(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"timestamp": str})


def test_spike_scores_highest_and_normal_hours_stay_low():
    values = seasonal(14, level=100, noise=0.03, seed=5)
    values[250] *= 1.8
    scores = score_series(hourly(len(values)), values, config=CFG)
    assert scores.shape == values.shape
    assert np.all((scores >= 0) & (scores <= 1))
    assert int(np.argmax(scores[72:])) + 72 == 250 and scores[250] > 0.9999
    settled = np.delete(scores[100:], 150)
    assert np.median(settled) < 0.8 and np.mean(settled > 0.999) < 0.03


@pytest.mark.parametrize("at", [120, 200, 290, 335])
def test_changing_a_later_value_never_changes_an_earlier_score(at):
    values = seasonal(14, level=100, seed=6)
    base = score_series(hourly(len(values)), values, config=CFG)
    changed = values.copy()
    changed[at] = values[at] * 5
    changed[at + 1:] = values[at + 1:] * 0.5
    again = score_series(hourly(len(values)), changed, config=CFG)
    assert np.array_equal(base[:at], again[:at])
    assert again[at] > 0.999  # and the changed point itself is seen


def test_missing_samples_and_gaps_in_time():
    values = seasonal(10, level=100, seed=7)
    times = hourly(len(values))
    keep = np.ones(len(values), dtype=bool)
    keep[[50, 51, 52, 180]] = False  # those hours are absent from the file
    values[100] = np.nan  # present but empty
    scores = score_series(times[keep], values[keep], config=CFG)
    assert len(scores) == keep.sum()
    assert scores[np.flatnonzero(np.isnan(values[keep]))[0]] == 0.0
    assert np.all(np.isfinite(scores))


def test_season_from_the_interval():
    assert season_for_interval(3600) == 24
    assert season_for_interval(300) == 288
    assert season_for_interval(86400) == 7
    assert season_for_interval(7 * 86400) == 1
    assert season_for_interval(1) == 1  # 86400 per day is too long: pass --season


def test_five_minute_series_with_explicit_season():
    n = 4 * 288
    t = pd.date_range("2024-05-01", periods=n, freq="5min", tz="UTC")
    rng = np.random.default_rng(8)
    values = 50 + 20 * np.sin(2 * np.pi * np.arange(n) / 288) + rng.standard_normal(n)
    values[900] += 25
    scores = score_series(t, values, config=CFG)
    assert int(np.argmax(scores)) == 900
    flat = score_series(t, values, season=1, config=CFG)  # no seasonality: still scores
    assert flat.shape == values.shape and np.all((flat >= 0) & (flat <= 1))


def test_bad_timestamps_are_refused():
    with pytest.raises(ValueError, match="point 2: timestamp is not after the previous one"):
        score_series(["2024-01-01T00:00Z", "2024-01-01T01:00Z", "2024-01-01T01:00Z"],
                     [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="not a whole multiple"):
        score_series([0, 60, 120, 150], [1.0, 2.0, 3.0, 4.0])


# -- the command -------------------------------------------------------------------------


def test_cli_writes_scores_in_a_real_process(tmp_path):
    values = seasonal(8, level=100, seed=9)
    values[170] *= 2
    src = write_csv(tmp_path / "in.csv", [t.strftime("%Y-%m-%d %H:%M:%S") for t in
                                          hourly(len(values))], np.round(values, 3))
    out = tmp_path / "out.csv"
    proc = subprocess.run([sys.executable, "-m", "promptops.detection.baselines", "score", str(src),
                           "-o", str(out)], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "scored 192 points (interval 3600 s, season 24" in proc.stderr
    df = read_scores(out)
    assert list(df.columns) == ["timestamp", "value", "anomaly_score"]
    assert df["timestamp"].iloc[0] == "2024-05-01 00:00:00"  # echoed as given
    assert df["anomaly_score"].between(0, 1).all()
    assert int(df["anomaly_score"].idxmax()) == 170


def test_cli_is_causal_on_files(tmp_path):
    values = seasonal(6, level=100, seed=10)
    times = [t.isoformat() for t in hourly(len(values))]
    a = write_csv(tmp_path / "a.csv", times, values)
    changed = values.copy()
    changed[-10:] = 0.0
    b = write_csv(tmp_path / "b.csv", times, changed)
    assert main(["score", str(a), "-o", str(tmp_path / "a.out")]) == 0
    assert main(["score", str(b), "-o", str(tmp_path / "b.out"), "--season", "24"]) == 0
    sa, sb = read_scores(tmp_path / "a.out"), read_scores(tmp_path / "b.out")
    assert sa["anomaly_score"].iloc[:-10].tolist() == sb["anomaly_score"].iloc[:-10].tolist()
    assert sb["anomaly_score"].iloc[-10] > 0.999


def test_cli_unix_seconds_and_extra_columns(tmp_path, capsys):
    path = tmp_path / "yahoo.csv"
    rows = [f"{1_700_000_000 + 3600 * i},{v:.2f},0" for i, v in enumerate(seasonal(4, seed=2))]
    path.write_text("timestamp,value,is_anomaly\n" + "\n".join(rows) + "\n")
    assert main(["score", str(path)]) == 0  # to standard output
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "timestamp,value,anomaly_score" and len(out) == 97
    assert out[1].startswith("1700000000,")


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty file; expected a header line 'timestamp,value'"),
    ("time,val\n1,2\n", "line 1: header must name the columns 'timestamp' and 'value'"),
    ("timestamp,value\n", "no data lines after the header"),
    ("timestamp,value\n2024-01-01T00:00Z,1\n2024-01-01T01:00Z,abc\n",
     "line 3: value 'abc' is not a finite number"),
    ("timestamp,value\n2024-01-01T00:00Z,1\nyesterday,2\n",
     "line 3: timestamp 'yesterday' is not a date-time"),
    ("timestamp,value\n100,1\n2024-01-01T00:00Z,2\n",
     "line 3: timestamp '2024-01-01T00:00Z' is not a number like the first one"),
    ("timestamp,value\n2024-01-01T01:00Z,1\n2024-01-01T00:00Z,2\n",
     "line 3: timestamp '2024-01-01T00:00Z' after '2024-01-01T01:00Z': timestamp is not after"),
    ("timestamp,value\n0,1\n60,2\n120,3\n150,4\n",
     "line 5: timestamp '150' after '120': step of 0:00:30 is not a whole multiple"),
    ("timestamp,value\n0,1\n60\n", "line 3: 1 field(s), expected 2"),
    ("timestamp,value\n0,inf\n", "line 2: value 'inf' is not a finite number"),
])
def test_bad_csv_names_the_line(tmp_path, capsys, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(CsvError, match=None) as err:
        read_series_csv(path)
    assert message in str(err.value) and str(path) in str(err.value)
    assert main(["score", str(path), "-o", str(tmp_path / "out.csv")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out.csv").exists()


def test_missing_file_and_bad_season(tmp_path, capsys):
    assert main(["score", str(tmp_path / "nope.csv")]) == 2
    assert "nope.csv: cannot open" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["score", "x.csv", "--season", "0"])
    assert "must be >= 1" in capsys.readouterr().err
