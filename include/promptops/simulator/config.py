"""The simulator's configuration: one pydantic model built from CLI flags and/or a scenario.

Precedence: a flag given on the command line beats the scenario file, which beats the
defaults here. Incidents stay as written (relative times are resolved by the Platform against
its start); the API keys are not part of it (the server holds them, nothing logs them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from promptops.simulator.faults import FaultRule
from promptops.simulator.scenario import DataFaults, IncidentSpec, load_scenario


class SimConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = Field(default=42, ge=0)
    #: Mean calls per hour over a week (exactly this many per hour with ``flat``).
    calls_per_hour: int = Field(default=6000, ge=0, le=5_000_000)
    #: No daily/weekly seasonality and no Poisson noise: every hour has calls_per_hour calls.
    flat: bool = False
    data_faults: DataFaults = Field(default_factory=DataFaults)
    incidents: list[IncidentSpec] = Field(default_factory=list)
    faults: list[FaultRule] = Field(default_factory=list)
    #: Wall seconds an ops action takes from accepted to succeeded/failed.
    action_duration_s: float = Field(default=5.0, ge=0)
    #: Generated hours kept in memory (memory does not grow with the days simulated).
    hour_cache_size: int = Field(default=6, ge=1, le=1000)
    #: Where ops actions persist across restarts (JSON), if anywhere.
    state_file: Path | None = None
    #: Name of the scenario file, for error messages and /_sim/truth.
    scenario_source: str = "<none>"

    @classmethod
    def build(cls, scenario: str | Path | None = None, **overrides: Any) -> SimConfig:
        """Scenario values, then every override that is not None."""
        values: dict[str, Any] = {}
        if scenario is not None:
            sc = load_scenario(scenario)
            values["scenario_source"] = str(scenario)
            for key in ("seed", "calls_per_hour", "flat", "data_faults"):
                val = getattr(sc, key)
                if val is not None:
                    values[key] = val
            values["incidents"] = sc.incidents
            values["faults"] = sc.faults
        rates = {k: overrides.pop(k) for k in ("malformed_rate", "duplicate_rate", "late_rate")
                 if k in overrides}
        df = values.get("data_faults", DataFaults()).model_dump()
        df.update({k: v for k, v in rates.items() if v is not None})
        values["data_faults"] = DataFaults(**df)
        extra_faults = overrides.pop("extra_faults", None) or []
        values.update({k: v for k, v in overrides.items() if v is not None})
        values["faults"] = list(values.get("faults", [])) + list(extra_faults)
        return cls(**values)
