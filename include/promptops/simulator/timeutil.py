"""Strict RFC 3339 parsing, formatting and the simulator's clock.

The simulator is strict about timestamps (the contract says: make the simulator strict), so
parsing goes through one regular expression instead of ``datetime.fromisoformat``, which
accepts shapes RFC 3339 does not (no offset, a space separator, week dates).
"""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime, timedelta, timezone

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)
_RELATIVE = re.compile(r"^now((?:[+-]\d+[smhd])*)$")
_TERM = re.compile(r"([+-])(\d+)([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}

HOUR_MS = 3_600_000


def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 timestamp into an aware UTC datetime; ValueError says why not."""
    if not isinstance(text, str):
        raise ValueError("not a string")
    m = _RFC3339.match(text)
    if not m:
        hint = ""
        if re.search(r"\d \d{2}:\d{2}$", text):
            hint = " (a '+' in a query string must be percent-encoded as %2B)"
        raise ValueError(f"{text!r} is not an RFC 3339 timestamp{hint}")
    year, month, day, hour, minute, second, frac, offset = m.groups()
    micro = int((frac[1:] + "000000")[:6]) if frac else 0
    if offset in ("Z", "z"):
        tz = UTC
    else:
        sign = 1 if offset[0] == "+" else -1
        oh, om = int(offset[1:3]), int(offset[4:6])
        if oh > 23 or om > 59:
            raise ValueError(f"{text!r} has an invalid UTC offset")
        tz = timezone(sign * timedelta(hours=oh, minutes=om))
    try:
        dt = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second),
                      micro, tzinfo=tz)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a valid date/time: {exc}") from None
    return dt.astimezone(UTC)


def format_ts(dt: datetime) -> str:
    """``2026-11-20T13:00:00.123Z`` (milliseconds, UTC)."""
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def to_ms(dt: datetime) -> int:
    return to_us(dt) // 1000


def to_us(dt: datetime) -> int:
    delta = dt.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_ms(ms: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=int(ms))


def floor_hour(dt: datetime) -> datetime:
    return dt.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def parse_time_spec(value: str | datetime, anchor: datetime) -> datetime:
    """An absolute timestamp, or a relative one such as ``now-5h`` / ``now-1d+30m``.

    Relative times resolve against ``anchor`` (the simulator's start, floored to the hour),
    so a scenario means the same hours for the whole life of one simulator process.
    """
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"{value.isoformat()} has no UTC offset")
        return value.astimezone(UTC)
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is neither a timestamp nor a relative time like 'now-5h'")
    text = value.strip()
    m = _RELATIVE.match(text)
    if m:
        out = anchor
        for sign, num, unit in _TERM.findall(m.group(1)):
            delta = timedelta(**{_UNITS[unit]: int(num)})
            out = out + delta if sign == "+" else out - delta
        return out
    return parse_rfc3339(text)


class SimClock:
    """Simulated now = real UTC now + an offset that the control endpoint can set."""

    def __init__(self, now: datetime | None = None) -> None:
        self._lock = threading.Lock()
        self._offset = timedelta(0)
        if now is not None:
            self.set(now)

    @staticmethod
    def real_now() -> datetime:
        return datetime.now(UTC)

    def now(self) -> datetime:
        with self._lock:
            return self.real_now() + self._offset

    def set(self, now: datetime | None) -> None:
        """Jump to ``now`` (the clock keeps ticking from there); None returns to real time."""
        with self._lock:
            self._offset = timedelta(0) if now is None else now - self.real_now()

    @property
    def offset_s(self) -> float:
        with self._lock:
            return self._offset.total_seconds()
