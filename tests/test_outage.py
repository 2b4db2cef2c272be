"""Issue 14: the database goes away, the webhook receiver dies, and the campaign still ends
with every recipient reached exactly once and every state as Meta (the sandbox) decided.

End to end, with real processes: `campaign worker --exit-when-idle`, `campaign webhooks`,
and the sandbox posting signed webhooks and retrying every answer that is not a 200, as
Meta does. The database outage runs on a private PostgreSQL cluster the test starts and
stops itself (never the shared one); see tests/outage_helpers.py.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

sys.path.insert(0, str(Path(__file__).parent))

from dispatch_helpers import SENDER, TOKEN, dispatcher, phones, sandbox_process, seed, states  # noqa: E402
from outage_helpers import (  # noqa: E402
    SECRET,
    PrivateCluster,
    PrivateClusterUnavailable,
    Receiver,
    private_cluster,
    receiver_process,
    wait_agreed,
    worker,
)

from campaign import reconcile  # noqa: E402
from campaign.db import Database, database_unavailable  # noqa: E402
from campaign.dispatcher import Dispatcher  # noqa: E402
from campaign.models import Message, WebhookEvent  # noqa: E402
from campaign.reconcile import reconcile_once  # noqa: E402
from campaign.sandbox.config import SandboxConfig  # noqa: E402
from campaign.sandbox.server import SandboxServer  # noqa: E402
from campaign.statuses import parse_callback_data  # noqa: E402
from campaign.webhooks import store_event  # noqa: E402

OUTAGE_SECONDS = 10.0


def sandbox_config(webhook_url: str, **extra: Any) -> dict[str, Any]:
    """Fast latencies, a mix of fates (sent only, delivered, read), Meta's duplicates and
    disorder, and retries quick enough for a test (Meta's are minutes apart) that never give up."""
    return {"mps": 1000, "pair_interval": 0, "latency_ms": [20, 60], "webhook_url": webhook_url, "app_secret": SECRET,
            "sent_delay_ms": [0, 50], "delivered_delay_ms": [0, 100], "read_delay_ms": [0, 150],
            "delivered_fraction": 0.9, "read_fraction": 0.6, "duplicate_rate": 0.05, "out_of_order_rate": 0.1,
            "webhook_flush_interval": 0.05, "webhook_retry_base": 0.2, "webhook_retry_max_delay": 1.0,
            "webhook_max_attempts": 1000, "seed": 14, **extra}


def webhook_stats(sandbox_url: str) -> dict[str, Any]:
    return httpx.get(f"{sandbox_url}/_sandbox/webhooks", params={"phone_number_id": SENDER}).json()


def wait_accepted(sandbox: Any, at_least: int, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while (accepted := sandbox.figures()["accepted"]) < at_least and time.monotonic() < deadline:
        time.sleep(0.02)
    return accepted


@pytest.fixture
def cluster() -> Iterator[PrivateCluster]:
    try:
        with private_cluster() as started:
            yield started
    except PrivateClusterUnavailable as exc:
        pytest.skip(f"no private PostgreSQL cluster can be started here: {exc}")


@pytest.mark.slow
def test_the_database_stopped_mid_campaign_for_ten_seconds(cluster: PrivateCluster, tmp_path: Path) -> None:
    total = 500
    db = Database.open(cluster.url, migrate=False)
    db.upgrade()
    campaign_id = seed(db, "outage", phones(total))
    with receiver_process(cluster.url, tmp_path) as receiver, \
            sandbox_process(tmp_path, **sandbox_config(f"{receiver.url}/webhook")) as sandbox:
        workers = [worker(cluster.url, sandbox.url, tmp_path, mps=100, name=f"worker-{n}") for n in range(2)]
        try:
            before = wait_accepted(sandbox, 150)
            assert before < total - 100, f"the outage would not land mid-campaign ({before} sent)"
            stopped_at = time.monotonic()
            cluster.stop()  # every session dropped at once, new ones refused
            time.sleep(1.0)  # requests already marked in flight finish
            during = sandbox.figures()["accepted"]
            while time.monotonic() - stopped_at < OUTAGE_SECONDS:
                assert [w.poll() for w in workers] == [None, None], "a worker exited while the database was down"
                time.sleep(0.2)
            after = sandbox.figures()["accepted"]
            receiver_answer = receiver.health()
            cluster.start()
            codes = [w.wait(60) for w in workers]
        finally:
            for w in workers:
                if w.poll() is None:
                    w.kill()
        # No mark can be committed while the database is down, so nothing more is sent.
        assert after == during, f"{after - during} messages were sent while the database was down"
        assert receiver_answer == 503
        assert codes == [0, 0], f"workers exited with {codes} (logs in {tmp_path})"
        wrong = wait_agreed(db, campaign_id, sandbox.ledger)
        figures = sandbox.figures()
        stats = webhook_stats(sandbox.url)
        assert receiver.health() == 200
        assert receiver.process is not None and receiver.process.poll() is None
    db.close()
    assert figures["accepted"] == total, figures
    assert figures["duplicate_sends"] == 0, figures
    assert stats["answers"].get("503", 0) > 0, f"no webhook met the outage: {stats}"
    assert stats["batches_dropped"] == 0, stats
    assert not wrong, f"{len(wrong)} messages disagree with the sandbox, e.g. {wrong[:5]}"


@pytest.mark.slow
def test_the_webhook_receiver_killed_and_restarted_mid_campaign(db: Database, database_url: str,
                                                                 tmp_path: Path) -> None:
    total = 400
    campaign_id = seed(db, "receiver", phones(total))
    receiver = Receiver(database_url, tmp_path)
    receiver.start()
    try:
        with sandbox_process(tmp_path, **sandbox_config(f"{receiver.url}/webhook")) as sandbox:
            process = worker(database_url, sandbox.url, tmp_path, mps=150)
            try:
                wait_accepted(sandbox, 100)
                receiver.kill()  # SIGKILL: mid-request, mid-reconcile
                killed = sandbox.figures()["accepted"]
                time.sleep(3.0)  # the sandbox keeps posting; every post fails
                assert sandbox.figures()["accepted"] > killed, "the campaign did not go on without the receiver"
                receiver.start()  # the same port: Meta's URL does not change
                assert process.wait(60) == 0
            finally:
                if process.poll() is None:
                    process.kill()
            wrong = wait_agreed(db, campaign_id, sandbox.ledger)
            figures = sandbox.figures()
            stats = webhook_stats(sandbox.url)
    finally:
        receiver.stop()
    assert figures["accepted"] == total, figures
    assert figures["duplicate_sends"] == 0, figures
    assert stats["posts_failed"] > 0 and stats["retries"] > 0, f"no webhook met the dead receiver: {stats}"
    assert stats["batches_dropped"] == 0, stats
    assert not wrong, f"{len(wrong)} messages disagree with the sandbox, e.g. {wrong[:5]}"


# -- the same faults, in-process and fast (both dialects) ---------------------------------------


def dropped(statement: str = "UPDATE messages") -> DBAPIError:
    """What SQLAlchemy raises when the server closed the connection under a statement."""
    return OperationalError(statement, {}, ConnectionError("server closed the connection unexpectedly"),
                            connection_invalidated=True)


def test_what_counts_as_the_database_being_away() -> None:
    assert database_unavailable(dropped())
    assert database_unavailable(InterfaceError("SELECT 1", {}, ConnectionError("gone"), connection_invalidated=True))
    assert database_unavailable(PoolTimeoutError("QueuePool limit of size 5 overflow 10 reached"))
    assert database_unavailable(OperationalError("UPDATE", {}, sqlite3.OperationalError("database is locked")))
    assert not database_unavailable(OperationalError("SELECT", {}, sqlite3.OperationalError("no such table: x")))
    assert not database_unavailable(IntegrityError("INSERT", {}, sqlite3.IntegrityError("UNIQUE constraint failed")))
    assert not database_unavailable(ValueError("not a database error"))


class Outage:
    """The database as the worker meets it: calls fail while it is `down`, pings too. The call
    that finds it down first may have committed already (the answer to COMMIT was lost): the
    hardest case for at-most-once (a mark that committed, a result recorded twice)."""

    def __init__(self) -> None:
        self.down = False
        self.failed: Counter[str] = Counter()
        self.marked_at: dict[int, float] = {}
        self.started: float | None = None
        self.ended: float | None = None

    def begin(self) -> None:
        if not self.down and self.started is None:
            self.down, self.started = True, time.time()

    def end(self) -> None:
        self.down, self.ended = False, time.time()

    def wrap(self, fn: Callable[..., Any], *, trigger: Callable[[], bool] = lambda: False) -> Callable[..., Any]:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            if trigger():
                self.begin()
                result = fn(*args, **kwargs)  # committed, but the worker never hears so
                self.note(fn.__name__, result)
                self.failed[fn.__name__] += 1
                raise dropped()
            if self.down:
                self.failed[fn.__name__] += 1
                raise dropped()
            result = fn(*args, **kwargs)
            self.note(fn.__name__, result)
            return result
        return call

    def note(self, name: str, result: Any) -> None:
        if name == "mark_in_flight":
            self.marked_at.update((mid, time.time()) for mid in result if mid not in self.marked_at)


@pytest.mark.parametrize("lost", ["record", "mark_in_flight"])
def test_a_worker_waits_out_the_database_and_never_sends_unmarked_or_records_twice(db: Database, lost: str) -> None:
    """The database goes away just as a batch of results, or an in-flight mark, commits (the
    commit goes through, its answer is lost), and comes back 1.5 s later."""
    total = 240
    campaign_id = seed(db, "outage", phones(total))
    config = SandboxConfig(access_token=TOKEN, phone_number_id=SENDER, latency_ms=(5, 20), pair_interval=0, mps=1000,
                           seed=3)
    outage = Outage()
    with SandboxServer(config) as sandbox:
        worker: Dispatcher = dispatcher(db, sandbox.url, mps=200, poll_interval=0.05, recover_every=0.2,
                                        lease=timedelta(seconds=2), grace=timedelta(seconds=2))
        sent = lambda: sandbox.figures(SENDER).accepted  # noqa: E731
        for name in ("record", "mark_in_flight"):
            trigger = (lambda: outage.started is None and sent() >= 60) if name == lost else (lambda: False)
            setattr(worker.outbox, name, outage.wrap(getattr(worker.outbox, name), trigger=trigger))
        for name in ("claim", "recover", "return_unsent", "has_pending_work"):
            setattr(worker.outbox, name, outage.wrap(getattr(worker.outbox, name)))
        worker.lanes.reserve = outage.wrap(worker.lanes.reserve)
        db.reachable = lambda: not outage.down  # type: ignore[method-assign]

        async def main() -> None:
            async def restore() -> None:
                while outage.started is None:
                    await asyncio.sleep(0.01)
                await asyncio.sleep(1.5)
                outage.end()

            ender = asyncio.create_task(restore())
            await asyncio.wait_for(worker.run(exit_when_idle=True), 30)
            await ender

        asyncio.run(main())
        ledger = [e.as_dict() for e in sandbox.call(sandbox.sandbox.ledger.snapshot, SENDER)]
        figures = sandbox.figures(SENDER)
    del db.reachable
    assert outage.started is not None and outage.ended is not None
    assert outage.failed[lost] >= 1 and sum(outage.failed.values()) >= 2, outage.failed
    assert figures.accepted == total and figures.duplicate_sends == 0
    # Every send left after its in-flight mark committed, and none during the outage but
    # those marked before it (at most the group being sent and the next one).
    for entry in ledger:
        mid = parse_callback_data(entry["callback_data"])
        assert mid in outage.marked_at and entry["wall"] >= outage.marked_at[mid], entry
    during = [e for e in ledger if outage.started + 0.5 < e["wall"] < outage.ended]
    assert not during, f"{len(during)} sends while the database was down"
    assert states(db, campaign_id) == {"sent": total}


def test_a_send_loop_that_dies_gives_back_what_it_held_and_starts_again(db: Database) -> None:
    total = 150
    campaign_id = seed(db, "dies", phones(total))
    config = SandboxConfig(access_token=TOKEN, phone_number_id=SENDER, latency_ms=(1, 5), pair_interval=0, mps=1000)
    calls = Counter[str]()
    with SandboxServer(config) as sandbox:
        worker: Dispatcher = dispatcher(db, sandbox.url, mps=200, poll_interval=0.05)
        real_mark = worker.outbox.mark_in_flight

        def mark(ids: Any, now: Any) -> set[int]:
            calls["mark"] += 1
            if calls["mark"] == 5:  # e.g. the cap's guard losing its connection: not a `_db` call
                raise RuntimeError("the send loop's dependency failed")
            return real_mark(ids, now)

        worker.outbox.mark_in_flight = mark  # type: ignore[method-assign]
        # Without the repair the worker holds the dead loop's messages forever: never idle.
        asyncio.run(asyncio.wait_for(worker.run(exit_when_idle=True), 30))
        figures = sandbox.figures(SENDER)
    assert calls["mark"] > 5
    assert figures.accepted == total and figures.duplicate_sends == 0
    assert states(db, campaign_id) == {"sent": total}


def test_a_reconcile_pass_that_loses_the_database_leaves_its_events_for_the_next(db: Database,
                                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from test_reconcile import body, status  # noqa: PLC0415
    from test_reconcile import seed as seed_message  # noqa: PLC0415

    message_id = seed_message(db, wamid="wamid.OUT")
    store_event(db, body(status("wamid.OUT", "delivered", 1772366400)))
    real = reconcile._process
    failures = {"left": 2}  # the batch, then the same event alone: both lose the connection

    def process(*args: Any, **kwargs: Any) -> Any:
        if failures["left"]:
            failures["left"] -= 1
            raise InterfaceError("SELECT", {}, ConnectionError("connection already closed"), connection_invalidated=True)
        return real(*args, **kwargs)

    monkeypatch.setattr(reconcile, "_process", process)
    with pytest.raises(InterfaceError):
        reconcile_once(db)
    with db.read_session() as session:
        event = session.query(WebhookEvent).one()
        assert event.processed_at is None and event.error is None  # not marked as a bad event
    failures["left"] = 0
    reconcile_once(db)
    with db.read_session() as session:
        assert session.get_one(Message, message_id).state == "delivered"
