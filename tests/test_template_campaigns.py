"""Real templates end to end: every kind of template part bound to the recipients' columns,
checked before launch, and each recipient's payload as it reached the sandbox ("Meta")."""

from __future__ import annotations

import csv as csv_module
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from campaign import campaigns, sending
from campaign.clock import utcnow
from campaign.config import Settings
from campaign.db import Database
from campaign.exceptions import CampaignError
from campaign.importer import ImportOptions, import_file
from campaign.sandbox.config import SandboxConfig
from campaign.sandbox.server import SandboxServer
from campaign.sandbox.templates import Template, default_templates

SENDER, WABA, TOKEN = "106540352242922", "102290129340398", "templates-token"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxServer]:
    # 120 more templates than the defaults: the one after them is on a later page.
    fillers = [Template(f"filler_{i:03d}", "en_US", components=[{"type": "BODY", "text": "Hello"}]) for i in range(120)]
    last = Template("zz_after_the_fillers", "en_US", components=[{"type": "BODY", "text": "Hi {{1}}"}])
    config = SandboxConfig(access_token=TOKEN, phone_number_id=SENDER, waba_id=WABA, latency_ms=(1, 3), seed=11,
                           pair_interval=0, templates=[*default_templates(), *fillers, last])
    with SandboxServer(config) as server:
        yield server


@pytest.fixture
def settings(sandbox: SandboxServer, db: Database) -> Iterator[Settings]:
    sandbox.reset()
    yield Settings(database_url="unused", api_base_url=sandbox.url, access_token=TOKEN, phone_number_id=SENDER,
                   business_account_id=WABA, pair_interval=0)


def create(db: Database, name: str, template: str, *binds: str, **spec: Any) -> None:
    with db.session() as session:
        campaigns.create(session, campaigns.CampaignSpec(name, template, spec.pop("language", "en_US"),
                                                         binds=list(binds), **spec))


def recipients(tmp_path: Path, header: str, *rows: str) -> Path:
    path = tmp_path / "r.csv"
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def send(db: Database, settings: Settings, name: str, csv: Path) -> None:
    result = import_file(db, name, csv, ImportOptions(rejects_path=csv.with_suffix(".rejects.csv")))
    assert result.rejected == 0, result
    sending.launch(db, settings, name)
    run = sending.run_worker(db, settings, campaigns_=[name], exit_when_idle=True, mps=200, pair_interval=0)
    assert run.stats.failed == 0 and run.stats.sent == result.imported


def arrived(sandbox: SandboxServer) -> dict[str, list[dict[str, Any]]]:
    """Each recipient's template components, as the sandbox's ledger recorded them."""
    answer = httpx.get(f"{sandbox.url}/_sandbox/ledger", params={"phone_number_id": SENDER}).json()
    entries = answer["entries"] if isinstance(answer, dict) else answer
    return {e["to"]: e["components"] for e in entries if e["outcome"] == "accepted"}


def message_ids(db: Database, name: str) -> dict[str, int]:
    from campaign.models import Contact, Message

    with db.read_session() as session:
        campaign = campaigns.get(session, name)
        return dict(session.execute(select(Contact.phone, Message.id).join(Message, Message.contact_id == Contact.id)
                                    .where(Message.campaign_id == campaign.id)).all())


def text(value: str, name: str | None = None) -> dict[str, Any]:
    return {"type": "text", "text": value} | ({"parameter_name": name} if name else {})


def test_an_image_header_url_button_and_quick_replies_carry_each_rows_values(db: Database, settings: Settings,
                                                                          sandbox: SandboxServer, tmp_path: Path) -> None:
    create(db, "autumn", "promo_image", "header=image", "body.1=first_name", "button.0=order", "button.2==stop_promos")
    send(db, settings, "autumn", recipients(tmp_path, "phone,first_name,order,image",
                                            "+4915123000001,Zoë,A-1,https://cdn.example.com/1.jpg",
                                            "+4915123000002,José,B-22,https://cdn.example.com/2.jpg"))
    ids = message_ids(db, "autumn")
    got = arrived(sandbox)
    for phone, name, order, image in (("+4915123000001", "Zoë", "A-1", "1"), ("+4915123000002", "José", "B-22", "2")):
        assert got[phone] == [
            {"type": "header", "parameters": [{"type": "image", "image": {"link": f"https://cdn.example.com/{image}.jpg"}}]},
            {"type": "body", "parameters": [text(name)]},
            {"type": "button", "sub_type": "url", "index": "0", "parameters": [text(order)]},
            {"type": "button", "sub_type": "quick_reply", "index": "1",
             "parameters": [{"type": "payload", "payload": f"m{ids[phone]}.q1"}]},
            {"type": "button", "sub_type": "quick_reply", "index": "2", "parameters": [{"type": "payload", "payload": "stop_promos"}]},
        ]


def test_a_coupon_and_a_limited_time_offer(db: Database, settings: Settings, sandbox: SandboxServer, tmp_path: Path) -> None:
    create(db, "coupons", "coupon_offer", "body.1=first_name", "button.0=coupon", "button.1=order",
           "offer==2026-12-31T23:59:59Z")
    send(db, settings, "coupons", recipients(tmp_path, "phone,first_name,coupon,order", "+4915123000003,Ana,SAVE25,A-3"))
    components = arrived(sandbox)["+4915123000003"]
    assert {"type": "limited_time_offer", "parameters": [
        {"type": "limited_time_offer", "limited_time_offer": {"expiration_time_ms": 1798761599000}}]} in components
    assert {"type": "button", "sub_type": "copy_code", "index": "0",
            "parameters": [{"type": "coupon_code", "coupon_code": "SAVE25"}]} in components


def test_an_authentication_code_fills_the_body_and_the_code_button(db: Database, settings: Settings,
                                                                   sandbox: SandboxServer, tmp_path: Path) -> None:
    create(db, "otp", "login_code", "body.1=code")
    send(db, settings, "otp", recipients(tmp_path, "phone,code", "+4915123000004,482913"))
    assert arrived(sandbox)["+4915123000004"] == [
        {"type": "body", "parameters": [text("482913")]},
        {"type": "button", "sub_type": "url", "index": "0", "parameters": [text("482913")]},
    ]


def test_a_carousel_fills_each_card(db: Database, settings: Settings, sandbox: SandboxServer, tmp_path: Path) -> None:
    create(db, "cards", "spring_carousel", "body.1=first_name",
           "card.0.header=https://cdn.example.com/a.jpg", "card.0.body.1=first_item", "card.0.button.1=first_sku",
           "card.1.header=https://cdn.example.com/b.jpg", "card.1.body.1=second_item", "card.1.button.1=second_sku")
    send(db, settings, "cards", recipients(tmp_path, "phone,first_name,first_item,first_sku,second_item,second_sku",
                                           "+4915123000005,Ana,Boots,S-1,Scarf,S-2"))
    message_id = message_ids(db, "cards")["+4915123000005"]
    body, carousel = arrived(sandbox)["+4915123000005"]
    assert body == {"type": "body", "parameters": [text("Ana")]}
    assert carousel == {"type": "carousel", "cards": [
        {"card_index": k, "components": [
            {"type": "header", "parameters": [{"type": "image", "image": {"link": f"https://cdn.example.com/{letter}.jpg"}}]},
            {"type": "body", "parameters": [text(item)]},
            {"type": "button", "sub_type": "quick_reply", "index": "0",
             "parameters": [{"type": "payload", "payload": f"m{message_id}.q0"}]},
            {"type": "button", "sub_type": "url", "index": "1", "parameters": [text(sku)]},
        ]} for k, letter, item, sku in ((0, "a", "Boots", "S-1"), (1, "b", "Scarf", "S-2"))]}


def test_named_parameters_carry_their_names(db: Database, settings: Settings, sandbox: SandboxServer, tmp_path: Path) -> None:
    create(db, "named", "named_welcome", "header=first_name", "body.first_name=first_name", "body.order_id=order")
    send(db, settings, "named", recipients(tmp_path, "phone,first_name,order", "+4915123000006,Ana,A-6"))
    assert arrived(sandbox)["+4915123000006"] == [
        {"type": "header", "parameters": [text("Ana", "first_name")]},
        {"type": "body", "parameters": [text("Ana", "first_name"), text("A-6", "order_id")]},
    ]


def test_a_location_header_from_a_literal(db: Database, settings: Settings, sandbox: SandboxServer, tmp_path: Path) -> None:
    create(db, "shop", "store_location", "header==52.52,13.405,Shop,Main St 1")
    send(db, settings, "shop", recipients(tmp_path, "phone", "+4915123000007"))
    assert arrived(sandbox)["+4915123000007"] == [{"type": "header", "parameters": [{"type": "location", "location": {
        "latitude": 52.52, "longitude": 13.405, "name": "Shop", "address": "Main St 1"}}]}]


def test_a_file_is_uploaded_once_and_its_id_reused(db: Database, settings: Settings, sandbox: SandboxServer,
                                                  tmp_path: Path) -> None:
    (tmp_path / "invoice.pdf").write_bytes(b"%PDF-1.4 the invoice")
    for name in ("first", "second"):
        create(db, name, "order_doc", f"header=file:{tmp_path / 'invoice.pdf'}", "body.1=first_name")
        send(db, settings, name, recipients(tmp_path, "phone,first_name", f"+49151230001{len(name)}0,Ana"))
    got = arrived(sandbox)
    headers = [components[0]["parameters"][0] for components in got.values()]
    assert len(headers) == 2 and headers[0] == headers[1] and headers[0]["document"]["id"]
    assert sandbox.figures(SENDER).media_uploads == 1


@pytest.mark.parametrize(("template", "binds", "language", "refusal"), [
    ("promo_image", ["header=https://x.example/a.jpg", "body.1=n"], "en_US", "promo_image: button.0 (url suffix) is not bound"),
    ("order_update", ["body.1=n", "body.2=o", "button.0=x"], "en_US", "order_update: button.0 is not in the template"),
    ("flash_sale", ["body.1=n"], "en_US", "template 'flash_sale' [en_US] is PAUSED, not APPROVED"),
    ("winter_promo", ["body.1=n"], "en_US", "template 'winter_promo' [en_US] is PENDING, not APPROVED"),
    ("promo_image", ["body.1=n"], "de", "template 'promo_image' has no de version (it has: en_US)"),
    ("no_such_template", [], "en_US", "template 'no_such_template' does not exist in this WhatsApp Business Account"),
])
def test_launch_refuses_with_one_line_naming_the_template_and_the_target(
        db: Database, settings: Settings, template: str, binds: list[str], language: str, refusal: str) -> None:
    create(db, "refused", template, *binds, language=language)
    with pytest.raises(CampaignError) as refused:
        sending.launch(db, settings, "refused")
    assert str(refused.value).startswith(refusal)
    with db.read_session() as session:
        assert campaigns.get(session, "refused").state == "draft"


def test_a_media_header_refuses_a_file_of_another_kind(db: Database, settings: Settings, tmp_path: Path) -> None:
    (tmp_path / "clip.mp4").write_bytes(b"not really a video")
    create(db, "video", "promo_image", f"header=file:{tmp_path / 'clip.mp4'}", "body.1=n", "button.0=o")
    with pytest.raises(CampaignError, match="promo_image: header is an image"):
        sending.launch(db, settings, "video")


def test_a_template_on_a_later_page_is_found(db: Database, settings: Settings, sandbox: SandboxServer,
                                             tmp_path: Path) -> None:
    create(db, "late", "zz_after_the_fillers", "body.1=first_name")
    send(db, settings, "late", recipients(tmp_path, "phone,first_name", "+4915123000020,Ana"))
    assert arrived(sandbox)["+4915123000020"] == [{"type": "body", "parameters": [text("Ana")]}]


def test_rows_meta_would_refuse_are_rejected_as_bad_param(db: Database, settings: Settings, tmp_path: Path) -> None:
    create(db, "coupons", "coupon_offer", "body.1=first_name", "button.0=coupon", "button.1=order",
           "offer==2026-12-31T23:59:59Z")
    sending.check(db, settings, "coupons")  # the definition the import checks against
    csv = recipients(tmp_path, "phone,first_name,coupon,order",
                     "+4915123000030,Ana,SAVE25,A-1",
                     '+4915123000031,"Ana\nMaria",SAVE25,A-2',
                     "+4915123000032,Bo,SAVE25-EXTRA-LONG,A-3",
                     "+4915123000033,Cy,SAVE25,",
                     "+4915123000034,Di     Do,SAVE25,A-5")
    result = import_file(db, "coupons", csv, ImportOptions(rejects_path=tmp_path / "rejects.csv"))
    assert (result.imported, result.bad_param) == (1, 4)
    with (tmp_path / "rejects.csv").open(newline="", encoding="utf-8") as f:
        details = [row["detail"] for row in csv_module.DictReader(f) if row["reason"] == "bad_param"]
    assert details == [
        "body.1 (text): has a newline, a tab or more than four spaces in a row",
        "button.0 (copy code): is 17 characters; Meta allows 15",
        "button.1 (url suffix): is empty",
        "body.1 (text): has a newline, a tab or more than four spaces in a row",
    ]


def test_a_worker_uploads_a_file_again_when_meta_has_forgotten_it(db: Database, settings: Settings,
                                                                  sandbox: SandboxServer, tmp_path: Path) -> None:
    from sqlalchemy import update

    from campaign.models import MediaUpload

    (tmp_path / "invoice.pdf").write_bytes(b"%PDF-1.4 another invoice")
    create(db, "late_doc", "order_doc", f"header=file:{tmp_path / 'invoice.pdf'}", "body.1=first_name")
    assert import_file(db, "late_doc", recipients(tmp_path, "phone,first_name", "+4915123000040,Ana"),
                       ImportOptions(rejects_path=tmp_path / "rejects.csv")).imported == 1
    sending.launch(db, settings, "late_doc")
    with db.session() as session:  # thirty days later, before the worker got to it
        first = session.scalar(select(MediaUpload.media_id))
        session.execute(update(MediaUpload).values(expires_at=utcnow() - timedelta(days=1)))
    run = sending.run_worker(db, settings, campaigns_=["late_doc"], exit_when_idle=True, mps=200, pair_interval=0)
    assert run.stats.sent == 1
    header = arrived(sandbox)["+4915123000040"][0]["parameters"][0]
    assert header["document"]["id"] != first and sandbox.figures(SENDER).media_uploads == 2
