"""The Slack sink's fault injection (used by the delivery tests)."""

from __future__ import annotations

import http.client
from urllib.parse import urlsplit

import pytest
import requests

from tests.helpers.alerts import set_faults, sink_messages

HOOK = "/services/T000/B000/XXXX"


def test_faults_apply_in_order_for_their_count_then_the_sink_is_normal(sink):
    set_faults(sink, {"mode": "rate_limit", "count": 2, "retry_after": 7},
               {"mode": "invalid_webhook", "status": 403})
    listed = requests.get(sink + "/_faults", timeout=5).json()["faults"]
    assert [(f["mode"], f["count"]) for f in listed] == [("rate_limit", 2), ("invalid_webhook", 1)]
    answers = [requests.post(sink + HOOK, json={"text": str(i)}, timeout=5) for i in range(4)]
    assert [(r.status_code, r.text) for r in answers] == [
        (429, "rate_limited"), (429, "rate_limited"), (403, "invalid_token"), (200, "ok")]
    assert answers[0].headers["Retry-After"] == "7"
    assert [m["body"]["text"] for m in sink_messages(sink)] == ["3"]  # faulted ones not stored
    assert requests.get(sink + "/_faults", timeout=5).json()["faults"] == []


def test_path_filter_and_clear(sink):
    set_faults(sink, {"mode": "server_error", "count": None, "path": "/services/CRIT",
                      "status": 503})
    assert requests.post(sink + "/services/CRIT/x", json={}, timeout=5).status_code == 503
    assert requests.post(sink + "/services/CRIT/x", json={}, timeout=5).status_code == 503
    assert requests.post(sink + HOOK, json={}, timeout=5).status_code == 200
    requests.delete(sink + "/_faults", timeout=5).raise_for_status()
    assert requests.post(sink + "/services/CRIT/x", json={}, timeout=5).status_code == 200


def test_disconnect_closes_without_an_answer(sink):
    set_faults(sink, {"mode": "disconnect"})
    netloc = urlsplit(sink).netloc
    conn = http.client.HTTPConnection(netloc, timeout=5)
    conn.request("POST", HOOK, body=b"{}", headers={"Content-Type": "application/json"})
    with pytest.raises(http.client.RemoteDisconnected):
        conn.getresponse()
    conn.close()
    assert sink_messages(sink) == []


@pytest.mark.parametrize(("rule", "problem"), [
    ({"mode": "explode"}, "mode"),
    ({"mode": "invalid_webhook", "status": 500}, "status for invalid_webhook"),
    ({"mode": "slow", "delay_s": -1}, "delay_s"),
    ({"mode": "rate_limit", "count": 0}, "count"),
])
def test_bad_fault_rules_are_refused_with_the_reason(sink, rule, problem):
    resp = requests.post(sink + "/_faults", json=rule, timeout=5)
    assert resp.status_code == 400 and problem in resp.json()["error"]
    assert requests.get(sink + "/_faults", timeout=5).json()["faults"] == []
