"""Inbound messages, opt-outs and opt-ins, applied to contacts and the opt-out list.

The reconciler (reconcile.py) hands over what events.py parsed from the stored webhooks:

- `messages[]` (inbound) upsert the contact and open its 24-hour window (`last_inbound_at`);
  STOP / UNSUBSCRIBE (and the configured words), typed or sent as a quick-reply button or
  an interactive reply, suppress the number (source `opt_out`); START lifts only an
  `opt_out` suppression. Opt-outs and opt-ins are compared by their message times
  (`Contact.opted_out_at` / `opted_in_at`), so STOP and START arriving in either order
  end the same way.
- `user_preferences` (the user stopped or resumed marketing in WhatsApp): `stop`
  suppresses (source `opt_out`); `resume` / `signup` lift `opt_out` and `error_131050`
  suppressions, the ones Meta's own marketing switch stands for.

Applying is idempotent: contact times only ever move forward (they merge with max).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from campaign.events import InboundItem, PreferenceItem
from campaign.models import Contact, Suppression
from campaign.states import SuppressionSource
from campaign.sql import batches, insert_ignore
from campaign.suppressions import suppress

DEFAULT_OPT_OUT_WORDS: tuple[str, ...] = ("STOP", "UNSUBSCRIBE")
DEFAULT_OPT_IN_WORDS: tuple[str, ...] = ("START",)


def apply_inbound(session: Session, inbound: list[InboundItem], preferences: list[PreferenceItem], *,
                  opt_out: frozenset[str], opt_in: frozenset[str]) -> int:
    """Inbound messages and marketing preferences applied; the number of inbound messages.

    `opt_out` and `opt_in` are the stripped, casefolded words that opt out or back in."""
    if not inbound and not preferences:
        return 0
    people = _contacts_for(session, {m.wa_id for m in inbound} | {p.wa_id for p in preferences})
    for message in inbound:
        contacts = people[message.wa_id]
        for contact in contacts:
            # The window opens at the user's message time (whatsapp-cloud-api.md, "The 24-hour window").
            contact.last_inbound_at = _latest(contact.last_inbound_at, message.at)
            contact.wa_id = contact.wa_id or message.wa_id
        said = {w.strip().casefold() for w in message.words}
        if said & opt_out:
            _opt_out(session, contacts, message.at)
        elif said & opt_in:
            _opt_in(session, contacts, message.at, (SuppressionSource.OPT_OUT,))
    for preference in preferences:
        contacts = people[preference.wa_id]
        if preference.value == "stop":
            _opt_out(session, contacts, preference.at)
        else:
            _opt_in(session, contacts, preference.at, (SuppressionSource.OPT_OUT, SuppressionSource.ERROR_131050))
    return len(inbound)


def _contacts_for(session: Session, wa_ids: set[str]) -> dict[str, list[Contact]]:
    """Every contact of each sender: those Meta knows by that wa_id (which may differ from
    the imported number in BR, MX, AR) and the one whose number it is, created if new."""
    def lookup() -> dict[str, list[Contact]]:
        found: dict[int, Contact] = {}
        for chunk in batches(sorted(wa_ids)):
            query = select(Contact).where(or_(Contact.wa_id.in_(chunk), Contact.phone.in_(["+" + w for w in chunk])))
            found.update((c.id, c) for c in session.scalars(query.order_by(Contact.id)))
        people: dict[str, list[Contact]] = {w: [] for w in wa_ids}
        for contact in found.values():
            for key in {contact.wa_id, contact.phone[1:]}:
                if key in people:
                    people[key].append(contact)
        return people

    people = lookup()
    new = [{"phone": "+" + w, "wa_id": w} for w in sorted(wa_ids) if not people[w]]
    if not new:
        return people
    for chunk in batches(new):
        session.execute(insert_ignore(session, Contact), list(chunk))
    return lookup()


def _opt_out(session: Session, contacts: list[Contact], at: datetime) -> None:
    """STOP at `at`: void if the person opted in later (see module docstring)."""
    numbers = []
    for contact in contacts:
        if contact.opted_in_at is None or at >= contact.opted_in_at:
            contact.opted_out_at = _latest(contact.opted_out_at, at)
            numbers.append(contact.phone)
    if numbers:
        session.flush()
        suppress(session, numbers, reason="the recipient opted out", source=SuppressionSource.OPT_OUT, now=at)


def _opt_in(session: Session, contacts: list[Contact], at: datetime, sources: tuple[SuppressionSource, ...]) -> None:
    """START (or marketing resumed) at `at`: lifts an opt-out older than it, never a manual one."""
    numbers = []
    for contact in contacts:
        contact.opted_in_at = _latest(contact.opted_in_at, at)
        if contact.opted_out_at is None or contact.opted_out_at < at:
            contact.opted_out_at = None
            numbers.append(contact.phone)
    if numbers:
        session.flush()
        session.execute(delete(Suppression).where(Suppression.phone.in_(numbers),
                                                  Suppression.source.in_([s.value for s in sources])))


def _latest(current: datetime | None, new: datetime) -> datetime:
    return new if current is None else max(current, new)
