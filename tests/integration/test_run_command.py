"""The README's run command, for real: simulator + Slack sink + airflow standalone, DAGs
unpaused, a backfill created through Airflow's REST API and executed by the scheduler."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from stackhelpers import free_port, processes_using

from promptops.lake import Lake

ROOT = Path(__file__).resolve().parents[2]




@pytest.mark.slow
@pytest.mark.timeout(900)
def test_run_command_backfills_under_the_scheduler_and_stops_cleanly(tmp_path):
    home, lake_dir = tmp_path / "airflow_home", tmp_path / "lake"
    env = dict(os.environ, PROMPTOPS_LAKE_URI=f"file://{lake_dir}",
               PROMPTOPS_STATE_DIR=str(tmp_path / "state"))
    hours = 2
    started = datetime.now(UTC)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts/dev_stack.py"), "--home", str(home),
         "--airflow-port", str(free_port()), "--simulator-port", str(free_port()),
         "--slack-port", str(free_port()), "--backfill-hours", str(hours),
         "--scenario", str(ROOT / "include/config/scenarios/quiet.yaml"),
         "--exit-when-backfilled"],
        env=env, capture_output=True, text=True, timeout=840)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Airflow UI: http://127.0.0.1:" in proc.stdout
    assert "backfill finished" in proc.stdout

    # The backfilled hours (and the hour each run re-reads for late records) are in the lake.
    end = started.replace(minute=0, second=0, microsecond=0)
    lake = Lake(f"file://{lake_dir}")
    for h in range(1, hours + 1):
        hour = end - timedelta(hours=h)
        table = lake.read_partition("calls", hour)
        assert table is not None and table.num_rows > 0, f"no calls partition for {hour}"
        assert len(table.column("call_id").unique()) == table.num_rows

    # Ctrl-C semantics: nothing the stack started is still running.
    assert processes_using(home) == []
