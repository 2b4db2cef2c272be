"""The time zones of contacts, stored (the rules are send_window.py's).

A contact's zones are found once, when a campaign with a send window imports or launches
it, and kept as a pointer to a shared `ZoneSet`. A contact that got a number later, or was
created by a webhook, is filled the next time such a campaign launches; until then it is
treated as a number of no known zone (the campaign's default zone).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from campaign import send_window
from campaign.models import Campaign, Contact, Message, ZoneSet, in_state
from campaign.sql import batches, insert_ignore
from campaign.states import MessageState

BATCH = 20_000


def all_sets(session: Session) -> dict[int, str]:
    """Every zone set by id (a few hundred rows at most)."""
    return {i: zones for i, zones in session.execute(select(ZoneSet.id, ZoneSet.zones))}


def _ids_for(session: Session, names: set[str]) -> dict[str, int]:
    known = {zones: i for i, zones in all_sets(session).items()}
    missing = names - known.keys()
    if missing:  # another process may add the same set at once: its row is as good
        session.execute(insert_ignore(session, ZoneSet), [{"zones": zones} for zones in sorted(missing)])
        known = {zones: i for i, zones in all_sets(session).items()}
    return known


def fill(session: Session, campaign_id: int) -> int:
    """Give every contact of the campaign that has none its zone set. Returns how many."""
    filled, after = 0, 0
    while True:
        rows = session.execute(
            select(Contact.id, Contact.phone)
            .where(Contact.id > after, Contact.zone_set_id.is_(None), Contact.id.in_(
                select(Message.contact_id).where(Message.campaign_id == campaign_id)))
            .order_by(Contact.id)
            .limit(BATCH)
        ).all()
        if not rows:
            return filled
        after = rows[-1][0]
        by_set: dict[str, list[int]] = defaultdict(list)
        for contact_id, phone in rows:
            by_set[send_window.zone_set_of(phone)].append(contact_id)
        ids = _ids_for(session, set(by_set))
        for zones, contact_ids in by_set.items():
            for chunk in batches(contact_ids):
                session.execute(update(Contact).where(Contact.id.in_(list(chunk))).values(zone_set_id=ids[zones]))
        filled += len(rows)


def queued_by_set(session: Session, campaign_id: int) -> list[tuple[str, int]]:
    """The campaign's queued messages per zone set (UNKNOWN for contacts not filled yet)."""
    rows = session.execute(
        select(ZoneSet.zones, func.count())
        .select_from(Message)
        .join(Contact, Contact.id == Message.contact_id)
        .outerjoin(ZoneSet, ZoneSet.id == Contact.zone_set_id)
        .where(Message.campaign_id == campaign_id, in_state(MessageState.QUEUED))
        .group_by(ZoneSet.zones)
    ).all()
    return [(zones or send_window.UNKNOWN, n) for zones, n in rows]


def window_of(campaign: Campaign) -> send_window.SendWindow | None:
    return send_window.SendWindow.parse(campaign.send_window) if campaign.send_window else None


def waiting(session: Session, campaign: Campaign, now: datetime) -> send_window.Waiting | None:
    """The campaign's queued messages outside their window now (None: it has no window)."""
    window = window_of(campaign)
    if window is None:
        return None
    return send_window.waiting(window, campaign.timezone or "UTC", queued_by_set(session, campaign.id), now)
