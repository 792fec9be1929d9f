"""The DAG tasks' platform client (``airflow_adapters.resources.platform_client``): the
Airflow connection, the environment fallback, masking; the one base-URL parser."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from promptops.airflow_adapters.connections import base_url_from_connection
from promptops.airflow_adapters.resources import platform_client
from promptops.errors import PlatformNotConfigured
from promptops.settings import Settings


@pytest.fixture()
def settings(tmp_path) -> Settings:
    return Settings(state_dir=tmp_path / "state", breaker_failure_threshold=3,
                    breaker_cooldown_s=42, max_retries=2, read_timeout_s=7)


@pytest.fixture(autouse=True)
def no_platform_env(monkeypatch):
    for name in ("AIRFLOW_CONN_PROMPT_PLATFORM", "PROMPT_API_KEY", "PROMPTOPS_PLATFORM_URL"):
        monkeypatch.delenv(name, raising=False)


def test_from_the_airflow_connection(monkeypatch, settings):
    monkeypatch.setenv("AIRFLOW_CONN_PROMPT_PLATFORM", json.dumps(
        {"conn_type": "http", "host": "platform.internal", "port": 8700, "schema": "https",
         "password": "sk-canary-CONN-1234"}))
    monkeypatch.setenv("PROMPT_API_KEY", "sk-canary-ENV-1234")  # the connection wins
    client = platform_client(settings=settings)
    assert client.base_url == "https://platform.internal:8700"
    assert client._auth._header == "Bearer sk-canary-CONN-1234"
    assert client.timeout == (5.0, 7)
    assert client.max_retries == 2
    assert client.breaker is not None and client.breaker.name == "prompt_platform"
    assert client.breaker.failure_threshold == 3 and client.breaker.cooldown_s == 42
    assert client.breaker.store.directory == settings.state_dir / "breakers"
    assert "sk-canary" not in repr(client)

    from airflow.sdk.log import _secrets_masker

    assert "sk-canary-CONN-1234" not in _secrets_masker().redact("key sk-canary-CONN-1234")


def test_env_key_when_the_connection_has_no_password(monkeypatch, settings):
    monkeypatch.setenv("AIRFLOW_CONN_PROMPT_PLATFORM", json.dumps(
        {"conn_type": "http", "host": "http://10.0.0.5:8700/api/"}))
    monkeypatch.setenv("PROMPT_API_KEY", "sk-canary-ENV-5678")
    client = platform_client(settings=settings)
    assert client.base_url == "http://10.0.0.5:8700/api"
    assert client._auth._header == "Bearer sk-canary-ENV-5678"

    from airflow.sdk.log import _secrets_masker

    assert "sk-canary-ENV-5678" not in _secrets_masker().redact("key sk-canary-ENV-5678")


def test_environment_only_when_there_is_no_connection(monkeypatch, settings):
    monkeypatch.setenv("PROMPT_API_KEY", "sk-canary-ENV-9999")
    monkeypatch.setenv("PROMPTOPS_PLATFORM_URL", "http://localhost:8700/")
    client = platform_client(settings=settings)
    assert client.base_url == "http://localhost:8700"


def test_nothing_configured_says_what_to_set(monkeypatch, settings):
    monkeypatch.setenv("PROMPTOPS_PLATFORM_URL", "http://localhost:8700")
    with pytest.raises(PlatformNotConfigured, match="PROMPT_API_KEY"):
        platform_client(settings=settings)
    monkeypatch.delenv("PROMPTOPS_PLATFORM_URL")
    monkeypatch.setenv("PROMPT_API_KEY", "sk-canary-ENV-0000")
    with pytest.raises(PlatformNotConfigured, match="PROMPTOPS_PLATFORM_URL") as info:
        platform_client(settings=settings)
    assert "sk-canary" not in str(info.value)


@pytest.mark.parametrize("conn, url", [
    (dict(host="plat", port=None, schema=None, conn_type="http"), "http://plat"),
    (dict(host="plat", port=443, schema="https", conn_type="http"), "https://plat:443"),
    (dict(host="plat", port=8700, schema="", conn_type="https"), "https://plat:8700"),
    (dict(host="https://plat.example.com", port=8443, schema=None, conn_type="http"),
     "https://plat.example.com:8443"),
    (dict(host="https://plat.example.com:9000/v", port=8443, schema=None, conn_type="http"),
     "https://plat.example.com:9000/v"),
    (dict(host="", port=None, schema=None, conn_type="http"), None),
])
def test_base_url_from_connection(conn, url):
    assert base_url_from_connection(SimpleNamespace(**conn)) == url
