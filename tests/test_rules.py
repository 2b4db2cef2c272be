"""Meta's rules end to end: the sandbox as Meta, its webhooks through the receiver, a worker
between them, and every assertion on what reached the sandbox's ledger."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from campaign import campaigns, sending
from campaign.clock import utcnow
from campaign.config import Settings
from campaign.db import Database
from campaign.models import Campaign, Contact, Message
from campaign.sandbox.config import SandboxConfig
from campaign.sandbox.server import BackgroundServer, SandboxServer
from campaign.webhooks import create_app

SENDER, WABA, TOKEN, SECRET = "106540352242922", "102290129340398", "rules-token", "rules-secret"


@dataclass
class Meta:
    sandbox: SandboxServer
    settings: Settings
    db: Database

    def ledger(self) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.sandbox.url}/_sandbox/ledger", params={"phone_number_id": SENDER}).json()
        return answer["entries"] if isinstance(answer, dict) else answer

    def accepted_to(self) -> list[str]:
        return [e["to"] for e in self.ledger() if e["outcome"] == "accepted"]


@pytest.fixture
def meta(db: Database) -> Iterator[Meta]:
    """The sandbox posting signed webhooks to the engine's receiver, which reconciles them."""
    settings = Settings(database_url="unused", access_token=TOKEN, app_secret=SECRET, verify_token="v",
                        phone_number_id=SENDER, business_account_id=WABA, pair_interval=0,
                        marketing_retry_after=1.0,  # Meta's day, shortened: the receiver and the worker agree
                        breaker_window=20)  # the failure-rate breaker judges 20 outcomes, not 300
    with BackgroundServer(create_app(db, settings)) as receiver:
        config = SandboxConfig(access_token=TOKEN, app_secret=SECRET, phone_number_id=SENDER, waba_id=WABA,
                               latency_ms=(1, 3), pair_interval=0, seed=5, webhook_url=f"{receiver.url}/webhook",
                               sent_delay_ms=(1.0, 5.0), delivered_delay_ms=(5.0, 20.0), read_fraction=0.0)
        with SandboxServer(config) as sandbox:
            yield Meta(sandbox, settings.with_overrides(api_base_url=sandbox.url), db)


def campaign(meta: Meta, name: str, numbers: list[str], *, template: str = "spring_sale", category: str = "marketing",
             text: str | None = None, **spec: Any) -> int:
    with meta.db.session() as session:
        created = campaigns.create(session, campaigns.CampaignSpec(
            name, template, "en_US", ["name"] if template in ("spring_sale", "order_update") else [], text=text,
            category=category, **spec))
        if template == "order_update":
            created.param_columns = ["name", "order"]
            created.binding = {"body.1": {"column": "name"}, "body.2": {"column": "order"}}
        session.flush()
        from campaign.sql import insert_ignore

        session.execute(insert_ignore(session, Contact), [{"phone": p} for p in numbers])
        ids = dict(session.execute(select(Contact.phone, Contact.id).where(Contact.phone.in_(numbers))).all())
        session.execute(Message.__table__.insert(), [
            {"campaign_id": created.id, "contact_id": ids[p], "params": {"name": f"N{i}", "order": f"A-{i}"},
             "state": "queued", "attempts": 0, "queued_at": utcnow(), "business_initiated": False, "pair_hits": 0,
             "marketing_waits": 0} for i, p in enumerate(numbers)])
        campaigns.launch(session, created)
        return created.id


def work_until(meta: Meta, done: Callable[[], bool], *, timeout: float = 20.0, settings: Settings | None = None,
               **config: Any) -> None:
    """A worker in a thread until `done()` holds (webhooks keep arriving while it sends)."""
    stop = asyncio.Event()
    loop_holder: dict[str, asyncio.AbstractEventLoop] = {}

    def run() -> None:
        async def main() -> None:
            loop_holder["loop"] = asyncio.get_running_loop()
            options = {"mps": 200, "pair_interval": 0, "retry_base": 0.05, "poll_interval": 0.05,
                       "recover_every": 0.5, **config}
            dispatcher = sending.build_dispatcher(meta.db, settings or meta.settings, **options)
            await dispatcher.run(stop=stop)

        asyncio.run(main())

    thread = threading.Thread(target=run)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.05)
    finally:
        while "loop" not in loop_holder:
            time.sleep(0.01)
        loop_holder["loop"].call_soon_threadsafe(stop.set)
        thread.join(15)


def states(db: Database, campaign_id: int) -> dict[str, int]:
    with db.read_session() as session:
        return {k: v for k, v in campaigns.counts(session, [campaign_id])[campaign_id].by_state.items() if v}


def settled(db: Database, campaign_id: int) -> Callable[[], bool]:
    return lambda: not {"queued", "sending"} & states(db, campaign_id).keys()


def test_someone_who_wrote_first_gets_the_free_form_text(meta: Meta) -> None:
    wrote, silent = "+4915123000101", "+4915123000102"
    campaign_id = campaign(meta, "chat", [wrote, silent], template="order_update", category="utility",
                           text="Hi {name}, your order {order} is ready")
    meta.sandbox.open_window(wrote)
    with meta.db.session() as session:  # the engine learned it from the inbound webhook; never wrote to them
        session.execute(update(Contact).where(Contact.phone == wrote).values(last_inbound_at=utcnow() - timedelta(hours=1)))
    work_until(meta, settled(meta.db, campaign_id))
    kinds = {e["to"]: e["type"] for e in meta.ledger() if e["outcome"] == "accepted"}
    assert kinds == {wrote: "text", silent: "template"}


def test_the_marketing_limit_waits_and_the_message_is_delivered_on_the_second_try(meta: Meta) -> None:
    limited, free = "+4915123000111", "+4915123000112"
    meta.sandbox.patch_config(marketing_limited=[limited], marketing_limited_times=1)
    campaign_id = campaign(meta, "promo", [limited, free])

    def second_send_done() -> bool:
        return meta.accepted_to().count(limited) == 2 and states(meta.db, campaign_id).get("queued", 0) == 0 \
            and states(meta.db, campaign_id).get("sending", 0) == 0

    work_until(meta, second_send_done)
    assert meta.accepted_to().count(free) == 1
    with meta.db.read_session() as session:
        message = session.scalars(select(Message).join(Contact).where(Contact.phone == limited)).one()
    assert message.marketing_waits == 1 and message.state in ("sent", "delivered")


def test_marketing_never_goes_to_united_states_numbers_but_canada_and_jamaica_get_it(meta: Meta) -> None:
    us, canada, jamaica = "+12025550143", "+14165550143", "+18765550143"
    campaign_id = campaign(meta, "promo", [us, canada, jamaica])
    work_until(meta, settled(meta.db, campaign_id))
    assert sorted(meta.accepted_to()) == sorted([canada, jamaica])
    with meta.db.read_session() as session:
        skipped = session.scalars(select(Message.error_title).join(Contact).where(Contact.phone == us)).one()
    assert "United States" in (skipped or "")


def test_a_known_unreachable_number_is_skipped_by_the_next_campaign(meta: Meta) -> None:
    gone, here = "+4915123000121", "+4915123000122"
    meta.sandbox.patch_config(not_on_whatsapp=[gone])
    first = campaign(meta, "first", [gone, here], template="order_update", category="utility")
    work_until(meta, lambda: states(meta.db, first).get("failed", 0) == 1)
    second = campaign(meta, "second", [gone, here], template="order_update", category="utility")
    work_until(meta, settled(meta.db, second))
    assert meta.accepted_to().count(gone) <= 1  # only the first campaign tried it
    assert states(meta.db, second).get("skipped", 0) == 1


def test_a_token_error_on_one_worker_pauses_the_senders_campaigns_on_every_worker(meta: Meta) -> None:
    one = campaign(meta, "one", ["+4915123000131"], template="order_update", category="utility")
    two = campaign(meta, "two", ["+4915123000132"], template="order_update", category="utility",
                   phone_number_id=SENDER)  # named explicitly: the same number as WA_PHONE_NUMBER_ID
    broken = meta.settings.with_overrides(access_token="expired-token")

    def both_paused() -> bool:
        with meta.db.read_session() as session:
            return {campaigns.get(session, n).state for n in ("one", "two")} == {"paused"}

    work_until(meta, both_paused, settings=broken)
    with meta.db.read_session() as session:
        reasons = {campaigns.get(session, n).pause_code for n in ("one", "two")}
    assert reasons == {190} and meta.accepted_to() == []
    assert states(meta.db, one) == {"queued": 1} and states(meta.db, two) == {"queued": 1}
    with meta.db.session() as session:
        assert sorted(campaigns.resume_sender(session, SENDER, SENDER)) == ["one", "two"]


def test_a_template_paused_mid_campaign_stops_its_sends_within_5_s_and_nothing_else(meta: Meta) -> None:
    spring = campaign(meta, "spring", [f"+4915123{i:06d}" for i in range(1000, 1300)], mps=10)
    orders = campaign(meta, "orders", [f"+4915123{i:06d}" for i in range(2000, 2300)], template="order_update",
                      category="utility", mps=10)  # 20 MPS in all: each runs for half a minute
    control: dict[str, float] = {}

    def paused_then_watched() -> bool:
        if "at" not in control:
            if sum(e["template_name"] == "spring_sale" for e in meta.ledger() if e["outcome"] == "accepted") >= 20:
                control["at"] = time.time()
                meta.sandbox.template_status("spring_sale", "en_US", "PAUSED", reason="LOW_QUALITY")
            return False
        return time.time() > control["at"] + 6.5

    work_until(meta, paused_then_watched, timeout=14)
    at, ledger = control["at"], meta.ledger()
    late = [e for e in ledger if e["template_name"] == "spring_sale" and e["wall"] > at + 5]
    assert late == [], f"{len(late)} spring_sale requests more than 5 s after the pause, the last at +{late[-1]['wall'] - at:.1f} s"
    after = [e["wall"] - at for e in ledger if e["template_name"] == "order_update" and e["outcome"] == "accepted"
             and e["wall"] > at]
    assert len(after) >= 30 and max(after) > 5, "order_update stopped with the paused template"
    with meta.db.read_session() as session:
        paused, running = session.get(Campaign, spring), session.get(Campaign, orders)
        assert paused is not None and running is not None
        assert paused.state == "paused" and "spring_sale" in (paused.pause_reason or ""), paused.pause_reason
        assert running.state == "running" and running.pause_reason is None
    assert states(meta.db, orders).get("queued", 0) > 0  # still going when the test stopped it


def test_131050_blocks_marketing_but_not_utility(meta: Meta) -> None:
    opted, other = "+4915123000141", "+4915123000142"
    meta.sandbox.patch_config(marketing_opted_out=[opted])
    first = campaign(meta, "promo", [opted, other])
    work_until(meta, lambda: states(meta.db, first).get("failed", 0) == 1 and settled(meta.db, first)())
    with meta.db.read_session() as session:
        failure = session.execute(select(Message.state, Message.error_code).join(Contact)
                                  .where(Message.campaign_id == first, Contact.phone == opted)).one()
    assert tuple(failure) == ("failed", 131050)
    entry = next(e for e in meta.ledger() if e["to"] == opted)
    assert entry["outcome"] == "accepted" and entry["failure_code"] == 131050  # accepted, then failed by webhook

    receipt = campaign(meta, "receipt", [opted, other], template="order_update", category="utility")
    work_until(meta, settled(meta.db, receipt))
    later = campaign(meta, "promo-2", [opted, other])
    work_until(meta, settled(meta.db, later))

    sent = [(e["to"], e["template_name"]) for e in meta.ledger() if e["outcome"] == "accepted"]
    assert sent.count((opted, "order_update")) == 1  # the utility template still reaches them
    assert sent.count((opted, "spring_sale")) == 1  # only the first campaign tried marketing
    assert sent.count((other, "spring_sale")) == 2 and sent.count((other, "order_update")) == 1
    assert states(meta.db, receipt).get("skipped", 0) == 0
    assert states(meta.db, later).get("skipped", 0) == 1


def test_the_breaker_pauses_a_campaign_whose_numbers_are_mostly_unreachable(meta: Meta) -> None:
    numbers = [f"+49151230002{i:02d}" for i in range(60)]
    meta.sandbox.patch_config(not_on_whatsapp=numbers[::3] + numbers[1::3])  # two in three are gone
    campaign_id = campaign(meta, "stale", numbers, template="order_update", category="utility")

    def paused() -> bool:
        with meta.db.read_session() as session:
            return campaigns.get(session, "stale").state == "paused"

    work_until(meta, paused, mps=10)
    with meta.db.read_session() as session:
        reason = campaigns.get(session, "stale").pause_reason or ""
    assert "failure-rate breaker" in reason and "131026" in reason
    assert states(meta.db, campaign_id).get("queued", 0) > 0  # stopped before the end of the list
