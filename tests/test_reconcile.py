"""The reconciler (reconcile.py): stored webhook events applied to messages, contacts and the
opt-out list, idempotently, in any order, and rebuilt by replay."""

from __future__ import annotations

import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import delete, select, update

from campaign.config import Settings
from campaign.db import Database
from campaign.clock import utcnow
from campaign.models import Campaign, Contact, Message, PendingStatus, Suppression, WebhookEvent
from campaign.states import CampaignState, MessageState, SuppressionSource
from campaign.reconcile import reconcile_once, replay
from campaign.statuses import callback_data
from campaign.suppressions import suppress
from campaign.webhooks import create_app, signature, store_event

PHONE, WA_ID = "+4915123456789", "4915123456789"
T = 1772366400  # 2026-03-01T12:00:00Z, the statuses' clock


def utc(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


# -- seeding and bodies ------------------------------------------------------------------------


def seed(db: Database, *, wamid: str | None = "wamid.A", state: MessageState = MessageState.SENT,
         phone: str = PHONE, campaign: str = "spring", sender: str | None = None) -> int:
    """A running campaign (reused by name), a contact and one message; returns the message id."""
    with db.session() as session:
        c = session.scalar(select(Campaign).where(Campaign.name == campaign))
        if c is None:
            c = Campaign(name=campaign, state=CampaignState.RUNNING, template_name="hello_world",
                         template_language="en_US", param_columns=[], phone_number_id=sender)
            session.add(c)
        contact = session.scalar(select(Contact).where(Contact.phone == phone)) or Contact(phone=phone)
        session.add(contact)
        session.flush()
        message = Message(campaign_id=c.id, contact_id=contact.id, state=state, wamid=wamid,
                          sent_at=utc(T - 10) if state == MessageState.SENT else None)
        session.add(message)
        session.flush()
        return message.id


def status(wamid: str, word: str, ts: int, *, callback: str | None = None, code: int | None = None,
           recipient: str = WA_ID) -> dict[str, Any]:
    item: dict[str, Any] = {"id": wamid, "status": word, "timestamp": str(ts), "recipient_id": recipient,
                            "pricing": {"billable": True, "pricing_model": "PMP", "category": "marketing"}}
    if callback is not None:
        item["biz_opaque_callback_data"] = callback
    if code is not None:
        item["errors"] = [{"code": code, "title": f"title {code}", "message": f"message {code}",
                           "error_data": {"details": f"details {code}"}}]
    return item


def inbound(wa_id: str, ts: int, **message: Any) -> dict[str, Any]:
    message.setdefault("type", "text")
    return {"from": wa_id, "id": f"wamid.in{ts}{random.random()}", "timestamp": str(ts), **message}


def body(*statuses: dict[str, Any], messages: list[dict[str, Any]] = (), field: str = "messages",  # type: ignore[assignment]
         value: dict[str, Any] | None = None) -> bytes:
    v = value if value is not None else {"messaging_product": "whatsapp",
                                         "metadata": {"display_phone_number": "15550000000", "phone_number_id": "1001"}}
    if statuses:
        v["statuses"] = list(statuses)
    if messages:
        v["messages"] = list(messages)
    return json.dumps({"object": "whatsapp_business_account",
                       "entry": [{"id": "waba", "changes": [{"field": field, "value": v}]}]}).encode()


def deliver(db: Database, *bodies: bytes, now: datetime | None = None, **options: Any):  # type: ignore[no-untyped-def]
    for b in bodies:
        store_event(db, b)
    return reconcile_once(db, now=now, **options)


def message(db: Database, message_id: int) -> Message:
    with db.read_session() as session:
        return session.get_one(Message, message_id)


def contact(db: Database, phone: str = PHONE) -> Contact:
    with db.read_session() as session:
        return session.scalars(select(Contact).where(Contact.phone == phone)).one()


def suppressions(db: Database) -> dict[str, str]:
    """Suppressed number or BSUID -> the suppression's source."""
    with db.read_session() as session:
        return {phone or user_id: source for phone, user_id, source in session.execute(
            select(Suppression.phone, Suppression.user_id, Suppression.source))}


def snapshot(db: Database) -> list[tuple[Any, ...]]:
    with db.read_session() as session:
        return [tuple(r) for r in session.execute(select(
            Message.id, Message.state, Message.wamid, Message.wa_id, Message.sent_at, Message.delivered_at,
            Message.read_at, Message.failed_at, Message.error_code, Message.error_title, Message.error_details,
            Message.pricing_category).order_by(Message.id))]


# -- statuses ----------------------------------------------------------------------------------


def test_statuses_are_applied_by_wamid(db: Database) -> None:
    mid = seed(db)
    stats = deliver(db, body(status("wamid.A", "sent", T), status("wamid.A", "delivered", T + 5)),
                    body(status("wamid.A", "read", T + 60)))
    m = message(db, mid)
    assert (stats.events, stats.statuses_applied, stats.pending) == (2, 3, 0)
    assert (m.state, m.delivered_at, m.read_at, m.pricing_category) == ("read", utc(T + 5), utc(T + 60), "marketing")
    assert m.sent_at == utc(T - 10)  # the dispatcher's time stays: the webhook only confirms it


def test_a_late_sent_or_delivered_never_moves_a_message_back(db: Database) -> None:
    mid = seed(db)
    deliver(db, body(status("wamid.A", "read", T + 60)), body(status("wamid.A", "delivered", T + 5)),
            body(status("wamid.A", "sent", T)))
    m = message(db, mid)
    assert (m.state, m.delivered_at, m.read_at) == ("read", utc(T + 5), utc(T + 60))


def test_a_message_whose_worker_died_mid_request_is_resolved_by_callback_data(db: Database) -> None:
    mid = seed(db, wamid=None, state=MessageState.SENDING)
    stats = deliver(db, body(status("wamid.LATE", "delivered", T + 5, callback=callback_data(mid))))
    m = message(db, mid)
    assert stats.statuses_applied == 1 and stats.pending == 0
    assert (m.state, m.wamid, m.wa_id, m.delivered_at) == ("delivered", "wamid.LATE", WA_ID, utc(T + 5))
    # Later statuses find it by the wamid it now has.
    deliver(db, body(status("wamid.LATE", "read", T + 9)))
    assert message(db, mid).state == "read"


def test_callback_data_of_another_app_or_of_a_message_with_another_wamid_is_not_trusted(db: Database) -> None:
    mid = seed(db, wamid="wamid.MINE")
    stats = deliver(db, body(status("wamid.THEIRS", "read", T, callback=callback_data(mid)),
                             status("wamid.X", "read", T, callback="order-1234")))
    assert message(db, mid).state == "sent" and stats.pending == 2


def test_a_status_that_beats_the_sends_commit_waits_and_is_applied_when_the_wamid_appears(db: Database) -> None:
    mid = seed(db, wamid=None, state=MessageState.SENDING)
    stats = deliver(db, body(status("wamid.B", "delivered", T + 5), status("wamid.B", "sent", T)))
    assert (stats.statuses_applied, stats.pending) == (0, 2)
    with db.session() as session:  # the dispatcher's commit lands
        m = session.get_one(Message, mid)
        m.wamid, m.state, m.sent_at = "wamid.B", MessageState.SENT, utc(T)
    stats = reconcile_once(db)
    assert (stats.statuses_applied, stats.pending) == (2, 0)
    assert (message(db, mid).state, message(db, mid).delivered_at) == ("delivered", utc(T + 5))
    with db.read_session() as session:
        assert session.scalars(select(PendingStatus)).all() == []


def test_a_status_whose_message_never_appears_is_orphaned_after_the_limit(db: Database, caplog) -> None:  # type: ignore[no-untyped-def]
    received = utcnow()
    deliver(db, body(status("wamid.NOBODY", "read", T)), now=received)
    stats = reconcile_once(db, now=received + timedelta(minutes=59))
    assert (stats.pending, stats.orphaned) == (1, 0)
    stats = reconcile_once(db, now=received + timedelta(minutes=61))
    assert (stats.pending, stats.orphaned) == (0, 1)
    assert "orphaned" in caplog.text and "wamid.NOBODY" in caplog.text
    with db.read_session() as session:
        pending = session.scalars(select(PendingStatus)).one()
    assert pending.orphaned_at is not None and pending.payload["id"] == "wamid.NOBODY"  # kept, visibly
    stats = reconcile_once(db, now=received + timedelta(minutes=120), orphan_after=timedelta(minutes=5))
    assert stats.orphaned == 0  # reported once


def test_a_failed_status_records_the_error(db: Database) -> None:
    mid = seed(db)
    deliver(db, body(status("wamid.A", "failed", T + 3, code=130472)))
    m = message(db, mid)
    assert (m.state, m.failed_at, m.error_code, m.error_title, m.error_details) == (
        "failed", utc(T + 3), 130472, "title 130472", "details 130472")


def test_131026_marks_the_contact_unreachable(db: Database) -> None:
    seed(db)
    deliver(db, body(status("wamid.A", "failed", T, code=131026)))
    assert contact(db).unreachable_at == utc(T)


def test_131050_suppresses_the_number(db: Database) -> None:
    seed(db)
    deliver(db, body(status("wamid.A", "failed", T, code=131050)))
    assert suppressions(db) == {PHONE: SuppressionSource.ERROR_131050}


def test_131049_blocks_marketing_to_the_user_for_24_hours(db: Database) -> None:
    seed(db)
    deliver(db, body(status("wamid.A", "failed", T, code=131049)))
    assert contact(db).marketing_limited_until == utc(T) + timedelta(hours=24)
    assert suppressions(db) == {}


@pytest.mark.parametrize("code", [132015, 131048])
def test_an_error_that_dooms_the_campaign_pauses_it_with_the_reason(db: Database, code: int) -> None:
    seed(db)
    seed(db, wamid="wamid.OTHER", campaign="autumn", phone="+4915100000002")
    deliver(db, body(status("wamid.A", "failed", T, code=code)))
    with db.read_session() as session:
        spring, autumn = (session.scalars(select(Campaign).where(Campaign.name == n)).one() for n in ("spring", "autumn"))
    assert spring.state == CampaignState.PAUSED and spring.pause_code == code and str(code) in (spring.pause_reason or "")
    assert autumn.state == CampaignState.RUNNING


def test_an_account_wide_error_pauses_every_campaign_of_the_sender(db: Database) -> None:
    seed(db, sender="1001")
    seed(db, wamid="wamid.B", campaign="autumn", phone="+4915100000002", sender="1001")
    seed(db, wamid="wamid.C", campaign="elsewhere", phone="+4915100000003", sender="2002")
    deliver(db, body(status("wamid.A", "failed", T, code=131031)))
    with db.read_session() as session:
        states = dict(session.execute(select(Campaign.name, Campaign.state)).all())
    assert states == {"spring": "paused", "autumn": "paused", "elsewhere": "running"}


def test_old_news_does_not_pause_a_campaign_the_user_resumed(db: Database) -> None:
    seed(db)
    seed(db, wamid="wamid.B", phone="+4915100000002")
    deliver(db, body(status("wamid.A", "failed", T, code=132015)))
    with db.session() as session:
        c = session.scalars(select(Campaign)).one()
        c.state = CampaignState.RUNNING  # the user fixed the template and resumed
    deliver(db, body(status("wamid.B", "failed", T + 1, code=132015)))  # sent before the fix
    with db.read_session() as session:
        assert session.scalars(select(Campaign.state)).one() == "running"


# -- inbound -------------------------------------------------------------------------------------


def test_an_inbound_message_opens_the_window_of_a_new_or_known_contact(db: Database) -> None:
    seed(db)
    stats = deliver(db, body(messages=[inbound(WA_ID, T, text={"body": "hello"}),
                                       inbound("33612345678", T + 1, type="image", image={"id": "1"})]))
    assert stats.inbound == 2
    assert (contact(db).last_inbound_at, contact(db).wa_id) == (utc(T), WA_ID)
    assert contact(db, "+33612345678").last_inbound_at == utc(T + 1)
    deliver(db, body(messages=[inbound(WA_ID, T - 100, text={"body": "an old one, late"})]))
    assert contact(db).last_inbound_at == utc(T)


def test_an_inbound_message_reaches_a_contact_known_by_its_wa_id(db: Database) -> None:
    # Brazil: the imported number has the mobile 9, Meta's wa_id does not.
    with db.session() as session:
        session.add(Contact(phone="+5511912345678", wa_id="551112345678"))
    deliver(db, body(messages=[inbound("551112345678", T, text={"body": "oi"})]))
    with db.read_session() as session:
        assert session.scalars(select(Contact.phone)).all() == ["+5511912345678"]
    assert contact(db, "+5511912345678").last_inbound_at == utc(T)


def test_reactions_and_system_messages_do_not_open_the_window(db: Database) -> None:
    deliver(db, body(messages=[inbound(WA_ID, T, type="reaction", reaction={"emoji": "👍", "message_id": "x"}),
                               inbound(WA_ID, T, type="system", system={"body": "changed"})]))
    with db.read_session() as session:
        assert session.scalars(select(Contact)).all() == []


@pytest.mark.parametrize(("message", "scope"), [
    ({"type": "text", "text": {"body": "  stop "}}, "all"),
    ({"type": "text", "text": {"body": "Unsubscribe"}}, "all"),
    ({"type": "text", "text": {"body": "stop promotions"}}, "all"),
    # A tapped button stops marketing only: utility and authentication templates still reach them.
    ({"type": "button", "button": {"payload": "STOP", "text": "Stop promotions"}}, "marketing"),
    ({"type": "button", "button": {"payload": "promo-off", "text": "stop"}}, "marketing"),
    # Meta's marketing templates offer this quick reply; the engine's default payload names the message.
    ({"type": "button", "button": {"payload": "m1.q1", "text": "Stop promotions"}}, "marketing"),
    ({"type": "interactive", "interactive": {"type": "button_reply", "button_reply": {"id": "b1", "title": "STOP"}}},
     "marketing"),
    ({"type": "interactive", "interactive": {"type": "list_reply", "list_reply": {"id": "unsubscribe", "title": "No more"}}},
     "marketing"),
])
def test_stop_in_any_form_suppresses_the_number(db: Database, message: dict[str, Any], scope: str) -> None:
    seed(db)
    deliver(db, body(messages=[inbound(WA_ID, T, **message)]))
    assert suppressions(db) == {PHONE: SuppressionSource.OPT_OUT}
    assert scopes(db) == {PHONE: scope}
    assert contact(db).opted_out_at == utc(T) and contact(db).last_inbound_at == utc(T)


def test_a_typed_stop_after_a_marketing_opt_out_stops_everything_and_never_the_other_way(db: Database) -> None:
    seed(db)
    tapped = {"type": "button", "button": {"payload": "STOP", "text": "Stop promotions"}}
    deliver(db, body(messages=[inbound(WA_ID, T, **tapped)]))
    deliver(db, body(messages=[inbound(WA_ID, T + 1, text={"body": "STOP"})]))
    assert scopes(db) == {PHONE: "all"}
    deliver(db, body(messages=[inbound(WA_ID, T + 2, **tapped)]))
    assert scopes(db) == {PHONE: "all"}


def scopes(db: Database) -> dict[str, str]:
    with db.read_session() as session:
        return dict(session.execute(select(Suppression.phone, Suppression.scope)).all())


def test_other_words_do_not_opt_out_and_the_word_list_is_configurable(db: Database) -> None:
    deliver(db, body(messages=[inbound(WA_ID, T, text={"body": "please stop by tomorrow"}),
                               inbound(WA_ID, T + 1, text={"body": "ABMELDEN"})]))
    assert suppressions(db) == {}
    store_event(db, body(messages=[inbound(WA_ID, T + 2, text={"body": "abmelden"})]))
    reconcile_once(db, opt_out_words=["STOP", "Abmelden"])
    assert suppressions(db) == {PHONE: SuppressionSource.OPT_OUT}


def test_start_lifts_an_opt_out_but_never_a_manual_suppression(db: Database) -> None:
    with db.session() as session:
        suppress(session, ["+4915100000009"], reason="asked by phone", source=SuppressionSource.MANUAL)
    deliver(db, body(messages=[inbound(WA_ID, T, text={"body": "STOP"})]))
    assert suppressions(db) == {PHONE: "opt_out", "+4915100000009": "manual"}
    deliver(db, body(messages=[inbound(WA_ID, T + 5, text={"body": "start"}),
                               inbound("4915100000009", T + 5, text={"body": "START"})]))
    assert suppressions(db) == {"+4915100000009": "manual"}
    assert contact(db).opted_out_at is None and contact(db).opted_in_at == utc(T + 5)


@pytest.mark.parametrize("order", ["stop-first", "start-first"])
def test_stop_and_start_end_the_same_in_either_order(db: Database, order: str) -> None:
    stop = body(messages=[inbound(WA_ID, T, text={"body": "STOP"})])
    start = body(messages=[inbound(WA_ID, T + 5, text={"body": "START"})])
    deliver(db, *([stop, start] if order == "stop-first" else [start, stop]))
    assert suppressions(db) == {}
    stop_again = body(messages=[inbound(WA_ID, T + 9, text={"body": "STOP"})])
    deliver(db, stop_again)
    assert suppressions(db) == {PHONE: "opt_out"}


def test_a_131050_suppression_is_not_lifted_by_start_but_by_resumed_marketing(db: Database) -> None:
    seed(db)
    deliver(db, body(status("wamid.A", "failed", T, code=131050)),
            body(messages=[inbound(WA_ID, T + 5, text={"body": "START"})]))
    assert suppressions(db) == {PHONE: "error_131050"}
    resume = {"wa_id": WA_ID, "detail": "User requested to resume marketing messages",
              "category": "marketing_messages", "value": "resume", "timestamp": T + 9}
    deliver(db, body(field="user_preferences", value={"user_preferences": [resume]}))
    assert suppressions(db) == {}


def test_stopping_marketing_in_whatsapp_suppresses_the_number(db: Database) -> None:
    stop = {"wa_id": WA_ID, "detail": "User requested to stop marketing messages",
            "category": "marketing_messages", "value": "stop", "timestamp": T}
    deliver(db, body(field="user_preferences", value={"user_preferences": [stop]}))
    assert suppressions(db) == {PHONE: "opt_out"} and contact(db).opted_out_at == utc(T)


# -- malformed, idempotent, any order, replay -----------------------------------------------------


def test_a_malformed_body_is_marked_and_nothing_of_it_is_applied(db: Database) -> None:
    mid = seed(db)
    good_then_bad = body(status("wamid.A", "read", T), {"id": "wamid.A", "status": "read", "timestamp": "soon"},
                         messages=[inbound(WA_ID, T, text={"body": "STOP"})])
    stats = deliver(db, good_then_bad, b"{not json", b"[" * 100_000 + b"]" * 100_000)
    assert (stats.events, stats.errors, stats.statuses_applied, stats.inbound) == (3, 3, 0, 0)
    assert message(db, mid).state == "sent" and suppressions(db) == {}
    with db.read_session() as session:
        errors = session.scalars(select(WebhookEvent.error).order_by(WebhookEvent.id)).all()
    assert all(e and e.startswith("malformed") for e in errors), errors


def test_a_batch_that_fails_to_apply_is_retried_event_by_event_and_only_the_culprit_is_marked(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    from campaign import reconcile

    mid = seed(db)
    real = reconcile.apply_inbound

    def flaky(session, inbound, preferences, **words):  # type: ignore[no-untyped-def]
        if any(m.wa_id == "4915100000666" for m in inbound):
            raise RuntimeError("a bug met a strange body")
        return real(session, inbound, preferences, **words)

    monkeypatch.setattr(reconcile, "apply_inbound", flaky)
    stats = deliver(db, body(status("wamid.A", "delivered", T)),
                    body(messages=[inbound("4915100000666", T, text={"body": "hi"})]),
                    body(status("wamid.A", "read", T + 9), messages=[inbound(WA_ID, T, text={"body": "STOP"})]))
    assert (stats.events, stats.errors, stats.statuses_applied) == (3, 1, 2)
    assert message(db, mid).state == "read" and suppressions(db) == {PHONE: "opt_out"}
    with db.read_session() as session:
        errors = session.scalars(select(WebhookEvent.error).order_by(WebhookEvent.id)).all()
    assert errors[0] is None and errors[2] is None and "RuntimeError" in (errors[1] or "")


def test_the_marketing_limit_by_webhook_puts_the_message_back_to_wait_and_retires_the_old_send(db: Database) -> None:
    mid = seed(db)
    deliver(db, body(status("wamid.A", "failed", T, code=131049)), marketing_retry_after=600)
    waiting = message(db, mid)
    assert (waiting.state, waiting.wamid, waiting.marketing_waits) == ("queued", None, 1)
    assert waiting.next_attempt_at == utc(T + 600) and waiting.error_code == 131049
    assert contact(db).marketing_limited_until == utc(T + 600)
    # Late news of the old send changes nothing, even when it carries the message's id.
    deliver(db, body(status("wamid.A", "delivered", T + 5, callback=callback_data(mid)),
                     status("wamid.A", "failed", T, code=131049)), marketing_retry_after=600)
    assert message(db, mid).state == "queued" and message(db, mid).marketing_waits == 1


def test_the_marketing_limit_fails_the_message_once_its_waits_are_spent(db: Database) -> None:
    mid = seed(db)
    with db.session() as session:
        session.execute(update(Message).where(Message.id == mid).values(marketing_waits=3))
    deliver(db, body(status("wamid.A", "failed", T, code=131049)), marketing_retries=3)
    assert message(db, mid).state == "failed"


def _campaign_traffic(ids: dict[str, int]) -> list[bytes]:
    """Statuses for a few messages, failures included, and an opt-out / opt-in exchange."""
    return [
        body(status("wamid.A", "sent", T), status("wamid.B", "sent", T)),
        body(status("wamid.A", "delivered", T + 5), status("wamid.C", "failed", T + 2, code=131026)),
        body(status("wamid.B", "read", T + 30), status("wamid.A", "read", T + 50)),
        body(status("wamid.B", "delivered", T + 20), status("wamid.D", "failed", T + 1, code=131049)),
        body(status("wamid.E", "delivered", T + 4, callback=callback_data(ids["E"]))),
        body(status("wamid.E", "read", T + 8), status("wamid.D", "sent", T)),
        body(messages=[inbound("4915100000001", T + 40, text={"body": "STOP"})]),
        body(messages=[inbound("4915100000001", T + 45, text={"body": "START"})]),
    ]


def _seed_traffic(db: Database) -> dict[str, int]:
    ids = {}
    for n, name in enumerate("ABCD", start=1):
        ids[name] = seed(db, wamid=f"wamid.{name}", phone=f"+491510000000{n}")
    ids["E"] = seed(db, wamid=None, state=MessageState.SENDING, phone="+4915100000005")
    return ids


def test_the_same_events_twice_or_in_any_order_give_the_same_states(db: Database) -> None:
    ids = _seed_traffic(db)
    traffic = _campaign_traffic(ids)
    deliver(db, *traffic)
    expected = snapshot(db)
    # D failed with 131049, Meta's per-user marketing limit: it waits in the queue to go again.
    assert [s[1] for s in expected] == ["read", "read", "failed", "queued", "read"]

    rng = random.Random(7)
    for attempt in range(3):
        replay_order = traffic[:]
        rng.shuffle(replay_order)
        with db.session() as session:  # forget everything, then receive in another order, twice over
            session.execute(delete(WebhookEvent))
        replay(db)
        for i, b in enumerate(replay_order + replay_order[:3]):
            store_event(db, b + b" " * (attempt + 1) * (i + 1))  # other bytes: not deduplicated
        reconcile_once(db)
        assert snapshot(db) == expected
    assert suppressions(db) == {}


def test_replay_rebuilds_the_same_states_and_does_not_pause_again(db: Database) -> None:
    ids = _seed_traffic(db)
    mid = seed(db, wamid="wamid.F", phone="+4915100000006")
    deliver(db, *_campaign_traffic(ids), body(status("wamid.F", "failed", T + 3, code=132015)),
            body(status("wamid.NOBODY", "read", T)))
    before = snapshot(db)
    with db.session() as session:
        c = session.scalars(select(Campaign)).one()
        assert c.state == "paused"
        c.state = CampaignState.RUNNING  # the user resumed it

    stats = replay(db)
    assert snapshot(db) == before
    assert message(db, mid).state == "failed"
    assert stats.events == 10 and stats.errors == 0 and stats.pending == 1
    with db.read_session() as session:
        assert session.scalars(select(Campaign.state)).one() == "running"
        assert session.scalar(select(WebhookEvent.id).where(WebhookEvent.processed_at.is_(None))) is None


# -- a receiver restarted mid-stream --------------------------------------------------------------


class _Receiver:
    """The real app under uvicorn in a thread, on a free loopback port."""

    def __init__(self, db: Database, settings: Settings) -> None:
        config = uvicorn.Config(create_app(db, settings), host="127.0.0.1", port=0, log_level="warning",
                                access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/webhook"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        assert not self.thread.is_alive()


def test_a_receiver_restarted_mid_stream_loses_nothing_it_answered_200(db: Database) -> None:
    settings = Settings(app_secret="s3cret", verify_token="t")
    wamids = [f"wamid.R{i}" for i in range(80)]
    for i, w in enumerate(wamids):
        seed(db, wamid=w, phone=f"+49151{i:08d}")
    bodies = [body(status(w, "delivered", T + i)) for i, w in enumerate(wamids)]
    answered: list[bytes] = []
    refused = 0
    lock = threading.Lock()
    http = httpx.Client(timeout=10)

    def post(url: str, b: bytes) -> None:
        nonlocal refused
        try:
            response = http.post(url, content=b, headers={"X-Hub-Signature-256": signature("s3cret", b)})
        except httpx.HTTPError:
            with lock:
                refused += 1  # refused or cut off while stopping: Meta would retry it
            return
        if response.status_code == 200:
            with lock:
                answered.append(b)

    first = _Receiver(db, settings)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(post, first.url, b) for b in bodies[:60]]
        deadline = time.monotonic() + 10
        while len(answered) < 10 and time.monotonic() < deadline:
            time.sleep(0.001)
        first.stop()  # mid-stream: some bodies answered, some in flight, some never sent
        for f in futures:
            f.result()
    assert 10 <= len(answered) < 60 and refused > 0
    second = _Receiver(db, settings)
    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda b: post(second.url, b), bodies[60:]))
        with db.read_session() as session:
            kept = set(session.scalars(select(WebhookEvent.body)).all())
        assert set(answered) <= kept
        wanted = {json.loads(b)["entry"][0]["changes"][0]["value"]["statuses"][0]["id"] for b in kept}
        deadline = time.monotonic() + 10  # the receivers' reconcilers applied them too
        while not wanted <= {w for w, state in snapshot_rows(db) if state == "delivered"}:
            assert time.monotonic() < deadline, "the reconciler did not apply every stored body"
            time.sleep(0.05)
    finally:
        second.stop()
        http.close()


def snapshot_rows(db: Database) -> list[Any]:
    with db.read_session() as session:
        return list(session.execute(select(Message.wamid, Message.state)))
