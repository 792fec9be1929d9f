"""The daily cost report (:mod:`.cost_report`, its HTML template under ``templates/``), the
slices that moved the day's cost (:mod:`.cost_movers`) and whether a day's hourly
partitions are complete (:mod:`.completeness`).
"""
