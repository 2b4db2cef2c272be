"""A template definition as Graph lists it (`GET /{waba-id}/message_templates`), read as the
targets `campaign create --bind` fills: one definition of each kind, and the rules one by one."""

from __future__ import annotations

from typing import Any

import pytest

from campaign.templates import Kind, Target, TemplateInfo, parse_template


def definition(name: str, components: list[dict[str, Any]], *, category: str = "MARKETING",
               parameter_format: str = "POSITIONAL", status: str = "APPROVED") -> dict[str, Any]:
    return {"name": name, "language": "en_US", "status": status, "category": category,
            "parameter_format": parameter_format, "components": components, "id": "1029384756"}


def buttons(*items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "BUTTONS", "buttons": list(items)}


SHOP_URL = "https://shop.example.com/p/{{1}}"
OTP_URL = "https://www.whatsapp.com/otp/code/?otp_type=COPY_CODE&code_expiration_minutes=10&code=otp{{1}}"

PROMO_IMAGE = definition("promo_image", [
    {"type": "HEADER", "format": "IMAGE", "example": {"header_handle": ["https://scontent.whatsapp.net/h.jpg"]}},
    {"type": "BODY", "text": "Hi {{1}}, {{2}} is back in stock. Don't miss it, {{1}}!",
     "example": {"body_text": [["Ana", "The red dress"]]}},
    {"type": "FOOTER", "text": "Not interested? Tap Stop promotions"},
    buttons({"type": "URL", "text": "Shop now", "url": SHOP_URL, "example": ["https://shop.example.com/p/red-dress"]},
            {"type": "QUICK_REPLY", "text": "Interested"},
            {"type": "QUICK_REPLY", "text": "Stop promotions"}),
])
APPOINTMENT = definition("appointment", [
    {"type": "HEADER", "format": "TEXT", "text": "Your visit on {{date}}",
     "example": {"header_text_named_params": [{"param_name": "date", "example": "12 May"}]}},
    {"type": "BODY", "text": "Hi {{first_name}}, see you on {{date}} at {{time}}.",
     "example": {"body_text_named_params": [{"param_name": "first_name", "example": "Ana"},
                                            {"param_name": "date", "example": "12 May"},
                                            {"param_name": "time", "example": "10:00"}]}},
], category="UTILITY", parameter_format="NAMED")
FALL_COUPON = definition("fall_coupon", [
    {"type": "HEADER", "format": "IMAGE", "example": {"header_handle": ["https://scontent.whatsapp.net/f.jpg"]}},
    {"type": "LIMITED_TIME_OFFER", "limited_time_offer": {"text": "Fall sale!", "has_expiration": True}},
    {"type": "BODY", "text": "Hi {{1}}, 25% off everything with this code.", "example": {"body_text": [["Ana"]]}},
    buttons({"type": "COPY_CODE", "example": "FALL25"},
            {"type": "URL", "text": "Shop the sale", "url": SHOP_URL, "example": ["https://shop.example.com/p/fall"]}),
])
LOGIN_CODE = definition("login_code", [
    {"type": "BODY", "text": "*{{1}}* is your verification code. For your security, do not share this code.",
     "add_security_recommendation": True},
    {"type": "FOOTER", "code_expiration_minutes": 10},
    buttons({"type": "URL", "text": "Copy code", "url": OTP_URL, "example": [OTP_URL.replace("{{1}}", "123456")]}),
], category="AUTHENTICATION")
SUMMER_PICKS = definition("summer_picks", [
    {"type": "BODY", "text": "Hi {{1}}, our picks for you this summer.", "example": {"body_text": [["Ana"]]}},
    {"type": "CAROUSEL", "cards": [
        {"components": [
            {"type": "HEADER", "format": "IMAGE", "example": {"header_handle": ["https://scontent.whatsapp.net/1.jpg"]}},
            {"type": "BODY", "text": "{{1}} for {{2}}", "example": {"body_text": [["Sandals", "$19"]]}},
            buttons({"type": "QUICK_REPLY", "text": "Buy"}, {"type": "URL", "text": "See", "url": SHOP_URL}),
        ]},
        {"components": [
            {"type": "HEADER", "format": "VIDEO", "example": {"header_handle": ["https://scontent.whatsapp.net/2.mp4"]}},
            {"type": "BODY", "text": "{{1}} for {{2}}", "example": {"body_text": [["Hats", "$9"]]}},
            buttons({"type": "QUICK_REPLY", "text": "Buy"}, {"type": "URL", "text": "See", "url": SHOP_URL}),
        ]},
    ]},
])
STORE_HOURS = definition("store_hours", [
    {"type": "BODY", "text": "We are open 9 to 5, Monday to Saturday."},
    buttons({"type": "URL", "text": "Opening hours", "url": "https://shop.example.com/hours"},
            {"type": "PHONE_NUMBER", "text": "Call us", "phone_number": "+4930123456"}),
], category="UTILITY")

URL_MAX = 2000 - len("https://shop.example.com/p/")

EXPECTED = {
    "promo_image": (
        "header(image) body.1 body.2 button.0(url) button.1(quick_reply, optional) button.2(quick_reply, optional)",
        (Target("header", Kind.IMAGE),
         Target("body.1", Kind.TEXT, max_length=1024),
         Target("body.2", Kind.TEXT, max_length=1024),
         Target("button.0", Kind.URL, label="Shop now", url=SHOP_URL, max_length=URL_MAX),
         Target("button.1", Kind.QUICK_REPLY, required=False, label="Interested", max_length=256),
         Target("button.2", Kind.QUICK_REPLY, required=False, label="Stop promotions", max_length=256)),
    ),
    "appointment": (
        "header body.first_name body.date body.time",
        (Target("header", Kind.TEXT, max_length=60, parameter_name="date"),
         Target("body.first_name", Kind.TEXT, max_length=1024, parameter_name="first_name"),
         Target("body.date", Kind.TEXT, max_length=1024, parameter_name="date"),
         Target("body.time", Kind.TEXT, max_length=1024, parameter_name="time")),
    ),
    "fall_coupon": (
        "header(image) offer body.1 button.0(copy_code) button.1(url)",
        (Target("header", Kind.IMAGE),
         Target("offer", Kind.OFFER),
         Target("body.1", Kind.TEXT, max_length=1024),
         Target("button.0", Kind.COPY_CODE, max_length=15),
         Target("button.1", Kind.URL, label="Shop the sale", url=SHOP_URL, max_length=URL_MAX)),
    ),
    "login_code": (
        "body.1 button.0(otp, optional)",
        (Target("body.1", Kind.TEXT, max_length=1024),
         Target("button.0", Kind.OTP, required=False, label="Copy code", url=OTP_URL, max_length=15)),
    ),
    "summer_picks": (
        "body.1 card.0.header(image) card.0.body.1 card.0.body.2 card.0.button.0(quick_reply, optional) "
        "card.0.button.1(url) card.1.header(video) card.1.body.1 card.1.body.2 "
        "card.1.button.0(quick_reply, optional) card.1.button.1(url)",
        (Target("body.1", Kind.TEXT, max_length=1024),
         *(target
           for k, media in ((0, Kind.IMAGE), (1, Kind.VIDEO))
           for target in (Target(f"card.{k}.header", media),
                          Target(f"card.{k}.body.1", Kind.TEXT, max_length=1024),
                          Target(f"card.{k}.body.2", Kind.TEXT, max_length=1024),
                          Target(f"card.{k}.button.0", Kind.QUICK_REPLY, required=False, label="Buy", max_length=256),
                          Target(f"card.{k}.button.1", Kind.URL, label="See", url=SHOP_URL, max_length=URL_MAX)))),
    ),
    "store_hours": ("(no variables)", ()),
}
DEFINITIONS = [PROMO_IMAGE, APPOINTMENT, FALL_COUPON, LOGIN_CODE, SUMMER_PICKS, STORE_HOURS]


@pytest.mark.parametrize("item", DEFINITIONS, ids=lambda item: item["name"])
def test_each_kind_of_definition_gives_its_targets(item: dict[str, Any]) -> None:
    assert parse_template(item).targets == EXPECTED[item["name"]][1]


@pytest.mark.parametrize("item", DEFINITIONS, ids=lambda item: item["name"])
def test_describe_lists_the_targets_with_their_kind_and_optionality(item: dict[str, Any]) -> None:
    assert parse_template(item).describe() == EXPECTED[item["name"]][0]


def test_the_template_fields_keep_metas_case_rules() -> None:
    info = parse_template({**PROMO_IMAGE, "status": "paused"})
    assert (info.name, info.language, info.status, info.category, info.parameter_format) == (
        "promo_image", "en_US", "PAUSED", "marketing", "POSITIONAL")


def test_a_missing_parameter_format_is_positional_and_a_missing_category_is_none() -> None:
    info = parse_template({"name": "x", "language": "de", "status": "APPROVED", "components": []})
    assert (info.parameter_format, info.category, info.targets) == ("POSITIONAL", None, ())


def test_target_finds_a_target_by_key_or_none() -> None:
    info = parse_template(PROMO_IMAGE)
    assert info.target("button.0") == EXPECTED["promo_image"][1][3]
    assert info.target("button.9") is None


def header_targets(header: dict[str, Any]) -> tuple[Target, ...]:
    return parse_template(definition("h", [header])).targets


@pytest.mark.parametrize(("header", "expected"), [
    ({"type": "HEADER", "format": "TEXT", "text": "Order {{1}}"}, (Target("header", Kind.TEXT, max_length=60),)),
    ({"type": "HEADER", "format": "TEXT", "text": "Hello World"}, ()),
    ({"type": "HEADER", "format": "IMAGE"}, (Target("header", Kind.IMAGE),)),
    ({"type": "HEADER", "format": "VIDEO"}, (Target("header", Kind.VIDEO),)),
    ({"type": "HEADER", "format": "GIF"}, (Target("header", Kind.VIDEO),)),
    ({"type": "HEADER", "format": "DOCUMENT"}, (Target("header", Kind.DOCUMENT),)),
    ({"type": "HEADER", "format": "LOCATION"}, (Target("header", Kind.LOCATION),)),
    ({"type": "HEADER", "format": "PRODUCT"}, ()),
], ids=["text-variable", "text-static", "image", "video", "gif-as-video", "document", "location", "product"])
def test_a_header_gives_one_target_of_its_format(header: dict[str, Any], expected: tuple[Target, ...]) -> None:
    assert header_targets(header) == expected


def button_targets(*items: dict[str, Any], category: str = "MARKETING", body: str = "Hi") -> tuple[Target, ...]:
    return parse_template(definition("b", [{"type": "BODY", "text": body}, buttons(*items)], category=category)).targets


@pytest.mark.parametrize("button", [
    {"type": "URL", "text": "Hours", "url": "https://shop.example.com/hours"},
    {"type": "PHONE_NUMBER", "text": "Call", "phone_number": "+4930123456"},
    {"type": "VOICE_CALL", "text": "Call on WhatsApp"},
    {"type": "CATALOG", "text": "View catalog"},
    {"type": "MPM", "text": "View items"},
    {"type": "SPM", "text": "View"},
    {"type": "SOMETHING_NEW", "text": "?"},
], ids=lambda button: button["type"].lower())
def test_static_and_unknown_buttons_give_no_target(button: dict[str, Any]) -> None:
    assert button_targets(button) == ()


def test_a_button_keeps_its_index_after_buttons_without_a_target() -> None:
    found = button_targets({"type": "PHONE_NUMBER", "text": "Call"}, {"type": "SOMETHING_NEW"}, {"type": "COPY_CODE"})
    assert [t.key for t in found] == ["button.2"]


def test_a_dynamic_url_leaves_the_suffix_what_the_template_url_leaves_of_2000() -> None:
    [target] = button_targets({"type": "URL", "text": "Go", "url": "https://x.test/{{1}}"})
    assert (target.kind, target.url, target.max_length) == (Kind.URL, "https://x.test/{{1}}", 2000 - len("https://x.test/"))


def test_a_flow_button_is_optional() -> None:
    assert button_targets({"type": "FLOW", "text": "Book", "flow_id": "123"}) == (
        Target("button.0", Kind.FLOW, required=False, label="Book"),)


@pytest.mark.parametrize(("button", "category"), [
    ({"type": "OTP", "otp_type": "COPY_CODE", "text": "Copy code"}, "AUTHENTICATION"),
    ({"type": "URL", "text": "Copy code", "url": OTP_URL}, "UTILITY"),
    ({"type": "URL", "text": "Copy code", "url": "https://example.com/code/{{1}}"}, "AUTHENTICATION"),
], ids=["otp-type", "url-with-otp-type", "authentication-dynamic-url"])
def test_an_otp_button_is_recognised_in_each_of_its_forms(button: dict[str, Any], category: str) -> None:
    [_, target] = button_targets(button, category=category, body="{{1}} is your code.")
    assert (target.kind, target.max_length, target.required) == (Kind.OTP, 15, False)


def test_an_otp_button_is_required_when_the_body_does_not_carry_the_code() -> None:
    [target] = button_targets({"type": "URL", "text": "Copy code", "url": OTP_URL}, category="AUTHENTICATION")
    assert target.required


def test_a_limited_time_offer_without_expiration_gives_no_target() -> None:
    offer = {"type": "LIMITED_TIME_OFFER", "limited_time_offer": {"text": "Sale!", "has_expiration": False}}
    assert parse_template(definition("o", [offer])).targets == ()


def test_unknown_components_are_skipped_and_types_are_read_in_any_case() -> None:
    info = parse_template(definition("c", [{"type": "SOMETHING_NEW", "text": "{{1}}"}, {"type": "body", "text": "{{1}}"}]))
    assert [t.key for t in info.targets] == ["body.1"]


def test_a_template_without_variables_describes_itself_so() -> None:
    assert TemplateInfo("hello_world", "en_US", "APPROVED", "utility", "POSITIONAL", ()).describe() == "(no variables)"
