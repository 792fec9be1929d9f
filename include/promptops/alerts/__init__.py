"""From findings to messages, with Alertmanager's semantics: the routing configuration
(:mod:`.config`), the engine that groups, mutes and schedules notifications
(:mod:`.engine`), its state (:mod:`.store`), silences (:mod:`.silences`), Slack delivery
(:mod:`.slack`) and the alert a failed promptops run sends (:mod:`.failure`). Incidents and
other sinks go here.
"""
