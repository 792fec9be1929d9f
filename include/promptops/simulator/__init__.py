"""The platform simulator: a real HTTP server that implements platform-api.md.

It generates deterministic, realistic LLM call records on demand (any hour, past or
present), plays scenario incidents, injects API faults for the client's tests, reacts to ops
actions (closed loop), and can run a Slack webhook sink. See docs/simulator.md.

Data attribution: prompt and completion token counts are sampled from the Azure LLM
inference trace 2023 (Azure Public Dataset), Patel et al., "Splitwise: Efficient generative
LLM inference using phase splitting", ISCA 2024, licensed CC-BY 4.0 (data/LICENSE).
"""

from promptops.simulator.config import SimConfig
from promptops.simulator.faults import FaultRule
from promptops.simulator.platform import Page, Platform
from promptops.simulator.process import SimulatorProcess, SlackSinkProcess
from promptops.simulator.records import ServedRecord
from promptops.simulator.scenario import (
    DataFaults,
    Incident,
    IncidentSpec,
    ScenarioError,
    load_scenario,
)
from promptops.simulator.timeutil import SimClock, parse_rfc3339
from promptops.simulator.traffic import REJECT_REASONS, REQUIRED_FIELDS

__all__ = [
    "REJECT_REASONS",
    "REQUIRED_FIELDS",
    "DataFaults",
    "FaultRule",
    "Incident",
    "IncidentSpec",
    "Page",
    "Platform",
    "ScenarioError",
    "ServedRecord",
    "SimClock",
    "SimConfig",
    "SimulatorProcess",
    "SlackSinkProcess",
    "load_scenario",
    "parse_rfc3339",
]
