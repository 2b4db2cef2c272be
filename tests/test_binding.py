"""What fills each template target: `--bind` and its shorthands, the pre-flight against the
template's definition, and the per-row rules of what Meta would refuse."""

from __future__ import annotations

import re

import pytest

from campaign.binding import (
    WHITESPACE,
    Source,
    SourceKind,
    check,
    choose,
    columns,
    expiration_ms,
    from_options,
    parse_bind,
    value_problem,
    what,
    which,
)
from campaign.exceptions import CampaignError
from campaign.templates import Kind, Target, TemplateInfo

SHOP_URL = "https://shop.example.com/p/{{1}}"
URL_SUFFIX_MAX = 2000 - len("https://shop.example.com/p/")

HEADER_IMAGE = Target("header", Kind.IMAGE)
HEADER_TEXT = Target("header", Kind.TEXT, max_length=60)
BODY_1 = Target("body.1", Kind.TEXT, max_length=1024)
URL_BUTTON = Target("button.0", Kind.URL, label="Shop now", url=SHOP_URL, max_length=URL_SUFFIX_MAX)
QUICK_REPLY = Target("button.1", Kind.QUICK_REPLY, required=False, label="Stop", max_length=256)
COPY_CODE = Target("button.0", Kind.COPY_CODE, max_length=15)
OTP = Target("button.0", Kind.OTP, required=False, url="https://www.whatsapp.com/otp/code/?code=otp{{1}}", max_length=15)
OFFER = Target("offer", Kind.OFFER)


def template(name: str, *targets: Target, language: str = "en_US", status: str = "APPROVED") -> TemplateInfo:
    return TemplateInfo(name, language, status, "marketing", "POSITIONAL", targets)


PROMO_IMAGE = template("promo_image", HEADER_IMAGE, BODY_1, URL_BUTTON)


def column(name: str) -> Source:
    return Source(SourceKind.COLUMN, name)


def literal(text: str) -> Source:
    return Source(SourceKind.LITERAL, text)


PROMO_BOUND = {"header": Source(SourceKind.LINK, "https://cdn.example.com/a.jpg"), "body.1": column("first_name"),
               "button.0": column("sku")}


# --- parse_bind -------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "target", "source"), [
    ("body.1=first_name", "body.1", column("first_name")),
    ("body.first_name=First Name", "body.first_name", column("First Name")),
    ("button.1==interested", "button.1", literal("interested")),
    ("offer==2026-12-31T23:59:00+01:00", "offer", literal("2026-12-31T23:59:00+01:00")),
    ("header=https://cdn.example.com/a.jpg", "header", Source(SourceKind.LINK, "https://cdn.example.com/a.jpg")),
    ("header=http://cdn.example.com/a.jpg", "header", Source(SourceKind.LINK, "http://cdn.example.com/a.jpg")),
    ("header=media:1234567890", "header", Source(SourceKind.MEDIA_ID, "1234567890")),
    ("header=file:assets/fall.jpg", "header", Source(SourceKind.FILE, "assets/fall.jpg")),
    ("card.1.header=file:b.mp4", "card.1.header", Source(SourceKind.FILE, "b.mp4")),
    ("card.0.body.2=price", "card.0.body.2", column("price")),
    ("card.10.button.0=sku", "card.10.button.0", column("sku")),
    ("body.1=a=b", "body.1", column("a=b")),
], ids=["column", "named-body", "literal", "offer-literal", "https-link", "http-link", "media-id", "file",
        "card-header", "card-body", "card-button", "column-with-equals"])
def test_parse_bind_reads_each_source_form(text: str, target: str, source: Source) -> None:
    assert parse_bind(text) == (target, source)


@pytest.mark.parametrize(("text", "detail"), [
    ("body.1", "expected TARGET=SOURCE"),
    ("=first_name", "expected TARGET=SOURCE"),
    ("body.1=", "expected TARGET=SOURCE"),
    ("body.1==", "no text after '='"),
    ("header=media:", "no id after 'media:'"),
    ("header=file:", "no path after 'file:'"),
    ("buttons.0=sku", "'buttons.0' is not a template target"),
    ("button.x=sku", "'button.x' is not a template target"),
    ("button.01=sku", "'button.01' is not a template target"),
    ("card.0=sku", "'card.0' is not a template target"),
    ("header.1=title", "'header.1' is not a template target"),
    ("body.1 =first_name", "'body.1 ' is not a template target"),
], ids=["no-equals", "no-target", "no-source", "empty-literal", "empty-media-id", "empty-file", "plural",
        "non-numeric-index", "leading-zero", "card-alone", "header-index", "space"])
def test_parse_bind_refuses_a_bad_value_naming_it(text: str, detail: str) -> None:
    with pytest.raises(CampaignError, match=re.escape(f"--bind {text!r}: {detail}")):
        parse_bind(text)


@pytest.mark.parametrize("source", [column("sku"), literal("x"), Source(SourceKind.LINK, "https://a.test/b.jpg"),
                                    Source(SourceKind.MEDIA_ID, "123"), Source(SourceKind.FILE, "a.jpg")],
                         ids=lambda source: source.kind.value)
def test_a_source_round_trips_through_json(source: Source) -> None:
    assert Source.from_json(source.as_json()) == source


def test_a_source_is_json_of_one_key_named_for_its_kind() -> None:
    assert Source(SourceKind.MEDIA_ID, "123").as_json() == {"media_id": "123"}


@pytest.mark.parametrize("data", [{}, {"colour": "red"}, {"column": "a", "literal": "b"}])
def test_a_source_from_json_of_another_shape_is_refused(data: dict[str, str]) -> None:
    with pytest.raises(CampaignError, match="a bound source is one of"):
        Source.from_json(data)


# --- from_options and columns -----------------------------------------------------------------

def test_param_is_shorthand_for_body_1_body_2_and_header_image_for_header() -> None:
    binding = from_options(["button.0=sku"], ["first_name", "order_id"], "image", "https://cdn.example.com/a.jpg")
    assert binding == {"header": Source(SourceKind.LINK, "https://cdn.example.com/a.jpg"),
                       "body.1": column("first_name"), "body.2": column("order_id"), "button.0": column("sku")}
    assert list(binding) == ["header", "body.1", "body.2", "button.0"]


def test_binds_keep_the_order_they_were_given() -> None:
    assert list(from_options(["button.0=sku", "header=media:1", "body.1=name"])) == ["button.0", "header", "body.1"]


def test_the_header_shorthand_is_a_link_even_when_it_is_not_one() -> None:
    binding = from_options([], header_type="image", header_link="cat.jpg")
    assert binding == {"header": Source(SourceKind.LINK, "cat.jpg")}
    with pytest.raises(CampaignError, match=re.escape("promo_image: header (image) is not an http(s) link")):
        check(PROMO_IMAGE, {**PROMO_BOUND, **binding})


@pytest.mark.parametrize(("binds", "params", "header_link", "message"), [
    (["body.1=a", "body.1=b"], [], None, "body.1 is bound twice: by --bind body.1=a and by --bind body.1=b"),
    (["body.1=b"], ["a"], None, "body.1 is bound twice: by --param a and by --bind body.1=b"),
    (["header=media:1"], [], "https://cdn.example.com/a.jpg",
     "header is bound twice: by --header-image https://cdn.example.com/a.jpg and by --bind header=media:1"),
], ids=["two-binds", "param-and-bind", "header-and-bind"])
def test_a_target_given_twice_is_refused(binds: list[str], params: list[str], header_link: str | None,
                                         message: str) -> None:
    with pytest.raises(CampaignError, match=re.escape(message)):
        from_options(binds, params, "image", header_link)


def test_an_empty_param_column_is_refused() -> None:
    with pytest.raises(CampaignError, match="--param: a column name is empty"):
        from_options([], ["first_name", ""])


def test_columns_are_the_column_sources_in_order_without_repeats() -> None:
    binding = from_options(["card.0.body.1=name", "button.1==yes", "header=file:a.jpg", "button.0=sku"], ["name", "city"])
    assert columns(binding) == ["name", "city", "sku"]


# --- check ------------------------------------------------------------------------------------

def test_check_accepts_a_binding_of_every_required_target() -> None:
    check(PROMO_IMAGE, PROMO_BOUND)


def test_optional_targets_may_be_left_unbound() -> None:
    check(template("auth", BODY_1, OTP), {"body.1": column("code")})
    check(template("promo", BODY_1, QUICK_REPLY), {"body.1": column("name")})


@pytest.mark.parametrize("source", [column("image_url"), Source(SourceKind.MEDIA_ID, "123"), Source(SourceKind.FILE, "a.jpg"),
                                    Source(SourceKind.LINK, "https://cdn.example.com/a.jpg")],
                         ids=lambda source: source.kind.value)
def test_a_media_header_takes_a_column_a_link_a_media_id_or_a_file(source: Source) -> None:
    check(PROMO_IMAGE, {**PROMO_BOUND, "header": source})


def test_media_kinds_that_agree_with_the_header_pass_and_absent_ones_are_not_checked() -> None:
    bound = {**PROMO_BOUND, "header": Source(SourceKind.FILE, "a.jpg")}
    check(PROMO_IMAGE, bound, media_kinds={"header": Kind.IMAGE})
    check(PROMO_IMAGE, bound, media_kinds={})


@pytest.mark.parametrize(("info", "binding", "media_kinds", "message"), [
    (PROMO_IMAGE, {k: v for k, v in PROMO_BOUND.items() if k != "button.0"}, None,
     "promo_image: button.0 (url suffix) is not bound"),
    (PROMO_IMAGE, {**PROMO_BOUND, "button.3": column("x")}, None,
     "promo_image: button.3 is not in the template (it has: header(image) body.1 button.0(url))"),
    (template("hello_world"), {"body.1": column("name")}, None,
     "hello_world: body.1 is not in the template (it has no variables)"),
    (PROMO_IMAGE, {**PROMO_BOUND, "header": Source(SourceKind.FILE, "a.mp4")}, {"header": Kind.VIDEO},
     "promo_image: header is an image, and --bind header gives a video"),
    (PROMO_IMAGE, {**PROMO_BOUND, "header": literal("a.jpg")}, None,
     "promo_image: header (image) takes a link, a media id or a file, not a literal"),
    (PROMO_IMAGE, {**PROMO_BOUND, "body.1": Source(SourceKind.LINK, "https://a.test/")}, None,
     "promo_image: body.1 (text) takes a column or a literal, not a link"),
    (PROMO_IMAGE, {**PROMO_BOUND, "button.0": Source(SourceKind.MEDIA_ID, "1")}, None,
     "promo_image: button.0 (url suffix) takes a column or a literal, not a media id"),
    (template("coupon", COPY_CODE), {"button.0": literal("X" * 16)}, None,
     "coupon: button.0 (copy code) is 16 characters; Meta allows 15"),
    (template("promo", BODY_1), {"body.1": literal("two\nlines")}, None,
     "promo: body.1 (text) has a newline, a tab or more than four spaces in a row"),
    (template("sale", OFFER), {"offer": literal("tomorrow")}, None,
     "sale: offer (offer expiry) is not an ISO 8601 time with a UTC offset"),
], ids=["unbound", "not-in-template", "no-variables", "media-kind", "literal-for-media", "link-for-text",
        "media-id-for-url", "literal-too-long", "literal-with-newline", "literal-not-a-time"])
def test_check_refuses_with_one_line_naming_the_template_and_the_target(
        info: TemplateInfo, binding: dict[str, Source], media_kinds: dict[str, Kind] | None, message: str) -> None:
    with pytest.raises(CampaignError, match=f"^{re.escape(message)}"):
        check(info, binding, media_kinds=media_kinds)


# --- choose -----------------------------------------------------------------------------------

WABA = [template("promo_image", language="en_US"), template("promo_image", language="es", status="PAUSED"),
        template("other", language="de")]


def test_choose_picks_the_approved_template_in_the_language() -> None:
    assert choose(WABA, "promo_image", "en_US") is WABA[0]


@pytest.mark.parametrize(("name", "language", "message"), [
    ("missing", "en_US", "template 'missing' does not exist in this WhatsApp Business Account"),
    ("promo_image", "de", "template 'promo_image' has no de version (it has: en_US, es)"),
    ("promo_image", "es", "template 'promo_image' [es] is PAUSED, not APPROVED"),
], ids=["no-such-name", "no-such-language", "not-approved"])
def test_choose_refuses_naming_what_is_wrong(name: str, language: str, message: str) -> None:
    with pytest.raises(CampaignError, match=f"^{re.escape(message)}$"):
        choose(WABA, name, language)


# --- value_problem ----------------------------------------------------------------------------

WHITESPACE_PROBLEM = "has a newline, a tab or more than four spaces in a row"


@pytest.mark.parametrize(("target", "value", "problem"), [
    (HEADER_TEXT, "x" * 60, None),
    (HEADER_TEXT, "x" * 61, "is 61 characters; Meta allows 60"),
    (BODY_1, "x" * 1024, None),
    (BODY_1, "x" * 1025, "is 1025 characters; Meta allows 1024"),
    (BODY_1, "a    b", None),
    (BODY_1, "a     b", WHITESPACE_PROBLEM),
    (BODY_1, "a\nb", WHITESPACE_PROBLEM),
    (BODY_1, "a\r\nb", WHITESPACE_PROBLEM),
    (BODY_1, "a\tb", WHITESPACE_PROBLEM),
    (BODY_1, "", "is empty"),
    (BODY_1, "   ", "is empty"),
    (COPY_CODE, "C" * 15, None),
    (COPY_CODE, "C" * 16, "is 16 characters; Meta allows 15"),
    (COPY_CODE, "FALL\t25", WHITESPACE_PROBLEM),
    (OTP, "1" * 15, None),
    (OTP, "1" * 16, "is 16 characters; Meta allows 15"),
    (URL_BUTTON, "s" * URL_SUFFIX_MAX, None),
    (URL_BUTTON, "s" * (URL_SUFFIX_MAX + 1), "makes the link 2001 characters; Meta allows 2000"),
    (URL_BUTTON, "red dress     x", WHITESPACE_PROBLEM),
    (QUICK_REPLY, "P" * 256, None),
    (QUICK_REPLY, "P" * 257, "is 257 characters; Meta allows 256"),
    (QUICK_REPLY, "STOP\n", WHITESPACE_PROBLEM),
    (HEADER_IMAGE, "https://cdn.example.com/a.jpg", None),
    (HEADER_IMAGE, "http://cdn.example.com/a.jpg", None),
    (HEADER_IMAGE, "ftp://cdn.example.com/a.jpg", "is not an http(s) link"),
    (HEADER_IMAGE, "a.jpg", "is not an http(s) link"),
    (HEADER_IMAGE, "https://", "is not an http(s) link"),
    (OFFER, "2026-12-31T23:59:00+01:00", None),
    (OFFER, "2026-12-31T23:59:00Z", None),
    (OFFER, "2026-12-31T23:59:00", "is not an ISO 8601 time with a UTC offset, e.g. 2026-12-31T23:59:00+01:00"),
    (OFFER, "next friday", "is not an ISO 8601 time with a UTC offset, e.g. 2026-12-31T23:59:00+01:00"),
], ids=["header-60", "header-61", "body-1024", "body-1025", "four-spaces", "five-spaces", "newline", "crlf", "tab",
        "empty", "blank", "coupon-15", "coupon-16", "coupon-tab", "otp-15", "otp-16", "url-2000", "url-2001",
        "url-spaces", "payload-256", "payload-257", "payload-newline", "https", "http", "ftp", "bare-name",
        "no-host", "offer-offset", "offer-z", "offer-naive", "offer-words"])
def test_value_problem_is_what_meta_would_refuse(target: Target, value: str, problem: str | None) -> None:
    assert value_problem(target, value) == problem


def test_a_flow_token_is_not_held_to_the_text_whitespace_rule() -> None:
    assert value_problem(Target("button.0", Kind.FLOW, required=False), "token     with spaces") is None


def test_whitespace_is_the_text_rule_as_one_regex() -> None:
    assert [bool(WHITESPACE.search(v)) for v in ("a    b", "a     b", "a\nb", "a\tb", "plain")] == [
        False, True, True, True, False]


def test_an_offer_expiry_is_sent_as_unix_milliseconds() -> None:
    assert expiration_ms("2026-01-01T00:00:00Z") == 1767225600000
    assert expiration_ms("2026-01-01T01:00:00+01:00") == 1767225600000
    assert expiration_ms("2026-01-01") is None


@pytest.mark.parametrize(("kind", "words"), [
    (Kind.TEXT, "text"), (Kind.IMAGE, "image"), (Kind.VIDEO, "video"), (Kind.DOCUMENT, "document"),
    (Kind.LOCATION, "location"), (Kind.URL, "url suffix"), (Kind.COPY_CODE, "copy code"),
    (Kind.QUICK_REPLY, "quick-reply payload"), (Kind.OTP, "otp code"), (Kind.FLOW, "flow token"),
    (Kind.OFFER, "offer expiry"),
])
def test_what_names_each_kind_in_words(kind: Kind, words: str) -> None:
    assert what(Target("x", kind)) == words


def test_which_names_a_target_as_messages_do() -> None:
    assert which(URL_BUTTON) == "button.0 (url suffix)"
