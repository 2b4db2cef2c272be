"""A person is one contact, whether Meta names them by number, by BSUID, or both.

Webhooks name a user by phone digits (`from`, `wa_id`, `recipient_id`), by BSUID
(`from_user_id`, `user_id`, `recipient_user_id`), or both; either may be missing
(whatsapp-usernames.md §2). Here:

- `find` maps those names (a "key": phone digits or a BSUID) to contacts, through the
  contact's number, Meta's `wa_id` for it (BR, MX and AR numbers differ), its BSUID, and the
  ids it had before Meta re-keyed it (`contact_aliases`).
- `learn_user_ids` keeps a BSUID Meta reported together with a contact's number.
- `rekey` applies `user_changed_number` / `user_changed_user_id`: the contact takes the new
  ids, the old ones become aliases (late webhooks with them still find the person), and every
  suppression of an old id is copied to the new ones, so an opt-out survives the change.
  A new id that another contact already has is not taken (two contacts cannot share one);
  the aliases and the copied suppressions still hold.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, aliased

from campaign import identity
from campaign.events import IdentityChange
from campaign.models import Contact, ContactAlias, Suppression
from campaign.sql import batches, insert_ignore
from campaign.states import SuppressionScope, SuppressionSource
from campaign.suppressions import suppress


def key_identity(key: str) -> str:
    """A webhook's name for a user as the engine stores it: a BSUID as it is, digits with `+`."""
    return key if identity.is_user_id(key) else "+" + key


def find(session: Session, keys: set[str]) -> dict[str, list[Contact]]:
    """Every contact each key (phone digits or a BSUID) names, oldest first."""
    numbers = sorted(k for k in keys if not identity.is_user_id(k))
    user_ids = sorted(k for k in keys if identity.is_user_id(k))
    found: dict[int, Contact] = {}
    aliases: dict[str, set[int]] = {}
    for chunk in batches(numbers):
        query = select(Contact).where(or_(Contact.wa_id.in_(chunk), Contact.phone.in_(["+" + n for n in chunk])))
        found.update((c.id, c) for c in session.scalars(query))
    for chunk in batches(user_ids):
        found.update((c.id, c) for c in session.scalars(select(Contact).where(Contact.user_id.in_(chunk))))
    for chunk in batches(sorted(key_identity(k) for k in keys)):
        for alias, contact_id in session.execute(
                select(ContactAlias.identity, ContactAlias.contact_id).where(ContactAlias.identity.in_(chunk))):
            aliases.setdefault(alias, set()).add(contact_id)
    missing = sorted({c for ids in aliases.values() for c in ids} - set(found))
    for chunk in batches(missing):
        found.update((c.id, c) for c in session.scalars(select(Contact).where(Contact.id.in_(chunk))))
    people: dict[str, list[Contact]] = {k: [] for k in keys}
    for contact in sorted(found.values(), key=lambda c: c.id):
        names = {contact.wa_id, contact.phone[1:] if contact.phone else None, contact.user_id}
        for key in keys:
            if key in names or contact.id in aliases.get(key_identity(key), ()):
                people[key].append(contact)
    return people


def learn_user_ids(session: Session, pairs: list[tuple[int, str]]) -> None:
    """(contact id, BSUID) pairs Meta reported together (a status of a send to that contact,
    an inbound message with both `from` and `from_user_id`): kept on the contact, unless
    another contact already has that BSUID (two contacts cannot share one)."""
    wanted = dict(pairs)
    unknown: set[int] = set()
    for chunk in batches(sorted(wanted)):  # most contacts learned theirs from an earlier status
        unknown.update(session.scalars(select(Contact.id).where(Contact.id.in_(chunk), Contact.user_id.is_(None))))
    other = aliased(Contact)
    for contact_id in sorted(unknown):
        user_id = wanted[contact_id]
        taken = select(other.id).where(other.user_id == user_id).exists()
        session.execute(update(Contact).where(Contact.id == contact_id, Contact.user_id.is_(None), ~taken)
                        .values(user_id=user_id))


def rekey(session: Session, changes: list[IdentityChange], notes: list[tuple[int, str]]) -> None:
    """Each change applied, oldest first (see module docstring)."""
    for change in sorted(changes, key=lambda c: c.at):
        old = [key_identity(k) for k in (change.old_wa_id, change.old_user_id) if k]
        new = [key_identity(k) for k in (change.new_wa_id, change.new_user_id) if k]
        keys = {k for k in (change.old_wa_id, change.old_user_id, change.new_wa_id, change.new_user_id) if k}
        contacts = {c.id: c for cs in find(session, keys).values() for c in cs}
        for contact in contacts.values():
            retired = _take(session, contact, change)
            if retired:
                session.execute(insert_ignore(session, ContactAlias),
                                [{"identity": i, "contact_id": contact.id, "retired_at": change.at} for i in retired])
        _copy_suppressions(session, old, new, change.at)
        notes.append((logging.INFO, f"user {' / '.join(old) or '?'} is now {' / '.join(new) or '?'}"
                                    + ("" if contacts else " (no contact had the old ids)")))


def _take(session: Session, contact: Contact, change: IdentityChange) -> list[str]:
    """The contact takes the change's new ids where they are free; returns its retired ids."""
    retired = []
    new_phone = "+" + change.new_wa_id if change.new_wa_id else None
    if new_phone and contact.phone != new_phone and not _taken(session, Contact.phone, new_phone, contact.id):
        if contact.phone:
            retired.append(contact.phone)
        contact.phone, contact.wa_id = new_phone, change.new_wa_id
    if change.new_user_id and contact.user_id != change.new_user_id \
            and not _taken(session, Contact.user_id, change.new_user_id, contact.id):
        if contact.user_id:
            retired.append(contact.user_id)
        contact.user_id = change.new_user_id
    for old in (change.old_user_id, "+" + change.old_wa_id if change.old_wa_id else None):
        if old and old not in retired and old not in (contact.phone, contact.user_id):
            retired.append(old)
    session.flush()
    return retired


def _taken(session: Session, column: Any, value: str, contact_id: int) -> bool:
    return session.scalar(select(Contact.id).where(column == value, Contact.id != contact_id)) is not None


def _copy_suppressions(session: Session, old: list[str], new: list[str], at: datetime) -> None:
    """Every suppression of an old id, given to each new id too (widened, never narrowed)."""
    if not old or not new:
        return
    rows = session.execute(
        select(Suppression.scope, Suppression.source, Suppression.reason)
        .where(or_(Suppression.phone.in_(old), Suppression.user_id.in_(old)))
    ).all()
    for scope, source, reason in sorted(rows, key=lambda r: r.scope != SuppressionScope.ALL.value):
        suppress(session, new, reason=reason, source=SuppressionSource(source), scope=SuppressionScope(scope), now=at)
