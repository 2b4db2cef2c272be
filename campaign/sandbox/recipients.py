"""Who the recipients are: their canonical wa_id and the fate the sandbox scripts for them.

Meta answers with a canonical ``wa_id`` that may differ from the input (Mexico, Brazil), and some
numbers are not on WhatsApp or are limited for marketing; those facts are about the user, so
they are decided here from the number alone (deterministically, so a demo is repeatable).
"""
from __future__ import annotations

import enum
import functools
import hashlib

import phonenumbers

from campaign.sandbox.config import SandboxConfig, digits


class Profile(enum.Enum):
    """What the sandbox has scripted for a recipient."""

    REACHABLE = "reachable"
    NOT_ON_WHATSAPP = "not_on_whatsapp"  # accepted, then failed 131026
    MARKETING_LIMITED = "marketing_limited"  # marketing templates fail 131049 (marketing_limited_times)
    MARKETING_OPTED_OUT = "marketing_opted_out"  # marketing templates fail 131050


def canonical_wa_id(number: str, rewrite: bool = True) -> str:
    """The wa_id Meta reports for ``number``: its digits, with the known national rewrites.

    Mexico: WhatsApp ids of Mexican mobiles keep the old mobile ``1`` (``52`` + 10 digits ->
    ``521`` + 10 digits). Brazil: mobiles outside area codes 11-28 are registered without the
    ninth digit (``55 DD 9XXXXXXXX`` -> ``55 DD XXXXXXXX``). Both are as commonly reported (?);
    they exist so the engine learns to keep input and wa_id apart.
    """
    wa_id = digits(number)
    if not rewrite:
        return wa_id
    if wa_id.startswith("52") and len(wa_id) == 12:
        return "521" + wa_id[2:]
    if wa_id.startswith("55") and len(wa_id) == 13 and wa_id[4] == "9":
        area = int(wa_id[2:4])
        if area >= 31:
            return wa_id[:4] + wa_id[5:]
    return wa_id


def plausible(wa_id: str) -> bool:
    """E.164 allows 15 digits; no real WhatsApp number is shorter than 8."""
    return 8 <= len(wa_id) <= 15


def _unit_hash(wa_id: str) -> float:
    """A stable number in [0, 1) for a wa_id."""
    digest = hashlib.sha256(wa_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def profile_of(wa_id: str, config: SandboxConfig, opted_out: set[str] | frozenset[str] = frozenset(),
               input_digits: str | None = None) -> Profile:
    """The scripted profile: explicit sets (matched by wa_id or by the input's digits) first,
    then the hashed fractions (disjoint slices of [0, 1))."""
    keys = (wa_id,) if not input_digits or input_digits == wa_id else (wa_id, input_digits)
    if not plausible(wa_id) or any(k in config.not_on_whatsapp for k in keys):
        return Profile.NOT_ON_WHATSAPP
    if any(k in config.marketing_opted_out or k in opted_out for k in keys):
        return Profile.MARKETING_OPTED_OUT
    if any(k in config.marketing_limited for k in keys):
        return Profile.MARKETING_LIMITED
    if not (config.not_on_whatsapp_fraction or config.marketing_limited_fraction
            or config.marketing_opted_out_fraction):
        return Profile.REACHABLE
    point = _unit_hash(wa_id)
    edge = config.not_on_whatsapp_fraction
    if point < edge:
        return Profile.NOT_ON_WHATSAPP
    edge += config.marketing_limited_fraction
    if point < edge:
        return Profile.MARKETING_LIMITED
    edge += config.marketing_opted_out_fraction
    if point < edge:
        return Profile.MARKETING_OPTED_OUT
    return Profile.REACHABLE


@functools.lru_cache(maxsize=1 << 16)
def is_us_number(wa_id: str) -> bool:
    """A United States number, by its region: +1 is shared with Canada and the Caribbean
    (``+1 416``, ``+1 876``...), which Meta's US marketing rule does not touch. Numbers with no
    region (Meta's fictional ``+1 555`` test numbers) are not US either. Cached: it runs on every
    marketing send, and retries ask again about the same numbers."""
    if not wa_id.startswith("1"):
        return False
    try:
        parsed = phonenumbers.parse("+" + wa_id)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.region_code_for_number(parsed) == "US"
