"""A stand-in for the pynvml module: the same API the GPU check uses, fixed readings per GPU,
and errors where a test wants them. It reuses pynvml's real exception classes, so the code
under test sees exactly what it would see from NVML."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pynvml

MB = 1024 * 1024


@dataclass
class FakeNvml:
    #: Per GPU, one (util %, used MB, total MB, temp C) per sample; the last one repeats.
    gpus: list[list[tuple[float, float, float, float]]]
    #: (gpu index, sample number from 0) pairs whose reading raises NVMLError.
    fail_at: set[tuple[int, int]] = field(default_factory=set)
    init_error: int | None = None
    init_calls: int = 0
    shutdown_calls: int = 0
    _reads: dict[int, int] = field(default_factory=dict)

    NVMLError = pynvml.NVMLError
    NVMLError_LibraryNotFound = pynvml.NVMLError_LibraryNotFound
    NVMLError_DriverNotLoaded = pynvml.NVMLError_DriverNotLoaded
    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU

    def nvmlInit(self) -> None:  # noqa: N802 (pynvml's names)
        self.init_calls += 1
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.shutdown_calls += 1

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:  # noqa: N802
        return index

    def _sample(self, handle: int) -> tuple[float, float, float, float]:
        n = self._reads.get(handle, 0)
        if (handle, n) in self.fail_at:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        series = self.gpus[handle]
        return series[min(n, len(series) - 1)]

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:  # noqa: N802
        try:
            return SimpleNamespace(gpu=self._sample(handle)[0], memory=0)
        except pynvml.NVMLError:
            self._reads[handle] = self._reads.get(handle, 0) + 1
            raise

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:  # noqa: N802
        s = self._sample(handle)
        return SimpleNamespace(used=int(s[1] * MB), total=int(s[2] * MB), free=0)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> float:  # noqa: N802
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        s = self._sample(handle)
        self._reads[handle] = self._reads.get(handle, 0) + 1  # one sample read in full
        return s[3]
