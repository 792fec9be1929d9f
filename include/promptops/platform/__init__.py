"""The platform's HTTP API: the client with its retries and paging (:mod:`.client`) and the
circuit breaker that stops calling a platform that keeps failing (:mod:`.breaker`, with
its Redis store in :mod:`.breaker_redis`).
"""
