"""Launching and ending a campaign: `campaign launch` refuses before it changes anything (a
refused launch leaves the campaign `draft`, its messages queued and Meta, the sandbox,
untouched, and says why in one line); a campaign launched for later waits for its time on
the worker's clock; one cancelled mid-send stops, and loses or repeats nothing."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from dispatch_helpers import dispatcher, phones, seed, states  # noqa: E402

from campaign import sending  # noqa: E402
from campaign.clock import FakeClock, utcnow  # noqa: E402
from campaign.config import Settings  # noqa: E402
from campaign.db import Database  # noqa: E402
from campaign.dispatcher import DispatchStats  # noqa: E402
from campaign.models import Campaign  # noqa: E402
from campaign.sandbox.config import SandboxConfig  # noqa: E402
from campaign.sandbox.server import SandboxServer  # noqa: E402

SENDER, WABA, TOKEN = "106540352242922", "102290129340398", "launch-token"
ROWS = "first_name,phone,order_id\nZoë,+4915123000001,A-1\nJosé,+4915123000002,A-2\nAna,+4915123000003,A-3\n"


@pytest.fixture
def sandbox() -> Iterator[SandboxServer]:
    config = SandboxConfig(access_token=TOKEN, phone_number_id=SENDER, waba_id=WABA, latency_ms=(0, 2), seed=5)
    with SandboxServer(config) as server:
        yield server


@pytest.fixture
def env(sandbox: SandboxServer) -> dict[str, str]:
    """Everything a foreground launch needs, pointed at the sandbox."""
    return {"WA_API_BASE_URL": sandbox.url, "WA_ACCESS_TOKEN": TOKEN, "WA_PHONE_NUMBER_ID": SENDER,
            "WA_BUSINESS_ACCOUNT_ID": WABA, "CAMPAIGN_PAIR_INTERVAL": "0"}


@pytest.fixture
def make(cli, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A `draft` campaign with three recipients, created and imported as a user does."""
    (tmp_path / "r.csv").write_text(ROWS, encoding="utf-8")

    def create(name: str, *options: str) -> None:
        created = cli("create", name, *options)
        assert created.exit_code == 0, created.stderr
        imported = cli("import", name, "r.csv")
        assert imported.exit_code == 0 and imported.stdout.startswith("imported 3,"), imported.output

    return create


def assert_refused(cli, sandbox: SandboxServer, name: str, env: dict[str, str], error: str) -> None:  # type: ignore[no-untyped-def]
    """The launch exits 1 with exactly `error: ...` on stderr, and nothing changed."""
    result = cli("launch", name, env=env)
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: {error}"
    status = json.loads(cli("status", name, "--json").stdout)
    assert status["state"] == "draft"
    assert status["counts"]["queued"] == 3 and status["total"] == 3
    assert sandbox.figures(SENDER).requests == 0  # not one message left


def test_launch_without_a_token_refuses_and_the_campaign_stays_draft(cli, make, env, sandbox) -> None:  # type: ignore[no-untyped-def]
    make("spring", "--template", "order_update", "--language", "en_US", "--param", "first_name", "--param", "order_id")
    no_token = {k: v for k, v in env.items() if k not in ("WA_ACCESS_TOKEN", "WA_BUSINESS_ACCOUNT_ID")}
    assert_refused(cli, sandbox, "spring", no_token,
                   "WA_ACCESS_TOKEN is not set: sending needs a system-user access token")
    # Nothing was left half done: with the token the same command sends everyone.
    fixed = cli("launch", "spring", env=env)
    assert fixed.exit_code == 0, fixed.stderr
    assert json.loads(cli("status", "spring", "--json").stdout)["counts"]["sent"] == 3
    assert sandbox.figures(SENDER).accepted == 3


def test_launch_without_a_sender_refuses_and_the_campaign_stays_draft(cli, make, env, sandbox) -> None:  # type: ignore[no-untyped-def]
    make("spring", "--template", "order_update", "--language", "en_US", "--param", "first_name", "--param", "order_id")
    no_sender = {k: v for k, v in env.items() if k != "WA_PHONE_NUMBER_ID"}
    assert_refused(cli, sandbox, "spring", no_sender,
                   "no sender: set WA_PHONE_NUMBER_ID for the workers, or create the campaign with --phone-number-id")


def test_launch_of_a_template_the_account_does_not_have_refuses(cli, make, env, sandbox) -> None:  # type: ignore[no-untyped-def]
    make("spring", "--template", "order_updates", "--language", "en_US", "--param", "first_name")
    assert_refused(cli, sandbox, "spring", env,
                   "template 'order_updates' does not exist in this WhatsApp Business Account")


def test_launch_of_a_template_meta_has_paused_refuses(cli, make, env, sandbox) -> None:  # type: ignore[no-untyped-def]
    make("flash", "--template", "flash_sale", "--language", "en_US", "--param", "first_name")
    assert_refused(cli, sandbox, "flash", env, "template 'flash_sale' [en_US] is PAUSED, not APPROVED")


def test_launch_of_a_template_in_a_language_it_lacks_refuses(cli, make, env, sandbox) -> None:  # type: ignore[no-untyped-def]
    make("spring", "--template", "order_update", "--language", "de", "--param", "first_name", "--param", "order_id")
    assert_refused(cli, sandbox, "spring", env, "template 'order_update' has no de version (it has: en_US)")


def test_launch_with_a_template_variable_left_unbound_refuses(cli, make, env, sandbox) -> None:  # type: ignore[no-untyped-def]
    make("spring", "--template", "order_update", "--language", "en_US", "--param", "first_name")
    assert_refused(cli, sandbox, "spring", env, "order_update: body.2 (text) is not bound")


def test_a_detached_launch_needs_no_token_here_and_a_second_launch_is_refused(cli, make, env) -> None:  # type: ignore[no-untyped-def]
    """--detach only changes the state (a worker elsewhere has the token); launching a
    running campaign again is refused without touching it."""
    make("spring", "--template", "order_update", "--language", "en_US", "--param", "first_name", "--param", "order_id")
    detached = cli("launch", "spring", "--detach")
    assert detached.exit_code == 0, detached.stderr
    again = cli("launch", "spring", env=env)
    assert again.exit_code == 1 and again.stderr.strip() == "error: campaign 'spring' is running: cannot launch it"
    assert json.loads(cli("status", "spring", "--json").stdout)["counts"]["queued"] == 3


# -- scheduled (--at) and cancelled mid-send, on a worker -----------------------------------

WORKER_TOKEN = "test-token"  # dispatch_helpers' workers send with this one


@pytest.fixture
def meta() -> Iterator[SandboxServer]:
    """A quick sandbox for a worker: no limits in the way, answers within milliseconds."""
    config = SandboxConfig(access_token=WORKER_TOKEN, phone_number_id=SENDER, latency_ms=(1, 3), mps=1000,
                           pair_interval=0, seed=11)
    with SandboxServer(config) as server:
        yield server


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Real time passes here only for the worker's polls, requests and database round trips."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def campaign_state(db: Database, campaign_id: int) -> str:
    with db.read_session() as session:
        campaign = session.get(Campaign, campaign_id)
        assert campaign is not None
        return campaign.state


def test_a_campaign_launched_at_a_later_time_is_scheduled_and_sent_once_the_clock_passes_it(
        db: Database, meta: SandboxServer) -> None:
    clock = FakeClock(utcnow())
    campaign_id = seed(db, "later", phones(3), running=False)
    settings = Settings(api_base_url=meta.url, access_token=WORKER_TOKEN, phone_number_id=SENDER)
    at = clock.now() + timedelta(hours=2)
    assert sending.launch(db, settings, "later", at=at, now=clock.now()).state == "scheduled"

    polls = 0

    def polled(stats: DispatchStats) -> None:
        nonlocal polls
        polls += 1

    worker = dispatcher(db, meta.url, clock=clock, poll_interval=0.01, on_progress=polled)

    async def scenario() -> None:
        task = asyncio.create_task(worker.run(exit_when_idle=True))
        try:
            await until(lambda: polls >= 5)  # the worker has looked, more than once
            assert meta.figures(SENDER).requests == 0
            assert campaign_state(db, campaign_id) == "scheduled" and states(db, campaign_id) == {"queued": 3}
            clock.advance(at - clock.now() - timedelta(seconds=1))  # a second early
            seen = polls
            await until(lambda: polls >= seen + 5)
            assert meta.figures(SENDER).requests == 0 and campaign_state(db, campaign_id) == "scheduled"
            clock.advance(2)
            await asyncio.wait_for(task, 10)  # exits once the campaign is sent: it did not stay scheduled
        finally:
            worker.stop()
            await task

    asyncio.run(scenario())
    assert states(db, campaign_id) == {"sent": 3}
    assert campaign_state(db, campaign_id) == "completed"
    assert meta.figures(SENDER).accepted == 3
    with db.read_session() as session:
        campaign = session.get(Campaign, campaign_id)
        assert campaign is not None and campaign.launched_at is not None and campaign.launched_at >= at


def test_cancel_while_a_worker_sends_stops_it_and_loses_or_repeats_nothing(
        cli, db: Database, meta: SandboxServer) -> None:  # type: ignore[no-untyped-def]
    numbers = phones(150)
    campaign_id = seed(db, "spring", numbers)
    mps = 60  # about 2.5 s for everyone: the cancel comes mid-send
    worker = dispatcher(db, meta.url, mps=mps)

    def accepted() -> int:
        return meta.figures(SENDER).accepted

    async def scenario() -> tuple[int, str]:
        task = asyncio.create_task(worker.run(campaigns=["spring"], exit_when_idle=True))
        try:
            await until(lambda: accepted() >= 30)
            at_cancel = accepted()
            result = cli("cancel", "spring")
            await asyncio.wait_for(asyncio.shield(task), 10)  # the worker has nothing left to send
            return at_cancel, result.stdout
        finally:
            worker.stop()
            await task

    at_cancel, said = asyncio.run(scenario())
    assert said.startswith("cancelled campaign 'spring' (")
    entries = meta.call(meta.sandbox.ledger.snapshot, SENDER)
    reached = ["+" + e.wa_id for e in entries if e.reached_user]
    assert len(reached) == len(set(reached))  # nobody got two messages
    assert len(reached) - at_cancel <= mps  # at most about a second's sends after the cancel
    assert len(reached) < len(numbers)

    with db.read_session() as session:
        campaign = session.get(Campaign, campaign_id)
        assert campaign is not None and campaign.state == "cancelled"
    counts = states(db, campaign_id)
    assert set(counts) <= {"sent", "cancelled"}  # nothing left queued or sending in a cancelled campaign
    report = {r["phone"]: r["status"] for r in report_of(cli)}
    assert {p for p, s in report.items() if s == "sent"} == set(reached)  # every send Meta took is `sent`
    assert {p for p, s in report.items() if s == "cancelled"} == set(numbers) - set(reached)


def report_of(cli) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    result = cli("report", "spring", "-o", "-")
    assert result.exit_code == 0, result.stderr
    return list(csv.DictReader(io.StringIO(result.stdout)))
