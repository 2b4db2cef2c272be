"""Shared set-up for the dispatcher's tests: campaigns seeded in the outbox, a sandbox to send to."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import httpx

from campaign import campaigns, sending
from campaign.clock import SYSTEM, Clock
from campaign.config import Settings
from campaign.db import Database
from campaign.dispatcher import Dispatcher, DispatchStats
from campaign.models import Campaign, Contact, Message
from campaign.sql import batches, insert_ignore

SENDER = "106540352242922"
TOKEN = "test-token"


def phones(n: int, start: int = 0) -> list[str]:
    return [f"+4915123{i:06d}" for i in range(start, start + n)]


def seed(db: Database, name: str, numbers: Sequence[str], *, template: str = "order_update",
         params: Sequence[str] = ("name", "order"), text: str | None = None, running: bool = True, **spec: Any) -> int:
    """A campaign with one queued message per number, straight into the outbox."""
    with db.session() as session:
        campaign = campaigns.create(session, campaigns.CampaignSpec(name, template, "en_US", list(params), text=text, **spec))
        session.execute(insert_ignore(session, Contact), [{"phone": p} for p in numbers])
        ids: dict[str, int] = {}
        for chunk in batches(list(numbers)):  # PostgreSQL takes at most 65,535 parameters a statement
            ids.update((phone, cid) for phone, cid in session.execute(
                Contact.__table__.select().with_only_columns(Contact.phone, Contact.id).where(Contact.phone.in_(list(chunk)))))
        session.execute(Message.__table__.insert(), [
            {"campaign_id": campaign.id, "contact_id": ids[p], "params": {"name": f"N{i}", "order": f"A-{i}"},
             "state": "queued", "attempts": 0, "queued_at": campaign.created_at, "business_initiated": False, "pair_hits": 0}
            for i, p in enumerate(numbers)
        ])
        if running:
            campaigns.launch(session, campaign)
        return campaign.id


def fresh_database(url: str) -> Database:
    """An empty, migrated database at `url` (PostgreSQL: its public schema dropped first)."""
    from sqlalchemy import create_engine, text

    if url.startswith("postgresql"):
        engine = create_engine(url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        engine.dispose()
        Database.open(url, migrate=False).upgrade()
    return Database.open(url)


def dispatcher(db: Database, url: str, *, clock: Clock = SYSTEM, **config: Any) -> Dispatcher:
    """A worker built as `campaign worker` builds it, against the sandbox at `url`."""
    settings = Settings(api_base_url=url, access_token=TOKEN, phone_number_id=SENDER)
    overrides = {"mps": 80, "pair_interval": 0.0, "retry_base": 0.05, "grace": timedelta(minutes=10), **config}
    return sending.build_dispatcher(db, settings, clock=clock, **overrides)


def run(db: Database, url: str, *, names: Sequence[str] | None = None, **config: Any) -> DispatchStats:
    return asyncio.run(dispatcher(db, url, **config).run(campaigns=names, exit_when_idle=True))


def states(db: Database, campaign_id: int) -> dict[str, int]:
    with db.read_session() as session:
        return {k: v for k, v in campaigns.counts(session, [campaign_id])[campaign_id].by_state.items() if v}


def campaign_row(db: Database, campaign_id: int) -> Campaign:
    with db.read_session() as session:
        campaign = session.get(Campaign, campaign_id)
        assert campaign is not None
        return campaign


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SandboxProcess:
    """The sandbox as its own process: arrival times unaffected by the test's GIL."""

    def __init__(self, url: str) -> None:
        self.url = url

    def figures(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/_sandbox/figures", params={"phone_number_id": SENDER}).json()

    def ledger(self) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.url}/_sandbox/ledger", params={"phone_number_id": SENDER}).json()
        return answer["entries"] if isinstance(answer, dict) else answer


@contextmanager
def sandbox_process(tmp_path: Any, **config: Any) -> Iterator[SandboxProcess]:
    port = free_port()
    settings = {"access_token": TOKEN, "phone_number_id": SENDER, **config}
    path = tmp_path / f"sandbox-{port}.json"
    path.write_text(json.dumps(settings), encoding="utf-8")
    process = subprocess.Popen([sys.executable, "-m", "campaign.sandbox", "--port", str(port), "--config", str(path)])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"{url}/_sandbox/health", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the sandbox did not start") from None
                time.sleep(0.05)
        yield SandboxProcess(url)
    finally:
        process.terminate()
        process.wait(10)
