"""Template sends held against the template's definition: every kind of part, and Meta's code for
each way a send can get it wrong (whatsapp-templates.md §2, §3). Pure: ``validate_send`` only."""
from __future__ import annotations

from typing import Any

import pytest

from campaign.sandbox.meta_errors import MetaError
from campaign.sandbox.rules import SendRequest, link_fetchable, validate_send
from campaign.sandbox.templates import Template, TemplateRegistry, default_templates

REGISTRY = TemplateRegistry(default_templates())


def send(name: str, *components: dict[str, Any], language: str = "en_US") -> dict[str, Any]:
    return {"messaging_product": "whatsapp", "to": "+4915112345678", "type": "template",
            "template": {"name": name, "language": {"code": language}, "components": list(components)}}


def text(value: str, name: str | None = None) -> dict[str, Any]:
    return {"type": "text", "text": value} | ({"parameter_name": name} if name else {})


def header(*params: dict[str, Any]) -> dict[str, Any]:
    return {"type": "header", "parameters": list(params)}


def body(*values: str) -> dict[str, Any]:
    return {"type": "body", "parameters": [text(v) for v in values]}


def media(kind: str, **source: Any) -> dict[str, Any]:
    return {"type": kind, kind: source}


def button(sub_type: str, index: Any, *params: dict[str, Any]) -> dict[str, Any]:
    return {"type": "button", "sub_type": sub_type, "index": index, "parameters": list(params)}


def payload(value: str) -> dict[str, Any]:
    return {"type": "payload", "payload": value}


def coupon(code: str) -> dict[str, Any]:
    return {"type": "coupon_code", "coupon_code": code}


def offer(expiration: Any) -> dict[str, Any]:
    return {"type": "limited_time_offer",
            "parameters": [{"type": "limited_time_offer", "limited_time_offer": {"expiration_time_ms": expiration}}]}


def card(index: Any, *components: dict[str, Any]) -> dict[str, Any]:
    return {"card_index": index, "components": list(components)}


def carousel(*cards: dict[str, Any]) -> dict[str, Any]:
    return {"type": "carousel", "cards": list(cards)}


IMAGE = header(media("image", id="1234567890123456"))
LOCATION = header({"type": "location", "location": {"latitude": 37.4, "longitude": -122.1, "name": "Shop",
                                                    "address": "1 Main St"}})
EXPIRES = offer(1767225600000)
OTP_BUTTON = button("url", "0", text("482913"))


def good_card(index: int, **changes: Any) -> dict[str, Any]:
    parts = {"header": header(media("image", link=f"https://cdn.example.com/card{index}.jpg")),
             "body": body("$49"), "url": button("url", 1, text(f"item-{index}")),
             "quick_reply": button("quick_reply", 0, payload(f"buy-{index}"))} | changes
    return card(index, *(part for part in parts.values() if part is not None))


NAMED_BODY = {"type": "body", "parameters": [text("Ana", "first_name"), text("A-1042", "order_id")]}
NAMED_HEADER = header(text("Ana", "first_name"))

# Each template the registry gained, sent as Meta wants it (and a few allowed variants).
ACCEPTED: dict[str, dict[str, Any]] = {
    "promo_image": send("promo_image", IMAGE, body("Ana"), button("url", "0", text("A-1042")),
                        button("quick_reply", "1", payload("interested")), button("quick_reply", "2", payload("stop"))),
    "promo_image-quick-replies-left-out": send("promo_image", IMAGE, body("Ana"), button("url", "0", text("A-1042"))),
    "promo_image-int-index-and-link": send("promo_image", header(media("image", link="https://cdn.example.com/a.jpg")),
                                           body("Ana"), button("url", 0, text("A-1042"))),
    "coupon_offer": send("coupon_offer", EXPIRES, body("Ana"), button("copy_code", "0", coupon("SAVE25")),
                         button("url", "1", text("SAVE25"))),
    "login_code": send("login_code", body("482913"), OTP_BUTTON),
    "spring_carousel": send("spring_carousel", body("Ana"), carousel(good_card(0), good_card(1))),
    "spring_carousel-cards-in-any-order-no-quick-reply": send(
        "spring_carousel", body("Ana"), carousel(good_card(1, quick_reply=None), good_card(0))),
    "named_welcome": send("named_welcome", NAMED_HEADER, NAMED_BODY),
    "named_welcome-static-button-named-without-parameters": send("named_welcome", NAMED_HEADER, NAMED_BODY,
                                                                 button("url", "0")),
    "order_doc": send("order_doc", header(media("document", link="https://cdn.example.com/invoice.pdf",
                                                filename="invoice.pdf")), body("Ana")),
    "store_location": send("store_location", LOCATION),
    "four-spaces-in-a-row": send("order_update", body("Ana    Maria", "A-1")),
    "body-param-of-1024": send("order_update", body("x" * 1024, "A-1")),
    "header-param-of-60": send("shipping_notice", header(text("x" * 60)), body("Ana", "12 May")),
    "body-only-template-param-of-32768": send("appointment_reminder", {"type": "body", "parameters": [
        text("x" * 32768, "first_name"), text("12 May", "date")]}),
    "url-of-2000": send("promo_image", IMAGE, body("Ana"),
                        button("url", "0", text("x" * (2000 - len("https://shop.example.com/o/"))))),
}


@pytest.mark.parametrize("payload", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_a_correct_send_is_accepted(payload) -> None:
    result = validate_send(payload, REGISTRY)
    assert isinstance(result, SendRequest), result
    assert result.template.name == payload["template"]["name"]


def test_the_media_a_send_names_are_kept_for_after_acceptance() -> None:
    assert validate_send(ACCEPTED["promo_image"], REGISTRY).media == (("id", "1234567890123456"),)
    assert validate_send(ACCEPTED["spring_carousel"], REGISTRY).media == (
        ("link", "https://cdn.example.com/card0.jpg"), ("link", "https://cdn.example.com/card1.jpg"))
    assert validate_send(ACCEPTED["login_code"], REGISTRY).media == ()


TOO_LONG_URL_SUFFIX = "x" * (2001 - len("https://shop.example.com/o/"))

# (template, components, Meta's code)
REFUSED: dict[str, tuple[dict[str, Any], int]] = {
    # the template itself
    "paused": (send("flash_sale", body("Ana")), 132015),
    "no-such-language": (send("promo_image", IMAGE, body("Ana"), language="de_DE"), 132001),
    # header
    "media-header-missing": (send("promo_image", body("Ana"), button("url", "0", text("a"))), 132012),
    "media-header-of-another-type": (send("promo_image", header(media("video", id="1")), body("Ana"),
                                          button("url", "0", text("a"))), 132012),
    "document-header-given-an-image": (send("order_doc", IMAGE, body("Ana")), 132012),
    "media-header-without-id-or-link": (send("promo_image", header(media("image")), body("Ana"),
                                             button("url", "0", text("a"))), 132018),
    "media-header-with-id-and-link": (send("promo_image", header(media("image", id="1", link="https://a.example/x")),
                                           body("Ana"), button("url", "0", text("a"))), 132018),
    "media-header-two-parameters": (send("order_doc", header(media("document", id="1"), media("document", id="2")),
                                         body("Ana")), 132000),
    "location-header-missing": (send("store_location"), 132012),
    "location-without-latitude": (send("store_location", header(
        {"type": "location", "location": {"longitude": -122.1}})), 132018),
    "text-header-given-an-image": (send("shipping_notice", IMAGE, body("Ana", "12 May")), 132012),
    "text-header-parameter-missing": (send("shipping_notice", body("Ana", "12 May")), 132000),
    "header-for-a-template-without-one": (send("order_update", header(text("x")), body("Ana", "A-1")), 132018),
    "named-header-without-parameter-name": (send("named_welcome", header(text("Ana")), NAMED_BODY), 132000),
    "header-parameter-of-61": (send("shipping_notice", header(text("x" * 61)), body("Ana", "12 May")), 132005),
    # body
    "body-parameter-missing": (send("promo_image", IMAGE, button("url", "0", text("a"))), 132000),
    "named-body-unknown-name": (send("named_welcome", NAMED_HEADER, {"type": "body", "parameters": [
        text("Ana", "first_name"), text("A-1", "order")]}), 132000),
    "named-body-without-parameter-name": (send("named_welcome", NAMED_HEADER, body("Ana", "A-1")), 132000),
    "body-parameter-of-1025": (send("order_update", body("x" * 1025, "A-1")), 132005),
    "body-only-parameter-of-32769": (send("appointment_reminder", {"type": "body", "parameters": [
        text("x" * 32769, "first_name"), text("12 May", "date")]}), 132005),
    "empty-text": (send("order_update", body("Ana", "")), 131008),
    "blank-text": (send("order_update", body("Ana", "   ")), 131008),
    "new-line": (send("order_update", body("Ana\nMaria", "A-1")), 132018),
    "tab": (send("order_update", body("Ana\tMaria", "A-1")), 132018),
    "five-spaces": (send("order_update", body("Ana     Maria", "A-1")), 132018),
    "new-line-in-header": (send("shipping_notice", header(text("A\n1")), body("Ana", "12 May")), 132018),
    "empty-url-suffix": (send("promo_image", IMAGE, body("Ana"), button("url", "0", text(""))), 131008),
    # buttons
    "dynamic-url-button-missing": (send("promo_image", IMAGE, body("Ana")), 132000),
    "button-index-the-template-lacks": (send("promo_image", IMAGE, body("Ana"), button("url", "0", text("a")),
                                             button("quick_reply", "3", payload("x"))), 132000),
    "button-index-not-a-number": (send("promo_image", IMAGE, body("Ana"), button("url", "first", text("a"))),
                                  132000),
    "button-given-twice": (send("promo_image", IMAGE, body("Ana"), button("url", "0", text("a")),
                                button("url", 0, text("b"))), 132000),
    "url-button-as-quick-reply": (send("promo_image", IMAGE, body("Ana"), button("quick_reply", "0", payload("a"))),
                                  132012),
    "quick-reply-as-url": (send("promo_image", IMAGE, body("Ana"), button("url", "0", text("a")),
                                button("url", "1", text("b"))), 132012),
    "url-button-without-parameter": (send("promo_image", IMAGE, body("Ana"), button("url", "0")), 132000),
    "url-button-two-parameters": (send("promo_image", IMAGE, body("Ana"),
                                       button("url", "0", text("a"), text("b"))), 132000),
    "url-button-given-a-payload": (send("promo_image", IMAGE, body("Ana"), button("url", "0", payload("a"))), 132012),
    "url-longer-than-2000": (send("promo_image", IMAGE, body("Ana"), button("url", "0", text(TOO_LONG_URL_SUFFIX))),
                             132005),
    "quick-reply-payload-of-257": (send("promo_image", IMAGE, body("Ana"), button("url", "0", text("a")),
                                        button("quick_reply", "1", payload("p" * 257))), 132018),
    "copy-code-missing": (send("coupon_offer", EXPIRES, body("Ana"), button("url", "1", text("a"))), 132000),
    "copy-code-as-url": (send("coupon_offer", EXPIRES, body("Ana"), button("url", "0", text("SAVE25")),
                              button("url", "1", text("a"))), 132012),
    "coupon-code-of-16": (send("coupon_offer", EXPIRES, body("Ana"), button("copy_code", "0", coupon("C" * 16)),
                               button("url", "1", text("a"))), 132018),
    "otp-button-missing": (send("login_code", body("482913")), 132000),
    "otp-button-not-sent-as-url": (send("login_code", body("482913"), button("copy_code", "0", coupon("482913"))),
                                   132018),
    "otp-code-of-16": (send("login_code", body("482913"), button("url", "0", text("4" * 16))), 132018),
    "static-url-button-given-a-parameter": (send("named_welcome", NAMED_HEADER, NAMED_BODY,
                                                 button("url", "0", text("x"))), 132000),
    "phone-button-named-as-url": (send("named_welcome", NAMED_HEADER, NAMED_BODY, button("url", "1")), 132012),
    # limited-time offer
    "offer-missing": (send("coupon_offer", body("Ana"), button("copy_code", "0", coupon("SAVE25")),
                           button("url", "1", text("a"))), 132000),
    "offer-without-parameter": (send("coupon_offer", {"type": "limited_time_offer", "parameters": []}, body("Ana"),
                                     button("copy_code", "0", coupon("SAVE25")), button("url", "1", text("a"))),
                                132000),
    "offer-expiration-as-string": (send("coupon_offer", offer("1767225600000"), body("Ana"),
                                        button("copy_code", "0", coupon("SAVE25")), button("url", "1", text("a"))),
                                   132012),
    "offer-expiration-as-float": (send("coupon_offer", offer(1767225600000.5), body("Ana"),
                                       button("copy_code", "0", coupon("SAVE25")), button("url", "1", text("a"))),
                                  132012),
    "offer-for-a-template-without-one": (send("order_update", EXPIRES, body("Ana", "A-1")), 132000),
    # carousel
    "carousel-missing": (send("spring_carousel", body("Ana")), 132000),
    "carousel-one-card-of-two": (send("spring_carousel", body("Ana"), carousel(good_card(0))), 132000),
    "carousel-card-twice": (send("spring_carousel", body("Ana"), carousel(good_card(0), good_card(0))), 132000),
    "carousel-card-index-out-of-range": (send("spring_carousel", body("Ana"),
                                              carousel(good_card(0), card(2, *good_card(1)["components"]))), 132000),
    "card-header-missing": (send("spring_carousel", body("Ana"), carousel(good_card(0), good_card(1, header=None))),
                            132012),
    "card-header-without-source": (send("spring_carousel", body("Ana"),
                                        carousel(good_card(0), good_card(1, header=header(media("image"))))), 132018),
    "card-body-parameter-missing": (send("spring_carousel", body("Ana"),
                                         carousel(good_card(0), good_card(1, body=body()))), 132000),
    "card-url-button-missing": (send("spring_carousel", body("Ana"), carousel(good_card(0), good_card(1, url=None))),
                                132000),
    "card-button-index-the-card-lacks": (send("spring_carousel", body("Ana"), carousel(
        good_card(0), good_card(1, quick_reply=button("quick_reply", "2", payload("x"))))), 132000),
    "carousel-for-a-template-without-one": (send("order_update", body("Ana", "A-1"), carousel(good_card(0))),
                                            132000),
    "carousel-cards-not-a-list": (send("spring_carousel", body("Ana"), {"type": "carousel", "cards": {}}), 100),
}


@pytest.mark.parametrize("payload,code", REFUSED.values(), ids=REFUSED.keys())
def test_a_wrong_send_is_refused_with_metas_code(payload, code) -> None:
    result = validate_send(payload, REGISTRY)
    assert isinstance(result, MetaError), "accepted"
    assert (result.code, result.http_status) == (code, 404 if code == 132001 else 400), result.details


@pytest.mark.parametrize("payload,details", [
    (send("order_update", body("Ana", "")), "Parameter of type text is missing text value"),
    (send("order_update", body("Ana\n", "A-1")),
     "Param text cannot have new-line/tab characters or more than 4 consecutive spaces"),
    (send("order_update", body("Ana")),
     "body: number of localizable_params (1) does not match the expected number of params (2)"),
], ids=["empty", "whitespace", "count"])
def test_details_speak_metas_words(payload, details) -> None:
    assert validate_send(payload, REGISTRY).details == details


# --- the registry ---------------------------------------------------------------------------------

def test_the_registry_keeps_the_templates_it_had() -> None:
    names = {t.name for t in default_templates()}
    assert {"hello_world", "order_update", "shipping_notice", "appointment_reminder", "spring_sale", "new_arrivals",
            "winter_promo"} <= names
    assert REGISTRY.get("winter_promo", "en_US").status == "PENDING"


@pytest.mark.parametrize("name,category,status,parts", [
    ("promo_image", "MARKETING", "APPROVED", "header:IMAGE body:1 buttons:URL+,QUICK_REPLY,QUICK_REPLY"),
    ("coupon_offer", "MARKETING", "APPROVED", "offer:expires body:1 buttons:COPY_CODE+,URL+"),
    ("login_code", "AUTHENTICATION", "APPROVED", "body:1 buttons:OTP+"),
    ("spring_carousel", "MARKETING", "APPROVED", "body:1 cards:2"),
    ("named_welcome", "UTILITY", "APPROVED", "header:TEXT body:2 buttons:URL,PHONE_NUMBER"),
    ("order_doc", "UTILITY", "APPROVED", "header:DOCUMENT body:1"),
    ("store_location", "UTILITY", "APPROVED", "header:LOCATION body:0"),
    ("flash_sale", "MARKETING", "PAUSED", "body:1"),
])
def test_the_registry_has_a_template_of_each_kind(name, category, status, parts) -> None:
    template = REGISTRY.get(name, "en_US")
    shape = template.shape
    described = []
    if shape.header_format:
        described.append(f"header:{shape.header_format}")
    if shape.offer_expires is not None:
        described.append("offer:expires" if shape.offer_expires else "offer")
    described.append(f"body:{len(shape.body_params)}")
    if shape.buttons:
        described.append("buttons:" + ",".join(b.type + ("+" if b.required else "") for b in shape.buttons))
    if shape.cards is not None:
        described.append(f"cards:{len(shape.cards)}")
    assert (template.category, template.status, " ".join(described)) == (category, status, parts)


def test_definitions_are_listed_as_meta_stores_them() -> None:
    login = REGISTRY.get("login_code", "en_US").graph_json()
    otp_url = "https://www.whatsapp.com/otp/code/?otp_type=COPY_CODE&code=otp{{1}}"
    assert login["components"][-1] == {"type": "BUTTONS", "buttons": [{"type": "URL", "text": "Copy code", "url": otp_url}]}
    named = REGISTRY.get("named_welcome", "en_US")
    assert named.parameter_format == "NAMED" and named.header_params == ["first_name"]
    assert named.body_params == ["first_name", "order_id"]
    cards = REGISTRY.get("spring_carousel", "en_US").graph_json()["components"][1]["cards"]
    assert [[c["type"] for c in card["components"]] for card in cards] == [["HEADER", "BODY", "BUTTONS"]] * 2
    assert all(card["components"][1]["text"].endswith("{{1}}.") for card in cards)


def test_a_disabled_template_is_132016() -> None:
    registry = TemplateRegistry([Template("gone", "en_US", status="DISABLED",
                                          components=[{"type": "BODY", "text": "Hi {{1}}"}])])
    assert validate_send(send("gone", body("Ana")), registry).code == 132016


# --- media links ----------------------------------------------------------------------------------

@pytest.mark.parametrize("link,fetchable", [
    ("https://cdn.example.com/a.jpg", True),
    ("http://cdn.example.com/a.jpg", True),
    ("https://cdn.example.invalid/a.jpg", False),
    ("https://invalid/a.jpg", False),
    ("https://listed.example.com/broken.jpg", False),
    ("ftp://cdn.example.com/a.jpg", False),
    ("not a url", False),
])
def test_which_links_meta_could_fetch(link, fetchable) -> None:
    assert link_fetchable(link, frozenset({"https://listed.example.com/broken.jpg"})) is fetchable
