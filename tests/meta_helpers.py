"""Meta as the tests meet it end to end: the sandbox posting signed webhooks to the engine's
receiver (which reconciles them), a worker in a thread between them, and the sandbox's ledger
to assert on. Shared by the rules, identity and fault tests."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from campaign import campaigns, sending
from campaign.clock import utcnow
from campaign.config import Settings
from campaign.db import Database
from campaign.models import Contact, Message
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

        if not numbers:  # the test adds its own recipients
            campaigns.launch(session, created)
            return created.id
        session.execute(insert_ignore(session, Contact), [{"phone": p} for p in numbers])
        ids = dict(session.execute(select(Contact.phone, Contact.id).where(Contact.phone.in_(numbers))).all())
        session.execute(Message.__table__.insert(), [
            {"campaign_id": created.id, "contact_id": ids[p], "params": {"name": f"N{i}", "order": f"A-{i}"},
             "state": "queued", "attempts": 0, "queued_at": utcnow(), "business_initiated": False, "pair_hits": 0,
             "marketing_waits": 0} for i, p in enumerate(numbers)])
        campaigns.launch(session, created)
        return created.id


def work_until(meta: Meta, done: Callable[[], bool], *, timeout: float = 20.0, settings: Settings | None = None,
               workers: int = 1, **config: Any) -> None:
    """`workers` workers, each in its own thread and event loop, until `done()` holds
    (webhooks keep arriving while they send)."""
    loops: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
    ready = threading.Barrier(workers + 1)

    def run() -> None:
        async def main() -> None:
            stop = asyncio.Event()
            loops.append((asyncio.get_running_loop(), stop))
            options = {"mps": 200, "pair_interval": 0, "retry_base": 0.05, "poll_interval": 0.05,
                       "recover_every": 0.5, **config}
            dispatcher = sending.build_dispatcher(meta.db, settings or meta.settings, **options)
            ready.wait(timeout=30)
            await dispatcher.run(stop=stop)

        asyncio.run(main())

    threads = [threading.Thread(target=run) for _ in range(workers)]
    for thread in threads:
        thread.start()
    ready.wait(timeout=30)
    try:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.05)
    finally:
        for loop, stop in loops:
            loop.call_soon_threadsafe(stop.set)
        for thread in threads:
            thread.join(15)


def states(db: Database, campaign_id: int) -> dict[str, int]:
    with db.read_session() as session:
        return {k: v for k, v in campaigns.counts(session, [campaign_id])[campaign_id].by_state.items() if v}


def settled(db: Database, campaign_id: int) -> Callable[[], bool]:
    return lambda: not {"queued", "sending"} & states(db, campaign_id).keys()
