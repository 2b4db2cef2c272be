"""The sandbox's pure rules: validation, limits, windows, recipients, templates, ledger figures."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaign.sandbox.config import SandboxConfig
from campaign.sandbox.ledger import LedgerEntry, compute_figures, max_in_window
from campaign.sandbox.meta_errors import MetaError
from campaign.sandbox.recipients import Profile, canonical_wa_id, profile_of
from campaign.sandbox.rules import PairSpacing, SendRequest, ServiceWindows, ThroughputWindow, validate_send
from campaign.sandbox.templates import Template, TemplateRegistry, default_templates, placeholders


def registry() -> TemplateRegistry:
    return TemplateRegistry(default_templates())


def body(template: dict | None = None, **fields) -> dict:
    payload = {"messaging_product": "whatsapp", "to": "+4915112345678", "type": "template",
               "template": template or {"name": "hello_world", "language": {"code": "en_US"}}}
    payload.update(fields)
    return payload


def code_of(result: SendRequest | MetaError) -> int | None:
    return result.code if isinstance(result, MetaError) else None


# --- validation -------------------------------------------------------------------------------

@pytest.mark.parametrize("payload", [
    [],
    {"to": "+4915112345678", "type": "text", "text": {"body": "x"}},
    {"messaging_product": "sms", "to": "+4915112345678", "type": "text", "text": {"body": "x"}},
    {"messaging_product": "whatsapp", "type": "text", "text": {"body": "x"}},
    {"messaging_product": "whatsapp", "to": "no digits", "type": "text", "text": {"body": "x"}},
    {"messaging_product": "whatsapp", "to": "+4915112345678", "type": "fax", "fax": {}},
    {"messaging_product": "whatsapp", "to": "+4915112345678", "type": "text"},
    {"messaging_product": "whatsapp", "to": "+4915112345678", "type": "text", "text": {"body": ""}},
    {"messaging_product": "whatsapp", "to": "+4915112345678", "type": "text", "text": {"body": "x" * 4097}},
    {"messaging_product": "whatsapp", "to": "+4915112345678", "type": "template", "template": {"language": {"code": "en_US"}}},
    {"messaging_product": "whatsapp", "to": "+4915112345678", "type": "template", "template": {"name": "hello_world"}},
    {"messaging_product": "whatsapp", "to": "+4915112345678", "type": "image", "image": {}},
    {"messaging_product": "whatsapp", "to": "+4915112345678", "type": "text", "text": {"body": "x"},
     "biz_opaque_callback_data": "x" * 257},
    {"messaging_product": "whatsapp", "recipient_type": "broadcast", "to": "+4915112345678", "type": "text",
     "text": {"body": "x"}},
], ids=["not-object", "no-product", "wrong-product", "no-to", "to-not-number", "unknown-type", "object-missing",
        "empty-text", "text-too-long", "template-no-name", "template-no-language", "media-no-link",
        "callback-too-long", "bad-recipient-type"])
def test_malformed_requests_are_code_100(payload) -> None:
    assert code_of(validate_send(payload, registry())) == 100


def test_a_text_of_exactly_4096_characters_is_accepted() -> None:
    result = validate_send({"messaging_product": "whatsapp", "to": "+4915112345678", "type": "text",
                            "text": {"body": "x" * 4096}}, registry())
    assert isinstance(result, SendRequest) and result.free_form and result.category == "service"


def test_type_defaults_to_text_as_meta_documents() -> None:
    result = validate_send({"messaging_product": "whatsapp", "to": "+4915112345678", "text": {"body": "hi"}},
                           registry())
    assert isinstance(result, SendRequest) and result.type == "text"


@pytest.mark.parametrize("name,language", [("no_such_template", "en_US"), ("order_update", "fr_FR"),
                                           ("winter_promo", "en_US")])
def test_unknown_template_language_or_unapproved_is_132001(name, language) -> None:
    result = validate_send(body({"name": name, "language": {"code": language}}), registry())
    assert code_of(result) == 132001
    assert result.http_status == 404


@pytest.mark.parametrize("params", [[], ["Ana"], ["Ana", "A-1", "extra"]])
def test_wrong_body_parameter_count_is_132000(params) -> None:
    template = {"name": "order_update", "language": {"code": "en_US"},
                "components": [{"type": "body", "parameters": [{"type": "text", "text": p} for p in params]}]}
    assert code_of(validate_send(body(template), registry())) == 132000


def test_parameters_for_a_template_without_placeholders_are_132000() -> None:
    template = {"name": "hello_world", "language": {"code": "en_US"},
                "components": [{"type": "body", "parameters": [{"type": "text", "text": "x"}]}]}
    assert code_of(validate_send(body(template), registry())) == 132000


def test_text_header_parameters_are_counted_apart_from_the_body() -> None:
    def send(header: list[str], body_params: list[str]) -> int | None:
        components = [{"type": "header", "parameters": [{"type": "text", "text": h} for h in header]},
                      {"type": "body", "parameters": [{"type": "text", "text": b} for b in body_params]}]
        return code_of(validate_send(body({"name": "shipping_notice", "language": {"code": "en_US"},
                                           "components": components}), registry()))
    assert send(["A-1"], ["Ana", "12 May"]) is None
    assert send([], ["Ana", "12 May"]) == 132000
    assert send(["A-1"], ["Ana"]) == 132000


def test_a_media_header_needs_a_media_parameter() -> None:
    body_component = {"type": "body", "parameters": [{"type": "text", "text": "Ana"}]}
    missing = body({"name": "new_arrivals", "language": {"code": "en_US"}, "components": [body_component]})
    image = {"type": "header", "parameters": [{"type": "image", "image": {"link": "https://x/y.jpg"}}]}
    present = body({"name": "new_arrivals", "language": {"code": "en_US"}, "components": [image, body_component]})
    assert code_of(validate_send(missing, registry())) == 132012
    assert code_of(validate_send(present, registry())) is None


def test_an_empty_parameter_text_is_131008() -> None:
    template = {"name": "order_update", "language": {"code": "en_US"},
                "components": [{"type": "body", "parameters": [{"type": "text", "text": "Ana"},
                                                               {"type": "text", "text": " "}]}]}
    assert code_of(validate_send(body(template), registry())) == 131008


def test_named_templates_need_the_named_parameters() -> None:
    def send(names: list[str]) -> int | None:
        params = [{"type": "text", "parameter_name": n, "text": "v"} for n in names]
        return code_of(validate_send(body({"name": "appointment_reminder", "language": {"code": "en_US"},
                                           "components": [{"type": "body", "parameters": params}]}), registry()))
    assert send(["first_name", "date"]) is None
    assert send(["first_name", "when"]) == 132000


def test_paused_and_disabled_templates_have_their_own_codes() -> None:
    reg = TemplateRegistry([Template("p", "en_US", status="PAUSED", components=[{"type": "BODY", "text": "x"}]),
                            Template("d", "en_US", status="DISABLED", components=[{"type": "BODY", "text": "x"}])])
    assert code_of(validate_send(body({"name": "p", "language": {"code": "en_US"}}), reg)) == 132015
    assert code_of(validate_send(body({"name": "d", "language": {"code": "en_US"}}), reg)) == 132016


def test_a_valid_template_send_carries_category_and_canonical_wa_id() -> None:
    template = {"name": "spring_sale", "language": {"code": "en_US"},
                "components": [{"type": "body", "parameters": [{"type": "text", "text": "Ana"}]}]}
    result = validate_send(body(template, to="+49 151 1234-5678", biz_opaque_callback_data="outbox-7"), registry())
    assert isinstance(result, SendRequest)
    assert (result.wa_id, result.category, result.callback_data, result.free_form) == (
        "4915112345678", "marketing", "outbox-7", False)


# --- templates and recipients ---------------------------------------------------------------------

def test_placeholders_are_distinct_and_ordered() -> None:
    assert placeholders("Hi {{1}}, {{2}} and {{1}} again, {{ 3 }}") == ["1", "2", "3"]
    assert placeholders("no params") == []


def test_default_registry_holds_the_promised_templates() -> None:
    reg = registry()
    assert reg.get("hello_world", "en_US").body_params == []
    assert len(reg.get("order_update", "en_US").body_params) == 2
    assert reg.get("spring_sale", "en_US").category == "MARKETING"
    assert reg.get("winter_promo", "en_US").status == "PENDING"


@pytest.mark.parametrize("number,wa_id", [
    ("+4915112345678", "4915112345678"),
    ("+52 55 1234 5678", "5215512345678"),  # Mexico keeps the old mobile 1
    ("+5215512345678", "5215512345678"),
    ("+55 21 91234 5678", "5521912345678"),  # Rio (area 21) keeps the ninth digit
    ("+55 61 91234 5678", "556112345678"),  # Brasilia (area 61) drops it
])
def test_canonical_wa_id(number, wa_id) -> None:
    assert canonical_wa_id(number) == wa_id
    assert canonical_wa_id(number, rewrite=False) == "".join(c for c in number if c.isdigit())


def test_scripted_sets_and_fractions_pick_profiles_deterministically() -> None:
    config = SandboxConfig(not_on_whatsapp=["+4915100000001"], marketing_limited=["4915100000002"],
                           marketing_opted_out=["+49 151 00000003"], access_token=None, app_secret=None)
    assert profile_of("4915100000001", config) is Profile.NOT_ON_WHATSAPP
    assert profile_of("4915100000002", config) is Profile.MARKETING_LIMITED
    assert profile_of("4915100000003", config) is Profile.MARKETING_OPTED_OUT
    assert profile_of("4915100000004", config) is Profile.REACHABLE
    assert profile_of("123", config) is Profile.NOT_ON_WHATSAPP  # too short to be anyone

    fractions = SandboxConfig(not_on_whatsapp_fraction=0.1, marketing_limited_fraction=0.2,
                              marketing_opted_out_fraction=0.05)
    numbers = [f"49151{n:08d}" for n in range(4000)]
    profiles = [profile_of(n, fractions) for n in numbers]
    assert profiles == [profile_of(n, fractions) for n in numbers]
    share = {p: profiles.count(p) / len(numbers) for p in Profile}
    assert share[Profile.NOT_ON_WHATSAPP] == pytest.approx(0.1, abs=0.03)
    assert share[Profile.MARKETING_LIMITED] == pytest.approx(0.2, abs=0.03)
    assert share[Profile.MARKETING_OPTED_OUT] == pytest.approx(0.05, abs=0.02)


# --- limits and windows -------------------------------------------------------------------------------

def test_throughput_window_admits_mps_in_any_trailing_second() -> None:
    window = ThroughputWindow()
    for i in range(3):
        assert window.admits("p", 10.0 + i * 0.1, 3)
        window.record("p", 10.0 + i * 0.1)
    assert not window.admits("p", 10.5, 3)
    assert not window.admits("p", 10.999, 3)  # 10.0 is still inside (9.999, 10.999]
    assert window.admits("p", 11.0, 3)  # (10.0, 11.0] no longer holds 10.0
    assert window.admits("other", 10.5, 3)  # per sender number


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=0.5), min_size=1, max_size=300), st.integers(1, 20))
def test_accepted_arrivals_never_exceed_the_cap_in_any_second(gaps, mps) -> None:
    window, now, accepted = ThroughputWindow(), 0.0, []
    for gap in gaps:
        now += gap
        if window.admits("p", now, mps):
            window.record("p", now)
            accepted.append(now)
    assert max_in_window(accepted) <= mps


def test_pair_spacing_is_strict_by_default() -> None:
    pairs = PairSpacing()
    assert pairs.admits("p", "u", 100.0, 6.0, 1)
    pairs.record("p", "u", 100.0, 6.0)
    assert not pairs.admits("p", "u", 105.99, 6.0, 1)
    assert pairs.admits("p", "v", 101.0, 6.0, 1)
    assert pairs.admits("p", "u", 106.0, 6.0, 1)


def test_pair_spacing_burst_borrows_from_the_future() -> None:
    pairs = PairSpacing()
    for _ in range(3):
        assert pairs.admits("p", "u", 0.0, 6.0, 3)
        pairs.record("p", "u", 0.0, 6.0)
    assert not pairs.admits("p", "u", 0.0, 6.0, 3)
    assert pairs.admits("p", "u", 6.0, 6.0, 3)


def test_service_window_lasts_24_hours_from_the_last_inbound() -> None:
    windows = ServiceWindows()
    assert not windows.is_open("u", "p", 1000.0, 86400)
    windows.open("u", 1000.0)
    assert windows.is_open("u", "p", 1000.0 + 86399, 86400)
    assert not windows.is_open("u", "p", 1000.0 + 86400, 86400)
    windows.open("u", 5000.0, sender="q")
    assert windows.is_open("u", "q", 5000.0 + 86000, 86400)
    windows.close("u")
    assert not windows.is_open("u", "q", 5001.0, 86400)


# --- ledger figures ---------------------------------------------------------------------------------------

def test_max_in_window_counts_half_open_seconds() -> None:
    assert max_in_window([]) == 0
    assert max_in_window([0.0, 0.5, 0.99, 1.0, 1.5]) == 3  # (0.0, 1.0] holds 0.5, 0.99 and 1.0, not 0.0
    assert max_in_window([0.0, 1.0, 2.0]) == 1


def entry(seq: int, t: float, *, accepted: bool = True, wa_id: str = "u", key: bytes = b"k",
          callback: str | None = None, code: int | None = None, window_open: bool | None = None) -> LedgerEntry:
    e = LedgerEntry(seq, t, 1000.0 + t, "p", to="+" + wa_id, wa_id=wa_id, callback_data=callback,
                    content_key=key, window_open=window_open)
    if accepted:
        e.outcome, e.http_status = "accepted", 200
    else:
        e.http_status, e.error_code = 400, code
    return e


def test_figures_count_duplicates_by_content_or_callback_data() -> None:
    figures = compute_figures([
        entry(1, 0.0, wa_id="a", key=b"1", callback="m1"),
        entry(2, 0.1, wa_id="a", key=b"1", callback="m2"),  # same content to the same user
        entry(3, 0.2, wa_id="b", key=b"2", callback="m1"),  # same callback data
        entry(4, 0.3, wa_id="c", key=b"3", callback="m4"),
        entry(5, 0.4, wa_id="c", key=b"3", callback="m4", accepted=False, code=130429),  # refused: no send
    ])
    assert (figures.duplicate_sends, figures.duplicate_content, figures.duplicate_callback_data) == (2, 1, 1)
    assert (figures.requests, figures.accepted, figures.throttled) == (5, 4, 1)
    assert figures.errors_by_code == {130429: 1}
    assert figures.min_pair_gap == pytest.approx(0.1)


def test_figures_count_free_form_sends_outside_the_window() -> None:
    figures = compute_figures([entry(1, 0.0, window_open=False), entry(2, 7.0, key=b"2", window_open=True),
                               entry(3, 14.0, key=b"3")])
    assert figures.window_violations == 1
