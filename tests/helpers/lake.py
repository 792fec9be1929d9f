"""Lake helpers for tests of concurrent runs."""

from __future__ import annotations

import threading

import pytest

from promptops.lake.store import Lake


def writes_wait_for_each_other(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two writers' lake writes wait until both are about to write: each has read what it
    reads before either writes (overlapping runs, such as a backfill next to the schedule).
    ``monkeypatch.undo()`` ends it."""
    both_ready = threading.Barrier(2, timeout=60)

    def after_both_read(write):
        def paused(self, *args, **kwargs):
            both_ready.wait()
            return write(self, *args, **kwargs)
        return paused

    for name in ("write_partition", "write_record"):
        monkeypatch.setattr(Lake, name, after_both_read(getattr(Lake, name)))
