"""Turn generated hour batches into served records (dicts) and their ground truth.

Only the positions of one page become dicts: columns are sliced, mapped through lookup
lists and zipped, then the sparse optional fields and the (rare) malformed mutations are
applied to the few records that have them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from promptops.errors import ERROR_CODES
from promptops.simulator.catalog import (
    APP_NAMES,
    INTENTS,
    MODELS,
    REGIONS,
    TEAMS,
    TEMPLATE_NAMES,
    VERSIONS,
    catalog,
)
from promptops.simulator.timeutil import format_ts, from_ms
from promptops.simulator.traffic import HourBatch, Mutation

_NODES = ("gpu-node-01", "gpu-node-02", "gpu-node-03", "gpu-node-04")


@dataclass
class ServedRecord:
    """One served record and what the simulator knows about it."""

    record: dict[str, Any]
    #: One of traffic.REJECT_REASONS when the record breaks the contract's table, else None.
    reject_reason: str | None
    reject_field: str | None
    #: True for the second copy of a call the platform wrote twice.
    is_duplicate: bool
    #: True when the record became visible >= 2 minutes after its ts.
    is_late: bool
    visible_at: datetime


class _Lookups:
    def __init__(self) -> None:
        cat = catalog()
        obj = lambda seq: np.array(list(seq), dtype=object)  # noqa: E731
        self.users = obj(cat.users)
        self.user_team = obj(TEAMS[t] for t in cat.user_team)
        self.apps = obj(APP_NAMES)
        self.templates = obj(TEMPLATE_NAMES)
        self.versions = obj(VERSIONS)
        self.models = obj(m.name for m in MODELS)
        self.providers = obj(m.provider for m in MODELS)
        self.regions = obj(REGIONS)
        self.intents = obj(INTENTS)
        self.http = {c: e.http_status for c, e in ERROR_CODES.items()}
        self.texts = cat.prompt_texts


_LOOKUPS: _Lookups | None = None


def _lookups() -> _Lookups:
    global _LOOKUPS
    if _LOOKUPS is None:
        _LOOKUPS = _Lookups()
    return _LOOKUPS


def _ts_strings(hour_start_ms: int, ts_local: list[int]) -> list[str]:
    prefix = format_ts(from_ms(hour_start_ms))[:14]  # "YYYY-MM-DDTHH:"
    return [f"{prefix}{t // 60000:02d}:{t // 1000 % 60:02d}.{t % 1000:03d}Z" for t in ts_local]


def build_records(batch: HourBatch, positions: np.ndarray) -> list[dict[str, Any]]:
    """The served dicts for these positions of the batch, in order."""
    lk = _lookups()
    rows = batch.order[positions]
    c = batch.cols
    user = c["user"][rows]
    model = c["model"][rows]
    prefix = f"c{batch.hour:06x}"
    call_ids = [f"{prefix}{d:07x}" for d in c["disp"][rows].tolist()]
    ts = _ts_strings(batch.start_ms, c["ts"][rows].tolist())
    err = c["status_err"][rows]
    status = np.where(err, "error", "success").tolist()
    codes = c["error_code"][rows].tolist()
    http = [lk.http[code] if code else 200 for code in codes]
    recs = [
        {"call_id": a, "ts": b, "user_id": u, "team": t, "app": ap, "prompt_template": pt,
         "prompt_version": pv, "model": mo, "provider": pr, "region": rg, "status": st,
         "http_status": hs, "latency_ms": la, "prompt_tokens": p, "completion_tokens": co,
         "predicted_intent": pi}
        for a, b, u, t, ap, pt, pv, mo, pr, rg, st, hs, la, p, co, pi in zip(
            call_ids, ts, lk.users[user].tolist(), lk.user_team[user].tolist(),
            lk.apps[c["app"][rows]].tolist(), lk.templates[c["template"][rows]].tolist(),
            lk.versions[c["version"][rows]].tolist(), lk.models[model].tolist(),
            lk.providers[model].tolist(), lk.regions[c["region"][rows]].tolist(), status, http,
            (c["latency"][rows] / 10).tolist(), c["prompt"][rows].tolist(),
            c["completion"][rows].tolist(), lk.intents[c["predicted"][rows]].tolist(),
            strict=True)
    ]
    # Sparse optional fields: only the records that have them are touched.
    for i in np.flatnonzero(err).tolist():
        recs[i]["error_code"] = codes[i]
    cached = c["cached"][rows]
    for i, v in zip(np.flatnonzero(cached >= 0).tolist(), cached[cached >= 0].tolist(),
                    strict=True):
        recs[i]["cached_tokens"] = v
    expected = c["expected"][rows]
    for i in np.flatnonzero(expected >= 0).tolist():
        recs[i]["expected_intent"] = INTENTS[expected[i]]
    rel = c["relevance"][rows]
    has_rel = rel >= 0
    for i, v in zip(np.flatnonzero(has_rel).tolist(), (rel[has_rel] / 10).tolist(),
                    strict=True):
        recs[i]["relevance_score"] = v
    text = c["text"][rows]
    for i in np.flatnonzero(text != -1).tolist():
        k = int(text[i])
        if k == -2:
            recs[i]["prompt_text"] = recs[i]["response_text"] = "[redacted]"
        else:
            recs[i]["prompt_text"], recs[i]["response_text"] = lk.texts[k]
    node = c["gpu_node"][rows]
    for i in np.flatnonzero(node >= 0).tolist():
        recs[i]["gpu_node"] = _NODES[node[i]]
    if batch.malformed:
        occ = (batch.key[positions] & 1).tolist()
        for i, row in enumerate(rows.tolist()):
            mut = batch.malformed.get(row)
            if mut is not None and not occ[i]:
                apply_mutation(recs[i], mut, batch, row)
    return recs


_BAD_STATUS = ("ok", "failed", "SUCCESS", "timeout", "pending")
_OUT_OF_RANGE = (0.0, 0.5, 5.5, 6.0, 7.5, 10.0)


def shifted_ts_ms(batch: HourBatch, row: int, mut: Mutation) -> int:
    """ts_outside_window: the served ts lies 1-6 hours before the real one (never in the
    future, so no served ts is ever later than the simulator's now)."""
    return batch.start_ms + int(batch.cols["ts"][row]) - (1 + mut.variant % 6) * 3_600_000


def apply_mutation(rec: dict[str, Any], mut: Mutation, batch: HourBatch, row: int) -> None:
    """Break exactly one rule in exactly one field."""
    f, v = mut.field, mut.variant
    if mut.reason == "missing_field":
        rec.pop(f, None)
    elif mut.reason == "wrong_type":
        if f == "latency_ms":
            rec[f] = "fast"
        elif f == "prompt_tokens":
            rec[f] = rec[f] + 0.5 if (v // 7) % 2 else str(rec[f])
        elif f == "completion_tokens":
            rec[f] = str(rec[f])
        elif f == "status":
            rec[f] = 1
        elif f == "user_id":  # a number: user-042 -> 42; a service account by its letters
            tail = rec[f].rsplit("-", 1)[-1]
            rec[f] = int(tail) if tail.isdigit() else sum(map(ord, rec[f]))
        elif f == "call_id":
            rec[f] = int(rec[f][1:], 16)
    elif mut.reason == "negative_value":
        rec[f] = -(rec[f] + 1)
    elif mut.reason == "out_of_range":
        rec[f] = _OUT_OF_RANGE[v % len(_OUT_OF_RANGE)]
    elif mut.reason == "ts_outside_window":
        rec[f] = format_ts(from_ms(shifted_ts_ms(batch, row, mut)))
    elif mut.reason == "invalid_value":
        rec[f] = _BAD_STATUS[v % len(_BAD_STATUS)]
    elif mut.reason == "bad_timestamp":
        dt = from_ms(batch.start_ms + int(batch.cols["ts"][row]))
        forms = ("not-a-timestamp", dt.strftime("%d/%m/%Y %H:%M:%S"),
                 str(int(dt.timestamp())), dt.strftime("%Y-13-%dT%H:%M:%SZ"))
        rec[f] = forms[v % len(forms)]


def truth_for(batch: HourBatch, positions: np.ndarray, records: list[dict[str, Any]],
              window_ms: tuple[int, int]) -> list[ServedRecord]:
    """Ground truth for served records; ``window_ms`` decides ts_outside_window."""
    rows = batch.order[positions].tolist()
    occ = (batch.key[positions] & 1).tolist()
    late = batch.late[positions].tolist()
    vis = batch.visible[positions].tolist()
    out = []
    for rec, row, o, lt, v in zip(records, rows, occ, late, vis, strict=True):
        mut = None if o else batch.malformed.get(row)
        reason = field = None
        if mut is not None:
            reason, field = mut.reason, mut.field
            if reason == "ts_outside_window":
                shifted = shifted_ts_ms(batch, row, mut)
                if window_ms[0] <= shifted < window_ms[1]:
                    reason = field = None  # a wide window still holds it: nothing to reject
        out.append(ServedRecord(rec, reason, field, bool(o), bool(lt),
                                from_ms(batch.start_ms + v)))
    return out
