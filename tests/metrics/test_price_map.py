"""LiteLLM's full price map: billed as LiteLLM's own cost code bills, looked up as it looks
up, refreshed into the lake with a diff. The reference is litellm itself, run in its own
environment (.venv-litellm) as one subprocess for the whole table of cases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from promptops.lake.store import Lake
from promptops.metrics import price_map as pm
from promptops.metrics.pricing import OVERRIDES_ENV, load_price_table, unpriced_note

ROOT = Path(__file__).resolve().parents[2]

# (model as the call names it, provider, LiteLLM provider, prompt, completion, cached,
#  cache writes, latency ms)
CASES = [
    ("gpt-4o", "openai", "openai", 1200, 300, 400, 0, 800.0),
    ("gpt-4o-mini", "openai", "openai", 50_000, 2_000, 0, 0, 500.0),
    ("claude-sonnet-4-5", "anthropic", "anthropic", 10_000, 500, 2_000, 3_000, 900.0),
    ("claude-opus-4-6", "anthropic", "anthropic", 240_000, 700, 1_000, 1_500, 900.0),
    ("gemini-2.5-pro", "google", "gemini", 150_000, 1_000, 10_000, 0, 1200.0),   # below 200k
    ("gemini-2.5-pro", "google", "gemini", 250_000, 1_000, 10_000, 0, 1200.0),   # above 200k
    ("gemini-2.5-flash", "google", "gemini", 30_000, 800, 0, 0, 700.0),
    ("gpt-5", "openai", "openai", 300_000, 900, 5_000, 0, 3000.0),               # 272k tier
    ("mistral-large-latest", "mistral", "mistral", 3_000, 200, 0, 0, 400.0),
    ("deepseek/deepseek-chat", "deepseek", "deepseek", 3_000, 200, 1_000, 0, 400.0),
    ("dashscope/qwen-flash", "dashscope", "dashscope", 300_000, 2_000, 0, 0, 400.0),
    ("dashscope/qwen-flash", "dashscope", "dashscope", 1_000, 2_000, 0, 0, 400.0),
    ("bedrock/ap-northeast-1/1-month-commitment/anthropic.claude-v1", "bedrock", "bedrock",
     1_000, 100, 0, 0, 2500.0),                                                   # per second
    ("anthropic.claude-3-5-sonnet-20240620-v1:0", "aws.bedrock", "bedrock", 2_000, 100, 0, 0,
     900.0),
    ("perplexity/sonar-medium-online", "perplexity", "perplexity", 1_000, 100, 0, 0, 300.0),
]
#: LiteLLM's completion_cost does not add input_cost_per_request; we do (pricing module doc).
PER_REQUEST = {"perplexity/sonar-medium-online": 0.005}

_REFERENCE = r"""
import json, os, sys
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
from litellm import completion_cost, cost_per_token
from litellm.types.utils import ModelResponse, Usage
out = []
for model, provider, p, c, cached, writes, ms in json.load(sys.stdin):
    usage = Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c,
                  prompt_tokens_details={"cached_tokens": cached,
                                         "cache_creation_tokens": writes})
    a, b = cost_per_token(model=model, custom_llm_provider=provider, usage_object=usage,
                          response_time_ms=ms)
    # completion_cost on a response as the proxy sees it (its duration in _response_ms).
    response = ModelResponse(model=model, usage=usage)
    response._response_ms = ms
    whole = completion_cost(completion_response=response, model=model,
                            custom_llm_provider=provider)
    out.append([a + b, whole])
print(json.dumps(out))
"""


def _litellm_python() -> Path | None:
    for candidate in (ROOT / ".venv-litellm" / "bin" / "python",
                      Path("/work/main/.venv-litellm/bin/python")):
        if candidate.exists():
            return candidate
    return None


@pytest.fixture(autouse=True)
def _plain_env(monkeypatch):
    for name in (OVERRIDES_ENV, pm.PRICE_MAP_ENV, pm.PRICE_MAP_URL_ENV):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def litellm_costs() -> list[list[float]]:
    python = _litellm_python()
    if python is None:
        pytest.skip("no .venv-litellm (scripts/bootstrap.sh makes it)")
    args = [[m, lp, p, c, x, w, ms] for m, _, lp, p, c, x, w, ms in CASES]
    done = subprocess.run([str(python), "-c", _REFERENCE], input=json.dumps(args), text=True,
                          capture_output=True, timeout=300,
                          env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_costs_equal_litellms_own(litellm_costs):
    prices = load_price_table(use_env=False)
    model, provider, _, prompt, completion, cached, writes, latency = map(list, zip(*CASES,
                                                                                  strict=True))
    costs = prices.cost(model, prompt, completion, cached, provider=provider,
                        cache_creation_tokens=writes, latency_ms=latency)
    assert costs.priced.all(), costs.unpriced_models
    per_request = np.array([PER_REQUEST.get(m, 0.0) for m in model])
    for reference in (0, 1):  # cost_per_token, completion_cost
        expected = np.array([r[reference] for r in litellm_costs]) + per_request
        for case, ours, theirs in zip(CASES, costs.cost, expected, strict=True):
            assert ours == pytest.approx(theirs, rel=1e-9, abs=0), (case, reference)
    # The cases do reach the features: a tier, a cache write, a per-second price.
    assert costs.cost[5] > costs.cost[4] * 250_000 / 150_000
    assert costs.cost[12] > 0


def test_a_bare_name_with_its_provider_finds_the_prefixed_entry():
    prices = load_price_table(use_env=False)
    assert prices.resolve("gemini-2.5-flash", "google") == "gemini/gemini-2.5-flash"
    assert prices.resolve("mistral-small-latest", "mistral") == "mistral/mistral-small-latest"
    assert prices.resolve("claude-3-5-sonnet", "anthropic") == "claude-3-5-sonnet"  # ours
    assert prices.resolve("llama-3-70b", "self-hosted") == "llama-3-70b"
    assert prices.resolve("no-such-model", "google") is None


def test_unpriced_stays_unknown_and_names_the_closest_model():
    prices = load_price_table(use_env=False)
    costs = prices.cost(["gemini-1.5-flashh"], [10], [10], provider=["google"])
    assert not costs.priced[0] and np.isnan(costs.cost[0])
    note = unpriced_note("gemini-2.5-flahs", prices)
    assert "closest priced model: gemini-2.5-flash" in note
    assert "model_prices.json" in note


def test_project_overrides_go_on_top_of_the_map(tmp_path):
    over = tmp_path / "ours.json"
    over.write_text(json.dumps({"gpt-4o": {"input_cost_per_token": 1e-3}}))
    prices = load_price_table(overrides=over, use_env=False)
    gpt = prices.get("gpt-4o")
    assert gpt.input_cost_per_token == 1e-3
    assert gpt.output_cost_per_token == 1e-05  # from LiteLLM's map
    assert gpt.field("max_input_tokens") == 128000  # every field of the map is kept


# -- the refresh -------------------------------------------------------------------------------

class _Server:
    """A local HTTP server that serves whatever ``body`` is set to (no network here)."""

    def __init__(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                self.send_response(server.status)
                self.end_headers()
                self.wfile.write(server.body)

            def log_message(self, *args):
                pass

        self.body, self.status = b"{}", 200
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/prices.json"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


def test_refresh_writes_versions_and_reports_the_diff(tmp_path, server):
    lake = Lake(f"file://{tmp_path / 'lake'}")
    vendored = json.loads(pm.VENDORED_PRICE_MAP.read_text())
    changed = dict(vendored)
    changed.pop("gpt-4o-mini")
    changed["gpt-4o"] = {**vendored["gpt-4o"], "input_cost_per_token": 3e-06}
    changed["brand-new-model"] = {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06,
                                  "litellm_provider": "openai", "mode": "chat"}
    server.body = json.dumps(changed).encode()
    t1 = datetime(2026, 12, 1, 0, 30, tzinfo=UTC)
    diff = pm.refresh_price_map(lake, server.url, now=t1)
    assert diff.added == ["brand-new-model"] and diff.removed == ["gpt-4o-mini"]
    assert diff.changed == {"gpt-4o": {"input_cost_per_token": [2.5e-06, 3e-06]}}
    assert diff.counts() == {"added": 1, "removed": 1, "changed": 1, "models": len(changed) - 1
                             + ("sample_spec" not in changed)}
    assert "1 new, 1 removed, 1 with changed prices" in diff.describe()
    first = pm.newest_lake_version(lake)
    assert first is not None and "version=20261201T003000Z" in first

    # The loader now reads the lake's version: the new model is priced, the old price moved.
    prices = load_price_table(lake=lake)
    assert prices.cost(["brand-new-model"], [1000], [1000]).cost[0] == pytest.approx(3e-03)
    assert prices.get("gpt-4o").input_cost_per_token == 3e-06

    # Same map again: nothing new is written. A changed map: a second version, the first kept.
    assert pm.refresh_price_map(lake, server.url, now=t1).unchanged
    assert len(pm.lake_versions(lake)) == 1
    changed["gpt-4o"]["output_cost_per_token"] = 2e-05
    server.body = json.dumps(changed).encode()
    diff2 = pm.refresh_price_map(lake, server.url, now=t1)  # same second: no overwrite
    assert list(diff2.changed) == ["gpt-4o"] and not diff2.added
    versions = pm.lake_versions(lake)
    assert versions == ["version=20261201T003000Z", "version=20261201T003000Z-2"]
    assert json.loads((tmp_path / "lake" / "price_map" / versions[0] / "model_prices.json")
                      .read_text())["gpt-4o"]["output_cost_per_token"] == 1e-05


@pytest.mark.parametrize(("status", "body", "problem"), [
    (404, b"not found", "HTTP 404"),
    (200, b"<html>", "is not valid JSON"),
    (200, b"[1, 2]", "must hold a JSON object"),
])
def test_a_bad_fetch_writes_nothing_and_says_why(tmp_path, server, status, body, problem):
    lake = Lake(f"file://{tmp_path / 'lake'}")
    server.status, server.body = status, body
    with pytest.raises(pm.PriceMapError, match=problem):
        pm.refresh_price_map(lake, server.url + "?token=secret")
    assert pm.lake_versions(lake) == []


def test_price_map_env_may_name_a_url(server, monkeypatch):
    server.body = json.dumps({"only-model": {"input_cost_per_token": 1e-06,
                                             "output_cost_per_token": 1e-06,
                                             "litellm_provider": "openai"}}).encode()
    monkeypatch.setenv(pm.PRICE_MAP_ENV, server.url)
    prices = load_price_table()
    assert "only-model" in prices and "claude-3-5-sonnet" in prices  # from the project file
    assert "gpt-4o" not in prices and prices.sources[0] == server.url


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
