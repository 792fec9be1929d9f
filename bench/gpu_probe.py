"""Take one real NVML reading through promptops.metrics.gpu and print it.

Run on any machine:  .venv/bin/python bench/gpu_probe.py [--samples 3] [--interval 0.5]
With an NVIDIA GPU it prints each GPU's averaged reading and the metric rows the health
sensor would write; without one it prints the plain-words reason NVML is not usable (the
message the sensor logs once before falling back to the platform's /v1/gpu_metrics).
Exit status: 0 with readings, 2 when NVML is not available.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from promptops.metrics.gpu import NvmlUnavailable, gpu_rows, load_nvml, node_name, read_nvml


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    args = parser.parse_args(argv)
    notes: list[str] = []
    try:
        readings = read_nvml(load_nvml(), samples=args.samples, interval_s=args.interval,
                             notes=notes)
    except NvmlUnavailable as exc:
        print(f"{exc}. The health sensor would use the platform's /v1/gpu_metrics instead.")
        return 2
    print(f"node {node_name()}: {len(readings)} GPU(s), {args.samples} sample(s) "
          f"{args.interval}s apart")
    for r in readings:
        print(f"  GPU {r.slice}: util {r.utilization_pct:.1f}%  mem {r.memory_used_mb:.0f}/"
              f"{r.memory_total_mb:.0f} MB  temp {r.temperature_c:.1f} C  "
              f"({r.samples} samples)")
    for note in notes:
        print(f"  note: {note}")
    table = gpu_rows(readings, datetime.now(UTC).replace(microsecond=0))
    print("metric rows:")
    for row in table.to_pylist():
        print(f"  {row['metric']:<22} {row['dimension']:<9} {row['slice']:<28} "
              f"{row['value']!s:<22} samples={row['samples']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
