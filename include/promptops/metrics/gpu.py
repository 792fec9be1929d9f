"""GPU readings for the health sensor: NVML on the node itself, the platform's view otherwise.

Two sources, one result. Where the worker runs on a GPU node, :func:`read_nvml` samples every
GPU through the ``pynvml`` module (nvidia-ml-py) ``samples`` times ``interval_s`` apart and
averages. Where NVML is missing (no package, no driver, no GPU), :func:`collect_gpu_metrics`
says so once per process in plain words and asks the platform's ``GET /v1/gpu_metrics``
instead. Either way the readings become the same tidy metric rows
(:data:`promptops.contracts.metric_table.METRICS_SCHEMA`):

- dimension ``gpu``, slice ``"<node>/<index>"``: one GPU;
- dimension ``gpu_node``, slice ``<node>``: the node's GPUs together (utilisation is their
  mean, memory used their sum, memory used % sum over sum, temperature the hottest GPU,
  because a node is as healthy as its hottest card).

``samples`` on a row is how many readings were averaged (1 per GPU from the platform).
The NVML module is a parameter so tests can hand in a fake one.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from types import ModuleType
from typing import Any

import pyarrow as pa

from promptops.contracts import metric_table as mt
from promptops.errors import InvalidInput, PromptOpsError

log = logging.getLogger(__name__)

# Metric names of the health sensor's GPU rows (units in the name).
GPU_UTILIZATION_PCT = "gpu_utilization_pct"
GPU_MEMORY_USED_MB = "gpu_memory_used_mb"
GPU_MEMORY_USED_PCT = "gpu_memory_used_pct"
GPU_TEMPERATURE_C = "gpu_temperature_c"
GPU_METRICS = (GPU_UTILIZATION_PCT, GPU_MEMORY_USED_MB, GPU_MEMORY_USED_PCT, GPU_TEMPERATURE_C)

GPU_DIMENSION = "gpu"
GPU_NODE_DIMENSION = "gpu_node"

SOURCE_NVML = "nvml"
SOURCE_PLATFORM = "platform"

#: Overrides the host name as the node name of NVML readings.
NODE_NAME_ENV = "PROMPTOPS_GPU_NODE_NAME"

_MB = 1024 * 1024
#: Reasons already logged in this process, so a missing GPU is said once, not every 5 min.
_SAID: set[str] = set()


class NvmlUnavailable(PromptOpsError, RuntimeError):
    """NVML cannot be used on this machine; the message says why in plain words."""


@dataclass(frozen=True)
class GpuReading:
    """One GPU's averaged reading."""

    node: str
    index: int
    utilization_pct: float
    memory_used_mb: float
    memory_total_mb: float
    temperature_c: float
    samples: int

    @property
    def slice(self) -> str:
        return f"{self.node}/{self.index}"


@dataclass(frozen=True)
class GpuSummary:
    """What the GPU check found: where from, the readings, their metric rows and notes
    (skipped samples, why NVML was not used)."""

    source: str
    readings: list[GpuReading]
    table: pa.Table
    notes: list[str] = field(default_factory=list)


def say_once(message: str) -> None:
    """Log ``message`` at WARNING the first time in this process, at DEBUG after that."""
    if message in _SAID:
        log.debug("%s", message)
        return
    _SAID.add(message)
    log.warning("%s", message)


def node_name() -> str:
    """The node name NVML readings carry: ``PROMPTOPS_GPU_NODE_NAME`` or the host name."""
    return os.environ.get(NODE_NAME_ENV, "").strip() or socket.gethostname()


def load_nvml() -> ModuleType:
    """Import ``pynvml``; a missing package is :class:`NvmlUnavailable`."""
    try:
        import pynvml
    except ImportError as exc:
        raise NvmlUnavailable(
            "NVML is not available: the Python package nvidia-ml-py (module pynvml) is not "
            f"installed ({exc}); install it on GPU workers to read GPUs directly") from None
    return pynvml


# -- NVML -----------------------------------------------------------------------------------

def _init(nvml: Any) -> int:
    """``nvmlInit`` and the GPU count; anything that means "no usable GPU" is
    :class:`NvmlUnavailable` (after shutting NVML down again if it did start)."""
    not_found = tuple(getattr(nvml, name) for name in
                      ("NVMLError_LibraryNotFound", "NVMLError_DriverNotLoaded")
                      if hasattr(nvml, name))
    try:
        nvml.nvmlInit()
    except not_found as exc:
        raise NvmlUnavailable(
            f"NVML is not available: no NVIDIA driver or NVML library on this machine ({exc})"
        ) from None
    except nvml.NVMLError as exc:
        raise NvmlUnavailable(f"NVML is not available: it failed to start ({exc})") from None
    try:
        count = int(nvml.nvmlDeviceGetCount())
    except nvml.NVMLError as exc:
        nvml.nvmlShutdown()
        raise NvmlUnavailable(f"NVML is not available: it could not count GPUs ({exc})") from None
    if count == 0:
        nvml.nvmlShutdown()
        raise NvmlUnavailable("NVML is not available: it started but sees no GPU on this machine")
    return count


def _read_one(nvml: Any, index: int) -> tuple[float, float, float, float]:
    """Utilisation %, memory used MB, memory total MB, temperature C of one GPU now."""
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    util = nvml.nvmlDeviceGetUtilizationRates(handle).gpu
    mem = nvml.nvmlDeviceGetMemoryInfo(handle)
    temp = nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
    return float(util), mem.used / _MB, mem.total / _MB, float(temp)


def read_nvml(nvml: Any | None = None, *, samples: int = 3, interval_s: float = 1.0,
              node: str | None = None, sleep: Callable[[float], None] = time.sleep,
              notes: list[str] | None = None) -> list[GpuReading]:
    """Sample every GPU ``samples`` times ``interval_s`` apart and average per GPU.

    ``nvml`` is the pynvml module (or a stand-in with its API); by default the real one.
    An NVML error on one GPU in one sample skips that sample (and appends a note); a GPU
    with no good sample is left out. ``nvmlShutdown`` is always called once NVML started.
    Raises :class:`NvmlUnavailable` where NVML cannot be used at all.
    """
    if samples < 1:
        raise InvalidInput(f"samples must be at least 1, got {samples}")
    if interval_s < 0:
        raise InvalidInput(f"interval_s must not be negative, got {interval_s}")
    nvml = load_nvml() if nvml is None else nvml
    notes = [] if notes is None else notes
    node = node or node_name()
    count = _init(nvml)
    taken: dict[int, list[tuple[float, float, float, float]]] = {i: [] for i in range(count)}
    try:
        for s in range(samples):
            if s:
                sleep(interval_s)
            for i in range(count):
                try:
                    taken[i].append(_read_one(nvml, i))
                except nvml.NVMLError as exc:
                    note = f"GPU {node}/{i}: sample {s + 1} of {samples} skipped ({exc})"
                    log.warning("%s", note)
                    notes.append(note)
    finally:
        nvml.nvmlShutdown()
    out = []
    for i, rows in taken.items():
        if not rows:
            note = f"GPU {node}/{i}: no good sample out of {samples}; left out"
            log.warning("%s", note)
            notes.append(note)
            continue
        n = len(rows)
        util, used, total, temp = (sum(col) / n for col in zip(*rows, strict=True))
        out.append(GpuReading(node, i, util, used, rows[-1][2], temp, n))
    return out


# -- the platform's view --------------------------------------------------------------------

_PLATFORM_FIELDS = ("node", "gpu_index", "utilization_pct", "memory_used_mb",
                    "memory_total_mb", "temperature_c")


def platform_readings(entries: Iterable[Any], notes: list[str] | None = None) -> list[GpuReading]:
    """``GET /v1/gpu_metrics`` entries as readings (one sample each). A malformed entry is
    skipped with a note naming the entry and the problem."""
    notes = [] if notes is None else notes
    out = []
    for pos, entry in enumerate(entries):
        problem = _entry_problem(entry)
        if problem:
            note = f"/v1/gpu_metrics entry {pos}: {problem}; skipped"
            log.warning("%s", note)
            notes.append(note)
            continue
        out.append(GpuReading(entry["node"], int(entry["gpu_index"]),
                              float(entry["utilization_pct"]), float(entry["memory_used_mb"]),
                              float(entry["memory_total_mb"]), float(entry["temperature_c"]), 1))
    return out


def _entry_problem(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return f"not an object but {type(entry).__name__}"
    missing = [k for k in _PLATFORM_FIELDS if k not in entry]
    if missing:
        return f"missing {', '.join(missing)}"
    if not isinstance(entry["node"], str) or not entry["node"]:
        return "'node' is not a non-empty string"
    if not isinstance(entry["gpu_index"], int) or isinstance(entry["gpu_index"], bool):
        return "'gpu_index' is not an integer"
    for k in _PLATFORM_FIELDS[2:]:
        v = entry[k]
        if not isinstance(v, int | float) or isinstance(v, bool) or v < 0:
            return f"'{k}' is not a non-negative number ({v!r})"
    return None


# -- rows -----------------------------------------------------------------------------------

def _pct(used: float, total: float) -> float | None:
    return 100.0 * used / total if total > 0 else None


def gpu_rows(readings: list[GpuReading], at: datetime) -> pa.Table:
    """The readings as metric rows at evaluation time ``at`` (per GPU and per node)."""
    rows: list[tuple[str, str, str, float | None, int]] = []
    for r in sorted(readings, key=lambda r: (r.node, r.index)):
        for metric, value in ((GPU_UTILIZATION_PCT, r.utilization_pct),
                              (GPU_MEMORY_USED_MB, r.memory_used_mb),
                              (GPU_MEMORY_USED_PCT, _pct(r.memory_used_mb, r.memory_total_mb)),
                              (GPU_TEMPERATURE_C, r.temperature_c)):
            rows.append((metric, GPU_DIMENSION, r.slice, value, r.samples))
    by_node: dict[str, list[GpuReading]] = {}
    for r in readings:
        by_node.setdefault(r.node, []).append(r)
    for node in sorted(by_node):
        rs = by_node[node]
        n = sum(r.samples for r in rs)
        used = sum(r.memory_used_mb for r in rs)
        for metric, value in ((GPU_UTILIZATION_PCT, sum(r.utilization_pct for r in rs) / len(rs)),
                              (GPU_MEMORY_USED_MB, used),
                              (GPU_MEMORY_USED_PCT, _pct(used, sum(r.memory_total_mb for r in rs))),
                              (GPU_TEMPERATURE_C, max(r.temperature_c for r in rs))):
            rows.append((metric, GPU_NODE_DIMENSION, node, value, n))
    return metric_rows(rows, at)


def metric_rows(rows: list[tuple[str, str, str, float | None, int]], at: datetime,
                bounds: list[tuple[float | None, float | None]] | None = None) -> pa.Table:
    """``(metric, dimension, slice, value, samples)`` tuples as a METRICS_SCHEMA table whose
    ``hour`` column is ``at``; ``bounds`` gives (lower, upper) per row where there are any."""
    bounds = bounds or [(None, None)] * len(rows)
    metric, dimension, slices, value, samples = (list(c) for c in zip(*rows, strict=True)) \
        if rows else ([], [], [], [], [])
    return pa.table({
        "hour": [at] * len(rows),
        "metric": metric,
        "dimension": dimension,
        "slice": slices,
        "value": value,
        "samples": samples,
        "lower": [b[0] for b in bounds],
        "upper": [b[1] for b in bounds],
    }, schema=mt.METRICS_SCHEMA)


# -- the check ------------------------------------------------------------------------------

def collect_gpu_metrics(at: datetime, *, client: Any | None = None,
                        nvml_loader: Callable[[], Any] = load_nvml, samples: int = 3,
                        interval_s: float = 1.0, node: str | None = None,
                        sleep: Callable[[float], None] = time.sleep) -> GpuSummary:
    """GPU rows at ``at``: NVML where it works, else the platform's ``/v1/gpu_metrics``
    through ``client`` (a :class:`promptops.platform.client.PlatformClient`).

    NVML being missing is not an error: it is said once per process and noted in the
    summary. With NVML missing and no ``client``, :class:`NvmlUnavailable` is raised.
    Errors of the platform call itself propagate (the API check reports those).
    """
    notes: list[str] = []
    try:
        readings = read_nvml(nvml_loader(), samples=samples, interval_s=interval_s, node=node,
                             sleep=sleep, notes=notes)
        return GpuSummary(SOURCE_NVML, readings, gpu_rows(readings, at), notes)
    except NvmlUnavailable as exc:
        if client is None:
            raise NvmlUnavailable(f"{exc}; and no platform client was given to fall back "
                                  "to /v1/gpu_metrics") from None
        message = f"{exc}. Using the platform's /v1/gpu_metrics instead."
        say_once(message)
        notes.append(message)
    readings = platform_readings(client.gpu_metrics(), notes)
    return GpuSummary(SOURCE_PLATFORM, readings, gpu_rows(readings, at), notes)
