"""The Parquet lake: hourly partitions of named datasets under one base URI, written
atomically (:mod:`.store`). The datasets are named in :mod:`promptops.contracts.datasets`.
"""
