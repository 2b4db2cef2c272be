"""The template registry the sandbox is configured with, and how it is shown by the Graph API.

A send names a template by name and language; Meta accepts it only when that exact pair exists
and is APPROVED, and only with as many parameters as the template has distinct placeholders.
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
STATUSES = ("APPROVED", "PENDING", "REJECTED", "PAUSED", "DISABLED")
MEDIA_FORMATS = ("IMAGE", "VIDEO", "DOCUMENT")


def placeholders(text: str | None) -> list[str]:
    """The distinct placeholder names in ``text``, in order of first appearance."""
    seen: dict[str, None] = {}
    for match in _PLACEHOLDER.finditer(text or ""):
        seen.setdefault(match.group(1), None)
    return list(seen)


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
        return self._shape()[0]

    @property
    def header_format(self) -> str | None:
        """TEXT, IMAGE, VIDEO, DOCUMENT or LOCATION when the template has a header."""
        return self._shape()[1]

    @property
    def header_params(self) -> list[str]:
        """Distinct placeholders of a TEXT header (counted apart from the body's)."""
        return self._shape()[2]

    def _shape(self) -> tuple[list[str], str | None, list[str]]:
        # Parsed once per components list: every send of the template asks for it.
        cached = self._cache
        if cached is not None and cached[0] is self.components:
            return cached[1]
        body = self.component("BODY")
        header = self.component("HEADER")
        header_format = str(header.get("format", "TEXT")).upper() if header else None
        shape = (placeholders(body.get("text")) if body else [],
                 header_format,
                 placeholders(header.get("text")) if header and header_format == "TEXT" else [])
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
    ]
