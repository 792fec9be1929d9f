"""LiteLLM's price map: where it is read from, its versions in the lake, and its refresh.

The map is LiteLLM's ``model_prices_and_context_window.json`` as published: every model,
every field. It is read from, in this order:

1. ``PROMPTOPS_PRICE_MAP``: a path or an ``http(s)://`` URL (an operator's pin);
2. the newest version the daily refresh wrote into the lake (``price_map/version=.../``);
3. the copy vendored in ``include/config/litellm_model_prices.json`` (taken from the
   ``litellm`` package this project tests against, see requirements-litellm.txt).

Parsed maps are cached per source (path + size + mtime, or URL), so the hourly run parses
the 3.5 MB file once per process, not once per hour.

:func:`refresh_price_map` fetches the published map, writes it as a new version (never over
an old one) and returns a :class:`PriceMapDiff` (new models, removed models, changed prices).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from promptops.errors import ConfigError

log = logging.getLogger(__name__)

#: The vendored copy of LiteLLM's map (litellm 1.110.2's ``..._backup.json``).
VENDORED_PRICE_MAP = Path(__file__).resolve().parents[2] / "config" / "litellm_model_prices.json"
#: Environment variable naming another map: a path or an http(s) URL.
PRICE_MAP_ENV = "PROMPTOPS_PRICE_MAP"
#: Environment variable naming the URL the refresh fetches.
PRICE_MAP_URL_ENV = "PROMPTOPS_PRICE_MAP_URL"
#: Where LiteLLM publishes the map.
DEFAULT_PRICE_MAP_URL = ("https://raw.githubusercontent.com/BerriAI/litellm/main/"
                         "model_prices_and_context_window.json")
#: The lake folder that holds the refreshed versions.
LAKE_DIR = "price_map"
MAP_FILE = "model_prices.json"
_SAMPLE_SPEC = "sample_spec"


class PriceMapError(ConfigError):
    """A price map that cannot be read or used; the message names where and why."""


def parse_price_map(text: str | bytes, where: str) -> dict[str, dict[str, Any]]:
    """The map's entries (``sample_spec`` dropped); an error names ``where`` and the problem."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PriceMapError(f"price map {where} is not valid JSON: {exc.msg} at line "
                            f"{exc.lineno}, column {exc.colno}") from None
    if not isinstance(data, dict):
        raise PriceMapError(f"price map {where} must hold a JSON object of model name -> "
                            f"prices (LiteLLM's shape), not a {type(data).__name__}")
    data.pop(_SAMPLE_SPEC, None)
    bad = [k for k, v in data.items() if not isinstance(v, dict)]
    if bad:
        raise PriceMapError(f"price map {where}: {len(bad)} entr(y/ies) are not objects of "
                            f"prices, e.g. {bad[0]!r}; is this LiteLLM's "
                            "model_prices_and_context_window.json?")
    if not data:
        raise PriceMapError(f"price map {where} holds no models")
    return data


def fetch_text(url: str, timeout_s: float = 30.0) -> bytes:
    """GET ``url``; errors name the URL (without its query, which may hold a token)."""
    import httpx

    shown = url.split("?", 1)[0]
    try:
        response = httpx.get(url, timeout=timeout_s, follow_redirects=True)
    except httpx.HTTPError as exc:
        raise PriceMapError(f"price map {shown} could not be fetched: "
                            f"{type(exc).__name__}") from None
    if response.status_code != 200:
        raise PriceMapError(f"price map {shown} could not be fetched: HTTP "
                            f"{response.status_code}; check {PRICE_MAP_URL_ENV} / "
                            f"{PRICE_MAP_ENV}")
    return response.content


# -- reading, cached --------------------------------------------------------------------------

_cache: dict[tuple, dict[str, dict[str, Any]]] = {}
_cache_lock = threading.Lock()


def _cached(key: tuple, load: Callable[[], dict[str, dict[str, Any]]]
            ) -> dict[str, dict[str, Any]]:
    with _cache_lock:
        hit = _cache.get(key)
    if hit is None:
        hit = load()
        with _cache_lock:
            if len(_cache) > 8:  # a long-lived worker that saw many versions
                _cache.clear()
            _cache[key] = hit
    return hit


def read_price_map(source: str | Path) -> dict[str, dict[str, Any]]:
    """The map at a path or http(s) URL, parsed once per version of the file.

    The returned dict is shared: callers copy an entry before changing it.
    """
    text = str(source)
    if text.startswith(("http://", "https://")):
        return _cached(("url", text), lambda: parse_price_map(fetch_text(text), text))
    if "://" in text and not text.startswith("file://"):
        return _read_upath(text)
    path = Path(text.removeprefix("file://"))
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise PriceMapError(f"price map {path} does not exist; set {PRICE_MAP_ENV} to a "
                            "readable path or URL, or unset it to use the vendored map") from None

    def load() -> dict[str, dict[str, Any]]:
        try:
            return parse_price_map(path.read_bytes(), str(path))
        except OSError as exc:
            raise PriceMapError(f"price map {path} cannot be read: {exc.strerror}") from None

    return _cached(("file", str(path), stat.st_size, stat.st_mtime_ns), load)


def _read_upath(uri: str) -> dict[str, dict[str, Any]]:
    from upath import UPath

    path = UPath(uri)
    # Versions in the lake never change once written: the name is the cache key.
    return _cached(("upath", uri), lambda: parse_price_map(path.read_bytes(), uri))


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


# -- versions in the lake ---------------------------------------------------------------------

def _versions_dir(lake: Any) -> Any:
    return lake.root / LAKE_DIR


def lake_versions(lake: Any) -> list[str]:
    """The versions in the lake, oldest first (``version=<UTC time>`` names sort by time)."""
    base = _versions_dir(lake)
    try:
        if not base.exists():
            return []
        names = [p.name for p in base.iterdir() if p.name.startswith("version=")
                 and (p / MAP_FILE).exists()]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(names)


def newest_lake_version(lake: Any) -> str | None:
    """URI of the newest map in the lake, or None when the refresh never ran."""
    versions = lake_versions(lake)
    return str(_versions_dir(lake) / versions[-1] / MAP_FILE) if versions else None


def default_map_source(*, use_env: bool = True, lake: Any = None) -> str:
    """Where the map is read from: ``PROMPTOPS_PRICE_MAP``, else the lake's newest version,
    else the vendored copy. ``use_env=False`` (tests, benches) always takes the vendored one."""
    if not use_env:
        return str(VENDORED_PRICE_MAP)
    pinned = os.environ.get(PRICE_MAP_ENV)
    if pinned:
        return pinned
    try:
        if lake is None:
            from promptops.lake.store import Lake

            lake = Lake()
        newest = newest_lake_version(lake)
    except Exception as exc:  # an unreachable lake must not stop billing: say so, go on
        log.warning("price map: the lake's versions cannot be listed (%s); using the "
                    "vendored map %s", type(exc).__name__, VENDORED_PRICE_MAP)
        newest = None
    return newest or str(VENDORED_PRICE_MAP)


# -- the diff -----------------------------------------------------------------------------------

def _is_price_key(key: str, value: Any) -> bool:
    return ("cost" in key or key == "tiered_pricing" or key == "off_peak_pricing") and \
        not isinstance(value, str)


def _prices_of(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if _is_price_key(k, v)}


@dataclass
class PriceMapDiff:
    """What changed between two maps."""

    old_models: int
    new_models: int
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    #: model -> {field: [old, new]} for the price fields that changed.
    changed: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    version: str | None = None
    previous: str | None = None

    @property
    def unchanged(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def counts(self) -> dict[str, int]:
        return {"added": len(self.added), "removed": len(self.removed),
                "changed": len(self.changed), "models": self.new_models}

    def describe(self, limit: int = 10) -> str:
        """A few lines for a log or a Slack message."""
        if self.unchanged:
            return (f"price map unchanged ({self.new_models:,} models); "
                    f"newest version {self.previous or self.version}")
        lines = [f"price map {self.version}: {self.new_models:,} models "
                 f"(was {self.old_models:,}): {len(self.added)} new, {len(self.removed)} "
                 f"removed, {len(self.changed)} with changed prices"]

        def some(names: list[str]) -> str:
            more = f" and {len(names) - limit} more" if len(names) > limit else ""
            return ", ".join(names[:limit]) + more

        if self.added:
            lines.append(f"new: {some(self.added)}")
        if self.removed:
            lines.append(f"removed: {some(self.removed)}")
        if self.changed:
            shown = []
            for name in list(self.changed)[:limit]:
                parts = [f"{k} {a} -> {b}" for k, (a, b) in sorted(self.changed[name].items())
                         if not isinstance(a, dict | list) and not isinstance(b, dict | list)]
                shown.append(f"{name} ({'; '.join(parts[:3]) or 'tiers'})")
            more = f" and {len(self.changed) - limit} more" if len(self.changed) > limit else ""
            lines.append("changed: " + ", ".join(shown) + more)
        return "\n".join(lines)

    def as_dict(self, limit: int = 50) -> dict[str, Any]:
        """For XCom: counts plus the first ``limit`` names of each list."""
        return {"version": self.version, "previous": self.previous, **self.counts(),
                "added_models": self.added[:limit], "removed_models": self.removed[:limit],
                "changed_models": {k: self.changed[k] for k in list(self.changed)[:limit]},
                "summary": self.describe()}


def diff_price_maps(old: Mapping[str, Mapping[str, Any]],
                    new: Mapping[str, Mapping[str, Any]]) -> PriceMapDiff:
    """New models, removed models, and models whose price fields changed."""
    diff = PriceMapDiff(old_models=len(old), new_models=len(new),
                        added=sorted(set(new) - set(old)), removed=sorted(set(old) - set(new)))
    for name in sorted(set(new) & set(old)):
        before, after = _prices_of(old[name]), _prices_of(new[name])
        if before != after:
            diff.changed[name] = {k: [before.get(k), after.get(k)]
                                  for k in sorted(set(before) | set(after))
                                  if before.get(k) != after.get(k)}
    return diff


# -- the refresh --------------------------------------------------------------------------------

def refresh_price_map(lake: Any, url: str | None = None, *, now: datetime | None = None,
                      timeout_s: float = 30.0) -> PriceMapDiff:
    """Fetch the published map, write it into the lake as a new version, return the diff.

    The diff is against the newest version in the lake (else the vendored copy). A fetched
    map identical to that version writes nothing. An old version is never overwritten: a
    second refresh in the same second gets a suffixed name. A fetched map that is not a
    valid price map raises :class:`PriceMapError` and writes nothing.
    """
    url = url or os.environ.get(PRICE_MAP_URL_ENV) or DEFAULT_PRICE_MAP_URL
    raw = fetch_text(url, timeout_s)
    new = parse_price_map(raw, url.split("?", 1)[0])
    previous = newest_lake_version(lake)
    old = read_price_map(previous or VENDORED_PRICE_MAP)
    diff = diff_price_maps(old, new)
    diff.previous = previous or str(VENDORED_PRICE_MAP)
    if previous is not None and diff.unchanged and \
            _digest(raw) == _digest(_read_bytes(previous)):
        log.info("price map at %s is unchanged since %s", url.split("?", 1)[0], previous)
        return diff
    now = (now or datetime.now(UTC)).astimezone(UTC)
    base = _versions_dir(lake)
    name = f"version={now:%Y%m%dT%H%M%SZ}"
    n = 1
    while (base / name).exists():  # never overwrite a version
        n += 1
        name = f"version={now:%Y%m%dT%H%M%SZ}-{n}"
    target = base / name
    target.mkdir(parents=True, exist_ok=True)
    diff.version = str(target / MAP_FILE)
    (target / MAP_FILE).write_bytes(raw)
    (target / "diff.json").write_text(json.dumps(diff.as_dict(limit=10_000) | {
        "url": url.split("?", 1)[0], "sha256": _digest(raw)}, indent=1, default=str))
    log.info("%s", diff.describe())
    return diff


def _read_bytes(uri: str) -> bytes:
    from upath import UPath

    return UPath(uri).read_bytes()


def _digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def price_map_message(diff: PriceMapDiff) -> dict[str, Any]:
    """The Slack message of a refresh that changed the map: counts and the first names."""
    text = f"*Price map refreshed*: {diff.describe()}"
    return {"text": text[:3000],
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}}]}

