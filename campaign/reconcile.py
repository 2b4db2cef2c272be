"""The reconciler: applies stored webhook events to the outbox, the contacts and the opt-out list.

The receiver (webhooks.py) only stores raw bodies; this module reads the unprocessed ones in
id order, parses them (events.py) and applies what they carry:

- statuses move messages (statuses.py merges them, order-free). A status is matched by
  its wamid, or, when no message has that wamid yet, by `biz_opaque_callback_data` (the
  outbox id the dispatcher sent): that resolves a message whose worker died mid-request
  (`sending`, no wamid; DESIGN.md guarantee 3). A status whose message is not found is kept
  in `pending_statuses` (the webhook can beat the send's commit) and retried on every pass;
  after `orphan_after` (default 1 hour) it is marked orphaned, counted and logged.
  A `failed` status records the error and applies the error table (errors.py): 131026
  marks the contact unreachable, 131050 suppresses the number, 131049 blocks marketing to
  it for 24 hours, and an error that dooms the campaign (template paused 132015, spam limit
  131048, ...) pauses it, or every running campaign of its sender for PAUSE_ALL codes.
  A status pauses a campaign only when it is newer than the campaign's last pause, so old
  news the user has already acted on (paused, fixed, resumed) never pauses it again.
- inbound messages and `user_preferences` open windows, opt out and opt in; an inbound
  message that answers a campaign message is recorded on it as its reply (inbound.py).
- template status, sender quality and business capability updates go to health.py: a
  template paused, disabled or rejected pauses the campaigns using it, a flagged sender its
  marketing campaigns; the latest status and limits are remembered, whatever the order.
- what parsing noted (out-of-band errors, template and account updates, ignored items) is
  logged once the event is applied.

Each batch of events is parsed and validated completely before anything is applied, then
applied and marked processed in one transaction: a malformed body (events.Malformed) is
marked processed with `error` set and never half-applied. Should applying a batch fail, its
events are retried one per transaction and only the failing one is marked with its error.
Applying is idempotent: the same event twice, or events in any order, give the same final
states (timestamps merge with min/max).

Replay (`replay`, `campaign reconcile --replay`) rebuilds message states from every stored
event, e.g. after a reconciler fix:
1. in one transaction: every message that has a wamid (Meta accepted it) goes back to
   `sent`, keeping `sent_at` and its wamid, with `delivered_at`, `read_at`, `failed_at`,
   the error columns and `pricing_category` cleared; every pending status is deleted; every
   event's `processed_at` and `error` are cleared;
2. then every event is reconciled again in id order, exactly as the first time.
Messages without a wamid (queued, sending with no webhook yet, skipped, cancelled, failed
by the dispatcher before Meta accepted them) are untouched. Contact facts
(`last_inbound_at`, `unreachable_at`, `marketing_limited_until`, opt-out and opt-in times)
are not reset: they only ever move forward, so applying the events again leaves them as
they were. Suppressions are applied again: an opt-out is never forgotten by a replay, so a
number unsuppressed by hand after an opt-out needs `campaign unsuppress` again. Campaigns
are not paused again (their pause is newer than the events). Statuses orphaned before the
replay are looked for once more and orphaned again if still unknown.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, insert, or_, select, text, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from campaign import campaigns, contacts, errors, health
from campaign.breaker import FailureBreaker, Trip
from campaign.db import Database, database_unavailable
from campaign.clock import SYSTEM, Clock
from campaign.events import (IdentityChange, InboundItem, Malformed, ParsedEvent, PreferenceItem, SenderItem, StatusItem,
                             TemplateStatusItem, parse_event, parse_status)
from campaign.inbound import (
    DEFAULT_OPT_IN_WORDS,
    DEFAULT_OPT_OUT_WORDS,
    apply_inbound,
    apply_replies,
    apply_unmatched,
    resolve_identities,
)
from campaign.models import Campaign, Contact, Message, PendingStatus, RetiredWamid, WebhookEvent
from campaign.people import learn_user_ids, rekey
from campaign.states import CampaignState, MessageState, SuppressionSource
from campaign.sql import batches, insert_ignore
from campaign.statuses import Delivery, StatusError, StatusUpdate, merge, parse_callback_data
from campaign.suppressions import suppress

log = logging.getLogger(__name__)

DEFAULT_ORPHAN_AFTER = timedelta(hours=1)
BATCH_BYTES = 1_000_000
"""Bodies applied per transaction, at most (one event always fits): keeps a transaction, and
so SQLite's write lock that the receiver waits for, short."""


@dataclass
class ReconcileStats:
    events: int = 0
    """Events processed (marked `processed_at`)."""
    statuses_applied: int = 0
    """Statuses applied to a message (including pending ones whose message turned up)."""
    inbound: int = 0
    """Inbound messages applied to a contact."""
    replies: int = 0
    """Inbound messages attributed to the campaign message they answer (first answer or not)."""
    pending: int = 0
    """Statuses still waiting for their message after the pass (not orphaned)."""
    orphaned: int = 0
    """Statuses given up in this pass: no message turned up within the orphan limit."""
    errors: int = 0
    """Events marked processed with an error (malformed bodies)."""
    unmatched: int = 0
    """Inbound messages or preferences from a user known only by a BSUID no contact has yet:
    kept, and applied once a webhook tells whose it is."""

    def add(self, other: ReconcileStats) -> None:
        for f in fields(self):
            if f.name != "pending":
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


# -- applying -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rules:
    opt_out: frozenset[str]
    opt_in: frozenset[str]
    orphan_after: timedelta
    batch: int
    marketing_retries: int = 3
    marketing_retry_after: float = 86400.0
    default_sender: str | None = None
    breaker: FailureBreaker | None = None


@dataclass
class _Row:
    """The delivery columns of one message, changed in memory and written back at once."""

    id: int
    campaign_id: int
    contact_id: int
    state: str
    wamid: str | None
    wa_id: str | None
    sent_at: datetime | None
    delivered_at: datetime | None
    read_at: datetime | None
    failed_at: datetime | None
    error_code: int | None
    error_title: str | None
    error_details: str | None
    pricing_category: str | None
    marketing_waits: int
    pricing_billable: bool | None = None
    pricing_model: str | None = None
    pricing_type: str | None = None
    changed: bool = False


_ROW_COLUMNS = [getattr(Message, f.name) for f in fields(_Row) if f.name != "changed"]
_WRITTEN = ("state", "wamid", "wa_id", "sent_at", "delivered_at", "read_at", "failed_at",
            "error_code", "error_title", "error_details", "pricing_category",
            "pricing_billable", "pricing_model", "pricing_type")
# A Core executemany: the ORM's bulk update by primary key was the largest single cost in a profile.
_UPDATE_ROW = (
    update(Message.__table__)
    .where(Message.__table__.c.id == bindparam("row_id"))
    .values({name: bindparam(name, type_=Message.__table__.c[name].type) for name in _WRITTEN})
)


_NOT_YET_OUT = frozenset({MessageState.QUEUED.value, MessageState.SENDING.value, MessageState.SENT.value})

_REQUEUE = (
    update(Message.__table__)
    .where(Message.__table__.c.id == bindparam("mid"), Message.__table__.c.wamid == bindparam("old"),
           Message.__table__.c.state == MessageState.FAILED.value)
    .values(state=MessageState.QUEUED.value, wamid=None, failed_at=None, next_attempt_at=bindparam("due"),
            marketing_waits=Message.__table__.c.marketing_waits + 1, sending_at=None, lease_owner=None,
            lease_expires_at=None)
)


@dataclass(frozen=True)
class _Source:
    """Where a status comes from: an event being processed, or a pending row."""

    received_at: datetime
    event_id: int | None = None
    pending_id: int | None = None


def reconcile_once(
    db: Database,
    *,
    now: datetime | None = None,
    batch: int = 500,
    opt_out_words: Iterable[str] = DEFAULT_OPT_OUT_WORDS,
    opt_in_words: Iterable[str] = DEFAULT_OPT_IN_WORDS,
    orphan_after: timedelta = DEFAULT_ORPHAN_AFTER,
    marketing_retries: int = 3,
    marketing_retry_after: float = 86400.0,
    default_sender: str | None = None,
    breaker: FailureBreaker | None = None,
    write_lock: AbstractContextManager[Any] | None = None,
    clock: Clock = SYSTEM,
) -> ReconcileStats:
    """Apply every event stored so far, `batch` events (at most BATCH_BYTES) per transaction,
    and retry the pending statuses.

    `write_lock`, when given, is held around each write transaction: the receiver shares one
    with its own reconciler so that a body waiting to be stored queues on it rather than on
    SQLite's busy handler, which polls with sleeps of up to 100 ms. `now` (default: the
    clock's) dates the pass: processing times, orphaning, pauses."""
    now = now or clock.now()
    rules = _Rules(
        opt_out=frozenset(w.strip().casefold() for w in opt_out_words),
        opt_in=frozenset(w.strip().casefold() for w in opt_in_words),
        orphan_after=orphan_after,
        batch=max(1, batch),
        marketing_retries=marketing_retries,
        marketing_retry_after=marketing_retry_after,
        default_sender=default_sender,
        breaker=breaker,
    )
    lock = write_lock if write_lock is not None else contextlib.nullcontext()
    total = ReconcileStats()
    with db.read_session() as session:
        upto = session.scalar(select(func.max(WebhookEvent.id)).where(WebhookEvent.processed_at.is_(None)))
        waiting = session.scalar(select(PendingStatus.id).where(PendingStatus.orphaned_at.is_(None)).limit(1))
    if upto is None and waiting is None:
        return total
    after = 0
    while True:
        events, more = _read_events(db, after, upto or 0, rules.batch)
        total.add(_run_batch(db, events, now, rules, lock))
        if not more:
            break
        after = events[-1].id
    with db.read_session() as session:
        total.pending = session.scalar(
            select(func.count()).select_from(PendingStatus).where(PendingStatus.orphaned_at.is_(None))
        ) or 0
    return total


def replay(db: Database, *, now: datetime | None = None, **options: Any) -> ReconcileStats:
    """Rebuild message states from every stored event (see the module docstring)."""
    with db.session() as session:
        session.execute(
            update(Message)
            .where(Message.wamid.is_not(None))
            .values(state=MessageState.SENT.value, delivered_at=None, read_at=None, failed_at=None,
                    error_code=None, error_title=None, error_details=None, pricing_category=None,
                    pricing_billable=None, pricing_model=None, pricing_type=None)
        )
        session.execute(delete(PendingStatus))
        session.execute(update(WebhookEvent).values(processed_at=None, error=None))
    return reconcile_once(db, now=now, **options)


@dataclass
class _Event:
    """A stored event, parsed (outside the write transaction: parsing is a quarter of the work)."""

    id: int
    received_at: datetime
    parsed: ParsedEvent | None
    error: str | None


def _read_events(db: Database, after: int, upto: int, limit: int) -> tuple[list[_Event], bool]:
    """The next unprocessed events in id order, at most `limit` and BATCH_BYTES (one always)."""
    with db.read_session() as session:
        rows = session.execute(
            select(WebhookEvent.id, func.length(WebhookEvent.body))
            .where(WebhookEvent.processed_at.is_(None), WebhookEvent.id > after, WebhookEvent.id <= upto)
            .order_by(WebhookEvent.id)
            .limit(limit + 1)
        ).all()
        picked: list[int] = []
        size = 0
        more = len(rows) > limit
        for event_id, length in rows[:limit]:
            size += length or 0
            if picked and size > BATCH_BYTES:
                more = True
                break
            picked.append(event_id)
        bodies = session.execute(
            select(WebhookEvent.id, WebhookEvent.body, WebhookEvent.received_at)
            .where(WebhookEvent.id.in_(picked)).order_by(WebhookEvent.id)
        ).all() if picked else []
    events = []
    for event_id, body, received_at in bodies:
        try:
            events.append(_Event(event_id, received_at, parse_event(body), None))
        except Malformed as exc:
            events.append(_Event(event_id, received_at, None, f"malformed: {exc}"))
    return events, more


def _run_batch(db: Database, events: list[_Event], now: datetime, rules: _Rules,
               lock: AbstractContextManager[Any]) -> ReconcileStats:
    notes: list[tuple[int, str]] = []
    try:
        with lock, db.session() as session:
            _serialize(session)
            stats = _process(session, events, now, rules, notes, with_pending=True)
    except Exception as exc:
        if not events or isinstance(exc, OperationalError) or database_unavailable(exc):
            # The database is unavailable or busy (down, restarting, a dropped connection, the
            # pool exhausted): the events stay unprocessed for the next pass. Isolating them
            # now would mark good events processed with the outage as their error: lost.
            raise
        log.exception("applying events %s..%s failed: retrying them one at a time", events[0].id, events[-1].id)
        notes.clear()
        stats = _run_isolated(db, events, now, rules, lock, notes)
    for level, message in notes:
        log.log(level, message)
    return stats


def _run_isolated(db: Database, events: list[_Event], now: datetime, rules: _Rules,
                  lock: AbstractContextManager[Any], notes: list[tuple[int, str]]) -> ReconcileStats:
    """Each event alone; one that still fails is marked processed with its error."""
    stats = ReconcileStats()
    for event in events:
        try:
            with lock, db.session() as session:
                _serialize(session)
                stats.add(_process(session, [event], now, rules, notes, with_pending=False))
        except Exception as exc:
            if isinstance(exc, OperationalError) or database_unavailable(exc):
                raise  # not this event's fault: it stays unprocessed for the next pass
            log.exception("event %s could not be applied", event.id)
            with lock, db.session() as session:
                session.execute(update(WebhookEvent).where(WebhookEvent.id == event.id)
                                .values(processed_at=now, error=f"not applied: {type(exc).__name__}: {str(exc)[:300]}"))
            stats.events += 1
            stats.errors += 1
    return stats


def _serialize(session: Session) -> None:
    """One reconciler at a time: SQLite's BEGIN IMMEDIATE already is; on PostgreSQL an
    advisory lock held until the transaction ends (receivers scale, reconciling is cheap)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(7235005)"))


def _process(session: Session, events: list[_Event], now: datetime, rules: _Rules,
             notes: list[tuple[int, str]], *, with_pending: bool) -> ReconcileStats:
    stats = ReconcileStats()
    statuses: list[tuple[StatusItem, _Source]] = []
    inbound: list[InboundItem] = []
    preferences: list[PreferenceItem] = []
    identities: list[IdentityChange] = []
    templates: list[tuple[TemplateStatusItem, datetime]] = []
    senders: list[tuple[SenderItem, datetime]] = []
    # Another reconciler (another receiver's) may have applied some meanwhile.
    still = set()
    for chunk in batches([e.id for e in events]):
        still.update(session.scalars(select(WebhookEvent.id).where(
            WebhookEvent.id.in_(chunk), WebhookEvent.processed_at.is_(None))))
    events = [e for e in events if e.id in still]
    for event in events:
        if event.parsed is None:
            notes.append((logging.WARNING, f"webhook event {event.id} is {event.error}"))
            continue
        statuses += [(item, _Source(event.received_at, event_id=event.id)) for item in event.parsed.statuses]
        inbound += event.parsed.inbound
        preferences += event.parsed.preferences
        identities += event.parsed.identities
        # Meta's time of the news, else when it reached us: the latest news wins (health.py).
        templates += [(item, item.at or event.received_at) for item in event.parsed.templates]
        senders += [(item, item.at or event.received_at) for item in event.parsed.senders]
        notes += [(level, f"event {event.id}: {message}") for level, message in event.parsed.notes]
    if with_pending:
        statuses += _resolvable_pending(session)

    stats.statuses_applied = _apply_statuses(session, statuses, now, notes, rules)
    rekey(session, identities, notes)
    inbound, preferences, stats.unmatched = resolve_identities(session, inbound, preferences, now)
    stats.inbound = apply_inbound(session, inbound, preferences, opt_out=rules.opt_out, opt_in=rules.opt_in)
    stats.replies = apply_replies(session, inbound)
    stats.inbound += apply_unmatched(session, opt_out=rules.opt_out, opt_in=rules.opt_in)
    if stats.unmatched:
        notes.append((logging.WARNING, f"{stats.unmatched} inbound message(s) or preference(s) from users known only by "
                                       "a business-scoped user id no contact has yet: kept, and applied once a webhook "
                                       "tells whose number it is"))
    health.apply_template_statuses(session, templates, now, notes)
    health.apply_sender_updates(session, senders, now, notes)

    for chunk in batches([e.id for e in events if e.error is None]):
        session.execute(update(WebhookEvent).where(WebhookEvent.id.in_(chunk)).values(processed_at=now, error=None))
    for event in events:
        if event.error is not None:
            session.execute(update(WebhookEvent).where(WebhookEvent.id == event.id)
                            .values(processed_at=now, error=event.error))
    stats.events = len(events)
    stats.errors = sum(1 for e in events if e.error is not None)
    if with_pending:
        stats.orphaned = _orphan(session, now, rules.orphan_after, notes)
    return stats


def _resolvable_pending(session: Session) -> list[tuple[StatusItem, _Source]]:
    """Pending statuses whose message now exists (by wamid, or by callback data for a message
    still without a wamid): one join, not one lookup per pending status."""
    waiting = PendingStatus.orphaned_at.is_(None)
    rows = session.execute(
        select(PendingStatus.id, PendingStatus.payload, PendingStatus.first_seen_at)
        .join(Message, or_(Message.wamid == PendingStatus.wamid,
                           and_(Message.id == PendingStatus.message_id, Message.wamid.is_(None))))
        .where(waiting)
        .order_by(PendingStatus.id)
    ).all()
    found: dict[int, tuple[StatusItem, _Source]] = {}
    for pending_id, payload, first_seen in rows:
        item = parse_status(payload)
        if item is not None:
            found[pending_id] = (item, _Source(first_seen, pending_id=pending_id))
    return list(found.values())


def _load_rows(session: Session, condition_column: Any, keys: Iterable[Any]) -> list[_Row]:
    rows: list[_Row] = []
    for chunk in batches(sorted(keys)):
        query = select(*_ROW_COLUMNS).where(condition_column.in_(chunk)).order_by(Message.id)
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update()  # the dispatcher writes these rows too
        rows += [_Row(*values) for values in session.execute(query)]
    return rows


def _apply_statuses(session: Session, statuses: list[tuple[StatusItem, _Source]], now: datetime,
                    notes: list[tuple[int, str]], rules: _Rules) -> int:
    if not statuses:
        return 0
    # Statuses of a send Meta failed with the marketing limit, whose message went back to the
    # queue: old news about a message that will be (or was) sent again under a new wamid.
    retired = _retired(session, {s.wamid for s, _ in statuses})
    statuses = [(s, source) for s, source in statuses if s.wamid not in retired]
    by_id = {row.id: row for row in _load_rows(session, Message.wamid, {s.wamid for s, _ in statuses})}
    callback_ids = {parse_callback_data(s.callback_data) for s, _ in statuses} - {None} - by_id.keys()
    if callback_ids:
        by_id.update((row.id, row) for row in _load_rows(session, Message.id, callback_ids))
    by_wamid = {row.wamid: row for row in by_id.values() if row.wamid is not None}

    applied = 0
    new_pending: list[dict[str, Any]] = []
    resolved_pending: list[int] = []
    failures: list[tuple[_Row, StatusItem]] = []
    outcomes: list[tuple[int, int | None, datetime]] = []
    known_recipients: list[tuple[_Row, StatusItem]] = []
    for item, source in statuses:
        row = by_wamid.get(item.wamid)
        message_id = parse_callback_data(item.callback_data)
        if row is None and message_id is not None and message_id in by_id:
            candidate = by_id[message_id]
            if candidate.wamid is None:
                # The worker died mid-request (or its commit is late): Meta's echo of the
                # outbox id tells which message this wamid is.
                candidate.wamid = item.wamid
                by_wamid[item.wamid] = candidate
                row = candidate
            elif source.pending_id is None:
                notes.append((logging.WARNING, f"status {item.status} for {item.wamid} carries the id of message "
                                               f"{message_id}, which has another wamid: kept pending"))
        if row is None:
            if source.pending_id is None:
                new_pending.append({
                    "event_id": source.event_id, "wamid": item.wamid, "callback_data": item.callback_data,
                    "message_id": message_id, "status": item.status, "payload": item.payload,
                    "first_seen_at": source.received_at, "orphaned_at": None,
                })
            continue
        before = row.state
        if item.recipient_user_id:
            known_recipients.append((row, item))  # a status names the person we sent to by their BSUID
        _merge_into(row, item)
        applied += 1
        if before in _NOT_YET_OUT and row.state not in _NOT_YET_OUT:
            # Each message's outcome once, for the breaker: delivered or read, or failed with its code.
            outcomes.append((row.campaign_id, item.error.code if row.state == "failed" and item.error else None, item.at))
        if source.pending_id is not None:
            resolved_pending.append(source.pending_id)
        if item.status == "failed" and item.error is not None:
            failures.append((row, item))

    changed = [row for row in by_id.values() if row.changed]
    if changed:
        session.execute(_UPDATE_ROW, [{"row_id": row.id, **{c: getattr(row, c) for c in _WRITTEN}} for row in changed])
    if new_pending:
        session.execute(insert(PendingStatus), new_pending)
    for chunk in batches(resolved_pending):
        session.execute(delete(PendingStatus).where(PendingStatus.id.in_(chunk)))
    if failures:
        _apply_error_table(session, failures, now, notes, rules)
    learn_user_ids(session, [(row.contact_id, item.recipient_user_id) for row, item in known_recipients])
    if rules.breaker is not None and outcomes:
        for trip in rules.breaker.record(outcomes):
            _trip(session, trip, rules.breaker.threshold, now, notes)
    return applied


def _merge_into(row: _Row, item: StatusItem) -> None:
    # The pricing of the latest status (by its time) that carries any: order-independent, so
    # duplicates, disorder and a replay end the same. Ties keep what is there.
    latest = max((t for t in (row.sent_at, row.delivered_at, row.read_at, row.failed_at) if t is not None), default=None)
    carries_pricing = item.pricing_billable is not None or item.pricing_model or item.pricing_type
    if carries_pricing and (row.pricing_billable is None and row.pricing_model is None and row.pricing_type is None
                            or latest is None or item.at > latest):
        row.pricing_billable = item.pricing_billable if item.pricing_billable is not None else row.pricing_billable
        row.pricing_model = item.pricing_model or row.pricing_model
        row.pricing_type = item.pricing_type or row.pricing_type
    current = Delivery(
        state=row.state, sent_at=row.sent_at, delivered_at=row.delivered_at, read_at=row.read_at,
        failed_at=row.failed_at,
        # Error columns belong to a failed status only once the message failed; before, they
        # may hold a transient error the dispatcher retried past.
        error=StatusError(row.error_code, row.error_title, row.error_details) if row.failed_at else None,
    )
    merged = merge(current, StatusUpdate(item.status, item.at, item.error))
    row.state, row.sent_at, row.delivered_at = merged.state, merged.sent_at, merged.delivered_at
    row.read_at, row.failed_at = merged.read_at, merged.failed_at
    if merged.error is not None:
        row.error_code, row.error_title, row.error_details = merged.error.code, merged.error.title, merged.error.details
    if item.recipient_id and row.wa_id is None:
        row.wa_id = item.recipient_id
    if item.pricing_category and (row.pricing_category is None or item.pricing_category < row.pricing_category):
        row.pricing_category = item.pricing_category
    row.changed = True


def _apply_error_table(session: Session, failures: list[tuple[_Row, StatusItem]], now: datetime,
                       notes: list[tuple[int, str]], rules: _Rules) -> None:
    """What a failed status does beyond its message (errors.consequence, as for a send)."""
    people = {c.id: c.identities for c in session.scalars(select(Contact).where(
        Contact.id.in_({row.contact_id for row, _ in failures})))}
    pauses: dict[int, tuple[int, datetime, errors.Pause]] = {}
    requeue: dict[int, dict[str, Any]] = {}
    media_failures: set[int] = set()
    for row, item in failures:
        assert item.error is not None
        code = item.error.code
        rule = errors.rule_for(code)
        what = errors.consequence(rule, source=errors.Source.STATUS, attempts=1, marketing_waits=row.marketing_waits,
                                  marketing_retries=rules.marketing_retries,
                                  marketing_retry_after=rules.marketing_retry_after)
        if what.fate is errors.Fate.RETRY and row.state == MessageState.FAILED.value and row.read_at is None \
                and row.delivered_at is None and row.wamid is not None:
            requeue[row.id] = {"mid": row.id, "old": row.wamid, "due": item.at + timedelta(seconds=what.retry_after),
                               "at": now}
        if rule.pause_when_most:
            media_failures.add(row.campaign_id)
        if row.contact_id not in people:
            continue
        if what.unreachable:
            contacts.remember_unreachable(session, [row.contact_id], item.at)
        if what.limit_marketing_for:
            contacts.limit_marketing(session, [row.contact_id], item.at + timedelta(seconds=what.limit_marketing_for))
        if what.suppress:
            suppress(session, people[row.contact_id], reason=f"error {code}: {rule.meaning}",
                     source=SuppressionSource.ERROR_131050, scope=what.suppress, now=item.at)
        if what.pause is not None and code is not None:
            earlier = pauses.get(row.campaign_id)
            if earlier is None or item.at > earlier[1]:
                pauses[row.campaign_id] = (code, item.at, what.pause)
    if requeue:
        _requeue(session, list(requeue.values()), notes)
    for campaign_id in sorted(media_failures):
        _pause_if_most_failed(session, campaign_id, now, notes)
    for campaign_id, (code, at, pause) in sorted(pauses.items()):
        _pause_for(session, campaign_id, code, at, pause, now, notes, rules)


def _trip(session: Session, trip: Trip, threshold: float, now: datetime, notes: list[tuple[int, str]]) -> None:
    campaign = session.get(Campaign, trip.campaign_id)
    if campaign is None or (campaign.paused_at is not None and trip.at <= campaign.paused_at):
        return  # old news: the user resumed it after these outcomes
    reason = trip.reason(threshold)
    if campaigns.engine_pause(session, campaign, reason, None, now=now):
        notes.append((logging.WARNING, f"campaign {campaign.name!r} paused: {reason}"))


def _retired(session: Session, wamids: set[str]) -> set[str]:
    found: set[str] = set()
    for chunk in batches(sorted(wamids)):
        found.update(session.scalars(select(RetiredWamid.wamid).where(RetiredWamid.wamid.in_(chunk))))
    return found


def _requeue(session: Session, rows: list[dict[str, Any]], notes: list[tuple[int, str]]) -> None:
    """131049 by webhook: the message goes back to the queue to wait out Meta's marketing
    limit, its old wamid retired so that late statuses of that send are ignored."""
    session.execute(insert_ignore(session, RetiredWamid),
                    [{"wamid": r["old"], "message_id": r["mid"], "retired_at": r["at"]} for r in rows])
    session.execute(_REQUEUE, rows)
    # A campaign that completed before the news came has a message to send again.
    requeued = select(Message.campaign_id).where(Message.id.in_([r["mid"] for r in rows]))
    session.execute(update(Campaign).where(Campaign.id.in_(requeued), Campaign.state == CampaignState.COMPLETED)
                    .values(state=CampaignState.RUNNING, completed_at=None))
    notes.append((logging.INFO, f"{len(rows)} message(s) refused for Meta's per-user marketing limit wait to go again"))


MEDIA_PAUSE_MIN = 20
"""A campaign is paused for media failures (131053) only after this many: a few broken
links in per-recipient columns fail their own messages, not the campaign."""


def _pause_if_most_failed(session: Session, campaign_id: int, now: datetime, notes: list[tuple[int, str]]) -> None:
    """131053 fails the message; when most of a campaign's accepted sends failed with it, the
    header cannot be fetched for anyone: pause instead of failing the rest."""
    m = Message.__table__.c
    media = session.scalar(select(func.count()).where(m.campaign_id == campaign_id, m.state == MessageState.FAILED.value,
                                                      m.error_code.in_(errors.rule_for(131053).codes)))
    accepted = session.scalar(select(func.count()).where(m.campaign_id == campaign_id, m.wamid.is_not(None)))
    if media >= MEDIA_PAUSE_MIN and media * 2 > (accepted or 0):
        campaign = session.get(Campaign, campaign_id)
        rule = errors.rule_for(131053)
        reason = (f"{media} of {accepted} messages failed with 131053 ({rule.meaning}): {rule.advice}; "
                  "resume once the media is fixed")
        if campaign is not None and campaigns.engine_pause(session, campaign, reason, 131053, now=now):
            notes.append((logging.WARNING, f"campaign {campaign.name!r} paused: {reason}"))


def _pause_for(session: Session, campaign_id: int, code: int, at: datetime, pause: errors.Pause, now: datetime,
               notes: list[tuple[int, str]], rules: _Rules) -> None:
    rule = errors.rule_for(code)
    campaign = session.get(Campaign, campaign_id)
    if campaign is None:
        return
    targets = [campaign]
    if pause is errors.Pause.SENDER:
        targets += [c for c in campaigns.of_sender(session, campaign.phone_number_id, rules.default_sender)
                    if c.id != campaign.id]
    reason = f"error {code} in a status webhook: {rule.meaning} ({rule.advice})"
    for target in targets:
        # Old news the user already acted on (paused, then resumed) does not pause again;
        # this is also what keeps a replay from pausing campaigns.
        if target.paused_at is not None and at <= target.paused_at:
            continue
        if campaigns.engine_pause(session, target, reason, code, now=max(now, at)):
            notes.append((logging.WARNING, f"campaign {target.name!r} paused: {reason}"))


def _orphan(session: Session, now: datetime, orphan_after: timedelta, notes: list[tuple[int, str]]) -> int:
    """Statuses that waited longer than `orphan_after` for their message: given up, reported."""
    old = and_(PendingStatus.orphaned_at.is_(None), PendingStatus.first_seen_at < now - orphan_after)
    sample = session.scalars(select(PendingStatus.wamid).where(old).order_by(PendingStatus.id).limit(5)).all()
    if not sample:
        return 0
    count = session.execute(update(PendingStatus).where(old).values(orphaned_at=now)).rowcount  # type: ignore[attr-defined]
    notes.append((logging.WARNING, f"{count} status webhook(s) orphaned: no message with their wamid or callback "
                                   f"data appeared within {orphan_after} (e.g. {', '.join(sample)}); "
                                   "they may belong to another app on the same number"))
    return count
