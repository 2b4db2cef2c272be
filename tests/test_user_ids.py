"""Business-scoped user ids (BSUIDs): an opt-out, a window or a reply is never lost when Meta
withholds the phone number (whatsapp-usernames.md, golden fixtures §6)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from test_reconcile import PHONE, WA_ID, T, contact, deliver, seed, suppressions, utc  # noqa: E402

from campaign.db import Database  # noqa: E402
from campaign.events import parse_event  # noqa: E402

BSUID = "US.13491208655302741918"


def envelope(field: str, value: dict[str, Any]) -> bytes:
    value = {"messaging_product": "whatsapp",
             "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"}, **value}
    return json.dumps({"object": "whatsapp_business_account",
                       "entry": [{"id": "102290129340398", "changes": [{"field": field, "value": value}]}]}).encode()


def with_phone(text: str, ts: int) -> bytes:  # fixture A
    return envelope("messages", {
        "contacts": [{"profile": {"name": "Ana"}, "wa_id": WA_ID, "user_id": BSUID}],
        "messages": [{"from": WA_ID, "from_user_id": BSUID, "id": f"wamid.A{ts}", "timestamp": str(ts), "type": "text",
                      "text": {"body": text}}]})


def without_phone(text: str, ts: int) -> bytes:  # fixture B
    return envelope("messages", {
        "contacts": [{"profile": {"name": "Ana", "username": "@ana.l"}, "user_id": BSUID}],
        "messages": [{"from_user_id": BSUID, "id": f"wamid.B{ts}", "timestamp": str(ts), "type": "text",
                      "text": {"body": text}}]})


def delivered(wamid: str, ts: int, *, phone: bool = True) -> bytes:  # fixture C, and a status of a send to a phone
    item: dict[str, Any] = {"id": wamid, "status": "delivered", "timestamp": str(ts), "recipient_user_id": BSUID}
    if phone:
        item["recipient_id"] = WA_ID
    return envelope("messages", {"contacts": [{"profile": {"name": "Ana"}, "user_id": BSUID}], "statuses": [item]})


def preference_stop(ts: int) -> bytes:  # fixture D
    return envelope("user_preferences", {
        "contacts": [{"profile": {"name": "Ana"}, "user_id": BSUID}],
        "user_preferences": [{"user_id": BSUID, "detail": "User requested to stop marketing messages",
                              "category": "marketing_messages", "value": "stop", "timestamp": ts}]})


def test_bodies_without_a_phone_number_are_read_not_refused() -> None:
    (stop,) = parse_event(without_phone("STOP", T)).inbound
    assert (stop.wa_id, stop.user_id, stop.text) == (None, BSUID, "STOP")
    (status,) = parse_event(delivered("wamid.C1", T, phone=False)).statuses
    assert (status.recipient_id, status.recipient_user_id) == (None, BSUID)
    (preference,) = parse_event(preference_stop(T)).preferences
    assert (preference.wa_id, preference.user_id, preference.value) == (None, BSUID, "stop")


def test_a_message_with_both_ids_teaches_the_contact_its_user_id(db: Database) -> None:
    seed(db)
    deliver(db, with_phone("hi", T))
    assert contact(db).user_id == BSUID


def test_a_status_of_a_send_teaches_the_contact_its_user_id(db: Database) -> None:
    seed(db, wamid="wamid.S1")
    deliver(db, delivered("wamid.S1", T))
    assert contact(db).user_id == BSUID


def test_a_stop_without_a_phone_number_suppresses_the_person_it_belongs_to(db: Database) -> None:
    seed(db, wamid="wamid.S1")
    deliver(db, delivered("wamid.S1", T), without_phone("STOP", T + 5))
    assert suppressions(db) == {PHONE: "opt_out"}
    assert contact(db).last_inbound_at == utc(T + 5)  # the window opens for the person too


def test_a_marketing_stop_without_a_phone_number_suppresses_marketing(db: Database) -> None:
    seed(db, wamid="wamid.S1")
    deliver(db, delivered("wamid.S1", T), preference_stop(T + 5))
    assert suppressions(db) == {PHONE: "opt_out"}


def test_a_stop_from_a_user_id_nobody_has_yet_is_kept_and_applied_when_it_is_linked(db: Database) -> None:
    seed(db, wamid="wamid.S1")
    stats = deliver(db, without_phone("STOP", T))
    assert stats.unmatched == 1 and suppressions(db) == {}
    linked = deliver(db, delivered("wamid.S1", T + 60))  # the first status of our send names the person
    assert suppressions(db) == {PHONE: "opt_out"} and linked.inbound == 1
    again = deliver(db, delivered("wamid.S1", T + 61))
    assert again.inbound == 0  # applied once


def test_the_report_shows_the_user_id_meta_named_the_recipient_by(db: Database) -> None:
    import io

    from campaign import export

    seed(db, wamid="wamid.S1")
    deliver(db, delivered("wamid.S1", T))
    stream = io.StringIO()
    export.write_report(db, "spring", stream, fmt="json")
    (row,) = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert (row["phone"], row["user_id"]) == (PHONE, BSUID)
