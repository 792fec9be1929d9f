"""Healing the platform: which actions a finding may trigger and under what limits
(:mod:`.policy`), the request -> approve -> apply -> verify flow (:mod:`.flow`) and its
audit trail in the lake (:mod:`.audit`).
"""
