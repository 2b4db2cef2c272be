"""The dispatcher against the sandbox: Meta's limits held, every recipient messaged once."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

sys.path.insert(0, str(Path(__file__).parent))

from dispatch_helpers import SENDER, TOKEN, campaign_row, dispatcher, phones, run, sandbox_process, seed, states  # noqa: E402

from campaign import campaigns  # noqa: E402
from campaign.db import Database  # noqa: E402
from campaign.clock import FakeClock, utcnow  # noqa: E402
from campaign.models import Contact, Message  # noqa: E402
from campaign.sandbox.config import SandboxConfig  # noqa: E402
from campaign.sandbox.server import SandboxServer  # noqa: E402


@pytest.fixture
def sandbox():  # type: ignore[no-untyped-def]
    """The sandbox in-process, fast: for behaviour, not for timing."""
    with SandboxServer(SandboxConfig(access_token=TOKEN, phone_number_id=SENDER, latency_ms=(1, 5),
                                     pair_interval=0, mps=1000, seed=7)) as server:
        yield server


def test_the_cap_holds_in_every_sliding_second_with_no_throttling(db: Database, tmp_path: Path) -> None:
    seed(db, "spring", phones(400))
    with sandbox_process(tmp_path, mps=80, pair_interval=6, latency_ms=[20, 60]) as sandbox:
        stats = run(db, sandbox.url, mps=80, pair_interval=6)
        figures = sandbox.figures()
    assert stats.sent == 400
    assert figures["accepted"] == 400 and figures["duplicate_sends"] == 0
    assert figures["max_in_any_second"] <= 80
    assert figures["throttled"] == 0 and figures["pair_limit_hits"] == 0


def test_every_recipient_gets_one_message_and_the_campaign_completes(db: Database, sandbox: SandboxServer) -> None:
    campaign_id = seed(db, "spring", phones(120))
    run(db, sandbox.url, mps=200)
    assert states(db, campaign_id) == {"sent": 120}
    assert campaign_row(db, campaign_id).state == "completed"
    figures = sandbox.figures(SENDER)
    assert figures.accepted == 120 and figures.duplicate_sends == 0
    with db.read_session() as session:
        wamids = session.scalars(select(Message.wamid)).all()
        assert len(set(wamids)) == 120 and all(w and w.startswith("wamid.") for w in wamids)


def test_the_pair_interval_holds_across_two_campaigns_sharing_recipients(db: Database, sandbox: SandboxServer) -> None:
    sandbox.patch_config(pair_interval=1.5)
    shared = phones(15)
    first, second = seed(db, "first", shared), seed(db, "second", shared)
    run(db, sandbox.url, mps=200, pair_interval=1.5)
    figures = sandbox.figures(SENDER)
    assert figures.accepted == 30 and figures.pair_limit_hits == 0
    assert figures.min_pair_gap is not None and figures.min_pair_gap >= 1.5
    assert states(db, first) == {"sent": 15} and states(db, second) == {"sent": 15}


def test_free_form_goes_only_to_recipients_with_an_open_window(db: Database, sandbox: SandboxServer) -> None:
    numbers = phones(10)
    campaign_id = seed(db, "chat", numbers, text="Hi {name}, your order {order} is ready")
    now = utcnow()
    with db.session() as session:  # five wrote in an hour ago and were messaged before
        session.execute(update(Contact).where(Contact.phone.in_(numbers[:5]))
                        .values(last_inbound_at=now - timedelta(hours=1), last_sent_at=now - timedelta(days=2)))
    for number in numbers[:5]:
        sandbox.call(sandbox.sandbox.set_window, {"to": number, "age_seconds": 3600})
    run(db, sandbox.url)
    sandbox.wait_webhooks_idle()
    with db.read_session() as session:
        kinds = dict(session.execute(select(Contact.phone, Message.kind).join(Message, Message.contact_id == Contact.id)).all())
    assert {p: kinds[p] for p in numbers} == {p: ("text" if p in numbers[:5] else "template") for p in numbers}
    figures = sandbox.figures(SENDER)
    assert figures.window_violations == 0 and 131047 not in figures.status_failures_by_code
    assert states(db, campaign_id) == {"sent": 10}


def test_a_5xx_is_in_doubt_for_its_own_grace_then_sent_again(db: Database, sandbox: SandboxServer) -> None:
    # A 5xx does not prove Meta did not send (test_faults.py has the webhooks that settle the
    # ones it did): without a webhook, the message goes again after CAMPAIGN_SERVER_ERROR_GRACE.
    sandbox.patch_config(transient_rate=0.3)
    campaign_id = seed(db, "flaky", phones(60))
    stats = run(db, sandbox.url, mps=200, server_error_grace=timedelta(seconds=0.3), recover_every=0.1)
    assert states(db, campaign_id) == {"sent": 60}
    figures = sandbox.figures(SENDER)
    assert figures.transient_errors > 0 and stats.in_doubt == figures.transient_errors and stats.retried == 0
    assert figures.accepted == 60 and figures.duplicate_sends == 0


def test_a_missing_template_pauses_the_campaign_with_the_reason(db: Database, sandbox: SandboxServer) -> None:
    campaign_id = seed(db, "typo", phones(30), template="order_updat")
    run(db, sandbox.url, mps=200)
    campaign = campaign_row(db, campaign_id)
    assert campaign.state == "paused" and campaign.pause_code == 132001
    assert "132001" in (campaign.pause_reason or "") and "template" in (campaign.pause_reason or "")
    assert states(db, campaign_id).get("sent", 0) == 0 and states(db, campaign_id)["queued"] == 30


def test_suppressed_recipients_are_skipped(db: Database, sandbox: SandboxServer) -> None:
    from campaign import suppressions

    numbers = phones(5)
    campaign_id = seed(db, "optout", numbers)
    with db.session() as session:
        suppressions.suppress(session, numbers[:2], reason="asked")
    run(db, sandbox.url)
    assert states(db, campaign_id) == {"sent": 3, "skipped": 2}


def test_pause_stops_sending_within_a_second_and_resume_finishes_without_duplicates(db: Database, tmp_path: Path) -> None:
    campaign_id = seed(db, "spring", phones(150))
    with sandbox_process(tmp_path, mps=80, pair_interval=0, latency_ms=[20, 60]) as sandbox:
        worker = dispatcher(db, sandbox.url, mps=50)
        thread = threading.Thread(target=lambda: __import__("asyncio").run(worker.run()))
        thread.start()
        try:
            deadline = time.time() + 20
            while states(db, campaign_id).get("sent", 0) < 20 and time.time() < deadline:
                time.sleep(0.05)
            with db.session() as session:
                campaigns.pause(session, campaigns.get(session, "spring"))
            paused_at = time.time()
            time.sleep(1.5)  # a pause is a promise in real time: requests reaching Meta
            late = [e for e in sandbox.ledger() if e["wall"] > paused_at + 1.0]
            assert late == [], f"{len(late)} requests arrived more than 1 s after the pause"
            sent_while_paused = states(db, campaign_id)
            assert 0 < sent_while_paused.get("sent", 0) < 150 and sent_while_paused.get("sending", 0) == 0, sent_while_paused
            with db.session() as session:
                campaigns.resume(session, campaigns.get(session, "spring"))
            deadline = time.time() + 20
            while states(db, campaign_id).get("sent", 0) < 150 and time.time() < deadline:
                time.sleep(0.2)
        finally:
            worker.stop()
            thread.join(10)
        figures = sandbox.figures()
    assert states(db, campaign_id) == {"sent": 150}
    assert figures["accepted"] == 150 and figures["duplicate_sends"] == 0


def test_cancel_ends_the_campaign_and_cancels_what_was_queued(db: Database, sandbox: SandboxServer) -> None:
    campaign_id = seed(db, "spring", phones(40), running=False)
    with db.session() as session:
        cancelled = campaigns.cancel(session, campaigns.get(session, "spring"))
    assert cancelled == 40
    run(db, sandbox.url)
    assert states(db, campaign_id) == {"cancelled": 40}
    assert sandbox.figures(SENDER).requests == 0


def test_a_campaign_without_a_sender_is_paused_with_the_reason(db: Database, sandbox: SandboxServer) -> None:
    campaign_id = seed(db, "nosender", phones(3))
    run(db, sandbox.url, default_sender=None)
    campaign = campaign_row(db, campaign_id)
    assert campaign.state == "paused" and "WA_PHONE_NUMBER_ID" in (campaign.pause_reason or "")
    assert states(db, campaign_id) == {"queued": 3}


def test_the_messaging_limit_holds_new_conversations_until_the_window_rolls(db: Database, sandbox: SandboxServer) -> None:
    first = seed(db, "first", phones(4))
    second = seed(db, "second", phones(6, start=2))  # two recipients shared with the first campaign
    clock = FakeClock(utcnow())
    worker = dispatcher(db, sandbox.url, mps=200, daily_unique_limit=6, clock=clock)

    def sent() -> int:
        return states(db, first).get("sent", 0) + states(db, second).get("sent", 0)

    def held_until() -> set[datetime | None]:
        with db.read_session() as session:
            return set(session.scalars(select(Message.next_attempt_at).where(Message.state == "queued")))

    async def scenario() -> None:
        task = asyncio.create_task(worker.run())
        try:
            await until(lambda: sent() == 6)  # six people, once each
            clock.advance(1.0)  # past the pair margin: the shared two's second messages are due
            await until(lambda: sent() == 8)
            with db.read_session() as session:
                reached = set(session.scalars(select(Contact.phone).join(Message, Message.contact_id == Contact.id)
                                              .where(Message.state == "sent")))
            assert len(reached) == 6  # six distinct people; the shared two cost the budget once
            assert states(db, second).get("queued", 0) == 2
            rolled = clock.now() + timedelta(hours=24)
            clock.advance(timedelta(hours=23, minutes=59))  # still inside the moving 24 hours
            await until(lambda: held_until() == {clock.now() + timedelta(minutes=1)})
            assert sent() == 8
            clock.advance(rolled - clock.now() + timedelta(seconds=1))
            await until(lambda: sent() == 10)
        finally:
            worker.stop()
            await task

    asyncio.run(scenario())


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Real time passes here only for the worker's requests and database round trips."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)
