"""The platform's error codes (platform-api.md, "Errors") and the exceptions the project raises.

Each code maps to one exception class whose message carries the code, what it means and what
the operator should do. Messages never contain the API key or any other secret: callers pass
only the platform's own message text, which the client truncates.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorCode:
    code: int
    http_status: int
    meaning: str
    remedy: str
    retryable: bool


#: The contract's table, verbatim in meaning; the single source for client and simulator.
ERROR_CODES: dict[int, ErrorCode] = {
    1001: ErrorCode(1001, 401, "authentication failed (missing, wrong or expired key)",
                    "check the API key", retryable=False),
    1002: ErrorCode(1002, 403, "permission denied for this key",
                    "check the service account's permissions", retryable=False),
    2001: ErrorCode(2001, 504, "upstream request timed out",
                    "raise the timeout or retry policy", retryable=True),
    2002: ErrorCode(2002, 429, "rate limited",
                    "lower the request rate or raise the rate limit", retryable=True),
    3002: ErrorCode(3002, 422, "request or data format invalid",
                    "fix the request or check the platform's response format", retryable=False),
    4003: ErrorCode(4003, 503, "platform database unavailable",
                    "check the platform database", retryable=True),
    5000: ErrorCode(5000, 500, "internal error",
                    "retry later; if it persists, contact the platform team", retryable=True),
}


class PromptOpsError(Exception):
    """Base class of every error promptops raises on purpose."""


# -- Kinds of error with no class of their own. Each is also the builtin it used to be, so
# -- callers that catch ValueError, LookupError or RuntimeError keep working. -------------


class ConfigError(PromptOpsError, ValueError):
    """A setting, config file, connection, run conf or command-line value is wrong; the
    message names it and says what it should be."""


class InvalidInput(PromptOpsError, ValueError):
    """A function was handed what it does not take (a table without the needed columns, an
    unknown name, a naive time, stored data that does not add up); the message says what
    it takes."""


class MissingData(PromptOpsError, LookupError):
    """What a step reads is not in the lake (yet); the message names the step that
    writes it."""


class StepIncomplete(PromptOpsError, RuntimeError):
    """A step cannot finish: part of the run it builds on is missing, or concurrent runs
    kept it from committing; the message says what to rerun or check."""


class PlatformError(PromptOpsError):
    """An error answer (or a broken answer) from the monitored platform's API."""

    code: int = 5000
    # None only when the platform never answered (PlatformReadTimeout).
    http_status: int | None

    def __init__(self, detail: str = "", *, http_status: int | None = None,
                 endpoint: str | None = None) -> None:
        spec = ERROR_CODES[self.code]
        self.detail = detail[:300]
        self.http_status = http_status if http_status is not None else spec.http_status
        self.endpoint = endpoint
        where = f" on {endpoint}" if endpoint else ""
        extra = f": {self.detail}" if self.detail else ""
        super().__init__(
            f"platform error {spec.code} (HTTP {self.http_status}){where}, "
            f"{spec.meaning}{extra}. What to do: {spec.remedy}."
        )

    @property
    def retryable(self) -> bool:
        return ERROR_CODES[self.code].retryable


class AuthenticationFailed(PlatformError):
    code = 1001


class PermissionDenied(PlatformError):
    code = 1002


class UpstreamTimeout(PlatformError):
    code = 2001


class RateLimited(PlatformError):
    code = 2002


class DataFormatError(PlatformError):
    code = 3002


class InvalidRequest(DataFormatError):
    """3002 from the platform itself (HTTP 422, or another 4xx it gives no code for): it
    refused our request, so sending the same request again gets the same answer."""


class PlatformDatabaseUnavailable(PlatformError):
    code = 4003


class PlatformInternalError(PlatformError):
    code = 5000


ERROR_CLASSES: dict[int, type[PlatformError]] = {
    cls.code: cls
    for cls in (AuthenticationFailed, PermissionDenied, UpstreamTimeout, RateLimited,
                DataFormatError, PlatformDatabaseUnavailable, PlatformInternalError)
}


class CircuitOpenError(PromptOpsError):
    """The client refuses to call the platform because recent calls kept failing."""


class RejectShareExceeded(PromptOpsError):
    """Too large a share of a batch broke the record schema."""


# -- Client-side failures that have no platform code (added with the API client) ---------------


class PlatformUnreachable(PromptOpsError):
    """No HTTP answer at all: connection refused or reset, DNS failure, connect timeout.

    Not one of the platform's codes (the platform never answered), so ``code`` is None; the
    message names the host and the endpoint, never the key.
    """

    code: int | None = None
    retryable = True

    def __init__(self, host: str, *, reason: str, endpoint: str | None = None,
                 attempts: int = 1) -> None:
        self.host = host
        self.reason = reason
        self.endpoint = endpoint
        self.attempts = attempts
        where = f" on {endpoint}" if endpoint else ""
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(
            f"cannot reach the platform at {host} ({reason}){where}{tries}. What to do: check "
            f"that the platform is up and reachable from this worker, and that the host and "
            f"port of the platform connection are right."
        )


class PlatformReadTimeout(UpstreamTimeout):
    """Code 2001 seen from our side: the platform accepted the request but did not answer
    within the client's read timeout (so there is no HTTP status)."""

    def __init__(self, detail: str = "", *, endpoint: str | None = None,
                 timeout_s: float | None = None) -> None:
        spec = ERROR_CODES[self.code]
        self.detail = detail[:300]
        self.http_status = None
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        where = f" on {endpoint}" if endpoint else ""
        extra = f": {self.detail}" if self.detail else ""
        PromptOpsError.__init__(
            self,
            f"platform error {spec.code} (no answer within the client's read timeout){where}, "
            f"{spec.meaning}{extra}. What to do: {spec.remedy}.",
        )


class PlatformNotConfigured(PromptOpsError):
    """Neither the Airflow connection nor the environment says where the platform is or
    which key to use."""


#: Failures that another try of the same task cannot fix: a person has to change the key,
#: the service account's permissions, the request or the platform connection first. Tasks
#: fail at once on these, without Airflow's retries (see promptops.airflow_adapters.failure_notifier).
PERMANENT_ERRORS: tuple[type[PromptOpsError], ...] = (
    AuthenticationFailed, PermissionDenied, InvalidRequest, PlatformNotConfigured)
