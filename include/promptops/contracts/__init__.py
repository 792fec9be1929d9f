"""The schemas every layer shares: the platform's call records and their validation
(:mod:`.records`), the long metrics table (:mod:`.metric_table`), the findings rules
and models hand to alerting and healing (:mod:`.findings`) and the names of the lake's
datasets (:mod:`.datasets`). Nothing here does I/O.
"""
