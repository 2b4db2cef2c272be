"""The template registry the sandbox is configured with, and how it is shown by the Graph API.

A send names a template by name and language; Meta accepts it only when that exact pair exists
and is APPROVED, and only with the parameters its parts ask for: header, body, buttons, a
limited-time offer's expiration, each carousel card's. ``Template.shape`` reads a definition
(as ``GET /{waba-id}/message_templates`` shows it, whatsapp-templates.md §1) into what a send
must carry; ``rules`` holds a send against it.
"""
from __future__ import annotations

import copy
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

# {{1}} for POSITIONAL templates, {{first_name}} for NAMED ones.
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")

CATEGORIES = ("MARKETING", "UTILITY", "AUTHENTICATION")
# whatsapp-templates.md §1; each is also a message_template_status_update event (plus REINSTATED and
# UNARCHIVED, after which the template is APPROVED again).
STATUSES = ("APPROVED", "PENDING", "REJECTED", "PAUSED", "DISABLED", "IN_APPEAL", "FLAGGED", "PENDING_DELETION",
            "DELETED", "LIMIT_EXCEEDED", "ARCHIVED", "LOCKED")
SENDABLE_STATUSES = ("APPROVED", "FLAGGED")  # FLAGGED: still sendable, at risk of a pause
STATUS_AFTER_EVENT = {"REINSTATED": "APPROVED", "UNARCHIVED": "APPROVED", **{s: s for s in STATUSES}}
MEDIA_FORMATS = ("IMAGE", "VIDEO", "DOCUMENT")
# Where Meta keeps an OTP button: created as OTP, stored and listed as a URL button to this page.
OTP_URL_MARK = "whatsapp.com/otp/code/"


def placeholders(text: str | None) -> list[str]:
    """The distinct placeholder names in ``text``, in order of first appearance."""
    seen: dict[str, None] = {}
    for match in _PLACEHOLDER.finditer(text or ""):
        seen.setdefault(match.group(1), None)
    return list(seen)


@dataclass(frozen=True, slots=True)
class Button:
    """One button of a definition, as a send must address it (``index`` is its 0-based position)."""

    index: int
    type: str  # the definition's type: URL, QUICK_REPLY, COPY_CODE, PHONE_NUMBER, FLOW, ...; OTP for OTP pages
    sub_type: str  # what a send's ``{"type": "button", "sub_type": ...}`` must say for it
    takes: str | None  # the one parameter type it takes: text, payload, coupon_code, action; None = none
    required: bool  # a send must carry a component for it
    url: str | None = None  # URL buttons: the definition's URL, with ``{{1}}`` when dynamic

    def url_with(self, suffix: str) -> str:
        """The URL a dynamic URL (or OTP) button opens with ``suffix`` in place of its variable."""
        return _PLACEHOLDER.sub(lambda _: suffix, self.url or "")


@dataclass(frozen=True, slots=True)
class Shape:
    """What a send of a template (or of one carousel card) must carry, read once from its components."""

    header_format: str | None  # TEXT, IMAGE, VIDEO, DOCUMENT, LOCATION, PRODUCT; None without a header
    header_params: list[str]  # placeholders of a TEXT header
    body_params: list[str]  # distinct placeholders of the body, in order of first appearance
    body_only: bool  # nothing but a body: Meta allows longer body parameters (whatsapp-templates.md §3)
    buttons: tuple[Button, ...] = ()
    offer_expires: bool | None = None  # LIMITED_TIME_OFFER: its has_expiration; None without an offer
    cards: tuple[Shape, ...] | None = None  # CAROUSEL cards; None without a carousel


def _button(index: int, button: dict[str, Any]) -> Button:
    kind = str(button.get("type", "")).upper()
    url = button.get("url") if isinstance(button.get("url"), str) else None
    if kind == "OTP" or (kind == "URL" and url is not None and OTP_URL_MARK in url):
        return Button(index, "OTP", "url", "text", True, url)
    if kind == "URL":
        dynamic = bool(placeholders(url))
        return Button(index, kind, "url", "text" if dynamic else None, dynamic, url)
    if kind == "QUICK_REPLY":
        return Button(index, kind, "quick_reply", "payload", False)
    if kind == "COPY_CODE":
        return Button(index, kind, "copy_code", "coupon_code", True)
    if kind in ("FLOW", "CATALOG", "MPM", "SPM"):
        return Button(index, kind, kind.lower(), "action", kind in ("MPM", "SPM"))
    return Button(index, kind, kind.lower(), None, False)  # PHONE_NUMBER, VOICE_CALL: nothing to send


def read_shape(components: list[dict[str, Any]]) -> Shape:
    """Read a template's (or a carousel card's) components as what a send must carry."""
    by_type = {str(c.get("type", "")).upper(): c for c in reversed(components) if isinstance(c, dict)}
    header, body = by_type.get("HEADER"), by_type.get("BODY")
    header_format = str(header.get("format", "TEXT")).upper() if header else None
    items = by_type.get("BUTTONS", {}).get("buttons")
    offer_expires = None
    if "LIMITED_TIME_OFFER" in by_type:
        offer = by_type["LIMITED_TIME_OFFER"].get("limited_time_offer")
        offer_expires = isinstance(offer, dict) and bool(offer.get("has_expiration"))
    cards = by_type.get("CAROUSEL", {}).get("cards")
    return Shape(
        header_format=header_format,
        header_params=placeholders(header.get("text")) if header and header_format == "TEXT" else [],
        body_params=placeholders(body.get("text")) if body else [],
        body_only=set(by_type) <= {"BODY"},
        buttons=tuple(_button(i, b) for i, b in enumerate(items if isinstance(items, list) else [])
                      if isinstance(b, dict)),
        offer_expires=offer_expires,
        cards=(tuple(read_shape(c.get("components") or []) for c in cards if isinstance(c, dict))
               if isinstance(cards, list) else None),
    )


@dataclass(slots=True)
class Template:
    """One message template as Meta stores it (a name exists once per language)."""

    name: str
    language: str
    category: str = "UTILITY"
    status: str = "APPROVED"
    components: list[dict[str, Any]] = field(default_factory=list)
    parameter_format: str = "POSITIONAL"
    id: str = ""
    _cache: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.category = self.category.upper()
        self.status = self.status.upper()
        self.parameter_format = self.parameter_format.upper()
        if self.category not in CATEGORIES:
            raise ValueError(f"template {self.name}: category must be one of {CATEGORIES}")
        if self.status not in STATUSES:
            raise ValueError(f"template {self.name}: status must be one of {STATUSES}")
        if not self.id:
            digest = hashlib.sha256(f"{self.name}/{self.language}".encode()).hexdigest()
            self.id = str(int(digest[:13], 16))

    def component(self, kind: str) -> dict[str, Any] | None:
        """The component of type ``kind`` (HEADER, BODY, FOOTER, BUTTONS), if any."""
        for component in self.components:
            if str(component.get("type", "")).upper() == kind:
                return component
        return None

    @property
    def body_params(self) -> list[str]:
        """Distinct placeholders of the BODY text: the body parameters a send must carry."""
        return self.shape.body_params

    @property
    def header_format(self) -> str | None:
        """TEXT, IMAGE, VIDEO, DOCUMENT or LOCATION when the template has a header."""
        return self.shape.header_format

    @property
    def header_params(self) -> list[str]:
        """Distinct placeholders of a TEXT header (counted apart from the body's)."""
        return self.shape.header_params

    @property
    def shape(self) -> Shape:
        """What a send must carry. Read once per components list: every send of the template asks."""
        cached = self._cache
        if cached is not None and cached[0] is self.components:
            return cached[1]
        shape = read_shape(self.components)
        self._cache = (self.components, shape)
        return shape

    def graph_json(self, fields: Iterable[str] | None = None) -> dict[str, Any]:
        """The template as ``GET /{waba-id}/message_templates`` lists it; ``id`` is always there."""
        full: dict[str, Any] = {
            "name": self.name,
            "parameter_format": self.parameter_format,
            "components": copy.deepcopy(self.components),
            "language": self.language,
            "status": self.status,
            "category": self.category,
            "id": self.id,
        }
        if fields is None:
            return full
        wanted = {f.strip() for f in fields if f.strip()}
        return {key: value for key, value in full.items() if key in wanted or key == "id"}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Template:
        """Build from a config-file entry (the same keys as the Graph API's template object)."""
        known = {"name", "language", "category", "status", "components", "parameter_format", "id"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"template {data.get('name')!r}: unknown keys {sorted(unknown)}")
        if not data.get("name") or not data.get("language"):
            raise ValueError("a template needs a name and a language")
        return cls(**{key: data[key] for key in data if key in known})


class TemplateRegistry:
    """Templates by (name, language); the sandbox's stand-in for a WABA's template library."""

    def __init__(self, templates: Iterable[Template] = ()) -> None:
        self._by_key: dict[tuple[str, str], Template] = {}
        for template in templates:
            self.put(template)

    def put(self, template: Template) -> None:
        """Add or replace the template with that name and language."""
        self._by_key[(template.name, template.language)] = template

    def get(self, name: str, language: str) -> Template | None:
        """The template of that exact name and language, whatever its status."""
        return self._by_key.get((name, language))

    def search(self, name: str | None = None, status: str | None = None,
               language: str | None = None, category: str | None = None) -> list[Template]:
        """Templates whose name contains ``name`` (Meta's filter is a partial match), in a stable order."""
        found = []
        for template in self._by_key.values():
            if name and name.lower() not in template.name.lower():
                continue
            if status and template.status != status.upper():
                continue
            if language and template.language != language:
                continue
            if category and template.category != category.upper():
                continue
            found.append(template)
        return sorted(found, key=lambda t: (t.name, t.language))

    def __iter__(self):
        return iter(sorted(self._by_key.values(), key=lambda t: (t.name, t.language)))

    def __len__(self) -> int:
        return len(self._by_key)


def _carousel_card(k: int, item: str, price: str, slug: str) -> dict[str, Any]:
    """One card of ``spring_carousel``: every card of a carousel has the same parts (§1)."""
    return {"components": [
        {"type": "HEADER", "format": "IMAGE",
         "example": {"header_handle": [f"https://scontent.whatsapp.net/v/t61.29466-34/card_{k}.jpg"]}},
        {"type": "BODY", "text": item + ", now {{1}}.", "example": {"body_text": [[price]]}},
        {"type": "BUTTONS", "buttons": [
            {"type": "QUICK_REPLY", "text": "Buy"},
            {"type": "URL", "text": "View", "url": "https://shop.example.com/p/{{1}}",
             "example": [f"https://shop.example.com/p/{slug}"]}]},
    ]}


def default_templates() -> list[Template]:
    """A registry that lets ``campaign sandbox`` run a campaign at once (INTERFACE.md)."""
    return [
        Template("hello_world", "en_US", "UTILITY", components=[
            {"type": "HEADER", "format": "TEXT", "text": "Hello World"},
            {"type": "BODY", "text": "Welcome and congratulations!! This message demonstrates your ability "
                                     "to send a WhatsApp message notification from the Cloud API, hosted by "
                                     "Meta. Thank you for taking the time to test with us."},
            {"type": "FOOTER", "text": "WhatsApp Business Platform sample message"},
        ]),
        Template("order_update", "en_US", "UTILITY", components=[
            {"type": "BODY", "text": "Hello {{1}}, your order {{2}} has shipped and is on its way.",
             "example": {"body_text": [["Ana", "A-1042"]]}},
            {"type": "FOOTER", "text": "Reply STOP to stop these updates"},
        ]),
        Template("shipping_notice", "en_US", "UTILITY", components=[
            {"type": "HEADER", "format": "TEXT", "text": "Order {{1}}",
             "example": {"header_text": ["A-1042"]}},
            {"type": "BODY", "text": "Hi {{1}}, your parcel arrives on {{2}}.",
             "example": {"body_text": [["Ana", "12 May"]]}},
        ]),
        Template("appointment_reminder", "en_US", "UTILITY", parameter_format="NAMED", components=[
            {"type": "BODY", "text": "Hi {{first_name}}, see you on {{date}}.",
             "example": {"body_text_named_params": [
                 {"param_name": "first_name", "example": "Ana"},
                 {"param_name": "date", "example": "12 May"}]}},
        ]),
        Template("spring_sale", "en_US", "MARKETING", components=[
            {"type": "BODY", "text": "Hi {{1}}, our spring sale starts today: 20% off everything.",
             "example": {"body_text": [["Ana"]]}},
            {"type": "FOOTER", "text": "Not interested? Tap Stop promotions"},
            {"type": "BUTTONS", "buttons": [{"type": "QUICK_REPLY", "text": "Stop promotions"}]},
        ]),
        Template("new_arrivals", "en_US", "MARKETING", components=[
            {"type": "HEADER", "format": "IMAGE",
             "example": {"header_handle": ["https://example.com/new-arrivals.jpg"]}},
            {"type": "BODY", "text": "Hi {{1}}, new arrivals are in. Come and have a look!",
             "example": {"body_text": [["Ana"]]}},
        ]),
        Template("winter_promo", "en_US", "MARKETING", status="PENDING", components=[
            {"type": "BODY", "text": "Hi {{1}}, winter deals are coming.",
             "example": {"body_text": [["Ana"]]}},
        ]),
        # One template of each kind of part a send can bind (whatsapp-templates.md §1).
        Template("promo_image", "en_US", "MARKETING", components=[
            {"type": "HEADER", "format": "IMAGE",
             "example": {"header_handle": ["https://scontent.whatsapp.net/v/t61.29466-34/promo_image.jpg"]}},
            {"type": "BODY", "text": "Hi {{1}}, our new collection is in. Tap below to see what we picked for you.",
             "example": {"body_text": [["Ana"]]}},
            {"type": "FOOTER", "text": "Not interested? Tap Stop promotions"},
            {"type": "BUTTONS", "buttons": [
                {"type": "URL", "text": "See your picks", "url": "https://shop.example.com/o/{{1}}",
                 "example": ["https://shop.example.com/o/A-1042"]},
                {"type": "QUICK_REPLY", "text": "Interested"},
                {"type": "QUICK_REPLY", "text": "Stop promotions"}]},
        ]),
        Template("coupon_offer", "en_US", "MARKETING", components=[
            {"type": "LIMITED_TIME_OFFER", "limited_time_offer": {"text": "Expiring offer!", "has_expiration": True}},
            {"type": "BODY", "text": "Good news, {{1}}! Use the code below for 25% off everything.",
             "example": {"body_text": [["Ana"]]}},
            {"type": "BUTTONS", "buttons": [
                {"type": "COPY_CODE", "text": "Copy offer code", "example": "SAVE25"},
                {"type": "URL", "text": "Shop now", "url": "https://shop.example.com/o/{{1}}",
                 "example": ["https://shop.example.com/o/SAVE25"]}]},
        ]),
        # OTP buttons are created with otp_type but stored, and listed, as URL buttons.
        Template("login_code", "en_US", "AUTHENTICATION", components=[
            {"type": "BODY", "text": "*{{1}}* is your verification code."},
            {"type": "BUTTONS", "buttons": [
                {"type": "URL", "text": "Copy code",
                 "url": "https://www.whatsapp.com/otp/code/?otp_type=COPY_CODE&code=otp{{1}}"}]},
        ]),
        Template("spring_carousel", "en_US", "MARKETING", components=[
            {"type": "BODY", "text": "Hi {{1}}, spring is here. Swipe to see this season's favourites.",
             "example": {"body_text": [["Ana"]]}},
            {"type": "CAROUSEL", "cards": [_carousel_card(0, "Rain jacket", "$49", "rain-jacket"),
                                           _carousel_card(1, "Linen shirt", "$29", "linen-shirt")]},
        ]),
        Template("named_welcome", "en_US", "UTILITY", parameter_format="NAMED", components=[
            {"type": "HEADER", "format": "TEXT", "text": "Hi {{first_name}}",
             "example": {"header_text_named_params": [{"param_name": "first_name", "example": "Ana"}]}},
            {"type": "BODY", "text": "Welcome, {{first_name}}! Your order {{order_id}} is confirmed.",
             "example": {"body_text_named_params": [{"param_name": "first_name", "example": "Ana"},
                                                    {"param_name": "order_id", "example": "A-1042"}]}},
            {"type": "BUTTONS", "buttons": [
                {"type": "URL", "text": "Help center", "url": "https://shop.example.com/help"},
                {"type": "PHONE_NUMBER", "text": "Call us", "phone_number": "+15550783881"}]},
        ]),
        Template("order_doc", "en_US", "UTILITY", components=[
            {"type": "HEADER", "format": "DOCUMENT",
             "example": {"header_handle": ["https://scontent.whatsapp.net/v/t61.29466-34/invoice.pdf"]}},
            {"type": "BODY", "text": "Hi {{1}}, your invoice is attached.", "example": {"body_text": [["Ana"]]}},
        ]),
        Template("store_location", "en_US", "UTILITY", components=[
            {"type": "HEADER", "format": "LOCATION"},
            {"type": "BODY", "text": "Your order is ready for pickup at our store."},
        ]),
        Template("flash_sale", "en_US", "MARKETING", status="PAUSED", components=[
            {"type": "BODY", "text": "Hi {{1}}, flash sale: 2 hours only!", "example": {"body_text": [["Ana"]]}},
        ]),
    ]
