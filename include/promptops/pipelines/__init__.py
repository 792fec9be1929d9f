"""What the DAG tasks call: the hourly analysis (:mod:`.hourly`), the 5-minute health check
(:mod:`.health`) and the daily run's housekeeping (:mod:`.daily`). Each composes the
packages below it; nothing below imports from here.
"""
