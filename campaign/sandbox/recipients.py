"""Who the recipients are: their canonical wa_id and the fate the sandbox scripts for them.

Meta answers with a canonical ``wa_id`` that may differ from the input (Mexico, Brazil), and some
numbers are not on WhatsApp or are limited for marketing; those facts are about the user, so
they are decided here from the number alone (deterministically, so a demo is repeatable).
So is a user's business-scoped user id (BSUID) and whether Meta shows their number at all: a
user with a username may be known to the business by BSUID only (whatsapp-usernames.md).
"""
from __future__ import annotations

import enum
import functools
import hashlib
import re
from dataclasses import dataclass

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


# --- business-scoped user ids and usernames (whatsapp-usernames.md) -------------------------------

PROFILE_NAME = "Sandbox User"  # the profile name of a user the sandbox was given no name for
_SANDBOX_BSUID = re.compile(r"([A-Z]{2})\.7([0-9]{8,15})")
_NO_REGION = ("ZZ", "001")


def _region_of(wa_id: str) -> str:
    """The ISO region of the number's country calling code (``1`` -> ``US``), ``ZZ`` when it has none.

    Calling codes are prefix-free, so the first of the 1-3 digit prefixes that is one is the one."""
    for size in (1, 2, 3):
        code = int(wa_id[:size]) if wa_id[:size].isdecimal() else 0
        if code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            region = phonenumbers.region_code_for_country_code(code)
            return "ZZ" if not region or region in _NO_REGION else region
    return "ZZ"


@functools.lru_cache(maxsize=1 << 16)
def user_id_of(wa_id: str) -> str:
    """The user's business-scoped user id (BSUID): ``"<region>.7<the wa_id's digits reversed>"``.

    The sandbox's own scheme, not Meta's: Meta's BSUIDs are opaque (and per business portfolio).
    This one is reversible (``wa_id_of_user``) so tests and the emulator agree on who a BSUID is
    without a registry, and it has Meta's format (region, ``.``, at most 128 alphanumerics).
    Cached: every status webhook of every send names it."""
    return f"{_region_of(wa_id)}.7{wa_id[::-1]}"


def wa_id_of_user(user_id: str) -> str | None:
    """The wa_id a sandbox BSUID stands for; None for anything else (malformed, a parent
    ``ENT`` id, another scheme's id, a region that is not the number's)."""
    if not isinstance(user_id, str):
        return None
    match = _SANDBOX_BSUID.fullmatch(user_id)
    if match is None:
        return None
    wa_id = match.group(2)[::-1]
    if wa_id[0] == "0" or user_id_of(wa_id) != user_id:
        return None
    return wa_id


def username_of(wa_id: str) -> str:
    """The username the sandbox gives a user: ``@user`` + the last four digits of the number."""
    return "@user" + wa_id[-4:]


def withholds_number(wa_id: str, config: SandboxConfig, input_digits: str | None = None) -> bool:
    """Whether the user has a username and Meta withholds their number from webhooks: listed in
    ``username_numbers`` (by wa_id or by the input's digits) or in the ``username_fraction`` slice,
    hashed apart from the profile fractions so a username user may also be, say, marketing-limited."""
    numbers = config.username_numbers
    if numbers and (wa_id in numbers or (input_digits is not None and input_digits in numbers)):
        return True
    fraction = config.username_fraction
    return fraction > 0 and _unit_hash("username:" + wa_id) < fraction


@dataclass(frozen=True, slots=True)
class User:
    """How Meta names one person in webhooks: always by BSUID, by number only when not withheld."""

    wa_id: str
    user_id: str
    username: str | None  # set exactly for the users whose number is withheld

    @property
    def phone(self) -> str | None:
        """The number as webhooks may show it (``from``, ``wa_id``, ``recipient_id``), or None."""
        return None if self.username is not None else self.wa_id


def user_of(wa_id: str, config: SandboxConfig, input_digits: str | None = None) -> User:
    """The person behind ``wa_id`` as this configuration scripts them."""
    withheld = withholds_number(wa_id, config, input_digits)
    return User(wa_id, user_id_of(wa_id), username_of(wa_id) if withheld else None)
