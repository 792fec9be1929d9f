"""promptops health DAG: GPUs, the API and abusive callers every five minutes."""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import CronDataIntervalTimetable, dag, task

from promptops.airflow_adapters.context import run_url
from promptops.airflow_adapters.dag_defaults import dag_defaults
from promptops.airflow_adapters.responses import respond
from promptops.settings import get_settings

GPU_QUEUE = get_settings().gpu_queue


@dag(
    dag_id="promptops_health",
    dag_display_name="promptops · health sensor (5 min)",
    schedule=CronDataIntervalTimetable("*/5 * * * *", timezone="UTC"),
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=4, seconds=30),
    tags=["promptops", "health", "gpu", "alerts"],
    **dag_defaults(
        retries=1,
        retry_delay=timedelta(seconds=20),
        execution_timeout=timedelta(minutes=2),
    ),
)
def promptops_health():
    """
    ### promptops health: GPUs, the API, abuse, every 5 minutes

    1. **GPUs** (on the `gpu` queue, `PROMPTOPS_GPU_QUEUE`): NVML readings (utilisation,
       memory, temperature, sampled and averaged); without NVML, the platform's
       `/v1/gpu_metrics`, said once in the log. A missing GPU never fails the run.
    2. **API**: `/health` and its latency; success rate, mean and p95 latency and calls per
       minute per user over the last 5 minutes of call records.
    3. **Evaluate**: rows go to `health_metrics/`, the `source: health` rules of
       `thresholds.yaml` judge them (their own pending counts; a caller's load that
       recurs at this time of day, per the daily run's caller profile, is not alerted),
       the alert engine posts
       (scope `health`), and the run branches to nothing, alerts sent or a heal request.

    Runs never overlap (`max_active_runs=1`) and nothing waits while holding a worker.
    """

    @task(task_display_name="Read GPUs", queue=GPU_QUEUE)
    def gpu_metrics(**context) -> dict:
        from promptops.airflow_adapters.resources import platform_client
        from promptops.errors import PlatformNotConfigured
        from promptops.pipelines.health import gpu_rows_at

        try:
            client = platform_client()
        except PlatformNotConfigured:
            client = None
        try:
            result = gpu_rows_at(_evaluated_at(context), client)
        finally:
            if client is not None:
                client.close()
        for note in result["notes"]:
            print(note)
        return result

    @task(task_display_name="Check API and callers")
    def api_metrics(**context) -> dict:
        from promptops.airflow_adapters.resources import record_source
        from promptops.pipelines.health import api_rows_at

        # PROMPTOPS_SOURCE: the platform API (with /health) or the spans / spend logs.
        with record_source() as client:
            result = api_rows_at(_evaluated_at(context), client,
                                 platform=get_settings().source == "platform_api")
        for note in result["notes"]:
            print(note)
        return result

    @task(task_display_name="Evaluate and alert")
    def evaluate(gpu: dict, api: dict, **context) -> dict:
        from promptops.airflow_adapters import resources
        from promptops.pipelines.health import evaluate_health

        outcome = evaluate_health(resources.lake(), _evaluated_at(context),
                                  gpu["rows"] + api["rows"], run_id=context["run_id"],
                                  run_url=run_url(context),
                                  thresholds_loader=resources.thresholds,
                                  webhooks=resources.slack_webhooks(),
                                  variable_reader=resources.variable_reader,
                                  targets=resources.target_connections())
        from promptops.pipelines.hourly import push_alert_outcome

        push_alert_outcome(outcome, dag="promptops_health", scope="health")
        print(f"health: {outcome['findings']} findings, {len(outcome['firing'])} firing, "
              f"{len(outcome['notifications'])} notifications, "
              f"{outcome['recurring_load_suppressed']} recurring caller load(s) not alerted")
        return outcome

    outcome = evaluate(gpu_metrics(), api_metrics())
    respond(outcome, scope="health")


def _evaluated_at(context):
    """The interval's end; a run triggered without a logical date has none: its run time."""
    return context.get("data_interval_end") or context["dag_run"].run_after


promptops_health()
