"""Detection quality: a labelled multi-week simulation run through the hourly and daily
analysis (the library, no scheduler), scored against the simulator's incident truth.

    python bench/detection.py [--history-days 14] [--calls-per-hour 2000] [--keep DIR]

Two weeks of ordinary traffic first (the baselines and the root-cause model learn from
them), then a week with one incident of each kind plus a holiday dip (not an incident).
Every hour: generate the hour (in-process simulator, the same generator the HTTP server
serves), validate, write the partition, compute metrics, evaluate rules + Holt-Winters
bands + root cause, run the alert engine with a recording notifier. Every midnight of the
evaluated week: refit baselines and retrain the IsolationForest, as the daily DAG does.

Prints per incident kind: detected, hours to detect, the root cause found against the
truth; overall precision, recall, root-cause top-1 accuracy, pages per week outside
incidents and pages during the holiday dip.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from promptops.alerts.config import load_alerting_config
from promptops.alerts.engine import AlertEngine, Delivery, Notification
from promptops.alerts.store import AlertStore
from promptops.contracts.datasets import CALLS
from promptops.contracts.records import validate_page
from promptops.detection.anomaly_model import NotEnoughData, train
from promptops.detection.baselines import refit_baselines
from promptops.lake.store import Lake
from promptops.metrics.pricing import load_price_table
from promptops.pipelines.hourly import analyse_hour, findings_for_hour
from promptops.simulator import Platform, SimConfig

START = datetime(2026, 9, 7, tzinfo=UTC)  # a Monday

#: (kind, day of the evaluated week, start hour, hours, slice, params); day 0 = first day
#: after the history.
INCIDENTS = [
    ("error_burst", 0, 10, 2, {"model": "claude-3-5-sonnet"}, {"error_rate": 0.3}),
    ("latency_spike", 0, 20, 1, {"region": "eu-west-1"}, {"multiplier": 4.0}),
    ("user_flood", 1, 9, 1, {"user_id": "user-042"}, {"calls_per_minute": 300}),
    ("token_surge", 1, 15, 2, {"app": "code-assistant"}, {"multiplier": 4.0}),
    ("intent_drop", 2, 11, 2, {"prompt_template": "support_triage"},
     {"accuracy": 0.7, "version": "v3"}),
    ("relevance_drop", 3, 14, 2, {"app": "search-qa"}, {"mean": 2.8}),
    ("gpu_saturation", 4, 13, 1, {"gpu_node": "gpu-node-02"}, {}),
    ("api_down", 5, 16, 1, {}, {"record_error_rate": 0.5}),
]
HOLIDAY = ("traffic_dip", 6, 0, 24, {}, {"multiplier": 0.4})
#: Simulator slice keys -> our metric dimensions.
DIMENSION_OF = {"user_id": "user", "prompt_template": "template"}
#: Alerts fired this long after an incident's end still belong to it (keep-firing, lag).
GRACE = timedelta(hours=2)


@dataclass
class Incident:
    kind: str
    start: datetime
    end: datetime
    slice: dict[str, str]
    fired: list[tuple[datetime, dict]] = field(default_factory=list)

    @property
    def truth(self) -> str:
        if not self.slice:
            return "overall"
        return "&".join(f"{DIMENSION_OF.get(k, k)}={v}" for k, v in self.slice.items())

    def covers(self, at: datetime) -> bool:
        return self.start < at <= self.end + GRACE


class Recorder:
    """A notifier that keeps what would have been posted."""

    def __init__(self) -> None:
        self.sent: list[Notification] = []

    def deliver(self, notification: Notification) -> Delivery:
        self.sent.append(notification)
        return Delivery(ok=True, connection_id="recorder")


def scenario(history_days: int, calls_per_hour: int, seed: int) -> tuple[dict, list[Incident]]:
    first = START + timedelta(days=history_days)
    specs, incidents = [], []
    for i, (kind, day, hour, hours, slc, params) in enumerate([*INCIDENTS, HOLIDAY]):
        start = first + timedelta(days=day, hours=hour)
        end = start + timedelta(hours=hours)
        specs.append({"name": f"{kind}-{i}", "kind": kind, "start": start.isoformat(),
                      "end": end.isoformat(), "slice": slc, "params": params})
        incidents.append(Incident(kind, start, end, slc))
    doc = {"seed": seed, "calls_per_hour": calls_per_hour,
           "data_faults": {"malformed_rate": 0.0, "duplicate_rate": 0.0, "late_rate": 0.0},
           "incidents": specs, "faults": []}
    return doc, incidents


def cause_of(alert: dict) -> str:
    """Our top-1 root cause for a fired alert: the localised set if there is one, else the
    alert's own slice."""
    located = (alert.get("annotations") or {}).get("root_cause_set")
    if located:
        return located.split(";")[0]
    labels = alert.get("labels", {})
    if labels.get("dimension") in (None, "overall"):
        return "overall"
    return f"{labels['dimension']}={labels['slice']}"


def matches(found: str, truth: str) -> bool:
    """Exactly the truth's dimensions and values (a more or less specific set is wrong);
    ``*`` (everything moved alike) is the right answer for a platform-wide incident."""
    if truth == "overall":
        return found in ("overall", "*", "")
    want = dict(part.split("=", 1) for part in truth.split("&"))
    got = dict(part.split("=", 1) for part in found.split("&") if "=" in part)
    # A template slice is "name@version": the template's name is the truth.
    return set(got) == set(want) and all(
        got[k] == v or got[k].split("@")[0] == v for k, v in want.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--history-days", type=int, default=14)
    ap.add_argument("--calls-per-hour", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--keep", type=Path, help="keep the lake in this folder")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    for name in ("promptops", "airflow"):
        logging.getLogger(name).setLevel(logging.ERROR)

    work = Path(tempfile.mkdtemp(prefix="promptops-detection-"))
    lake_dir = args.keep or work / "lake"
    doc, incidents = scenario(args.history_days, args.calls_per_hour, args.seed)
    scenario_file = work / "scenario.yaml"
    scenario_file.write_text(yaml.safe_dump(doc))
    platform = Platform(SimConfig.build(scenario_file))
    lake = Lake(f"file://{lake_dir}")
    prices = load_price_table()
    recorder = Recorder()
    config = load_alerting_config().model_copy(update={"silences_file": None,
                                                       "silences_variable": ""})
    engine = AlertEngine(config, AlertStore(lake, scope="detection"), recorder, silences=[])

    evaluated_from = START + timedelta(days=args.history_days)
    end = evaluated_from + timedelta(days=7)
    truth_now = end + timedelta(days=1)  # every late record delivered
    timings = {"generate+ingest": 0.0, "metrics": 0.0, "evaluate": 0.0, "daily": 0.0}
    fired_outside: list[tuple[datetime, dict]] = []
    hour = START
    began = time.perf_counter()
    while hour < end:
        t0 = time.perf_counter()
        served = platform.served_with_truth(hour, hour + timedelta(hours=1), now=truth_now)
        page = validate_page([s.record for s in served], hour, hour + timedelta(hours=1))
        lake.write_partition(CALLS, hour, page.good)
        t1 = time.perf_counter()
        analyse_hour(lake, hour, prices=prices)
        t2 = time.perf_counter()
        timings["generate+ingest"] += t1 - t0
        timings["metrics"] += t2 - t1
        if hour >= evaluated_from:
            if hour.hour == 0:  # the daily run for the day that just ended
                t = time.perf_counter()
                refit_baselines(lake, hour)
                try:
                    train(lake, hour - timedelta(days=1))
                except NotEnoughData as exc:
                    print(f"  model not trained: {exc}")
                timings["daily"] += time.perf_counter() - t
            t = time.perf_counter()
            now = hour + timedelta(hours=1)
            findings = findings_for_hour(lake, hour, prices=prices)
            outcome = engine.evaluate(findings, now, run_id=f"bench-{hour:%Y%m%dT%H}")
            timings["evaluate"] += time.perf_counter() - t
            for alert in outcome.firing:
                if alert.get("fired_at") != now.isoformat() or alert.get("muted_by"):
                    continue
                owner = next((i for i in incidents if i.kind != "traffic_dip"
                              and i.covers(now)), None)
                if owner is not None:
                    owner.fired.append((now, alert))
                else:
                    fired_outside.append((now, alert))
        hour += timedelta(hours=1)
        if hour.hour == 0:
            day = (hour - START).days
            print(f"  day {day:2d} done ({time.perf_counter() - began:6.1f} s)", flush=True)

    print_results(incidents, fired_outside, recorder.sent, evaluated_from, end)
    print("\ntime: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
          + f"; total {time.perf_counter() - began:.1f} s")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


def print_results(incidents: list[Incident], fired_outside: list, sent: list[Notification],
                  evaluated_from: datetime, end: datetime) -> None:
    real = [i for i in incidents if i.kind != "traffic_dip"]
    holiday = next(i for i in incidents if i.kind == "traffic_dip")
    print(f"\n{'incident':16} {'window (UTC)':24} {'detected':>8} {'hours':>5}  "
          f"{'root cause found':45} truth")
    detected = correct = 0
    for inc in real:
        if not inc.fired:
            print(f"{inc.kind:16} {inc.start:%a %H:%M}-{inc.end:%H:%M}{'':10} {'no':>8} "
                  f"{'-':>5}  {'-':45} {inc.truth}")
            continue
        detected += 1
        first = min(t for t, _ in inc.fired)
        at_first = [a for t, a in inc.fired if t == first]
        # The most severe, most specific alert of the first detecting run names the cause.
        at_first.sort(key=lambda a: (a.get("severity") != "critical",
                                     a.get("labels", {}).get("dimension") == "overall"))
        found = cause_of(at_first[0])
        ok = matches(found, inc.truth)
        correct += ok
        lag = (first - inc.start) / timedelta(hours=1)
        print(f"{inc.kind:16} {inc.start:%a %H:%M}-{inc.end:%H:%M}{'':10} {'yes':>8} "
              f"{lag:5.1f}  {found[:44]:45} {inc.truth} {'✓' if ok else '✗'}")
    inside = sum(len(i.fired) for i in real)
    precision = inside / max(1, inside + len(fired_outside))
    weeks = (end - evaluated_from) / timedelta(days=7)

    def is_page(n: Notification) -> bool:
        return n.reason == "new" and n.severity == "critical"

    pages_outside = [n for n in sent if is_page(n)
                     and not any(i.covers(n.evaluated_at) for i in real)]
    holiday_pages = [n for n in pages_outside if holiday.start < n.evaluated_at
                     <= holiday.end + GRACE]
    firing_messages = [n for n in sent if n.reason in ("new", "repeat")]
    per_incident = [sum(1 for n in firing_messages if i.covers(n.evaluated_at)) for i in real]
    warnings_outside = [n for n in firing_messages if n.reason == "new"
                        and n.severity != "critical"
                        and not any(i.covers(n.evaluated_at) for i in real)]
    print(f"\nrecall              {detected}/{len(real)} = {detected / len(real):.0%}")
    print(f"precision           {inside}/{inside + len(fired_outside)} fired alerts inside "
          f"incident windows = {precision:.0%}")
    print(f"root cause top-1    {correct}/{max(1, detected)} = {correct / max(1, detected):.0%}")
    print(f"pages outside       {len(pages_outside) / weeks:.1f} per week "
          f"({len(pages_outside)} critical new messages)")
    print(f"holiday dip pages   {len(holiday_pages)}")
    print(f"messages/incident   {sum(per_incident) / max(1, len(real)):.1f} "
          f"(firing messages in each window: {per_incident})")
    print(f"warnings outside    {len(warnings_outside) / weeks:.1f} per week "
          f"({len(warnings_outside)} new non-critical messages)")
    if fired_outside:
        print("\nalerts fired outside incidents:")
        for t, a in fired_outside[:15]:
            print(f"  {t:%a %H:%M} {a.get('severity'):8} {a.get('rule')}: "
                  f"{a.get('summary', '')[:90]}")


if __name__ == "__main__":
    main()
