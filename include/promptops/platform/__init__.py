"""The platform's HTTP API: the client with its retries (:mod:`.client`), its two ways of
paging through call records (:mod:`.paging`, no HTTP in it) and the circuit breaker that
stops calling a platform that keeps failing (:mod:`.breaker`, with its Redis store in
:mod:`.breaker_redis`).
"""
