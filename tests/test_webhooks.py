"""The webhook receiver (webhooks.py): verification, signatures, storage before 200, and
bodies of every shape Meta sends, or an attacker might, never crash it or the reconciler."""

from __future__ import annotations

import asyncio
import copy
import json
import random
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text

from campaign.config import Settings
from campaign.db import Database, create_db_engine
from campaign.exceptions import CampaignError
from campaign.models import Campaign, Contact, Message, Suppression, WebhookEvent
from campaign.states import CampaignState, MessageState
from campaign.reconcile import reconcile_once
from campaign.webhooks import MAX_BODY_BYTES, create_app, signature

SECRET = "test-app-secret"
TOKEN = "test-verify-token"
SETTINGS = Settings(app_secret=SECRET, verify_token=TOKEN)
FIXTURES = Path(__file__).parent / "fixtures" / "meta-webhooks"  # recorded by pywa (MIT, see LICENSE-pywa)
SENT_AT = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


def signed(body: bytes) -> dict[str, str]:
    return {"X-Hub-Signature-256": signature(SECRET, body), "Content-Type": "application/json"}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def client_for(db: Database) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(db, SETTINGS, reconcile=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://receiver") as client:
        yield client


async def post_all(db: Database, bodies: list[bytes], headers: list[dict[str, str]] | None = None) -> list[int]:
    app = create_app(db, SETTINGS, reconcile=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://receiver") as client:
        codes = []
        for i, body in enumerate(bodies):
            response = await client.post("/webhook", content=body, headers=signed(body) if headers is None else headers[i])
            codes.append(response.status_code)
        return codes


def stored(db: Database) -> int:
    with db.read_session() as session:
        return session.scalar(select(func.count()).select_from(WebhookEvent)) or 0


def seed_message(db: Database, wamid: str, phone: str = "+4915123456789") -> int:
    with db.session() as session:
        campaign = session.scalar(select(Campaign).where(Campaign.name == "spring"))
        if campaign is None:
            campaign = Campaign(name="spring", state=CampaignState.RUNNING, template_name="hello_world",
                                template_language="en_US", param_columns=[])
            session.add(campaign)
        contact = session.scalar(select(Contact).where(Contact.phone == phone)) or Contact(phone=phone)
        session.add(contact)
        session.flush()
        message = Message(campaign_id=campaign.id, contact_id=contact.id, state=MessageState.SENT, wamid=wamid,
                          sent_at=SENT_AT)
        session.add(message)
        session.flush()
        return message.id


def message_state(db: Database, wamid: str) -> str:
    with db.read_session() as session:
        return session.scalar(select(Message.state).where(Message.wamid == wamid))  # type: ignore[return-value]


def status_body(*statuses: dict[str, Any], messages: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    value: dict[str, Any] = {"messaging_product": "whatsapp",
                             "metadata": {"display_phone_number": "15550000000", "phone_number_id": "1001"},
                             "statuses": list(statuses)}
    if messages:
        value["messages"] = messages
    return {"object": "whatsapp_business_account",
            "entry": [{"id": "waba", "changes": [{"field": "messages", "value": value}]}]}


def a_status(wamid: str, status: str = "delivered", ts: str = "1772366500") -> dict[str, Any]:
    return {"id": wamid, "status": status, "timestamp": ts, "recipient_id": "4915123456789"}


# -- verification ----------------------------------------------------------------------------


def test_verification_echoes_the_challenge_when_the_token_matches(db: Database) -> None:
    async def go() -> httpx.Response:
        async for client in client_for(db):
            return await client.get("/webhook", params={"hub.mode": "subscribe", "hub.verify_token": TOKEN,
                                                         "hub.challenge": "1158201444"})
        raise AssertionError

    response = run(go())
    assert response.status_code == 200 and response.text == "1158201444"


@pytest.mark.parametrize("params", [
    {"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"},
    {"hub.mode": "unsubscribe", "hub.verify_token": TOKEN, "hub.challenge": "1"},
    {"hub.challenge": "1"},
    {"hub.mode": "subscribe", "hub.verify_token": "é" * 3, "hub.challenge": "1"},
])
def test_verification_is_refused_otherwise(db: Database, params: dict[str, str]) -> None:
    async def go() -> httpx.Response:
        async for client in client_for(db):
            return await client.get("/webhook", params=params)
        raise AssertionError

    response = run(go())
    assert response.status_code == 403 and "1" not in response.text


def test_the_app_refuses_to_start_without_secret_or_token(db: Database) -> None:
    with pytest.raises(CampaignError, match="WA_APP_SECRET"):
        create_app(db, Settings(verify_token=TOKEN))
    with pytest.raises(CampaignError, match="WA_VERIFY_TOKEN"):
        create_app(db, Settings(app_secret=SECRET))


# -- signatures -------------------------------------------------------------------------------


def test_missing_or_wrong_signatures_are_refused_and_nothing_is_stored(db: Database, caplog) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps(status_body(a_status("wamid.A"))).encode()
    wrong = signature("another-secret", body)
    headers = [
        {},
        {"X-Hub-Signature-256": ""},
        {"X-Hub-Signature-256": wrong},
        {"X-Hub-Signature-256": wrong.replace("sha256=", "sha1=")},
        {"X-Hub-Signature-256": signature(SECRET, body + b" ")},
        {"X-Hub-Signature-256": signature(SECRET, body)[:-2]},
        {"X-Hub-Signature-256": ("sha256=" + "é" * 64).encode("latin-1")},  # type: ignore[dict-item]
    ]
    assert run(post_all(db, [body] * len(headers), headers)) == [401] * len(headers)
    assert stored(db) == 0
    assert "missing" in caplog.text and "wrong" in caplog.text and SECRET not in caplog.text


def test_a_body_reserialized_with_other_unicode_escaping_fails_verification(db: Database) -> None:
    payload = status_body(messages=[{"from": "4915123456789", "id": "wamid.in", "timestamp": "1772366400",
                                     "type": "text", "text": {"body": "Merci, à bientôt! café é"}}])
    original = json.dumps(payload, ensure_ascii=False).encode()
    reserialized = json.dumps(payload, ensure_ascii=True).encode()
    assert json.loads(original) == json.loads(reserialized) and original != reserialized
    header = signed(original)
    assert run(post_all(db, [reserialized, original], [header, header])) == [401, 200]
    with db.read_session() as session:
        assert session.scalars(select(WebhookEvent.body)).all() == [original]


def test_signature_header_case_and_hex_case_do_not_matter(db: Database) -> None:
    body = b'{"object": "whatsapp_business_account", "entry": []}'
    header = {"x-hub-signature-256": "sha256=" + signature(SECRET, body)[7:].upper()}
    assert run(post_all(db, [body], [header])) == [200]


# -- storage ----------------------------------------------------------------------------------


def test_a_duplicate_delivery_is_answered_200_and_stored_once(db: Database) -> None:
    body = json.dumps(status_body(a_status("wamid.A"))).encode()
    assert run(post_all(db, [body, body, body])) == [200, 200, 200]
    assert stored(db) == 1


def test_a_valid_body_is_stored_byte_for_byte(db: Database) -> None:
    body = b'{"object":"whatsapp_business_account",  "entry":[ ]}\n'
    assert run(post_all(db, [body])) == [200]
    with db.read_session() as session:
        event = session.scalars(select(WebhookEvent)).one()
    assert event.body == body and event.processed_at is None and len(event.content_hash) == 64


def test_bodies_far_larger_than_metas_maximum_are_refused_with_413(db: Database) -> None:
    big = b"[" + b" " * MAX_BODY_BYTES + b"]"

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 65536):
            yield big[start:start + 65536]

    async def go() -> list[int]:
        async for client in client_for(db):
            declared = await client.post("/webhook", content=big, headers=signed(big))
            # No Content-Length at all: the cap holds while reading.
            streamed = await client.post("/webhook", content=chunks(), headers=signed(big))
            return [declared.status_code, streamed.status_code]
        raise AssertionError

    assert run(go()) == [413, 413]
    assert stored(db) == 0


def test_the_answer_is_503_when_the_body_cannot_be_stored(db: Database) -> None:
    with db.session() as session:
        session.execute(text("DROP TABLE webhook_events"))
    body = json.dumps(status_body(a_status("wamid.A"))).encode()
    assert run(post_all(db, [body])) == [503]


def test_health_reports_the_database(db: Database) -> None:
    async def go(database: Database) -> httpx.Response:
        async for client in client_for(database):
            return await client.get("/health")
        raise AssertionError

    assert run(go(db)).status_code == 200
    unreachable = Database(create_db_engine("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2"))
    try:
        assert run(go(unreachable)).status_code == 503
        body = b"{}"
        assert run(post_all(unreachable, [body])) == [503]
    finally:
        unreachable.close()


# -- Meta's recorded bodies -----------------------------------------------------------------------


@pytest.mark.parametrize("fixture", sorted(p.name for p in FIXTURES.glob("*.json")))
def test_every_recorded_meta_body_is_accepted_stored_and_reconciled(db: Database, fixture: str) -> None:
    seed_message(db, "wamid.xyzxyz")  # the wamid the recorded statuses name
    cases = json.loads((FIXTURES / fixture).read_text())
    bodies = [json.dumps(case, ensure_ascii=False).encode() for case in cases.values()]
    assert run(post_all(db, bodies)) == [200] * len(bodies), list(cases)
    assert stored(db) == len(set(bodies))
    stats = reconcile_once(db)
    assert stats.errors == 0 and stats.events == len(set(bodies))
    with db.read_session() as session:
        unprocessed = session.scalars(select(WebhookEvent.id).where(
            (WebhookEvent.processed_at.is_(None)) | (WebhookEvent.error.is_not(None)))).all()
    assert unprocessed == []


# -- hostile bodies --------------------------------------------------------------------------------

VICTIM = "wamid.victim"
"""The message poisoned bodies try to move: each holds a valid `read` for it beside a bad part."""


def _bad_parts(rng: random.Random) -> list[Any]:
    ts = "1772366500"
    parts: list[Any] = [
        5, "x", None, [], True,
        {"id": 5, "status": "read", "timestamp": ts},
        {"id": "wamid.other", "status": "read", "timestamp": "12a"},
        {"id": "wamid.other", "status": "read", "timestamp": 10**20},
        {"id": "wamid.other", "status": "read", "timestamp": True},
        {"id": "wamid.other", "status": "read", "timestamp": 1.5},
        {"id": "wamid.other", "status": "read", "timestamp": "٣٣٣"},
        {"id": "wamid.other", "status": "failed", "timestamp": ts, "errors": "e"},
        {"id": "wamid.other", "status": "failed", "timestamp": ts, "errors": [{"code": "131026"}]},
        {"id": "wamid.other", "status": "failed", "timestamp": ts, "errors": [{"code": 10**30}]},
        {"id": "wamid.other", "status": "failed", "timestamp": ts, "errors": [{"code": -1}]},
        {"id": "wamid.other", "status": "sent", "timestamp": ts, "pricing": []},
        {"id": "wamid.other", "status": "sent", "timestamp": ts, "biz_opaque_callback_data": 7},
        {"id": "", "status": "sent", "timestamp": ts},
        {"id": "w" * 129, "status": "sent", "timestamp": ts},
        {"id": "wamid.other", "status": ["read"], "timestamp": ts},
        {"id": "wamid.other", "status": "sent", "timestamp": ts, "recipient_id": 4915123456789},
        {"id": "wamid.other", "status": "failed", "timestamp": ts, "errors": [{"error_data": "x"}]},
    ]
    return rng.choice(parts)


def _poisoned(rng: random.Random) -> bytes:
    """A body whose valid half must not be applied, because its other half is malformed."""
    good = {"id": VICTIM, "status": "read", "timestamp": "1772366500"}
    stop = {"from": "4915123456789", "id": "wamid.in", "timestamp": "1772366400", "type": "text", "text": {"body": "STOP"}}
    body = status_body(good, messages=[stop])
    body["entry"][0]["id"] = str(rng.getrandbits(48))  # distinct bodies, not deduplicated
    value = body["entry"][0]["changes"][0]["value"]
    where = rng.randrange(5)
    if where == 0:
        value["statuses"].insert(rng.randrange(2), _bad_parts(rng))
    elif where == 1:
        value["messages"].append(rng.choice([{"from": 4915123456789, "timestamp": "1", "type": "text"},
                                             {"from": "4915123456789", "timestamp": "x", "type": "text"},
                                             {"from": "4915123456789", "timestamp": "1", "type": "text", "text": {"body": 5}},
                                             {"from": "4915123456789", "timestamp": "1", "type": "button", "button": []}]))
    elif where == 2:
        body["entry"].append(rng.choice([5, {"changes": "x"}, {"changes": [5]}, {"changes": [{"field": "messages", "value": []}]}]))
    elif where == 3:
        body["entry"][0]["changes"].append({"field": "user_preferences", "value": {"user_preferences": [{"wa_id": 49}]}})
    else:
        value["statuses"] = [good, {"id": "wamid.other", "status": "read", "timestamp": "1" + "0" * 5000}]
    return json.dumps(body).encode()


def _mutated(rng: random.Random, template: dict[str, Any]) -> bytes:
    """A recorded body with one value somewhere replaced by something of another type."""
    body = copy.deepcopy(template)
    paths: list[tuple[Any, Any]] = []

    def walk(node: Any) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
        for key, child in items:
            paths.append((node, key))
            walk(child)

    walk(body)
    node, key = rng.choice(paths)
    node[key] = rng.choice([None, 0, -1, 10**19, 1e308, True, "", "x" * 300, [], {}, [[[]]], {"a": {"b": []}}])
    return json.dumps(body).encode()


def _hostile(rng: random.Random, templates: list[dict[str, Any]]) -> bytes:
    kind = rng.randrange(7)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 600))
    if kind == 1:
        whole = json.dumps(rng.choice(templates)).encode()
        return whole[: rng.randrange(len(whole))]
    if kind == 2:
        depth = rng.choice([50, 2_000, 200_000])
        return json.dumps({"object": "whatsapp_business_account", "entry": []})[:-2].encode() + b"[" * depth + b"]" * depth + b"]}"
    if kind == 3:
        number = rng.choice(["1" * 5000, "1e999", "-1e999", "NaN", "Infinity", "123456789012345678901234567890"])
        return (b'{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages","value":{"statuses":'
                b'[{"id":"wamid.big","status":"sent","timestamp":' + number.encode() + b"}]}}]}]}")
    if kind == 4:
        return _poisoned(rng)
    return _mutated(rng, rng.choice(templates))


def test_500_malformed_or_hostile_bodies_never_crash_and_are_never_half_applied(db: Database) -> None:
    seed_message(db, VICTIM)
    seed_message(db, "wamid.xyzxyz", phone="+972987654321")
    templates = [case for path in sorted(FIXTURES.glob("*.json")) for case in json.loads(path.read_text()).values()]
    rng = random.Random(20260301)
    bodies = [_hostile(rng, templates) for _ in range(500)]
    poisoned = {b for b in bodies if VICTIM.encode() in b}
    assert len(poisoned) > 40

    assert set(run(post_all(db, bodies))) == {200}
    stats = reconcile_once(db)
    assert stats.events == len(set(bodies)) and stats.errors >= len(poisoned)

    with db.read_session() as session:
        events = session.execute(select(WebhookEvent.body, WebhookEvent.processed_at, WebhookEvent.error)).all()
        suppressed = session.scalars(select(Suppression.phone)).all()
    assert all(processed is not None for _, processed, _ in events)
    assert all(error for body, _, error in events if body in poisoned)
    # The valid `read` and STOP beside each malformed part were not applied.
    assert message_state(db, VICTIM) == MessageState.SENT
    assert "+4915123456789" not in suppressed
    # The receiver still answers, and the reconciler still applies a good body.
    good = json.dumps(status_body(a_status(VICTIM, "read"))).encode()
    assert run(post_all(db, [good])) == [200]
    assert reconcile_once(db).statuses_applied == 1 and message_state(db, VICTIM) == MessageState.READ
