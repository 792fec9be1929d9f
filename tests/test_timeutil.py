"""One as_utc for the library: promptops.timeutil's."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pendulum

from promptops.timeutil import as_utc
from tests.helpers import ROOT


def test_as_utc_gives_plain_utc_datetimes():
    assert as_utc(datetime(2026, 11, 20, 10, 0)) == datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    cet = datetime(2026, 11, 20, 11, 30, tzinfo=timezone(timedelta(hours=1)))
    assert as_utc(cet) == datetime(2026, 11, 20, 10, 30, tzinfo=UTC)
    assert as_utc(cet).tzinfo is UTC
    airflow_time = as_utc(pendulum.datetime(2026, 11, 20, 11, tz="Europe/Paris"))
    assert type(airflow_time) is datetime and airflow_time.tzinfo is UTC
    assert airflow_time.hour == 10


def test_one_as_utc_in_the_library():
    """Static: no other module defines its own (the simulator, a separate program, aside)."""
    pattern = re.compile(r"^def _?as_utc\(", re.MULTILINE)
    places = sorted(str(p.relative_to(ROOT))
                    for p in (ROOT / "include" / "promptops").rglob("*.py")
                    if "simulator" not in p.parts and pattern.search(p.read_text()))
    assert places == ["include/promptops/timeutil.py"]
