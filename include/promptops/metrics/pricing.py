"""The model price table: what a call costs, from its model, provider and token counts.

The table is LiteLLM's ``model_prices_and_context_window.json`` as published (every model,
every field; see :mod:`promptops.metrics.price_map` for where it is read from), with the
project's ``include/config/model_prices.json`` merged on top, then an operator's override
file (named by ``PROMPTOPS_PRICE_OVERRIDES`` or passed as an argument). Overrides merge field
by field: an entry may change one price of a known model, or add a model with all its prices.

Billing follows LiteLLM's ``generic_cost_per_token`` (litellm 1.110.2), vectorised:

- ``prompt_tokens`` includes the cached tokens (cache reads) and ``cache_creation_tokens``
  (cache writes). The rest of the prompt costs ``input_cost_per_token``, cache reads
  ``cache_read_input_token_cost`` and cache writes ``cache_creation_input_token_cost``; a
  model without a cache price bills those tokens at the input price.
- Tiers: for every ``*_above_<N>[k]_tokens`` threshold the prompt exceeds (``>``; ``>=`` for
  xAI, as LiteLLM), the tier's prices replace the base ones for the whole call, field by
  field (a tier that lacks a field keeps the lower one). A ``tiered_pricing`` table (Alibaba's
  all-or-nothing ranges) picks one range by prompt tokens instead.
- Per second: a chat/completion model with no token price but ``cost_per_second``
  (else ``input_cost_per_second``, else ``output_cost_per_second``) costs that rate times the
  call's latency.
- Per request: ``input_cost_per_request`` is added to each call. LiteLLM's
  ``completion_cost`` does not add it (only 4 retired Perplexity models carry it); the
  provider bills it, so we do (tests/metrics/test_price_map.py states the difference).
- Not billed (no column in the call record): service tiers (``_priority``, ``_flex``),
  batches, off-peak windows, audio/image/reasoning token splits, per-query search fees.

Lookup, as LiteLLM's ``cost_per_token``: ``<provider>/<model>``, then the model as named,
then the model without its prefix. The call record's provider is mapped to LiteLLM's prefix
(``google`` -> ``gemini`` or ``vertex_ai``, ``aws.bedrock`` -> ``bedrock``...). A model that
resolves to nothing is *unpriced*: its cost is NaN (unknown), never 0, and
:meth:`PriceTable.closest` names the nearest known model for the alert.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from promptops.errors import ConfigError, InvalidInput

log = logging.getLogger(__name__)

#: The project's overrides on top of LiteLLM's map (models the map lacks: self-hosted
#: models, the simulator's short names).
DEFAULT_PRICE_FILE = Path(__file__).resolve().parents[2] / "config" / "model_prices.json"
#: Environment variable naming an operator's override file.
OVERRIDES_ENV = "PROMPTOPS_PRICE_OVERRIDES"
#: LiteLLM's documentation entry; not a model.
_SAMPLE_SPEC = "sample_spec"

_Columnar: TypeAlias = pa.Array | pa.ChunkedArray | np.ndarray | Sequence

#: The four per-token rates of a band: input, output, cache read, cache write.
_IN, _OUT, _READ, _WRITE = range(4)
_TIER_KEY = re.compile(r"^(input_cost_per_token|output_cost_per_token|"
                       r"cache_read_input_token_cost|cache_creation_input_token_cost)_above_")
#: Keys LiteLLM leaves out of the standard thresholds (service tiers, batches).
_NON_STANDARD = ("_flex", "_balanced", "_priority", "_fast", "_ultrafast", "_batches")
_WALL_CLOCK_MODES = {None, "audio_transcription", "chat", "completion", "embedding",
                     "responses"}
#: The call record's provider (platform API names and OpenTelemetry's gen_ai.provider.name)
#: -> LiteLLM's key prefixes, tried in order.
PROVIDER_PREFIXES: dict[str, tuple[str, ...]] = {
    "google": ("gemini", "vertex_ai"), "gcp.gemini": ("gemini",),
    "gcp.vertex_ai": ("vertex_ai",), "gcp.gen_ai": ("gemini", "vertex_ai"),
    "vertex": ("vertex_ai",), "aws.bedrock": ("bedrock",), "aws_bedrock": ("bedrock",),
    "azure.ai.openai": ("azure",), "azure_openai": ("azure",),
    "azure.ai.inference": ("azure_ai",), "mistral_ai": ("mistral",), "x_ai": ("xai",),
    "ibm.watsonx.ai": ("watsonx",), "together": ("together_ai",),
}
#: Prefixes tried when a call names no provider (first-party APIs only).
_FIRST_PARTY = ("openai", "anthropic", "gemini", "vertex_ai", "mistral", "deepseek", "xai",
                "cohere", "groq")


class PriceTableError(ConfigError):
    """A price file that cannot be used; the message names the file, model and problem."""


class ModelPrice(BaseModel):
    """One model's prices (USD per token) in LiteLLM's field names; every other LiteLLM
    field (tiers, per-second prices, context window...) is kept as it is."""

    model_config = ConfigDict(extra="allow", frozen=True)

    input_cost_per_token: float = Field(ge=0, allow_inf_nan=False, strict=True)
    output_cost_per_token: float = Field(ge=0, allow_inf_nan=False, strict=True)
    cache_read_input_token_cost: float | None = Field(default=None, ge=0, allow_inf_nan=False,
                                                      strict=True)
    cache_creation_input_token_cost: float | None = Field(default=None, ge=0,
                                                          allow_inf_nan=False, strict=True)
    input_cost_per_request: float | None = Field(default=None, ge=0, allow_inf_nan=False,
                                                 strict=True)
    litellm_provider: str = Field(min_length=1, strict=True)
    mode: str | None = "chat"

    @property
    def cached_cost_per_token(self) -> float:
        """What one cached input token costs: the cache price, else the input price."""
        if self.cache_read_input_token_cost is None:
            return self.input_cost_per_token
        return self.cache_read_input_token_cost

    @property
    def cache_creation_cost_per_token(self) -> float:
        """What one cache-write token costs: the cache-write price, else the input price."""
        if self.cache_creation_input_token_cost is None:
            return self.input_cost_per_token
        return self.cache_creation_input_token_cost

    def field(self, name: str) -> Any:
        """Any field of the entry, LiteLLM's extra ones included (None when absent)."""
        if name in type(self).model_fields:
            return getattr(self, name)
        return (self.model_extra or {}).get(name)


def _number(value: Any) -> float | None:
    """A price as LiteLLM reads one: a number or a numeric string; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if np.isfinite(value) and value >= 0 else None
    if isinstance(value, str):
        try:
            f = float(value)
        except ValueError:
            return None
        return f if np.isfinite(f) and f >= 0 else None
    return None


def _threshold(key: str) -> tuple[str, float] | None:
    """(``200k``, 200000.0) for a tier key, as LiteLLM parses it; None if not one."""
    if not _TIER_KEY.match(key) or "_tokens" not in key or key.endswith(_NON_STANDARD):
        return None
    text = key.rsplit("_above_", 1)[1].split("_tokens")[0]
    try:
        return text, float(text.replace("k", "")) * (1000 if "k" in text else 1)
    except ValueError:
        return None


@dataclass(frozen=True)
class _Rates:
    """One model's prices compiled for vectorised billing."""

    #: Ascending prompt-token thresholds; band i applies above thresholds[i - 1].
    thresholds: np.ndarray
    #: (len(thresholds) + 1, 4) per-token rates (input, output, cache read, cache write).
    bands: np.ndarray
    inclusive: bool  # the threshold itself is in the higher tier (xAI)
    per_request: float
    per_second: float | None  # set only for a model billed by time, not tokens


def _compile(price: ModelPrice) -> _Rates:
    entry = {**price.model_dump(), **(price.model_extra or {})}
    get = lambda k, default=None: (lambda v: default if v is None else v)(  # noqa: E731
        _number(entry.get(k)))
    inp, out = get("input_cost_per_token", 0.0), get("output_cost_per_token", 0.0)
    if out == 0.0 and get("output_cost_per_image_token") is not None:
        out = get("output_cost_per_image_token")  # LiteLLM: image models bill output this way
    read, write = get("cache_read_input_token_cost"), get("cache_creation_input_token_cost")

    def band(i: float, o: float, r: float | None, w: float | None) -> list[float]:
        return [i, o, i if r is None else r, i if w is None else w]

    per_request = get("input_cost_per_request", 0.0)
    tiered = entry.get("tiered_pricing")
    if isinstance(tiered, list) and tiered:
        # Alibaba's ranges: one range by prompt tokens, start < tokens <= end; above the
        # last range the last one. A prompt of 0 tokens gets the base prices (LiteLLM).
        ranges = sorted((t for t in tiered if isinstance(t, dict) and isinstance(
            t.get("range"), list | tuple) and len(t["range"]) == 2),
            key=lambda t: float(t["range"][0]))
        thresholds, bands = [], [band(inp, out, read, write)]
        for t in ranges:
            thresholds.append(float(t["range"][0]))
            if _number(t.get("input_cost_per_token")) is None:
                bands.append(bands[0])
                continue
            t_in = _number(t["input_cost_per_token"]) or 0.0
            t_out = _number(t.get("output_cost_per_token"))
            bands.append(band(t_in, out if t_out is None else t_out,
                              _number(t.get("cache_read_input_token_cost")),
                              _number(t.get("cache_creation_input_token_cost"))))
        return _Rates(np.array(thresholds), np.array(bands), False, per_request, None)

    thresholds_by_text: dict[str, float] = {}
    for key, value in entry.items():
        parsed = _threshold(key)
        if parsed is not None and value is not None:
            thresholds_by_text[parsed[0]] = parsed[1]
    ordered = sorted(thresholds_by_text.items(), key=lambda kv: kv[1])
    bands = [band(inp, out, read, write)]
    for text, _ in ordered:
        # Cumulative, as LiteLLM's loop: a tier without a field keeps the one below it.
        inp = get(f"input_cost_per_token_above_{text}_tokens", inp)
        out = get(f"output_cost_per_token_above_{text}_tokens", out)
        write = get(f"cache_creation_input_token_cost_above_{text}_tokens", write)
        read = get(f"cache_read_input_token_cost_above_{text}_tokens", read)
        bands.append(band(inp, out, read, write))
    per_second = None
    token_priced = (get("input_cost_per_token", 0.0) > 0 or get("output_cost_per_token", 0.0) > 0)
    if not token_priced and entry.get("mode") in _WALL_CLOCK_MODES:
        for key in ("cost_per_second", "input_cost_per_second", "output_cost_per_second"):
            if entry.get(key) is not None:
                per_second = get(key, 0.0)
                break
    return _Rates(np.array([t for _, t in ordered], dtype=np.float64),
                  np.array(bands, dtype=np.float64),
                  price.litellm_provider == "xai", per_request, per_second)


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
    """Model prices, looked up by the model (and provider) a call record carries."""

    def __init__(self, prices: Mapping[str, ModelPrice], sources: Sequence[str] = (),
                 skipped: Mapping[str, str] | None = None) -> None:
        self._prices = dict(prices)
        #: The files the table was read from, in merge order.
        self.sources = tuple(sources)
        #: Map entries left out (no usable price), model -> why.
        self.skipped = dict(skipped or {})
        self._blocked: set[str] = set()
        self._compiled: dict[str, _Rates] = {}
        self._resolved: dict[tuple[str, str | None], str | None] = {}

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
        """The same table with these models removed (they become unpriced, under any
        provider prefix too)."""
        table = PriceTable({k: v for k, v in self._prices.items() if k not in models},
                           self.sources, self.skipped)
        table._blocked = self._blocked | set(models)
        return table

    # -- lookup ---------------------------------------------------------------------------

    def resolve(self, model: str | None, provider: str | None = None) -> str | None:
        """The table key that prices ``model`` as served by ``provider``, or None."""
        if model is None or model in self._blocked:
            return None
        key = (model, provider)
        if key not in self._resolved:
            self._resolved[key] = self._lookup(model, provider)
        return self._resolved[key]

    def _lookup(self, model: str, provider: str | None) -> str | None:
        prefixes: tuple[str, ...] = ()
        if provider:
            p = provider.strip().lower()
            prefixes = PROVIDER_PREFIXES.get(p, ()) + (p,)
        candidates = [f"{p}/{model}" for p in prefixes if not model.startswith(f"{p}/")]
        candidates.append(model)
        if "/" in model:
            candidates.append(model.split("/", 1)[1])
        if not provider:
            candidates += [f"{p}/{model}" for p in _FIRST_PARTY]
        return next((c for c in candidates if c in self._prices), None)

    def closest(self, model: str, n: int = 1) -> list[str]:
        """The known models nearest to ``model`` by name (for the unpriced alert)."""
        by_bare: dict[str, str] = {}
        for key in sorted(self._prices, key=len):
            by_bare.setdefault(key.rsplit("/", 1)[-1], key)
        bare = model.rsplit("/", 1)[-1]
        hits = difflib.get_close_matches(bare, list(by_bare), n=n, cutoff=0.5)
        return [by_bare[h] for h in hits]

    def _rates_of(self, key: str) -> _Rates:
        rates = self._compiled.get(key)
        if rates is None:
            rates = self._compiled[key] = _compile(self._prices[key])
        return rates

    def rates(self, names: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Base input, cached-input and output USD per token for each name (no tier, no
        provider); NaN if unpriced."""
        rates = np.full((3, len(names)), np.nan)
        for i, name in enumerate(names):
            key = self.resolve(name) if name is not None else None
            if key is not None:
                band = self._rates_of(key).bands[0]
                rates[:, i] = (band[_IN], band[_READ], band[_OUT])
        return rates[0], rates[1], rates[2]

    # -- billing --------------------------------------------------------------------------

    def cost(self, model: _Columnar, prompt_tokens: _Columnar, completion_tokens: _Columnar,
             cached_tokens: _Columnar | None = None, *,
             cache_creation_tokens: _Columnar | None = None,
             provider: _Columnar | None = None,
             latency_ms: _Columnar | None = None) -> CallCosts:
        """Cost of each call, vectorised over columns (Arrow, numpy or lists).

        ``cached_tokens`` and ``cache_creation_tokens`` may be absent or hold nulls (no cache
        use); both are parts of ``prompt_tokens`` and are clipped to it. ``provider`` lets a
        bare model name find its provider-prefixed entry. ``latency_ms`` prices per-second
        models; without it they are unpriced.
        """
        codes, names = _model_codes(model)
        n = len(codes)
        prompt = _floats(prompt_tokens)
        completion = _floats(completion_tokens)
        if not (n == len(prompt) == len(completion)):
            raise InvalidInput(f"cost(): columns differ in length: model {n}, "
                               f"prompt_tokens {len(prompt)}, completion_tokens {len(completion)}")
        cached = self._optional(cached_tokens, n, "cached_tokens")
        cached = np.minimum(cached, prompt)
        writes = np.minimum(self._optional(cache_creation_tokens, n, "cache_creation_tokens"),
                            prompt - cached)
        # One key per (model, provider) pair that occurs, on a dense grid of the two
        # dictionaries: no sort over the rows.
        if provider is not None:
            p_codes, p_names = _model_codes(provider)
            if len(p_codes) != n:
                raise InvalidInput(f"cost(): provider has {len(p_codes)} values, model has {n}")
        else:
            p_codes, p_names = np.zeros(n, dtype=np.intp), []
        width = len(p_names) + 1
        cell = codes * width + p_codes
        present = np.flatnonzero(np.bincount(cell, minlength=(len(names) + 1) * width))
        cell_rates: list[_Rates | None] = []
        for c in present:
            m, p = divmod(int(c), width)
            name = names[m] if m < len(names) else None
            prov = p_names[p] if p < len(p_names) else None
            key = self.resolve(name, prov)
            cell_rates.append(self._rates_of(key) if key is not None else None)
        slot = np.zeros((len(names) + 1) * width, dtype=np.intp)
        slot[present] = np.arange(len(present))
        row = slot[cell]  # each call's index into the present cells

        k = max([len(r.thresholds) for r in cell_rates if r is not None] + [0])
        bands = np.full((len(present), k + 1, 4), np.nan)
        thresholds = np.full((len(present), max(k, 1)), np.inf)
        inclusive = np.zeros(len(present), dtype=bool)
        per_request = np.zeros(len(present))
        per_second = np.full(len(present), np.nan)
        for i, r in enumerate(cell_rates):
            if r is None:
                continue
            bands[i, : len(r.bands)] = r.bands
            bands[i, len(r.bands):] = r.bands[-1]
            thresholds[i, : len(r.thresholds)] = r.thresholds
            inclusive[i], per_request[i] = r.inclusive, r.per_request
            if r.per_second is not None:
                per_second[i] = r.per_second
        if k:
            thr = thresholds[row]
            above = np.where(inclusive[row][:, None], prompt[:, None] >= thr,
                             prompt[:, None] > thr)
            rate = bands[row, above.sum(axis=1)]
        else:
            rate = bands[row, 0]
        text = np.maximum(prompt - cached - writes, 0.0)
        cost = (text * rate[:, _IN] + cached * rate[:, _READ] + writes * rate[:, _WRITE]
                + completion * rate[:, _OUT] + per_request[row])
        timed = ~np.isnan(per_second[row])
        if timed.any():
            seconds = (_floats(latency_ms) / 1000.0 if latency_ms is not None
                       else np.full(n, np.nan))
            cost = np.where(timed, per_second[row] * seconds, cost)
        priced = ~np.isnan(cost)
        missing = {str(names[int(c) // width]) for c, r in zip(present, cell_rates, strict=True)
                   if r is None and int(c) // width < len(names)}
        if timed.any():  # a per-second model without a latency
            missing |= {str(names[m]) for m in np.unique(codes[timed & ~priced])
                        if m < len(names)}
        unpriced = sorted(missing)
        if (codes == len(names)).any():
            unpriced.append("(none)")  # calls without a model name cannot be priced
        return CallCosts(cost=cost, priced=priced, unpriced_models=tuple(unpriced))

    @staticmethod
    def _optional(values: _Columnar | None, n: int, what: str) -> np.ndarray:
        if values is None:
            return np.zeros(n)
        out = np.nan_to_num(_floats(values), nan=0.0)
        if len(out) != n:
            raise InvalidInput(f"cost(): {what} has {len(out)} values, model has {n}")
        return np.maximum(out, 0.0)


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


def _validate(merged: dict[str, dict[str, Any]], origin: dict[str, str]) -> dict[str, ModelPrice]:
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
            "cache_read_input_token_cost, cache_creation_input_token_cost) plus "
            "litellm_provider; fix or remove the entry.")
    return prices


def _bills_calls(entry: Mapping[str, Any]) -> bool:
    """Whether a LiteLLM entry can price a call: a token price, tiers or a per-second one."""
    return any(k in entry for k in ("input_cost_per_token", "output_cost_per_token",
                                    "tiered_pricing", "cost_per_second",
                                    "input_cost_per_second", "output_cost_per_second"))


#: Validated maps, by the identity of the (cached, never mutated) parsed map.
_map_cache: dict[int, tuple[dict, dict[str, ModelPrice], dict[str, str]]] = {}


def _map_prices(raw: dict[str, dict[str, Any]]) -> tuple[dict[str, ModelPrice], dict[str, str]]:
    """LiteLLM's entries as ModelPrice. An upstream entry that cannot price a call (an image
    or search model) or carries a bad value is left out and named in ``skipped``: one bad
    upstream entry must not stop the billing of every other model."""
    hit = _map_cache.get(id(raw))
    if hit is not None and hit[0] is raw:
        return hit[1], hit[2]
    prices: dict[str, ModelPrice] = {}
    skipped: dict[str, str] = {}
    for name, entry in raw.items():
        if not _bills_calls(entry):
            skipped[name] = "no per-token, tiered or per-second price"
            continue
        filled = dict(entry)
        for key in ("input_cost_per_token", "output_cost_per_token"):
            value = filled.get(key, 0.0)
            filled[key] = float(value) if isinstance(value, int | float) and \
                not isinstance(value, bool) else (_number(value) if _number(value) is not None
                                                  else value)
        filled.setdefault("litellm_provider", name.split("/", 1)[0] if "/" in name
                          else "unknown")
        try:
            prices[name] = ModelPrice.model_validate(filled)
        except ValidationError as exc:
            err = exc.errors()[0]
            skipped[name] = f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
    if len(_map_cache) > 4:
        _map_cache.clear()
    _map_cache[id(raw)] = (raw, prices, skipped)
    return prices, skipped


def load_price_table(path: str | Path | None = None, overrides: str | Path | None = None, *,
                     use_env: bool = True, price_map: str | Path | None = None,
                     lake: Any = None) -> PriceTable:
    """The price table: LiteLLM's map, the project's overrides, the operator's overrides.

    ``path`` names one table to use *instead* of the map and the project's file (tests,
    a fully custom table); it is validated strictly. Without it, the base is
    ``price_map`` (default: ``PROMPTOPS_PRICE_MAP``, else the lake's newest refreshed
    version, else the vendored copy; with ``use_env=False`` always the vendored copy) and
    :data:`DEFAULT_PRICE_FILE` goes on top. ``overrides`` defaults to the file named by
    ``PROMPTOPS_PRICE_OVERRIDES`` (when ``use_env``); an override that is named but missing
    is an error, not silently skipped. Raises :class:`PriceTableError` naming the file, the
    model key and the problem.
    """
    from promptops.metrics import price_map as pm

    if overrides is None and use_env:
        overrides = os.environ.get(OVERRIDES_ENV) or None
    layers: list[Path] = []
    base: dict[str, ModelPrice] = {}
    base_raw: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    sources: list[str] = []
    if path is not None:
        layers.append(Path(path))
    else:
        source = str(price_map) if price_map is not None else \
            pm.default_map_source(use_env=use_env, lake=lake)
        try:
            base_raw = pm.read_price_map(source)
        except pm.PriceMapError as exc:
            raise PriceTableError(str(exc)) from None
        base, skipped = _map_prices(base_raw)
        sources.append(source)
        layers.append(DEFAULT_PRICE_FILE)
    if overrides is not None:
        layers.append(Path(overrides))
    merged: dict[str, dict[str, Any]] = {}
    origin: dict[str, str] = {}
    for layer in layers:
        sources.append(str(layer))
        for name, entry in _read_json_object(layer).items():
            # Field by field: an override may change one price and keep the rest.
            merged[name] = {**merged.get(name, base_raw.get(name, {})), **entry}
            origin[name] = str(layer)
    prices = {**base, **_validate(merged, origin)}
    for name in merged:
        skipped.pop(name, None)
    return PriceTable(prices, sources, skipped)


def unpriced_note(model: str, prices: PriceTable | None = None) -> str:
    """What the unpriced alert says about a model: the closest known one, and what to do."""
    try:
        prices = prices if prices is not None else load_price_table()
        near = prices.closest(model)
    except ConfigError:
        near = []
    hint = f"closest priced model: {near[0]}" if near else "no similar model is priced"
    return (f"{hint}; if {model!r} is that model under another name, add it to "
            f"include/config/model_prices.json or PROMPTOPS_PRICE_OVERRIDES")
