"""What the heal DAG's tasks hand each other, typed.

plan (:class:`HealPlan`, its :class:`PlanStep` s) -> policy gate (:class:`GateResult`) ->
apply (:class:`ApplyResult`, one :class:`StepView` per step) -> verify
(:class:`Verification`) -> report (:class:`HealOutcome`).

The library works on these models. They travel between tasks as XCom, so they become
plain JSON dicts only there: :meth:`~Handoff.of` reads a pulled value (or passes a model
through), :meth:`~Handoff.to_xcom` writes one. The dicts keep the shape they had before
they were typed: values written by an earlier version (a heal waiting for approval over a
deploy) still load.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_serializer


class Handoff(BaseModel):
    """A value one heal task hands the next through XCom."""

    model_config = ConfigDict(extra="ignore")
    #: Keys a later task may add (the DAG adds them), left out of the XCom while unset.
    added_later: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def of(cls, value: Self | Mapping[str, Any]) -> Self:
        """The model of an XCom value (a model is passed through)."""
        return value if isinstance(value, cls) else cls.model_validate(value)

    def to_xcom(self) -> dict[str, Any]:
        out = self.model_dump(mode="json")
        for key in self.added_later:
            if out.get(key) is None:
                out.pop(key, None)
        return out


class AlertRef(BaseModel):
    """The alert a heal answers: enough to re-measure its metric with its rule."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    fingerprint: str | None = Field(default=None, pattern=r"^[0-9a-f]{8,64}$")
    rule: str = Field(min_length=1, max_length=200)
    #: Which evaluation raised it: ``hourly`` or ``health`` (the 5-minute sensor).
    scope: str = Field(default="hourly", pattern=r"^(hourly|health)$")
    labels: dict[str, str] = Field(default_factory=dict)
    severity: str | None = None
    summary: str | None = None
    value: float | None = None
    threshold: float | None = None
    fired_at: str | None = None

    @property
    def metric(self) -> str | None:
        return self.labels.get("metric")

    @property
    def dimension(self) -> str:
        return self.labels.get("dimension", "overall")

    @property
    def slice(self) -> str:
        return self.labels.get("slice", "all")


class PlanStep(Handoff):
    """One action of a plan. ``request`` is the validated request's JSON form; the steps
    that act validate it again against the policy (it crossed XCom)."""

    step: str
    #: ``platform`` (an ops action) or ``script`` (an allowlisted playbook script).
    kind: Literal["platform", "script"]
    #: The ``Idempotency-Key``, from the run and the step.
    key: str
    request: dict[str, Any]


class HealPlan(Handoff):
    """A validated heal request expanded into ordered steps."""

    run_id: str
    planned_at: datetime
    requested_by: str
    dry_run: bool
    reason: str
    action: str
    target: str
    alert: AlertRef | None = None
    alert_fingerprint: str | None = None
    steps: list[PlanStep]
    summary: str

    @field_serializer("planned_at")
    def _planned_at_iso(self, value: datetime) -> str:
        return value.isoformat()


class GateResult(Handoff):
    """The policy's verdict on a whole plan, with every step's reason."""

    added_later: ClassVar[tuple[str, ...]] = ("body",)
    #: ``auto`` (run now), ``approval`` (a person decides) or ``denied``.
    verdict: Literal["auto", "approval", "denied"]
    reasons: list[str] = Field(default_factory=list)
    denied_steps: list[str] = Field(default_factory=list)
    needs_approval: bool = False
    #: The approval request's text, when the DAG asks a person.
    body: str | None = None


class StepView(Handoff):
    """What became of one step at the apply step's last look."""

    step: str
    key: str | None = None
    what: str = ""
    #: The platform's status, or ``denied``, ``not_run``, ``waiting``, ``timed_out``.
    status: str | None = None
    detail: str | None = None
    action_id: str | None = None
    finished_at: datetime | None = None

    @field_serializer("finished_at")
    def _finished_at_iso(self, value: datetime | None) -> str | None:
        return value.isoformat() if value is not None else None


class ApplyResult(Handoff):
    #: True once every step ended (or the rest will not run).
    done: bool = False
    steps: list[StepView] = Field(default_factory=list)


class Verification(Handoff):
    """The re-measured metric after a heal, judged by the rule that fired."""

    verification: Literal["recovered", "not_recovered", "inconclusive"]
    detail: str
    value: float | None = None


class HealOutcome(Handoff):
    """What became of a heal, for the report and the audit."""

    added_later: ClassVar[tuple[str, ...]] = ("verify_skipped",)
    #: ``recovered``, ``not_recovered``, ``inconclusive``, ``applied``, ``dry_run``, a
    #: decision that stopped it (``rejected``, ``timed_out``, ``no_answer``, ``denied``),
    #: ``action_failed`` or ``not_applied``; or, for a report before any outcome,
    #: ``invalid`` or ``approval_needed``.
    status: str
    decision: str | None = None
    decided_by: str | None = None
    steps: list[StepView] = Field(default_factory=list)
    verification: Verification | None = None
    #: Why the heal was not verified, when it was not.
    verify_skipped: str | None = None


__all__ = ["AlertRef", "ApplyResult", "GateResult", "Handoff", "HealOutcome", "HealPlan",
           "PlanStep", "StepView", "Verification"]
