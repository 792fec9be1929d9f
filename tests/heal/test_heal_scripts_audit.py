"""Custom playbook scripts (allowlist, argv, timeout) and the audit round trip in the lake."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest

from promptops.heal.audit import AUDIT_DATASET, AuditRecord, read_audit, write_audit
from promptops.heal.policy import HealConfError, run_script
from promptops.lake.store import Lake


def _script(folder, name, body):
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def test_shipped_example_script():
    r = run_script("drain_node.sh", ["node-1"], timeout_s=20)
    assert r.ok and "would drain node node-1" in r.stdout


def test_args_are_argv_not_shell(tmp_path):
    _script(tmp_path, "echo_args.sh", 'for a in "$@"; do echo "[$a]"; done')
    marker = tmp_path / "pwned"
    r = run_script("echo_args.sh", ["a b", f"; touch {marker}", "$(id)"], timeout_s=20,
                   script_dir=tmp_path)
    assert r.ok
    assert r.stdout.splitlines() == ["[a b]", f"[; touch {marker}]", "[$(id)]"]
    assert not marker.exists()


def test_exit_code_and_stderr_captured(tmp_path):
    _script(tmp_path, "fail.sh", "echo oops >&2; exit 3")
    r = run_script("fail.sh", [], timeout_s=20, script_dir=tmp_path)
    assert r.returncode == 3 and not r.ok and r.stderr == "oops\n" and not r.timed_out


def test_secrets_not_inherited(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMPT_API_KEY", "sk-secret-value")
    _script(tmp_path, "env.sh", "env")
    r = run_script("env.sh", timeout_s=20, script_dir=tmp_path)
    assert "sk-secret-value" not in r.stdout


def test_timeout_kills_script_and_children(tmp_path):
    # The child sleep holds the output pipe; the timeout must not wait for it.
    _script(tmp_path, "hang.sh", "echo started; sleep 60 & sleep 60")
    r = run_script("hang.sh", timeout_s=0.5, script_dir=tmp_path)
    assert r.timed_out and r.returncode is None and not r.ok
    assert r.stdout == "started\n"


@pytest.mark.parametrize("name", ["../outside.sh", "/bin/sh", "sub/../../outside.sh"])
def test_names_outside_allowlist(tmp_path, name):
    folder = tmp_path / "playbooks"
    folder.mkdir()
    _script(tmp_path, "outside.sh", "echo escaped")
    with pytest.raises(HealConfError, match="outside the allowlisted folder|absolute paths"):
        run_script(name, script_dir=folder)


def test_symlink_escaping_folder(tmp_path):
    folder = tmp_path / "playbooks"
    folder.mkdir()
    outside = _script(tmp_path, "outside.sh", "echo escaped")
    os.symlink(outside, folder / "link.sh")
    with pytest.raises(HealConfError, match="outside the allowlisted folder"):
        run_script("link.sh", script_dir=folder)


def test_missing_and_not_executable(tmp_path):
    _script(tmp_path, "ok.sh", "true")
    (tmp_path / "plain.sh").write_text("#!/bin/sh\ntrue\n")
    with pytest.raises(HealConfError, match="not found.*available: ok.sh, plain.sh"):
        run_script("nope.sh", script_dir=tmp_path)
    with pytest.raises(HealConfError, match="not executable"):
        run_script("plain.sh", script_dir=tmp_path)


T0 = datetime(2025, 3, 4, 12, 10, tzinfo=UTC)


def _rec(key, at, **kw):
    base = dict(idempotency_key=key, requested_at=at, action="rate_limit", target="user-001",
                decision="auto_approved", dry_run=False, run_id="manual__1", step="1",
                params={"requests_per_minute": 60, "ttl_minutes": 60}, reason="flood",
                requested_by="health_dag", alert_fingerprint="0123456789abcdef")
    return AuditRecord(**{**base, **kw})


def test_audit_round_trip_and_dedupe(tmp_path):
    lake = Lake(f"file://{tmp_path / 'lake'}")
    first = _rec("k1", T0)
    write_audit(lake, first)
    write_audit(lake, _rec("k2", T0 + timedelta(minutes=5), target="user-002"))
    write_audit(lake, _rec("k3", T0 + timedelta(hours=1)))
    # The same heal, now finished: replaces its record, keeps the others of that hour.
    done = _rec("k1", T0, action_id="act-1", platform_status="succeeded",
                verification="recovered", finished_at=T0 + timedelta(minutes=7))
    write_audit(lake, done)

    assert lake.list_partitions(AUDIT_DATASET) == [T0.replace(minute=0),
                                                   T0.replace(minute=0) + timedelta(hours=1)]
    got = read_audit(lake, T0 - timedelta(hours=1), T0 + timedelta(hours=2))
    assert [r.idempotency_key for r in got] == ["k1", "k2", "k3"]
    assert got[0] == done
    assert got[0].params == {"requests_per_minute": 60, "ttl_minutes": 60}
    assert got[0].counts_as_action and not got[1].counts_as_action
    # The window is [start, end) on the request time, not whole partitions.
    assert [r.idempotency_key for r in read_audit(lake, T0 + timedelta(minutes=1),
                                                  T0 + timedelta(hours=1))] == ["k2"]
    assert read_audit(lake, T0 - timedelta(days=2), T0 - timedelta(days=1)) == []
