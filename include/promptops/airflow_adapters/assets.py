"""Airflow assets that promptops publishes and consumes (cheap to import: no heavy deps)."""

from airflow.sdk import Asset

#: Hourly partitions of validated, deduplicated call records.
CALLS_ASSET = Asset("promptops://lake/calls", group="promptops")

#: NDJSON batches of call records that the platform pushed into the landing area
#: (``extra["path"]`` names the file; docs/push.md).
LANDING_ASSET = Asset("promptops://landing/call_records", group="promptops")
