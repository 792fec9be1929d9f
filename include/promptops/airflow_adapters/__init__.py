"""The Airflow side of promptops: assets (:mod:`.assets`), the shared ends of the
evaluating DAGs (:mod:`.responses`), the heal DAG's approval step
(:mod:`.heal_approval`) and the notifier that reports failed runs
(:mod:`.failure_notifier`). Cheap to import from DAG files.
"""
