"""What fills each template target (`campaign create --bind TARGET=SOURCE`), and the checks that
Meta would otherwise make after the send: before launch (`check`, `choose`) and per row
(`value_problem`). Pure, no I/O.

Meta's rules here are those of whatsapp-templates.md §3: every placeholder needs a value, a text
parameter has no newline, tab or run of more than four spaces (error 132018), and each kind of
value has its length limit (carried by the `Target`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from urllib.parse import urlsplit

from campaign.exceptions import CampaignError
from campaign.templates import MEDIA_KINDS, URL_LIMIT, Kind, Target, TemplateInfo


class SourceKind(StrEnum):
    COLUMN = "column"
    LITERAL = "literal"
    LINK = "link"
    MEDIA_ID = "media_id"
    FILE = "file"


@dataclass(frozen=True)
class Source:
    kind: SourceKind
    value: str

    def as_json(self) -> dict[str, str]:
        return {self.kind.value: self.value}

    @classmethod
    def from_json(cls, data: dict[str, str]) -> Source:
        kind, value = next(iter(data.items())) if len(data) == 1 else ("", None)
        if kind not in {k.value for k in SourceKind} or not isinstance(value, str):
            raise CampaignError(f"a bound source is one of {', '.join(SourceKind)} with a string, not {data!r}")
        return cls(SourceKind(kind), value)


Binding = dict[str, Source]
"""Target key -> source, in the order given."""

# Meta refuses a text parameter with a newline, a tab or more than four consecutive spaces
# (132018, whatsapp-templates.md §3). One regex, so the importer can apply it to a whole column.
WHITESPACE: re.Pattern[str] = re.compile(r"[\r\n\t]| {5,}")

_KEY = re.compile(r"(card\.(0|[1-9][0-9]*)\.)?(header|body\.[A-Za-z0-9_]+|button\.(0|[1-9][0-9]*))|offer")
_KEY_SHAPES = "header, body.N, body.NAME, button.N, card.K.header, card.K.body.N, card.K.button.N or offer"
_PREFIXES = (("media:", SourceKind.MEDIA_ID), ("file:", SourceKind.FILE))
_NOTHING_AFTER = {
    SourceKind.LITERAL: "no text after '=' (a literal)",
    SourceKind.MEDIA_ID: "no id after 'media:'",
    SourceKind.FILE: "no path after 'file:'",
}

_WHAT = {
    Kind.TEXT: "text",
    Kind.IMAGE: "image",
    Kind.VIDEO: "video",
    Kind.DOCUMENT: "document",
    Kind.LOCATION: "location",
    Kind.URL: "url suffix",
    Kind.COPY_CODE: "copy code",
    Kind.QUICK_REPLY: "quick-reply payload",
    Kind.OTP: "otp code",
    Kind.FLOW: "flow token",
    Kind.OFFER: "offer expiry",
}
_SOURCE_WORDS = {
    SourceKind.COLUMN: "a column",
    SourceKind.LITERAL: "a literal",
    SourceKind.LINK: "a link",
    SourceKind.MEDIA_ID: "a media id",
    SourceKind.FILE: "a file",
}
# What each kind of target takes, and how a refusal says it (a column is a link per row).
_MEDIA_SOURCES = frozenset({SourceKind.LINK, SourceKind.MEDIA_ID, SourceKind.FILE, SourceKind.COLUMN})
_MEDIA_WORDS = "a link, a media id or a file"
_TEXT_SOURCES = frozenset({SourceKind.COLUMN, SourceKind.LITERAL})
_TEXT_WORDS = "a column or a literal"
_PLAIN_TEXT = frozenset({Kind.TEXT, Kind.URL, Kind.COPY_CODE, Kind.OTP, Kind.QUICK_REPLY})
"""The kinds Meta receives as a text parameter, to which the whitespace rule applies."""


def what(target: Target) -> str:
    """The human words for what a target takes: "url suffix", "copy code", "image"..."""
    return _WHAT[target.kind]


def which(target: Target) -> str:
    """A target as messages name it: `button.0 (url suffix)`."""
    return f"{target.key} ({what(target)})"


def parse_bind(text: str) -> tuple[str, Source]:
    """One `--bind TARGET=SOURCE`."""
    target, equals, source = text.partition("=")
    if not equals or not target or not source:
        raise CampaignError(f"--bind {text!r}: expected TARGET=SOURCE, e.g. button.0=order_id or header=https://...")
    if not _KEY.fullmatch(target):
        raise CampaignError(f"--bind {text!r}: {target!r} is not a template target ({_KEY_SHAPES})")
    parsed = _source(source)
    if not parsed.value:
        raise CampaignError(f"--bind {text!r}: {_NOTHING_AFTER[parsed.kind]}")
    return target, parsed


def _source(text: str) -> Source:
    if text.startswith("="):
        return Source(SourceKind.LITERAL, text[1:])
    if text.lower().startswith(("https://", "http://")):
        return Source(SourceKind.LINK, text)
    for prefix, kind in _PREFIXES:
        if text.startswith(prefix):
            return Source(kind, text[len(prefix):])
    return Source(SourceKind.COLUMN, text)


def from_options(binds: Sequence[str], params: Sequence[str] = (), header_type: str | None = None,
                 header_link: str | None = None) -> Binding:
    """The binding of `campaign create`'s options: the `--header-TYPE URL` and `--param`
    shorthands first, then each `--bind`. A target bound twice is an error."""
    given: list[tuple[str, Source, str]] = []
    if header_link:
        given.append(("header", Source(SourceKind.LINK, header_link), f"--header-{header_type or 'image'} {header_link}"))
    if any(not column for column in params):
        raise CampaignError("--param: a column name is empty")
    given.extend((f"body.{n}", Source(SourceKind.COLUMN, c), f"--param {c}") for n, c in enumerate(params, 1))
    given.extend((*parse_bind(text), f"--bind {text}") for text in binds)
    binding: Binding = {}
    origin: dict[str, str] = {}
    for key, source, option in given:
        if key in binding:
            raise CampaignError(f"{key} is bound twice: by {origin[key]} and by {option}")
        binding[key], origin[key] = source, option
    return binding


def columns(binding: Binding) -> list[str]:
    """The CSV columns the binding reads, in order, each once."""
    return list(dict.fromkeys(s.value for s in binding.values() if s.kind is SourceKind.COLUMN))


def check(info: TemplateInfo, binding: Binding, *, media_kinds: Mapping[str, Kind] | None = None) -> None:
    """The pre-flight: every bound target is in the template and takes that kind of source (and a
    literal is a value Meta accepts), every required target is bound. Raises CampaignError with one
    line naming the template and the target. `media_kinds`: what a file or link is known to be
    (e.g. from its MIME type), by target key; a key absent is not checked."""
    for key, source in binding.items():
        target = info.target(key)
        if target is None:
            targets = f"it has: {info.describe()}" if info.targets else "it has no variables"
            raise CampaignError(f"{info.name}: {key} is not in the template ({targets})")
        accepted, words = (_MEDIA_SOURCES, _MEDIA_WORDS) if target.kind in MEDIA_KINDS else (_TEXT_SOURCES, _TEXT_WORDS)
        if source.kind not in accepted:
            raise CampaignError(f"{info.name}: {which(target)} takes {words}, not {_SOURCE_WORDS[source.kind]}")
        known = (media_kinds or {}).get(key)
        if target.kind in MEDIA_KINDS and known is not None and known != target.kind:
            raise CampaignError(f"{info.name}: {key} is {_a(target.kind)}, and --bind {key} gives {_a(known)}")
        if source.kind in (SourceKind.LITERAL, SourceKind.LINK):
            problem = value_problem(target, source.value)
            if problem:
                raise CampaignError(f"{info.name}: {which(target)} {problem}")
    for target in info.targets:
        if target.required and target.key not in binding:
            raise CampaignError(f"{info.name}: {which(target)} is not bound")


def _a(kind: Kind) -> str:
    return f"an {kind.value}" if kind.value[0] in "aeiou" else f"a {kind.value}"


def choose(infos: Sequence[TemplateInfo], name: str, language: str) -> TemplateInfo:
    """Among the WABA's templates, the one called `name` in `language`, if it is APPROVED
    (Meta sends only APPROVED templates: whatsapp-templates.md §1)."""
    named = [info for info in infos if info.name == name]
    if not named:
        raise CampaignError(f"template {name!r} does not exist in this WhatsApp Business Account")
    versions = [info for info in named if info.language == language]
    if not versions:
        languages = ", ".join(sorted({info.language for info in named}))
        raise CampaignError(f"template {name!r} has no {language} version (it has: {languages})")
    approved = next((info for info in versions if info.status == "APPROVED"), None)
    if approved is None:
        raise CampaignError(f"template {name!r} [{language}] is {versions[0].status}, not APPROVED")
    return approved


def value_problem(target: Target, value: str) -> str | None:
    """What Meta would refuse in one bound value, as the rest of a sentence whose subject is the
    target ("is empty"); None when the value is acceptable."""
    if not value.strip():
        return "is empty"
    if target.kind in MEDIA_KINDS:
        parts = urlsplit(value)
        return None if parts.scheme.lower() in ("http", "https") and parts.netloc else "is not an http(s) link"
    if target.kind in _PLAIN_TEXT and WHITESPACE.search(value):
        return "has a newline, a tab or more than four spaces in a row"
    if target.kind is Kind.OFFER and expiration_ms(value) is None:
        return "is not an ISO 8601 time with a UTC offset, e.g. 2026-12-31T23:59:00+01:00"
    if target.max_length is not None and len(value) > target.max_length:
        if target.kind is Kind.URL:  # the limit is on the whole link, the template's part and the suffix
            return f"makes the link {URL_LIMIT - target.max_length + len(value)} characters; Meta allows {URL_LIMIT}"
        return f"is {len(value)} characters; Meta allows {target.max_length}"
    return None


def expiration_ms(value: str) -> int | None:
    """A limited-time offer's expiry as Meta takes it (Unix milliseconds), from an ISO 8601 time
    with a UTC offset; None when `value` is not one. A time without an offset is refused rather
    than guessed: the offer's end is a promise to the customer."""
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return int(moment.timestamp() * 1000)
