"""The Graph API request bodies for one recipient: pure, no I/O.

Body shapes from Meta's send-message reference (whatsapp-cloud-api.md, "Sending";
whatsapp-templates.md §2): `to` is sent as `+E.164` (without `+` Meta may prepend the
sender's own country code), and `biz_opaque_callback_data` carries the outbox id so status
webhooks can find a message whose send never returned.

A template's components come from the campaign's binding (binding.py): each bound target
becomes exactly Meta's component JSON: a string button `index`, `parameter_name` on every
parameter of a NAMED template, `coupon_code`, `payload`, `action`, `cards[].card_index`,
`limited_time_offer.expiration_time_ms`. What kind of part a target is comes from the
template's definition (templates.py) when the campaign has one; without it only the header
(its kind from `--header-image/-video/-document`) and the body can be bound. A quick-reply
button the user did not bind gets the engine's payload naming the message, so a tap is
attributed to it even when Meta leaves the reply's context out.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from campaign import identity
from campaign.binding import Source, SourceKind, expiration_ms
from campaign.statuses import quick_reply_payload
from campaign.templates import BODY_TEXT_LIMIT, MEDIA_KINDS, Kind, Target

TEXT_LIMIT = 4096


@dataclass(frozen=True)
class MessageSpec:
    """What a campaign sends, independent of the recipient."""

    template_name: str
    template_language: str
    text_body: str | None = None
    binding: tuple[tuple[str, Source], ...] = ()
    targets: tuple[Target, ...] | None = None
    """The template's parts, from its definition; None when the campaign has none yet."""
    named: bool = False
    """The template's parameters are NAMED (`parameter_name` on each)."""
    header_kind: str | None = None
    """Without a definition: what `--header-image/-video/-document` said the header is."""
    media_ids: tuple[tuple[str, str], ...] = field(default=())
    """A FILE source's path -> the media id its upload got."""


class _Row(dict):  # type: ignore[type-arg]
    def __missing__(self, key: str) -> str:
        raise KeyError(key)


def template_payload(spec: MessageSpec, to: str, row: Mapping[str, Any], callback_data: str,
                     message_id: int | None = None) -> dict[str, Any]:
    template: dict[str, Any] = {"name": spec.template_name, "language": {"code": spec.template_language}}
    components = _plan(spec).components(row, message_id)
    if components:
        template["components"] = components
    return _envelope(to, "template", template, callback_data)


def text_payload(spec: MessageSpec, to: str, row: Mapping[str, Any], callback_data: str) -> dict[str, Any]:
    assert spec.text_body is not None
    body = spec.text_body.format_map(_Row({k: "" if v is None else v for k, v in row.items()}))
    return _envelope(to, "text", {"body": body[:TEXT_LIMIT], "preview_url": False}, callback_data)


def _envelope(to: str, kind: str, content: dict[str, Any], callback_data: str) -> dict[str, Any]:
    """`to` is an E.164 number, or a BSUID: that goes in `recipient` (identity.address_field)."""
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        identity.address_field(to): to,
        "type": kind,
        kind: content,
        "biz_opaque_callback_data": callback_data,
    }


def targets_without_definition(binding: Mapping[str, Source], header_kind: str | None) -> tuple[Target, ...]:
    """What a binding's targets are when the template's definition is unknown: a header of
    the kind the shorthand named, and body text. Anything else needs the definition."""
    found = []
    for key in binding:
        if key == "header" and header_kind:
            found.append(Target(key, Kind(header_kind)))
        elif key.startswith("body."):
            found.append(Target(key, Kind.TEXT, max_length=BODY_TEXT_LIMIT,
                                parameter_name=None if key[5:].isdigit() else key[5:]))
    return tuple(found)


# -- the plan: built once per campaign, applied per recipient -----------------------------------


@dataclass(frozen=True)
class _Part:
    target: Target
    source: Source | None
    """None: a quick-reply button left to the engine's default payload."""


@functools.lru_cache(maxsize=64)
def _plan(spec: MessageSpec) -> _Plan:
    binding = dict(spec.binding)
    targets = spec.targets if spec.targets is not None else targets_without_definition(binding, spec.header_kind)
    parts = []
    for target in targets:
        source = binding.get(target.key)
        if source is None and target.kind is Kind.OTP and "body.1" in binding:
            source = binding["body.1"]  # an authentication template carries its code twice
        if source is not None or target.kind is Kind.QUICK_REPLY:
            parts.append(_Part(target, source))
    return _Plan(tuple(parts), spec.named, dict(spec.media_ids))


class _Plan:
    def __init__(self, parts: tuple[_Part, ...], named: bool, media_ids: dict[str, str]) -> None:
        self.parts = parts
        self.named = named
        self.media_ids = media_ids
        # A button's sub_type, by its key within its card (or the template): what Meta checks it against.
        self.kinds = {p.target.key.split(".", 2)[-1] if p.target.key.startswith("card.") else p.target.key:
                      p.target.kind for p in parts}

    def components(self, row: Mapping[str, Any], message_id: int | None) -> list[dict[str, Any]]:
        top: dict[str, list[dict[str, Any]]] = {}
        cards: dict[int, dict[str, list[dict[str, Any]]]] = {}
        for part in self.parts:
            key = part.target.key
            where = top
            if key.startswith("card."):
                _, card, key = key.split(".", 2)
                where = cards.setdefault(int(card), {})
            value = self._value(part, row, message_id)
            if value is not None:
                where.setdefault(key, []).append(self._parameter(part.target, key, value))
        components = _components(top, self.kinds)
        if cards:
            components.append({"type": "carousel", "cards": [
                {"card_index": index, "components": _components(parts, self.kinds)}
                for index, parts in sorted(cards.items())]})
        return components

    def _value(self, part: _Part, row: Mapping[str, Any], message_id: int | None) -> str | None:
        source = part.source
        if source is None:  # an unbound quick reply: the engine's payload names the message
            if message_id is None:
                return None
            return quick_reply_payload(message_id, int(part.target.key.rsplit(".", 1)[1]))
        if source.kind is SourceKind.COLUMN:
            value = row.get(source.value)
            return "" if value is None else str(value)
        if source.kind is SourceKind.FILE:
            return self.media_ids.get(source.value)
        return source.value

    def _parameter(self, target: Target, key: str, value: str) -> dict[str, Any]:
        kind = target.kind
        if kind in MEDIA_KINDS:
            by_id = not value.startswith(("http://", "https://"))
            return {"type": kind.value, kind.value: {"id": value} if by_id else {"link": value}}
        if kind is Kind.LOCATION:
            return {"type": "location", "location": location(value)}
        if kind is Kind.COPY_CODE:
            return {"type": "coupon_code", "coupon_code": value}
        if kind is Kind.QUICK_REPLY:
            return {"type": "payload", "payload": value}
        if kind is Kind.FLOW:
            return {"type": "action", "action": {"flow_token": value}}
        if kind is Kind.OFFER:
            return {"type": "limited_time_offer", "limited_time_offer": {"expiration_time_ms": expiration_ms(value)}}
        parameter: dict[str, Any] = {"type": "text", "text": value}
        if self.named and target.parameter_name:
            parameter["parameter_name"] = target.parameter_name
        return parameter


_SUB_TYPE = {Kind.URL: "url", Kind.OTP: "url", Kind.COPY_CODE: "copy_code", Kind.QUICK_REPLY: "quick_reply",
             Kind.FLOW: "flow"}


def _components(parts: dict[str, list[dict[str, Any]]], kinds: Mapping[str, Kind]) -> list[dict[str, Any]]:
    """`{"header": [...], "body.1": [...], "button.0": [...], "offer": [...]}` as Meta's components."""
    components: list[dict[str, Any]] = []
    if "header" in parts:
        components.append({"type": "header", "parameters": parts["header"]})
    body = [p for key, params in parts.items() if key.startswith("body.") for p in params]
    if body:
        components.append({"type": "body", "parameters": body})
    if "offer" in parts:
        components.append({"type": "limited_time_offer", "parameters": parts["offer"]})
    for key, params in parts.items():
        if key.startswith("button."):
            components.append({"type": "button", "sub_type": _SUB_TYPE[kinds[key]], "index": key[7:],
                               "parameters": params})
    return components


def location(value: str) -> dict[str, Any]:
    """`latitude,longitude[,name[,address]]` as Meta's location parameter."""
    latitude, longitude, *rest = [p.strip() for p in value.split(",", 3)]
    found: dict[str, Any] = {"latitude": float(latitude), "longitude": float(longitude)}
    if rest:
        found["name"] = rest[0]
    if len(rest) > 1:
        found["address"] = rest[1]
    return found
