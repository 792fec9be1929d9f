"""The model price table: the shipped file, cost arithmetic, overrides and bad files."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest

from promptops.metrics.pricing import (
    DEFAULT_PRICE_FILE,
    OVERRIDES_ENV,
    PriceTableError,
    load_price_table,
)
from promptops.simulator.catalog import MODELS

PRICES = {
    "gpt-4o": {"input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05,
               "cache_read_input_token_cost": 1.25e-06, "litellm_provider": "openai",
               "mode": "chat", "max_input_tokens": 128000},
    "claude-3-haiku": {"input_cost_per_token": 2.5e-07, "output_cost_per_token": 1.25e-06,
                       "litellm_provider": "anthropic"},
}


@pytest.fixture(autouse=True)
def _no_env_override(monkeypatch):
    monkeypatch.delenv(OVERRIDES_ENV, raising=False)


def write(path, data) -> str:
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


@pytest.fixture
def table(tmp_path):
    return load_price_table(write(tmp_path / "prices.json", PRICES))


# -- the shipped table ----------------------------------------------------------------------

def test_shipped_table_prices_every_simulated_model():
    prices = load_price_table()
    assert prices.sources[-1] == str(DEFAULT_PRICE_FILE)  # on top of LiteLLM's map
    for model in MODELS:
        price = prices.get(model.name)
        assert price is not None, f"{model.name} missing from {DEFAULT_PRICE_FILE}"
        assert price.litellm_provider == model.provider
        assert price.input_cost_per_token > 0 and price.output_cost_per_token > 0
        if model.supports_cache:
            assert price.cache_read_input_token_cost < price.input_cost_per_token
    assert "sample_spec" not in prices
    # A few list prices (USD per 1M tokens) that the table must keep right.
    assert prices.get("gpt-4o").input_cost_per_token * 1e6 == pytest.approx(2.50)
    assert prices.get("gpt-4o-mini").output_cost_per_token * 1e6 == pytest.approx(0.60)
    assert prices.get("claude-3-5-sonnet").cache_read_input_token_cost * 1e6 == pytest.approx(0.30)


# -- cost arithmetic ------------------------------------------------------------------------

def test_cached_tokens_cost_the_cache_price_and_the_rest_the_input_price(table):
    costs = table.cost(["gpt-4o"], [1000], [100], [400])
    assert costs.cost[0] == pytest.approx(600 * 2.5e-06 + 400 * 1.25e-06 + 100 * 1e-05)
    assert costs.priced.tolist() == [True]
    assert costs.unpriced_models == ()


def test_without_a_cache_price_cached_tokens_cost_the_input_price(table):
    costs = table.cost(["claude-3-haiku"], [1000], [10], [300])
    assert costs.cost[0] == pytest.approx(1000 * 2.5e-07 + 10 * 1.25e-06)


def test_unknown_model_is_unpriced_not_free(table):
    costs = table.cost(pa.array(["gpt-4o", "mystery-model", "gpt-4o", "mystery-model"]),
                       pa.array([10, 10, 20, 30]), pa.array([1, 1, 2, 3]), None)
    assert costs.priced.tolist() == [True, False, True, False]
    assert math.isnan(costs.cost[1]) and math.isnan(costs.cost[3])
    assert costs.unpriced_models == ("mystery-model",)
    assert costs.total_priced == pytest.approx(30 * 2.5e-06 + 3 * 1e-05)


def test_null_cached_tokens_are_no_cache_use_and_cached_is_capped_at_the_prompt(table):
    costs = table.cost(["gpt-4o", "gpt-4o"], [100, 100], [0, 0], pa.array([None, 500]))
    assert costs.cost[0] == pytest.approx(100 * 2.5e-06)
    assert costs.cost[1] == pytest.approx(100 * 1.25e-06)


def test_columns_in_any_form_give_the_same_costs(table):
    models = ["claude-3-haiku", "gpt-4o", None, "x"]
    prompt, completion, cached = [100, 200, 300, 400], [10, 20, 30, 40], [None, 50, None, 0]
    # Two chunks whose dictionaries differ, as a Parquet file's row groups can.
    chunked = pa.chunked_array([pa.array(models[:2]).dictionary_encode(),
                                pa.array(models[2:]).dictionary_encode()])
    forms = [
        table.cost(models, prompt, completion, [c or 0 for c in cached]),
        table.cost(np.array(models, dtype=object), np.array(prompt), np.array(completion),
                   pa.array(cached)),
        table.cost(chunked, pa.chunked_array([prompt[:2], prompt[2:]]), pa.array(completion),
                   pa.array(cached, type=pa.int64())),
    ]
    for result in forms:
        np.testing.assert_allclose(result.cost, forms[0].cost)
        assert result.unpriced_models == ("x", "(none)")
    assert forms[0].priced.tolist() == [True, True, False, False]


def test_columns_of_different_lengths_are_refused(table):
    with pytest.raises(ValueError, match="differ in length"):
        table.cost(["gpt-4o"], [1, 2], [1])


# -- overrides ------------------------------------------------------------------------------

def test_override_file_merges_field_by_field_and_adds_models(tmp_path):
    base = write(tmp_path / "prices.json", PRICES)
    over = write(tmp_path / "ours.json", {
        "gpt-4o": {"input_cost_per_token": 2e-06},
        "llama-3-70b": {"input_cost_per_token": 3e-07, "output_cost_per_token": 4e-07,
                        "litellm_provider": "self-hosted"},
    })
    prices = load_price_table(base, over)
    assert prices.sources == (base, over)
    gpt = prices.get("gpt-4o")
    assert gpt.input_cost_per_token == 2e-06
    assert gpt.output_cost_per_token == 1e-05  # kept from the base table
    assert gpt.cache_read_input_token_cost == 1.25e-06
    assert prices.get("llama-3-70b").litellm_provider == "self-hosted"
    assert prices.cost(["llama-3-70b"], [10], [10]).cost[0] == pytest.approx(7e-06)


def test_override_file_from_the_environment(tmp_path, monkeypatch):
    base = write(tmp_path / "prices.json", PRICES)
    over = write(tmp_path / "ours.json", {"claude-3-haiku": {"output_cost_per_token": 0.0}})
    monkeypatch.setenv(OVERRIDES_ENV, over)
    assert load_price_table(base).get("claude-3-haiku").output_cost_per_token == 0.0
    assert load_price_table(base, use_env=False).get("claude-3-haiku").output_cost_per_token \
        == 1.25e-06


def test_named_override_that_is_missing_is_an_error(tmp_path, monkeypatch):
    base = write(tmp_path / "prices.json", PRICES)
    monkeypatch.setenv(OVERRIDES_ENV, str(tmp_path / "nope.json"))
    with pytest.raises(PriceTableError, match="nope.json does not exist"):
        load_price_table(base)


def test_without_removes_models(table):
    assert "gpt-4o" not in table.without("gpt-4o")
    assert table.without("gpt-4o").cost(["gpt-4o"], [1], [1]).unpriced_models == ("gpt-4o",)


# -- bad files ------------------------------------------------------------------------------

@pytest.mark.parametrize(("entry", "problem"), [
    ({"input_cost_per_token": -1e-6, "output_cost_per_token": 1e-6, "litellm_provider": "x"},
     "input_cost_per_token: Input should be greater than or equal to 0"),
    ({"input_cost_per_token": "0.000001", "output_cost_per_token": 1e-6,
      "litellm_provider": "x"},
     "input_cost_per_token: Input should be a valid number"),
    ({"input_cost_per_token": 1e-6, "litellm_provider": "x"},
     "output_cost_per_token: Field required"),
    ({"input_cost_per_token": 1e-6, "output_cost_per_token": 1e-6},
     "litellm_provider: Field required"),
])
def test_bad_entry_names_file_model_and_field(tmp_path, entry, problem):
    path = write(tmp_path / "prices.json", {**PRICES, "broken-model": entry})
    with pytest.raises(PriceTableError) as err:
        load_price_table(path)
    message = str(err.value)
    assert f"price file {path}: model 'broken-model': {problem}" in message
    assert "fix or remove the entry" in message


def test_bad_override_entry_names_the_override_file(tmp_path):
    base = write(tmp_path / "prices.json", PRICES)
    over = write(tmp_path / "ours.json", {"gpt-4o": {"output_cost_per_token": -1}})
    with pytest.raises(PriceTableError, match=f"price file {over}: model 'gpt-4o': "
                                              "output_cost_per_token"):
        load_price_table(base, over)


@pytest.mark.parametrize(("text", "problem"), [
    ('{"gpt-4o": {', "is not valid JSON: .* at line 1"),
    ("[1, 2]", "must hold a JSON object of model name -> prices"),
    ('{"gpt-4o": 0.5}', "model 'gpt-4o': the entry must be an object of prices"),
])
def test_malformed_file_is_refused_with_the_reason(tmp_path, text, problem):
    path = write(tmp_path / "prices.json", text)
    with pytest.raises(PriceTableError, match=problem):
        load_price_table(path)
