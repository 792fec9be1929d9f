"""promptops daily DAG: completeness, baselines, root-cause model, caller profiles, cost
report, retention."""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import CronDataIntervalTimetable, dag, task

from promptops.airflow_adapters.context import run_url
from promptops.airflow_adapters.dag_defaults import dag_defaults


@dag(
    dag_id="promptops_daily",
    dag_display_name="promptops · daily analysis and cost report",
    # A real [start, end) day per run; 00:30 leaves the hourly run of 23:00 time to finish.
    schedule=CronDataIntervalTimetable("30 0 * * *", timezone="UTC"),
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=3),
    tags=["promptops", "analysis", "report", "daily"],
    **dag_defaults(
        retries=2,
        retry_delay=timedelta(minutes=5),
        max_retry_delay=timedelta(minutes=30),
        execution_timeout=timedelta(hours=1),
    ),
)
def promptops_daily():
    """
    ### promptops daily: learn what normal looks like, report the day's cost

    For the run's day `[data_interval_start, data_interval_end)` (UTC); every step is
    idempotent per day, so reruns and backfills replace that day's outputs:

    1. **Completeness**: are all 24 hourly `calls` and `metrics` partitions there? Missing
       hours are named with the backfill command that fills them; nothing downstream counts
       them as zero traffic.
    2. **Refit baselines**: Holt-Winters (daily season, weekly with 3+ weeks of history; a
       median/MAD fallback on bad history) per metric and key slice, bands for the next day
       in `baselines/`. The hourly run flags values outside them.
    3. **Retrain the root-cause model**: IsolationForest on per-hour, per-slice features,
       versioned in `models/anomaly/`.
    4. **Caller profiles**: each caller's busiest minute by time of day over the last 7
       days of health evaluations, in `caller_profiles/`. The per-caller rules (abusive
       caller, token burst) alert only on a caller unusual against it, so a nightly batch
       that recurs at the same time is not paged.
    5. **Cost report**: HTML with charts and CSVs in `reports/date=.../` (Browse ›
       promptops reports in the UI), summary to Slack (`slack_alerts`).
    6. **Retention**: partitions older than `PROMPTOPS_RETENTION_<DATASET>_DAYS` go. It
       runs once the steps before it are done, whether they succeeded or not: a failed
       report must not let the lake grow, least of all on the days ingest failed.
    7. **Flag failed steps**: fails the run, naming the steps that failed, so a run
       whose report (or any step) failed still ends red after retention ran.
    """

    @task(task_display_name="Check completeness")
    def check_completeness(**context) -> dict:
        from promptops.airflow_adapters.resources import lake
        from promptops.reports.completeness import day_completeness

        result = day_completeness(lake(), context["data_interval_start"])
        print(result.describe())
        return result.as_dict()

    @task(task_display_name="Refit baselines")
    def refit_baselines(completeness: dict, **context) -> dict:
        from promptops.airflow_adapters.resources import lake
        from promptops.detection.baselines import refit_baselines as refit

        # Bands are fitted on history up to the end of this day, for the next day.
        return refit(lake(), context["data_interval_end"])

    @task(task_display_name="Retrain root-cause model")
    def retrain_root_cause_model(completeness: dict, **context) -> dict:
        from promptops.airflow_adapters.resources import lake
        from promptops.detection.anomaly_model import NotEnoughData, train

        try:
            info = train(lake(), context["data_interval_start"])
        except NotEnoughData as exc:
            print(f"root-cause model not retrained: {exc}")
            return {"trained": False, "reason": str(exc)}
        return {"trained": True, **info.to_dict()}

    @task(task_display_name="Build caller profiles")
    def caller_profiles(**context) -> dict:
        from promptops.airflow_adapters import resources
        from promptops.pipelines.daily import build_caller_profiles

        # The profile for the next day, from the health evaluations up to this day's end.
        return build_caller_profiles(resources.lake(), context["data_interval_end"],
                                     resources.thresholds())

    @task(task_display_name="Build and send cost report")
    def cost_report(completeness: dict, **context) -> dict:
        from airflow.configuration import conf

        from promptops.airflow_adapters import resources
        from promptops.reports.cost_report import (
            build_report,
            report_url,
            send_slack_summary,
            slack_summary,
        )

        day = context["data_interval_start"]
        result = build_report(resources.lake(), day, run_url=run_url(context),
                              thresholds=resources.thresholds())
        # The report's date, not the run's timestamp: that is the plugin's route.
        url = report_url(conf.get("api", "base_url", fallback="http://localhost:8080"),
                         result.day)
        send_slack_summary(slack_summary(result, url), webhooks=resources.slack_webhooks())
        print(f"report: {result.html_uri} ({url})")
        return result.summary

    @task(task_display_name="Refresh the price map")
    def refresh_price_map(**context) -> dict:
        """LiteLLM's published map as a new version in the lake (the hourly cost reads the
        newest); what changed goes to Slack (`slack_alerts`), the log and XCom."""
        from promptops.airflow_adapters import resources
        from promptops.alerts.slack import SlackSendError, send_message
        from promptops.metrics.price_map import PriceMapError, price_map_message
        from promptops.metrics.price_map import refresh_price_map as refresh

        try:
            diff = refresh(resources.lake())
        except PriceMapError as exc:
            # Billing goes on with the version it has; an unreachable or broken published
            # map must not fail the day's run (nor retry it for minutes, offline).
            print(f"WARNING: {exc}; the hourly cost keeps the price map it has")
            return {"refreshed": False, "error": str(exc)}
        print(diff.describe())
        if not diff.unchanged:
            try:  # the new version is stored either way: a lost post is only a warning
                send_message(price_map_message(diff), conn_id="slack_alerts",
                             webhooks=resources.slack_webhooks(), what="the price map diff")
            except SlackSendError as exc:
                print(f"WARNING: the price map diff was not posted: {exc}")
        return diff.as_dict()

    @task(task_display_name="Apply retention", trigger_rule="all_done")
    def apply_retention(**context) -> dict:
        """After the analysis, so nothing it reads is deleted under it; whatever its outcome,
        so a failed report does not skip retention."""
        from promptops.airflow_adapters.resources import lake
        from promptops.pipelines.daily import apply_retention as retain

        return retain(lake(), context["data_interval_start"])

    @task(task_display_name="Flag failed steps", trigger_rule="all_done")
    def flag_failed_steps(**context) -> None:
        from airflow.sdk.exceptions import AirflowFailException

        from promptops.pipelines.daily import failed_steps

        ti = context["ti"]
        states = ti.get_task_states(dag_id=ti.dag_id, run_ids=[ti.run_id])[ti.run_id]
        failed = failed_steps(states)
        if failed:  # permanent: retrying this check cannot fix the steps
            raise AirflowFailException(
                f"step(s) failed: {', '.join(failed)} (their logs say why); retention ran "
                "anyway. Fix the cause, then clear the failed step(s) to rerun them.")
        print("every step succeeded")

    completeness = check_completeness()
    steps = [refit_baselines(completeness), retrain_root_cause_model(completeness),
             caller_profiles(), cost_report(completeness), refresh_price_map()]
    steps >> apply_retention() >> flag_failed_steps()


promptops_daily()
