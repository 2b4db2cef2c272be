"""Phone numbers to E.164: pure rules, no I/O.

WhatsApp addresses users by their international number; Meta may prepend the sender's own
country code to a number sent without `+`, so every number the engine stores and sends is
E.164 with `+`. Rules that are not phonenumbers' own (measured, see library-notes.md):

- Spreadsheet-mangled values (`4915123456789.0`, `4.91512345678E+12`) have lost or changed
  digits: rejected with their own detail, never repaired.
- Digits-only input with a default region is ambiguous: `4915123456789` with region DE is a
  valid (different) German number `+494915123456789` *and* a valid `+49 1512 3456789`. Both
  readings are tried; an unambiguous one wins, else the only mobile one (WhatsApp numbers are
  mobiles), else the row is rejected as ambiguous. Formatted input (spaces, dashes, dots,
  parentheses) is read as written: national with the region, international with `+`/`00`.
- Letters (vanity numbers) and extensions are rejected: neither can be a WhatsApp account.
"""

from __future__ import annotations

import functools

import re
from collections.abc import Iterable
from dataclasses import dataclass

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberType, re_util

from campaign.exceptions import CampaignError

# Numbers from many regions need more metadata patterns than the `re` module's 512-entry
# cache holds; without this phonenumbers recompiles them constantly (measured: 19,000 vs
# 23,000 numbers/s on a mixed 16-country file).
re_util.enable_pattern_cache()

_SEPARATORS = re.compile(r"[\s\-./()\u00a0\u200b-\u200f\u2060\ufeff]+")
_MANGLED = re.compile(r"^\+?\d+(\.0+|[.,]\d+[eE][+-]?\d+|[eE]\+?\d+)$")
_LETTERS = re.compile(r"[A-Za-z]")
_MOBILE_TYPES = (PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE)


@dataclass(frozen=True, slots=True)
class Normalized:
    e164: str
    """`+` and digits, e.g. `+4915123456789`."""
    country_code: int
    is_us: bool
    """A United States number: Meta does not deliver marketing templates to these."""


@dataclass(frozen=True, slots=True)
class Invalid:
    detail: str
    """Why the value is not a usable number, for the rejects file."""


def normalize(raw: str, default_region: str | None = None, *, digits_are_international: bool = False) -> Normalized | Invalid:
    """One raw value from a file to E.164, or the reason it is not a number.

    `default_region` (ISO 3166 alpha-2, e.g. `DE`) reads national numbers; without it a
    number needs `+` or `00`. `digits_are_international` reads bare digits as already holding
    the country code (a `wa_id` column).
    """
    text = raw.strip()
    if text[:1] == "+" and text[1:].isdigit():  # already E.164: the common case, made fast
        return _parse_one(text, None, text)
    if not text:
        return Invalid("empty")
    if ("." in text or "e" in text or "E" in text) and _MANGLED.match(text.replace(" ", "")):
        return Invalid(f"spreadsheet-mangled number {text!r} (digits lost): export the column as text")
    if _LETTERS.search(text):
        return Invalid(f"{text!r} contains letters")
    compact = _SEPARATORS.sub("", text)
    if compact.startswith("+"):
        return _parse_one("+" + compact[1:].lstrip("+"), None, text)
    if not compact.isdigit():
        return Invalid(f"{text!r} is not a phone number")
    if compact.startswith("00"):
        # `00` is the international prefix nearly everywhere, and no national number starts
        # with it; where the region's prefix differs (US: 011) the region's reading follows.
        international = _parse_one("+" + compact[2:], None, text)
        if isinstance(international, Normalized) or default_region is None or digits_are_international:
            return international
        return _parse_one(compact, default_region, text)
    if digits_are_international or default_region is None:
        if default_region is None and not digits_are_international and compact.startswith("0"):
            return Invalid(f"{text!r} is a national number: give --default-region or a +country code")
        return _parse_one("+" + compact, None, text)
    if compact != text:  # formatted by a person: read it as written, with the region
        return _parse_one(compact, default_region, text)
    return _parse_digits(compact, default_region, text)


def _parse_one(number: str, region: str | None, text: str) -> Normalized | Invalid:
    parsed = _parse(number, region)
    if isinstance(parsed, Invalid):
        return parsed
    if not phonenumbers.is_valid_number(parsed):
        return Invalid(f"{text!r} is not a valid number")
    return _normalized(parsed)


def _parse_digits(digits: str, region: str, text: str) -> Normalized | Invalid:
    """Bare digits with a default region: national or already international?"""
    readings = []
    for number, as_region in ((digits, region), ("+" + digits, None)):
        parsed = _parse(number, as_region)
        if isinstance(parsed, phonenumbers.PhoneNumber) and phonenumbers.is_valid_number(parsed):
            if all(parsed != other for other in readings):
                readings.append(parsed)
    if not readings:
        return Invalid(f"{text!r} is not a valid number for region {region} nor with a country code")
    if len(readings) == 1:
        return _normalized(readings[0])
    mobiles = [p for p in readings if phonenumbers.number_type(p) in _MOBILE_TYPES]
    if len(mobiles) == 1:
        return _normalized(mobiles[0])
    both = " or ".join(_e164(p) for p in readings)
    return Invalid(f"{text!r} is ambiguous ({both}): write it with + and the country code")


def _parse(number: str, region: str | None) -> phonenumbers.PhoneNumber | Invalid:
    try:
        parsed = phonenumbers.parse(number, region)
    except NumberParseException as exc:
        return Invalid(f"{number!r}: {exc._msg}")
    if parsed.extension:
        return Invalid(f"{number!r} has an extension")
    return parsed


def _e164(parsed: phonenumbers.PhoneNumber) -> str:
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def _normalized(parsed: phonenumbers.PhoneNumber) -> Normalized:
    is_us = parsed.country_code == 1 and phonenumbers.region_code_for_number(parsed) == "US"
    return Normalized(_e164(parsed), parsed.country_code, is_us)


def normalize_many(raws: Iterable[str], default_region: str | None = None, *, source: str = "") -> list[str]:
    """E.164 for every value a user typed (`--to`, `suppress`), or a `CampaignError` naming
    the first that is not a number (`source` says where it came from)."""
    numbers = []
    for raw in raws:
        n = normalize(raw, default_region)
        if isinstance(n, Invalid):
            raise CampaignError(f"{source}{n.detail}")
        numbers.append(n.e164)
    return numbers


@functools.lru_cache(maxsize=65536)
def is_us(e164: str) -> bool:
    """Whether an E.164 number is in the United States (not Canada or the Caribbean, which
    share +1): Meta delivers no marketing templates there."""
    if not e164.startswith("+1"):
        return False
    try:
        return phonenumbers.region_code_for_number(phonenumbers.parse(e164)) == "US"
    except NumberParseException:
        return False


def is_region(code: str) -> bool:
    """Whether `code` is a region phonenumbers knows (for `--default-region`)."""
    return code.upper() in phonenumbers.SUPPORTED_REGIONS
