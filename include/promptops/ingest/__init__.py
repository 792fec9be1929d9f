"""Getting call records into the lake: pulled from the platform API an hour at a time
(:mod:`.pull`), re-read over windows of hours (:mod:`.windows`), or pushed by the platform
as NDJSON batches into a landing area (:mod:`.push`). New record sources go here.
"""
