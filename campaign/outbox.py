"""The outbox's hard parts in one place: claim, lease, result, recovery (both dialects).

The lifecycle of one message, and why it is safe:

- claim: `queued` → `sending` with a lease (owner, expiry) and `sending_at` empty. One
  statement claims atomically on both dialects (PostgreSQL `FOR UPDATE SKIP LOCKED`; SQLite
  serializes it with `BEGIN IMMEDIATE`). The same transaction reserves each recipient for
  the pair interval (`contacts.next_send_at`), so two workers or two campaigns never message
  one person closer than the interval.
- in flight: `sending_at` is committed *before* the HTTP request leaves, with
  `in_doubt_until` (now + the grace). From then on the message may have reached Meta. The
  dispatcher marks messages in small groups just ahead of their slots, so a worker that
  dies leaves few marked messages whose requests never left.
- result: `sent` with its wamid, `failed`, back to `queued` for a retry, or `skipped`.
- recovery: a lease that expired with `sending_at` empty never left: back to `queued`. A
  message with `sending_at` set and no live lease is *in doubt* (its worker died
  mid-request, the request timed out, or Meta answered a 5xx, which does not prove it did
  not send): it waits for a status webhook carrying its callback data (the reconciler then
  sets its wamid), and only after `in_doubt_until` with no webhook is it queued again. That
  is the at-most-once guarantee. A 5xx answer's wait is shorter (CAMPAIGN_SERVER_ERROR_GRACE)
  than a dead worker's (CAMPAIGN_SEND_GRACE): Meta answered, and its `sent` status, if it
  sent the message, comes within seconds.

Every statement takes the time as `now` from its caller's clock (campaign.clock): nothing
here reads the wall clock, so leases, grace periods and due times are tested exactly.
The contact facts and suppressions an error taught are written through the modules that
own them (`contacts`, `suppressions`), in the same transaction as the message's result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, bindparam, case, func, or_, select, update
from sqlalchemy.orm import Session, aliased

from campaign import contacts, identity, phone, policy, send_window, suppressions, zone_sets
from campaign.campaigns import RunningCampaign
from campaign.db import Database
from campaign.models import Campaign, Contact, Message, Suppression, in_state
from campaign.sql import MESSAGING_LIMIT_LOCK, advisory_lock
from campaign.states import CampaignState, MessageState, SuppressionScope, SuppressionSource

GRACE = timedelta(minutes=10)
"""How long an in-doubt message waits for a webhook before it may be sent again."""
_SUPPRESSED_PHONE = aliased(Suppression)
_SUPPRESSED_USER_ID = aliased(Suppression)
PAIR_MARGIN = 0.25
"""Seconds added to the pair interval: arrival times at Meta jitter around send times."""


@dataclass
class Claimed:
    """A message this worker holds the lease of, with what the policy decided for it."""

    id: int
    campaign_id: int
    contact_id: int
    phone: str | None
    user_id: str | None
    params: dict[str, Any]
    attempts: int
    pair_hits: int
    marketing_waits: int
    choice: policy.Choice
    business_initiated: bool


@dataclass
class Results:
    """A batch of outcomes to record in one transaction."""

    sent: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    retry: list[dict[str, Any]] = field(default_factory=list)
    in_doubt: list[dict[str, Any]] = field(default_factory=list)
    """{"mid": message id, "cid": its contact, "until": not sent again before then, "free_at":
    the contact's pair interval counted from now, the latest the request may have reached Meta}."""
    released: list[int] = field(default_factory=list)
    unsent: dict[int, datetime] = field(default_factory=dict)
    """Marked in flight, but the request certainly never left (no connection), and when that
    was found: queued again with the attempt given back (`return_unsent`)."""
    unreachable: dict[int, datetime] = field(default_factory=dict)
    """Contact id -> when a message to it failed with 131026."""
    marketing_limited: dict[int, datetime] = field(default_factory=dict)
    """Contact id -> no marketing to it before then (131049)."""
    suppress: dict[str, tuple[str, SuppressionScope]] = field(default_factory=dict)
    """Number or BSUID -> why it goes on the suppression list, and for what (131050: marketing)."""

    def __len__(self) -> int:
        return (len(self.sent) + len(self.failed) + len(self.retry) + len(self.in_doubt) + len(self.released) + len(self.unsent)
                + len(self.unreachable) + len(self.marketing_limited) + len(self.suppress))

    def add_sent(self, message_id: int, contact_id: int, wamid: str, wa_id: str | None, at: datetime, pair_interval: float) -> None:
        self.sent.append({
            "mid": message_id, "cid": contact_id, "wamid": wamid, "wa_id": wa_id, "at": at,
            "next_send": policy.pair_due(at, pair_interval + PAIR_MARGIN, at),
        })

    def add_in_doubt(self, message_id: int, contact_id: int, at: datetime, until: datetime, pair_interval: float) -> None:
        self.in_doubt.append({"mid": message_id, "cid": contact_id, "until": until,
                              "free_at": policy.pair_due(at, pair_interval + PAIR_MARGIN, at)})

    def add_failed(self, message_id: int, contact_id: int, code: int | None, title: str, details: str | None, at: datetime) -> None:
        self.failed.append({"mid": message_id, "cid": contact_id, "code": code, "title": title, "details": details,
                            "at": at, "free_at": at})

    def add_retry(self, message_id: int, contact_id: int, due: datetime, *, pair_hit: bool = False,
                  marketing_wait: bool = False, code: int | None = None, title: str | None = None) -> None:
        # The recipient stays reserved only after a pair-rate refusal (Meta: back off that
        # recipient); otherwise the message's own due time holds it back.
        self.retry.append({"mid": message_id, "cid": contact_id, "due": due, "pair": int(pair_hit),
                           "mwait": int(marketing_wait), "code": code, "title": title,
                           "free_at": due if pair_hit else None})


class Outbox:
    """Every statement of the send lifecycle, for one worker."""

    def __init__(self, db: Database, worker_id: str, *, lease: timedelta = timedelta(seconds=30),
                 grace: timedelta = GRACE) -> None:
        self.db = db
        self.worker_id = worker_id
        self.lease = lease
        self.grace = grace

    def has_pending_work(self, names: Sequence[str] | None) -> bool:
        """Whether a running or scheduled campaign still has a message to send or settle."""
        with self.db.read_session() as session:
            active = select(Campaign.id).where(Campaign.state.in_([CampaignState.RUNNING, CampaignState.SCHEDULED]))
            scheduled = select(Campaign.id).where(Campaign.state == CampaignState.SCHEDULED).limit(1)
            if names:
                active = active.where(Campaign.name.in_(names))
                scheduled = scheduled.where(Campaign.name.in_(names))
            # One query per state, so each is answered from its partial index.
            return any(session.scalar(query) is not None for query in (
                select(Message.id).where(Message.campaign_id.in_(active), in_state(MessageState.QUEUED)).limit(1),
                select(Message.id).where(Message.campaign_id.in_(active), in_state(MessageState.SENDING)).limit(1),
                scheduled))

    # -- claim -------------------------------------------------------------------------------

    def claim(
        self,
        campaigns: Sequence[RunningCampaign],
        limit: int,
        now: datetime,
        *,
        pair_interval: float,
        daily_unique_limit: int | None = None,
        unreachable_for: timedelta = policy.UNREACHABLE_FOR,
        marketing_frequency: policy.MarketingFrequency | None = None,
    ) -> list[Claimed]:
        """Lease up to `limit` sendable messages and decide what each one gets."""
        by_id = {c.id: c for c in campaigns}
        if not by_id or limit <= 0:
            return []
        with self.db.session() as session:
            postgres = session.get_bind().dialect.name == "postgresql"
            if daily_unique_limit is not None:
                # One claim at a time counts the messaging-limit budget, across hosts.
                advisory_lock(session, MESSAGING_LIMIT_LOCK)
            candidates = (
                select(Message.id)
                .join(Contact, Contact.id == Message.contact_id)
                .where(
                    _inside_send_windows(session, campaigns, now),
                    in_state(MessageState.QUEUED),
                    or_(Message.next_attempt_at.is_(None), Message.next_attempt_at <= now),
                    or_(Contact.next_send_at.is_(None), Contact.next_send_at <= now),
                )
                .order_by(Message.id)
                .limit(limit)
            )
            if postgres:
                candidates = candidates.with_for_update(of=Message, skip_locked=True)
            claimed_ids = list(
                session.scalars(
                    update(Message)
                    .where(Message.id.in_(candidates.scalar_subquery()))
                    .values(state=MessageState.SENDING, lease_owner=self.worker_id,
                            lease_expires_at=now + self.lease, sending_at=None)
                    .returning(Message.id)
                )
            )
            if not claimed_ids:
                return []
            # Plain rows, not ORM objects: this runs on the worker's database thread, and
            # every millisecond it holds the GIL is a millisecond the send loop is late.
            rows = session.execute(
                select(Message.id, Message.campaign_id, Message.params, Message.attempts, Message.pair_hits,
                       Message.marketing_waits, Contact.id.label("contact_id"), Contact.phone, Contact.user_id,
                       Contact.last_inbound_at, Contact.marketing_limited_until, Contact.unreachable_at,
                       _SUPPRESSED_PHONE.scope.label("phone_suppressed"), _SUPPRESSED_USER_ID.scope.label("user_id_suppressed"))
                .join(Contact, Contact.id == Message.contact_id)
                # A person is suppressed when either of their identities is.
                .outerjoin(_SUPPRESSED_PHONE, _SUPPRESSED_PHONE.phone == Contact.phone)
                .outerjoin(_SUPPRESSED_USER_ID, _SUPPRESSED_USER_ID.user_id == Contact.user_id)
                .where(Message.id.in_(claimed_ids))
                .order_by(Message.id)
            ).all()
            return self._decide(session, rows, by_id, now, pair_interval, daily_unique_limit, unreachable_for,
                                marketing_frequency)

    def _decide(
        self,
        session: Session,
        rows: Sequence[Any],
        by_id: dict[int, RunningCampaign],
        now: datetime,
        pair_interval: float,
        daily_unique_limit: int | None,
        unreachable_for: timedelta,
        marketing_frequency: policy.MarketingFrequency | None = None,
    ) -> list[Claimed]:
        # Reserve each recipient for the pair interval: until the lease ends (the latest the
        # send can start), plus the interval. The result replaces it with the real time.
        reserve_until = now + self.lease + timedelta(seconds=pair_interval + PAIR_MARGIN)
        contact_ids = list({row.contact_id for row in rows})
        reserved = set(
            session.scalars(
                update(Contact)
                .where(Contact.id.in_(contact_ids), or_(Contact.next_send_at.is_(None), Contact.next_send_at <= now))
                .values(next_send_at=reserve_until)
                .returning(Contact.id)
            )
        )
        budget = policy.budget_left(daily_unique_limit, _reached_count(session, now) if daily_unique_limit else 0)
        # People already reached in the moving 24 hours cost the messaging limit nothing more.
        already = _reached_among(session, now, contact_ids) if daily_unique_limit else set()
        # The marketing frequency cap, counted after the reservation above: whoever decides
        # for a person holds them (PostgreSQL: a claim reserving them too waits on the row
        # lock, then finds them taken; SQLite: one claim at a time), so the count cannot move
        # under this decision. One grouped query for the batch, only when a marketing campaign
        # is in it; the batch's own messages (just set `sending`) are not counted.
        capped_ids = list({row.contact_id for row in rows if by_id[row.campaign_id].marketing}) if marketing_frequency else []
        marketing_sent = (_marketing_templates_among(session, now, marketing_frequency.period, capped_ids,
                                                     [row.id for row in rows])
                          if marketing_frequency is not None and capped_ids else {})
        claimed: list[Claimed] = []
        seen_contacts: set[int] = set()
        release: list[dict[str, Any]] = []
        skip: list[dict[str, Any]] = []
        for row in rows:
            if row.contact_id not in reserved or row.contact_id in seen_contacts:
                # Another worker (or another of this batch's campaigns) holds this recipient.
                release.append({"mid": row.id, "due": None})  # the claim skips reserved recipients
                continue
            campaign = by_id[row.campaign_id]
            decision = policy.choose_message(
                policy.Recipient(
                    suppressed=(policy.suppression_applies(row.phone_suppressed, campaign.category)
                                or policy.suppression_applies(row.user_id_suppressed, campaign.category)),
                    last_inbound_at=row.last_inbound_at,
                    marketing_limited_until=row.marketing_limited_until,
                    unreachable_at=row.unreachable_at,
                    in_united_states=campaign.marketing and (
                        phone.is_us(row.phone) if row.phone else identity.user_id_country(row.user_id) == "US"),
                    phone_less=row.phone is None,
                ),
                has_template=bool(campaign.spec.template_name),
                has_text=campaign.spec.text_body is not None,
                marketing=campaign.marketing,
                authentication=campaign.category == "authentication",
                now=now,
                unreachable_for=unreachable_for,
            )
            if decision.choice is policy.Choice.SKIP:
                skip.append({"mid": row.id, "title": decision.reason, "at": now})
                continue
            if decision.choice is policy.Choice.WAIT:
                release.append({"mid": row.id, "due": decision.until})
                continue
            if (marketing_frequency is not None and campaign.marketing and decision.choice is policy.Choice.TEMPLATE
                    and marketing_frequency.capped(marketing_sent.get(row.contact_id, 0))):
                # Skipped, not delayed: the cap is the business's "not this campaign for this
                # person", and a wait of up to the whole period would keep the campaign open.
                skip.append({"mid": row.id, "title": marketing_frequency.reason, "at": now})
                continue
            if decision.business_initiated and budget is not None and row.contact_id not in already:
                if budget <= 0:
                    release.append({"mid": row.id, "due": now + timedelta(minutes=1)})
                    continue
                budget -= 1
                already.add(row.contact_id)
            seen_contacts.add(row.contact_id)
            claimed.append(Claimed(
                id=row.id, campaign_id=row.campaign_id, contact_id=row.contact_id, phone=row.phone, user_id=row.user_id,
                params=row.params, attempts=row.attempts, pair_hits=row.pair_hits, marketing_waits=row.marketing_waits,
                choice=decision.choice, business_initiated=decision.business_initiated,
            ))
        if release:
            session.execute(_RELEASE_TO, release)
        freed = reserved - seen_contacts  # reserved for a message that was not claimed after all
        if freed:
            session.execute(update(Contact).where(Contact.id.in_(list(freed))).values(next_send_at=now))
        if skip:
            session.execute(_SKIP, skip)
        # What each message is, in one statement per kind of decision (usually one in all).
        decided: dict[tuple[str, bool], list[int]] = {}
        for c in claimed:
            decided.setdefault((c.choice.value, c.business_initiated), []).append(c.id)
        for (kind, initiated), ids in decided.items():
            values: dict[str, Any] = {"kind": kind} | ({"business_initiated": True} if initiated else {})
            session.execute(update(Message).where(Message.id.in_(ids)).values(**values))
        return claimed

    # -- in flight and results ---------------------------------------------------------------

    def mark_in_flight(self, ids: Sequence[int], now: datetime) -> set[int]:
        """Committed before the requests leave: from here a message may have reached Meta.

        Only messages this worker still holds are marked, and only those may be sent: a
        lease that ran out while they waited (a slowed-down sender) may have let recovery
        hand them to another worker."""
        with self.db.session() as session:
            return set(session.scalars(
                update(Message)
                .where(Message.id.in_(list(ids)), Message.state == MessageState.SENDING,
                       Message.lease_owner == self.worker_id, Message.sending_at.is_(None))
                .values(sending_at=now, attempts=Message.attempts + 1, lease_expires_at=now + self.lease,
                        in_doubt_until=now + self.grace)
                .returning(Message.id)
            ))

    def record(self, results: Results) -> None:
        if not len(results):
            return
        with self.db.session() as session:
            if results.sent:
                session.execute(_SENT, results.sent)
                session.execute(_CONTACT_SENT, results.sent)
            if results.failed:
                session.execute(_FAILED, results.failed)
            if results.retry:
                session.execute(_RETRY, results.retry)
            freed = [{"cid": r["cid"], "free_at": r["free_at"]} for r in results.failed + results.retry + results.in_doubt]
            if freed:
                # Release the claim's reservation of the recipient: nothing reached them (or,
                # in doubt, the pair interval counts from now, the latest it may have).
                session.execute(_CONTACT_FREE, freed)
            if results.in_doubt:
                session.execute(_IN_DOUBT, results.in_doubt)
            if results.released:
                session.execute(_RELEASE_TO, [{"mid": m, "due": None} for m in results.released])
            if results.unsent:
                self._return_unsent(session, list(results.unsent), max(results.unsent.values()))
            for cid, at in results.unreachable.items():
                contacts.remember_unreachable(session, [cid], at)
            for cid, until in results.marketing_limited.items():
                contacts.limit_marketing(session, [cid], until)
            for number, (reason, scope) in results.suppress.items():
                suppressions.suppress(session, [number], reason=reason, source=SuppressionSource.ERROR_131050, scope=scope)

    def return_unsent(self, ids: Sequence[int], now: datetime) -> None:
        """Give back messages this worker holds and knows never left (pause, shutdown, a
        missed slot): queued again, their recipients free. A message marked in flight gets
        its attempt back. One whose lease another worker took over is left alone."""
        if not ids:
            return
        with self.db.session() as session:
            self._return_unsent(session, ids, now)

    def _return_unsent(self, session: Session, ids: Sequence[int], now: datetime) -> None:
        contacts = list(session.scalars(
            update(Message)
            .where(Message.id.in_(list(ids)), Message.state == MessageState.SENDING, Message.wamid.is_(None),
                   Message.lease_owner == self.worker_id)
            .values(state=MessageState.QUEUED, sending_at=None, lease_owner=None, lease_expires_at=None,
                    attempts=case((Message.sending_at.is_not(None), Message.attempts - 1), else_=Message.attempts))
            .returning(Message.contact_id)
        ))
        if contacts:
            session.execute(update(Contact).where(Contact.id.in_(contacts)).values(next_send_at=now))

    # -- recovery ----------------------------------------------------------------------------

    def recover(self, now: datetime, grace: timedelta | None = None) -> tuple[int, int]:
        """(expired claims re-queued, in-doubt messages re-queued after their wait). `grace`
        (default the outbox's) is the wait of one marked before `in_doubt_until` existed."""
        grace = self.grace if grace is None else grace
        with self.db.session() as session:
            lease_gone = or_(Message.lease_expires_at.is_(None), Message.lease_expires_at < now)
            never_left = session.execute(
                update(Message)
                .where(in_state(MessageState.SENDING), Message.sending_at.is_(None), Message.lease_expires_at < now)
                .values(state=MessageState.QUEUED, lease_owner=None, lease_expires_at=None)
            ).rowcount
            expired_doubt = session.execute(
                update(Message)
                .where(
                    in_state(MessageState.SENDING), Message.wamid.is_(None),
                    Message.sending_at.is_not(None), lease_gone,
                    or_(Message.in_doubt_until < now,
                        and_(Message.in_doubt_until.is_(None), Message.sending_at < now - grace)),
                )
                .values(state=MessageState.QUEUED, lease_owner=None, lease_expires_at=None, sending_at=None,
                        in_doubt_until=None)
            ).rowcount
            return never_left, expired_doubt


def _reached_outside_window(now: datetime) -> tuple[Any, ...]:
    """Messages that reached a recipient outside their window in the last 24 hours (all
    campaigns; a message still sending counts): the messaging limit's measure."""
    return (Message.business_initiated.is_(True),
            or_(Message.sent_at >= now - policy.WINDOW, Message.state == MessageState.SENDING))


def _reached_count(session: Session, now: datetime) -> int:
    """How many distinct recipients the messaging limit has counted in the last 24 hours.

    The two halves of `_reached_outside_window` apart, each from its own index: the last
    day's business-initiated sends (`ix_messages_reached`) and what is in flight
    (`ix_messages_leased`). Every claim counts under a lock all workers share, so the count
    must cost what the last day holds (at most about the limit, on a limited tier), not a
    scan of every message the database holds (seconds at ten million)."""
    return session.scalar(_reached_count_query(now)) or 0


def _reached_count_query(now: datetime) -> Select[tuple[int]]:
    recent = select(Message.contact_id).where(Message.business_initiated, Message.sent_at >= now - policy.WINDOW)
    # By id from the lease index: asked straight, SQLite would rather walk all of
    # ix_messages_reached, which covers contact_id, and filter on the state.
    in_flight = select(Message.contact_id).where(
        Message.id.in_(select(Message.id).where(in_state(MessageState.SENDING))), Message.business_initiated)
    return select(func.count()).select_from(recent.union(in_flight).subquery())


def _reached_among(session: Session, now: datetime, contact_ids: list[int]) -> set[int]:
    """Which of `contact_ids` the messaging limit has counted already (they cost nothing more)."""
    return set(session.scalars(select(Message.contact_id).distinct()
                               .where(*_reached_outside_window(now), Message.contact_id.in_(contact_ids))))


_REACHED_OR_MAY_HAVE = (MessageState.SENDING, MessageState.SENT, MessageState.DELIVERED, MessageState.READ)


def marketing_templates_in_period(now: datetime, period: timedelta) -> tuple[Any, ...]:
    """Marketing templates that count against CAMPAIGN_MARKETING_FREQUENCY (join Campaign):
    the frequency cap's measure, shared by the claim and `campaign estimate`.

    - Marketing: the campaign's template_category is `marketing` (utility and authentication
      templates are not capped and do not count; nor does a campaign whose category is not
      known yet, as with the United States rule: `RunningCampaign.marketing`).
    - A template: `kind` is what the claim decided; free-form text inside the window is not.
    - Reached or may have: `sent`, `delivered`, `read`, and `sending` whatever its time (claimed
      and about to go, or in doubt: its request may have reached Meta). `failed` does not
      count: it did not reach them (131049 sends it back to `queued`, not counted either).
    - In the moving period: its request left (`sending_at`, the latest attempt's) or Meta
      accepted it (`sent_at`, the first) within `period` before `now`; a template sent at t
      counts until t + period.
    """
    since = now - period
    return (Campaign.template_category == "marketing",
            Message.kind == policy.Choice.TEMPLATE.value,
            Message.state.in_(_REACHED_OR_MAY_HAVE),
            or_(Message.state == MessageState.SENDING, Message.sending_at > since, Message.sent_at > since))


def _marketing_templates_among(session: Session, now: datetime, period: timedelta, contact_ids: list[int],
                               deciding: list[int]) -> dict[int, int]:
    """Contact id -> marketing templates it got in the period, for `contact_ids` (those with
    none are left out): one GROUP BY over the batch, by the messages' contact index. The
    messages being decided (`deciding`, already `sending`) are not counted."""
    if not contact_ids:
        return {}
    return dict(session.execute(
        select(Message.contact_id, func.count())
        .join(Campaign, Campaign.id == Message.campaign_id)
        .where(Message.contact_id.in_(contact_ids), Message.id.not_in(deciding),
               *marketing_templates_in_period(now, period))
        .group_by(Message.contact_id)
    ).all())


_m = Message.__table__.c
_c = Contact.__table__.c

_SENT = (
    update(Message.__table__)
    .where(_m.id == bindparam("mid"))
    .values(
        # A webhook found by callback data may have moved it on already: never backwards.
        state=case((_m.state == MessageState.SENDING.value, MessageState.SENT.value), else_=_m.state),
        wamid=bindparam("wamid"),
        wa_id=bindparam("wa_id"),
        sent_at=func.coalesce(_m.sent_at, bindparam("at")),
        lease_owner=None,
        lease_expires_at=None,
    )
)
_CONTACT_SENT = (
    update(Contact.__table__)
    .where(_c.id == bindparam("cid"))
    .values(last_sent_at=bindparam("at"), next_send_at=bindparam("next_send"),
            wa_id=func.coalesce(bindparam("wa_id"), _c.wa_id))
)
_CONTACT_FREE = update(Contact.__table__).where(_c.id == bindparam("cid")).values(next_send_at=bindparam("free_at"))
_FAILED = (
    update(Message.__table__)
    .where(_m.id == bindparam("mid"), _m.state.in_([MessageState.SENDING.value, MessageState.QUEUED.value]))
    .values(state=MessageState.FAILED.value, error_code=bindparam("code"), error_title=bindparam("title"),
            error_details=bindparam("details"), failed_at=bindparam("at"), lease_owner=None, lease_expires_at=None)
)
_RETRY = (
    update(Message.__table__)
    .where(_m.id == bindparam("mid"), _m.state == MessageState.SENDING.value)
    .values(state=MessageState.QUEUED.value, next_attempt_at=bindparam("due"), pair_hits=_m.pair_hits + bindparam("pair"),
            marketing_waits=_m.marketing_waits + bindparam("mwait"),
            error_code=bindparam("code"), error_title=bindparam("title"),
            sending_at=None, lease_owner=None, lease_expires_at=None)
)
_IN_DOUBT = (
    update(Message.__table__)
    .where(_m.id == bindparam("mid"), _m.state == MessageState.SENDING.value)
    .values(lease_owner=None, lease_expires_at=None,
            in_doubt_until=bindparam("until", type_=Message.__table__.c.in_doubt_until.type))
)
_RELEASE_TO = (
    update(Message.__table__)
    .where(_m.id == bindparam("mid"), _m.state == MessageState.SENDING.value)
    .values(state=MessageState.QUEUED.value, next_attempt_at=bindparam("due"), lease_owner=None, lease_expires_at=None)
)
_SKIP = (
    update(Message.__table__)
    .where(_m.id == bindparam("mid"))
    .values(state=MessageState.SKIPPED.value, error_title=bindparam("title"), lease_owner=None, lease_expires_at=None)
)


def _inside_send_windows(session: Session, campaigns: Sequence[RunningCampaign], now: datetime) -> ColumnElement[bool]:
    """The claim's filter by campaign: every message of a campaign without a send window,
    and of one with a window only those whose recipient's zone set is open now. A message
    outside its window is never claimed, so it holds no lease while it waits, and the cap
    is filled with whoever is inside. A contact with no zone set yet counts as unknown."""
    plain = [c.id for c in campaigns if c.send_window is None]
    windowed = [c for c in campaigns if c.send_window is not None]
    allowed: list[ColumnElement[bool]] = [Message.campaign_id.in_(plain)] if plain else []
    sets = zone_sets.all_sets(session) if windowed else {}
    for campaign in windowed:
        assert campaign.send_window is not None
        open_ = send_window.open_sets(campaign.send_window, campaign.timezone, sets, now)
        inside: ColumnElement[bool] = Contact.zone_set_id.in_(sorted(open_))
        if send_window.is_open(campaign.send_window, send_window.UNKNOWN, campaign.timezone, now):
            inside = or_(inside, Contact.zone_set_id.is_(None))
        allowed.append(and_(Message.campaign_id == campaign.id, inside))
    return or_(*allowed)
