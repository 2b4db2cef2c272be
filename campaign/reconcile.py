"""The reconciler: applies stored webhook events to the outbox, the contacts and the opt-out list.

The receiver (webhooks.py) only stores raw bodies; this module reads the unprocessed ones in
id order and walks every `entry → changes → value`:

- `statuses[]` move messages (statuses.py merges them, order-free). A status is matched by
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
- `messages[]` (inbound) upsert the contact and open its 24-hour window (`last_inbound_at`);
  STOP / UNSUBSCRIBE (and the configured words), typed or sent as a quick-reply button or
  an interactive reply, suppress the number (source `opt_out`); START lifts only an
  `opt_out` suppression. Opt-outs and opt-ins are compared by their message times
  (`Contact.opted_out_at` / `opted_in_at`), so STOP and START arriving in either order
  end the same way.
- `user_preferences` (the user stopped or resumed marketing in WhatsApp): `stop`
  suppresses (source `opt_out`); `resume` / `signup` lift `opt_out` and `error_131050`
  suppressions, the ones Meta's own marketing switch stands for.
- out-of-band `errors[]`, template status / quality updates, account updates and unknown
  fields are logged (a template paused, disabled or rejected, or a quality drop, as a
  warning) and kept: the raw body stays in `webhook_events`.

Each batch of events is parsed and validated completely before anything is applied, then
applied and marked processed in one transaction: a malformed body (invalid JSON, wrong
types, huge numbers, deep nesting) is marked processed with `error` set and never
half-applied. Should applying a batch fail, its events are retried one per transaction
and only the failing one is marked with its error. Applying is idempotent: the same event
twice, or events in any order, give the same final states (timestamps merge with min/max).

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
import json
import logging
import re
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, insert, or_, select, text, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from campaign import campaigns
from campaign.db import Database
from campaign.errors import Action, rule_for
from campaign.clock import utcnow
from campaign.models import Campaign, Contact, Message, PendingStatus, Suppression, WebhookEvent
from campaign.states import CampaignState, MessageState, SuppressionSource
from campaign.sql import batches, insert_ignore
from campaign.statuses import STATUS_WORDS, Delivery, StatusError, StatusUpdate, merge, parse_callback_data
from campaign.suppressions import suppress

log = logging.getLogger(__name__)

DEFAULT_OPT_OUT_WORDS: tuple[str, ...] = ("STOP", "UNSUBSCRIBE")
DEFAULT_OPT_IN_WORDS: tuple[str, ...] = ("START",)
DEFAULT_ORPHAN_AFTER = timedelta(hours=1)
BATCH_BYTES = 1_000_000
"""Bodies applied per transaction, at most (one event always fits): keeps a transaction, and
so SQLite's write lock that the receiver waits for, short."""

# Inbound types that are not the user writing to the business: they do not open the
# 24-hour window (a number change, a deleted or edited message). Reactions are left out
# too: Meta does not say that they open it, and a wrongly open window costs a failed
# free-form message (131047) while a wrongly closed one only costs a template.
_NOT_WINDOW_OPENING = frozenset({"system", "revoke", "reaction", "edit", "deleted", "ephemeral"})
_WA_ID = re.compile(r"[1-9][0-9]{5,14}")
"""A WhatsApp user id as Meta sends it: the E.164 digits without `+` (at most 15)."""
_MAX_TIMESTAMP = 253402300799  # 9999-12-31T23:59:59Z
_MAX_ERROR_CODE = 2**53
_QUALITY = {"GREEN": 3, "YELLOW": 2, "RED": 1}
_BAD_TEMPLATE_EVENTS = frozenset({"PAUSED", "DISABLED", "REJECTED", "FLAGGED", "PENDING_DELETION"})


@dataclass
class ReconcileStats:
    events: int = 0
    """Events processed (marked `processed_at`)."""
    statuses_applied: int = 0
    """Statuses applied to a message (including pending ones whose message turned up)."""
    inbound: int = 0
    """Inbound messages applied to a contact."""
    pending: int = 0
    """Statuses still waiting for their message after the pass (not orphaned)."""
    orphaned: int = 0
    """Statuses given up in this pass: no message turned up within the orphan limit."""
    errors: int = 0
    """Events marked processed with an error (malformed bodies)."""

    def add(self, other: ReconcileStats) -> None:
        for f in fields(self):
            if f.name != "pending":
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


# -- parsing: pure, complete before anything is applied ----------------------------------------


class Malformed(ValueError):
    """A body that is not a well-formed webhook; its event gets this as its error."""


@dataclass(frozen=True)
class StatusItem:
    wamid: str
    status: str
    at: datetime
    recipient_id: str | None
    callback_data: str | None
    pricing_category: str | None
    error: StatusError | None
    payload: dict[str, Any]


@dataclass(frozen=True)
class InboundItem:
    wa_id: str
    at: datetime
    type: str
    words: tuple[str, ...]
    """Texts that may carry an opt-out or opt-in word: the body, a button's payload and
    text, an interactive reply's id and title."""


@dataclass(frozen=True)
class PreferenceItem:
    wa_id: str
    at: datetime
    value: str


@dataclass
class ParsedEvent:
    statuses: list[StatusItem] = field(default_factory=list)
    inbound: list[InboundItem] = field(default_factory=list)
    preferences: list[PreferenceItem] = field(default_factory=list)
    notes: list[tuple[int, str]] = field(default_factory=list)
    """(logging level, message) to log once the event is applied."""


def _reject_constant(name: str) -> Any:
    raise Malformed(f"{name} is not JSON")


def parse_event(body: bytes) -> ParsedEvent:
    """The items of one webhook body, or Malformed: nothing is applied from a bad body."""
    try:
        doc = json.loads(body, parse_constant=_reject_constant)
    except RecursionError:
        raise Malformed("nested too deeply") from None
    except (ValueError, TypeError) as exc:
        raise Malformed(f"not JSON: {str(exc)[:200]}") from None
    event = ParsedEvent()
    obj = _dict(doc, "body")
    if obj.get("object") != "whatsapp_business_account":
        event.notes.append((logging.INFO, f"webhook for object {str(obj.get('object'))[:80]!r} ignored"))
        return event
    for entry in _list(obj.get("entry"), "entry"):
        entry = _dict(entry, "entry[]")
        for change in _list(entry.get("changes", []), "entry[].changes"):
            change = _dict(change, "changes[]")
            name = change.get("field")
            value = _dict(change.get("value", {}), "changes[].value")
            if name == "messages":
                _parse_messages_value(value, event)
            elif name == "user_preferences":
                for item in _list(value.get("user_preferences", []), "user_preferences"):
                    _parse_preference(_dict(item, "user_preferences[]"), event)
            elif name == "message_template_status_update":
                _note_template_status(value, event)
            elif name == "message_template_quality_update":
                _note_template_quality(value, event)
            elif name == "account_update":
                kind = _short(value.get("event"))
                level = logging.WARNING if kind in ("ACCOUNT_RESTRICTION", "ACCOUNT_VIOLATION", "DISABLED_UPDATE",
                                                    "ACCOUNT_DELETED", "ACCOUNT_OFFBOARDED") else logging.INFO
                event.notes.append((level, f"account update {kind}: {_short(value, 300)}"))
            else:
                event.notes.append((logging.INFO, f"webhook field {_short(name)} kept, not applied"))
    return event


def _parse_messages_value(value: dict[str, Any], event: ParsedEvent) -> None:
    for raw in _list(value.get("statuses", []), "statuses"):
        item = parse_status(_dict(raw, "statuses[]"))
        if item is None:
            event.notes.append((logging.INFO, f"status {_short(raw.get('status'))} ignored (not a delivery status)"))
        else:
            event.statuses.append(item)
    for raw in _list(value.get("messages", []), "messages"):
        _parse_inbound(_dict(raw, "messages[]"), event)
    for raw in _list(value.get("errors", []), "errors"):
        error = _dict(raw, "errors[]")
        event.notes.append((logging.WARNING, f"webhook error {_short(error.get('code'))}: {_short(error.get('title'))} "
                                             f"({_short(_get(error, 'error_data', 'details'), 200)})"))


def parse_status(raw: dict[str, Any]) -> StatusItem | None:
    """One `statuses[]` item; None for a status word that does not move a message."""
    wamid = _str(raw.get("id"), "statuses[].id")
    if not 1 <= len(wamid) <= 128:
        raise Malformed("statuses[].id is not a message id")
    status = _str(raw.get("status"), "statuses[].status")
    at = _time(raw.get("timestamp"), "statuses[].timestamp")
    recipient = _opt_str(raw.get("recipient_id"), "statuses[].recipient_id")
    callback = _opt_str(raw.get("biz_opaque_callback_data"), "statuses[].biz_opaque_callback_data")
    pricing = _dict(raw.get("pricing", {}), "statuses[].pricing")
    category = _opt_str(pricing.get("category"), "statuses[].pricing.category")
    error = None
    errors = _list(raw.get("errors", []), "statuses[].errors")
    if errors:
        first = _dict(errors[0], "statuses[].errors[]")
        code = first.get("code")
        if code is not None and (type(code) is not int or not 0 <= code < _MAX_ERROR_CODE):
            raise Malformed("statuses[].errors[].code is not an error code")
        title = _opt_str(first.get("title"), "statuses[].errors[].title")
        message = _opt_str(first.get("message"), "statuses[].errors[].message")
        details = _opt_str(_dict(first.get("error_data", {}), "error_data").get("details"), "error_data.details")
        error = StatusError(code, title or message, details or message)
    if status not in STATUS_WORDS:
        return None
    return StatusItem(
        wamid=wamid,
        status=status,
        at=at,
        recipient_id=recipient if recipient and _WA_ID.fullmatch(recipient) else None,
        callback_data=callback,
        pricing_category=category[:32] if category else None,
        error=error,
        payload=raw,
    )


def _parse_inbound(raw: dict[str, Any], event: ParsedEvent) -> None:
    sender = _str(raw.get("from"), "messages[].from")
    at = _time(raw.get("timestamp"), "messages[].timestamp")
    kind = _opt_str(raw.get("type"), "messages[].type") or "unknown"
    if not _WA_ID.fullmatch(sender):
        event.notes.append((logging.INFO, f"inbound {kind} from {sender[:40]!r} ignored: not a phone number"))
        return
    if kind in _NOT_WINDOW_OPENING:
        event.notes.append((logging.INFO, f"inbound {kind} from {sender} kept, not applied"))
        return
    words: list[str | None] = []
    if kind == "text":
        words.append(_opt_str(_dict(raw.get("text", {}), "text").get("body"), "text.body"))
    elif kind == "button":
        button = _dict(raw.get("button", {}), "button")
        words += [_opt_str(button.get("payload"), "button.payload"), _opt_str(button.get("text"), "button.text")]
    elif kind == "interactive":
        interactive = _dict(raw.get("interactive", {}), "interactive")
        for reply in ("button_reply", "list_reply"):
            chosen = _dict(interactive.get(reply, {}), f"interactive.{reply}")
            words += [_opt_str(chosen.get("id"), f"{reply}.id"), _opt_str(chosen.get("title"), f"{reply}.title")]
    event.inbound.append(InboundItem(sender, at, kind, tuple(w for w in words if w)))


def _parse_preference(raw: dict[str, Any], event: ParsedEvent) -> None:
    wa_id = _str(raw.get("wa_id"), "user_preferences[].wa_id")
    value = _str(raw.get("value"), "user_preferences[].value")
    category = _opt_str(raw.get("category"), "user_preferences[].category")
    at = _time(raw.get("timestamp"), "user_preferences[].timestamp")
    if category != "marketing_messages" or value not in ("stop", "resume", "signup") or not _WA_ID.fullmatch(wa_id):
        event.notes.append((logging.INFO, f"user preference {_short(category)}={_short(value)} for {wa_id[:40]!r} ignored"))
        return
    event.preferences.append(PreferenceItem(wa_id, at, value))


def _note_template_status(value: dict[str, Any], event: ParsedEvent) -> None:
    status = _short(value.get("event"))
    name = f"{_short(value.get('message_template_name'))} ({_short(value.get('message_template_language'))})"
    if status in _BAD_TEMPLATE_EVENTS:
        event.notes.append((logging.WARNING, f"template {name} is {status}: reason {_short(value.get('reason'))}; "
                                             "campaigns using it will fail (132015/132016/132001)"))
    else:
        event.notes.append((logging.INFO, f"template {name} is {status}"))


def _note_template_quality(value: dict[str, Any], event: ParsedEvent) -> None:
    before, after = _short(value.get("previous_quality_score")), _short(value.get("new_quality_score"))
    name = f"{_short(value.get('message_template_name'))} ({_short(value.get('message_template_language'))})"
    dropped = _QUALITY.get(after, 0) < _QUALITY.get(before, 0)
    event.notes.append((logging.WARNING if dropped else logging.INFO, f"template {name} quality {before} -> {after}"))


def _dict(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Malformed(f"{what} is not an object")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise Malformed(f"{what} is not a list")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise Malformed(f"{what} is not a string")
    return value


def _opt_str(value: Any, what: str) -> str | None:
    return None if value is None else _str(value, what)


def _get(obj: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)  # type: ignore[assignment]
    return obj


def _short(value: Any, limit: int = 80) -> str:
    return str(value)[:limit]


def _time(value: Any, what: str) -> datetime:
    """Meta's unix seconds (a string in statuses and messages, a number in user_preferences)."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 12:
        seconds = int(value)
    elif type(value) is int:
        seconds = value
    else:
        raise Malformed(f"{what} is not a unix time")
    if not 0 <= seconds <= _MAX_TIMESTAMP:
        raise Malformed(f"{what} is out of range")
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


# -- applying -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rules:
    opt_out: frozenset[str]
    opt_in: frozenset[str]
    orphan_after: timedelta
    batch: int


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
    changed: bool = False


_ROW_COLUMNS = [getattr(Message, f.name) for f in fields(_Row) if f.name != "changed"]
_WRITTEN = ("state", "wamid", "wa_id", "sent_at", "delivered_at", "read_at", "failed_at",
            "error_code", "error_title", "error_details", "pricing_category")
# A Core executemany: the ORM's bulk update by primary key was the largest single cost in a profile.
_UPDATE_ROW = (
    update(Message.__table__)
    .where(Message.__table__.c.id == bindparam("row_id"))
    .values({name: bindparam(name, type_=Message.__table__.c[name].type) for name in _WRITTEN})
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
    write_lock: AbstractContextManager[Any] | None = None,
) -> ReconcileStats:
    """Apply every event stored so far, `batch` events (at most BATCH_BYTES) per transaction,
    and retry the pending statuses.

    `write_lock`, when given, is held around each write transaction: the receiver shares one
    with its own reconciler so that a body waiting to be stored queues on it rather than on
    SQLite's busy handler, which polls with sleeps of up to 100 ms."""
    now = now or utcnow()
    rules = _Rules(
        opt_out=frozenset(w.strip().casefold() for w in opt_out_words),
        opt_in=frozenset(w.strip().casefold() for w in opt_in_words),
        orphan_after=orphan_after,
        batch=max(1, batch),
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
                    error_code=None, error_title=None, error_details=None, pricing_category=None)
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
    except OperationalError:
        raise  # the database is unavailable or busy: the events stay unprocessed for the next pass
    except Exception:
        if not events:
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
        except OperationalError:
            raise
        except Exception as exc:
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
        notes += [(level, f"event {event.id}: {message}") for level, message in event.parsed.notes]
    if with_pending:
        statuses += _resolvable_pending(session)

    stats.statuses_applied = _apply_statuses(session, statuses, now, notes)
    stats.inbound = _apply_inbound(session, inbound, preferences, rules)

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
                    notes: list[tuple[int, str]]) -> int:
    if not statuses:
        return 0
    by_id = {row.id: row for row in _load_rows(session, Message.wamid, {s.wamid for s, _ in statuses})}
    callback_ids = {parse_callback_data(s.callback_data) for s, _ in statuses} - {None} - by_id.keys()
    if callback_ids:
        by_id.update((row.id, row) for row in _load_rows(session, Message.id, callback_ids))
    by_wamid = {row.wamid: row for row in by_id.values() if row.wamid is not None}

    applied = 0
    new_pending: list[dict[str, Any]] = []
    resolved_pending: list[int] = []
    failures: list[tuple[_Row, StatusItem]] = []
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
        _merge_into(row, item)
        applied += 1
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
        _apply_error_table(session, failures, now, notes)
    return applied


def _merge_into(row: _Row, item: StatusItem) -> None:
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
                       notes: list[tuple[int, str]]) -> None:
    """What a failed status means beyond its message (errors.py; whatsapp-cloud-api.md)."""
    contacts = {c.id: c for c in session.scalars(
        select(Contact).where(Contact.id.in_({row.contact_id for row, _ in failures})).order_by(Contact.id))}
    pauses: dict[int, tuple[int, datetime]] = {}
    for row, item in failures:
        assert item.error is not None
        code = item.error.code
        rule = rule_for(code)
        contact = contacts.get(row.contact_id)
        if contact is None:
            continue
        if rule.unreachable:
            contact.unreachable_at = _latest(contact.unreachable_at, item.at)
        if rule.no_resend_for:
            contact.marketing_limited_until = _latest(contact.marketing_limited_until,
                                                      item.at + timedelta(seconds=rule.no_resend_for))
        if rule.action is Action.FAIL_AND_SUPPRESS:
            suppress(session, [contact.phone], reason=f"error {code}: {rule.meaning}",
                     source=SuppressionSource.ERROR_131050, now=item.at)
        if rule.action in (Action.PAUSE_CAMPAIGN, Action.PAUSE_ALL) and code is not None:
            earlier = pauses.get(row.campaign_id)
            if earlier is None or item.at > earlier[1]:
                pauses[row.campaign_id] = (code, item.at)
    for campaign_id, (code, at) in sorted(pauses.items()):
        _pause_for(session, campaign_id, code, at, now, notes)


def _pause_for(session: Session, campaign_id: int, code: int, at: datetime, now: datetime,
               notes: list[tuple[int, str]]) -> None:
    rule = rule_for(code)
    campaign = session.get(Campaign, campaign_id)
    if campaign is None:
        return
    targets = [campaign]
    if rule.action is Action.PAUSE_ALL:
        same_sender = (Campaign.phone_number_id.is_(None) if campaign.phone_number_id is None
                       else Campaign.phone_number_id == campaign.phone_number_id)
        targets += session.scalars(select(Campaign).where(
            same_sender, Campaign.id != campaign.id,
            Campaign.state.in_([CampaignState.RUNNING.value, CampaignState.SCHEDULED.value])).order_by(Campaign.id))
    reason = f"error {code} in a status webhook: {rule.meaning} ({rule.advice})"
    for target in targets:
        # Old news the user already acted on (paused, then resumed) does not pause again;
        # this is also what keeps a replay from pausing campaigns.
        if target.paused_at is not None and at <= target.paused_at:
            continue
        if campaigns.engine_pause(session, target, reason, code, now=max(now, at)):
            notes.append((logging.WARNING, f"campaign {target.name!r} paused: {reason}"))


def _latest(current: datetime | None, new: datetime) -> datetime:
    return new if current is None else max(current, new)


def _apply_inbound(session: Session, inbound: list[InboundItem], preferences: list[PreferenceItem],
                   rules: _Rules) -> int:
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
        if said & rules.opt_out:
            _opt_out(session, contacts, message.at)
        elif said & rules.opt_in:
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
