"""The model price table: what a call costs, from its model and token counts.

The table has the shape of LiteLLM's ``model_prices_and_context_window.json``: a JSON object
whose keys are model names and whose values give USD per token
(``input_cost_per_token``, ``output_cost_per_token``, ``cache_read_input_token_cost``) and
the provider (``litellm_provider``). Other LiteLLM keys are allowed and ignored, so an entry
can be pasted from LiteLLM's file as it is. The entry ``sample_spec`` is documentation.

The project's table is ``include/config/model_prices.json``. An operator's override file
(same shape; named by the environment variable ``PROMPTOPS_PRICE_OVERRIDES`` or passed as an
argument) is merged on top field by field: an override entry may change one price of a known
model, or add a model with all its prices.

Billing: cached input tokens (``cached_tokens``, a part of ``prompt_tokens``) cost the cache
price, the rest of the prompt the input price, the completion the output price. A model with
no cache price bills cached tokens at the input price (no discount is known for it). A model
that is not in the table is *unpriced*: its cost is NaN (unknown), never 0.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from promptops.errors import ConfigError, InvalidInput

#: The project's price table.
DEFAULT_PRICE_FILE = Path(__file__).resolve().parents[2] / "config" / "model_prices.json"
#: Environment variable naming an operator's override file.
OVERRIDES_ENV = "PROMPTOPS_PRICE_OVERRIDES"
#: LiteLLM's documentation entry; not a model.
_SAMPLE_SPEC = "sample_spec"

_Columnar: TypeAlias = pa.Array | pa.ChunkedArray | np.ndarray | Sequence


class PriceTableError(ConfigError):
    """A price file that cannot be used; the message names the file, model and problem."""


class ModelPrice(BaseModel):
    """One model's prices (USD per token) in LiteLLM's field names."""

    # LiteLLM entries carry many more keys (context window, capabilities...): keep them out
    # of the way rather than reject a pasted entry.
    model_config = ConfigDict(extra="ignore", frozen=True)

    input_cost_per_token: float = Field(ge=0, allow_inf_nan=False, strict=True)
    output_cost_per_token: float = Field(ge=0, allow_inf_nan=False, strict=True)
    cache_read_input_token_cost: float | None = Field(default=None, ge=0, allow_inf_nan=False,
                                                      strict=True)
    litellm_provider: str = Field(min_length=1, strict=True)
    mode: str = "chat"

    @property
    def cached_cost_per_token(self) -> float:
        """What one cached input token costs: the cache price, else the input price."""
        if self.cache_read_input_token_cost is None:
            return self.input_cost_per_token
        return self.cache_read_input_token_cost


@dataclass(frozen=True)
class CallCosts:
    """Per-call costs of a batch of calls, aligned with the input columns."""

    #: USD per call; NaN where the model is unpriced (unknown, not free).
    cost: np.ndarray
    #: True where the model is in the table.
    priced: np.ndarray
    #: The models in the batch that are not in the table, sorted.
    unpriced_models: tuple[str, ...]

    @property
    def total_priced(self) -> float:
        """Cost of the priced calls (the unpriced ones are not in it)."""
        return float(self.cost[self.priced].sum())


class PriceTable:
    """Model prices, looked up by the model name a call record carries."""

    def __init__(self, prices: Mapping[str, ModelPrice], sources: Sequence[str] = ()) -> None:
        self._prices = dict(prices)
        #: The files the table was read from, in merge order.
        self.sources = tuple(sources)

    def __repr__(self) -> str:
        return f"PriceTable({len(self._prices)} models from {', '.join(self.sources) or 'code'})"

    def __contains__(self, model: object) -> bool:
        return model in self._prices

    def __len__(self) -> int:
        return len(self._prices)

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(sorted(self._prices))

    def get(self, model: str) -> ModelPrice | None:
        return self._prices.get(model)

    def without(self, *models: str) -> PriceTable:
        """The same table with these models removed (they become unpriced)."""
        return PriceTable({k: v for k, v in self._prices.items() if k not in models},
                          self.sources)

    def rates(self, names: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Input, cached-input and output USD per token for each name; NaN if unpriced."""
        rates = np.full((3, len(names)), np.nan)
        for i, name in enumerate(names):
            price = self._prices.get(name) if name is not None else None
            if price is not None:
                rates[:, i] = (price.input_cost_per_token, price.cached_cost_per_token,
                               price.output_cost_per_token)
        return rates[0], rates[1], rates[2]

    def cost(self, model: _Columnar, prompt_tokens: _Columnar, completion_tokens: _Columnar,
             cached_tokens: _Columnar | None = None) -> CallCosts:
        """Cost of each call, vectorised over columns (Arrow, numpy or lists).

        ``cached_tokens`` may be absent or hold nulls (no cache use); it is clipped to the
        call's ``prompt_tokens`` since cached tokens are a part of the prompt.
        """
        codes, names = _model_codes(model)
        inp, cached_rate, out = self.rates(names)
        prompt = _floats(prompt_tokens)
        completion = _floats(completion_tokens)
        if not (len(codes) == len(prompt) == len(completion)):
            raise InvalidInput(f"cost(): columns differ in length: model {len(codes)}, "
                             f"prompt_tokens {len(prompt)}, completion_tokens {len(completion)}")
        if cached_tokens is None:
            cached = np.zeros(len(codes))
        else:
            cached = np.nan_to_num(_floats(cached_tokens), nan=0.0)
            if len(cached) != len(codes):
                raise InvalidInput(f"cost(): cached_tokens has {len(cached)} values, "
                                 f"model has {len(codes)}")
            cached = np.minimum(cached, prompt)
        # One extra NaN slot at the end of each rate vector for null model names.
        inp, cached_rate, out = (np.append(r, np.nan) for r in (inp, cached_rate, out))
        cost = ((prompt - cached) * inp[codes] + cached * cached_rate[codes]
                + completion * out[codes])
        priced_name = ~np.isnan(inp)  # per dictionary entry, plus the null slot
        priced = priced_name[codes]
        present = np.bincount(codes, minlength=len(names) + 1) > 0
        unpriced = sorted({n for n, p, used in zip(names, priced_name, present, strict=False)
                           if used and not p and n is not None})
        if present[-1]:
            unpriced.append("(none)")  # calls without a model name cannot be priced
        return CallCosts(cost=cost, priced=priced, unpriced_models=tuple(unpriced))


def _model_codes(model: _Columnar) -> tuple[np.ndarray, list[str | None]]:
    """Dictionary codes (nulls -> len(names)) and the names they index."""
    if isinstance(model, pa.ChunkedArray):
        model = model.combine_chunks() if model.num_chunks != 1 else model.chunk(0)
    if not isinstance(model, pa.Array):
        model = pa.array(np.asarray(model, dtype=object), type=pa.string())
    if not pa.types.is_dictionary(model.type):
        model = pc.dictionary_encode(model)
    names = model.dictionary.to_pylist()
    codes = pc.fill_null(model.indices, len(names)).to_numpy(zero_copy_only=False)
    return codes.astype(np.intp, copy=False), names


def _floats(values: _Columnar) -> np.ndarray:
    """float64 numpy view of a column; nulls become NaN."""
    if isinstance(values, pa.ChunkedArray | pa.Array):
        return np.asarray(values.cast(pa.float64()).to_numpy(zero_copy_only=False),
                          dtype=np.float64)
    return np.asarray(values, dtype=np.float64)


# -- loading --------------------------------------------------------------------------------

def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PriceTableError(f"price file {path} does not exist") from None
    except OSError as exc:
        raise PriceTableError(f"price file {path} cannot be read: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PriceTableError(f"price file {path} is not valid JSON: {exc.msg} at line "
                              f"{exc.lineno}, column {exc.colno}") from None
    if not isinstance(data, dict):
        raise PriceTableError(f"price file {path} must hold a JSON object of model name -> "
                              f"prices (LiteLLM's shape), not a {type(data).__name__}")
    for key, value in data.items():
        if not isinstance(value, dict):
            raise PriceTableError(f"price file {path}: model {key!r}: the entry must be an "
                                  f"object of prices, not a {type(value).__name__}")
    data.pop(_SAMPLE_SPEC, None)
    return data


def _validate(merged: dict[str, dict[str, Any]], origin: dict[str, Path]) -> dict[str, ModelPrice]:
    problems = []
    prices = {}
    for name, entry in merged.items():
        try:
            prices[name] = ModelPrice.model_validate(entry)
        except ValidationError as exc:
            for err in exc.errors():
                where = ".".join(str(p) for p in err["loc"]) or "(entry)"
                problems.append(f"price file {origin[name]}: model {name!r}: {where}: "
                                f"{err['msg']}")
    if problems:
        raise PriceTableError(
            "; ".join(problems) + ". Prices are USD per token as numbers >= 0 "
            "(input_cost_per_token, output_cost_per_token, optional "
            "cache_read_input_token_cost) plus litellm_provider; fix or remove the entry.")
    return prices


def load_price_table(path: str | Path | None = None, overrides: str | Path | None = None, *,
                     use_env: bool = True) -> PriceTable:
    """Read the price table and merge an override file on top.

    ``overrides`` defaults to the file named by ``PROMPTOPS_PRICE_OVERRIDES`` (when
    ``use_env``); an override that is named but missing is an error, not silently skipped.
    Raises :class:`PriceTableError` naming the file, the model key and the problem.
    """
    base = Path(path) if path is not None else DEFAULT_PRICE_FILE
    if overrides is None and use_env:
        overrides = os.environ.get(OVERRIDES_ENV) or None
    merged: dict[str, dict[str, Any]] = {}
    origin: dict[str, Path] = {}
    sources = [base]
    for name, entry in _read_json_object(base).items():
        merged[name], origin[name] = dict(entry), base
    if overrides is not None:
        over = Path(overrides)
        sources.append(over)
        for name, entry in _read_json_object(over).items():
            # Field by field: an override may change one price and keep the rest.
            merged[name] = {**merged.get(name, {}), **entry}
            origin[name] = over
    return PriceTable(_validate(merged, origin), [str(s) for s in sources])
