"""From findings to messages, with Alertmanager's semantics: the routing configuration
(:mod:`.config`), the engine that mutes and schedules notifications (:mod:`.engine`, its
stages in :mod:`.stages`), how findings that share a root cause become one incident
(:mod:`.incidents`), its state (:mod:`.state`, :mod:`.store`), silences (:mod:`.silences`),
Slack delivery by webhook or bot token (:mod:`.slack`) and the alert a failed promptops run
sends (:mod:`.failure`).
"""
