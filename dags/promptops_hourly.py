"""promptops hourly DAG: ingest the platform's call records into the lake."""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import CronDataIntervalTimetable, PokeReturnValue, dag, task

from promptops.assets import CALLS_ASSET
from promptops.settings import get_settings

SETTINGS = get_settings()


@dag(
    dag_id="promptops_hourly",
    dag_display_name="promptops · hourly ingest",
    # A real [start, end) interval per run (plain "@hourly" in Airflow 3 gives a point).
    schedule=CronDataIntervalTimetable("0 * * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=3,
    dagrun_timeout=timedelta(minutes=55),
    tags=["promptops", "ingest", "hourly"],
    default_args={
        "owner": "promptops",
        "retries": 3,
        "retry_delay": timedelta(minutes=1),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=15),
        "execution_timeout": timedelta(minutes=30),
    },
)
def promptops_hourly():
    """
    ### promptops hourly: ingest the platform's call records

    Every hour, for the run's data interval `[data_interval_start, data_interval_end)`:

    1. **Wait for the platform**: poll `/health` (reschedule mode, so no worker slot is held)
       for at most `PROMPTOPS_HEALTH_WAIT_S` seconds.
    2. **Ingest**: pull the hour through `GET /v1/call_records` (plus `PROMPTOPS_LATENESS_HOURS`
       earlier hours, re-read whole so late records reach their partition), validate every page
       against the record contract, drop duplicate `call_id`s and replace the partitions
       `calls/date=YYYY-MM-DD/hour=HH/`. Rejected records go to `quarantine/` with their reason.
       Publishes the `promptops://lake/calls` asset with the partitions written.

    Reruns and backfills rewrite exactly their own partitions, so they never duplicate:
    `airflow backfill create --dag-id promptops_hourly --from-date ... --to-date ...`.

    Connection `prompt_platform`: platform base URL in *host*, API key in *password*.
    """

    @task.sensor(
        task_display_name="Wait for platform health",
        poke_interval=30,
        timeout=SETTINGS.health_wait_s,
        mode="reschedule",
        retries=0,
    )
    def wait_for_platform() -> PokeReturnValue:
        """Done when `/health` answers `ok`; a degraded answer keeps waiting."""
        from promptops.client import PlatformClient
        from promptops.errors import PlatformUnreachable, UpstreamTimeout

        try:
            with PlatformClient.from_airflow() as client:
                health = client.health()
        except (PlatformUnreachable, UpstreamTimeout) as exc:
            print(f"platform not answering yet: {exc}")
            return PokeReturnValue(is_done=False)
        print(f"platform health: {health.status} ({health.latency_ms:.0f} ms)"
              + (f", reason: {health.reason}" if health.reason else ""))
        return PokeReturnValue(is_done=health.ok, xcom_value=health.status)

    @task(task_display_name="Ingest call records", outlets=[CALLS_ASSET])
    def ingest_calls(**context) -> dict:
        """Pull, validate, dedupe and write the interval's partitions; returns a summary."""
        from promptops.client import PlatformClient
        from promptops.ingest import ingest_interval
        from promptops.lake import Lake

        settings = get_settings()
        with PlatformClient.from_airflow() as client:
            summary = ingest_interval(
                client, Lake(), context["data_interval_start"], context["data_interval_end"],
                run_id=context["run_id"], lateness_hours=settings.lateness_hours,
                page_size=settings.page_size, max_reject_share=settings.max_reject_share,
            ).as_dict()
        context["outlet_events"][CALLS_ASSET].extra = {
            "partitions": [h["calls_uri"] for h in summary["hours"]],
            "window_start": summary["window_start"],
            "window_end": summary["window_end"],
            "written": summary["written"],
        }
        return summary

    wait_for_platform() >> ingest_calls()


promptops_hourly()
