"""promptops hourly DAG: ingest the platform's call records, compute metrics, alert."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import CronDataIntervalTimetable, PokeReturnValue, dag, task

from promptops.airflow_adapters.assets import CALLS_ASSET
from promptops.airflow_adapters.context import run_url
from promptops.airflow_adapters.dag_defaults import dag_defaults
from promptops.airflow_adapters.responses import respond
from promptops.settings import get_settings

SETTINGS = get_settings()


@dag(
    dag_id="promptops_hourly",
    dag_display_name="promptops · hourly ingest and analysis",
    # A real [start, end) interval per run (plain "@hourly" in Airflow 3 gives a point).
    schedule=CronDataIntervalTimetable("0 * * * *", timezone="UTC"),
    max_active_runs=3,
    dagrun_timeout=timedelta(minutes=55),
    tags=["promptops", "ingest", "analysis", "alerts", "hourly"],
    **dag_defaults(
        retries=3,
        retry_delay=timedelta(minutes=1),
        max_retry_delay=timedelta(minutes=15),
        execution_timeout=timedelta(minutes=30),
    ),
)
def promptops_hourly():
    """
    ### promptops hourly: ingest, metrics, rules, alerts

    Every hour, for the run's data interval `[data_interval_start, data_interval_end)`:

    1. **Wait for the platform**: poll `/health` (reschedule mode, so no worker slot is held)
       for at most `PROMPTOPS_HEALTH_WAIT_S` seconds.
    2. **Ingest**: pull the hour through `GET /v1/call_records` (plus `PROMPTOPS_LATENESS_HOURS`
       earlier hours, re-read whole so late records reach their partition), validate every page
       against the record contract, drop duplicate `call_id`s and replace the partitions
       `calls/date=YYYY-MM-DD/hour=HH/`. Rejected records go to `quarantine/` with their reason.
       The pull is mapped: one *Pull window* per hour, or per `PROMPTOPS_INGEST_WINDOW_MINUTES`
       when hours are too big for one worker (the windows run on different workers and
       *Merge windows* writes each hour from them). Publishes the `promptops://lake/calls`
       asset with the partitions written.
3. **Metrics**: for every hour written, cost (price table `include/config/model_prices.json`),
   success rate, latency percentiles, tokens, intent accuracy, relevance and peak calls per
   minute, overall and per slice, into `metrics/date=.../hour=.../` (one row per hour, metric,
   dimension and slice). With `PROMPTOPS_JUDGE_ENABLED=true` an LLM judge scores a sample
   of unscored answers (connection `relevance_judge`).
4. **Evaluate**: the rules in `include/config/thresholds.yaml` (thresholds, comparisons with
   the previous hour / yesterday / last week, composites, budgets) feed the alert engine
   (`include/config/alerting.yaml`: pending, grouping, repeat, inhibition, silences), which
   posts to Slack (connection `slack_alerts`, critical to `slack_alerts_critical` if set)
   and logs every alert in `alert_log/`.
5. **Respond**: nothing to do, alerts sent, or a heal request (kept in `heal_requests/`
   and named in the Slack message).

    Reruns and backfills rewrite exactly their own partitions, so they never duplicate:
    `airflow backfill create --dag-id promptops_hourly --from-date ... --to-date ...`.
    A re-read that finds fewer than `PROMPTOPS_REREAD_MIN_SHARE` (90%) of the rows an hour
    holds keeps the hour as it was and warns; run with the conf `{"replace": true}`
    (`--dag-run-conf`) to replace such hours on purpose.

    Connection `prompt_platform`: platform base URL in *host*, API key in *password*.
    """

    @task.sensor(
        task_display_name="Wait for platform health",
        poke_interval=30,
        timeout=SETTINGS.health_wait_s,
        mode="reschedule",
        retries=0,
    )
    def wait_for_platform(**context) -> PokeReturnValue:
        """Done when `/health` answers `ok`; a degraded answer keeps waiting. Timing out
        names what the last look saw."""
        from promptops.airflow_adapters.platform_sensor import poke_platform

        return poke_platform(context)

    @task(task_display_name="Plan pull windows")
    def plan_pull(**context) -> list[dict]:
        """The interval (and its late-record hours) cut into pull windows."""
        from promptops.ingest.windows import plan_windows

        settings = get_settings()
        return plan_windows(context["data_interval_start"], context["data_interval_end"],
                            lateness_hours=settings.lateness_hours,
                            window_minutes=settings.ingest_window_minutes)

    @task(task_display_name="Pull window",
          map_index_template="{{ window_label }}",
          max_active_tis_per_dagrun=8)
    def pull_window(window: dict, **context) -> dict:
        """Pull, validate and dedupe one window (a whole hour goes straight to its partition)."""
        from airflow.sdk import get_current_context

        from promptops.airflow_adapters.resources import lake, record_source
        from promptops.ingest.pull import replace_requested
        from promptops.ingest.windows import pull_window

        # Named by its window in the UI's list of mapped tasks (map_index_template).
        get_current_context()["window_label"] = \
            f"{window['start'][:16]} +{60 // window['parts']}m"
        with record_source() as client:
            return pull_window(client, lake(), window, run_id=context["run_id"],
                               page_size=get_settings().page_size,
                               replace=replace_requested(context["dag_run"].conf))

    @task(task_display_name="Merge windows", outlets=[CALLS_ASSET])
    def merge_windows(pulled: list[dict], **context) -> dict:
        """Write split hours from their windows, check the reject share; returns a summary."""
        from promptops.airflow_adapters.resources import lake
        from promptops.ingest.pull import replace_requested
        from promptops.ingest.windows import merge_windows

        summary = merge_windows(lake(), list(pulled), run_id=context["run_id"],
                                max_reject_share=get_settings().max_reject_share,
                                replace=replace_requested(context["dag_run"].conf)).as_dict()
        from promptops.pipelines.hourly import push_ingest_summary

        push_ingest_summary(summary)  # counts, rejects and lag, when a Pushgateway is set
        context["outlet_events"][CALLS_ASSET].extra = {
            "partitions": [h["calls_uri"] for h in summary["hours"]],
            "window_start": summary["window_start"],
            "window_end": summary["window_end"],
            "written": summary["written"],
        }
        return summary

    @task(task_display_name="Compute hourly metrics")
    def hourly_metrics(ingested: dict) -> list[dict]:
        """Metrics for every hour the ingest wrote (late records change earlier hours too)."""
        from promptops.airflow_adapters import resources
        from promptops.metrics.pricing import load_price_table
        from promptops.pipelines.hourly import analyse_hour, push_hour_metrics

        lake, prices = resources.lake(), load_price_table()
        hours = [datetime.fromisoformat(h["hour"]) for h in ingested["hours"] if h["calls_uri"]]
        done = [analyse_hour(lake, hour, prices=prices, judge_factory=resources.relevance_judge)
                for hour in hours]
        if hours:  # the newest hour to the Pushgateway, when one is set (never fails the run)
            push_hour_metrics(lake, max(hours))
        return done

    @task(task_display_name="Evaluate rules and alert")
    def evaluate_alerts(metrics: list[dict], **context) -> dict:
        """Rules on the run's hour, then the alert engine (state, claims, Slack, alert log)."""
        from promptops.airflow_adapters import resources
        from promptops.pipelines.hourly import alert_on_findings, check_budgets, findings_for_hour

        lake = resources.lake()
        start, end = context["data_interval_start"], context["data_interval_end"]
        findings = findings_for_hour(lake, start, resources.thresholds())
        print(f"{len(findings)} rule findings for [{start}, {end})")
        # Budgets (budgets.yaml and the Variable promptops_budgets): a threshold crossed for
        # the first time this period is one more finding of this evaluation.
        crossed, budgets = check_budgets(lake, end, resources.budget_overrides())
        findings += crossed
        print(f"budgets: {sum(budgets['scopes'].values())} scopes judged, "
              f"{len(crossed)} thresholds newly crossed")
        outcome = alert_on_findings(lake, findings, end, run_id=context["run_id"],
                                    run_url=run_url(context),
                                    webhooks=resources.slack_webhooks(),
                                    variable_reader=resources.variable_reader,
                                    targets=resources.target_connections())
        from promptops.pipelines.hourly import push_alert_outcome

        push_alert_outcome(outcome, dag="promptops_hourly", scope="hourly")
        print(f"alerts: {len(outcome['firing'])} firing, {len(outcome['pending'])} pending, "
              f"{len(outcome['resolved'])} resolved, "
              f"{len(outcome['notifications'])} notifications"
              + (f" (replay: {outcome['replay']})" if outcome["replay"] else ""))
        return outcome

    windows = plan_pull()
    ingested = merge_windows(pull_window.expand(window=windows))
    outcome = evaluate_alerts(hourly_metrics(ingested))
    wait_for_platform() >> windows
    respond(outcome, scope="hourly")


promptops_hourly()
