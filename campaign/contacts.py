"""Contacts: what the engine knows of a person beyond one campaign, and the contacts check.

The facts an error teaches (errors.consequence) are written here and only here, by the
dispatcher and the reconciler alike: unreachable (131026) and the per-user marketing
limit (131049). They only move forward: an older fact never overwrites a newer one.

The contacts check: which numbers are not on WhatsApp, in layers (whatsapp-cloud-api.md).

1. What the engine already knows: a number whose message failed with 131026, or a cached
   check that said `invalid` less than `RECHECK_AFTER` ago.
2. Where the provider offers it, the contacts endpoint, in batches, cached per number with
   the time it was checked. The Cloud API dropped the endpoint with the On-Premises API; when
   the provider refuses it the check falls back to layer 1 and says so.
Opted-out numbers are the suppression list's business, checked before this.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from campaign import campaigns
from campaign.config import Settings
from campaign.db import Database
from campaign.exceptions import CampaignError
from campaign.graph import ContactCheck, GraphClient, GraphError, TransportError
from campaign.models import Contact
from campaign.sql import batches, insert_ignore

RECHECK_AFTER = timedelta(days=7)
BATCH = 500


def remember_unreachable(session: Session, contact_ids: Iterable[int], at: datetime) -> None:
    """A message to them failed with 131026 at `at` (not on WhatsApp, an old app, terms not accepted)."""
    _move_forward(session, Contact.unreachable_at, contact_ids, at)


def limit_marketing(session: Session, contact_ids: Iterable[int], until: datetime) -> None:
    """131049: Meta takes no marketing message for them before `until`."""
    _move_forward(session, Contact.marketing_limited_until, contact_ids, until)


def _move_forward(session: Session, column: Any, contact_ids: Iterable[int], value: datetime) -> None:
    for batch in batches(sorted(set(contact_ids))):
        session.execute(update(Contact).where(Contact.id.in_(batch), or_(column.is_(None), column < value))
                        .values({column: value}))


@dataclass
class CheckResult:
    unreachable: dict[str, str] = field(default_factory=dict)
    """E.164 -> why it is taken as not on WhatsApp."""
    checked_online: int = 0
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ContactsEndpoint:
    """Where layer 2 asks: the client and the sender's phone-number id."""

    client_factory: Callable[[], GraphClient]
    phone_number_id: str


def endpoint_for(db: Database, settings: Settings, campaign_name: str) -> ContactsEndpoint | None:
    """Where a campaign's import asks the contacts endpoint: its sender, with the configured
    token; None without either (the check then uses only what the engine knows)."""
    with db.read_session() as session:
        phone_number_id = campaigns.sender_of(campaigns.get(session, campaign_name).phone_number_id,
                                              settings.phone_number_id)
    token = settings.access_token
    if not token or not phone_number_id:
        return None
    return ContactsEndpoint(lambda: GraphClient(settings.api_base_url, settings.api_version, token), phone_number_id)


def check(
    db: Database,
    phones: Iterable[str],
    now: datetime,
    endpoint: ContactsEndpoint | None,
    progress: Callable[[int, int], None] | None = None,
) -> CheckResult:
    result = CheckResult()
    to_ask: list[str] = []
    phones = sorted(set(phones))
    with db.read_session() as session:
        for batch in batches(phones):
            known = {c.phone: c for c in session.scalars(select(Contact).where(Contact.phone.in_(batch)))}
            for phone in batch:
                contact = known.get(phone)
                verdict = _known_verdict(contact, now) if contact is not None else None
                if verdict is not None:
                    if verdict:
                        result.unreachable[phone] = verdict
                elif endpoint is not None:
                    to_ask.append(phone)
    if endpoint is None:
        result.warnings.append(
            "contacts check used only what the engine already knows (no WA_ACCESS_TOKEN / phone number id to ask the API)"
        )
    elif to_ask:
        asyncio.run(_ask(db, to_ask, now, endpoint, result, progress))
    return result


def _known_verdict(contact: Contact, now: datetime) -> str | None:
    """A reason if known unreachable, `""` if known reachable, `None` if it must be asked."""
    if contact.unreachable_at is not None:
        return f"a message failed with 131026 (not on WhatsApp) on {contact.unreachable_at:%Y-%m-%d}"
    if contact.wa_checked_at is None or now - contact.wa_checked_at > RECHECK_AFTER:
        return None
    if contact.wa_status == "invalid":
        return f"contacts check on {contact.wa_checked_at:%Y-%m-%d} said not on WhatsApp"
    return ""


async def _ask(
    db: Database,
    phones: list[str],
    now: datetime,
    endpoint: ContactsEndpoint,
    result: CheckResult,
    progress: Callable[[int, int], None] | None,
) -> None:
    async with endpoint.client_factory() as client:
        for done, batch in enumerate(batches(phones, BATCH)):
            try:
                checks = await client.check_contacts(endpoint.phone_number_id, list(batch))
            except GraphError as exc:
                if exc.http_status in (400, 404) and exc.code in (None, 100):
                    result.warnings.append(
                        f"the provider has no contacts check ({exc}); checked only what the engine already knows"
                    )
                    return
                raise CampaignError(f"contacts check failed: {exc}") from None
            except TransportError as exc:
                raise CampaignError(f"contacts check failed: cannot reach the Graph API ({exc!r})") from None
            _remember(db, checks, now)
            result.checked_online += len(batch)
            for check in checks:
                if not check.valid:
                    result.unreachable[check.input] = "contacts check said not on WhatsApp"
            if progress is not None:
                progress(min((done + 1) * BATCH, len(phones)), len(phones))


def _remember(db: Database, checks: list[ContactCheck], now: datetime) -> None:
    """Cache each answer on its contact, committed at once: it is valid whatever the import does."""
    rows = [c for c in checks if c.input.startswith("+")]
    if not rows:
        return
    with db.session() as session:
        session.execute(insert_ignore(session, Contact), [{"phone": c.input} for c in rows])
        by_phone = _contacts_by_phone(session, [c.input for c in rows])
        for check in rows:
            contact = by_phone[check.input]
            contact.wa_status = "valid" if check.valid else "invalid"
            contact.wa_checked_at = now
            if check.wa_id:
                contact.wa_id = check.wa_id


def _contacts_by_phone(session: Session, phones: list[str]) -> dict[str, Contact]:
    found: dict[str, Contact] = {}
    for batch in batches(phones):
        found.update((c.phone, c) for c in session.scalars(select(Contact).where(Contact.phone.in_(batch))))
    return found
