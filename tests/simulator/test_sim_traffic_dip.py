"""The holiday dip: a labelled non-incident that scales traffic and breaks nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from promptops.simulator import Platform, SimConfig

DAY = datetime(2026, 11, 26, tzinfo=UTC)  # a Thursday


def test_traffic_dip_scales_volume_and_keeps_quality(tmp_path):
    path = tmp_path / "dip.yaml"
    path.write_text(
        "seed: 3\ncalls_per_hour: 4000\n"
        "data_faults: {malformed_rate: 0.0, duplicate_rate: 0.0, late_rate: 0.0}\n"
        "incidents:\n  - {name: thanksgiving, kind: traffic_dip, start: 2026-11-26T00:00:00Z,"
        " end: 2026-11-27T00:00:00Z, params: {multiplier: 0.4}}\n")
    dipped = Platform(SimConfig.build(path))
    normal = Platform(SimConfig.build(None, seed=3, calls_per_hour=4000, malformed_rate=0.0,
                                      duplicate_rate=0.0, late_rate=0.0))
    hour = DAY + timedelta(hours=14)
    a = [s.record for s in dipped.served_with_truth(hour, hour + timedelta(hours=1))]
    b = [s.record for s in normal.served_with_truth(hour, hour + timedelta(hours=1))]
    assert 0.3 < len(a) / len(b) < 0.5
    err = lambda rs: sum(r["status"] == "error" for r in rs) / len(rs)  # noqa: E731
    assert err(a) < 0.02 and err(b) < 0.02
    # The day after is untouched.
    after = DAY + timedelta(days=1, hours=14)
    n_after = len(dipped.served_with_truth(after, after + timedelta(hours=1)))
    assert n_after == len(normal.served_with_truth(after, after + timedelta(hours=1)))
