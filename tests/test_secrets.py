"""One redaction for every message we build, one registration with Airflow's masker."""

from __future__ import annotations

import logging

# Airflow configures logging (replacing the root's handlers) when its log module is first
# imported: import it now, not in the middle of a test whose log records are checked.
from airflow.sdk.log import _secrets_masker

from promptops.airflow_adapters import connections
from promptops.secrets import redact


def test_redact_blanks_the_longest_secret_first_and_ignores_empty_ones():
    text = "url https://hooks.example/T1/B1/tok3n42 token T1/B1/tok3n42"
    assert redact(text, {"T1/B1/tok3n42", "https://hooks.example/T1/B1/tok3n42", ""}) == \
        "url *** token ***"
    assert redact("nothing here", []) == "nothing here"


def test_airflows_masker_is_registered_and_never_raises(monkeypatch, caplog):
    connections.mask_secret("sk-canary-MASK-4242", "the test key")
    assert "sk-canary-MASK-4242" not in _secrets_masker().redact("key sk-canary-MASK-4242")

    def broken(secret):
        raise RuntimeError(secret)

    monkeypatch.setattr(connections, "_airflow_mask_secret", broken)
    caplog.set_level(logging.WARNING, logger=connections.__name__)
    connections.mask_secret("sk-canary-MASK-0000", "the test key")
    assert "could not register the test key with Airflow's secret masker (RuntimeError)" \
        in caplog.text
    assert "sk-canary-MASK-0000" not in caplog.text
