"""The lake's datasets: each one's folder under the lake root, named once.

Writers and readers in different layers meet only through these names (hourly partitions
``<dataset>/date=YYYY-MM-DD/hour=HH/``, see :mod:`promptops.lake.store`), so they are part
of the contract. Retention (``PROMPTOPS_RETENTION_<DATASET>_DAYS``) goes by the same names.
No imports: cheap for every layer.
"""

# Ingest: validated call records, the rejects with their reason, and what is in flight.
CALLS = "calls"
QUARANTINE = "quarantine"
#: Windows of a split hour, pulled by different workers before the hour is merged.
STAGING_CALLS = "staging_calls"
STAGING_QUARANTINE = "staging_quarantine"
#: Manifests of pushed batches already ingested.
PUSH_BATCHES = "push_batches"

# Metrics and what is learned from them.
METRICS = "metrics"
HEALTH_METRICS = "health_metrics"
#: Per-caller peaks by time of day over the last days, built daily from ``health_metrics``
#: (one record file ``profile.parquet`` in the folder of the day it is for, hour 00).
CALLER_PROFILES = "caller_profiles"
BASELINES = "baselines"
#: Exact spend per hour and per value of overall/user/team/app/key (every value, no top N):
#: what budgets are summed from (promptops.metrics.spend).
SPEND = "spend"
#: Versioned root-cause models (``version=YYYY-MM-DD/``), not hourly partitions.
ANOMALY_MODELS = "models/anomaly"

# Alerting and healing.
#: Cross-run alert state, one folder per scope (versioned blobs, not partitions).
ALERT_STATE = "alert_state"
ALERT_LOG = "alert_log"
HEAL_REQUESTS = "heal_requests"
HEAL_AUDIT = "heal_audit"
#: Which budget thresholds fired in which period (exclusive-create blobs, one per crossing).
BUDGET_LEDGER = "budget_ledger"

#: Daily cost reports, one folder per day (``date=YYYY-MM-DD/index.html`` and its files).
REPORTS = "reports"
