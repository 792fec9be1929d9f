"""Deterministic, vectorised generation of one hour of call records.

Every hour is a pure function of (seed, hour, incidents, ops-action effects): a numpy
Generator seeded with ``[seed, hour, stream]`` draws every column at once, so any hour, past
or present, can be generated on demand (backfills) and a rerun gives the same records. The
batch keeps numeric columns; records become dicts only when a page is served (records.py).

Token counts are sampled from the Azure LLM inference trace 2023 (Patel et al., "Splitwise",
ISCA 2024, CC-BY 4.0): the code trace for the coding app, the conversation trace otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from promptops.errors import ERROR_CODES
from promptops.simulator.catalog import (
    APP_NAMES,
    APPS,
    BASE_ERROR_CODES,
    BASE_ERROR_WEIGHTS,
    INTENT_WEIGHTS,
    INTENTS,
    MODEL_INDEX,
    MODELS,
    N_USERS,
    REGIONS,
    TEAMS,
    TEMPLATE_NAMES,
    TEMPLATES,
    VERSIONS,
    catalog,
    token_trace,
)
from promptops.simulator.scenario import DataFaults, Incident
from promptops.simulator.timeutil import HOUR_MS, to_ms

#: Ground-truth reason codes of malformed records (the lead's validator uses the same).
REJECT_REASONS = ("missing_field", "wrong_type", "negative_value", "out_of_range",
                  "ts_outside_window", "invalid_value", "bad_timestamp")
REQUIRED_FIELDS = ("call_id", "ts", "user_id", "app", "model", "status", "latency_ms",
                   "prompt_tokens", "completion_tokens")

BASE_ERROR_RATE = 0.005
BASE_INTENT_ACCURACY = 0.97
LABELLED_SHARE = 0.20
RELEVANCE_SHARE = 0.30
TEXT_SHARE = 0.05
CACHE_HIT_SHARE = 0.35
#: Below this, a record's delay is ordinary ingestion lag; at or above it, it is "late".
LATE_MS = 120_000
#: Key layout: ms within the hour (22 bits) | display id (28 bits) | occurrence (1 bit).
_DISP_BITS = 28
_KEY_TS_SHIFT = _DISP_BITS + 1


def seasonal_factor(hour: int) -> float:
    """Traffic relative to the weekly mean: peak mid-afternoon UTC, trough at night, quiet
    weekends. Averages to 1 over a week."""
    h = hour % 24
    daily = 1.0 + 0.55 * math.cos(2 * math.pi * (h - 15) / 24)
    dow = (hour // 24 + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    weekly = 0.55 if dow >= 5 else 1.0
    return daily * weekly / ((5 + 2 * 0.55) / 7)


@dataclass(frozen=True)
class Effects:
    """What accepted ops actions change, in the generator's terms (absolute ms)."""

    #: (created_ms, from_model_idx, to_model_idx), in creation order.
    switches: tuple[tuple[int, int, int], ...] = ()
    #: (created_ms, until_ms, user_idx, requests_per_minute).
    rate_limits: tuple[tuple[int, int, int, int], ...] = ()
    #: created_ms of scale_out actions on api_workers.
    scale_outs: tuple[int, ...] = ()

    def for_hour(self, hour: int) -> Effects:
        """Only the effects that can touch this hour (so the cache key stays stable)."""
        end = (hour + 1) * HOUR_MS
        start = hour * HOUR_MS
        return Effects(
            tuple(s for s in self.switches if s[0] < end),
            tuple(r for r in self.rate_limits if r[0] < end and r[1] > start),
            tuple(c for c in self.scale_outs if c < end)[:1] if self.scale_outs else (),
        )


@dataclass(frozen=True)
class Mutation:
    """How one malformed record breaks the schema: exactly one rule, one field."""

    reason: str
    field: str
    variant: int


@dataclass
class HourBatch:
    hour: int
    start_ms: int
    #: Base columns, one entry per generated call (rate-limited calls included, never served).
    cols: dict[str, np.ndarray]
    #: Per served position, in (ts, call_id, occurrence) order: the base row.
    order: np.ndarray
    #: Per served position: the sort key (see _KEY_TS_SHIFT), the local visible_at ms, late.
    key: np.ndarray
    visible: np.ndarray
    late: np.ndarray
    malformed: dict[int, Mutation] = field(default_factory=dict)
    rate_limited: int = 0

    def __len__(self) -> int:
        return len(self.order)

    @property
    def duplicate(self) -> np.ndarray:
        return (self.key & 1).astype(bool)

    def ts_key(self, ms_in_hour: int) -> int:
        """The smallest key with this ms offset (for window bounds)."""
        return int(ms_in_hour) << _KEY_TS_SHIFT


# -- lookup tables built once ---------------------------------------------------------------
def _group_table(groups: list[tuple[list[int], list[float]]]) -> tuple[np.ndarray, np.ndarray]:
    """Padded (G x K) tables of choices and cumulative weights for per-group sampling."""
    k = max(len(c) for c, _ in groups)
    choice = np.zeros((len(groups), k), dtype=np.int64)
    cum = np.full((len(groups), k), 2.0)  # padding is never reached
    for g, (choices, weights) in enumerate(groups):
        w = np.asarray(weights, dtype=np.float64)
        choice[g, :len(choices)] = choices
        cum[g, :len(choices)] = np.cumsum(w / w.sum())
        cum[g, len(choices) - 1] = 1.0 + 1e-9
    return choice, cum


_TMPL_OFFSETS = np.cumsum([0] + [len(a.templates) for a in APPS])[:-1]
_TMPL_CHOICE, _TMPL_CUM = _group_table(
    [(list(range(o, o + len(a.templates))), list(a.template_weights))
     for o, a in zip(_TMPL_OFFSETS, APPS, strict=True)])
_MODEL_CHOICE, _MODEL_CUM = _group_table(
    [([MODEL_INDEX[m] for m in a.models], list(a.model_weights)) for a in APPS])
_TMPL_VERSION = np.array([t.current_version for t in TEMPLATES], dtype=np.int64)
_APP_CODE = np.array([a.trace == "code" for a in APPS])
_APP_CUM = np.cumsum([a.weight for a in APPS]) / sum(a.weight for a in APPS)
_REGION_CUM = np.cumsum([0.40, 0.20, 0.28, 0.12])
_INTENT_CUM = np.cumsum(INTENT_WEIGHTS) / sum(INTENT_WEIGHTS)
_ERR_CUM = np.cumsum(BASE_ERROR_WEIGHTS) / sum(BASE_ERROR_WEIGHTS)
_ERR_CODES = np.array(BASE_ERROR_CODES, dtype=np.int64)
_M_TTFT = np.array([m.ttft_ms for m in MODELS])
_M_SIGMA = np.array([m.sigma for m in MODELS])
_M_TOK = np.array([m.ms_per_token for m in MODELS])
_M_CACHE = np.array([m.supports_cache for m in MODELS])
_NODE_NAMES = ("gpu-node-01", "gpu-node-02", "gpu-node-03", "gpu-node-04")
_M_NODES = np.full((len(MODELS), 2), -1, dtype=np.int64)
_M_NNODES = np.zeros(len(MODELS), dtype=np.int64)
for _i, _m in enumerate(MODELS):
    for _j, _n in enumerate(_m.gpu_nodes):
        _M_NODES[_i, _j] = _NODE_NAMES.index(_n)
    _M_NNODES[_i] = len(_m.gpu_nodes)
_PROVIDERS = ("openai", "anthropic", "self-hosted")
_M_PROVIDER = np.array([_PROVIDERS.index(m.provider) for m in MODELS], dtype=np.int64)


def _pick(cum: np.ndarray, u: np.ndarray) -> np.ndarray:
    return np.minimum(np.searchsorted(cum, u, side="right"), len(cum) - 1)


def _pick_grouped(group: np.ndarray, choice: np.ndarray, cum: np.ndarray,
                  u: np.ndarray) -> np.ndarray:
    local = (u[:, None] >= cum[group]).sum(axis=1)
    return choice[group, local]


def _exp_scale_for_mean(mean: float) -> float:
    """Scale s of X~Exp(s) so that E[clip(5 - X, 1, 5)] = mean (bisection; cheap)."""
    target = 5.0 - mean
    lo, hi = 1e-6, 100.0
    for _ in range(60):
        s = (lo + hi) / 2
        if s * (1 - math.exp(-4.0 / s)) < target:
            lo = s
        else:
            hi = s
    return (lo + hi) / 2


_BASE_REL_SCALE = _exp_scale_for_mean(4.6)


# -- slices -------------------------------------------------------------------------------
def _slice_mask(cols: dict[str, np.ndarray], slc: dict[str, str]) -> np.ndarray:
    n = len(cols["ts"])
    mask = np.ones(n, dtype=bool)
    cat = catalog()
    for dim, value in slc.items():
        if dim == "model":
            mask &= cols["model"] == MODEL_INDEX[value]
        elif dim == "region":
            mask &= cols["region"] == REGIONS.index(value)
        elif dim == "user_id":
            mask &= cols["user"] == cat.user_index[value]
        elif dim == "app":
            mask &= cols["app"] == [a.name for a in APPS].index(value)
        elif dim == "prompt_template":
            mask &= cols["template"] == TEMPLATE_NAMES.index(value)
        elif dim == "prompt_version":
            mask &= cols["version"] == VERSIONS.index(value)
        elif dim == "gpu_node":
            mask &= cols["gpu_node"] == _NODE_NAMES.index(value)
        elif dim == "team":
            mask &= cat.user_team[cols["user"]] == _team_index(value)
        elif dim == "provider":
            mask &= _M_PROVIDER[cols["model"]] == _PROVIDERS.index(value)
        else:  # validated in scenario.py; kept strict in case of programmatic use
            raise ValueError(f"unknown slice dimension {dim}")
    return mask


def _team_index(team: str) -> int:
    return TEAMS.index(team)


def _time_mask(ts: np.ndarray, hs: int, inc: Incident) -> np.ndarray:
    lo = to_ms(inc.start) - hs
    hi = HOUR_MS if inc.end is None else to_ms(inc.end) - hs
    return (ts >= lo) & (ts < hi)


def _overlaps(inc: Incident, hs: int) -> bool:
    start = to_ms(inc.start)
    end = None if inc.end is None else to_ms(inc.end)
    return start < hs + HOUR_MS and (end is None or end > hs)


DAY_MS = 24 * HOUR_MS


def batch_windows(inc: Incident, lo_ms: int, hi_ms: int) -> list[tuple[int, int]]:
    """A scheduled batch's run windows (absolute ms) that overlap ``[lo_ms, hi_ms)``, cut to
    it and to the incident's own start and end: one window a day at ``daily_start``."""
    p = inc.params
    first, last = to_ms(inc.start), (None if inc.end is None else to_ms(inc.end))
    out = []
    for day in range((lo_ms - p.minutes * 60_000) // DAY_MS, hi_ms // DAY_MS + 1):
        a = day * DAY_MS + p.start_minute * 60_000
        b = a + p.minutes * 60_000
        a, b = max(a, lo_ms, first), min(b, hi_ms, last if last is not None else b)
        if a < b:
            out.append((a, b))
    return out


def _batch_calls(hour_incidents: list[Incident], hs: int,
                 r: np.random.Generator) -> list[tuple[Incident, np.ndarray]]:
    """Timestamps (ms within the hour) of each scheduled batch's calls this hour: a fixed
    count per minute, drawn from the batch's range, spread uniformly over the minute."""
    out = []
    for inc in hour_incidents:
        if inc.kind != "scheduled_batch":
            continue
        p = inc.params
        parts = []
        for a, b in batch_windows(inc, hs, hs + HOUR_MS):
            for minute in range(a // 60_000, (b - 1) // 60_000 + 1):
                lo, hi = max(a, minute * 60_000), min(b, (minute + 1) * 60_000)
                k = int(r.integers(p.calls_per_minute_min, p.calls_per_minute_max + 1))
                k = int(round(k * (hi - lo) / 60_000))
                parts.append(r.integers(lo - hs, hi - hs, k, dtype=np.int64))
        if parts:
            out.append((inc, np.concatenate(parts)))
    return out


def _apply_batch_shape(cols: dict[str, np.ndarray], rows: np.ndarray, inc: Incident,
                       prompt: np.ndarray, completion: np.ndarray,
                       r: np.random.Generator) -> None:
    """A batch's calls all go to its app, template and model, with long prompts."""
    p = inc.params
    cat = catalog()
    uidx = cat.user_index[inc.slice["user_id"]]
    app = APP_NAMES.index(p.app) if p.app else int(cat.user_app[uidx])
    tmpl = (TEMPLATE_NAMES.index(p.prompt_template) if p.prompt_template
            else int(_TMPL_OFFSETS[app]))
    cols["app"][rows] = app
    cols["template"][rows] = tmpl
    cols["version"][rows] = _TMPL_VERSION[tmpl]
    cols["model"][rows] = MODEL_INDEX[p.model]
    cols["region"][rows] = cat.user_region[uidx]
    sigma = 0.25
    k = len(rows)
    prompt[rows] = np.rint(p.prompt_tokens * r.lognormal(-sigma**2 / 2, sigma, k))
    completion[rows] = np.rint(p.completion_tokens * r.lognormal(-sigma**2 / 2, sigma, k))


# -- the generator ------------------------------------------------------------------------
def generate_hour(hour: int, *, seed: int, calls_per_hour: int, flat: bool,
                  data_faults: DataFaults, incidents: list[Incident],
                  effects: Effects) -> HourBatch:
    """All calls of one hour (``hour`` = hours since the epoch), sorted and annotated."""
    hs = hour * HOUR_MS
    cat = catalog()

    def rng(stream: int) -> np.random.Generator:
        return np.random.default_rng([seed, hour, stream])

    r = rng(0)
    hour_incidents = [i for i in incidents if _overlaps(i, hs)]
    # A holiday dip scales the whole hour's traffic (the hour it starts in included).
    dip = math.prod(i.params.multiplier for i in hour_incidents if i.kind == "traffic_dip")
    if flat:
        n = int(calls_per_hour * dip)
    else:
        n = int(r.poisson(calls_per_hour * seasonal_factor(hour) * dip))
    ts = r.integers(0, HOUR_MS, n, dtype=np.int64)
    user = np.minimum(np.searchsorted(cat.user_cum, r.random(n), side="right"), N_USERS - 1)

    # A flooding user's extra calls: their own stream, so the ordinary calls stay the same.
    rf = rng(1)
    extra_ts, extra_user = [ts], [user]
    for inc in hour_incidents:
        if inc.kind != "user_flood":
            continue
        lo = max(to_ms(inc.start), hs) - hs
        hi = (HOUR_MS if inc.end is None else min(to_ms(inc.end), hs + HOUR_MS) - hs)
        k = int(round(inc.params.calls_per_minute * (hi - lo) / 60_000))
        extra_ts.append(rf.integers(lo, hi, k, dtype=np.int64))
        extra_user.append(np.full(k, cat.user_index[inc.slice["user_id"]], dtype=np.int64))
    # Scheduled batches: their own stream too; remembered to shape their calls below.
    rb = rng(4)
    batches = []
    for inc, bts in _batch_calls(hour_incidents, hs, rb):
        first = sum(len(t) for t in extra_ts)
        batches.append((inc, np.arange(first, first + len(bts))))
        extra_ts.append(bts)
        extra_user.append(np.full(len(bts), cat.user_index[inc.slice["user_id"]],
                                  dtype=np.int64))
    ts = np.concatenate(extra_ts)
    user = np.concatenate(extra_user)
    m = len(ts)

    r = rng(2)
    disp = r.permutation(m).astype(np.int64)
    if m >= 1 << _DISP_BITS:
        raise ValueError("too many calls in one hour for the call_id space")
    app = np.where(r.random(m) < 0.7, cat.user_app[user], _pick(_APP_CUM, r.random(m)))
    template = _pick_grouped(app, _TMPL_CHOICE, _TMPL_CUM, r.random(m))
    version = _TMPL_VERSION[template].copy()
    old = (r.random(m) < 0.10) & (version > 1)
    version[old] -= 1
    model = _pick_grouped(app, _MODEL_CHOICE, _MODEL_CUM, r.random(m))
    region = np.where(r.random(m) < 0.8, cat.user_region[user], _pick(_REGION_CUM, r.random(m)))
    u_node = r.random(m)
    code_app = _APP_CODE[app]
    code_p, code_c = token_trace("code")
    conv_p, conv_c = token_trace("conv")
    u_tok = r.random(m)
    i_code = (u_tok * len(code_p)).astype(np.int64)
    i_conv = (u_tok * len(conv_p)).astype(np.int64)
    prompt = np.where(code_app, code_p[i_code], conv_p[i_conv])
    completion = np.where(code_app, code_c[i_code], conv_c[i_conv])
    u_cache, u_cache_share = r.random(m), r.random(m)
    z = r.standard_normal(m)
    u_tok_speed = r.random(m)
    true_intent = _pick(_INTENT_CUM, r.random(m))
    labelled = r.random(m) < LABELLED_SHARE
    u_correct, u_wrong = r.random(m), r.random(m)
    u_err, u_err_code = r.random(m), r.random(m)
    u_burst, u_burst_code = r.random(m), r.random(m)
    u_rel, rel_exp = r.random(m), r.exponential(1.0, m)
    u_text, u_text_k, u_redact = r.random(m), r.random(m), r.random(m)
    u_err_lat = r.random(m)
    delay = np.minimum(r.exponential(1500.0, m), 45_000.0).astype(np.int64)
    u_late, late_delay = r.random(m), r.integers(LATE_MS, 600_001, m, dtype=np.int64)
    u_mal, u_dup = r.random(m), r.random(m)

    cols: dict[str, np.ndarray] = {"ts": ts, "user": user, "app": app, "template": template,
                                   "version": version, "model": model, "region": region}
    for inc, rows in batches:
        _apply_batch_shape(cols, rows, inc, prompt, completion, rb)
    # A prompt rollout: the template's calls move to the new version, quality unchanged.
    prompt_mult = np.ones(m)
    rr = rng(5)
    for inc in hour_incidents:
        if inc.kind != "prompt_rollout":
            continue
        hit = (_slice_mask(cols, inc.slice) & _time_mask(ts, hs, inc)
               & (rr.random(m) < inc.params.share))
        version[hit] = VERSIONS.index(inc.params.version)
        prompt_mult[hit] *= inc.params.prompt_tokens_multiplier

    # Ops: switch_model moves a model's traffic from the action's time on.
    for created, src, dst in effects.switches:
        moved = (ts >= created - hs) & (model == src)
        model[moved] = dst
    # Padding in _M_NODES is -1, so hosted models (no nodes) land on -1 = no gpu_node.
    gpu_node = _M_NODES[model, (u_node * _M_NNODES[model]).astype(np.int64)]
    cols["gpu_node"] = gpu_node

    # intent_drop changes a template's version first, since later slices may name versions.
    accuracy = np.full(m, BASE_INTENT_ACCURACY)
    for inc in hour_incidents:
        if inc.kind != "intent_drop":
            continue
        hit = _slice_mask(cols, inc.slice) & _time_mask(ts, hs, inc)
        tmpl = TEMPLATE_NAMES.index(inc.slice["prompt_template"])
        new_version = (VERSIONS.index(inc.params.version) if inc.params.version
                       else min(int(_TMPL_VERSION[tmpl]) + 1, 9))
        version[hit] = new_version
        accuracy[hit] = inc.params.accuracy

    lat_mult = np.ones(m)
    tok_mult = np.ones(m)
    rel_scale = np.full(m, _BASE_REL_SCALE)
    is_err = u_err < BASE_ERROR_RATE
    err_code = _ERR_CODES[_pick(_ERR_CUM, u_err_code)]
    scaled_from = effects.scale_outs[0] - hs if effects.scale_outs else None
    scaled = ts >= scaled_from if scaled_from is not None else np.zeros(m, dtype=bool)
    lat_mult[scaled] *= 0.85  # more workers: a little less queueing for everyone
    for inc in hour_incidents:
        kind, p = inc.kind, inc.params
        if kind in ("intent_drop", "user_flood", "traffic_dip", "scheduled_batch",
                    "prompt_rollout", "app_traffic_drop"):
            continue
        hit = _time_mask(ts, hs, inc)
        if inc.slice:
            hit &= _slice_mask(cols, inc.slice)
        if kind == "error_burst":
            fail = hit & (u_burst < p.error_rate)
            codes = np.asarray(p.error_codes, dtype=np.int64)
            err_code = np.where(fail, codes[(u_burst_code * len(codes)).astype(np.int64)],
                                err_code)
            is_err |= fail
        elif kind == "api_down":
            fail = hit & (u_burst < p.record_error_rate)
            err_code = np.where(fail, p.error_code, err_code)
            is_err |= fail
        elif kind == "latency_spike":
            # scale_out absorbs most of a spike: 10% of the extra latency is left.
            eff = np.where(scaled, 1.0 + (p.multiplier - 1.0) * 0.1, p.multiplier)
            lat_mult[hit] *= eff[hit]
        elif kind == "gpu_saturation":
            lat_mult[hit] *= p.latency_multiplier
        elif kind == "token_surge":
            tok_mult[hit] *= p.multiplier
        elif kind == "relevance_drop":
            rel_scale[hit] = _exp_scale_for_mean(p.mean)

    prompt = np.rint(prompt * tok_mult * prompt_mult).astype(np.int64)
    completion = np.rint(completion * tok_mult).astype(np.int64)
    cached = np.where(_M_CACHE[model],
                      np.where(u_cache < CACHE_HIT_SHARE,
                               np.floor(prompt * (0.2 + 0.7 * u_cache_share)), 0), -1)
    ttft = _M_TTFT[model] * np.exp(_M_SIGMA[model] * z)
    latency = (ttft + completion * _M_TOK[model] * (0.85 + 0.3 * u_tok_speed)) * lat_mult
    # Failed calls: a timeout waited ~30 s, anything else failed fast; nothing was generated.
    latency = np.where(is_err & (err_code == 2001), 30_000.0 * (0.95 + 0.1 * u_err_lat),
                       np.where(is_err, ttft * (0.2 + 0.5 * u_err_lat), latency))
    completion = np.where(is_err, 0, completion)
    correct = u_correct < accuracy
    wrong = (true_intent + 1 + (u_wrong * (len(INTENTS) - 1)).astype(np.int64)) % len(INTENTS)
    predicted = np.where(correct, true_intent, wrong)
    expected = np.where(labelled, true_intent, -1)
    # Stored in tenths (int8, -1 = absent): an exact one-decimal float when served.
    relevance = np.where((u_rel < RELEVANCE_SHARE) & ~is_err,
                         np.rint(np.clip(5.0 - rel_exp * rel_scale, 1.0, 5.0) * 10), -1)
    text = np.where(u_text < TEXT_SHARE,
                    np.where(u_redact < 0.2, -2, true_intent * 2 + (u_text_k < 0.5)), -1)

    cols.update({
        "model": model, "version": version, "status_err": is_err,
        "error_code": np.where(is_err, err_code, 0).astype(np.int16),
        "latency": np.rint(latency * 10), "prompt": prompt.astype(np.int32),
        "completion": completion.astype(np.int32), "cached": cached.astype(np.int32),
        "predicted": predicted.astype(np.int8), "expected": expected.astype(np.int8),
        "relevance": relevance, "text": text.astype(np.int16), "disp": disp,
    })

    # Ops: rate_limit caps a user's calls per minute; calls over the cap never happen.
    keep = np.ones(m, dtype=bool)
    for created, until, uidx, rpm in effects.rate_limits:
        rows = np.flatnonzero((user == uidx) & (ts >= created - hs) & (ts < until - hs))
        if len(rows) == 0:
            continue
        rows = rows[np.lexsort((disp[rows], ts[rows]))]
        minute = (ts[rows] + hs) // 60_000
        starts = np.flatnonzero(np.diff(minute, prepend=minute[0] - 1) != 0)
        rank = np.arange(len(rows)) - np.repeat(starts, np.diff(np.append(starts, len(rows))))
        keep[rows[rank >= rpm]] = False

    rate_limited = int((~keep).sum())
    # A client failing before the API: most of its calls never arrive.
    rd = rng(6)
    for inc in hour_incidents:
        if inc.kind == "app_traffic_drop":
            hit = _slice_mask(cols, inc.slice) & _time_mask(ts, hs, inc)
            keep &= ~(hit & (rd.random(m) >= inc.params.multiplier))

    delay = np.where(u_late < data_faults.late_rate, late_delay, delay)
    malformed = keep & (u_mal < data_faults.malformed_rate)
    dup = keep & ~malformed & (u_dup < data_faults.duplicate_rate)

    rows = np.concatenate([np.flatnonzero(keep), np.flatnonzero(dup)])
    occ = np.concatenate([np.zeros(int(keep.sum()), dtype=np.int64),
                          np.ones(int(dup.sum()), dtype=np.int64)])
    key = (ts[rows] << _KEY_TS_SHIFT) | (disp[rows] << 1) | occ
    perm = np.argsort(key, kind="stable")
    order = rows[perm]
    key = key[perm]
    visible = ts[order] + delay[order]

    muts: dict[int, Mutation] = {}
    mal_rows = np.flatnonzero(malformed)
    if len(mal_rows):
        rm = rng(3)
        reasons = rm.integers(0, len(REJECT_REASONS), len(mal_rows))
        variants = rm.integers(0, 1 << 30, len(mal_rows))
        for row, ri, var in zip(mal_rows.tolist(), reasons.tolist(), variants.tolist(),
                                strict=True):
            reason = REJECT_REASONS[ri]
            muts[row] = Mutation(reason, _mutated_field(reason, var, cols, row), var)

    # Compact dtypes: a 1M-call hour takes about 60 MB in the cache instead of 120.
    cols = {k: v.astype(_COMPACT.get(k, v.dtype), copy=False) for k, v in cols.items()}
    return HourBatch(hour=hour, start_ms=hs, cols=cols, order=order.astype(np.int32),
                     key=key, visible=visible.astype(np.int32),
                     late=delay[order] >= LATE_MS, malformed=muts,
                     rate_limited=rate_limited)


_COMPACT = {"ts": np.int32, "user": np.int16, "app": np.int8, "template": np.int8,
            "version": np.int8, "model": np.int8, "region": np.int8, "gpu_node": np.int8,
            "disp": np.int32, "latency": np.int32, "relevance": np.int8}

_WRONG_TYPE_FIELDS = ("latency_ms", "prompt_tokens", "prompt_tokens", "completion_tokens",
                      "status", "user_id", "call_id")


def _mutated_field(reason: str, variant: int, cols: dict[str, np.ndarray], row: int) -> str:
    if reason == "missing_field":
        return REQUIRED_FIELDS[variant % len(REQUIRED_FIELDS)]
    if reason == "wrong_type":
        return _WRONG_TYPE_FIELDS[variant % len(_WRONG_TYPE_FIELDS)]
    if reason == "negative_value":
        options = ["latency_ms", "prompt_tokens", "completion_tokens"]
        if cols["cached"][row] >= 0:
            options.append("cached_tokens")
        return options[variant % len(options)]
    if reason == "out_of_range":
        return "relevance_score"
    if reason == "invalid_value":
        return "status"
    return "ts"  # ts_outside_window, bad_timestamp


def error_http_status(code: int) -> int:
    return ERROR_CODES[code].http_status


def describe(batch: HourBatch) -> dict[str, Any]:
    """Small summary, for logs and benchmarks."""
    return {"hour": batch.hour, "served": len(batch), "malformed": len(batch.malformed),
            "duplicates": int(batch.duplicate.sum()), "late": int(batch.late.sum()),
            "rate_limited": batch.rate_limited}
