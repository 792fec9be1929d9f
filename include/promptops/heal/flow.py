"""The heal DAG's steps as library calls: plan, policy gate, apply, verify, report, audit.

Every function here takes and returns JSON-safe dicts (the DAG hands them over XCom) and
none needs a scheduler, so each step is unit-testable against a real simulator. Inside, the
steps work on the typed hand-offs of :mod:`promptops.heal.state`.

- :func:`plan_heal` validates the conf (the UI form or another DAG's trigger) and expands a
  playbook into ordered steps, each with its ``Idempotency-Key`` from the run and the step.
- :func:`gate` asks the policy (cool-down, hourly cap, approval) for the whole plan.
- :func:`apply_poke` posts the steps one after the other and reports whether the platform
  has finished them; it keeps no state of its own between looks (the key makes a re-post
  return the first answer, the audit holds what was posted), so it can run as a
  reschedule-mode sensor that frees the worker between looks.
- :func:`verification_window` / :func:`remeasure` re-measure the alert's metric after the
  settle time, with the same rule that fired.
- :func:`report_message` is the Slack report; :func:`finish_audit` writes the final records.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError

from promptops.errors import PERMANENT_ERRORS
from promptops.heal.approval import answer_decision
from promptops.heal.policy import (
    Action,
    HealConfError,
    HealPolicy,
    HealRequest,
    Playbooks,
    check_policy,
    expand_playbook,
    idempotency_key,
    load_playbooks,
    load_policy,
    parse_request,
    run_script,
)
from promptops.heal.state import (
    AlertRef,
    ApplyResult,
    GateResult,
    HealOutcome,
    HealPlan,
    PlanStep,
    StepView,
    Verification,
)
from promptops.timeutil import as_utc

if TYPE_CHECKING:
    from promptops.alerts.slack import SlackWebhooks
    from promptops.platform.client import PlatformClient

log = logging.getLogger(__name__)

#: Platform statuses that end an action.
FINISHED = ("succeeded", "failed")


# -- plan ----------------------------------------------------------------------------------

def plan_heal(conf: Mapping[str, Any], run_id: str, now: datetime, *,
              policy: HealPolicy | None = None, playbooks: Playbooks | None = None,
              price_table: Any = None) -> dict[str, Any]:
    """The validated plan of a heal conf, or :class:`HealConfError` saying what is wrong.

    A ``run_playbook`` of a playbook becomes its steps (placeholders filled from the alert's
    labels and ``params.labels``); of a script, one script step; any other action one step.
    """
    from promptops.metrics.pricing import load_price_table

    table = price_table or load_price_table()
    policy = policy or load_policy(price_table=table)
    books = playbooks or load_playbooks(price_table=table)
    conf = dict(conf)
    alert_conf = conf.pop("alert", None)
    alert = None
    if alert_conf:
        try:
            alert = AlertRef.model_validate(alert_conf)
        except ValidationError as exc:
            problems = "; ".join(f"alert.{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                 for e in exc.errors())
            raise HealConfError(f"heal request: {problems}") from None
    request = parse_request(conf, policy, playbook_names=tuple(books.playbooks))
    fingerprint = request.alert_fingerprint or (alert.fingerprint if alert else None)
    steps: list[tuple[HealRequest, Literal["platform", "script"]]]
    if request.action is Action.run_playbook and request.target in books.playbooks:
        labels = {**(alert.labels if alert else {}), **request.params.get("labels", {})}
        expanded = expand_playbook(request.target, labels, dry_run=request.dry_run,
                                   reason=request.reason or f"playbook {request.target}",
                                   requested_by=request.requested_by,
                                   alert_fingerprint=fingerprint, policy=policy,
                                   playbooks=books, price_table=table)
        steps = [(r, "platform") for r in expanded]
    elif request.action is Action.run_playbook:
        steps = [(request, "script")]
    else:
        steps = [(request, "platform")]
    planned = [PlanStep(step=str(i), kind=kind, key=idempotency_key(run_id, i),
                        request=r.model_dump(mode="json"))
               for i, (r, kind) in enumerate(steps, start=1)]
    return HealPlan(run_id=run_id, planned_at=as_utc(now), requested_by=request.requested_by,
                    dry_run=request.dry_run, reason=request.reason,
                    action=request.action.value, target=request.target, alert=alert,
                    alert_fingerprint=fingerprint, steps=planned,
                    summary=summarize(planned, request.dry_run)).to_xcom()


def describe_step(step: PlanStep) -> str:
    r = step.request
    params = r.get("params") or {}
    if step.kind == "script":
        args = " ".join(params.get("args", []))
        return f"run script {r['target']}" + (f" {args}" if args else "")
    shown = ", ".join(f"{k}={v}" for k, v in params.items() if k not in ("labels", "args"))
    return f"{r['action']} {r['target']}" + (f" ({shown})" if shown else "")


def summarize(steps: list[PlanStep], dry_run: bool) -> str:
    text = "; then ".join(describe_step(s) for s in steps)
    return ("[dry run] " if dry_run else "") + text


def request_of(step: PlanStep, policy: HealPolicy) -> HealRequest:
    """A planned step's request again (validated: plans travel through XCom)."""
    # A run_playbook step is a script here (playbooks were expanded): check it as one.
    return parse_request(step.request, policy, playbook_names=())


# -- policy gate ---------------------------------------------------------------------------

def history_for(lake: Any, now: datetime, policy: HealPolicy, *,
                exclude_run: str | None = None) -> list[Any]:
    """The audit records the policy reads at ``now`` (cool-down and the rolling hour)."""
    from promptops.heal.audit import read_audit

    now = as_utc(now)
    span = max(policy.cooldown, timedelta(hours=1))
    records = read_audit(lake, now - span - timedelta(hours=1), now + timedelta(hours=1))
    return [r for r in records if r.run_id != exclude_run]


def gate(plan: HealPlan | Mapping[str, Any], history: list[Any], now: datetime,
         policy: HealPolicy | None = None) -> dict[str, Any]:
    """``verdict``: ``auto`` (run now), ``approval`` (a person decides) or ``denied`` (the
    policy refuses: cool-down, hourly cap), with the reason of every step."""
    from promptops.heal.audit import AuditRecord

    policy = policy or load_policy()
    now = as_utc(now)
    seen = list(history)
    reasons, needs, denied = [], False, []
    for step in HealPlan.of(plan).steps:
        req = request_of(step, policy)
        decision = check_policy(req, seen, now, policy)
        reasons.append(f"step {step.step} ({describe_step(step)}): {decision.reason}")
        needs = needs or decision.needs_approval
        if not decision.allowed:
            denied.append(step.step)
        elif not req.dry_run:
            # The plan's own earlier steps count against the hourly cap of the later ones.
            seen.append(AuditRecord(idempotency_key=step.key, requested_at=now,
                                    action=req.action.value, target=req.target,
                                    decision="planned", dry_run=False, action_id="planned"))
    verdict: Literal["auto", "approval", "denied"] = (
        "denied" if denied else "approval" if needs else "auto")
    return GateResult(verdict=verdict, reasons=reasons, denied_steps=denied,
                      needs_approval=needs).to_xcom()


# -- apply ---------------------------------------------------------------------------------

def _finished(doc: Mapping[str, Any]) -> bool:
    return doc.get("status") in FINISHED


def apply_poke(client: Any, lake: Any, plan: HealPlan | Mapping[str, Any], now: datetime, *,
               decision: str, decided_by: str | None,
               policy: HealPolicy | None = None) -> dict[str, Any]:
    """One look at the plan's actions: post the next step that is due, ask the platform
    about the running one. Returns ``{"done": bool, "steps": [...]}``.

    Steps run in order; a step is posted only once the one before it succeeded. Posting is
    idempotent (the step's key), and what was posted is in the audit, so a look after a
    crash, a retry or a reschedule picks up where the last one was. Right before a step is
    first posted the policy is asked again, against every other run's audit: a heal that
    waited for approval cannot slip past a cool-down another heal started meanwhile.
    """
    from promptops.heal.audit import read_audit, write_audit

    policy = policy or load_policy()
    now = as_utc(now)
    plan = HealPlan.of(plan)
    mine = {r.idempotency_key: r for r in read_audit(lake, plan.planned_at - timedelta(hours=1),
                                                     now + timedelta(hours=1))
            if r.run_id == plan.run_id}
    out: list[StepView] = []
    done = True
    stopped: str | None = None
    for step in plan.steps:
        req = request_of(step, policy)
        rec = mine.get(step.key)
        if stopped:
            out.append(_step_view(step, "not_run", stopped))
            continue
        if rec is None:
            decision_now = check_policy(req, history_for(lake, now, policy,
                                                         exclude_run=plan.run_id), now, policy)
            if not decision_now.allowed:
                rec = _record(plan, step, req, now, "denied", None, decision_now.reason)
                write_audit(lake, rec)
                out.append(_step_view(step, "denied", decision_now.reason))
                stopped = f"not run: step {step.step} was denied by policy"
                continue
            rec = _record(plan, step, req, now, decision, decided_by, decision_now.reason)
        if step.kind == "script":
            if rec.platform_status is None:
                rec = _run_script_step(rec, req, now)
                write_audit(lake, rec)
            out.append(_step_view(step, rec.platform_status, rec.platform_detail, rec))
            if rec.platform_status != "succeeded":
                stopped = f"not run: step {step.step} failed"
            continue
        rec, finished = _poke_platform(client, lake, plan, step, req, rec, now, policy)
        if rec != mine.get(step.key):
            write_audit(lake, rec)
        out.append(_step_view(step, rec.platform_status, rec.platform_detail, rec))
        if not finished:
            done = False
            break
        if rec.platform_status != "succeeded":
            stopped = f"not run: step {step.step} ended {rec.platform_status}"
    # Steps after the running one wait for the next look.
    for step in plan.steps[len(out):]:
        out.append(_step_view(step, "waiting", "waits for the step before it"))
    return ApplyResult(done=done, steps=out).to_xcom()


def _poke_platform(client: Any, lake: Any, plan: HealPlan, step: PlanStep, req: HealRequest,
                   rec: Any, now: datetime, policy: HealPolicy) -> tuple[Any, bool]:
    """Post a platform step (again: its key makes that idempotent) and ask how it is going:
    its audit record as of ``now``, and whether it finished."""
    from promptops.heal.audit import write_audit

    try:
        answer = client.create_action(req.action.value, req.target, dict(req.params),
                                      dry_run=req.dry_run, reason=req.reason or plan.reason,
                                      idempotency_key=step.key)
    except PERMANENT_ERRORS as exc:
        # Refused for good (401/403/422): the audit keeps the platform's answer and the
        # task fails without a retry (see promptops.airflow_adapters.failure_notifier): sent once.
        write_audit(lake, replace(rec, platform_status="refused",
                                  platform_detail=str(exc)[:2000]))
        raise
    view = client.get_action(answer["action_id"])
    status = view.get("status")
    finished = _finished(view) or answer.get("status") == "dry_run"
    elapsed = now - as_utc(rec.requested_at)
    if not finished and elapsed > policy.verification.action_timeout:
        status, finished = "timed_out", True
        view = {**view, "detail": (f"the platform did not finish the action within "
                                   f"{policy.verification.action_timeout}; last status "
                                   f"{view.get('status')!r}")}
    rec = replace(rec, action_id=answer["action_id"], platform_status=status,
                  platform_detail=str(view.get("detail") or "")[:2000],
                  finished_at=_ts(view.get("finished_at")) if finished else None)
    return rec, finished


def _ts(value: Any) -> datetime | None:
    if not value:
        return None
    return as_utc(datetime.fromisoformat(str(value).replace("Z", "+00:00")))


def _record(plan: HealPlan, step: PlanStep, req: HealRequest, now: datetime,
            decision: str, decided_by: str | None, why: str) -> Any:
    from promptops.heal.audit import AuditRecord

    return AuditRecord(idempotency_key=step.key, requested_at=now, action=req.action.value,
                       target=req.target, decision=decision, dry_run=req.dry_run,
                       run_id=plan.run_id, step=step.step, params=dict(req.params),
                       reason=req.reason or plan.reason, requested_by=plan.requested_by,
                       alert_fingerprint=plan.alert_fingerprint, decided_by=decided_by,
                       decision_reason=why)


def _run_script_step(rec: Any, req: HealRequest, now: datetime) -> Any:
    if req.dry_run:
        return replace(rec, platform_status="succeeded", finished_at=now,
                       platform_detail=f"dry run: would run {req.target} "
                                       f"{' '.join(req.params.get('args', []))}".strip())
    result = run_script(req.target, req.params.get("args", []))
    status = "succeeded" if result.ok else "timed_out" if result.timed_out else "failed"
    detail = (f"exit {result.returncode}" if not result.timed_out else "timed out") + \
        (f"; stdout: {result.stdout[-800:]}" if result.stdout else "") + \
        (f"; stderr: {result.stderr[-800:]}" if result.stderr else "")
    return replace(rec, platform_status=status, platform_detail=detail[:2000],
                   finished_at=as_utc(datetime.now(now.tzinfo)))


def _step_view(step: PlanStep, status: str | None, detail: str | None,
               rec: Any = None) -> StepView:
    return StepView(step=step.step, key=step.key, what=describe_step(step), status=status,
                    detail=detail, action_id=rec.action_id if rec is not None else None,
                    finished_at=rec.finished_at if rec is not None else None)


# -- verify --------------------------------------------------------------------------------

def verification_window(plan: Mapping[str, Any],
                        applied: ApplyResult | Mapping[str, Any] | None,
                        policy: HealPolicy | None = None,
                        ) -> tuple[datetime, datetime] | str:
    """``(start, end)`` of the re-measurement, or why there is nothing to verify."""
    policy = policy or load_policy()
    if plan.get("dry_run"):
        return "dry run: nothing was changed, so there is nothing to verify"
    if not plan.get("alert") or not (plan["alert"].get("labels") or {}).get("metric"):
        return "no alert metric to re-measure (a heal by hand without an alert)"
    steps = ApplyResult.of(applied).steps if applied else []
    if not steps:
        return "no action was applied"
    bad = [s for s in steps if s.status != "succeeded"]
    if bad:
        return f"step {bad[0].step} ended {bad[0].status}: not verified"
    ends = [as_utc(s.finished_at) for s in steps if s.finished_at]
    if not ends:
        return "the platform gave no finish time"
    start = max(ends) + policy.verification.settle
    return start, start + policy.verification.window


def remeasure(client: Any, alert: Mapping[str, Any], start: datetime, end: datetime, *,
              thresholds: Any = None, price_table: Any = None) -> dict[str, Any]:
    """The alert's metric over ``[start, end)`` of fresh call records, judged by its rule:
    ``{"verification": recovered | not_recovered | inconclusive, "detail", "value"}``."""
    return _remeasured(client, AlertRef.model_validate(alert), as_utc(start), as_utc(end),
                       thresholds, price_table).to_xcom()


def _remeasured(client: Any, ref: AlertRef, start: datetime, end: datetime, thresholds: Any,
                price_table: Any) -> Verification:
    from promptops.detection.rules import MetricHistory, evaluate
    from promptops.detection.thresholds import ThresholdRule, load_thresholds

    config = thresholds or load_thresholds()
    table = _fresh_metrics(client, ref, start, end, price_table)
    metric, dim, slc = ref.metric, ref.dimension, ref.slice
    rows = [r for r in table.to_pylist()
            if r["metric"] == metric and r["dimension"] == dim and r["slice"] == slc]
    window = f"{start:%H:%M}-{end:%H:%M} UTC"
    where = "overall" if dim == "overall" else f"{dim}={slc}"
    rule = config.rules.get(ref.rule)
    if not rows:
        if metric in ("peak_calls_per_minute", "tokens_per_minute_peak"):
            return Verification(verification="recovered", value=0.0,
                                detail=f"{metric} {where}: no calls at all in {window}")
        return Verification(verification="inconclusive", value=None,
                            detail=f"{metric} {where}: no data in {window} to judge")
    row = rows[0]
    value, samples = row["value"], row["samples"]
    shown = f"{metric} {where} = {_fmt(value)} over {window} ({samples} samples)"
    if isinstance(rule, ThresholdRule):
        if samples is not None and samples < rule.min_samples:
            return Verification(verification="inconclusive", value=value,
                                detail=f"{shown}: fewer than the rule's {rule.min_samples} "
                                       f"samples")
        findings = [f for f in evaluate(config, table, MetricHistory.from_tables({}), start,
                                        source=None)
                    if f.rule == ref.rule and f.labels.get("dimension") == dim
                    and f.labels.get("slice") == slc]
        if findings:
            return Verification(verification="not_recovered", value=value,
                                detail=f"still {findings[0].severity}: {findings[0].summary} "
                                       f"(over {window})")
        return Verification(verification="recovered", value=value,
                            detail=f"{shown}: within the {ref.rule} levels")
    # Comparison, budget and composite rules: back on the good side of the alert's threshold.
    if value is None or ref.threshold is None or ref.value is None:
        return Verification(verification="inconclusive", value=value,
                            detail=f"{shown}: the alert carries no threshold to compare with")
    bad_high = ref.value > ref.threshold
    ok = value <= ref.threshold if bad_high else value >= ref.threshold
    return Verification(verification="recovered" if ok else "not_recovered", value=value,
                        detail=f"{shown}; the alert fired at {_fmt(ref.value)} against "
                               f"{_fmt(ref.threshold)}")


def _fresh_metrics(client: Any, ref: AlertRef, start: datetime, end: datetime,
                   price_table: Any) -> Any:
    import pyarrow as pa

    from promptops.contracts.metric_table import METRICS_SCHEMA
    from promptops.metrics.health import api_health_rows, fetch_recent_calls, recent_call_rows

    minutes = max(1, int((end - start).total_seconds() // 60))
    if ref.metric and ref.metric.startswith("gpu_"):
        from promptops.metrics.gpu import collect_gpu_metrics

        return collect_gpu_metrics(end, client=client).table.cast(METRICS_SCHEMA)
    calls = fetch_recent_calls(client, end, minutes=minutes)
    if ref.scope == "health":
        tables = [recent_call_rows(calls, end, minutes=minutes)]
        if ref.metric in ("api_up", "api_health_latency_ms"):
            tables.append(api_health_rows(client, end))
        return pa.concat_tables([t.cast(METRICS_SCHEMA) for t in tables])
    from promptops.metrics.hourly import compute_hourly_metrics
    from promptops.metrics.pricing import load_price_table

    return compute_hourly_metrics(calls, start, price_table or load_price_table())


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"


def platform_now(client: Any) -> datetime:
    """The platform's clock (its ``/health`` time), else ours."""
    from datetime import UTC

    try:
        health = client.health()
    except Exception:  # noqa: BLE001 - a clock is not worth failing a heal for
        health = None
    return as_utc(health.time) if health is not None and health.time else datetime.now(UTC)


# -- outcome, report, audit ------------------------------------------------------------------

def outcome_of(plan: HealPlan | Mapping[str, Any] | None,
               gate_result: GateResult | Mapping[str, Any] | None,
               approval: Mapping[str, Any] | None,
               applied: ApplyResult | Mapping[str, Any] | None,
               verified: Verification | Mapping[str, Any] | None) -> dict[str, Any]:
    """What became of the heal, from whatever its tasks left (any of them may be missing)."""
    verdict = GateResult.of(gate_result).verdict if gate_result else None
    decided_by: str | None  # a person's name, or None when nobody answered
    decision, decided_by = "auto_approved", "policy"
    if verdict == "denied":
        decision, decided_by = "denied", "policy"
    elif verdict == "approval":
        decision, decided_by = answer_decision(approval)
    steps = ApplyResult.of(applied).steps if applied else []
    check = Verification.of(verified) if verified else None
    if decision in ("rejected", "timed_out", "denied", "no_answer"):
        status = decision
    elif not steps:
        status = "not_applied"
    elif any(s.status not in ("succeeded",) for s in steps):
        status = "action_failed"
    elif plan and HealPlan.of(plan).dry_run:
        status = "dry_run"
    else:
        status = check.verification if check else "applied"
    return HealOutcome(status=status, decision=decision, decided_by=decided_by, steps=steps,
                       verification=check).to_xcom()


_TITLES = {
    "recovered": ":white_check_mark: Heal applied, metric recovered",
    "not_recovered": ":x: Heal applied, metric NOT recovered",
    "inconclusive": ":grey_question: Heal applied, recovery not measurable",
    "applied": ":wrench: Heal applied",
    "dry_run": ":test_tube: Heal dry run",
    "rejected": ":no_entry: Heal rejected",
    "timed_out": ":hourglass: Heal approval timed out (rejected)",
    "no_answer": ":hourglass: Heal got no approval answer",
    "denied": ":octagonal_sign: Heal denied by policy",
    "action_failed": ":warning: Heal action failed",
    "not_applied": ":warning: Heal not applied",
    "invalid": ":warning: Heal request rejected (invalid)",
    "approval_needed": ":raising_hand: Heal waiting for approval",
}


def report_message(plan: HealPlan | Mapping[str, Any] | None,
                   outcome: HealOutcome | Mapping[str, Any], *, run_url: str | None = None,
                   gate_result: GateResult | Mapping[str, Any] | None = None,
                   error: str | None = None) -> dict[str, Any]:
    """The Slack message (Block Kit, validated) for a heal's outcome or its approval ask."""
    from slack_sdk.models.blocks import ContextBlock, HeaderBlock, MarkdownTextObject, SectionBlock

    from promptops.alerts.slack import escape, validate_message

    plan = HealPlan.of(plan) if plan else None
    outcome = HealOutcome.of(outcome)
    status = outcome.status
    title = _TITLES.get(status, f"Heal: {status}")
    lines = []
    if plan:
        lines.append(f"*What:* {escape(plan.summary)}")
        lines.append(f"*Asked by:* {escape(plan.requested_by)}"
                     + (f" · *reason:* {escape(plan.reason)}" if plan.reason else ""))
        if plan.alert:
            lines.append(f"*Alert:* `{escape(plan.alert.rule)}` "
                         f"{escape(plan.alert.summary or '')}")
    if error:
        lines.append(f"*Problem:* {escape(error)}")
    if gate_result:
        lines += [f"*Policy:* {escape(r)}" for r in GateResult.of(gate_result).reasons]
    decided = outcome.decided_by
    if outcome.decision and status != "approval_needed":
        lines.append(f"*Decision:* {outcome.decision}"
                     + (f" by {escape(decided)}" if decided else ""))
    for s in outcome.steps:
        lines.append(f"*Step {s.step}:* {escape(s.what)} → `{s.status}`"
                     + (f" · {escape(str(s.detail)[:300])}" if s.detail else ""))
    verified = outcome.verification
    if verified:
        lines.append(f"*Verification:* {verified.verification} · {escape(verified.detail)}")
    text = "\n".join(lines)[:2900] or "(no details)"
    blocks = [HeaderBlock(text=title[:150]), SectionBlock(text=MarkdownTextObject(text=text))]
    if run_url:
        blocks.append(ContextBlock(elements=[MarkdownTextObject(
            text=f"<{run_url}|Open the heal run in Airflow>")]))
    fallback = f"{title}: {plan.summary if plan else error or ''}"[:300]
    message = {"text": fallback, "blocks": [b.to_dict() for b in blocks]}
    validate_message(message)
    return message


def finish_audit(lake: Any, plan: HealPlan | Mapping[str, Any],
                 outcome: HealOutcome | Mapping[str, Any], now: datetime,
                 gate_result: GateResult | Mapping[str, Any] | None = None) -> int:
    """Write the final audit record of every step (verification included); steps that never
    reached the platform (rejected, timed out, denied) get a record too. Returns the count."""
    from promptops.heal.audit import read_audit, write_audit

    policy = load_policy()
    plan, outcome = HealPlan.of(plan), HealOutcome.of(outcome)
    mine = {r.idempotency_key: r for r in read_audit(lake, plan.planned_at - timedelta(hours=1),
                                                     as_utc(now) + timedelta(hours=1))
            if r.run_id == plan.run_id}
    verified = outcome.verification
    written = 0
    reasons = list(GateResult.of(gate_result).reasons) if gate_result else []
    for i, step in enumerate(plan.steps):
        rec = mine.get(step.key)
        if rec is None:
            assert outcome.decision is not None  # outcome_of always decides
            req = request_of(step, policy)
            decision = outcome.decision if outcome.decision != "auto_approved" else "not_run"
            why = reasons[i] if i < len(reasons) else outcome.status
            if decision in ("rejected", "timed_out"):
                why = f"{decision} by {outcome.decided_by or 'nobody (no answer)'}; {why}"
            rec = _record(plan, step, req, plan.planned_at, decision, outcome.decided_by, why)
        elif rec.decision not in ("denied",):
            rec = replace(rec, decision=outcome.decision if outcome.decision in
                          ("approved", "auto_approved") else rec.decision,
                          decided_by=outcome.decided_by or rec.decided_by)
        if verified and rec.action_id:
            rec = replace(rec, verification=verified.verification,
                          verification_detail=verified.detail)
        elif rec.verification is None and rec.action_id:
            rec = replace(rec, verification="skipped",
                          verification_detail=outcome.verify_skipped)
        write_audit(lake, rec)
        written += 1
    return written


def invalid_audit(lake: Any, conf: Mapping[str, Any], run_id: str, now: datetime,
                  error: str) -> None:
    """Keep a rejected conf aside with its reason (nothing was posted)."""
    import json

    from promptops.heal.audit import AuditRecord, write_audit

    def text(value: Any) -> str:
        return value if isinstance(value, str) else json.dumps(value, default=str)

    raw_params = conf.get("params")
    params = raw_params if isinstance(raw_params, dict) else {"raw": raw_params}
    rec = AuditRecord(idempotency_key=idempotency_key(run_id, "conf"), requested_at=now,
                      action=text(conf.get("action", ""))[:200],
                      target=text(conf.get("target", ""))[:500], decision="invalid",
                      dry_run=conf.get("dry_run") is not False, run_id=run_id, step="conf",
                      params=params, reason=text(conf.get("reason", ""))[:2000],
                      requested_by=text(conf.get("requested_by", "manual"))[:200],
                      decided_by="validation", decision_reason=error[:2000])
    write_audit(lake, rec)


def send_heal_message(message: dict[str, Any], policy: HealPolicy | None = None, *,
                      webhooks: SlackWebhooks) -> str | None:
    """Post a heal message to the policy's first Slack connection that exists (``webhooks``:
    ``airflow_adapters.resources.slack_webhooks`` in a DAG task); returns the problem
    (never the webhook URL) instead of raising: a report must not undo a heal."""
    from promptops.alerts.slack import send_to_first

    policy = policy or load_policy()
    return send_to_first(message, list(policy.slack_connections), what="the heal report",
                         webhooks=webhooks)


# -- triggers from the hourly and health DAGs ------------------------------------------------

def platform_clock(client_factory: Callable[[], PlatformClient]) -> datetime:
    """"Now" for judging a finding's age: the platform's clock (the heal acts there, and a
    simulator may run at another date than the worker), else ours when no platform is
    configured (``client_factory`` raises :class:`PlatformNotConfigured`) or it does not
    answer."""
    from datetime import UTC

    from promptops.errors import PlatformNotConfigured

    try:
        client = client_factory()
    except PlatformNotConfigured:
        return datetime.now(UTC)
    with client:
        return platform_now(client)


def heal_triggers(heal_requests: list[Mapping[str, Any]], *, scope: str,
                  evaluated_at: datetime, now: datetime, policy: HealPolicy | None = None,
                  lake: Any = None) -> tuple[list[dict[str, Any]], list[str]]:
    """The heal DAG runs to trigger for an evaluation's heal requests, and notes on those
    that are not acted on.

    Only a current evaluation acts: one ``evaluated_at`` more than the policy's
    ``max_finding_age[scope]`` before ``now`` (a backfilled hour, a replay, a run that sat
    in the queue) is stale. Its requests are noted and, given a ``lake``, kept in the heal
    audit with decision ``stale``; no heal runs for them.

    One run per firing episode of an alert: the run id is made of the alert's fingerprint
    and the time it fired, so later evaluations of the same firing alert (or a rerun of the
    evaluating task) find the run already there and do not trigger again. A request whose
    playbook cannot be filled from the alert's labels (a budget alert names no user) is
    left to a person, with the reason.
    """
    import re

    from promptops.heal.policy import SCOPES
    from promptops.metrics.pricing import load_price_table

    if scope not in SCOPES:
        raise HealConfError(f"heal triggers: scope {scope!r} is not an evaluating DAG; "
                            f"use one of {', '.join(SCOPES)}")
    table = load_price_table()
    policy = policy or load_policy(price_table=table)
    if not policy.auto_heal.enabled:
        return [], ["auto-heal is off (heal_policy.yaml auto_heal.enabled): the alerts "
                    "only suggest their playbooks"]
    evaluated_at, now = as_utc(evaluated_at), as_utc(now)
    max_age: timedelta = getattr(policy.max_finding_age, scope)
    stale = now - evaluated_at > max_age
    books = load_playbooks(price_table=table)
    triggers, notes = [], []
    for req in heal_requests:
        playbook, labels = req["playbook"], dict(req.get("labels") or {})
        fired = re.sub(r"[^0-9T]", "", str(req.get("fired_at") or ""))[:13] or "now"
        run_id = f"heal__{scope}__{req['rule']}__{req['fingerprint'][:16]}__{fired}"
        reason = f"alert {req['rule']}: {req.get('summary') or ''}"[:2000]
        if stale or req.get("stale"):
            why = (f"stale: evaluated at {evaluated_at:%Y-%m-%d %H:%M} UTC, "
                   f"{_age(now - evaluated_at)} before now ({now:%Y-%m-%d %H:%M} UTC), over "
                   f"heal_policy.yaml max_finding_age.{scope} ({_age(max_age)})") if stale \
                else ("stale: a backfilled hour older than the latest evaluation "
                      f"({req.get('evaluated_at') or evaluated_at.isoformat()}), which "
                      "decides what fires now")
            notes.append(f"{req['rule']} ({req.get('summary')}): playbook {playbook} not "
                         f"acted on: the finding is {why}; only a current evaluation heals")
            if lake is not None:
                _audit_stale(lake, req, scope, evaluated_at, run_id, reason, why,
                             policy.auto_heal.dry_run)
            continue
        try:
            expand_playbook(playbook, labels, policy=policy, playbooks=books, price_table=table)
        except HealConfError as exc:
            notes.append(f"{req['rule']} ({req.get('summary')}): playbook {playbook} cannot "
                         f"run automatically: {exc}; trigger promptops_heal by hand")
            continue
        alert = {"fingerprint": req["fingerprint"], "rule": req["rule"], "scope": scope,
                 "labels": labels, "severity": req.get("severity"),
                 "summary": req.get("summary"), "value": req.get("value"),
                 "threshold": req.get("threshold"), "fired_at": req.get("fired_at")}
        conf = {"action": "run_playbook", "target": playbook, "params": {},
                "dry_run": policy.auto_heal.dry_run, "reason": reason,
                "requested_by": f"promptops_{scope}:{req['rule']}", "alert": alert}
        triggers.append({"trigger_run_id": run_id[:250], "conf": conf})
    return triggers, notes


def _age(td: timedelta) -> str:
    minutes = int(td.total_seconds() // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


def _audit_stale(lake: Any, req: Mapping[str, Any], scope: str, evaluated_at: datetime,
                 run_id: str, reason: str, why: str, dry_run: bool) -> None:
    """One audit record per stale evaluation of an alert, filed at the evaluation time and
    keyed by it, so a rerun of the late task replaces its record instead of adding one."""
    from promptops.heal.audit import AuditRecord, write_audit

    fingerprint = req.get("fingerprint")
    write_audit(lake, AuditRecord(
        idempotency_key=idempotency_key(run_id, f"stale@{evaluated_at.isoformat()}"),
        requested_at=evaluated_at, action="run_playbook", target=req["playbook"],
        decision="stale", dry_run=dry_run, reason=reason,
        requested_by=f"promptops_{scope}:{req['rule']}",
        alert_fingerprint=fingerprint if isinstance(fingerprint, str) else None,
        decided_by="freshness", decision_reason=why[:2000]))
