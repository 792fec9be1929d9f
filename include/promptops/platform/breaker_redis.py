"""Circuit-breaker state in Redis, shared by every worker that reaches it.

The file store locks with ``flock``, which holds on one host only: under Celery each worker
host kept a breaker of its own and retried a dead platform at full rate. Here a breaker is
one JSON value under ``<prefix><name>`` (``promptops:breaker:prompt_platform``), rewritten
with a TTL so stale state ages out; every read-modify-write is a WATCH/MULTI transaction, so
the half-open probe goes to exactly one caller across processes and hosts (the probe's
expiry is the breaker's own ``probe_timeout_s``).

When Redis cannot be reached the store says so once, with the URL's password masked, and
uses a fallback store (this host's files) until Redis answers again: the breaker then guards
each host on its own, as before, instead of turning a Redis outage into failed platform
calls. Without a fallback (the CLI) it raises :class:`BreakerStoreUnavailable`.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import time
from collections.abc import Callable
from typing import TypeVar, cast
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from promptops.errors import ConfigError, InvalidInput, PromptOpsError
from promptops.platform.breaker import BreakerState, BreakerStore, check_name
from promptops.secrets import SecretMasker, redact

log = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_PREFIX = "promptops:breaker:"
DEFAULT_TTL_S = 7 * 86400


class BreakerStoreUnavailable(PromptOpsError):
    """The shared breaker store cannot be reached and there is no fallback."""


def url_passwords(url: str) -> list[str]:
    """The secrets a Redis URL can carry: the userinfo (a bare one may be a password) and a
    ``password`` query parameter."""
    parts = urlsplit(url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    found = [password if colon else user] if at else []
    found += [v for k, v in parse_qsl(parts.query) if k.lower() == "password"]
    # Also as redis-py decodes them, in case an error quotes one back.
    return sorted({s for secret in found if secret for s in (secret, unquote(secret))},
                  key=len, reverse=True)


def redact_url(url: str) -> str:
    """The URL to show in logs and messages: passwords replaced with ``***``."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    netloc = parts.netloc
    if at:
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:***@{hostport}" if colon else f"***@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k.lower() == "password" else v) for k, v in pairs],
                          safe="*")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


class RedisBreakerStore:
    """A :class:`~promptops.platform.breaker.BreakerStore` in Redis.

    ``fallback`` (usually this host's :class:`~promptops.platform.breaker.FileBreakerStore`) serves
    while Redis is unreachable; Redis is tried again ``retry_after_s`` after each failure.
    ``cli_options`` is what ``python -m promptops.platform.breaker`` needs to find this store (empty
    when the settings lead it there). ``mask_secret`` registers the URL's passwords with the
    log masker (in a DAG task Airflow's, see ``airflow_adapters.resources.breaker_store``).
    """

    def __init__(self, url: str, *, prefix: str = DEFAULT_PREFIX, ttl_s: int = DEFAULT_TTL_S,
                 fallback: BreakerStore | None = None, retry_after_s: float = 30.0,
                 cli_options: str | None = None,
                 monotonic: Callable[[], float] = time.monotonic,
                 mask_secret: SecretMasker | None = None) -> None:
        if ttl_s < 1:
            raise InvalidInput("ttl_s must be >= 1")
        self.url = redact_url(url)
        self._secrets = url_passwords(url)
        if mask_secret is not None:
            for secret in self._secrets:
                mask_secret(secret, "the breaker's Redis password")
        try:
            # Short timeouts and few retries: the breaker guards every platform call, so an
            # unreachable Redis must cost a moment, not a task's run.
            self.client = redis.Redis.from_url(
                url, socket_connect_timeout=2.0, socket_timeout=2.0,
                retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2))
        except ValueError as exc:
            raise ConfigError(f"breaker Redis URL {self.url} is not usable: "
                             f"{self._scrub(str(exc))}. Write it as "
                             f"redis://[[user]:password@]host[:port][/db] (or rediss://)") from None
        self.prefix = prefix
        self.ttl_s = int(ttl_s)
        self.fallback = fallback
        self.retry_after_s = retry_after_s
        self._monotonic = monotonic
        self._down_until: float | None = None  # set while the fallback serves
        if cli_options is None:
            cli_options = f"--redis-url {shlex.quote(self.url)}"
            if prefix != DEFAULT_PREFIX:
                cli_options += f" --redis-prefix {shlex.quote(prefix)}"
        self.cli_options = cli_options

    @property
    def location(self) -> str:
        return f"{self.url} {self.prefix}*"

    def __repr__(self) -> str:
        return f"RedisBreakerStore({self.url!r}, prefix={self.prefix!r})"

    def close(self) -> None:
        self.client.close()

    def _key(self, name: str) -> str:
        return f"{self.prefix}{check_name(name)}"

    # -- the protocol ---------------------------------------------------------------------------
    def load(self, name: str) -> BreakerState:
        key = self._key(name)
        return self._call(lambda: self._decode(self.client.get(key), key),
                          lambda fb: fb.load(name))

    def update(self, name: str, fn: Callable[[BreakerState], T]) -> T:
        key = self._key(name)

        def transaction(pipe: redis.client.Pipeline) -> T:
            # Runs again from a fresh read when another writer changed the key after WATCH,
            # so ``fn`` only ever acts on the state that gets committed.
            state = self._decode(pipe.get(key), key)
            before = state.to_dict()
            result = fn(state)
            pipe.multi()
            if state.to_dict() != before:
                pipe.set(key, json.dumps(state.to_dict(), sort_keys=True), ex=self.ttl_s)
            return result

        # With value_from_callable redis-py returns what ``transaction`` returns; its
        # annotations expect a callable returning None and return a union.
        run = cast("Callable[[redis.client.Pipeline], None]", transaction)
        return self._call(
            lambda: cast(T, self.client.transaction(run, key, value_from_callable=True)),
            lambda fb: fb.update(name, fn))

    def names(self) -> list[str]:
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", self.prefix) + "*"

        def scan() -> list[str]:
            found = (k.decode()[len(self.prefix):] for k in self.client.scan_iter(
                match=pattern, count=500))
            return sorted(n for n in found if _is_name(n))

        return self._call(scan, lambda fb: fb.names())

    # -- Redis trouble ---------------------------------------------------------------------------
    def _call(self, op: Callable[[], T], on_fallback: Callable[[BreakerStore], T]) -> T:
        if (self.fallback is not None and self._down_until is not None
                and self._monotonic() < self._down_until):
            return on_fallback(self.fallback)
        try:
            result = op()
        except redis.RedisError as exc:
            cause = f"{type(exc).__name__}: {self._scrub(str(exc))}"
            if self.fallback is None:
                raise BreakerStoreUnavailable(
                    f"the breaker store in Redis at {self.url} is unreachable ({cause}). What "
                    f"to do: check that Redis runs and that the URL and password are right; "
                    f"or use files on each host with PROMPTOPS_BREAKER_STORE=file.") from exc
            if self._down_until is None:  # once per outage, not once per call
                log.warning(
                    "breaker store: Redis at %s is unreachable (%s); using the file store at "
                    "%s, so the breaker protects this host only, and trying Redis again every "
                    "%.0f s. What to do: check that Redis runs and the URL "
                    "(PROMPTOPS_BREAKER_REDIS_URL or the Celery broker); or set "
                    "PROMPTOPS_BREAKER_STORE=file to use files on purpose.",
                    self.url, cause, getattr(self.fallback, "location", self.fallback),
                    self.retry_after_s)
            self._down_until = self._monotonic() + self.retry_after_s
            return on_fallback(self.fallback)
        if self._down_until is not None:
            log.info("breaker store: Redis at %s is reachable again; the breaker state is "
                     "shared again", self.url)
            self._down_until = None
        return result

    def _scrub(self, text: str) -> str:
        return redact(text, self._secrets)

    def _decode(self, raw: bytes | str | None, key: str) -> BreakerState:
        if raw is None:
            return BreakerState()
        try:
            return BreakerState.from_dict(json.loads(raw))
        except (ValueError, TypeError, AttributeError) as exc:
            # Not written by this class (it writes whole JSON values); a hand-set key must
            # not wedge every task, so start closed and say so.
            log.warning("breaker state %s in Redis at %s is unreadable (%s); treating it as "
                        "closed", key, self.url, exc)
            return BreakerState()


def _is_name(name: str) -> bool:
    try:
        check_name(name)
    except ValueError:
        return False
    return True
