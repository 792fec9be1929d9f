"""The simulated platform, in process: traffic, incidents, ops actions, GPUs, health.

The HTTP server is a thin layer over this class, and tests can use it directly to get the
ground truth of what the server serves (``served_with_truth``).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict
from datetime import datetime
from typing import Any

import numpy as np

from promptops.simulator.actions import Action, ActionStore
from promptops.simulator.catalog import (
    GPU_MEMORY_MB,
    GPU_NODES,
    MODEL_INDEX,
    MODELS,
    N_USERS,
    catalog,
)
from promptops.simulator.config import SimConfig
from promptops.simulator.records import ServedRecord, build_records, truth_for
from promptops.simulator.scenario import Incident, resolve_incidents
from promptops.simulator.timeutil import (
    HOUR_MS,
    SimClock,
    floor_hour,
    format_ts,
    to_ms,
    to_us,
)
from promptops.simulator.traffic import Effects, HourBatch, generate_hour

#: A cursor position: (hour, sort key within the hour).
Position = tuple[int, int]


@dataclasses.dataclass
class Page:
    records: list[dict[str, Any]]
    #: Where the next page starts, or None when this was the last one.
    next_position: Position | None


class Platform:
    def __init__(self, config: SimConfig, clock: SimClock | None = None,
                 start: datetime | None = None) -> None:
        self.config = config
        self.clock = clock or SimClock()
        #: Relative scenario times resolve against this (sim start floored to the hour).
        self.anchor = floor_hour(start or self.clock.now())
        self._incidents = resolve_incidents(config.incidents, self.anchor,
                                            config.scenario_source)
        self.actions = ActionStore(config.action_duration_s, config.state_file)
        self._cache: OrderedDict[Any, HourBatch] = OrderedDict()
        self._lock = threading.Lock()
        self._effects_version = -1
        self._effects = Effects()
        self._effective_incidents = self._incidents

    # -- time -----------------------------------------------------------------------------
    def now(self) -> datetime:
        return self.clock.now()

    # -- incidents and ops effects ---------------------------------------------------------
    def _refresh(self) -> None:
        """Recompute the effects of ops actions when an action was added."""
        if self._effects_version == self.actions.version:
            return
        acts = [a for a in self.actions.all() if a.effective]
        switches, limits, scale = [], [], []
        restarts: list[Action] = []
        cat = catalog()
        for a in acts:
            c = to_ms(a.created_at)
            if a.action == "switch_model":
                switches.append((c, MODEL_INDEX[a.target], MODEL_INDEX[a.params["to"]]))
            elif a.action == "rate_limit":
                until = c + a.params["ttl_minutes"] * 60_000
                limits.append((c, until, cat.user_index[a.target],
                               a.params["requests_per_minute"]))
            elif a.action == "scale_out" and a.target == "api_workers":
                scale.append(c)
            elif a.action == "restart_service" and a.target == "api_gateway":
                restarts.append(a)
        incidents = []
        for inc in self._incidents:
            if inc.kind in ("error_burst", "api_down"):
                for a in restarts:  # the first restart inside the incident ends it
                    if inc.active(a.created_at):
                        inc = dataclasses.replace(inc, end=a.created_at, ended_by=a.action_id)
                        break
            incidents.append(inc)
        self._effects = Effects(tuple(switches), tuple(limits), tuple(sorted(scale)))
        self._effective_incidents = incidents
        self._effects_version = self.actions.version

    def incidents(self) -> list[Incident]:
        """Incidents as they play out (a restart may have ended one early)."""
        with self._lock:
            self._refresh()
            return list(self._effective_incidents)

    def active_incidents(self, at: datetime | None = None) -> list[Incident]:
        at = at or self.now()
        return [i for i in self.incidents() if i.active(at)]

    def api_down(self, at: datetime | None = None) -> Incident | None:
        return next((i for i in self.active_incidents(at) if i.kind == "api_down"), None)

    def truth(self) -> dict[str, Any]:
        return {"seed": self.config.seed, "calls_per_hour": self.config.calls_per_hour,
                "flat": self.config.flat, "anchor": format_ts(self.anchor),
                "now": format_ts(self.now()), "scenario": self.config.scenario_source,
                "data_faults": self.config.data_faults.model_dump(),
                "incidents": [i.truth() for i in self.incidents()],
                "actions": [a.view(time.time(), self.actions.duration_s)
                            for a in self.actions.all()]}

    # -- hours -----------------------------------------------------------------------------
    def hour_batch(self, hour: int) -> HourBatch:
        with self._lock:
            self._refresh()
            effects = self._effects.for_hour(hour)
            ends = tuple((i.name, i.end) for i in self._effective_incidents)
            key = (hour, effects, ends)
            batch = self._cache.get(key)
            if batch is not None:
                self._cache.move_to_end(key)
                return batch
            cfg = self.config
            # Generated under the lock: two requests for one new hour generate it once.
            batch = generate_hour(hour, seed=cfg.seed, calls_per_hour=cfg.calls_per_hour,
                                  flat=cfg.flat, data_faults=cfg.data_faults,
                                  incidents=self._effective_incidents, effects=effects)
            self._cache[key] = batch
            while len(self._cache) > cfg.hour_cache_size:
                self._cache.popitem(last=False)
            return batch

    def _scan(self, start: datetime, end: datetime, after: Position | None, now: datetime,
              need: int | None) -> list[tuple[HourBatch, np.ndarray]]:
        """(batch, positions) of visible records in [start, end) after ``after``, in order."""
        start_us, end_us = to_us(start), to_us(end)
        start_ms = -(-start_us // 1000)  # a ts (whole ms) is >= start iff >= ceil(start)
        end_ms = -(-end_us // 1000)
        now_ms = to_ms(now)
        out: list[tuple[HourBatch, np.ndarray]] = []
        first = start_ms // HOUR_MS
        last = (end_ms - 1) // HOUR_MS
        first = max(first, 0)  # the platform has no calls before 1970
        if after is not None:
            first = max(first, after[0])
        for hour in range(first, last + 1):
            hs = hour * HOUR_MS
            if hs > now_ms or (need is not None and need <= 0):
                break  # nothing in a future hour is visible yet
            b = self.hour_batch(hour)
            lo = int(np.searchsorted(b.key, b.ts_key(max(start_ms - hs, 0))))
            hi = int(np.searchsorted(b.key, b.ts_key(min(end_ms - hs, HOUR_MS))))
            if after is not None and after[0] == hour:
                lo = max(lo, int(np.searchsorted(b.key, after[1], side="right")))
            now_local = now_ms - hs
            while lo < hi and (need is None or need > 0):
                step = hi if need is None else min(hi, lo + max(2 * need, 8192))
                pos = np.flatnonzero(b.visible[lo:step] <= now_local) + lo
                if need is not None:
                    pos = pos[:need]
                    need -= len(pos)
                if len(pos):
                    out.append((b, pos))
                lo = step
        return out

    def page(self, start: datetime, end: datetime, limit: int, after: Position | None = None,
             now: datetime | None = None) -> Page:
        now = now or self.now()
        parts = self._scan(start, end, after, now, limit + 1)
        total = sum(len(p) for _, p in parts)
        more = total > limit
        if more:  # drop the look-ahead record
            b, pos = parts[-1]
            parts[-1] = (b, pos[:-1])
        records: list[dict[str, Any]] = []
        last: Position | None = None
        for b, pos in parts:
            if len(pos):
                records.extend(build_records(b, pos))
                last = (b.hour, int(b.key[pos[-1]]))
        return Page(records, last if more else None)

    def served_with_truth(self, start: datetime, end: datetime,
                          now: datetime | None = None) -> list[ServedRecord]:
        """Every record the API would serve for [start, end) at ``now``, with ground truth."""
        now = now or self.now()
        window = (to_ms(start), to_ms(end))
        out: list[ServedRecord] = []
        for b, pos in self._scan(start, end, None, now, None):
            out.extend(truth_for(b, pos, build_records(b, pos), window))
        return out

    def records(self, start: datetime, end: datetime,
                now: datetime | None = None) -> list[dict[str, Any]]:
        return [s.record for s in self.served_with_truth(start, end, now)]

    # -- GPUs -------------------------------------------------------------------------------
    def gpu_metrics(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """Per GPU at ``now``: utilisation follows the node's calls in the last 5 minutes."""
        now = now or self.now()
        now_ms = to_ms(now)
        window_ms = 5 * 60_000
        counts = dict.fromkeys(GPU_NODES, 0)
        hour_total = 0
        node_total: dict[str, int] = {}
        for hour in sorted({(now_ms - window_ms) // HOUR_MS, now_ms // HOUR_MS}):
            b = self.hour_batch(hour)
            ts_abs = b.cols["ts"].astype(np.int64) + b.start_ms
            node = b.cols["gpu_node"]
            recent = (ts_abs > now_ms - window_ms) & (ts_abs <= now_ms)
            for i, name in enumerate(GPU_NODES):
                counts[name] += int(np.count_nonzero(recent & (node == i)))
            if hour == now_ms // HOUR_MS:
                # The reference is ordinary traffic: a service account's batch adds load, it
                # does not move the yardstick.
                ordinary = b.cols["user"] < N_USERS
                hour_total = int(np.count_nonzero(ordinary))
                node_total = {n: int(np.count_nonzero(ordinary & (node == i)))
                              for i, n in enumerate(GPU_NODES)}
        saturated = {i.slice.get("gpu_node"): i for i in self.active_incidents(now)
                     if i.kind == "gpu_saturation"}
        minute = now_ms // 60_000
        out = []
        for ni, (name, n_gpus) in enumerate(GPU_NODES.items()):
            model = next((m for m in MODELS if name in m.gpu_nodes), None)
            # Reference load: this node's share of an average hour's calls, per 5 minutes.
            share = (node_total[name] / hour_total) if hour_total else 0.0
            ref = self.config.calls_per_hour * share / 12.0
            # Batched inference smooths load: a GPU follows the hour's traffic more than the
            # chance count of a few calls in the last 5 minutes (about 8 per node at the
            # average rate, so the raw count swings by a third).
            last_5m = counts[name] / ref if ref > 0 else 0.0
            hourly = node_total[name] / 12.0 / ref if ref > 0 else 0.0
            load = 0.25 * last_5m + 0.75 * hourly
            rng = np.random.default_rng([self.config.seed, minute, ni])
            noise = rng.uniform(-4.0, 4.0, n_gpus)
            for g in range(n_gpus):
                if name in saturated:
                    util = float(np.clip(saturated[name].params.utilization_pct
                                         + noise[g] / 3.0, 97.0, 100.0))
                else:
                    # A healthy fleet keeps headroom: the weekday afternoon peak (1.8x the
                    # weekly mean) runs at about 72%, below the 80% warning line.
                    util = float(np.clip(8.0 + 36.0 * load + noise[g], 1.0, 93.0))
                weights = model.weights_mb if model else 0
                mem = weights + (GPU_MEMORY_MB - weights - 2048) * util / 100.0 * 0.9
                out.append({"node": name, "gpu_index": g, "utilization_pct": round(util, 1),
                            "memory_used_mb": round(mem), "memory_total_mb": GPU_MEMORY_MB,
                            "temperature_c": round(float(34.0 + 0.5 * util + noise[g] / 2.0), 1),
                            "ts": format_ts(now)})
        return out

    # -- actions ----------------------------------------------------------------------------
    def create_action(self, body: Any, idempotency_key: str,
                      now: datetime | None = None) -> tuple[Action, bool]:
        return self.actions.create(body, idempotency_key, now or self.now())

    def action_view(self, action_id: str, wall_now: float) -> dict[str, Any] | None:
        a = self.actions.get(action_id)
        return None if a is None else a.view(wall_now, self.actions.duration_s)

