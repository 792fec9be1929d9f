"""Helpers for the breaker tests that use the real Redis at 127.0.0.1:6379."""

from __future__ import annotations

import contextlib
import socket
import uuid
from collections.abc import Iterator

import redis

#: A DB of its own: the distributed-stack tests flush DBs 7-15 (their Celery brokers).
REDIS_DB = 5
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"


@contextlib.contextmanager
def redis_namespace() -> Iterator[tuple[redis.Redis, str]]:
    """A client of the test DB and a breaker key prefix in a namespace no other test uses;
    the namespace's keys are deleted afterwards. Redis is part of what is tested: if it is
    not running, this fails."""
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    client.ping()
    namespace = f"promptops-test:{uuid.uuid4().hex[:12]}:"
    try:
        yield client, f"{namespace}breaker:"
    finally:
        keys = list(client.scan_iter(match=f"{namespace}*"))
        if keys:
            client.delete(*keys)
        client.close()


def closed_port() -> int:
    """A local port nothing listens on (just released by the OS)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
