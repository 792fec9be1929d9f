"""The alert a failed promptops run sends: which DAG, which tasks, why, and where to look.

Pure: no Airflow, no I/O. :mod:`promptops.airflow_adapters.failure_notifier` collects the failures (each
failed task keeps its cause in XCom under :data:`FAILURE_XCOM_KEY`) and posts the message
this module builds. Every cause is cut to a readable length and has the secrets it is given
blanked out before it goes anywhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from promptops.secrets import redact

#: XCom key under which a failed task keeps its :class:`TaskFailure`.
FAILURE_XCOM_KEY = "promptops_failure"
#: Slack shows about this much of a cause before it stops being readable.
MAX_CAUSE = 1200
#: Failed tasks listed one by one (a mapped task can fail in many windows at once).
MAX_LISTED = 8
#: The cause when a task failed without a recorded error: killed, or its worker was lost.
NO_RECORDED_CAUSE = ("no error was recorded: the task was killed, ran out of time or lost "
                     "its worker; its log says what happened last")
_REASONS = {
    "timed_out": "the run took longer than the DAG's dagrun_timeout",
    "all_tasks_deadlocked": "no task could run any more (their dependencies cannot be met)",
}


@dataclass(frozen=True)
class TaskFailure:
    """One failed task instance and the error that failed it (secrets already blanked)."""

    task_id: str
    cause: str
    map_index: int = -1
    try_number: int | None = None

    @property
    def label(self) -> str:
        return f"{self.task_id}[{self.map_index}]" if self.map_index >= 0 else self.task_id

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: Any) -> TaskFailure | None:
        """The record as XCom gave it back; None for anything else."""
        if not isinstance(doc, dict) or not isinstance(doc.get("task_id"), str):
            return None
        map_index = doc.get("map_index")
        try_number = doc.get("try_number")
        return cls(task_id=doc["task_id"], cause=str(doc.get("cause") or NO_RECORDED_CAUSE),
                   map_index=map_index if isinstance(map_index, int) else -1,
                   try_number=try_number if isinstance(try_number, int) else None)


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every secret blanked out (longest first, so no tail of one survives)."""
    return redact(text, secrets)


def describe_error(exc: BaseException | None, secrets: Iterable[str] = ()) -> str:
    """``Type: message`` of the error that failed a task, secrets blanked, cut to
    :data:`MAX_CAUSE` characters."""
    if exc is None:
        return NO_RECORDED_CAUSE
    text = str(exc).strip()
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    text = scrub(text, secrets)
    return text if len(text) <= MAX_CAUSE else text[:MAX_CAUSE - 1] + "…"


def failure_signature(dag_id: str, failures: list[TaskFailure], reason: str | None) -> str:
    """What makes two failed runs "the same failure": the DAG, why the run failed, and the
    failed tasks with their causes, digits masked (times, counts, ports and map indexes
    differ from run to run; a wrong key fails every run the same way)."""
    import hashlib
    import re

    tasks = sorted({(f.task_id, re.sub(r"[0-9]+", "#", f.cause)[:300]) for f in failures})
    parts = [dag_id, reason or "", *(f"{t}\x1f{c}" for t, c in tasks)]
    return hashlib.sha256("\x1e".join(parts).encode()).hexdigest()[:32]


def failure_message(*, dag_id: str, run_id: str, failures: list[TaskFailure],
                    run_url: str | None, reason: str | None = None,
                    secrets: Iterable[str] = (), repeat_note: str = "") -> dict[str, Any]:
    """The Slack message (Block Kit, validated) for one failed run."""
    from slack_sdk.models.blocks import (
        ContextBlock,
        HeaderBlock,
        MarkdownTextObject,
        SectionBlock,
    )

    from promptops.alerts.slack import escape, validate_message

    secrets = set(secrets)
    failures = sorted(failures, key=lambda f: (f.task_id, f.map_index))
    why = _REASONS.get(reason or "", None)
    lines = [f"*DAG:* `{escape(dag_id)}` · *run:* `{escape(run_id)}`"]
    if why:
        lines.append(f"*Why:* {why}")
    if not failures:
        lines.append("*Failed tasks:* none recorded")
    blocks: list[Any] = [
        HeaderBlock(text=f":rotating_light: promptops run failed: {dag_id}"[:150]),
        SectionBlock(text=MarkdownTextObject(text="\n".join(lines)[:2900])),
    ]
    for f in failures[:MAX_LISTED]:
        tried = f" (try {f.try_number})" if f.try_number else ""
        blocks.append(SectionBlock(text=MarkdownTextObject(text=(
            f"*Failed task:* `{escape(f.label)}`{tried}\n"
            f"*Cause:* {escape(scrub(f.cause, secrets))}")[:2900])))
    if len(failures) > MAX_LISTED:
        rest = ", ".join(f.label for f in failures[MAX_LISTED:])
        blocks.append(SectionBlock(text=MarkdownTextObject(text=(
            f"…and {len(failures) - MAX_LISTED} more failed: {escape(rest)}")[:2900])))
    where = f"<{run_url}|Open the run in Airflow>" if run_url else "Open the run in Airflow"
    blocks.append(ContextBlock(elements=[MarkdownTextObject(text=(
        f"{where}: the failed tasks' logs say more. Clear them to run again once the cause "
        f"is fixed. {repeat_note}".strip()))]))
    first = (f"{failures[0].label}: {scrub(failures[0].cause, secrets)}" if failures
             else why or "see the run")
    fallback = f"promptops run failed: {dag_id} · {first}"[:300]
    message = {"text": fallback, "blocks": [b.to_dict() for b in blocks]}
    validate_message(message)
    return message
