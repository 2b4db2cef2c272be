"""The one clock: every part that decides by time (the dispatcher, the outbox's callers,
the reconciler, the receiver) asks an injected `Clock`, never the wall clock directly, so
leases, grace periods, retries and windows are tested exactly, without sleeping.

`SystemClock` is the real one. `FakeClock` stands still until told to move; its `sleep`
moves it instead of waiting, so a dispatcher on a fake clock paces its slots at full
speed in fake time (the HTTP requests themselves still take real time).
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone
from typing import Protocol


def utcnow() -> datetime:
    """The wall clock as an aware UTC datetime: the default where no clock is injected."""
    return datetime.now(timezone.utc)


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC (what the database stores)."""
        ...

    def time(self) -> float:
        """The same instant in Unix seconds (what the send slots are counted in)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait until `seconds` from now."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM = SystemClock()


class FakeClock:
    """A clock that stands still until `advance` (or `sleep`) moves it."""

    def __init__(self, start: datetime | None = None) -> None:
        start = start or datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
        if start.tzinfo is None:
            raise ValueError("FakeClock needs a timezone-aware start")
        self._now = start.astimezone(timezone.utc)

    def now(self) -> datetime:
        return self._now

    def time(self) -> float:
        return self._now.timestamp()

    def advance(self, seconds: float | timedelta) -> datetime:
        self._now += seconds if isinstance(seconds, timedelta) else timedelta(seconds=seconds)
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.advance(seconds)
        await asyncio.sleep(0)
