"""Ops actions (POST /v1/ops/actions): strict validation, idempotency, lifecycle, persistence.

An action's status moves accepted -> running -> succeeded|failed with wall time since it
was created (``action_duration_s``), while its effect on the generated traffic starts at its
``created_at`` on the simulated clock. Dry runs and failed actions change nothing.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from promptops.simulator.catalog import MODEL_NAMES, SERVICES, catalog
from promptops.simulator.timeutil import format_ts, parse_rfc3339

ACTIONS = ("restart_service", "scale_out", "rate_limit", "switch_model")
_PARAMS = {
    "restart_service": {},
    "scale_out": {"replicas": "int"},
    "rate_limit": {"requests_per_minute": "int", "ttl_minutes": "int"},
    "switch_model": {"to": "model"},
}
_TOP = {"action", "target", "params", "dry_run", "reason"}


class ActionInvalid(ValueError):
    """A request body the platform refuses (422, code 3002); the message names the field."""


@dataclass
class Action:
    action_id: str
    action: str
    target: str
    params: dict[str, Any]
    dry_run: bool
    reason: str
    created_at: datetime
    #: Wall-clock seconds at creation, which drive the lifecycle.
    created_wall: float
    idempotency_key: str
    #: "succeeded" or "failed": what the action ends as, decided at creation.
    outcome: str
    detail: str

    @property
    def effective(self) -> bool:
        return not self.dry_run and self.outcome == "succeeded"

    def status(self, wall_now: float, duration_s: float) -> tuple[str, bool]:
        """(status, finished)."""
        if self.dry_run:
            return self.outcome, True
        elapsed = wall_now - self.created_wall
        if elapsed >= duration_s:
            return self.outcome, True
        return ("accepted" if elapsed < 0.2 * duration_s else "running"), False

    def view(self, wall_now: float, duration_s: float) -> dict[str, Any]:
        status, done = self.status(wall_now, duration_s)
        finished = None
        if done:
            finished = self.created_at if self.dry_run else (
                self.created_at + timedelta(seconds=duration_s))
        return {"action_id": self.action_id, "action": self.action, "target": self.target,
                "params": self.params, "status": status, "dry_run": self.dry_run,
                "reason": self.reason, "created_at": format_ts(self.created_at),
                "finished_at": None if finished is None else format_ts(finished),
                "detail": self.detail if done else f"{status}: {self.action} {self.target}"}

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["created_at"] = format_ts(self.created_at)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Action:
        d = dict(d)
        d["created_at"] = parse_rfc3339(d["created_at"])
        return cls(**d)


def validate_body(body: Any) -> tuple[str, str, dict[str, Any], bool, str]:
    """(action, target, params, dry_run, reason) or ActionInvalid naming the problem."""
    if not isinstance(body, dict):
        raise ActionInvalid("body must be a JSON object")
    unknown = sorted(set(body) - _TOP)
    if unknown:
        raise ActionInvalid(f"unknown field(s): {', '.join(unknown)}")
    action = body.get("action")
    if action not in ACTIONS:
        raise ActionInvalid(f"action: must be one of {', '.join(ACTIONS)}")
    target = body.get("target")
    if not isinstance(target, str) or not target.strip():
        raise ActionInvalid("target: must be a non-empty string")
    if "params" not in body:
        raise ActionInvalid("params: required (use {} for restart_service)")
    params = body["params"]
    if not isinstance(params, dict):
        raise ActionInvalid("params: must be an object")
    spec = _PARAMS[action]
    extra = sorted(set(params) - set(spec))
    if extra:
        raise ActionInvalid(f"params: unknown for {action}: {', '.join(extra)}")
    for name, kind in spec.items():
        if name not in params:
            raise ActionInvalid(f"params.{name}: required for {action}")
        value = params[name]
        if kind == "int" and (type(value) is not int or value < 1):
            raise ActionInvalid(f"params.{name}: must be an integer >= 1")
        if kind == "model" and value not in MODEL_NAMES:
            raise ActionInvalid(f"params.{name}: unknown model {value!r}; known: "
                                f"{', '.join(MODEL_NAMES)}")
    dry_run = body.get("dry_run", False)
    if type(dry_run) is not bool:
        raise ActionInvalid("dry_run: must be true or false")
    reason = body.get("reason", "")
    if not isinstance(reason, str):
        raise ActionInvalid("reason: must be a string")
    return action, target, dict(params), dry_run, reason


def _outcome(action: str, target: str, params: dict[str, Any],
             created: datetime) -> tuple[str, str]:
    if action in ("restart_service", "scale_out"):
        if target not in SERVICES:
            return "failed", f"unknown service {target!r}; known: {', '.join(SERVICES)}"
        if action == "restart_service":
            return "succeeded", f"restarted {target}"
        return "succeeded", f"scaled {target} to {params['replicas']} replicas"
    if action == "rate_limit":
        if target not in catalog().user_index:
            return "failed", f"unknown user {target!r}"
        until = created + timedelta(minutes=params["ttl_minutes"])
        return "succeeded", (f"limited {target} to {params['requests_per_minute']} "
                             f"requests/minute until {format_ts(until)}")
    if target not in MODEL_NAMES:
        return "failed", f"unknown model {target!r}; known: {', '.join(MODEL_NAMES)}"
    if target == params["to"]:
        return "failed", f"target and params.to are the same model ({target})"
    return "succeeded", f"moved {target} traffic to {params['to']}"


class ActionStore:
    def __init__(self, duration_s: float, state_file: Path | None = None) -> None:
        self.duration_s = duration_s
        self._state_file = state_file
        self._lock = threading.Lock()
        self._actions: dict[str, Action] = {}
        self._by_key: dict[str, str] = {}
        #: Bumped on every change, so the platform knows when to recompute effects.
        self.version = 0
        if state_file is not None and state_file.exists():
            for d in json.loads(state_file.read_text()).get("actions", []):
                a = Action.from_json(d)
                self._actions[a.action_id] = a
                self._by_key[a.idempotency_key] = a.action_id

    def create(self, body: Any, idempotency_key: str, now: datetime) -> tuple[Action, bool]:
        """(action, created); a known idempotency key returns the first action unchanged."""
        with self._lock:
            known = self._by_key.get(idempotency_key)
            if known is not None:
                return self._actions[known], False
        action, target, params, dry_run, reason = validate_body(body)
        outcome, detail = _outcome(action, target, params, now)
        if dry_run:
            detail = f"dry run, nothing changed: would have {detail}" if outcome == "succeeded" \
                else f"dry run: {detail}"
        with self._lock:
            known = self._by_key.get(idempotency_key)  # a concurrent twin may have won
            if known is not None:
                return self._actions[known], False
            a = Action(f"act-{uuid.uuid4().hex[:12]}", action, target, params, dry_run, reason,
                       now, time.time(), idempotency_key, outcome, detail)
            self._actions[a.action_id] = a
            self._by_key[idempotency_key] = a.action_id
            self.version += 1
            self._save()
        return a, True

    def get(self, action_id: str) -> Action | None:
        with self._lock:
            return self._actions.get(action_id)

    def all(self) -> list[Action]:
        with self._lock:
            return sorted(self._actions.values(), key=lambda a: (a.created_at, a.action_id))

    def _save(self) -> None:
        if self._state_file is None:
            return
        tmp = self._state_file.with_suffix(self._state_file.suffix + ".tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"actions": [a.to_json() for a in self._actions.values()]},
                                  indent=1))
        os.replace(tmp, self._state_file)
