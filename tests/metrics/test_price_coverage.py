"""Every model LiteLLM's map can price is priced, under its own name and the provider's
prefix; what the map cannot price per call is named, not silently zero."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from promptops.metrics.pricing import load_price_table

MAP = Path(__file__).resolve().parents[2] / "include" / "config" / "litellm_model_prices.json"
TOKEN_PRICES = ("input_cost_per_token", "output_cost_per_token", "input_cost_per_second",
                "output_cost_per_second", "tiered_pricing")


def test_a_day_of_calls_to_every_model_of_the_map_is_priced():
    table = load_price_table(use_env=False)
    raw = json.loads(MAP.read_text())
    names = [k for k, v in raw.items() if k != "sample_spec" and isinstance(v, dict)
             and any(v.get(f) is not None for f in TOKEN_PRICES)]
    assert len(names) > 4000
    n = len(names)
    costs = table.cost(pa.array(names), np.full(n, 1200), np.full(n, 300), None,
                       latency_ms=np.full(n, 800.0))
    unpriced = [m for m, ok in zip(names, costs.priced, strict=True) if not ok]
    assert unpriced == []
    assert np.isfinite(costs.cost).all() and (costs.cost >= 0).all()
    # The rest of the map has no per-call price (images, audio per character...), and the
    # table says so for each of them.
    rest = {k for k in raw if k != "sample_spec"} - set(names)
    assert rest <= set(table.skipped)


def test_the_issues_unpriced_model_is_priced_as_google_bills_it():
    table = load_price_table(use_env=False)
    costs = table.cost(pa.array(["gemini-1.5-flash", "gemini-1.5-flash"]),
                       np.array([1000, 200_000]), np.array([500, 1000]), None,
                       provider=pa.array(["google", "google"]))
    assert costs.priced.all()
    assert np.allclose(costs.cost, [1000 * 7.5e-8 + 500 * 3e-7,   # up to 128k prompt tokens
                                    200_000 * 1.5e-7 + 1000 * 6e-7])  # above: the tier price


def test_a_refresh_that_changed_the_map_reads_as_one_slack_message():
    from promptops.metrics.price_map import diff_price_maps, price_map_message

    price = {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6, "mode": "chat"}
    old = {"model-repriced": price, "model-removed": price}
    new = {"model-repriced": {**price, "input_cost_per_token": 2e-6}, "model-added": price}
    diff = diff_price_maps(old, new)
    assert not diff.unchanged
    text = price_map_message(diff)["text"]
    assert text.startswith("*Price map refreshed*")
    for name in ("model-added", "model-removed", "model-repriced"):
        assert name in text
    assert diff_price_maps(old, old).unchanged
