"""What the lake's call records add up to: the hourly metrics table (:mod:`.hourly`), the
5-minute health metrics (:mod:`.health`), GPU readings (:mod:`.gpu`), model prices
(:mod:`.pricing`) and the LLM judge that scores answer relevance (:mod:`.judge`).
"""
