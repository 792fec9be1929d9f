"""What rule evaluation hands to the alert engine: one :class:`Finding` per condition that
holds right now.

A finding is the Prometheus "active alert" of one evaluation: the rule's condition is true
for these labels at this evaluation time. Findings that stop appearing are how the engine
learns that a condition cleared. Identity is the rule plus its labels (severity included,
as in Alertmanager, so a critical and a warning of the same rule are two alerts and an
inhibition rule lets the critical one mute the warning).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Literal

Severity = Literal["info", "warning", "critical"]
SEVERITY_ORDER = {"info": 0, "warning": 1, "critical": 2}

FindingKind = Literal["threshold", "comparison", "composite", "budget", "baseline",
                      "unpriced", "health", "abuse"]


@dataclass(frozen=True)
class Finding:
    #: Rule name from the config (e.g. ``success_rate``, ``latency_mean_vs_last_week``).
    rule: str
    severity: Severity
    kind: FindingKind
    #: Identity beyond the rule: at least ``metric``, ``dimension``, ``slice``; often
    #: ``service`` (for inhibition) and the slice's own key, e.g. ``model``.
    labels: dict[str, str]
    #: One line an operator understands without context.
    summary: str
    value: float | None = None
    threshold: float | None = None
    #: Evaluations the condition must hold before the alert fires (Prometheus ``for``).
    pending_for: int = 1
    #: Evaluations an alert keeps firing after its condition cleared.
    keep_firing_for: int = 0
    #: Extra context for the message: comparison, band, root cause, runbook, heal playbook.
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def identity(self) -> dict[str, str]:
        return {"rule": self.rule, "severity": self.severity, **self.labels}

    @property
    def fingerprint(self) -> str:
        """Stable across processes and runs: a hash of rule, severity and labels."""
        raw = json.dumps(self.identity, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(raw.encode()).hexdigest()[:16]
