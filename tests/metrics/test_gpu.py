"""The GPU check: NVML through a fake module (errors mid-reading included) and the fallback
to the platform's /v1/gpu_metrics when NVML is missing, against a real simulator."""

from __future__ import annotations

import builtins
import logging
import sys
from datetime import UTC, datetime

import pyarrow as pa
import pynvml
import pytest

from promptops.contracts import metric_table as mt
from promptops.metrics import gpu
from tests.helpers.nvml import FakeNvml

AT = datetime(2026, 11, 20, 16, 30, tzinfo=UTC)


def two_gpus(**kw) -> FakeNvml:
    return FakeNvml(gpus=[
        [(10.0, 1000.0, 8000.0, 50.0), (20.0, 2000.0, 8000.0, 60.0), (30.0, 3000.0, 8000.0, 70.0)],
        [(90.0, 7000.0, 8000.0, 80.0), (50.0, 6000.0, 8000.0, 84.0), (70.0, 5000.0, 8000.0, 88.0)],
    ], **kw)


def by_key(table: pa.Table) -> dict[tuple[str, str, str], dict]:
    return {(r["metric"], r["dimension"], r["slice"]): r for r in table.to_pylist()}


def test_nvml_readings_are_averaged_per_gpu() -> None:
    fake = two_gpus()
    waits: list[float] = []
    readings = gpu.read_nvml(fake, samples=3, interval_s=0.25, node="node-a", sleep=waits.append)
    assert waits == [0.25, 0.25]  # between samples, not after the last
    assert [(r.slice, r.samples) for r in readings] == [("node-a/0", 3), ("node-a/1", 3)]
    assert readings[0].utilization_pct == pytest.approx(20.0)
    assert readings[0].memory_used_mb == pytest.approx(2000.0)
    assert readings[1].temperature_c == pytest.approx(84.0)
    assert readings[1].memory_total_mb == pytest.approx(8000.0)
    assert (fake.init_calls, fake.shutdown_calls) == (1, 1)


def test_an_error_mid_reading_skips_that_sample_only() -> None:
    fake = two_gpus(fail_at={(1, 1)})  # GPU 1's second sample: GPU is lost
    notes: list[str] = []
    readings = gpu.read_nvml(fake, samples=3, interval_s=0, node="node-a",
                             sleep=lambda _: None, notes=notes)
    r0, r1 = readings
    assert r0.samples == 3
    # GPU 1 keeps its first and third readings: (90 + 70) / 2.
    assert r1.samples == 2
    assert r1.utilization_pct == pytest.approx(80.0)
    assert len(notes) == 1 and "node-a/1" in notes[0] and "sample 2 of 3 skipped" in notes[0]
    assert fake.shutdown_calls == 1


def test_a_gpu_failing_every_sample_is_left_out_and_said() -> None:
    fake = two_gpus(fail_at={(0, 0), (0, 1)})
    notes: list[str] = []
    readings = gpu.read_nvml(fake, samples=2, interval_s=0, node="n", sleep=lambda _: None,
                             notes=notes)
    assert [r.index for r in readings] == [1]
    assert any("n/0: no good sample out of 2" in n for n in notes)
    assert fake.shutdown_calls == 1


def test_shutdown_is_called_even_when_reading_blows_up() -> None:
    fake = two_gpus()

    def boom(_: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        gpu.read_nvml(fake, samples=2, interval_s=0, node="n", sleep=boom)
    assert fake.shutdown_calls == 1


@pytest.mark.parametrize(("error", "words"), [
    (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, "no NVIDIA driver or NVML library"),
    (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "no NVIDIA driver or NVML library"),
    (pynvml.NVML_ERROR_NO_PERMISSION, "failed to start"),
])
def test_nvml_that_cannot_start_is_unavailable(error: int, words: str) -> None:
    fake = two_gpus(init_error=error)
    with pytest.raises(gpu.NvmlUnavailable, match=words):
        gpu.read_nvml(fake, node="n", sleep=lambda _: None)
    assert fake.shutdown_calls == 0  # it never started


def test_no_gpu_is_unavailable_and_shuts_nvml_down() -> None:
    fake = FakeNvml(gpus=[])
    with pytest.raises(gpu.NvmlUnavailable, match="sees no GPU"):
        gpu.read_nvml(fake, node="n", sleep=lambda _: None)
    assert fake.shutdown_calls == 1


def test_node_name_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(gpu.NODE_NAME_ENV, "gpu-node-07")
    summary = gpu.collect_gpu_metrics(AT, nvml_loader=two_gpus, interval_s=0,
                                      sleep=lambda _: None)
    assert summary.source == gpu.SOURCE_NVML
    assert {r.node for r in summary.readings} == {"gpu-node-07"}
    rows = by_key(summary.table)
    node_util = rows[(gpu.GPU_UTILIZATION_PCT, "gpu_node", "gpu-node-07")]
    assert node_util["value"] == pytest.approx((20.0 + 70.0) / 2)
    assert node_util["samples"] == 6
    # Node memory: the sum over its GPUs; the node's temperature: its hottest GPU.
    assert rows[(gpu.GPU_MEMORY_USED_PCT, "gpu_node", "gpu-node-07")]["value"] == \
        pytest.approx(100 * (2000 + 6000) / 16000)
    assert rows[(gpu.GPU_TEMPERATURE_C, "gpu_node", "gpu-node-07")]["value"] == \
        pytest.approx(84.0)
    assert rows[(gpu.GPU_MEMORY_USED_PCT, "gpu", "gpu-node-07/0")]["value"] == \
        pytest.approx(25.0)


@pytest.fixture()
def no_pynvml(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import pynvml`` fails, as on a machine without nvidia-ml-py."""
    real_import = builtins.__import__

    def failing_import(name: str, *args, **kwargs):
        if name == "pynvml":
            raise ImportError("No module named 'pynvml'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    monkeypatch.setattr(builtins, "__import__", failing_import)


def test_missing_module_falls_back_to_the_platform_and_says_so_once(
        no_pynvml: None, client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="promptops.metrics.gpu")
    first = gpu.collect_gpu_metrics(AT, client=client)
    second = gpu.collect_gpu_metrics(AT, client=client)
    assert first.source == second.source == gpu.SOURCE_PLATFORM
    said = [r.getMessage() for r in caplog.records if "NVML is not available" in r.getMessage()]
    assert len(said) == 1
    assert "nvidia-ml-py" in said[0] and "/v1/gpu_metrics" in said[0]
    assert any("NVML is not available" in n for n in second.notes)  # still in the summary
    assert first.readings and all(r.samples == 1 for r in first.readings)
    assert {r.node for r in first.readings} >= {"gpu-node-02"}
    rows = first.table
    assert rows.schema == mt.METRICS_SCHEMA
    assert set(rows.column("dimension").to_pylist()) == {"gpu", "gpu_node"}


def test_missing_module_without_a_client_says_what_to_do(no_pynvml: None) -> None:
    with pytest.raises(gpu.NvmlUnavailable, match="no platform client"):
        gpu.collect_gpu_metrics(AT)


def shape(table: pa.Table) -> set[tuple[str, str]]:
    return {(r["metric"], r["dimension"]) for r in table.to_pylist()}


def test_both_sources_give_the_same_row_shapes(client) -> None:
    nvml = gpu.collect_gpu_metrics(AT, nvml_loader=two_gpus, node="gpu-node-01",
                                   interval_s=0, sleep=lambda _: None)

    def missing() -> None:
        raise gpu.NvmlUnavailable("NVML is not available: test")

    platform = gpu.collect_gpu_metrics(AT, client=client, nvml_loader=missing)
    assert (nvml.source, platform.source) == (gpu.SOURCE_NVML, gpu.SOURCE_PLATFORM)
    assert nvml.table.schema == platform.table.schema == mt.METRICS_SCHEMA
    assert shape(nvml.table) == shape(platform.table) == {
        (m, d) for m in gpu.GPU_METRICS for d in ("gpu", "gpu_node")}
    for table in (nvml.table, platform.table):
        assert set(table.column("hour").to_pylist()) == {AT}
        gpu_slices = [s for s, d in zip(table.column("slice").to_pylist(),
                                        table.column("dimension").to_pylist(), strict=True)
                      if d == "gpu"]
        assert all("/" in s for s in gpu_slices)


def test_malformed_platform_entries_are_skipped_with_a_reason() -> None:
    good = {"node": "n1", "gpu_index": 0, "utilization_pct": 50, "memory_used_mb": 10,
            "memory_total_mb": 20, "temperature_c": 60, "ts": "2026-11-20T16:30:00Z"}
    notes: list[str] = []
    readings = gpu.platform_readings(
        [good, {**good, "gpu_index": "1"}, {k: v for k, v in good.items() if k != "node"}, 7,
         {**good, "temperature_c": -3}], notes)
    assert len(readings) == 1
    assert [n.split(":")[0] for n in notes] == [f"/v1/gpu_metrics entry {i}" for i in (1, 2, 3, 4)]
    assert "gpu_index" in notes[0] and "missing node" in notes[1] and "temperature_c" in notes[3]
