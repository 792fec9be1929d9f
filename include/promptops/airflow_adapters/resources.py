"""What the DAG tasks hand the library: its clients, readers and stores, built from Airflow.

As the Slack provider's hook builds a plain ``slack_sdk`` client from a connection, each
function here builds a plain promptops object from what
:mod:`promptops.airflow_adapters.connections` reads (connections, Variables, Airflow's
config, its secret masker). The library takes these as arguments and never imports Airflow.

Cheap to import: the library modules are imported by the functions that need them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

from promptops.airflow_adapters import connections

if TYPE_CHECKING:
    from upath import UPath

    from promptops.alerts.config import AlertingConfig
    from promptops.alerts.silences import SilenceSource
    from promptops.alerts.slack import SlackNotifier
    from promptops.detection.thresholds import ThresholdsConfig
    from promptops.lake.store import Lake
    from promptops.metrics.judge import JudgeConfig, RelevanceJudge
    from promptops.platform.breaker import BreakerStore
    from promptops.platform.client import PlatformClient
    from promptops.settings import Settings

#: Reads a Variable's raw value, for :class:`promptops.alerts.silences.SilenceSource`.
variable_reader = connections.variable


def storage_path(uri: str, conn_id: str | None = None) -> UPath:
    """Airflow's ``ObjectStoragePath`` for a URI: credentials from Airflow connections
    (``s3://conn@bucket/prefix``, or ``conn_id``), file access recorded for lineage."""
    from airflow.sdk import ObjectStoragePath

    path = ObjectStoragePath(uri, conn_id=conn_id) if conn_id else ObjectStoragePath(uri)
    # A ProxyUPath: a UPath at runtime (issubclass says so), not in its annotations.
    return cast("UPath", path)


def lake(base_uri: str | None = None, conn_id: str | None = None) -> Lake:
    """The lake at ``base_uri`` (default ``PROMPTOPS_LAKE_URI``) through
    :func:`storage_path`."""
    from promptops.lake.store import Lake
    from promptops.settings import get_settings

    return Lake(root=storage_path(base_uri or get_settings().lake_uri, conn_id))


def breaker_store(settings: Settings, *, fallback: bool = True) -> BreakerStore:
    """The breaker store the settings choose, Airflow's Redis Celery broker among the
    candidates, its password registered with Airflow's secret masker."""
    from promptops.platform.breaker import store_from_settings

    return store_from_settings(settings, fallback=fallback,
                               celery_broker_url=connections.celery_redis_broker_url(),
                               mask_secret=connections.mask_secret)


def platform_client(conn_id: str | None = None,
                    settings: Settings | None = None) -> PlatformClient:
    """The platform's client: base URL and key from the Airflow connection
    (``prompt_platform`` by default), falling back to ``PROMPT_API_KEY`` /
    ``PROMPTOPS_PLATFORM_URL``; breaker state in the store the settings choose (files under
    ``settings.state_dir/breakers``, or Redis). Raises ``PlatformNotConfigured`` naming
    what to set."""
    from promptops.errors import PlatformNotConfigured
    from promptops.platform.client import PlatformClient
    from promptops.settings import get_settings

    settings = settings or get_settings()
    conn_id = conn_id or settings.platform_conn_id
    base_url, api_key = connections.platform_connection(conn_id)
    api_key = api_key or os.environ.get("PROMPT_API_KEY") or None
    base_url = base_url or os.environ.get("PROMPTOPS_PLATFORM_URL") or None
    if not base_url:
        raise PlatformNotConfigured(
            f"no platform URL: set the host of Airflow connection {conn_id!r} "
            f"(e.g. http://platform:8700) or PROMPTOPS_PLATFORM_URL")
    if not api_key:
        raise PlatformNotConfigured(
            f"no API key: set the password of Airflow connection {conn_id!r} "
            f"or the environment variable PROMPT_API_KEY")
    connections.mask_secret(api_key, "the API key")
    return PlatformClient.from_settings(base_url, api_key, settings, breaker_name=conn_id,
                                        breaker_store=breaker_store(settings))


@contextlib.contextmanager
def record_source(settings: Settings | None = None) -> Iterator[Any]:
    """Where the hourly pull reads call records (``PROMPTOPS_SOURCE``): the platform's client
    (default), the OpenTelemetry spans under ``PROMPTOPS_OTEL_LANDING_URI``, or the LiteLLM
    proxy's spend logs behind Airflow connection ``PROMPTOPS_LITELLM_CONN_ID``; fields as
    the source mapping says (``PROMPTOPS_SOURCE_MAPPING_FILE``)."""
    from promptops.ingest.sources.mapping import load_source_mapping
    from promptops.settings import get_settings

    settings = settings or get_settings()
    if settings.source == "platform_api":
        with platform_client(settings=settings) as client:
            yield client
        return
    mapping = load_source_mapping(settings.source_mapping_file)
    if settings.source == "otel":
        from promptops.ingest.sources.otel import OtelSpanSource

        # Airflow's ObjectStoragePath: s3://conn@bucket/... takes credentials from the
        # connection, as push delivery does.
        yield OtelSpanSource(settings.otel_landing_uri, mapping.otel, storage_path=storage_path)
        return
    from promptops.ingest.sources.litellm import SpendLogSource

    yield SpendLogSource(connections.postgres_connector(settings.litellm_conn_id),
                         mapping.litellm)


def relevance_judge(config: JudgeConfig) -> RelevanceJudge:
    """The judge behind Airflow connection ``config.conn_id`` (a
    :data:`promptops.metrics.judge.JudgeFactory`); raises ``JudgeNotConfigured`` naming
    what to set."""
    from promptops.metrics.judge import RelevanceJudge

    base_url, api_key = connections.judge_connection(config.conn_id)
    return RelevanceJudge.from_config(config, base_url, api_key)


class AirflowSlackBots:
    """:class:`promptops.alerts.slack.SlackBots` from Airflow connections: one of type
    ``slack`` (the Slack provider's Slack API connection) holds a bot token (``xoxb-``,
    scope ``chat:write``) in its password and the channel in its extra
    (``{"channel": "#alerts"}``); it is built into a client by the provider's ``SlackHook``.
    Any other type (``slackwebhook``) is a webhook: :meth:`bot` says None."""

    def kind(self, conn_id: str) -> str | None:
        """``bot`` (Slack API connection), ``webhook`` (anything else), None when the
        connection does not exist."""
        from airflow.sdk import Connection
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            conn = Connection.get(conn_id)
        except AirflowNotFoundException:
            return None
        return "bot" if conn.conn_type == "slack" else "webhook"

    def bot(self, conn_id: str, *, timeout: float, retry_handlers: list[Any],
            logger: Any) -> Any:
        from airflow.providers.slack.hooks.slack import SlackHook
        from airflow.sdk import Connection
        from airflow.sdk.exceptions import AirflowNotFoundException

        from promptops.alerts.slack import SlackBot, SlackConnectionMissing

        try:
            conn = Connection.get(conn_id)
        except AirflowNotFoundException:
            return None  # the webhook path reports the missing connection as it always did
        if conn.conn_type != "slack":
            return None
        if not conn.password:
            raise SlackConnectionMissing(
                f"Slack API connection {conn_id!r} holds no bot token; put the xoxb- token "
                f"(scope chat:write) in its password")
        connections.mask_secret(conn.password, "the Slack bot token")
        channel = (conn.extra_dejson or {}).get("channel")
        if not channel:
            raise SlackConnectionMissing(
                f"Slack API connection {conn_id!r} names no channel; add "
                f'{{"channel": "#alerts"}} to its extra')
        hook = SlackHook(slack_conn_id=conn_id, timeout=max(1, int(timeout)),
                         retry_handlers=retry_handlers, logger=logger)
        return SlackBot(hook.client, str(channel))


class AirflowSlackConnections(connections.AirflowSlackWebhooks, AirflowSlackBots):
    """Slack connections as the library sends through them: incoming webhooks (type
    ``slackwebhook``) and bot tokens (type ``slack``), told apart per connection."""


def slack_webhooks() -> AirflowSlackConnections:
    """Slack connections from Airflow: incoming webhooks of type ``slackwebhook``, and bot
    tokens of type ``slack`` (:class:`AirflowSlackBots`), which the notifier and
    :func:`promptops.alerts.slack.send_message` use through the Web API."""
    return AirflowSlackConnections()


def slack_bots() -> AirflowSlackBots:
    """Bot-token Slack connections (type ``slack``) from Airflow."""
    return AirflowSlackBots()


def slack_notifier(config: AlertingConfig, **kwargs: Any) -> SlackNotifier:
    """The alert engine's notifier, delivering through :func:`slack_webhooks`, or through a
    bot token where a route's connection is a Slack API connection (:func:`slack_bots`)."""
    from promptops.alerts.slack import SlackNotifier

    kwargs.setdefault("bots", slack_bots())
    return SlackNotifier.from_config(config, webhooks=slack_webhooks(), **kwargs)


def target_connections() -> connections.AirflowTargetConnections:
    """The alert targets' connections (Alertmanager, PagerDuty, webhook, SMTP) from
    Airflow, their passwords masked in task logs."""
    return connections.AirflowTargetConnections()


def silences(config: AlertingConfig) -> SilenceSource:
    """The silences of the config's file and its Airflow Variable."""
    from promptops.alerts.silences import SilenceSource

    return SilenceSource.from_config(config, variable_reader=variable_reader)


#: The Airflow Variable ``promptops_thresholds``'s overrides (None when unset).
threshold_overrides = connections.threshold_overrides
#: The Airflow Variable ``promptops_budgets``'s budgets (None when unset).
budget_overrides = connections.budget_overrides


def thresholds() -> ThresholdsConfig:
    """The alert rules as a DAG task sees them: the file, the Variable's overrides, then the
    environment's."""
    from promptops.detection.thresholds import load_thresholds

    return load_thresholds(variable_overrides=threshold_overrides())
