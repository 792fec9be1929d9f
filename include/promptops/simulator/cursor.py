"""Opaque, tamper-proof page cursors bound to one query.

A cursor holds the position after the last served record, as the key (hour, ts, call id,
occurrence) rather than an offset: records that arrive late while a client pages through a
window then land before or after the cursor but never shift it, so nothing is skipped or
served twice. It is urlsafe base64 of compact JSON plus an HMAC; the HMAC key derives from
the seed so a restarted simulator (same seed) still accepts its cursors.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

import orjson


class CursorError(ValueError):
    """A cursor that is malformed, tampered with or used with another query."""


class CursorCodec:
    def __init__(self, seed: int) -> None:
        self._key = hashlib.sha256(f"promptops-sim-cursor:{seed}".encode()).digest()

    def _mac(self, payload: bytes) -> str:
        digest = hmac.new(self._key, payload, hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def encode(self, start_us: int, end_us: int, limit: int, hour: int, key: int) -> str:
        payload = orjson.dumps([1, start_us, end_us, limit, hour, key])
        body = base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
        return f"{body}.{self._mac(payload)}"

    def decode(self, cursor: str, start_us: int, end_us: int, limit: int) -> tuple[int, int]:
        """(hour, key) after which the next page starts."""
        try:
            body, mac = cursor.split(".", 1)
            payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (ValueError, binascii.Error):
            raise CursorError("cursor is not one this platform issued") from None
        if not hmac.compare_digest(mac, self._mac(payload)):
            raise CursorError("cursor is not one this platform issued (bad signature)")
        try:
            version, c_start, c_end, c_limit, hour, key = orjson.loads(payload)
        except (orjson.JSONDecodeError, ValueError, TypeError):
            raise CursorError("cursor is not one this platform issued") from None
        if version != 1:
            raise CursorError("cursor version is not supported")
        if (c_start, c_end) != (start_us, end_us):
            raise CursorError("cursor belongs to another start/end window")
        if c_limit != limit:
            raise CursorError(f"cursor was issued for limit={c_limit}, not limit={limit}")
        return int(hour), int(key)
