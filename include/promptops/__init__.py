"""promptops: batch monitoring for LLM / prompt-engineering platforms.

The library behind the Airflow DAGs in ``dags/``: the platform API client, the record
schema and its validation, the Parquet lake, and the analysis built on them. Everything here
is plain Python, importable and testable without a scheduler.
"""

__version__ = "0.1.0"
