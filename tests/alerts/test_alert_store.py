"""The state store: versioned commits with exclusive create, claims, an fsspec backend, and
what the engine does when the store is unreachable (notify anyway)."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from promptops.alerts.store import AlertStore, FsspecBlobStore, StateConflict, StoreUnavailable
from promptops.lake.store import Lake
from tests.helpers.alerts import T0, engine, finding, sink_messages
from tests.helpers.lake import writes_wait_for_each_other


def _memory_blobs(name: str) -> FsspecBlobStore:
    """The fsspec backend on fsspec's in-memory filesystem (Airflow's ObjectStoragePath only
    knows the schemes of installed providers, so this goes through universal_pathlib)."""
    from upath import UPath

    return FsspecBlobStore(UPath(f"memory://promptops-tests/{name}"))


@pytest.mark.parametrize("backend", ["file", "fsspec"])
def test_versions_commit_once_and_claims_are_exclusive(tmp_path, backend):
    blobs = _memory_blobs(tmp_path.name) if backend == "fsspec" else None
    store = AlertStore(Lake(f"file://{tmp_path}/lake"), "hourly", blobs=blobs)
    assert store.load().seq == 0 and store.load().doc is None
    store.commit(1, {"n": 1})
    with pytest.raises(StateConflict):
        store.commit(1, {"n": "other writer"})
    store.commit(2, {"n": 2})
    assert store.load().seq == 2 and store.load().doc == {"n": 2}
    assert store.claim("abc", 0, {"run_id": "one"})
    assert not store.claim("abc", 0, {"run_id": "two"})
    assert store.read_claim("abc", 0)["run_id"] == "one"
    assert store.claim("abc", 1, {"run_id": "two"})
    assert store.prune_claims(older_than_s=3600) == 0
    assert store.prune_claims(older_than_s=-1) == 2


def test_old_versions_are_pruned(tmp_path):
    store = AlertStore(Lake(f"file://{tmp_path}"), "hourly")
    for seq in range(1, 8):
        store.commit(seq, {"seq": seq}, keep=3)
    names = sorted(p.name for p in (tmp_path / "alert_state" / "hourly" / "state").iterdir())
    assert names == ["000000000005.json", "000000000006.json", "000000000007.json"]
    assert store.load().doc == {"seq": 7}


def test_engine_on_an_fsspec_store(sink, lake, tmp_path):
    """The non-local code path (fsspec "xb" create), on fsspec's in-memory filesystem."""
    blobs = _memory_blobs(f"engine-{tmp_path.name}")
    store = AlertStore(Lake(lake), "hourly", blobs=blobs)
    out = engine(lake, store=store).evaluate([finding()], T0, run_id="r0")
    assert [n.status for n in out.notifications] == ["sent"]
    store2 = AlertStore(Lake(lake), "hourly", blobs=_memory_blobs(f"engine-{tmp_path.name}"))
    assert engine(lake, store=store2).evaluate([finding()], T0, run_id="again").replay == "same"
    assert len(sink_messages(sink)) == 1
    assert store.read_alert_log(T0, T0 + timedelta(hours=1)).num_rows == 1


def _break(lake_dir: Path) -> None:
    """Make the state store unreachable: its folder becomes a plain file."""
    shutil.rmtree(lake_dir / "alert_state", ignore_errors=True)
    lake_dir.mkdir(parents=True, exist_ok=True)
    (lake_dir / "alert_state").write_text("not a folder")


def test_unreachable_store_raises_a_clear_error(tmp_path):
    _break(tmp_path)
    store = AlertStore(Lake(f"file://{tmp_path}"), "hourly")
    with pytest.raises(StoreUnavailable, match="could not read the state.*reachable"):
        store.load()


def test_store_unreachable_notifies_anyway_then_recovers(sink, tmp_path, caplog):
    lake_dir = tmp_path / "lake"
    lake = f"file://{lake_dir}"
    f = finding()
    engine(lake).evaluate([finding(rule="old")], T0, run_id="r0")  # some state exists
    assert len(sink_messages(sink)) == 1

    saved = tmp_path / "saved_state"
    shutil.move(lake_dir / "alert_state", saved)
    _break(lake_dir)
    out = engine(lake).evaluate([f], T0 + timedelta(hours=1), run_id="r1")
    assert out.degraded and [n.status for n in out.notifications] == ["sent"]
    assert out.notifications[0].recorded is False
    assert any("unreachable" in w or "could not" in w for w in out.warnings)
    assert "notifying without state" in caplog.text
    assert len(sink_messages(sink)) == 2  # at-least-once: the alert went out

    # The store is back (the old state): the same alert is posted again, nothing is lost.
    (lake_dir / "alert_state").unlink()
    shutil.move(saved, lake_dir / "alert_state")
    out = engine(lake).evaluate([f], T0 + timedelta(hours=2), run_id="r2")
    assert not out.degraded
    assert {n.reason for n in out.notifications} == {"new", "resolved"}



def _log_row(at, fingerprint: str, event: str, delivery: str = "sent") -> dict:
    return {"evaluated_at": at, "scope": "health", "run_id": f"run-{at:%H%M}",
            "fingerprint": fingerprint, "rule": "token_burst_5m", "severity": "critical",
            "labels": {"slice": fingerprint}, "event": event, "delivery": delivery,
            "notification_id": f"n-{fingerprint}-{at:%H%M}"}


def test_overlapping_writers_keep_every_alert_log_row_once(tmp_path, monkeypatch):
    """Two health evaluations of one hour written by overlapping runs (a backfill next to
    the schedule): each has read what it reads before either writes."""
    import threading

    writes_wait_for_each_other(monkeypatch)

    store = AlertStore(Lake(f"file://{tmp_path}"), "health")
    first, second = T0 + timedelta(minutes=5), T0 + timedelta(minutes=10)
    batches = {first: [_log_row(first, "a", "fired"), _log_row(first, "b", "fired")],
               second: [_log_row(second, "a", "firing"), _log_row(second, "c", "fired")]}
    writers = [threading.Thread(target=store.write_alert_log, args=(at, rows))
               for at, rows in batches.items()]
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=120)
    monkeypatch.undo()

    def logged():
        table = store.read_alert_log(T0, T0 + timedelta(hours=1))
        return [(r["evaluated_at"], r["fingerprint"], r["event"], r["delivery"])
                for r in table.to_pylist()]

    assert logged() == [(first, "a", "fired", "sent"), (first, "b", "fired", "sent"),
                        (second, "a", "firing", "sent"), (second, "c", "fired", "sent")]
    # A rerun of an evaluation (a retried delivery) replaces its rows, keeping the others.
    store.write_alert_log(first, [_log_row(first, "a", "fired"),
                                  _log_row(first, "b", "fired", delivery="failed")])
    assert logged() == [(first, "a", "fired", "sent"), (first, "b", "fired", "failed"),
                        (second, "a", "firing", "sent"), (second, "c", "fired", "sent")]
