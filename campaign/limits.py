"""The send cap's hard guard: never more than the cap in any sliding second, per sender.

The dispatcher paces sends evenly from slots reserved in the database; this guard is the
backstop behind the pacing (pyrate-limiter's exact sliding window). Two implementations:

- `LocalGuard`: an in-memory bucket, for one sending process (tests, a single `launch`).
- `SharedGuard`: a bucket every worker shares: a file-locked SQLite bucket beside a SQLite
  database (processes on one host), a PostgreSQL bucket for a PostgreSQL database (hosts),
  or Redis when `CAMPAIGN_REDIS_URL` is set.

A shared acquisition costs a lock or a round trip (PostgresBucket manages ~1,100/s), so
workers acquire a whole block of slots at once, weighted by its size, and in a thread:
sync buckets stall the event loop (library-notes.md).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Protocol

from pyrate_limiter import Duration, InMemoryBucket, Limiter, Rate, SQLiteBucket
from sqlalchemy import make_url


WINDOW_MARGIN_MS = 30
"""The shared guard's window is this much longer than a second: a worker sends a few milliseconds
after its acquisition returns, and Meta counts arrivals, so a window of exactly one second
let one or two more than the cap into a sliding second of sends. Pacing at PACE (0.97 of the
cap) puts 0.9991 of the cap into 1.03 s: the guard never slows the pacing down."""
SHARED_RETRY_SECONDS = 0.01
"""How often a worker waiting for a PostgreSQL or Redis bucket tries again: a try is a round
trip, and a worker acquires a block of slots at a time (a few times a second)."""


class RateGuard(Protocol):
    async def acquire(self, sender: str, weight: int = 1, cap: int | None = None) -> None: ...

    def close(self) -> None: ...


class _PerSender:
    """One limiter per sender and cap: pyrate's SingleBucketFactory ignores the item name,
    and a sender's cap can change while a worker runs (Meta raises a number's throughput)."""

    window_margin_ms = 0

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._limiters: dict[tuple[str, int], Limiter] = {}

    def _bucket(self, sender: str, rates: list[Rate]):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def _limiter(self, sender: str, cap: int) -> Limiter:
        if (sender, cap) not in self._limiters:
            window = Rate(cap, Duration.SECOND + self.window_margin_ms)
            self._limiters[(sender, cap)] = Limiter(self._bucket(sender, [window]), buffer_ms=5)
        return self._limiters[(sender, cap)]

    def close(self) -> None:
        for limiter in self._limiters.values():
            limiter.close()
        self._limiters.clear()


class LocalGuard(_PerSender):
    def _bucket(self, sender: str, rates: list[Rate]) -> InMemoryBucket:
        return InMemoryBucket(rates)

    async def acquire(self, sender: str, weight: int = 1, cap: int | None = None) -> None:
        cap = max(1, cap or self.cap)
        await self._limiter(sender, cap).try_acquire_async(sender, weight=min(weight, cap))


class SharedGuard(_PerSender):
    window_margin_ms = WINDOW_MARGIN_MS

    def __init__(self, cap: int, database_url: str, redis_url: str | None = None) -> None:
        super().__init__(cap)
        self.database_url = database_url
        self.redis_url = redis_url
        self._pool = None

    def _bucket(self, sender: str, rates: list[Rate]):  # type: ignore[no-untyped-def]
        table = "send_cap_" + re.sub(r"\W", "_", sender)
        if self.redis_url:
            return _redis_bucket(rates, self.redis_url, f"campaign:{table}")
        url = make_url(self.database_url)
        if url.get_backend_name() == "postgresql":
            from psycopg_pool import ConnectionPool
            from pyrate_limiter import PostgresBucket

            if self._pool is None:
                conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
                self._pool = ConnectionPool(conninfo, min_size=1, max_size=2, open=True)
            return PostgresBucket(self._pool, table, rates)
        path = Path(url.database or "campaign.db").expanduser()
        return SQLiteBucket.init_from_file(rates, table=table, db_path=f"{path}.send-cap", use_file_lock=True)

    async def acquire(self, sender: str, weight: int = 1, cap: int | None = None) -> None:
        cap = max(1, cap or self.cap)
        limiter = self._limiter(sender, cap)
        if not self._remote:
            await asyncio.to_thread(limiter.try_acquire, sender, min(weight, cap))
            return
        # Not pyrate's blocking wait for a PostgreSQL or Redis bucket: it puts the item again
        # stamped with the time it meant to wake at, not the time it did, and a round trip or
        # a busy table lock later that stamp lies in the past, so the window lets more through
        # (measured: 41-44 in a second at a cap of 40, three workers). Each try here is
        # stamped when it is made.
        while not await asyncio.to_thread(limiter.try_acquire, sender, min(weight, cap), False):
            await asyncio.sleep(SHARED_RETRY_SECONDS)

    @property
    def _remote(self) -> bool:
        return bool(self.redis_url) or make_url(self.database_url).get_backend_name() == "postgresql"

    def close(self) -> None:
        super().close()
        if self._pool is not None:
            self._pool.close()
            self._pool = None


def _redis_bucket(rates: list[Rate], redis_url: str, key: str):  # type: ignore[no-untyped-def]
    """pyrate's RedisBucket, counting the window from its start to its newest item.

    Its script counts up to the new item's own stamp. A worker stamps its item, then its
    script runs: one that stamped before another but reaches Redis after it does not count
    the other's item, and one more than the cap gets into a window (measured: 41 of the
    bucket's own stamps in 1.03 s at a cap of 40, 1 run in 12, three workers). Counting
    every item from the window's start, later stamps included, admits at most the cap into
    any window, in whatever order the workers arrive. (pyrate's PostgreSQL bucket counts so.)"""
    from pyrate_limiter import RedisBucket
    from pyrate_limiter.buckets.redis_bucket import LuaScript
    from redis import Redis

    bounded = "redis.call('ZCOUNT', bucket, window_start, now)"
    if bounded not in LuaScript.PUT_ITEM:
        raise RuntimeError("pyrate-limiter's Redis script changed: check campaign.limits._redis_bucket against it")
    script = LuaScript.PUT_ITEM.replace(bounded, "redis.call('ZCOUNT', bucket, window_start, '+inf')")
    redis = Redis.from_url(redis_url)
    return RedisBucket(rates, redis, key, redis.script_load(script))


def guard_for(database_url: str, cap: int, *, shared: bool = True, redis_url: str | None = None) -> RateGuard:
    if not shared or make_url(database_url).database in (None, "", ":memory:"):
        return LocalGuard(cap)
    return SharedGuard(cap, database_url, redis_url)
