"""Simulated GPU utilisation: a healthy fleet keeps headroom at its daily peak, so the
gpu_utilization rule (80% held for three 5-minute readings) stays quiet on ordinary traffic,
while a saturation incident still reads above 95%."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import yaml

from promptops.simulator import Platform, SimConfig

TUESDAY = datetime(2026, 9, 8, tzinfo=UTC)


def _platform(tmp_path, incidents=()):
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump({
        "seed": 5, "calls_per_hour": 2000, "incidents": list(incidents),
        "data_faults": {"malformed_rate": 0.0, "duplicate_rate": 0.0, "late_rate": 0.0}}))
    return Platform(SimConfig.build(path))


def _readings(p, start, hours):
    """node -> list of (per 5 minutes) hottest GPU reading on the node."""
    out: dict[str, list[float]] = {}
    for k in range(1, hours * 12 + 1):
        by_node: dict[str, float] = {}
        for r in p.gpu_metrics(start + timedelta(minutes=5 * k)):
            by_node[r["node"]] = max(by_node.get(r["node"], 0.0), r["utilization_pct"])
        for node, util in by_node.items():
            out.setdefault(node, []).append(util)
    return out


def test_weekday_peak_hours_stay_below_the_warning_line_for_fifteen_minutes(tmp_path):
    # Weekday afternoons are the busiest hours of the week (1.8x the weekly mean).
    readings = _readings(_platform(tmp_path), TUESDAY + timedelta(hours=12), hours=6)
    for node, utils in readings.items():
        held = [utils[i:i + 3] for i in range(len(utils) - 2)]
        assert not any(min(w) > 80 for w in held), (node, max(utils))
        # Busy, not idle: the peak is visible in the readings.
        assert max(utils) > 50, node


def test_a_saturated_node_still_reads_above_95_percent(tmp_path):
    start = TUESDAY + timedelta(hours=13)
    p = _platform(tmp_path, [{"name": "sat", "kind": "gpu_saturation",
                              "start": start.isoformat(),
                              "end": (start + timedelta(hours=1)).isoformat(),
                              "slice": {"gpu_node": "gpu-node-02"}, "params": {}}])
    readings = _readings(p, start, hours=1)
    assert min(readings["gpu-node-02"][:-1]) >= 95
    assert max(max(v) for n, v in readings.items() if n != "gpu-node-02") < 90
