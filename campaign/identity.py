"""A person's two names at Meta: pure rules, no I/O.

Meta names a WhatsApp user by their phone number (E.164; `wa_id` in webhooks, digits without
`+`) and, since 2026, by a business-scoped user id (BSUID, `US.13491208655302741918`; a parent
BSUID has `ENT.`): whatsapp-usernames.md. Either may be unknown: a user with a username may
reach the business with no number at all, and a recipient imported by BSUID has none. The
engine keeps one contact per person with both (people.py); an "identity" is either name as a
string, told apart by its shape: an E.164 number starts with `+`, a BSUID with two capitals
and a dot.
"""

from __future__ import annotations

import re

BSUID = re.compile(r"[A-Z]{2}\.(ENT\.)?[A-Za-z0-9]{1,128}")
"""whatsapp-usernames.md §1 and §5: ISO 3166 alpha-2 of the user's country, a dot, up to 128
alphanumerics (`ENT.` before them for a parent BSUID)."""
MAX_LENGTH = 2 + 1 + 4 + 128


def is_user_id(value: str | None) -> bool:
    """Whether `value` is a BSUID as Meta sends it (whole, case and all)."""
    return value is not None and BSUID.fullmatch(value) is not None


def user_id_problem(value: str) -> str | None:
    """Why a file's value is not a BSUID, for the rejects file; None if it is one."""
    if is_user_id(value):
        return None
    if is_user_id(value.strip()):
        return None
    return (f"{value[:40]!r} is not a business-scoped user id "
            "(two capital letters for a country, a dot, then letters and digits, e.g. US.13491208655302741918)")


def user_id_country(user_id: str) -> str:
    """The ISO 3166 country a BSUID names (its first two letters): what tells a phone-less
    United States recipient, to whom Meta delivers no marketing template."""
    return user_id[:2]


def address_field(identity: str) -> str:
    """The send payload's field for an identity: `to` for a number, `recipient` for a BSUID
    (whatsapp-usernames.md §3: a BSUID in `to` is accepted and silently dropped)."""
    return "to" if identity[:1] == "+" or not is_user_id(identity) else "recipient"
