"""HTTP client for the monitored platform's API (the contract in platform-api.md, v1).

One :class:`PlatformClient` per task: a ``requests.Session`` with connection pooling, bounded
retries (tenacity: exponential backoff with jitter, ``Retry-After`` honoured up to a cap), a
persistent circuit breaker around each logical request, and error answers turned into the
exceptions of :mod:`promptops.errors`. The retry and breaker rules are in docs/client.md.

The API key is a secret: it is only ever put into the ``Authorization`` header of ``/v1``
requests; it never appears in an exception, a ``repr`` or a log line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, urlsplit

import orjson
import requests
import urllib3.exceptions as u3
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    retry_if_result,
    stop_after_attempt,
    wait_exponential_jitter,
)
from urllib3.util import Retry

from promptops.errors import (
    ERROR_CLASSES,
    ERROR_CODES,
    AuthenticationFailed,
    ConfigError,
    DataFormatError,
    InvalidInput,
    InvalidRequest,
    PermissionDenied,
    PlatformError,
    PlatformInternalError,
    PlatformNotConfigured,
    PlatformReadTimeout,
    PlatformUnreachable,
    RateLimited,
    UpstreamTimeout,
)
from promptops.platform.breaker import BreakerStore, CircuitBreaker, Ticket
from promptops.platform.paging import (
    CALL_RECORDS,
    MAX_PAGE_LIMIT,
    CallRecordPage,
    body_pages,
    dict_pages,
    read_page_columns,
)
from promptops.secrets import redact

if TYPE_CHECKING:
    from promptops.settings import Settings

log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: No answer, or an answer cut off: worth another attempt.
_RETRYABLE_TRANSPORT_ERRORS = (requests.ConnectionError, requests.Timeout,
                               requests.exceptions.ChunkedEncodingError, u3.ProtocolError,
                               u3.ReadTimeoutError)
_TRANSPORT_ERRORS = (requests.RequestException, u3.ProtocolError, u3.ReadTimeoutError)

_BARE_GATEWAY = frozenset({502, 503, 504})


@dataclass(frozen=True)
class HealthStatus:
    """The answer of ``GET /health``; a degraded platform is a result, not an exception."""

    ok: bool
    status: str
    version: str | None
    reason: str | None
    latency_ms: float
    http_status: int
    #: The platform's clock (``time`` of a healthy answer), when it gave one.
    time: datetime | None = None


@dataclass(frozen=True)
class _Answer:
    """An HTTP answer with its whole body already read (inside the retried attempt, so a
    connection that breaks mid-body is retried too)."""

    status: int
    headers: Any
    body: bytes


class _BearerAuth(AuthBase):
    """Adds the key per request (only to /v1 calls) and keeps it out of every repr."""

    __slots__ = ("_header",)

    def __init__(self, api_key: str) -> None:
        self._header = f"Bearer {api_key}"

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = self._header
        return r

    def __repr__(self) -> str:
        return "<bearer auth: ***>"


def rfc3339(dt: datetime) -> str:
    """UTC with a ``Z``; fractional seconds only when there are any."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise InvalidInput(f"naive datetime {dt.isoformat()}: pass an aware (UTC) datetime")
    u = dt.astimezone(UTC)
    frac = f".{u.microsecond:06d}" if u.microsecond else ""
    return f"{u:%Y-%m-%dT%H:%M:%S}{frac}Z"


def retry_after_s(value: str | None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date; None when absent/garbled."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _parse_error_body(content: bytes) -> tuple[int | None, str]:
    """(code, message) from ``{"error": {"code", "message"}}``; (None, "") otherwise."""
    try:
        doc = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None, ""
    err = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(err, dict):
        return None, ""
    code = err.get("code")
    if isinstance(code, str) and code.strip().isdigit():  # tolerate "5000"
        code = int(code)
    if not isinstance(code, int) or isinstance(code, bool):
        code = None
    message = err.get("message")
    return code, message if isinstance(message, str) else ""


def _is_malformed_answer(exc: BaseException) -> bool:
    """A 2xx answer whose body is not what the contract says (client-side 3002): a body cut
    off or garbled on the way, worth asking for again. A 422 is the platform's own verdict
    on our request and is not."""
    status = getattr(exc, "http_status", None)
    return isinstance(exc, DataFormatError) and status is not None and 200 <= status < 300


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and what it wraps (requests -> urllib3 -> socket), without loops."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo.extend(a for a in (getattr(e, "reason", None), e.__cause__, e.__context__)
                    if isinstance(a, BaseException))
        todo.extend(a for a in e.args if isinstance(a, BaseException))


def _is_read_timeout(exc: BaseException) -> bool:
    if isinstance(exc, requests.ConnectTimeout):
        return False
    if isinstance(exc, requests.ReadTimeout):
        return True
    return any(isinstance(e, u3.ReadTimeoutError) for e in _chain(exc))


def _unreachable_reason(exc: BaseException) -> str:
    import http.client
    import socket

    if isinstance(exc, requests.ConnectTimeout):
        return "connect timeout"
    chain = list(_chain(exc))
    # The operating system's reason first: urllib3's NewConnectionError subclasses its
    # ConnectTimeoutError, so the wrapper alone would call a refused connection a timeout.
    for e in chain:
        if isinstance(e, ConnectionRefusedError):
            return "connection refused"
        if isinstance(e, ConnectionResetError):
            return "connection reset by peer"
        if isinstance(e, socket.gaierror):
            return "host name could not be resolved"
        if isinstance(e, http.client.RemoteDisconnected):
            return "connection closed without an answer"
    for e in chain:
        if isinstance(e, u3.NewConnectionError):
            return "could not open a connection"
        if isinstance(e, u3.ConnectTimeoutError | TimeoutError):
            return "connect timeout"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "connection broken while reading the answer"
    if any(isinstance(e, u3.ProtocolError) for e in chain):
        return "connection broken"
    return f"connection error ({type(exc).__name__})"


class PlatformClient:
    """The platform's API. Thread-safe enough for the background threads it starts itself
    (prefetch, pager); use one client per task (in a DAG task
    ``with airflow_adapters.resources.platform_client() as client: ...``)."""

    def __init__(self, base_url: str, api_key: str, *, connect_timeout: float = 5.0,
                 read_timeout: float = 30.0, max_retries: int = 5, backoff_factor: float = 0.5,
                 backoff_max: float = 30.0, max_retry_after: float = 60.0,
                 malformed_retries: int = 2, breaker: CircuitBreaker | None = None,
                 session: requests.Session | None = None) -> None:
        split = urlsplit(base_url.strip())
        if split.scheme not in ("http", "https") or not split.netloc:
            raise ConfigError(f"platform base URL must be http(s)://host[:port][/prefix], got "
                             f"{base_url!r}")
        if not api_key:
            raise PlatformNotConfigured("PlatformClient needs an API key")
        if max_retries < 0:
            raise InvalidInput("max_retries must be >= 0")
        if malformed_retries < 0:
            raise InvalidInput("malformed_retries must be >= 0")
        self.base_url = base_url.strip().rstrip("/")
        self.host = split.netloc.rpartition("@")[2]  # never a userinfo part
        self._auth = _BearerAuth(api_key)
        self._secret = api_key
        self.timeout = (connect_timeout, read_timeout)
        self.max_retries = max_retries
        #: How often a malformed 2xx answer is asked for again before it is a 3002 error.
        self.malformed_retries = malformed_retries
        self.backoff_factor = backoff_factor
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after
        self.breaker = breaker
        self._backoff = wait_exponential_jitter(multiplier=backoff_factor, max=backoff_max,
                                                jitter=backoff_factor)
        self._own_session = session is None
        self.session = session or requests.Session()
        if self._own_session:
            # Retries are tenacity's job (below), so the transport must not retry on its own;
            # a small pool: the caller's thread plus the prefetch threads.
            adapter = HTTPAdapter(pool_connections=2, pool_maxsize=4,
                                  max_retries=Retry(total=0, read=False, raise_on_status=False))
            self.session.mount("http://", adapter)
            self.session.mount("https://", adapter)
        self.session.headers.setdefault("User-Agent", "promptops-client")
        self.session.headers["Accept"] = "application/json"

    # -- construction from settings ----------------------------------------------------------
    @classmethod
    def from_settings(cls, base_url: str, api_key: str, settings: Settings, *,
                      breaker_name: str, breaker_store: BreakerStore) -> PlatformClient:
        """Timeouts, retries and a circuit breaker (``breaker_name``, its state in
        ``breaker_store``) as the settings say. DAG tasks get theirs, base URL and key from
        the Airflow connection, from ``airflow_adapters.resources.platform_client``."""
        attempts = settings.max_retries + 1
        backoff_max = 30.0
        # A probe that never reports back (its process died) may be retaken after the longest
        # a logical request can take: every attempt timing out plus every wait.
        probe_timeout = (attempts * (settings.connect_timeout_s + settings.read_timeout_s)
                         + settings.max_retries * max(backoff_max, settings.max_retry_after_s))
        breaker = CircuitBreaker(
            breaker_name, breaker_store,
            failure_threshold=settings.breaker_failure_threshold,
            cooldown_s=settings.breaker_cooldown_s, probe_timeout_s=probe_timeout)
        return cls(base_url, api_key, connect_timeout=settings.connect_timeout_s,
                   read_timeout=settings.read_timeout_s, max_retries=settings.max_retries,
                   backoff_factor=settings.backoff_factor_s, backoff_max=backoff_max,
                   max_retry_after=settings.max_retry_after_s,
                   malformed_retries=min(2, settings.max_retries), breaker=breaker)

    # -- lifecycle -----------------------------------------------------------------------------
    def close(self) -> None:
        if self._own_session:
            self.session.close()

    def __enter__(self) -> PlatformClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        breaker = self.breaker.name if self.breaker else None
        return f"PlatformClient(base_url={self.base_url!r}, breaker={breaker!r})"

    # -- endpoints -----------------------------------------------------------------------------
    def health(self) -> HealthStatus:
        """``GET /health`` once (no key, no retries, no breaker: it is how an operator sees
        the platform come back). Any HTTP answer is a result; no answer raises."""
        endpoint = "GET /health"
        t0 = time.perf_counter()
        try:
            resp = self._send("GET", self.base_url + "/health", auth=None)
        except _TRANSPORT_ERRORS as exc:
            raise self._transport_error(exc, endpoint, 1) from exc
        latency_ms = (time.perf_counter() - t0) * 1000
        code = resp.status
        try:
            doc = orjson.loads(resp.body)
        except orjson.JSONDecodeError:
            doc = None
        if not isinstance(doc, dict):
            if code == 200:
                reason: str | None = (
                    f"platform error 3002: /health answered 200 with a body that is not "
                    f"a JSON object ({self._snippet(resp.body)})")
                return HealthStatus(False, "malformed", None, reason, latency_ms, code)
            return HealthStatus(False, "unavailable", None,
                                f"HTTP {code} without a JSON body", latency_ms, code)
        status = doc.get("status")
        version = doc.get("version") if isinstance(doc.get("version"), str) else None
        reason = doc.get("reason") if isinstance(doc.get("reason"), str) else None
        if code == 200 and status == "ok":
            return HealthStatus(True, "ok", version, None, latency_ms, code,
                                _parse_time(doc.get("time")))
        if not isinstance(status, str):
            err_code, message = _parse_error_body(resp.body)
            status = "error"
            reason = reason or (f"code {err_code}: {message}" if err_code else f"HTTP {code}")
        return HealthStatus(False, status, version, self._scrub(reason or f"HTTP {code}"),
                            latency_ms, code)

    def iter_call_record_pages(self, start: datetime, end: datetime,
                               limit: int = MAX_PAGE_LIMIT) -> Iterator[list[dict]]:
        """The records with ``ts`` in ``[start, end)``, one page (list of dicts) at a time.

        While the caller works on one page, a background thread fetches (and parses) the
        next one, so at most two pages are held at once. An error on a later page is raised
        when the caller asks for that page.
        """
        params = self._call_records_params(start, end, limit)
        # Arguments are checked now, not at the first next().
        return dict_pages(partial(self._call_records_page, params))

    def iter_call_record_page_bodies(self, start: datetime, end: datetime,
                                     limit: int = MAX_PAGE_LIMIT) -> Iterator[CallRecordPage]:
        """The same pages as :meth:`iter_call_record_pages`, as :class:`CallRecordPage`:
        the body as received and, where the page is plain well-formed JSON, its records read
        straight into Arrow (``columns``), so that ingest needs no dict per record.

        The next page is asked for as soon as this one has arrived: its cursor is read off
        the end of the body (``..."next_cursor":"..."}``) and confirmed once a pager thread
        has parsed the body, while the platform builds the next page and the caller works
        on the previous one. Should the parsed cursor differ, the early request is dropped
        and the right page fetched. At most four pages are held at once (the caller's, one
        waiting, one being parsed, one arriving). Envelope checks, errors and retries are
        those of :meth:`iter_call_record_pages`; an error is raised when the caller asks for
        the page it belongs to.
        """
        params = self._call_records_params(start, end, limit)
        return body_pages(partial(self._fetch_call_records, params),
                          partial(self._decode_retrying, params))

    @staticmethod
    def _call_records_params(start: datetime, end: datetime, limit: int) -> dict[str, str]:
        if not 1 <= limit <= MAX_PAGE_LIMIT:
            raise InvalidInput(f"limit must be 1..{MAX_PAGE_LIMIT}, got {limit}")
        params = {"start": rfc3339(start), "end": rfc3339(end), "limit": str(limit)}
        if not start < end:
            raise InvalidInput(f"start {params['start']} must be before end {params['end']}")
        return params

    def _fetch_call_records(self, params: dict[str, str], cursor: str | None) -> _Answer:
        query = params if cursor is None else {**params, "cursor": cursor}
        return self._request("GET", CALL_RECORDS, params=query)

    def _call_records_page(self, params: dict[str, str],
                           cursor: str | None) -> tuple[list[dict], str | None]:
        return self._parsed(lambda: self._fetch_call_records(params, cursor),
                            lambda answer: self._page_envelope(answer, cursor))

    def _decode_retrying(self, params: dict[str, str], answer: _Answer,
                         cursor: str | None) -> tuple[CallRecordPage, str | None]:
        """The pager's page (already fetched), decoded; a malformed one is fetched again
        like any other."""
        fetched = iter([answer])

        def fetch() -> _Answer:
            return next(fetched, None) or self._fetch_call_records(params, cursor)

        return self._parsed(fetch, lambda a: self._decode_call_records(a, cursor))

    def _decode_call_records(self, answer: _Answer,
                             cursor: str | None) -> tuple[CallRecordPage, str | None]:
        fast = read_page_columns(answer.body)
        if fast is None:  # not plain JSON of the documented shape: orjson decides
            data, nxt = self._page_envelope(answer, cursor)
            return CallRecordPage(answer.body, None, data), nxt
        columns, nxt = fast
        self._check_next_cursor(nxt, cursor)
        return CallRecordPage(answer.body, columns, None), nxt

    def _page_envelope(self, resp: _Answer, cursor: str | None) -> tuple[list, str | None]:
        """``data`` and ``next_cursor`` of a page, parsed with orjson, or 3002."""
        endpoint = f"GET {CALL_RECORDS}"
        doc = self._json(resp, endpoint)
        data = self._field(doc, "data", list, endpoint)
        if "next_cursor" not in doc:
            raise DataFormatError(
                f"'next_cursor' is missing from the page (keys: {self._keys(doc)}); "
                f"cannot tell the last page from a broken one", http_status=200,
                endpoint=endpoint)
        nxt = doc["next_cursor"]
        self._check_next_cursor(nxt, cursor)
        return data, nxt

    def _check_next_cursor(self, nxt: Any, cursor: str | None) -> None:
        endpoint = f"GET {CALL_RECORDS}"
        if nxt is not None and (not isinstance(nxt, str) or not nxt):
            raise DataFormatError(
                f"'next_cursor' must be a non-empty string or null, got "
                f"{type(nxt).__name__} {self._snippet(orjson.dumps(nxt))}",
                http_status=200, endpoint=endpoint)
        if nxt is not None and nxt == cursor:
            raise DataFormatError("'next_cursor' did not advance (the same cursor came back); "
                                  "stopping instead of looping", http_status=200,
                                  endpoint=endpoint)

    def gpu_metrics(self) -> list[dict]:
        """``GET /v1/gpu_metrics``: one dict per GPU (entries are not validated here)."""
        return self._call_json("GET", "/v1/gpu_metrics", fields={"data": list})["data"]

    def create_action(self, action: str, target: str, params: dict, *, dry_run: bool,
                      reason: str, idempotency_key: str) -> dict:
        """``POST /v1/ops/actions``; safe to retry because of the idempotency key (the same
        key returns the first answer and does not act twice)."""
        if not idempotency_key or not idempotency_key.strip():
            raise InvalidInput("create_action needs a non-empty idempotency_key")
        body = {"action": action, "target": target, "params": params, "dry_run": dry_run,
                "reason": reason}
        return self._call_json("POST", "/v1/ops/actions", json_body=body,
                               idempotency_key=idempotency_key,
                               fields={"action_id": str, "status": str})

    def get_action(self, action_id: str) -> dict:
        """``GET /v1/ops/actions/{action_id}``."""
        return self._call_json("GET", f"/v1/ops/actions/{quote(action_id, safe='')}",
                               fields={"action_id": str, "status": str},
                               endpoint="GET /v1/ops/actions/{id}")

    # -- the request pipeline ------------------------------------------------------------------
    def _call_json(self, method: str, path: str, *, fields: dict[str, type],
                   endpoint: str | None = None, json_body: Any = None,
                   idempotency_key: str | None = None) -> dict:
        """One logical request whose 2xx answer is a JSON object with ``fields`` of these
        types; a malformed answer is asked for again where a repeat is safe."""
        endpoint = endpoint or f"{method} {path}"

        def fetch() -> _Answer:
            return self._request(method, path, json_body=json_body,
                                 idempotency_key=idempotency_key)

        def parse(resp: _Answer) -> dict:
            doc = self._json(resp, endpoint)
            for name, typ in fields.items():
                self._field(doc, name, typ, endpoint)
            return doc

        if method not in ("GET", "HEAD") and idempotency_key is None:
            return parse(fetch())  # the platform could not tell a repeat from a new request
        return self._parsed(fetch, parse)

    def _parsed(self, fetch: Callable[[], _Answer], parse: Callable[[_Answer], _T]) -> _T:
        """``parse(fetch())``; a malformed 2xx answer (3002) is fetched again, up to
        ``malformed_retries`` times with the usual backoff: a body cut off or garbled on the
        way is usually one bad answer. Then the 3002 says how often it was tried."""
        retrying = Retrying(
            stop=stop_after_attempt(self.malformed_retries + 1),
            wait=self._backoff,
            retry=retry_if_exception(_is_malformed_answer),
            before_sleep=self._log_malformed_retry,
            retry_error_callback=self._malformed_exhausted,
        )
        return retrying(lambda: parse(fetch()))

    def _log_malformed_retry(self, rs: RetryCallState) -> None:
        err = rs.outcome.exception() if rs.outcome is not None else None
        wait = rs.next_action.sleep if rs.next_action is not None else 0.0
        log.warning("platform %s gave a malformed answer (code 3002: %s); attempt %d of %d, "
                    "asking again in %.2f s", getattr(err, "endpoint", "?"),
                    getattr(err, "detail", err), rs.attempt_number,
                    self.malformed_retries + 1, wait)

    @staticmethod
    def _malformed_exhausted(rs: RetryCallState) -> Any:
        err = rs.outcome.exception() if rs.outcome is not None else None
        assert isinstance(err, DataFormatError)
        if rs.attempt_number == 1:
            raise err
        tries = f" (after {rs.attempt_number} attempts)"
        raise DataFormatError(err.detail[:300 - len(tries)] + tries,
                              http_status=err.http_status, endpoint=err.endpoint) from None

    def _send(self, method: str, url: str, *, auth: AuthBase | None,
              params: dict[str, str] | None = None, data: bytes | None = None,
              headers: dict[str, str] | None = None) -> _Answer:
        """One HTTP exchange. The body is read in one call on the raw stream: for a 10,000
        record page that costs a third of the CPU of ``Response.content``'s 10 KiB chunks."""
        resp = self.session.request(method, url, params=params, data=data, headers=headers,
                                    auth=auth, timeout=self.timeout, allow_redirects=False,
                                    stream=True)
        try:
            body = resp.raw.read(decode_content=True)
        finally:
            resp.close()  # after a full read the connection is already back in the pool
        return _Answer(resp.status_code, resp.headers, body)

    def _request(self, method: str, path: str, *, params: dict[str, str] | None = None,
                 json_body: Any = None, idempotency_key: str | None = None) -> _Answer:
        """One logical request: breaker check, attempts with retries, breaker report.
        Returns a 2xx response or raises a :mod:`promptops.errors` exception."""
        endpoint = f"{method} {path}"
        headers: dict[str, str] = {}
        data = None
        if json_body is not None:
            data = orjson.dumps(json_body)
            headers["Content-Type"] = "application/json"
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        # A POST is retried only when the platform can tell a retry from a new request.
        retry_ok = method in ("GET", "HEAD") or idempotency_key is not None
        max_attempts = self.max_retries + 1 if retry_ok else 1
        url = self.base_url + path
        attempts = 0

        def attempt() -> _Answer:
            nonlocal attempts
            attempts += 1
            return self._send(method, url, auth=self._auth, params=params, data=data,
                              headers=headers)

        ticket = self.breaker.before_call() if self.breaker is not None else None
        try:
            retrying = Retrying(
                stop=stop_after_attempt(max_attempts),
                wait=self._wait,
                retry=(retry_if_exception(self._retryable_exception)
                       | retry_if_result(self._retryable_response)),
                before_sleep=lambda rs: self._log_retry(rs, endpoint, max_attempts),
                # Exhausted: hand back the last response (turned into an error below) or
                # re-raise the last exception, instead of tenacity's RetryError.
                retry_error_callback=lambda rs: rs.outcome.result(),  # type: ignore[union-attr]
            )
            resp = retrying(attempt)
        except u3.DecodeError as exc:  # a compressed body that does not decompress
            err: PlatformError | PlatformUnreachable = DataFormatError(
                "the answer's compressed body could not be decoded", endpoint=endpoint)
            self._report(ticket, err)
            raise err from exc
        except _TRANSPORT_ERRORS as exc:
            err = self._transport_error(exc, endpoint, attempts)
            self._report(ticket, err)
            raise err from exc
        # Anything else (our own bug, an interrupt) propagates without a report to the
        # breaker; a probe it held expires after the probe timeout.
        if resp.status >= 300:
            err = self._error_from_response(resp, endpoint, attempts)
            self._report(ticket, err)
            raise err
        self._report(ticket, None)
        return resp

    def _report(self, ticket: Ticket | None, err: Exception | None) -> None:
        """Tell the breaker how the logical request went. Only errors that say the platform
        is unwell count as failures; 401/403/422 and a malformed 200 mean the platform
        answered (our key, our request or its data is wrong), which is a success for it."""
        if self.breaker is None:
            return
        if err is not None and getattr(err, "retryable", False):
            self.breaker.record_failure(err, ticket)
        else:
            self.breaker.record_success(ticket)

    @staticmethod
    def _retryable_exception(exc: BaseException) -> bool:
        # requests' ConnectionError covers refused/reset/DNS, Timeout connect and read
        # timeouts; urllib3's errors come from reading the body (cut off, timed out).
        return isinstance(exc, _RETRYABLE_TRANSPORT_ERRORS)

    @staticmethod
    def _retryable_response(resp: _Answer) -> bool:
        status = resp.status
        if status < 400:
            return False
        code, _ = _parse_error_body(resp.body)
        if code in ERROR_CODES:
            return ERROR_CODES[code].retryable
        # No (known) platform code: a proxy's 5xx page is treated like 2001, 429 like 2002.
        return status >= 500 or status == 429

    def _wait(self, rs: RetryCallState) -> float:
        outcome = rs.outcome
        if outcome is not None and not outcome.failed:
            told = retry_after_s(outcome.result().headers.get("Retry-After"))
            if told is not None:
                return min(told, self.max_retry_after)
        return self._backoff(rs)

    def _log_retry(self, rs: RetryCallState, endpoint: str, max_attempts: int) -> None:
        outcome = rs.outcome
        wait = rs.next_action.sleep if rs.next_action is not None else 0.0
        if outcome is None:
            what = "unknown outcome"
        elif outcome.failed:
            exc = outcome.exception()
            assert exc is not None
            if _is_read_timeout(exc):
                what = f"code 2001 (no answer within the read timeout of {self.timeout[1]:g} s)"
            else:
                what = f"no answer from {self.host} ({_unreachable_reason(exc)})"
        else:
            resp = outcome.result()
            code, _ = _parse_error_body(resp.body)
            if code is None:
                code = 2001 if resp.status in _BARE_GATEWAY else (
                    2002 if resp.status == 429 else 5000)
                what = f"code {code} (HTTP {resp.status} without a JSON error body)"
            else:
                what = f"code {code} (HTTP {resp.status})"
            told = retry_after_s(resp.headers.get("Retry-After"))
            if told is not None and told > self.max_retry_after:
                what += f", Retry-After {told:g} s capped at {self.max_retry_after:g} s"
        log.warning("platform %s failed with %s; attempt %d of %d, retrying in %.2f s",
                    endpoint, what, rs.attempt_number, max_attempts, wait)

    # -- turning answers into errors ------------------------------------------------------------
    def _transport_error(self, exc: BaseException, endpoint: str,
                         attempts: int) -> PlatformError | PlatformUnreachable:
        tries = f" ({attempts} attempts)" if attempts > 1 else ""
        if _is_read_timeout(exc):
            return PlatformReadTimeout(
                f"no answer within the read timeout of {self.timeout[1]:g} s{tries}",
                endpoint=endpoint, timeout_s=self.timeout[1])
        return PlatformUnreachable(self.host, reason=_unreachable_reason(exc),
                                   endpoint=endpoint, attempts=attempts)

    def _error_from_response(self, resp: _Answer, endpoint: str,
                             attempts: int) -> PlatformError:
        status = resp.status
        code, message = _parse_error_body(resp.body)
        tries = f" (after {attempts} attempts)" if attempts > 1 else ""
        cls: type[PlatformError]
        if code in ERROR_CLASSES:
            cls, detail = ERROR_CLASSES[code], message or "(no message)"
            if cls is DataFormatError and 400 <= status < 500:
                cls = InvalidRequest
        else:
            unknown = f"unknown platform code {code}: " if code is not None else ""
            if status in _BARE_GATEWAY and code is None:
                cls = UpstreamTimeout
                detail = f"HTTP {status} without a JSON error body (a proxy's page)"
            else:
                cls = {401: AuthenticationFailed, 403: PermissionDenied,
                       429: RateLimited}.get(status, PlatformInternalError if status >= 500
                                             else InvalidRequest if status >= 400
                                             else DataFormatError)
                detail = (f"unexpected HTTP {status}: {unknown}"
                          f"{message or self._snippet(resp.body)}")
        return cls(self._scrub(detail) + tries, http_status=status, endpoint=endpoint)

    def _json(self, resp: _Answer, endpoint: str) -> dict:
        """The body of a 2xx answer as a JSON object, or 3002 saying what is wrong."""
        body = resp.body
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            if body[:1] in (b"{", b"[") and "end of" in str(exc).lower():
                what = f"truncated JSON ({len(body)} bytes, cut off at the end)"
            else:
                what = f"not JSON ({self._snippet(body)})"
            raise DataFormatError(f"the HTTP {resp.status} body is {what}",
                                  http_status=resp.status, endpoint=endpoint) from None
        if not isinstance(doc, dict):
            raise DataFormatError(f"the body is a JSON {type(doc).__name__}, expected an object",
                                  http_status=resp.status, endpoint=endpoint)
        return doc

    def _field(self, doc: dict, name: str, typ: type, endpoint: str) -> Any:
        if name not in doc:
            raise DataFormatError(f"{name!r} is missing from the answer (keys: "
                                  f"{self._keys(doc)})", http_status=200, endpoint=endpoint)
        value = doc[name]
        if not isinstance(value, typ):
            raise DataFormatError(f"{name!r} is a JSON {type(value).__name__}, expected "
                                  f"{typ.__name__}", http_status=200, endpoint=endpoint)
        return value

    @staticmethod
    def _keys(doc: dict) -> str:
        return ", ".join(sorted(str(k)[:40] for k in list(doc)[:20])) or "none"

    def _snippet(self, body: bytes, n: int = 60) -> str:
        text = body[:n].decode("utf-8", "replace")
        more = "..." if len(body) > n else ""
        return self._scrub(f"starts with {text!r}{more}" if body else "empty body")

    def _scrub(self, text: str) -> str:
        # The platform's own text goes into our messages; a broken platform could echo the
        # key back, so it is blanked out here, whatever the source.
        return redact(text, [self._secret])


def _parse_time(value: Any) -> datetime | None:
    """An RFC 3339 time as an aware UTC datetime; None for anything else."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return parsed.astimezone(UTC) if parsed.tzinfo else None
