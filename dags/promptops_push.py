"""promptops push DAG: ingest call-record batches that the platform pushes (docs/push.md)."""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import dag, task

from promptops.airflow_adapters.assets import CALLS_ASSET, LANDING_ASSET
from promptops.airflow_adapters.dag_defaults import dag_defaults


@dag(
    dag_id="promptops_push",
    dag_display_name="promptops · pushed batches",
    schedule=[LANDING_ASSET],
    # One run at a time: each batch is merged into its hours' partitions (read, merge,
    # replace), so two runs on the same hour must not interleave.
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=55),
    tags=["promptops", "ingest", "push"],
    **dag_defaults(
        retries=3,
        retry_delay=timedelta(minutes=1),
        max_retry_delay=timedelta(minutes=15),
        execution_timeout=timedelta(minutes=30),
    ),
)
def promptops_push():
    """
    ### promptops push: batches the platform delivers itself

    Runs whenever an event of the asset `promptops://landing/call_records` arrives. The
    platform writes a batch of call records as NDJSON (one record per line, the API's
    record schema) under the landing area (`PROMPTOPS_LANDING_URI`) and announces it:

    `POST /api/v2/assets/events` with `{"asset_id": <id>, "extra": {"path": "<file>"}}`,
    the path relative to the landing area.

    Each batch goes through the hourly poll's validation and dedupe and lands in the same
    partitions: `calls/date=.../hour=.../` by the hour of each record's `ts` (merged with
    what is there, one row per `call_id`), rejects in `quarantine/` with their reason. A
    batch announced again (same bytes) is reported as *already ingested* and changes
    nothing (manifest in `push_batches/`). Paths outside the landing area are refused.
    Publishes `promptops://lake/calls` with the partitions written. Details: docs/push.md.
    """

    @task(task_display_name="Ingest pushed batches", inlets=[LANDING_ASSET],
          outlets=[CALLS_ASSET])
    def ingest_pushed_batches(**context) -> list[dict]:
        """Ingest the batch each event names (those that triggered the run, and any announced
        after them that Airflow did not hand to a run); returns one summary per event."""
        from airflow.sdk.exceptions import AirflowFailException

        from promptops.airflow_adapters import resources
        from promptops.errors import RejectShareExceeded
        from promptops.ingest.push import PushError, collect_events, ingest_events, is_retryable
        from promptops.settings import get_settings

        def plain(event) -> dict:
            return {"extra": dict(event.extra or {}), "timestamp": event.timestamp.isoformat()}

        triggering = list(context["triggering_asset_events"].get(LANDING_ASSET, []))
        later = []
        if triggering:
            # Announcements Airflow folded into this run's queue entry without handing them
            # to it (see collect_events): read them from the asset's own event log.
            newest = max(e.timestamp for e in triggering).isoformat()
            later = [plain(e) for e in context["inlet_events"][LANDING_ASSET].after(newest)]
        events = collect_events([plain(e) for e in triggering], later)
        print(f"{len(events)} batch event(s): " + ", ".join(
            f"{e['extra'].get('path')!r} ({e['via']})" for e in events))
        try:
            summaries = ingest_events(events, run_id=context["run_id"],
                                      max_reject_share=get_settings().max_reject_share,
                                      lake=resources.lake(),
                                      storage_path=resources.storage_path)
        except (PushError, RejectShareExceeded) as exc:
            if is_retryable(exc):  # the file may still be on its way
                raise
            raise AirflowFailException(str(exc)) from exc  # a retry would not help
        for s in summaries:
            print(f"{s['batch']}: {s['status']}, {s['received']} received, {s['written']} "
                  f"written, {s['duplicates']} duplicates, rejected {s['rejected'] or 'none'}")
        context["outlet_events"][CALLS_ASSET].extra = {
            "source": "push",
            "partitions": sorted({p for s in summaries for p in s["partitions"]}),
            "batches": [s["sha256"] for s in summaries],
            "written": sum(s["written"] for s in summaries),
        }
        return summaries

    ingest_pushed_batches()


promptops_push()
