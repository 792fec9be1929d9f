"""Airflow assets that promptops publishes and consumes (cheap to import: no heavy deps)."""

from airflow.sdk import Asset

#: Hourly partitions of validated, deduplicated call records.
CALLS_ASSET = Asset("promptops://lake/calls", group="promptops")
