"""Business-scoped user ids (BSUIDs): an opt-out, a window or a reply is never lost when Meta
withholds the phone number (whatsapp-usernames.md, golden fixtures §6)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import httpx  # noqa: E402
import pytest  # noqa: E402
from meta_helpers import Meta, campaign, meta, settled, states, work_until  # noqa: E402,F401
from sqlalchemy import func, select, update  # noqa: E402
from test_reconcile import PHONE, WA_ID, T, contact, deliver, message, seed, suppressions, utc  # noqa: E402

from campaign.db import Database  # noqa: E402
from campaign.events import parse_event  # noqa: E402
from campaign.models import Campaign, Contact, Message  # noqa: E402
from campaign.sandbox.recipients import user_id_of  # noqa: E402
from campaign.states import MessageState  # noqa: E402
from campaign.suppressions import suppress  # noqa: E402

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
    assert suppressions(db) == {PHONE: "opt_out", BSUID: "opt_out"}
    assert contact(db).last_inbound_at == utc(T + 5)  # the window opens for the person too


def test_a_marketing_stop_without_a_phone_number_suppresses_marketing(db: Database) -> None:
    seed(db, wamid="wamid.S1")
    deliver(db, delivered("wamid.S1", T), preference_stop(T + 5))
    assert suppressions(db) == {PHONE: "opt_out", BSUID: "opt_out"}


def test_a_stop_from_a_user_id_nobody_has_yet_is_kept_and_applied_when_it_is_linked(db: Database) -> None:
    seed(db, wamid="wamid.S1")
    stats = deliver(db, without_phone("STOP", T))
    assert stats.unmatched == 1 and suppressions(db) == {}
    linked = deliver(db, delivered("wamid.S1", T + 60))  # the first status of our send names the person
    assert suppressions(db) == {PHONE: "opt_out", BSUID: "opt_out"} and linked.inbound == 1
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


# -- the pure rules ------------------------------------------------------------------------------


def test_a_bsuid_is_told_from_a_number_by_its_shape() -> None:
    from campaign import identity

    assert identity.is_user_id(BSUID) and identity.is_user_id("US.ENT.1181")
    assert not identity.is_user_id("+4915123456789") and not identity.is_user_id("us.1234") and not identity.is_user_id("US.")
    assert identity.user_id_problem("US 1234") is not None and identity.user_id_problem(BSUID) is None
    assert (identity.address_field("+4915123456789"), identity.address_field(BSUID)) == ("to", "recipient")


def test_a_bsuid_recipient_is_sent_through_the_recipient_field() -> None:
    from campaign import payloads

    spec = payloads.MessageSpec(template_name="hello_world", template_language="en_US")
    to_number = payloads.template_payload(spec, PHONE, {}, "m1")
    to_person = payloads.template_payload(spec, BSUID, {}, "m1")
    assert to_number["to"] == PHONE and "recipient" not in to_number
    assert to_person["recipient"] == BSUID and "to" not in to_person
    assert to_person["recipient_type"] == "individual"  # Meta refuses "business_scoped_user_id" (code 100)


def test_authentication_templates_are_never_sent_to_a_phone_less_recipient() -> None:
    from campaign import policy

    person = policy.Recipient(suppressed=False, last_inbound_at=None, phone_less=True)
    refused = policy.choose_message(person, has_template=True, has_text=False, marketing=False, now=utc(T),
                                    authentication=True)
    assert refused.choice is policy.Choice.SKIP and "131062" in refused.reason
    utility = policy.choose_message(person, has_template=True, has_text=False, marketing=False, now=utc(T))
    assert utility.choice is policy.Choice.TEMPLATE


# -- importing BSUID recipients --------------------------------------------------------------------


def _import(db: Database, tmp_path: Path, body: str, name: str = "spring", category: str | None = None,
            **options: Any) -> Any:
    from campaign import campaigns
    from campaign.importer import ImportOptions, import_file

    with db.session() as session:
        if session.scalar(select(Campaign.id).where(Campaign.name == name)) is None:
            campaigns.create(session, campaigns.CampaignSpec(name, "hello_world", "en_US", category=category))
    path = tmp_path / f"{name}.csv"
    path.write_text(body, encoding="utf-8")
    return import_file(db, name, path, ImportOptions(rejects_path=tmp_path / f"{name}-rejects.csv", **options))


def _recipients(db: Database, name: str = "spring") -> list[tuple[str | None, str | None]]:
    with db.read_session() as session:
        return sorted(session.execute(
            select(Contact.phone, Contact.user_id).join(Message, Message.contact_id == Contact.id)
            .join(Campaign, Campaign.id == Message.campaign_id).where(Campaign.name == name)).all(),
            key=str)


def _rejects(tmp_path: Path, name: str = "spring") -> list[tuple[str, str, str]]:
    with (tmp_path / f"{name}-rejects.csv").open(encoding="utf-8") as f:
        return [(r["line"], r["reason"], r["detail"]) for r in csv.DictReader(f)]


def test_a_row_with_a_bsuid_and_no_number_is_a_bsuid_recipient(db: Database, tmp_path: Path) -> None:
    result = _import(db, tmp_path, f"name,phone,user_id\nAna,,{BSUID}\nBo,+4915123456780,\nCy,,not-an-id\nDi,,\n")
    assert (result.imported, result.invalid) == (2, 2)
    assert _recipients(db) == [("+4915123456780", None), (None, BSUID)]
    lines = {line: (reason, detail) for line, reason, detail in _rejects(tmp_path)}
    assert lines["4"][0] == "invalid_number" and "not a business-scoped user id" in lines["4"][1]
    assert lines["5"] == ("invalid_number", "empty")


def test_a_file_of_bsuids_only_needs_no_phone_column(db: Database, tmp_path: Path) -> None:
    result = _import(db, tmp_path, f"ID\n{BSUID}\nGB.77\n", user_id_column="ID")
    assert result.imported == 2 and _recipients(db) == [(None, "GB.77"), (None, BSUID)]


def test_a_number_and_the_same_persons_bsuid_are_one_recipient(db: Database, tmp_path: Path) -> None:
    # Meta named the person by both in a status of an earlier campaign's send.
    seed(db, wamid="wamid.S1", campaign="earlier")
    deliver(db, delivered("wamid.S1", T))
    result = _import(db, tmp_path, f"phone,user_id\n{PHONE},\n,{BSUID}\n")
    assert (result.imported, result.duplicate) == (1, 1)
    assert _rejects(tmp_path) == [("3", "duplicate", f"{BSUID} is also on line 2")]
    again = _import(db, tmp_path, f"user_id\n{BSUID}\n")
    assert (again.imported, again.duplicate) == (0, 1)


def test_a_row_with_both_ids_links_them_for_the_next_rows(db: Database, tmp_path: Path) -> None:
    result = _import(db, tmp_path, f"phone,user_id\n{PHONE},{BSUID}\n,{BSUID}\n")
    assert (result.imported, result.duplicate) == (1, 1)
    assert _recipients(db) == [(PHONE, BSUID)]


def test_a_bsuid_only_contact_takes_the_number_a_later_file_gives_it(db: Database, tmp_path: Path) -> None:
    _import(db, tmp_path, f"user_id\n{BSUID}\n", name="first")
    _import(db, tmp_path, f"phone,user_id\n{PHONE},{BSUID}\n", name="second")
    assert _recipients(db, "first") == _recipients(db, "second") == [(PHONE, BSUID)]  # one person


def test_a_suppressed_bsuid_is_not_imported(db: Database, tmp_path: Path) -> None:
    with db.session() as session:
        suppress(session, [BSUID], reason="asked")
    result = _import(db, tmp_path, f"phone,user_id\n,{BSUID}\n")
    assert (result.imported, result.suppressed) == (0, 1)


def test_an_authentication_campaign_refuses_bsuid_only_rows(db: Database, tmp_path: Path) -> None:
    result = _import(db, tmp_path, f"phone,user_id\n,{BSUID}\n{PHONE},\n", category="authentication")
    assert (result.imported, result.invalid) == (1, 1)
    assert "131062" in _rejects(tmp_path)[0][2]


def test_suppress_takes_bsuids_too(cli: Any) -> None:
    assert cli("suppress", "+49 1512 3456789", BSUID).exit_code == 0
    assert cli("unsuppress", BSUID).output.strip() == "unsuppressed 1 number"


# -- a number or BSUID that changes -----------------------------------------------------------------

NEW_WA_ID, NEW_BSUID = "4915199999999", "US.99"


def changed_number(ts: int) -> bytes:
    return envelope("messages", {"messages": [{
        "from": WA_ID, "from_user_id": NEW_BSUID, "id": f"wamid.sys{ts}", "timestamp": str(ts), "type": "system",
        "system": {"body": f"User A changed from {WA_ID} to {NEW_WA_ID}", "wa_id": NEW_WA_ID,
                   "type": "user_changed_number", "user_id": NEW_BSUID, "previous_user_id": BSUID}}]})


def test_a_changed_number_rekeys_the_contact_and_its_opt_out_survives(db: Database) -> None:
    seed(db, wamid="wamid.S1")
    deliver(db, delivered("wamid.S1", T), without_phone("STOP", T + 5))
    deliver(db, changed_number(T + 100))
    person = contact(db, "+" + NEW_WA_ID)
    assert person.user_id == NEW_BSUID
    # The opt-out holds for the new ids as for the old (the old number may be someone else's now).
    assert suppressions(db) == {PHONE: "opt_out", BSUID: "opt_out", "+" + NEW_WA_ID: "opt_out", NEW_BSUID: "opt_out"}
    # A late webhook with an old id still finds the person instead of making a new contact.
    deliver(db, without_phone("hello again", T + 200))
    with db.read_session() as session:
        assert session.scalar(select(func.count()).select_from(Contact)) == 1
    assert contact(db, "+" + NEW_WA_ID).last_inbound_at == utc(T + 200)


def test_the_recorded_number_change_moves_the_contact(db: Database) -> None:
    fixture = json.loads((Path(__file__).parent / "fixtures/meta-webhooks/system.json").read_text())
    seed(db, phone="+972987654321", wamid=None, state=MessageState.QUEUED)
    deliver(db, json.dumps(fixture["phone_number_change"]).encode())
    assert contact(db, "+972912345678").id is not None
    deliver(db, json.dumps(fixture["identity_change"]).encode())  # a new device: kept, not applied


# -- end to end: the sandbox as Meta, its webhooks through the receiver ----------------------------


def _accepted(meta: Meta, campaign_id: int | None = None) -> list[dict[str, Any]]:
    entries = [e for e in meta.ledger() if e["outcome"] == "accepted"]
    if campaign_id is None:
        return entries
    with meta.db.read_session() as session:
        ours = {f"m{i}" for i in session.scalars(select(Message.id).where(Message.campaign_id == campaign_id))}
    return [e for e in entries if e.get("callback_data") in ours]


def _contact_of(meta: Meta, phone: str) -> Contact:
    with meta.db.read_session() as session:
        return session.scalars(select(Contact).where(Contact.phone == phone)).one()


def _inbound(meta: Meta, **data: Any) -> None:
    answer = httpx.post(f"{meta.sandbox.url}/_sandbox/inbound", json=data, timeout=10)
    assert answer.status_code == 200, answer.text


def _until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_stop_from_a_username_user_keeps_them_out_of_the_next_campaign(meta: Meta) -> None:
    stopper, other = "+4915123000201", "+4915123000202"
    meta.sandbox.patch_config(username_numbers=[stopper])  # Meta withholds their number
    first = campaign(meta, "first", [stopper, other], template="order_update", category="utility")
    work_until(meta, lambda: _contact_of(meta, stopper).user_id is not None)  # learned from a status
    assert states(meta.db, first).keys() <= {"sent", "delivered", "read"}
    _inbound(meta, user_id=user_id_of(stopper[1:]), text="STOP")  # no phone number in the webhook
    _until(lambda: _contact_of(meta, stopper).opted_out_at is not None)
    second = campaign(meta, "second", [stopper, other], template="order_update", category="utility")
    work_until(meta, settled(meta.db, second))
    assert [e["wa_id"] for e in _accepted(meta, second)] == [other[1:]]  # the sandbox's ledger: no send to them
    assert states(meta.db, second).get("skipped") == 1


def test_a_quick_reply_tap_without_a_phone_number_is_attributed(meta: Meta) -> None:
    tapper = "+4915123000211"
    meta.sandbox.patch_config(username_numbers=[tapper])
    sale = campaign(meta, "sale", [tapper], template="spring_sale", category="marketing",
                    binds=["button.0==Interested"])
    work_until(meta, lambda: _contact_of(meta, tapper).user_id is not None)
    assert len(_accepted(meta, sale)) == 1
    # No context either (Meta sometimes leaves it out of a tap): the person is found by BSUID alone.
    _inbound(meta, user_id=user_id_of(tapper[1:]), button={"payload": "Interested", "text": "Interested"})
    with meta.db.read_session() as session:
        message_id = session.scalar(select(Message.id).where(Message.campaign_id == sale))

    def replied() -> bool:
        with meta.db.read_session() as session:
            return session.get_one(Message, message_id).reply == "Interested"
    _until(replied)


def test_a_bsuid_recipient_is_sent_once_through_recipient_and_reported(meta: Meta, tmp_path: Path) -> None:
    from campaign import campaigns, export
    from campaign.importer import ImportOptions, import_file

    person = "+4915123000221"
    bsuid = user_id_of(person[1:])
    meta.sandbox.patch_config(username_numbers=[person])
    with meta.db.session() as session:
        campaigns.create(session, campaigns.CampaignSpec("by-id", "hello_world", "en_US", category="utility"))
    path = tmp_path / "people.csv"
    path.write_text(f"phone,user_id\n,{bsuid}\n+4915123000222,\n", encoding="utf-8")
    assert import_file(meta.db, "by-id", path, ImportOptions(rejects_path=tmp_path / "r.csv")).imported == 2
    with meta.db.session() as session:
        campaigns.launch(session, campaigns.get(session, "by-id"))
        campaign_id = campaigns.get(session, "by-id").id

    def delivered() -> bool:
        return states(meta.db, campaign_id).get("delivered", 0) == 2
    work_until(meta, delivered)
    to_person = [e for e in _accepted(meta, campaign_id) if e["wa_id"] == person[1:]]
    assert [(e["addressed_by"], e["user_id"]) for e in to_person] == [("recipient", bsuid)]
    stream = io.StringIO()
    export.write_report(meta.db, "by-id", stream, fmt="json")
    rows = {r["user_id"] or r["phone"]: r for r in map(json.loads, stream.getvalue().splitlines())}
    assert (rows[bsuid]["phone"], rows[bsuid]["status"]) in {(None, "delivered"), ("", "delivered")}


def test_an_authentication_template_is_never_sent_to_a_bsuid_recipient(meta: Meta) -> None:
    bsuid = user_id_of("4915123000231")
    with meta.db.session() as session:
        contact = Contact(user_id=bsuid)
        session.add(contact)
    login = campaign(meta, "login", [], template="login_code", category="authentication")
    with meta.db.session() as session:
        contact_id = session.scalar(select(Contact.id).where(Contact.user_id == bsuid))
        session.add(Message(campaign_id=login, contact_id=contact_id, params={"name": "x"}))
    work_until(meta, settled(meta.db, login))
    assert _accepted(meta, login) == [] and not [e for e in meta.ledger() if e.get("user_id") == bsuid]
    with meta.db.read_session() as session:
        (skipped,) = session.scalars(select(Message).where(Message.campaign_id == login))
    assert skipped.state == "skipped" and "131062" in (skipped.error_title or "")


# -- the golden payloads through the receiver --------------------------------------------------------

GOLDEN = [
    ("A: a message with phone and BSUID", with_phone("hi", T + 1), "window"),
    ("B: a STOP with the BSUID only", without_phone("STOP", T + 2), "stop"),
    ("C: delivered to a BSUID, no phone", delivered("wamid.S1", T + 3, phone=False), "delivered"),
    ("D: a marketing stop with the BSUID only", preference_stop(T + 4), "marketing stop"),
]


@pytest.mark.parametrize("body,effect", [(b, e) for _, b, e in GOLDEN], ids=[name for name, _, _ in GOLDEN])
def test_the_golden_payloads_are_accepted_signed_and_applied(db: Database, body: bytes, effect: str) -> None:
    from test_webhooks import post_all, signed

    from campaign.reconcile import reconcile_once

    seed(db, wamid="wamid.S1")
    with db.session() as session:  # an earlier status named the recipient by both ids
        session.execute(update(Contact).values(user_id=BSUID))
    forged = {**signed(body), "X-Hub-Signature-256": "sha256=" + "0" * 64}
    assert asyncio.run(post_all(db, [body, body], [signed(body), forged])) == [200, 401]
    reconcile_once(db)
    person = contact(db)
    if effect == "window":
        assert person.last_inbound_at == utc(T + 1)
    elif effect == "stop":
        assert suppressions(db) == {PHONE: "opt_out", BSUID: "opt_out"} and person.last_inbound_at == utc(T + 2)
    elif effect == "delivered":
        assert message(db, 1).state == "delivered"
    else:
        assert suppressions(db) == {PHONE: "opt_out", BSUID: "opt_out"}


def test_import_and_status_from_the_command_line(cli: Any, tmp_path: Path) -> None:
    assert cli("create", "by-cli", "--template", "hello_world", "--language", "en_US").exit_code == 0
    (tmp_path / "ids.csv").write_text(f"ID\n{BSUID}\nnot-an-id\n", encoding="utf-8")
    result = cli("import", "by-cli", str(tmp_path / "ids.csv"), "--user-id-column", "ID", "--json")
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output.strip().splitlines()[-1])
    assert {k: figures[k] for k in ("imported", "invalid")} == {"imported": 1, "invalid": 1}
    status = json.loads(cli("status", "by-cli", "--json").output.strip().splitlines()[-1])
    assert status["total"] == 1 and "unmatched_inbound" not in status
