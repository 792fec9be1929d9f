"""Runtime settings, read from ``PROMPTOPS_*`` environment variables.

One pydantic model so every knob has a type, a default and a validation error that names the
variable. DAGs, tests and tools call :func:`get_settings` instead of reading ``os.environ``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

#: The repository root when the package is installed in editable mode (the default set-up).
PROJECT_ROOT = Path(__file__).resolve().parents[2]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PROMPTOPS_", extra="ignore")

    #: Base URI of the Parquet lake: ``file:///abs/path`` or ``s3://bucket/prefix``.
    lake_uri: str = Field(default=f"file://{PROJECT_ROOT / 'data' / 'lake'}")
    #: Where the platform drops pushed NDJSON batches (``file://`` or ``s3://``); only
    #: files under it are ingested (docs/push.md).
    landing_uri: str = Field(default=f"file://{PROJECT_ROOT / 'data' / 'landing'}")
    #: Where small cross-run state lives (circuit breaker, alert state) on local disk.
    state_dir: Path = Field(default=PROJECT_ROOT / "data" / "state")

    #: Airflow connection that holds the platform's base URL (host) and API key (password).
    platform_conn_id: str = "prompt_platform"
    #: A Prometheus Pushgateway (``http://pushgateway:9091``): each evaluation pushes its key
    #: metrics there (README "Integrations"); unset, nothing is pushed.
    pushgateway_url: str | None = None
    pushgateway_timeout_s: float = Field(default=5.0, gt=0)
    #: The alerting config (routes, targets, inhibition; default include/config/alerting.yaml).
    alerting_file: Path | None = None

    # Where call records come from (README "Where your records come from").
    #: ``platform_api`` (the simulator's and the contract's API), ``otel`` (OpenTelemetry
    #: GenAI spans as the Collector's file or S3 exporter writes them) or ``litellm`` (the
    #: LiteLLM proxy's ``LiteLLM_SpendLogs`` table).
    source: Literal["platform_api", "otel", "litellm"] = "platform_api"
    #: The YAML that says which attribute, column or metadata key gives each call-record
    #: field, per source (default: include/config/sources.yaml).
    source_mapping_file: Path | None = None
    #: Where the Collector writes OTLP JSON (``file://`` or ``s3://``), hour-partitioned keys.
    otel_landing_uri: str = Field(default=f"file://{PROJECT_ROOT / 'data' / 'otel'}")
    #: Airflow Postgres connection to the LiteLLM proxy's database.
    litellm_conn_id: str = "litellm_db"

    # Ingest
    page_size: int = Field(default=10_000, ge=1, le=10_000)
    #: Share of rejected records above which an ingest fails (after writing what was good).
    max_reject_share: float = Field(default=0.05, ge=0.0, le=1.0)
    #: How many earlier hours each hourly run re-reads, so late records reach their partition.
    lateness_hours: int = Field(default=1, ge=0, le=24)
    #: A re-read of an hour replaces its partition only when it finds at least this share of
    #: the rows the partition holds (an empty re-read never does); a run conf
    #: ``{"replace": true}`` overrides it for a deliberate backfill.
    reread_min_share: float = Field(default=0.9, ge=0.0, le=1.0)
    #: Minutes per pull window: 60 pulls whole hours (one mapped task each); less splits an
    #: hour into windows that run on different workers (hours too big for one worker).
    ingest_window_minutes: int = Field(default=60, ge=1, le=60)
    #: How long the hourly DAG waits for ``/health`` before giving up.
    health_wait_s: int = Field(default=300, ge=0)

    # Health
    #: Celery queue of the workers that live on GPU nodes, where the health DAG reads the
    #: GPUs (any worker takes it under the local executor).
    gpu_queue: str = "gpu"

    # API client
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=30.0, gt=0)
    max_retries: int = Field(default=5, ge=0)
    backoff_factor_s: float = Field(default=0.5, ge=0)
    max_retry_after_s: float = Field(default=60.0, ge=0)
    breaker_failure_threshold: int = Field(default=5, ge=1)
    breaker_cooldown_s: float = Field(default=300.0, ge=0)
    #: Where breaker state lives: ``auto`` (Redis when ``breaker_redis_url`` is set or Airflow
    #: runs the CeleryExecutor on a redis:// broker, else files under ``state_dir``), ``file``
    #: or ``redis`` (an error when there is no Redis URL). See docs/client.md.
    breaker_store: Literal["auto", "file", "redis"] = "auto"
    #: Redis for breaker state shared by all workers (redis:// or rediss://); default: the
    #: Celery broker's. A secret when it holds a password.
    breaker_redis_url: SecretStr | None = None
    breaker_redis_prefix: str = Field(default="promptops:breaker:", min_length=1)
    #: Breaker state in Redis expires this long after its last change.
    breaker_state_ttl_s: int = Field(default=7 * 86400, ge=60)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
