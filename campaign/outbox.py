"""The outbox's hard parts in one place: claim, lease, result, recovery (both dialects).

The lifecycle of one message, and why it is safe:

- claim: `queued` → `sending` with a lease (owner, expiry) and `sending_at` empty. One
  statement claims atomically on both dialects (PostgreSQL `FOR UPDATE SKIP LOCKED`; SQLite
  serializes it with `BEGIN IMMEDIATE`). The same transaction reserves each recipient for
  the pair interval (`contacts.next_send_at`), so two workers or two campaigns never message
  one person closer than the interval.
- in flight: `sending_at` is committed *before* the HTTP request leaves. From then on the
  message may have reached Meta.
- result: `sent` with its wamid, `failed`, back to `queued` for a retry, or `skipped`.
- recovery: a lease that expired with `sending_at` empty never left: back to `queued`. A
  message with `sending_at` set and no live lease is *in doubt* (its worker died
  mid-request, or the request timed out): it waits for a status webhook carrying its
  callback data (the reconciler then sets its wamid), and only after the grace period with
  no webhook is it queued again. That is the at-most-once guarantee.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, overload

from sqlalchemy import bindparam, case, delete, func, or_, select, text, update
from sqlalchemy.orm import Session

from campaign import campaigns as campaign_rules
from campaign import policy
from campaign.db import Database
from campaign.models import Campaign, Contact, Message, SendLane, SendSlots, Suppression
from campaign.states import CampaignState, MessageState
from campaign.payloads import MessageSpec

GRACE = timedelta(minutes=10)
"""How long an in-doubt message waits for a webhook before it may be sent again."""
PAIR_MARGIN = 0.25
"""Seconds added to the pair interval: arrival times at Meta jitter around send times."""


@dataclass(frozen=True)
class RunningCampaign:
    id: int
    name: str
    state: str
    sender: str | None
    spec: MessageSpec
    marketing: bool
    mps: int | None


@dataclass
class Claimed:
    """A message this worker holds the lease of, with what the policy decided for it."""

    id: int
    campaign_id: int
    contact_id: int
    phone: str
    params: dict[str, Any]
    attempts: int
    pair_hits: int
    choice: policy.Choice
    business_initiated: bool


@dataclass
class Results:
    """A batch of outcomes to record in one transaction."""

    sent: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    retry: list[dict[str, Any]] = field(default_factory=list)
    in_doubt: list[int] = field(default_factory=list)
    released: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.sent) + len(self.failed) + len(self.retry) + len(self.in_doubt) + len(self.released)

    def add_sent(self, message_id: int, contact_id: int, wamid: str, wa_id: str | None, at: datetime, pair_interval: float) -> None:
        self.sent.append({
            "mid": message_id, "cid": contact_id, "wamid": wamid, "wa_id": wa_id, "at": at,
            "next_send": policy.pair_due(at, pair_interval + PAIR_MARGIN, at),
        })

    def add_failed(self, message_id: int, contact_id: int, code: int | None, title: str, details: str | None, at: datetime) -> None:
        self.failed.append({"mid": message_id, "cid": contact_id, "code": code, "title": title, "details": details,
                            "at": at, "free_at": at})

    def add_retry(self, message_id: int, contact_id: int, due: datetime, *, pair_hit: bool = False,
                  code: int | None = None, title: str | None = None) -> None:
        # The recipient stays reserved only after a pair-rate refusal (Meta: back off that
        # recipient); otherwise the message's own due time holds it back.
        self.retry.append({"mid": message_id, "cid": contact_id, "due": due, "pair": int(pair_hit), "code": code,
                           "title": title, "free_at": due if pair_hit else None})


class Outbox:
    """Every statement of the send lifecycle, for one worker."""

    def __init__(self, db: Database, worker_id: str, *, lease: timedelta = timedelta(seconds=30)) -> None:
        self.db = db
        self.worker_id = worker_id
        self.lease = lease

    # -- campaigns ---------------------------------------------------------------------------

    def active_campaigns(self, names: Sequence[str] | None, now: datetime) -> list[RunningCampaign]:
        """Running campaigns (scheduled ones whose time came are started first)."""
        with self.db.session() as session:
            due = select(Campaign).where(Campaign.state == CampaignState.SCHEDULED, Campaign.scheduled_at <= now)
            for campaign in session.scalars(due):
                campaign.state = CampaignState.RUNNING
                campaign.launched_at = campaign.launched_at or now
            query = select(Campaign).where(Campaign.state == CampaignState.RUNNING)
            if names:
                query = query.where(Campaign.name.in_(names))
            return [_running(c) for c in session.scalars(query)]

    def has_pending_work(self, names: Sequence[str] | None) -> bool:
        """Whether a running or scheduled campaign still has a message to send or settle."""
        with self.db.read_session() as session:
            query = (
                select(Message.id)
                .join(Campaign, Campaign.id == Message.campaign_id)
                .where(Campaign.state.in_([CampaignState.RUNNING, CampaignState.SCHEDULED]))
                .where(Message.state.in_([MessageState.QUEUED, MessageState.SENDING]))
                .limit(1)
            )
            if names:
                query = query.where(Campaign.name.in_(names))
            scheduled = select(Campaign.id).where(Campaign.state == CampaignState.SCHEDULED).limit(1)
            if names:
                scheduled = scheduled.where(Campaign.name.in_(names))
            return session.scalar(query) is not None or session.scalar(scheduled) is not None

    def complete_finished(self, now: datetime) -> list[str]:
        """Running campaigns with nothing queued or sending become `completed`."""
        with self.db.session() as session:
            busy = select(Message.id).where(
                Message.campaign_id == Campaign.id, Message.state.in_([MessageState.QUEUED, MessageState.SENDING])
            )
            done = list(session.scalars(select(Campaign).where(Campaign.state == CampaignState.RUNNING, ~busy.exists())))
            for campaign in done:
                campaign.state = CampaignState.COMPLETED
                campaign.completed_at = now
            return [c.name for c in done]

    def pause_campaigns(self, campaign_ids: Iterable[int], reason: str, code: int | None, now: datetime) -> list[str]:
        with self.db.session() as session:
            paused = []
            for campaign in session.scalars(select(Campaign).where(Campaign.id.in_(list(campaign_ids)))):
                if campaign_rules.engine_pause(session, campaign, reason, code, now=now):
                    paused.append(campaign.name)
            return paused

    # -- claim -------------------------------------------------------------------------------

    def claim(
        self,
        campaigns: Sequence[RunningCampaign],
        limit: int,
        now: datetime,
        *,
        pair_interval: float,
        daily_unique_limit: int | None = None,
    ) -> list[Claimed]:
        """Lease up to `limit` sendable messages and decide what each one gets."""
        by_id = {c.id: c for c in campaigns}
        if not by_id or limit <= 0:
            return []
        with self.db.session() as session:
            postgres = session.get_bind().dialect.name == "postgresql"
            if postgres and daily_unique_limit is not None:
                # One claim at a time counts the messaging-limit budget, across hosts.
                session.execute(text("SELECT pg_advisory_xact_lock(4242001)"))
            candidates = (
                select(Message.id)
                .join(Contact, Contact.id == Message.contact_id)
                .where(
                    Message.campaign_id.in_(list(by_id)),
                    Message.state == MessageState.QUEUED,
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
                       Contact.id.label("contact_id"), Contact.phone, Contact.last_inbound_at, Contact.last_sent_at,
                       Contact.marketing_limited_until, Suppression.id.label("suppression_id"))
                .join(Contact, Contact.id == Message.contact_id)
                .outerjoin(Suppression, Suppression.phone == Contact.phone)
                .where(Message.id.in_(claimed_ids))
                .order_by(Message.id)
            ).all()
            return self._decide(session, rows, by_id, now, pair_interval, daily_unique_limit)

    def _decide(
        self,
        session: Session,
        rows: Sequence[Any],
        by_id: dict[int, RunningCampaign],
        now: datetime,
        pair_interval: float,
        daily_unique_limit: int | None,
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
        budget = policy.budget_left(daily_unique_limit, self._reached_outside_window(session, now) if daily_unique_limit else 0)
        # People already reached in the moving 24 hours cost the messaging limit nothing more.
        already = self._reached_outside_window(session, now, contact_ids) if daily_unique_limit else set()
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
                    suppressed=row.suppression_id is not None,
                    last_inbound_at=row.last_inbound_at,
                    ever_messaged=row.last_sent_at is not None,
                    marketing_limited_until=row.marketing_limited_until,
                ),
                has_template=bool(campaign.spec.template_name),
                has_text=campaign.spec.text_body is not None,
                marketing=campaign.marketing,
                now=now,
            )
            if decision.choice is policy.Choice.SKIP:
                skip.append({"mid": row.id, "title": decision.reason, "at": now})
                continue
            if decision.business_initiated and budget is not None and row.contact_id not in already:
                if budget <= 0:
                    release.append({"mid": row.id, "due": now + timedelta(minutes=1)})
                    continue
                budget -= 1
                already.add(row.contact_id)
            seen_contacts.add(row.contact_id)
            claimed.append(Claimed(
                id=row.id, campaign_id=row.campaign_id, contact_id=row.contact_id, phone=row.phone,
                params=row.params, attempts=row.attempts, pair_hits=row.pair_hits,
                choice=decision.choice, business_initiated=decision.business_initiated,
            ))
        if release:
            session.execute(_RELEASE_TO, release)
        freed = reserved - seen_contacts  # reserved for a message that was not claimed after all
        if freed:
            session.execute(update(Contact).where(Contact.id.in_(list(freed))).values(next_send_at=now))
        if skip:
            session.execute(_SKIP, skip)
        for kind in (policy.Choice.TEMPLATE, policy.Choice.TEXT):
            ids = [c.id for c in claimed if c.choice is kind]
            if ids:
                session.execute(update(Message).where(Message.id.in_(ids)).values(kind=kind.value))
        flagged = [c.id for c in claimed if c.business_initiated]
        if flagged:
            session.execute(update(Message).where(Message.id.in_(flagged)).values(business_initiated=True))
        return claimed

    @overload
    def _reached_outside_window(self, session: Session, now: datetime) -> int: ...

    @overload
    def _reached_outside_window(self, session: Session, now: datetime, among: list[int]) -> set[int]: ...

    def _reached_outside_window(self, session: Session, now: datetime, among: list[int] | None = None) -> int | set[int]:
        """Distinct recipients reached outside their window in the last 24 hours (all
        campaigns): how many, or which of `among`."""
        since = now - timedelta(hours=24)
        reached = (Message.business_initiated.is_(True),
                   or_(Message.sent_at >= since, Message.state == MessageState.SENDING))
        if among is not None:
            return set(session.scalars(select(Message.contact_id).distinct().where(*reached, Message.contact_id.in_(among))))
        return session.scalar(select(func.count(func.distinct(Message.contact_id))).where(*reached)) or 0

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
                .values(sending_at=now, attempts=Message.attempts + 1, lease_expires_at=now + self.lease)
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
            freed = [{"cid": r["cid"], "free_at": r["free_at"]} for r in results.failed + results.retry]
            if freed:
                # Release the claim's reservation of the recipient: nothing reached them.
                session.execute(_CONTACT_FREE, freed)
            if results.in_doubt:
                session.execute(
                    update(Message)
                    .where(Message.id.in_(results.in_doubt), Message.state == MessageState.SENDING)
                    .values(lease_owner=None, lease_expires_at=None)
                )
            if results.released:
                session.execute(_RELEASE_TO, [{"mid": m, "due": None} for m in results.released])

    def release_all(self, ids: Sequence[int], now: datetime) -> None:
        """Give back leased messages that never left (pause, shutdown), freeing their recipients."""
        if not ids:
            return
        with self.db.session() as session:
            contacts = list(session.scalars(
                update(Message)
                .where(Message.id.in_(list(ids)), Message.state == MessageState.SENDING, Message.sending_at.is_(None))
                .values(state=MessageState.QUEUED, lease_owner=None, lease_expires_at=None)
                .returning(Message.contact_id)
            ))
            if contacts:
                session.execute(update(Contact).where(Contact.id.in_(contacts)).values(next_send_at=now))

    def return_unsent(self, ids: Sequence[int], now: datetime) -> None:
        """Marked in flight, but this (live) worker knows the requests never left."""
        if not ids:
            return
        with self.db.session() as session:
            contacts = list(session.scalars(
                update(Message)
                .where(Message.id.in_(list(ids)), Message.state == MessageState.SENDING, Message.wamid.is_(None))
                .values(state=MessageState.QUEUED, sending_at=None, attempts=Message.attempts - 1,
                        lease_owner=None, lease_expires_at=None)
                .returning(Message.contact_id)
            ))
            if contacts:
                session.execute(update(Contact).where(Contact.id.in_(contacts)).values(next_send_at=now))

    # -- recovery ----------------------------------------------------------------------------

    def recover(self, now: datetime, grace: timedelta = GRACE) -> tuple[int, int]:
        """(expired claims re-queued, in-doubt messages re-queued after the grace period)."""
        with self.db.session() as session:
            lease_gone = or_(Message.lease_expires_at.is_(None), Message.lease_expires_at < now)
            never_left = session.execute(
                update(Message)
                .where(Message.state == MessageState.SENDING, Message.sending_at.is_(None), Message.lease_expires_at < now)
                .values(state=MessageState.QUEUED, lease_owner=None, lease_expires_at=None)
            ).rowcount
            expired_doubt = session.execute(
                update(Message)
                .where(
                    Message.state == MessageState.SENDING, Message.wamid.is_(None),
                    Message.sending_at.is_not(None), Message.sending_at < now - grace, lease_gone,
                )
                .values(state=MessageState.QUEUED, lease_owner=None, lease_expires_at=None, sending_at=None)
            ).rowcount
            return never_left, expired_doubt

    # -- pacing ------------------------------------------------------------------------------

    def reserve_slots(self, sender: str, count: int, cap: float, now: float) -> tuple[float, float]:
        """Reserve `count` send slots in this worker's lane of `sender`: (first slot, rate).

        The sender's rate is shared equally by the live lanes, so the workers together send
        evenly at it, and none has to keep a pace meant for all of them. A worker joining
        starts after every slot reserved at the old shares, so the shares never add up to
        more than the rate at any moment."""
        with self.db.session() as session:
            row = session.get(SendSlots, sender, with_for_update=True)
            if row is None:
                session.execute(_SLOTS_INIT, {"sender": sender, "rate": cap})
                row = session.get(SendSlots, sender, with_for_update=True)
                assert row is not None
            rate = min(row.rate, cap)
            if rate < cap and now > row.adjusted_at:
                # No throttling for a while: climb back by a tenth of the cap per second.
                rate = min(cap, rate + cap * RECOVER_PER_SECOND * (now - row.adjusted_at))
                row.adjusted_at = now
            row.rate = rate
            session.execute(delete(SendLane).where(SendLane.sender == sender, SendLane.next_at < now - LANE_EXPIRY))
            lanes = dict(session.execute(select(SendLane.worker, SendLane.next_at).where(SendLane.sender == sender)).all())
            own = lanes.get(self.worker_id)
            start = max(now, row.next_at if own is None else own)
            lanes[self.worker_id] = start
            share = rate / len(lanes)
            end = start + count / share
            if own is None:
                session.add(SendLane(sender=sender, worker=self.worker_id, next_at=end))
            else:
                session.execute(update(SendLane).where(SendLane.sender == sender, SendLane.worker == self.worker_id)
                                .values(next_at=end))
            row.next_at = max(row.next_at, end)
            return start, share

    def release_lanes(self) -> None:
        """This worker sends no more: its share goes to the others at their next reservation."""
        with self.db.session() as session:
            session.execute(delete(SendLane).where(SendLane.worker == self.worker_id))

    def slow_down(self, sender: str, cap: float, now: float) -> float:
        """130429: the sender was throttled; every worker slows down."""
        with self.db.session() as session:
            row = session.get(SendSlots, sender, with_for_update=True)
            if row is None:
                return cap
            if now > row.adjusted_at - RECOVER_AFTER + 1.0:  # one step a second, however many 130429s
                row.rate = max(1.0, min(row.rate, cap) * SLOW_FACTOR)
                row.adjusted_at = now + RECOVER_AFTER  # no recovery before then
            return row.rate


SLOW_FACTOR = 0.8
"""130429: the rate drops by a fifth, at most once a second..."""
RECOVER_AFTER = 2.0
RECOVER_PER_SECOND = 0.1
"""...and from this many seconds after the last drop it climbs back by a tenth of the cap a second."""
LANE_EXPIRY = 1.0
"""Seconds after its last reserved slot that a worker's lane still counts: a worker that is
briefly between claims keeps its share; one that died gives it up soon."""


def _running(campaign: Campaign) -> RunningCampaign:
    return RunningCampaign(
        id=campaign.id,
        name=campaign.name,
        state=campaign.state,
        sender=campaign.phone_number_id,
        spec=MessageSpec(
            template_name=campaign.template_name,
            template_language=campaign.template_language,
            param_columns=tuple(campaign.param_columns),
            text_body=campaign.text_body,
            header_type=campaign.header_type,
            header_link=campaign.header_link,
        ),
        marketing=campaign.template_category == "marketing",
        mps=campaign.mps,
    )


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
            error_code=bindparam("code"), error_title=bindparam("title"),
            sending_at=None, lease_owner=None, lease_expires_at=None)
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
_SLOTS_INIT = text(
    "INSERT INTO send_slots (sender, next_at, rate, adjusted_at) VALUES (:sender, 0, :rate, 0) ON CONFLICT (sender) DO NOTHING"
)
