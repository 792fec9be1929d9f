"""Everything promptops reads from Airflow's state, in one place, one way.

- Connections (``airflow.sdk.Connection``: env ``AIRFLOW_CONN_*``, secrets backends, the
  metadata DB through the task's API): the platform's and the judge's base URL and key,
  whether a Slack connection exists, a connection's password, Slack webhooks through the
  Slack provider's hook.
- Variables (``airflow.sdk.Variable``): the silences and the thresholds overrides.
- Airflow's config: the Celery broker the breaker may share.
- Airflow's secret masker: :func:`mask_secret`.

"Not found" is told apart from other failures by its type
(:class:`~airflow.sdk.exceptions.AirflowNotFoundException`). The library never imports
Airflow: :mod:`promptops.airflow_adapters.resources` builds its clients from what this
module reads.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow.sdk import Connection, Variable
from airflow.sdk.exceptions import AirflowNotFoundException
from airflow.sdk.log import mask_secret as _airflow_mask_secret

# The library modules are imported where they are used: this module is imported by DAG files'
# callbacks at parse time, and most of its readers need none of them.
if TYPE_CHECKING:
    from slack_sdk.http_retry import RetryHandler
    from slack_sdk.webhook import WebhookClient

log = logging.getLogger(__name__)


# -- the secret masker --------------------------------------------------------------------------

def mask_secret(secret: str, what: str = "a secret") -> None:
    """Register ``secret`` with Airflow's log masker (task logs show ``***`` instead). Never
    raises: masking must not stop a task; a failure is logged naming ``what``, never the
    secret. A :data:`promptops.secrets.SecretMasker`."""
    try:
        _airflow_mask_secret(secret)
    except Exception as exc:
        log.warning("could not register %s with Airflow's secret masker (%s)", what,
                    type(exc).__name__)


# -- connections --------------------------------------------------------------------------------

def base_url_from_connection(conn: Any, *, default_scheme: str = "http") -> str | None:
    """``http(s)://host[:port][/path]`` from a connection whose host is a full URL or a bare
    name (scheme from ``schema`` or the connection type, as Airflow's HTTP hook does, else
    ``default_scheme``); None without a host. No trailing slash."""
    host = (conn.host or "").strip()
    if not host:
        return None
    if "://" in host:
        split = urlsplit(host)
        netloc = split.netloc
        if conn.port and split.port is None:
            netloc = f"{netloc}:{conn.port}"
        return f"{split.scheme}://{netloc}{split.path}".rstrip("/")
    scheme = next((s for s in (conn.schema, conn.conn_type) if s in ("http", "https")),
                  default_scheme)
    name, _, path = host.partition("/")
    port = f":{conn.port}" if conn.port else ""
    return f"{scheme}://{name}{port}" + (f"/{path}".rstrip("/") if path else "")


def platform_connection(conn_id: str) -> tuple[str | None, str | None]:
    """(base URL, key) of the platform's connection; (None, None) when it does not exist or
    cannot be read (the caller falls back to the environment)."""
    try:
        conn = Connection.get(conn_id)
    except AirflowNotFoundException:
        return None, None
    except Exception as exc:  # no secrets backend reachable
        log.warning("could not read Airflow connection %r (%s); using the environment",
                    conn_id, type(exc).__name__)
        return None, None
    return base_url_from_connection(conn), (conn.password or None)


def judge_connection(conn_id: str) -> tuple[str, str | None]:
    """(base URL, key) of the judge's connection: the base URL from ``extra.base_url`` or the
    host (https unless the connection says otherwise: a hosted judge is almost always TLS).
    Raises :class:`~promptops.metrics.judge.JudgeNotConfigured` naming what to set."""
    from promptops.metrics.judge import JudgeNotConfigured, _without_userinfo

    try:
        conn = Connection.get(conn_id)
    except Exception as exc:  # AirflowNotFoundException, or no secrets backend
        raise JudgeNotConfigured(
            f"judge enabled but Airflow connection {conn_id!r} is not available "
            f"({type(exc).__name__}): add it (host = the endpoint's base URL, e.g. "
            f"https://api.openai.com/v1; password = the API key) or set "
            f"PROMPTOPS_JUDGE_ENABLED=false") from None
    extra = conn.extra_dejson or {}
    base_url = extra.get("base_url") or base_url_from_connection(conn, default_scheme="https")
    if not base_url or not isinstance(base_url, str):
        raise JudgeNotConfigured(
            f"Airflow connection {conn_id!r} has no host: set it to the judge endpoint's "
            f"base URL (e.g. https://api.openai.com/v1) or put base_url in its extra")
    api_key = conn.password or None
    if api_key:
        mask_secret(api_key, "the judge key")
    else:
        log.info("judge connection %r has no password: calling %s without a key",
                 conn_id, _without_userinfo(base_url))
    return base_url, api_key


def postgres_connector(conn_id: str) -> Any:
    """A zero-argument callable that opens a psycopg connection to the Postgres behind
    Airflow connection ``conn_id`` (type ``postgres``: host, port, login, password, schema as
    the database), its password registered with the masker. Raises ``ConfigError`` naming
    the connection when it does not exist."""
    from promptops.errors import ConfigError

    try:
        conn = Connection.get(conn_id)
    except AirflowNotFoundException:
        raise ConfigError(f"no Airflow connection {conn_id!r}: add a Postgres connection to "
                          f"the LiteLLM proxy's database (AIRFLOW_CONN_{conn_id.upper()}="
                          f"postgresql://user:pass@host:5432/litellm) or set "
                          f"PROMPTOPS_LITELLM_CONN_ID") from None
    if conn.password:
        mask_secret(conn.password, f"the password of connection {conn_id!r}")
    params: dict[str, Any] = {"host": conn.host or "localhost", "port": conn.port or 5432,
              "user": conn.login or None, "password": conn.password or None,
              "dbname": conn.schema or None}

    def connect() -> Any:
        import psycopg
        from psycopg.conninfo import make_conninfo

        return psycopg.connect(make_conninfo("", **{k: v for k, v in params.items()
                                                     if v is not None}))

    return connect


def connection_exists(conn_id: str) -> bool:
    """Whether Airflow knows this connection (env ``AIRFLOW_CONN_*``, secrets, metadata DB).
    A lookup that fails otherwise (a secrets backend hiccup) says yes: the caller tries to
    use it and reports what happens."""
    try:
        Connection.get(conn_id)
    except AirflowNotFoundException:
        return False
    except Exception as exc:
        log.warning("could not look up Airflow connection %r (%s)", conn_id,
                    type(exc).__name__)
    return True


def connection_password(conn_id: str) -> str | None:
    """The connection's password; None when it is missing or cannot be read."""
    try:
        return Connection.get(conn_id).password
    except Exception:  # missing, or no secrets backend: nothing to read
        return None


class AirflowTargetConnections:
    """:class:`promptops.alerts.targets.TargetConnections` from Airflow connections: the
    alert targets' URLs, routing keys, HMAC secrets and SMTP servers. Each password is
    registered with the log masker before the library sees it."""

    def get(self, conn_id: str) -> Any:
        from promptops.alerts.targets import TargetConnection

        try:
            conn = Connection.get(conn_id)
        except AirflowNotFoundException:
            return None
        if conn.password:
            mask_secret(conn.password, f"the password of connection {conn_id!r}")
        try:
            extra = conn.extra_dejson
        except Exception:  # an extra that is not JSON: say so where it is used
            log.warning("connection %r: its extra is not a JSON object; ignored", conn_id)
            extra = {}
        return TargetConnection(conn_id=conn_id, conn_type=conn.conn_type, host=conn.host,
                                port=conn.port, login=conn.login, password=conn.password,
                                schema=conn.schema, extra=dict(extra or {}))


class AirflowSlackWebhooks:
    """:class:`promptops.alerts.slack.SlackWebhooks` through the Airflow Slack provider's
    ``SlackWebhookHook`` (connection of type ``slackwebhook``: the webhook URL in its
    *password*, or the token there and the endpoint in *host*)."""

    def exists(self, conn_id: str) -> bool:
        return connection_exists(conn_id)

    def client(self, conn_id: str, *, timeout: float, retry_handlers: list[RetryHandler],
               logger: logging.Logger) -> WebhookClient:
        from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook

        from promptops.alerts.slack import SlackConnectionMissing, secret_parts

        try:
            # The hook annotates ``timeout`` int; it reaches urllib, which takes float seconds.
            hook = SlackWebhookHook(slack_webhook_conn_id=conn_id,
                                    timeout=timeout,  # type: ignore[arg-type]
                                    retry_handlers=retry_handlers, logger=logger)
            client = hook.get_conn()
        except AirflowNotFoundException as exc:
            raise SlackConnectionMissing(str(exc)) from None
        for secret in secret_parts(client.url):
            mask_secret(secret, "the webhook URL")
        return client


# -- Variables and config -----------------------------------------------------------------------

def variable(name: str) -> str | None:
    """The raw value of an Airflow Variable; None when it is not set."""
    return Variable.get(name, default=None)


def threshold_overrides() -> Mapping[str, Any] | None:
    """The overrides the Variable ``promptops_thresholds`` holds (None when unset); raises
    ``ThresholdsConfigError`` for a value that is not JSON."""
    from promptops.detection.thresholds import VARIABLE_KEY, parse_variable_overrides

    return parse_variable_overrides(variable(VARIABLE_KEY))


def budget_overrides() -> Mapping[str, Any] | None:
    """The budgets the Variable ``promptops_budgets`` adds, changes or removes (None when
    unset); raises ``BudgetConfigError`` for a value that is not a JSON object."""
    from promptops.detection.budgets.config import VARIABLE_KEY, parse_variable

    return parse_variable(variable(VARIABLE_KEY))


def celery_redis_broker_url() -> str | None:
    """The Celery broker's URL when Airflow runs the CeleryExecutor on Redis, else None
    (a broker URL alone means nothing: the provider has a default one)."""
    from airflow.configuration import conf

    if "CeleryExecutor" not in (conf.get("core", "executor", fallback="") or ""):
        return None
    url = conf.get("celery", "broker_url", fallback=None)
    return url if url and urlsplit(url).scheme in ("redis", "rediss") else None
