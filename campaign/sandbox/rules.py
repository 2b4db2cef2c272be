"""Meta's rules for a send: request validation, throughput, pair rate and the 24-hour window.

Pure: no I/O, and every time is passed in (``now``), so each rule is tested directly.
Validation follows the order Meta reports problems in: shape (100), then the template
(132001 / 132015 / 132016), then its parameters part by part: header, body, limited-time
offer, buttons, carousel cards (132000 / 132012 / 131008 / 132018 / 132005; the table is above
``_collect``). Media links and ids are judged later, when the accepted message "leaves"
(131053 by status webhook), as on Meta.
"""
from __future__ import annotations

import hashlib
import json
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from campaign.sandbox import meta_errors
from campaign.sandbox.meta_errors import MetaError
from campaign.sandbox.recipients import canonical_wa_id, wa_id_of_user
from campaign.sandbox.templates import MEDIA_FORMATS, SENDABLE_STATUSES, Button, Shape, Template, TemplateRegistry

MESSAGE_TYPES = ("text", "image", "audio", "video", "document", "sticker", "location", "contacts",
                 "interactive", "template", "reaction")
MEDIA_TYPES = ("image", "audio", "video", "document", "sticker")
TEXT_BODY_MAX = 4096
CALLBACK_DATA_MAX_BYTES = 256
Media = tuple[str, str]  # ("id", media id) or ("link", URL): what Meta fetches once it accepted a send


@dataclass(frozen=True, slots=True)
class SendRequest:
    """A send that passed validation: what the limits and the webhook plan need to know."""

    to: str  # the input: the phone number in ``to``, or the BSUID in ``recipient``
    wa_id: str  # the person, whichever field named them: limits, window and rules key on it
    type: str
    template: Template | None
    callback_data: str | None
    content_key: bytes  # same recipient + same content_key = the same message sent again
    # The media Meta must fetch after accepting: ("id", media id) or ("link", URL), in send order.
    media: tuple[Media, ...] = ()
    user_id: str | None = None  # the BSUID of a send addressed by ``recipient`` (None: by ``to``)

    @property
    def free_form(self) -> bool:
        """Anything but a template needs an open 24-hour window."""
        return self.template is None

    @property
    def category(self) -> str:
        """Pricing category: the template's, lowercased; ``service`` for free-form messages."""
        return self.template.category.lower() if self.template else "service"


@dataclass(frozen=True, slots=True)
class RequestSummary:
    """Best-effort fields of any request body, valid or not, for the ledger."""

    to: str | None
    type: str | None
    template_name: str | None
    template_language: str | None
    callback_data: str | None
    components: list[Any] | None = None  # the template's components as sent (a reference, not a copy)
    # What ``recipient`` gave when ``to`` is absent (``to`` wins): a BSUID, or the str of whatever else.
    recipient: str | None = None


def summarize(payload: Any) -> RequestSummary:
    """Pick the ledger's fields out of a parsed body without judging it."""
    if not isinstance(payload, dict):
        return RequestSummary(None, None, None, None, None)
    to = payload.get("to")
    kind = payload.get("type", "text" if "text" in payload else None)
    template = payload.get("template") if isinstance(payload.get("template"), dict) else {}
    language = template.get("language") if isinstance(template.get("language"), dict) else {}
    callback = payload.get("biz_opaque_callback_data")
    components = template.get("components")
    recipient = payload.get("recipient") if not to else None
    return RequestSummary(
        to if isinstance(to, str) else None,
        kind if isinstance(kind, str) else None,
        template.get("name") if isinstance(template.get("name"), str) else None,
        language.get("code") if isinstance(language.get("code"), str) else None,
        callback if isinstance(callback, str) else None,
        components if isinstance(components, list) else None,
        None if recipient is None else str(recipient),
    )


def validate_send(payload: Any, registry: TemplateRegistry, rewrite_wa_ids: bool = True) -> SendRequest | MetaError:
    """Check a ``/messages`` body as Meta does; return the accepted request or the error to answer.

    Without ``to`` the user may be named by BSUID in ``recipient`` (whatsapp-usernames.md §3): the
    send goes to the person the sandbox's BSUID stands for, except an authentication template (131062)."""
    if not isinstance(payload, dict):
        return meta_errors.invalid_parameter("The request body must be a JSON object.")
    product = payload.get("messaging_product")
    if product is None:
        return meta_errors.invalid_parameter("The parameter messaging_product is required.",
                                             "(#100) The parameter messaging_product is required.")
    if product != "whatsapp":
        return meta_errors.invalid_parameter(f'Param messaging_product must be one of {{WHATSAPP}} - got "{product}".')
    recipient_type = payload.get("recipient_type", "individual")
    if recipient_type not in ("individual", "group"):
        return meta_errors.invalid_parameter(
            f'Param recipient_type must be one of {{INDIVIDUAL, GROUP}} - got "{recipient_type}".')
    to = payload.get("to")
    user_id: str | None = None
    if to is None or to == "":
        if payload.get("recipient") is None:
            return meta_errors.invalid_parameter("The parameter to is required.",
                                                 "(#100) The parameter to is required.")
        # ``recipient`` counts only without ``to`` (Meta: both given, ``to`` wins): the phone
        # hot path never looks at it.
        to = user_id = payload["recipient"]
        wa_id = _person_of_user_id(user_id, recipient_type)
        if isinstance(wa_id, MetaError):
            return wa_id
    elif not isinstance(to, str) or not any(ch.isdigit() for ch in to):
        return meta_errors.invalid_parameter("Param to must be a phone number.")
    else:
        wa_id = canonical_wa_id(to, rewrite_wa_ids)
    # Meta documents `type` as optional with `text` as the default.
    kind = payload.get("type", "text")
    if kind not in MESSAGE_TYPES:
        return meta_errors.invalid_parameter(f"Param type must be one of {{{', '.join(MESSAGE_TYPES).upper()}}} "
                                             f'- got "{kind}".')
    obj = payload.get(kind)
    if not isinstance(obj, (dict, list)) or (kind != "contacts" and not isinstance(obj, dict)):
        return meta_errors.invalid_parameter(f"The parameter {kind} is required.",
                                             f"(#100) The parameter {kind} is required.")
    callback = payload.get("biz_opaque_callback_data")
    if callback is not None:
        if not isinstance(callback, str):
            return meta_errors.invalid_parameter("Param biz_opaque_callback_data must be a string.")
        if len(callback.encode("utf-8")) > CALLBACK_DATA_MAX_BYTES:
            return meta_errors.invalid_parameter(
                f"Param biz_opaque_callback_data must be at most {CALLBACK_DATA_MAX_BYTES} characters long.")
    context = payload.get("context")
    if context is not None and not (isinstance(context, dict) and isinstance(context.get("message_id"), str)):
        return meta_errors.invalid_parameter("The parameter context['message_id'] is required.")

    template: Template | None = None
    media: tuple[Media, ...] = ()
    if kind == "text":
        problem = _check_text_message(obj)
    elif kind == "template":
        found = _check_template(obj, registry)
        if isinstance(found, MetaError):
            return found
        template, problem = found[0], None
        if found[1]:
            media = tuple(found[1])
    else:
        problem = _check_other(kind, obj)
        if problem is None and kind in MEDIA_TYPES:
            media = (("link", obj["link"]) if isinstance(obj.get("link"), str) else ("id", obj["id"]),)
    if problem is not None:
        return problem
    if user_id is not None and template is not None and template.category == "AUTHENTICATION":
        return meta_errors.bsuid_not_supported()
    return SendRequest(to=to, wa_id=wa_id, type=kind, template=template, callback_data=callback,
                       content_key=_content_key(kind, obj), media=media, user_id=user_id)


def _person_of_user_id(user_id: Any, recipient_type: Any) -> str | MetaError:
    """The wa_id of the user a ``recipient`` names; code 100 for anything but an individual
    named by a BSUID the sandbox issued (``recipient_type: business_scoped_user_id`` is refused
    even so, as field reports say Meta does: whatsapp-usernames.md §3)."""
    if recipient_type != "individual":
        return meta_errors.invalid_parameter(
            f'Param recipient_type must be INDIVIDUAL for a recipient - got "{recipient_type}".')
    wa_id = wa_id_of_user(user_id) if isinstance(user_id, str) else None
    if wa_id is None:
        return meta_errors.invalid_parameter(
            f"Param recipient must be the business-scoped user ID of a WhatsApp user - got {user_id!r}.")
    return wa_id


def _content_key(kind: str, obj: Any) -> bytes:
    canonical = json.dumps([kind, obj], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.blake2b(canonical.encode("utf-8"), digest_size=16).digest()


def _check_text_message(obj: dict[str, Any]) -> MetaError | None:
    body = obj.get("body")
    if not isinstance(body, str) or not body:
        return meta_errors.invalid_parameter("The parameter text['body'] is required.",
                                             "(#100) The parameter text['body'] is required.")
    if len(body) > TEXT_BODY_MAX:
        return meta_errors.invalid_parameter(f"Param text['body'] must be at most {TEXT_BODY_MAX} characters long.")
    if "preview_url" in obj and not isinstance(obj["preview_url"], bool):
        return meta_errors.invalid_parameter("Param text['preview_url'] must be a boolean.")
    return None


def _check_other(kind: str, obj: Any) -> MetaError | None:
    if kind in MEDIA_TYPES:
        if not (isinstance(obj.get("link"), str) or isinstance(obj.get("id"), str)):
            return meta_errors.invalid_parameter(f"Param {kind} must contain either 'link' or 'id'.")
    elif kind == "location":
        if not all(isinstance(obj.get(k), (int, float, str)) for k in ("latitude", "longitude")):
            return meta_errors.invalid_parameter("The parameters location['latitude'] and location['longitude'] are required.")
    elif kind == "interactive":
        if not isinstance(obj.get("type"), str) or not isinstance(obj.get("action"), dict):
            return meta_errors.invalid_parameter("The parameters interactive['type'] and interactive['action'] are required.")
    elif kind == "reaction":
        if not isinstance(obj.get("message_id"), str):
            return meta_errors.invalid_parameter("The parameter reaction['message_id'] is required.")
    elif kind == "contacts":
        if not isinstance(obj, list) or not obj:
            return meta_errors.invalid_parameter("Param contacts must be a non-empty array.")
    return None


# --- template sends (whatsapp-templates.md §2, §3) -------------------------------------------------
#
# A send is held against the template's shape (templates.Shape): each part the template has asks for
# its parameters, and parameters for a part it lacks are refused. Codes, as §3 and the field reports
# give them: a wrong count, a missing required component, a name that is not the template's or a
# button index it does not have: 132000; a parameter of the wrong kind (media type, sub_type,
# expiration not an integer): 132012; an empty text: 131008; a value breaking a rule (whitespace,
# a code too long, media without exactly one of id/link, parameters for a missing header, an OTP
# button not sent as url): 132018; a text over its length: 132005 (unverified).

COMPONENT_TYPES = ("header", "body", "button", "footer", "carousel", "limited_time_offer")
HEADER_PARAM_MAX = 60
BODY_PARAM_MAX = 1024
BODY_ONLY_PARAM_MAX = 32768  # a template with nothing but a body
URL_MAX = 2000  # the whole URL of a dynamic URL button, suffix included
PAYLOAD_MAX = 256  # quick-reply payload (the limit itself is unverified)
CODE_MAX = 15  # copy-code coupon and one-time password
WHITESPACE_DETAILS = "Param text cannot have new-line/tab characters or more than 4 consecutive spaces"
MISSING_TEXT_DETAILS = "Parameter of type text is missing text value"


class _Sent:
    """The parameters one send gave to a template (or to one carousel card), by part."""

    __slots__ = ("header", "body", "offer", "buttons", "cards")

    def __init__(self) -> None:
        self.header: list[dict[str, Any]] | None = None
        self.body: list[dict[str, Any]] | None = None
        self.offer: list[dict[str, Any]] | None = None
        self.buttons: list[dict[str, Any]] | None = None
        self.cards: list[Any] | None = None


def _collect(components: Any, name: str) -> _Sent | MetaError:
    """Sort a send's components (``name`` for errors) by part; malformed ones are code 100."""
    if not isinstance(components, list) or not all(isinstance(c, dict) for c in components):
        return meta_errors.invalid_parameter(f"Param {name} must be an array of objects.")
    sent = _Sent()
    for component in components:
        ctype = component.get("type")
        if not isinstance(ctype, str) or ctype.lower() not in COMPONENT_TYPES:
            return meta_errors.invalid_parameter(
                "Param template['components'][type] must be one of {HEADER, BODY, BUTTON, FOOTER}.")
        ctype = ctype.lower()
        if ctype == "carousel":
            cards = component.get("cards")
            if not isinstance(cards, list) or not all(isinstance(card, dict) for card in cards):
                return meta_errors.invalid_parameter("Param template['components'][carousel]['cards'] must be an "
                                                     "array of objects.")
            sent.cards = cards if sent.cards is None else sent.cards + cards
            continue
        params = component.get("parameters", [])
        if not isinstance(params, list) or not all(isinstance(p, dict) for p in params):
            return meta_errors.invalid_parameter("Param template['components'][parameters] must be an array of objects.")
        if ctype == "body":
            sent.body = params if sent.body is None else sent.body + params
        elif ctype == "header":
            sent.header = params if sent.header is None else sent.header + params
        elif ctype == "button":
            sent.buttons = [component] if sent.buttons is None else sent.buttons + [component]
        elif ctype == "limited_time_offer":
            sent.offer = params if sent.offer is None else sent.offer + params
    return sent


def _check_template(obj: dict[str, Any], registry: TemplateRegistry) -> tuple[Template, list[Media]] | MetaError:
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return meta_errors.invalid_parameter("The parameter template['name'] is required.",
                                             "(#100) The parameter template['name'] is required.")
    language = obj.get("language")
    code = language.get("code") if isinstance(language, dict) else None
    if not isinstance(code, str) or not code:
        return meta_errors.invalid_parameter("The parameter template['language']['code'] is required.",
                                             "(#100) The parameter template['language']['code'] is required.")
    sent = _collect(obj.get("components", []), "template['components']")  # code 100 before the template
    if isinstance(sent, MetaError):
        return sent

    template = registry.get(name, code)
    if template is not None and template.status == "PAUSED":
        return meta_errors.template_paused(name)
    if template is not None and template.status == "DISABLED":
        return meta_errors.template_disabled(name)
    if template is None or template.status not in SENDABLE_STATUSES:  # PENDING, REJECTED, DELETED, ...
        return meta_errors.template_not_found(name, code)

    media: list[Media] = []
    problem = _check_parts(template.shape, sent, template.parameter_format == "NAMED", media, "")
    return problem if problem is not None else (template, media)


def _check_parts(shape: Shape, sent: _Sent, named: bool, media: list[Media], where: str) -> MetaError | None:
    """Hold what was sent against one template's (or carousel card's) shape; ``where`` prefixes details."""
    problem = _check_header(shape, sent.header, named, media, where)
    if problem is None:
        limit = BODY_ONLY_PARAM_MAX if shape.body_only else BODY_PARAM_MAX
        problem = _check_params(where + "body", shape.body_params, sent.body or (), named, limit)
    if problem is None and (shape.offer_expires or sent.offer):
        problem = _check_offer(shape.offer_expires, sent.offer or (), where + "limited_time_offer")
    if problem is None and (shape.buttons or sent.buttons):
        problem = _check_buttons(shape.buttons, sent.buttons or (), where)
    if problem is None and (shape.cards is not None or sent.cards is not None):
        problem = _check_carousel(shape.cards, sent.cards, named, media, where + "carousel")
    return problem


def _check_header(shape: Shape, params: list[Any] | None, named: bool, media: list[Media],
                  where: str) -> MetaError | None:
    fmt = shape.header_format
    component = where + "header"
    if fmt is None:
        if params:
            return meta_errors.template_param_invalid(
                f"{component}: the template has no header, but {len(params)} header parameters were given")
        return None
    if fmt == "TEXT":
        for param in params or ():
            if param.get("type") not in ("text", "currency", "date_time"):
                return meta_errors.template_param_format(component, "TEXT", str(param.get("type", "UNKNOWN")).upper())
        return _check_params(component, shape.header_params, params or (), named, HEADER_PARAM_MAX)
    if not params:
        return meta_errors.template_param_format(component, fmt, "UNKNOWN")
    if len(params) != 1:
        return meta_errors.template_param_count(component, len(params), 1)
    param = params[0]
    wanted = fmt.lower()
    if param.get("type") != wanted:
        return meta_errors.template_param_format(component, fmt, str(param.get("type", "UNKNOWN")).upper())
    inner = param.get(wanted)
    if fmt == "LOCATION":
        if not (isinstance(inner, dict) and _coordinate(inner.get("latitude")) and _coordinate(inner.get("longitude"))):
            return meta_errors.template_param_invalid(f"{component}: location must contain latitude and longitude")
        return None
    if fmt in MEDIA_FORMATS:
        source = _media_source(inner)
        if source is None:
            return meta_errors.template_param_invalid(
                f"{component}: {wanted} must contain exactly one of 'link' or 'id'")
        media.append(source)
    return None  # PRODUCT, GIF: the type is all the sandbox checks


def _media_source(inner: Any) -> Media | None:
    """``("link", url)`` or ``("id", media id)`` when the media object names exactly one source."""
    if not isinstance(inner, dict):
        return None
    link, media_id = inner.get("link"), inner.get("id")
    if isinstance(media_id, int) and not isinstance(media_id, bool):
        media_id = str(media_id)  # Graph reads a number as the string it spells
    has_link = isinstance(link, str) and bool(link)
    has_id = isinstance(media_id, str) and bool(media_id)
    if has_link == has_id:
        return None
    return ("link", link) if has_link else ("id", media_id)


def _coordinate(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _check_params(component: str, expected: list[str], params: Any, named: bool, limit: int) -> MetaError | None:
    if len(params) != len(expected):
        return meta_errors.template_param_count(component, len(params), len(expected))
    if named:
        names = {p.get("parameter_name") for p in params}
        if names != set(expected):
            return meta_errors.template_param_count(component, len(names & set(expected)), len(expected))
    for index, param in enumerate(params, start=1):
        ptype = param.get("type")
        if ptype == "text":
            problem = _check_text(component, param.get("text"), limit)
            if problem is not None:
                return problem
        elif ptype in ("currency", "date_time"):
            if not isinstance(param.get(ptype), dict):
                return meta_errors.missing_parameter(f"{component}: parameter {index} {ptype} is missing.")
        else:
            return meta_errors.invalid_parameter(
                f"Param template['components'][{component}]['parameters'][{index - 1}]['type'] must be one of "
                "{TEXT, CURRENCY, DATE_TIME}.")
    return None


def _check_text(component: str, text: Any, limit: int | None) -> MetaError | None:
    """Every text parameter: not empty, no new-line, tab or run of five spaces, at most ``limit`` long."""
    if not isinstance(text, str) or not text.strip():
        return meta_errors.missing_parameter(MISSING_TEXT_DETAILS)
    if "\n" in text or "\t" in text or "     " in text:
        return meta_errors.template_param_invalid(WHITESPACE_DETAILS)
    if limit is not None and len(text) > limit:
        return meta_errors.template_text_too_long(
            f"{component}: a parameter is {len(text)} characters long, more than the {limit} allowed")
    return None


def _check_offer(expires: bool | None, params: Any, component: str) -> MetaError | None:
    expected = 1 if expires else 0
    if len(params) != expected:
        return meta_errors.template_param_count(component, len(params), expected)
    if expected:
        param = params[0]
        offer = param.get("limited_time_offer")
        value = offer.get("expiration_time_ms") if isinstance(offer, dict) else None
        if param.get("type") != "limited_time_offer" or not isinstance(value, int) or isinstance(value, bool):
            received = "MISSING" if value is None else type(value).__name__.upper()
            return meta_errors.template_param_format(component, "expiration_time_ms as an integer", received)
    return None


def _index(value: Any) -> int | None:
    """A button's ``index`` or a card's ``card_index``: an int, or a string of digits as Meta's SDK sends."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


def _check_buttons(defined: tuple[Button, ...], components: Any, where: str) -> MetaError | None:
    seen: set[int] = set()
    for component in components:
        index = _index(component.get("index"))
        if index is None or not 0 <= index < len(defined):
            return meta_errors.template_params_mismatch(
                f"{where}buttons: the template has no button at index {component.get('index')!r}")
        if index in seen:
            return meta_errors.template_params_mismatch(f"{where}buttons: button at index {index} is given twice")
        seen.add(index)
        button = defined[index]
        sub_type = component.get("sub_type")
        if not isinstance(sub_type, str) or sub_type.lower() != button.sub_type:
            if button.type == "OTP":  # a field report's code for this case (whatsapp-templates.md §3)
                return meta_errors.template_param_invalid(
                    f"{where}buttons[{index}]: a one-time password button must be sent with sub_type url")
            return meta_errors.template_param_format(f"{where}buttons[{index}]", button.sub_type.upper(),
                                                     str(sub_type).upper())
        problem = _check_button(button, component.get("parameters", []), f"{where}buttons[{index}]")
        if problem is not None:
            return problem
    for button in defined:
        if button.required and button.index not in seen:
            kind = "Url" if button.type == "OTP" else button.type.title().replace("_", "")  # Meta's wording
            return meta_errors.template_params_mismatch(
                f"{where}buttons: Button at index {button.index} of type {kind} requires a parameter")
    return None


def _check_button(button: Button, params: list[Any], component: str) -> MetaError | None:
    takes = button.takes
    if takes is None or not params:
        if params or button.required:
            return meta_errors.template_param_count(component, len(params), 0 if takes is None else 1)
        return None  # a quick reply, flow or catalog button may be left to its default
    if len(params) != 1:
        return meta_errors.template_param_count(component, len(params), 1)
    param = params[0]
    if param.get("type") != takes:
        return meta_errors.template_param_format(component, takes.upper(), str(param.get("type", "UNKNOWN")).upper())
    value = param.get(takes)
    if takes == "text":
        problem = _check_text(component, value, None)
        if problem is not None:
            return problem
        if button.type == "OTP":
            if len(value) > CODE_MAX:
                return meta_errors.template_param_invalid(f"{component}: the code is longer than {CODE_MAX} characters")
        elif button.url is not None and len(button.url_with(value)) > URL_MAX:
            return meta_errors.template_text_too_long(f"{component}: the URL with its suffix is longer than "
                                                      f"{URL_MAX} characters")
    elif takes in ("payload", "coupon_code"):
        if not isinstance(value, str) or not value:
            return meta_errors.missing_parameter(f"{component}: parameter of type {takes} is missing its value")
        limit = PAYLOAD_MAX if takes == "payload" else CODE_MAX
        if len(value) > limit:
            return meta_errors.template_param_invalid(f"{component}: {takes} is longer than {limit} characters")
    elif not isinstance(value, dict):  # action
        return meta_errors.template_param_format(component, "ACTION", type(value).__name__.upper())
    return None


def _check_carousel(cards: tuple[Shape, ...] | None, sent: list[Any] | None, named: bool, media: list[Media],
                    component: str) -> MetaError | None:
    if cards is None:
        return meta_errors.template_params_mismatch(f"{component}: the template has no carousel")
    given = sent or []
    if len(given) != len(cards):
        return meta_errors.template_params_mismatch(
            f"{component}: number of cards ({len(given)}) does not match the expected number of cards ({len(cards)})")
    seen: set[int] = set()
    for card in given:
        index = _index(card.get("card_index"))
        if index is None or not 0 <= index < len(cards) or index in seen:
            return meta_errors.template_params_mismatch(
                f"{component}: card_index {card.get('card_index')!r} does not name a card of the template once")
        seen.add(index)
        parts = _collect(card.get("components", []), "carousel['cards'][components]")
        if isinstance(parts, MetaError):
            return parts
        problem = _check_parts(cards[index], parts, named, media, f"cards[{index}].")
        if problem is not None:
            return problem
    return None


def link_fetchable(link: str, broken: frozenset[str] | set[str] = frozenset()) -> bool:
    """Whether Meta could download a media ``link``. The sandbox fetches nothing: a link is broken when
    it is listed in ``broken`` (``broken_media_links``), is not http(s), or its host is under the
    reserved ``.invalid`` top-level domain (RFC 2606)."""
    if link in broken:
        return False
    try:
        parts = urlsplit(link)
        host = parts.hostname or ""
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(host) and host != "invalid" and not host.endswith(".invalid")


class ThroughputWindow:
    """Accepted sends per sender in the trailing second: Meta's messages-per-second cap.

    A sliding one-second window over accepted arrivals, (now - 1, now]; O(1) amortized per check.
    """

    def __init__(self) -> None:
        self._arrivals: dict[str, deque[float]] = {}

    def admits(self, sender: str, now: float, mps: int) -> bool:
        """Whether one more send from ``sender`` at ``now`` stays within ``mps``."""
        arrivals = self._arrivals.get(sender)
        if arrivals is None:
            return mps > 0
        horizon = now - 1.0
        while arrivals and arrivals[0] <= horizon:
            arrivals.popleft()
        return len(arrivals) < mps

    def record(self, sender: str, now: float) -> None:
        """Count an accepted send."""
        arrivals = self._arrivals.get(sender)
        if arrivals is None:
            arrivals = self._arrivals[sender] = deque()
        arrivals.append(now)


class PairSpacing:
    """Messages from one sender to one user: on average one per ``interval``, bursts of ``burst``.

    Meta lets a burst borrow from the future (GCRA); with ``burst=1`` no two accepted messages to
    one user are closer than ``interval``.
    """

    def __init__(self) -> None:
        self._tat: dict[tuple[str, str], float] = {}  # theoretical arrival time of the next message

    def admits(self, sender: str, wa_id: str, now: float, interval: float, burst: int) -> bool:
        """Whether a message to ``wa_id`` at ``now`` is within the pair rate."""
        if interval <= 0:
            return True
        tat = self._tat.get((sender, wa_id))
        if tat is None:
            return True
        return tat - now <= (burst - 1) * interval

    def record(self, sender: str, wa_id: str, now: float, interval: float) -> None:
        """Count an accepted message to ``wa_id``."""
        if interval <= 0:
            return
        tat = self._tat.get((sender, wa_id), now)
        self._tat[(sender, wa_id)] = max(tat, now) + interval


ANY_SENDER = "*"


class ServiceWindows:
    """The 24-hour customer-service windows, opened by the user's last inbound message.

    Keyed by (sender phone-number id, wa_id); an inbound message that names no sender opens the
    window for every sender (the sandbox then stands for a single business number). Wall-clock
    seconds, because a window is a calendar fact.
    """

    def __init__(self) -> None:
        self._last_inbound: dict[tuple[str, str], float] = {}

    def open(self, wa_id: str, at: float, sender: str | None = None) -> None:
        """Record an inbound message from ``wa_id`` at wall time ``at``."""
        key = (sender or ANY_SENDER, wa_id)
        self._last_inbound[key] = max(at, self._last_inbound.get(key, at))

    def close(self, wa_id: str, sender: str | None = None) -> None:
        """Forget inbound messages from ``wa_id`` (for that sender, or all senders when None)."""
        if sender is None:
            for key in [k for k in self._last_inbound if k[1] == wa_id]:
                del self._last_inbound[key]
        else:
            self._last_inbound.pop((sender, wa_id), None)

    def is_open(self, wa_id: str, sender: str, now: float, duration: float) -> bool:
        """Whether a free-form message from ``sender`` to ``wa_id`` at ``now`` is inside a window."""
        for key in ((sender, wa_id), (ANY_SENDER, wa_id)):
            last = self._last_inbound.get(key)
            if last is not None and now - last < duration:
                return True
        return False

    def last_inbound(self, wa_id: str, sender: str | None = None) -> float | None:
        """The most recent inbound time that counts for ``sender`` (any sender when None)."""
        times = [t for (s, w), t in self._last_inbound.items()
                 if w == wa_id and (sender is None or s in (sender, ANY_SENDER))]
        return max(times) if times else None
