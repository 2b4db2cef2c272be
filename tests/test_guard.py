"""The cap's hard guard alone, without the pacing in front of it: every sliding second holds at
most the cap, for each shared bucket (the file beside a SQLite database, PostgreSQL, Redis).

Every other cap test sends through the evenly spaced slots first, so a guard that did nothing
would pass them. Here three workers (each its own guard, as in three processes) acquire as fast
as they can; the times their acquisitions return are what a worker sends at."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest

from campaign.limits import SharedGuard

CAP, SECONDS, WORKERS = 40, 2.5, 3
REDIS_URL = os.environ.get("CAMPAIGN_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def busiest_second(times: list[float]) -> int:
    times = sorted(times)
    most, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= 1.0:
            start += 1
        most = max(most, end - start + 1)
    return most


def hammer(make_guard, weight: int = 1) -> list[float]:  # type: ignore[no-untyped-def]
    """Each worker acquires `weight` at a time until SECONDS have passed; the return times."""
    times: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        guard = make_guard()

        async def run() -> None:
            deadline = time.monotonic() + SECONDS
            while time.monotonic() < deadline:
                await guard.acquire("106540352242922", weight)
                with lock:
                    times.extend([time.monotonic()] * weight)

        try:
            asyncio.run(run())
        finally:
            guard.close()

    threads = [threading.Thread(target=worker) for _ in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(SECONDS + 30)
    return times


def _redis_up() -> bool:
    try:
        from redis import Redis

        return bool(Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping())
    except Exception:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["file", "postgresql", "redis"])
def test_the_shared_guard_alone_holds_every_sliding_second_to_the_cap(kind: str, tmp_path: Path) -> None:
    if kind == "file":
        url, redis_url = f"sqlite:///{tmp_path / 'campaign.db'}", None
    elif kind == "postgresql":
        url, redis_url = os.environ.get("CAMPAIGN_TEST_POSTGRES_URL", ""), None
        if not url:
            pytest.skip("CAMPAIGN_TEST_POSTGRES_URL is not set")
        _clear_postgres_bucket(url)
    else:
        if not _redis_up():
            pytest.skip(f"no Redis at {REDIS_URL} (.ci/run starts one)")
        from redis import Redis

        Redis.from_url(REDIS_URL).flushdb()
        url, redis_url = f"sqlite:///{tmp_path / 'campaign.db'}", REDIS_URL
    times = hammer(lambda: SharedGuard(CAP, url, redis_url))
    assert busiest_second(times) <= CAP
    # It is a limit, not a stop: the workers together still get most of the cap.
    assert len(times) >= CAP * (SECONDS - 1)


def _clear_postgres_bucket(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text('DROP TABLE IF EXISTS "send_cap_106540352242922"'))
    engine.dispose()


def test_the_redis_guard_counts_a_later_stamp_that_reached_redis_first() -> None:
    """Workers stamp their items before their scripts reach Redis, so stamps arrive out of
    order: one taken earlier but arriving later must still see the later one in its window."""
    if not _redis_up():
        pytest.skip(f"no Redis at {REDIS_URL} (.ci/run starts one)")
    from pyrate_limiter import Duration, Rate, RateItem
    from redis import Redis

    Redis.from_url(REDIS_URL).flushdb()
    guard = SharedGuard(1, "sqlite:///unused.db", REDIS_URL)
    bucket = guard._bucket("106540352242922", [Rate(1, Duration.SECOND)])
    now = int(time.time() * 1000)
    assert bucket.put(RateItem("send", now + 10))
    assert not bucket.put(RateItem("send", now)), "two sends in one second at a cap of 1"
    guard.close()
