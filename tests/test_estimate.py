"""`campaign estimate` (estimate.py), the pricing of status webhooks kept on the message and
priced in the summary, and the sandbox's `pricing` object."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from campaign import campaigns, estimate
from campaign.clock import utcnow
from campaign.db import Database
from campaign.events import parse_status
from campaign.models import Contact, Message
from campaign.reconcile import reconcile_once, replay
from campaign.states import CampaignState, MessageState, SuppressionScope
from campaign.summary import summary
from campaign.suppressions import suppress
from campaign.webhooks import store_event

CARD = {
    "name": "test-card", "currency": "USD", "effective_date": "2026-02-01", "source": "hand-made for the tests",
    "markets": {
        "DE": {"marketing": 0.10, "utility": 0.02, "authentication": 0.03},
        "BR": {"marketing": 0.05, "utility": 0.01, "authentication": 0.01},
        "other": {"marketing": 0.07, "utility": 0.005, "authentication": 0.006},
    },
    "groups": {},
}
T = 1772366400  # 2026-03-01T12:00:00Z


def utc(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def write_card(tmp_path: Path) -> Path:
    path = tmp_path / "card.json"
    path.write_text(json.dumps(CARD))
    return path


def open_db(url: str) -> Database:
    database = Database(Database.open(url, migrate=False).engine)
    database.upgrade()
    return database


# Seven recipients: two German (one in an open window), one German known unreachable, one
# Brazilian, one suppressed Brazilian, a United States number and a British BSUID-only user.
RECIPIENTS = [
    {"phone": "+4915112345601"},
    {"phone": "+4915112345602", "in_window": True},
    {"phone": "+4915112345603", "unreachable": True},
    {"phone": "+5511987654321"},
    {"phone": "+5511987654322", "suppressed": True},
    {"phone": "+12125550123"},
    {"user_id": "GB.13491208655302741918"},
]


def seed_campaign(db: Database, name: str, category: str | None, *, text: str | None = None) -> int:
    now = utcnow()
    with db.session() as session:
        campaign = campaigns.create(session, campaigns.CampaignSpec(name, "offer", "en_US", [], category=category,
                                                                    text=text))
        for r in RECIPIENTS:
            who = r.get("phone") or r["user_id"]
            contact = session.scalar(select(Contact).where((Contact.phone == who) | (Contact.user_id == who)))
            if contact is None:
                contact = Contact(phone=r.get("phone"), user_id=r.get("user_id"),
                                  last_inbound_at=now - timedelta(hours=1) if r.get("in_window") else None,
                                  unreachable_at=now - timedelta(days=1) if r.get("unreachable") else None)
                session.add(contact)
                session.flush()
            session.add(Message(campaign_id=campaign.id, contact_id=contact.id, state=MessageState.QUEUED))
        session.flush()
        return campaign.id


def suppress_brazilian(db: Database, scope: SuppressionScope = SuppressionScope.ALL) -> None:
    with db.session() as session:
        suppress(session, ["+5511987654322"], reason="test", scope=scope)


# -- the estimate ------------------------------------------------------------------------------


def test_estimate_of_a_marketing_campaign_by_hand(cli, database_url: str, tmp_path: Path) -> None:
    db = open_db(database_url)
    seed_campaign(db, "spring", "marketing")
    suppress_brazilian(db)
    result = cli("estimate", "spring", "--json", "--rates", str(write_card(tmp_path)))
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    # Skipped: the suppressed Brazilian, the unreachable German, the US number (marketing).
    assert data["skipped"] == {"suppressed": 1, "unreachable": 1, "us_marketing": 1}
    assert (data["total"], data["to_send"], data["in_window"], data["free"], data["billable"]) == (7, 4, 1, 0, 4)
    # Marketing inside the window is charged: 2 x DE 0.10 + BR 0.05 + GB (other) 0.07.
    assert data["cost"]["total"] == pytest.approx(0.32)
    assert data["cost"]["by_country"] == pytest.approx({"DE": 0.20, "BR": 0.05, "GB": 0.07, "US": 0.0})
    assert data["cost"]["by_category"] == pytest.approx({"marketing": 0.32})
    assert data["cost"]["currency"] == "USD"
    assert data["by_country"]["DE"]["messages"] == 3 and data["by_country"]["DE"]["skipped"] == 1
    assert data["by_country"]["GB"]["market"] == "other"
    assert data["by_category"]["marketing"]["messages"] == 4
    assert data["rates"]["name"] == "test-card" and data["rates"]["effective_date"] == "2026-02-01"
    assert set(data) >= {"total", "in_window", "skipped", "by_country", "by_category", "cost", "rates", "category",
                         "category_known", "priced_as", "lines"}
    db.close()

    table = cli("estimate", "spring", "--rates", str(write_card(tmp_path)))
    assert table.exit_code == 0
    flat = " ".join(table.output.split())
    assert "0.32 USD" in flat and "test-card" in flat and "2026-02-01" in flat


def test_utility_inside_the_window_is_free_and_the_us_is_not_skipped() -> None:
    card = estimate.parse_card(CARD)
    groups = [estimate.Group("DE", 1), estimate.Group("DE", 1, in_window=True), estimate.Group("BR", 1),
              estimate.Group("BR", 1, suppression_scopes=("marketing",)), estimate.Group("US", 1),
              estimate.Group("GB", 1, phone_less=True)]
    figures = estimate.estimate(groups, card, category="utility").as_dict()
    # A marketing-only opt-out does not stop a utility template.
    assert figures["skipped"] == {} and figures["to_send"] == 6 and figures["free"] == 1
    assert figures["cost"]["total"] == pytest.approx(0.02 + 0.01 * 2 + 0.005 * 2)


def test_free_form_inside_the_window_is_a_free_service_message() -> None:
    card = estimate.parse_card(CARD)
    figures = estimate.estimate([estimate.Group("DE", 2, in_window=True), estimate.Group("DE", 1)], card,
                                category="marketing", has_text=True).as_dict()
    assert figures["by_category"]["service"] == {"messages": 2, "in_window": 2, "free": 2, "billable": 0, "cost": 0.0}
    assert figures["cost"]["total"] == pytest.approx(0.10)


def test_an_unknown_category_is_priced_as_marketing_and_said(cli, database_url: str, tmp_path: Path) -> None:
    db = open_db(database_url)
    seed_campaign(db, "nocat", None)
    db.close()
    data = json.loads(cli("estimate", "nocat", "--json", "--rates", str(write_card(tmp_path))).output)
    assert (data["category"], data["category_known"], data["priced_as"]) == (None, False, "marketing")
    assert data["skipped"]["us_marketing"] == 1
    table = cli("estimate", "nocat", "--rates", str(write_card(tmp_path))).output
    assert "unknown (priced as marketing" in " ".join(table.split())


def test_the_shipped_card_loads_and_names_its_source() -> None:
    card = estimate.load_card()
    assert card.currency == "USD" and card.effective_date and "facebook.com" in card.source
    assert {"US", "BR", "IN", "ID", "MX", "DE", "GB", "FR", "IT", "ES", "NL", "other"} <= set(card.markets)
    assert card.market_of("AT") == "rest_of_western_europe" and card.market_of("XX") == "other"


def test_a_bad_card_or_campaign_is_one_error_line(cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**CARD, "markets": {"DE": CARD["markets"]["DE"]}}))
    result = cli("estimate", "nope", "--rates", str(bad))
    assert result.exit_code == 1 and "other" in result.output
    assert cli("estimate", "nope").exit_code == 1


def test_country_of_numbers_and_bsuids() -> None:
    assert estimate.country_of("+12125550123") == "US"
    assert estimate.country_of("+14165550123") == "CA"
    assert estimate.country_of("+447400123456") == "GB"
    assert estimate.country_of("+447911123456") == "GG"  # Guernsey shares +44
    assert estimate.country_of(None, "BR.12345") == "BR"


# -- pricing from status webhooks --------------------------------------------------------------


def status(wamid: str, word: str, ts: int, pricing: dict[str, Any] | None) -> dict[str, Any]:
    item: dict[str, Any] = {"id": wamid, "status": word, "timestamp": str(ts)}
    if pricing is not None:
        item["pricing"] = pricing
    return item


def body(*statuses: dict[str, Any]) -> bytes:
    value = {"messaging_product": "whatsapp", "metadata": {"display_phone_number": "15550000000",
                                                          "phone_number_id": "1001"}, "statuses": list(statuses)}
    return json.dumps({"object": "whatsapp_business_account",
                       "entry": [{"id": "waba", "changes": [{"field": "messages", "value": value}]}]}).encode()


BILLED = {"billable": True, "pricing_model": "PMP", "category": "marketing", "type": "regular"}
FREE = {"billable": False, "pricing_model": "PMP", "category": "service", "type": "free_customer_service"}


def test_status_items_keep_the_pricing() -> None:
    item = parse_status(status("wamid.X", "sent", T, FREE))
    assert item is not None
    assert (item.pricing_billable, item.pricing_model, item.pricing_category, item.pricing_type) == (
        False, "PMP", "service", "free_customer_service")
    bare = parse_status(status("wamid.X", "sent", T, None))
    assert bare is not None and bare.pricing_billable is None and bare.pricing_type is None


def seed_sent(db: Database) -> None:
    """A marketing campaign with three accepted messages: DE billed, BR billed, DE free-form."""
    with db.session() as session:
        campaign = campaigns.create(session, campaigns.CampaignSpec("sent", "offer", "en_US", [], category="marketing"))
        campaign.state = CampaignState.RUNNING
        for wamid, phone, kind, initiated in (("wamid.1", "+4915112345601", "template", True),
                                               ("wamid.2", "+5511987654321", "template", True),
                                               ("wamid.3", "+4915112345602", "text", False)):
            contact = Contact(phone=phone)
            session.add(contact)
            session.flush()
            session.add(Message(campaign_id=campaign.id, contact_id=contact.id, state=MessageState.SENT, wamid=wamid,
                                sent_at=utc(T - 10), kind=kind, business_initiated=initiated))


def pricing_of(db: Database) -> list[tuple[Any, ...]]:
    with db.read_session() as session:
        return [tuple(r) for r in session.execute(select(
            Message.wamid, Message.pricing_billable, Message.pricing_model, Message.pricing_type,
            Message.pricing_category).order_by(Message.wamid))]


def test_the_reconciler_stores_pricing_and_the_summary_prices_it(db: Database, tmp_path: Path) -> None:
    seed_sent(db)
    # Out of order and duplicated: delivered before sent, a read with no pricing, a redelivery.
    bodies = [body(status("wamid.1", "delivered", T + 5, BILLED), status("wamid.2", "sent", T, BILLED)),
              body(status("wamid.1", "sent", T, BILLED), status("wamid.3", "sent", T, FREE)),
              body(status("wamid.1", "read", T + 60, None), status("wamid.3", "delivered", T + 3, FREE)),
              body(status("wamid.1", "sent", T, BILLED), status("wamid.3", "sent", T, FREE))]
    for b in bodies:
        store_event(db, b)
    reconcile_once(db)
    expected = [("wamid.1", True, "PMP", "regular", "marketing"), ("wamid.2", True, "PMP", "regular", "marketing"),
                ("wamid.3", False, "PMP", "free_customer_service", "service")]
    assert pricing_of(db) == expected
    replay(db)
    assert pricing_of(db) == expected  # idempotent: a replay ends the same

    card = estimate.parse_card(CARD)
    billing = summary(db, "sent", card=card).billing
    assert billing is not None
    assert billing.reported == 3
    assert billing.billable_by_category == {"marketing": 2}
    assert billing.free_by_type == {"free_customer_service": 1}
    assert billing.spend == pytest.approx(0.10 + 0.05)
    assert billing.spend_by_category == pytest.approx({"marketing": 0.15})
    # The plan for the same messages: two marketing templates, one free-form text (free).
    assert billing.estimated == pytest.approx(0.15)
    assert billing.currency == "USD" and "test-card" in billing.rates


def test_report_summary_shows_billing(cli, database_url: str) -> None:
    db = open_db(database_url)
    seed_sent(db)
    store_event(db, body(status("wamid.1", "sent", T, BILLED), status("wamid.3", "sent", T, FREE)))
    reconcile_once(db)
    db.close()
    data = json.loads(cli("report", "sent", "--summary", "--json").output)
    assert data["billing"]["billable_by_category"] == {"marketing": 1}
    assert data["billing"]["free_by_type"] == {"free_customer_service": 1}
    assert data["billing"]["spend"] == pytest.approx(estimate.load_card().markets["DE"]["marketing"].__float__())
    text = cli("report", "sent", "--summary").output
    assert "Billing" in text and "billable marketing 1" in text and "estimate" in text


# -- the sandbox's pricing object ----------------------------------------------------------------


def _sandbox_helpers():  # type: ignore[no-untyped-def]
    import sys

    sys.path.insert(0, str(Path(__file__).parent / "sandbox"))
    import sandbox_helpers

    return sandbox_helpers


@pytest.fixture
def sandbox_and_receiver():  # type: ignore[no-untyped-def]
    from campaign.sandbox.config import SandboxConfig
    from campaign.sandbox.server import SandboxServer

    helpers = _sandbox_helpers()
    receiver = helpers.Receiver()
    with receiver.server:
        server = SandboxServer(SandboxConfig(**{**helpers.FAST, "webhook_url": receiver.url, "pair_interval": 0.0}))
        server.start()
        try:
            yield server, receiver, helpers
        finally:
            server.stop()


def test_the_sandbox_prices_per_message_as_meta_does(sandbox_and_receiver) -> None:  # type: ignore[no-untyped-def]
    server, receiver, h = sandbox_and_receiver
    inside, outside = "+4915112345678", "+4915112345679"
    with h.client_for(server) as c:
        assert c.post("/_sandbox/window", json={"to": inside, "age_seconds": 60}).json()["open"]
    sent = {
        "utility_outside": h.send(server, h.template_message(outside)),
        "marketing_outside": h.send(server, h.template_message(outside, name="spring_sale", params=["Ana"])),
        "utility_inside": h.send(server, h.template_message(inside)),
        "marketing_inside": h.send(server, h.template_message(inside, name="spring_sale", params=["Ana"])),
        "text_inside": h.send(server, h.text_message(inside)),
    }
    receiver.wait_for(lambda r: all(any(s["id"] == w and s["status"] == "sent" for s in r.statuses())
                                    for w in sent.values()))
    pricing = {case: next(s["pricing"] for s in receiver.statuses() if s["id"] == w and s["status"] == "sent")
               for case, w in sent.items()}
    regular = {"billable": True, "pricing_model": "PMP", "type": "regular"}
    free = {"billable": False, "pricing_model": "PMP", "type": "free_customer_service"}
    assert pricing == {
        "utility_outside": {**regular, "category": "utility"},
        "marketing_outside": {**regular, "category": "marketing"},
        "utility_inside": {**free, "category": "utility"},
        "marketing_inside": {**regular, "category": "marketing"},
        "text_inside": {**free, "category": "service"},
    }
    # What the engine keeps of it.
    items = [parse_status(s) for s in receiver.statuses() if s["id"] == sent["utility_inside"]]
    assert {(i.pricing_billable, i.pricing_type, i.pricing_category) for i in items if i} == {
        (False, "free_customer_service", "utility")}
