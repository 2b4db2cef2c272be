"""A template definition, read as the bind targets a send must (or may) fill: pure, no I/O.

The definition is one item of Graph's `GET /{waba-id}/message_templates` (whatsapp-templates.md
§1, upper-case component types). Each variable part becomes a `Target` keyed as `campaign create
--bind` names it (INTERFACE.md): `header`, `body.1` / `body.first_name`, `button.0`, `offer`,
`card.0.header`, `card.0.body.1`, `card.0.button.1`. A component or button type this module does
not know gives no target: Meta adds types, and an unknown one must not stop a campaign.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

# {{1}} for POSITIONAL templates, {{first_name}} for NAMED ones (whatsapp-templates.md §1).
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")

# Meta's limits on a parameter's value (whatsapp-templates.md §3, from the SDKs).
HEADER_TEXT_LIMIT = 60
BODY_TEXT_LIMIT = 1024
URL_LIMIT = 2000  # the whole URL, the template's part and the suffix together
CODE_LIMIT = 15  # a copy-code coupon, an authentication code
PAYLOAD_LIMIT = 256  # a quick-reply payload: unverified


class Kind(StrEnum):
    TEXT = "text"
    IMAGE = "image"
    VIDEO = "video"
    DOCUMENT = "document"
    LOCATION = "location"
    URL = "url"
    COPY_CODE = "copy_code"
    QUICK_REPLY = "quick_reply"
    OTP = "otp"
    FLOW = "flow"
    OFFER = "offer"


MEDIA_KINDS: frozenset[Kind] = frozenset({Kind.IMAGE, Kind.VIDEO, Kind.DOCUMENT})

_HEADER_FORMATS = {
    "IMAGE": Kind.IMAGE,
    "VIDEO": Kind.VIDEO,
    "GIF": Kind.VIDEO,  # sent as a video parameter (MM Lite GIF headers)
    "DOCUMENT": Kind.DOCUMENT,
    "LOCATION": Kind.LOCATION,
}


@dataclass(frozen=True)
class Target:
    """One variable part of a template: what a `--bind TARGET=...` fills."""

    key: str
    kind: Kind
    required: bool = True
    label: str | None = None
    """The button's text, for a button target (quick replies: shown in reports)."""
    url: str | None = None
    """URL and OTP buttons: the template's URL with its `{{1}}`."""
    max_length: int | None = None
    """Meta's limit on a value at this target; for a URL button, what the suffix may add."""
    parameter_name: str | None = None
    """The placeholder's name (`first_name` of `{{first_name}}`): a NAMED template's send
    carries it as `parameter_name` on the parameter."""


@dataclass(frozen=True)
class TemplateInfo:
    name: str
    language: str
    status: str
    category: str | None
    parameter_format: str
    targets: tuple[Target, ...]

    def target(self, key: str) -> Target | None:
        return next((t for t in self.targets if t.key == key), None)

    def describe(self) -> str:
        """The targets in one line, e.g. `header(image) body.1 button.1(quick_reply, optional)`."""
        return " ".join(_describe(t) for t in self.targets) or "(no variables)"


def _describe(target: Target) -> str:
    notes = [] if target.kind in (Kind.TEXT, Kind.OFFER) else [target.kind.value]
    if not target.required:
        notes.append("optional")
    return f"{target.key}({', '.join(notes)})" if notes else target.key


def placeholders(text: str | None) -> list[str]:
    """The distinct placeholders of `text`, in order of first appearance."""
    return list(dict.fromkeys(PLACEHOLDER.findall(text or "")))


def parse_template(item: dict[str, Any]) -> TemplateInfo:
    """One element of Graph's `GET /{waba-id}/message_templates` `data`, read as bind targets."""
    category = (item.get("category") or "").lower() or None
    targets = _targets(item.get("components") or [], "", authentication=category == "authentication")
    return TemplateInfo(
        name=str(item.get("name", "")),
        language=str(item.get("language", "")),
        status=str(item.get("status", "")).upper(),
        category=category,
        parameter_format=str(item.get("parameter_format") or "POSITIONAL").upper(),
        targets=tuple(targets),
    )


def _targets(components: list[dict[str, Any]], prefix: str, *, authentication: bool) -> list[Target]:
    """The targets of a message's (or a carousel card's) components; keys start with `prefix`."""
    targets: list[Target] = []
    body = next((c for c in components if _type(c) == "BODY"), {})
    code_in_body = "1" in placeholders(body.get("text"))
    for component in components:
        kind = _type(component)
        if kind == "HEADER":
            targets.extend(_header(component, prefix))
        elif kind == "BODY":
            targets.extend(
                Target(f"{prefix}body.{name}", Kind.TEXT, max_length=BODY_TEXT_LIMIT, parameter_name=_named(name))
                for name in placeholders(component.get("text"))
            )
        elif kind == "BUTTONS":
            for index, button in enumerate(component.get("buttons") or []):
                target = _button(button, f"{prefix}button.{index}", authentication, code_in_body)
                if target is not None:
                    targets.append(target)
        elif kind == "LIMITED_TIME_OFFER" and (component.get("limited_time_offer") or {}).get("has_expiration"):
            targets.append(Target(f"{prefix}offer", Kind.OFFER))
        elif kind == "CAROUSEL":
            for k, card in enumerate(component.get("cards") or []):
                targets.extend(_targets(card.get("components") or [], f"{prefix}card.{k}.", authentication=authentication))
    return targets


def _header(component: dict[str, Any], prefix: str) -> list[Target]:
    form = str(component.get("format") or "TEXT").upper()
    if form == "TEXT":
        names = placeholders(component.get("text"))
        return [Target(f"{prefix}header", Kind.TEXT, max_length=HEADER_TEXT_LIMIT, parameter_name=_named(names[0]))] if names else []
    kind = _HEADER_FORMATS.get(form)  # PRODUCT and unknown formats: nothing to bind
    return [Target(f"{prefix}header", kind)] if kind else []


def _button(button: dict[str, Any], key: str, authentication: bool, code_in_body: bool) -> Target | None:
    kind = str(button.get("type", "")).upper()
    label = button.get("text")
    url = button.get("url")
    dynamic = bool(url and placeholders(url))
    # An OTP button is created as type OTP but listed as a URL button (whatsapp-templates.md §1):
    # `.../otp/code/?otp_type=COPY_CODE&code=otp{{1}}`. The engine sends it the body's code
    # when it is not bound, so it is optional when the body has that code.
    if kind == "OTP" or (kind == "URL" and ("otp_type=" in (url or "") or (authentication and dynamic))):
        return Target(key, Kind.OTP, required=not code_in_body, label=label, url=url, max_length=CODE_LIMIT)
    if kind == "URL":
        if not dynamic:
            return None
        fixed = len(PLACEHOLDER.sub("", url))
        return Target(key, Kind.URL, label=label, url=url, max_length=URL_LIMIT - fixed)
    if kind == "QUICK_REPLY":
        # Optional: the engine sends its own default payload when none is bound.
        return Target(key, Kind.QUICK_REPLY, required=False, label=label, max_length=PAYLOAD_LIMIT)
    if kind == "COPY_CODE":
        return Target(key, Kind.COPY_CODE, label=label, max_length=CODE_LIMIT)
    if kind == "FLOW":
        return Target(key, Kind.FLOW, required=False, label=label)  # the flow_token is optional
    return None  # static: PHONE_NUMBER, VOICE_CALL, CATALOG, MPM, SPM; or a type not known here


def _named(placeholder: str) -> str | None:
    return None if placeholder.isdigit() else placeholder


def _type(component: dict[str, Any]) -> str:
    return str(component.get("type", "")).upper()
