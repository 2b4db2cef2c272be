"""Reply attribution (inbound.py): an inbound message that answers a campaign message fills
that message's `replied_at` and `reply`, and the report and the summary show it."""

from __future__ import annotations

import csv
import io
import itertools
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from campaign import export, render, summary
from campaign.db import Database
from campaign.events import parse_event
from campaign.inbound import reply_text
from campaign.models import Campaign, Contact, Message
from campaign.reconcile import replay
from campaign.states import CampaignState, MessageState
from campaign.statuses import bound_payloads, quick_reply_labels, quick_reply_payload

sys.path.insert(0, str(Path(__file__).parent))

from test_reconcile import PHONE, WA_ID, T, body, deliver, inbound, suppressions, utc  # noqa: E402

OTHER_PHONE, OTHER_WA_ID = "+4915123450000", "4915123450000"
FIXTURES = Path(__file__).parent / "fixtures" / "meta-webhooks"
OFFER = {  # a marketing template's definition as Meta lists it: two quick replies
    "name": "spring_offer", "language": "en_US", "category": "MARKETING",
    "components": [{"type": "BODY", "text": "20% off this week"},
                   {"type": "BUTTONS", "buttons": [{"type": "QUICK_REPLY", "text": "Interested"},
                                                   {"type": "QUICK_REPLY", "text": "Stop promotions"}]}],
}


def send(db: Database, campaign: str, *, wamid: str, sent_at: datetime, phone: str = PHONE,
         binding: dict[str, Any] | None = None, template: dict[str, Any] | None = None,
         state: MessageState = MessageState.DELIVERED) -> int:
    """A message of `campaign` (created on first use, with its binding) sent to `phone`; its id."""
    with db.session() as session:
        c = session.scalar(select(Campaign).where(Campaign.name == campaign))
        if c is None:
            c = Campaign(name=campaign, state=CampaignState.RUNNING, template_name="spring_offer",
                         template_language="en_US", param_columns=[], binding=binding, template_definition=template)
            session.add(c)
        person = session.scalar(select(Contact).where(Contact.phone == phone)) or Contact(phone=phone)
        session.add(person)
        session.flush()
        message = Message(campaign_id=c.id, contact_id=person.id, state=state, wamid=wamid, sent_at=sent_at)
        session.add(message)
        session.flush()
        return message.id


def answer(db: Database, message_id: int) -> tuple[datetime | None, str | None]:
    with db.read_session() as session:
        m = session.get_one(Message, message_id)
        return m.replied_at, m.reply


def tap(wa_id: str, ts: int, payload: str, label: str | None = "Interested", context: str | None = None) -> dict[str, Any]:
    """A quick-reply tap on a template button, with or without `context` (Meta sometimes leaves it out)."""
    button = {"payload": payload} if label is None else {"payload": payload, "text": label}
    extra = {"context": {"from": "15550000000", "id": context}} if context else {}
    return inbound(wa_id, ts, type="button", button=button, **extra)


def text(wa_id: str, ts: int, words: str, context: str | None = None) -> dict[str, Any]:
    extra = {"context": {"from": "15550000000", "id": context}} if context else {}
    return inbound(wa_id, ts, text={"body": words}, **extra)


# -- parsing ---------------------------------------------------------------------------------------


def test_an_inbound_item_carries_its_id_context_payload_label_and_text() -> None:
    cases = json.loads((FIXTURES / "callback_button.json").read_text())
    item = parse_event(json.dumps(cases["quick_reply"]).encode()).inbound[0]
    assert (item.message_id, item.context_id, item.payload, item.label, item.text) == (
        "wamid.xsidjw", "wamid.xyzxyz==", "callback_data", "title", None)
    assert item.words == ("callback_data", "title")
    assert parse_event(json.dumps(cases["quick_reply_without_context"]).encode()).inbound[0].context_id is None
    chosen = parse_event(json.dumps(cases["button"]).encode()).inbound[0]
    assert (chosen.type, chosen.payload, chosen.label, chosen.context_id) == (
        "interactive", "callback_data", "title", "wamid.xyzxyz")
    typed = parse_event(body(messages=[text(WA_ID, T, "hello", context="wamid.A")])).inbound[0]
    assert (typed.text, typed.payload, typed.label, typed.context_id) == ("hello", None, None, "wamid.A")


def test_a_forwarded_messages_context_has_no_id_and_is_no_reply() -> None:
    forwarded = inbound(WA_ID, T, text={"body": "look"}, context={"forwarded": True})
    assert parse_event(body(messages=[forwarded])).inbound[0].context_id is None


def test_the_reply_shown_is_the_bound_payload_the_default_payloads_label_or_the_texts_start() -> None:
    def item(raw: dict[str, Any]) -> Any:
        return parse_event(body(messages=[raw])).inbound[0]

    assert reply_text(item(tap(WA_ID, T, "INTERESTED", "Interested"))) == "INTERESTED"
    assert reply_text(item(tap(WA_ID, T, "m42.q1", "Stop promotions"))) == "Stop promotions"
    assert reply_text(item(tap(WA_ID, T, "m42.q1", None))) == "m42.q1"
    assert reply_text(item(text(WA_ID, T, "é" * 300))) == "é" * 200
    assert reply_text(item(inbound(WA_ID, T, type="image", image={"id": "1"}))) is None


def test_buttons_are_read_from_the_binding_and_the_template_definition() -> None:
    binding = {"body.1": {"column": "name"}, "button.0": {"literal": "YES"}, "card.1.button.0": {"literal": "MORE"},
               "button.1": {"column": "payload"}, "button.2": {"literal": ""}, "header": {"literal": "x"}}
    assert bound_payloads(binding) == {"YES", "MORE"}
    assert bound_payloads(None) == frozenset()
    carousel = {"components": [{"type": "CAROUSEL", "cards": [{"components": [
        {"type": "BUTTONS", "buttons": [{"type": "quick_reply", "text": "Tell me more"}, {"type": "URL", "text": "Shop"}]}]}]}]}
    assert quick_reply_labels(OFFER) == {"Interested", "Stop promotions"}
    assert quick_reply_labels(carousel) == {"Tell me more"}
    assert quick_reply_labels(None) == frozenset()


# -- attribution -----------------------------------------------------------------------------------


def test_a_reply_with_context_answers_that_message(db: Database) -> None:
    mid = send(db, "spring", wamid="wamid.A", sent_at=utc(T - 60))
    stats = deliver(db, body(messages=[text(WA_ID, T, "Do you ship to Köln? " + "x" * 300, context="wamid.A")]))
    replied_at, reply = answer(db, mid)
    assert replied_at == utc(T) and reply is not None
    assert reply.startswith("Do you ship to Köln? x") and len(reply) == 200
    assert (stats.inbound, stats.replies) == (1, 1)


def test_a_tap_without_context_on_a_default_payload_answers_the_message_it_names(db: Database) -> None:
    mid = send(db, "spring", wamid="wamid.A", sent_at=utc(T - 60))
    deliver(db, body(messages=[tap(WA_ID, T, quick_reply_payload(mid, 0), "Interested")]))
    assert answer(db, mid) == (utc(T), "Interested")


def test_a_tap_with_context_answers_the_context_whatever_its_payload(db: Database) -> None:
    mid = send(db, "spring", wamid="wamid.A", sent_at=utc(T - 60))
    deliver(db, body(messages=[inbound(WA_ID, T, type="interactive", context={"from": "1555", "id": "wamid.A"},
                                       interactive={"type": "button_reply", "button_reply": {"id": "b1", "title": "Yes"}})]))
    assert answer(db, mid) == (utc(T), "b1")


def test_a_tap_without_context_on_a_bound_payload_answers_the_latest_such_message_sent_to_the_tapper(
        db: Database) -> None:
    binding = {"button.0": {"literal": "INTERESTED"}}
    older = send(db, "march", wamid="wamid.M", sent_at=utc(T - 7200), binding=binding)
    latest = send(db, "april", wamid="wamid.A", sent_at=utc(T - 3600), binding=binding)
    unbound = send(db, "news", wamid="wamid.N", sent_at=utc(T - 60))  # later, but binds no such payload
    after_the_tap = send(db, "may", wamid="wamid.Y", sent_at=utc(T + 3600), binding=binding)
    someone_else = send(db, "april", wamid="wamid.O", sent_at=utc(T - 10), phone=OTHER_PHONE)
    deliver(db, body(messages=[tap(WA_ID, T, "INTERESTED")]))
    assert answer(db, latest) == (utc(T), "INTERESTED")
    for mid in (older, unbound, after_the_tap, someone_else):
        assert answer(db, mid) == (None, None)


def test_a_tap_on_a_payload_nobody_bound_answers_nothing(db: Database) -> None:
    mid = send(db, "april", wamid="wamid.A", sent_at=utc(T - 60), binding={"button.0": {"literal": "INTERESTED"}})
    stats = deliver(db, body(messages=[tap(WA_ID, T, "SOMETHING_ELSE")]))
    assert answer(db, mid) == (None, None) and stats.replies == 0


def test_a_default_payload_naming_someone_elses_message_is_not_attributed(db: Database) -> None:
    theirs = send(db, "spring", wamid="wamid.O", sent_at=utc(T - 60), phone=OTHER_PHONE)
    mine = send(db, "spring", wamid="wamid.A", sent_at=utc(T - 60))
    stats = deliver(db, body(messages=[tap(WA_ID, T, quick_reply_payload(theirs, 0))]))
    assert answer(db, theirs) == (None, None) and answer(db, mine) == (None, None)
    assert stats.replies == 0
    deliver(db, body(messages=[tap(OTHER_WA_ID, T + 5, quick_reply_payload(theirs, 0))]))
    assert answer(db, theirs) == (utc(T + 5), "Interested")


def test_a_default_payload_reaches_a_recipient_known_by_the_wa_id_meta_gave(db: Database) -> None:
    # Brazil: the number imported with its ninth digit; Meta's wa_id, returned by the send, without.
    mid = send(db, "spring", wamid="wamid.A", sent_at=utc(T - 60), phone="+5511912345678")
    with db.session() as session:
        session.get_one(Message, mid).wa_id = "551112345678"
    deliver(db, body(messages=[tap("551112345678", T, quick_reply_payload(mid, 1), "Later")]))
    assert answer(db, mid) == (utc(T), "Later")


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_the_first_answer_wins_in_any_order_and_twice(db: Database, order: tuple[int, ...]) -> None:
    mid = send(db, "spring", wamid="wamid.A", sent_at=utc(T - 60))
    answers = [
        body(messages=[text(WA_ID, T + 30, "and another thing", context="wamid.A")]),
        body(messages=[tap(WA_ID, T + 10, quick_reply_payload(mid, 0), "Interested")]),
        # The same second as the tap: the tie goes by content, never by arrival.
        body(messages=[text(WA_ID, T + 10, "Interested!", context="wamid.A")]),
    ]
    for i in order:
        deliver(db, answers[i])
    assert answer(db, mid) == (utc(T + 10), "Interested")
    stats = deliver(db, *(b + b" " for b in answers))  # Meta delivers them all again
    assert answer(db, mid) == (utc(T + 10), "Interested") and stats.replies == 3


def test_a_replay_attributes_the_same_replies(db: Database) -> None:
    binding = {"button.0": {"literal": "INTERESTED"}}
    first = send(db, "april", wamid="wamid.A", sent_at=utc(T - 3600), binding=binding)
    deliver(db, body(messages=[tap(WA_ID, T, "INTERESTED")]))
    # A newer campaign binding the same payload reaches the number after the tap.
    second = send(db, "may", wamid="wamid.Y", sent_at=utc(T + 600), binding=binding)
    replay(db)
    assert answer(db, first) == (utc(T), "INTERESTED") and answer(db, second) == (None, None)


def test_a_plain_inbound_text_is_not_a_reply(db: Database) -> None:
    mid = send(db, "spring", wamid="wamid.A", sent_at=utc(T - 60))
    stats = deliver(db, body(messages=[text(WA_ID, T, "hello"), text(WA_ID, T + 1, "hi again", context="wamid.UNKNOWN"),
                                       inbound(WA_ID, T + 2, type="image", image={"id": "1"})]))
    assert answer(db, mid) == (None, None)
    assert (stats.inbound, stats.replies) == (3, 0)


def test_the_stop_promotions_quick_reply_suppresses_and_is_the_reply(db: Database) -> None:
    mid = send(db, "spring", wamid="wamid.A", sent_at=utc(T - 60), template=OFFER)
    deliver(db, body(messages=[tap(WA_ID, T, quick_reply_payload(mid, 1), "Stop promotions")]))
    assert suppressions(db) == {PHONE: "opt_out"}
    assert answer(db, mid) == (utc(T), "Stop promotions")


# -- the report and the summary ----------------------------------------------------------------------


def _report(db: Database, fmt: str = "csv") -> str:
    stream = io.StringIO()
    export.write_report(db, "spring", stream, fmt=fmt)
    return stream.getvalue()


def test_the_report_shows_the_reply_and_neutralizes_formulas_in_csv_only(db: Database, tmp_path: Path) -> None:
    formula = send(db, "spring", wamid="wamid.A", sent_at=utc(T - 60))
    plain = send(db, "spring", wamid="wamid.B", sent_at=utc(T - 60), phone=OTHER_PHONE)
    send(db, "spring", wamid="wamid.C", sent_at=utc(T - 60), phone="+4915123450001")
    deliver(db, body(messages=[text(WA_ID, T, "=1+1", context="wamid.A"),
                               text(OTHER_WA_ID, T + 5, "fine, thanks", context="wamid.B")]))
    assert (answer(db, formula)[1], answer(db, plain)[1]) == ("=1+1", "fine, thanks")

    rows = {r["phone"]: r for r in csv.DictReader(io.StringIO(_report(db)))}
    assert list(next(iter(rows.values())))[:13] == [
        "phone", "wa_id", "status", "wamid", "error_code", "error_title",
        "sent_at", "delivered_at", "read_at", "failed_at", "replied_at", "reply", "user_id"]
    assert (rows[PHONE]["replied_at"], rows[PHONE]["reply"]) == ("2026-03-01T12:00:00Z", "'=1+1")
    assert (rows[OTHER_PHONE]["replied_at"], rows[OTHER_PHONE]["reply"]) == ("2026-03-01T12:00:05Z", "fine, thanks")
    assert (rows["+4915123450001"]["replied_at"], rows["+4915123450001"]["reply"]) == ("", "")

    lines = [json.loads(line) for line in _report(db, "json").splitlines()]
    assert {r["phone"]: r["reply"] for r in lines}[PHONE] == "=1+1"  # JSON keeps the raw text

    export.write_report(db, "spring", tmp_path / "r.xlsx", fmt="xlsx")
    from openpyxl import load_workbook

    sheet = load_workbook(tmp_path / "r.xlsx")["report"]
    header, *cells = list(sheet.iter_rows(values_only=True))
    assert {r[0]: r[header.index("reply")] for r in cells}[PHONE] == "=1+1"  # a text cell, not a formula


@pytest.mark.parametrize("value", ["=1+1", "+49 call me", "-5", "@SUM(A1)", "\tx", "\rx"])
def test_csv_prefixes_every_formula_start_with_a_quote(value: str) -> None:
    import pyarrow as pa

    assert export.neutralize_formulas(pa.array([value, "ok", None])).to_pylist() == ["'" + value, "ok", None]


def test_summary_counts_replies_and_the_buttons_tapped(db: Database) -> None:
    binding = {"button.0": {"literal": "INTERESTED"}}
    ids = [send(db, "spring", wamid=f"wamid.{i}", sent_at=utc(T - 60), phone=f"+49151234500{i:02d}",
                binding=binding, template=OFFER) for i in range(8)]
    with db.session() as session:  # one message was never delivered
        session.get_one(Message, ids[7]).state = MessageState.SENT
    wa = [f"49151234500{i:02d}" for i in range(8)]
    deliver(db, body(messages=[
        tap(wa[0], T, "INTERESTED"), tap(wa[1], T, "INTERESTED"), tap(wa[2], T, "INTERESTED"),
        tap(wa[3], T, quick_reply_payload(ids[3], 1), "Stop promotions"),
        text(wa[4], T, "Stop promotions", context="wamid.4"),  # typed exactly as the label: counted with it
        text(wa[5], T, "how much?", context="wamid.5"),
    ]))
    s = summary.summary(db, "spring", now=utc(T + 60))
    assert (s.reached, s.replied) == (7, 6)
    assert s.reply_rate == pytest.approx(6 / 7)
    assert s.replies_by_button == {"INTERESTED": 3, "Stop promotions": 2}
    assert list(s.as_dict()["replies_by_button"].items()) == [("INTERESTED", 3), ("Stop promotions", 2)]
    assert "Replies       85.7% (6 of 7 reached); INTERESTED 3, Stop promotions 2" in render.format_summary(s)


def test_summary_lists_at_most_ten_buttons_most_tapped_first(db: Database) -> None:
    binding = {f"button.{n}": {"literal": f"B{n:02d}"} for n in range(12)}
    taps = []
    for n in range(12):
        for k in range(n + 1):
            phone = f"+4915123{n:02d}{k:04d}"
            send(db, "spring", wamid=f"wamid.{n}.{k}", sent_at=utc(T - 60), phone=phone, binding=binding)
            taps.append(tap(phone[1:], T, f"B{n:02d}"))
    deliver(db, body(messages=taps))
    s = summary.summary(db, "spring", now=utc(T + 60))
    assert list(s.replies_by_button.items()) == [(f"B{n:02d}", n + 1) for n in range(11, 1, -1)]

