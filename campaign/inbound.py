"""Inbound messages, opt-outs and opt-ins, applied to contacts and the opt-out list.

The reconciler (reconcile.py) hands over what events.py parsed from the stored webhooks:

- `messages[]` (inbound) upsert the contact and open its 24-hour window (`last_inbound_at`);
  STOP / UNSUBSCRIBE (and the configured words), typed or sent as a quick-reply button or
  an interactive reply, suppress the number (source `opt_out`; typed: every message, a
  tapped button: marketing only, scope `marketing`); START lifts only an
  `opt_out` suppression. Opt-outs and opt-ins are compared by their message times
  (`Contact.opted_out_at` / `opted_in_at`), so STOP and START arriving in either order
  end the same way.
- `user_preferences` (the user stopped or resumed marketing in WhatsApp): `stop`
  suppresses marketing (source `opt_out`, scope `marketing`); `resume` / `signup` lift
  `opt_out` and `error_131050`
  suppressions, the ones Meta's own marketing switch stands for.

Applying is idempotent: contact times only ever move forward (they merge with max).

Replies (`apply_replies`): an inbound message that answers a campaign message fills that
message's `replied_at` and `reply`. The message it answers is, in this order:
1. the one whose wamid is its `context.id`;
2. for a tap on an engine default payload (`m<id>.q<n>`, statuses.quick_reply_payload), that
   message, if it went to the sender: a payload names a message, it proves nothing about
   who sent it back;
3. for any other payload, the latest message (by `sent_at`) sent to the sender by a campaign
   whose binding gives a button that literal payload (statuses.bound_payloads), sent before
   the tap (give or take SEND_CLOCK_SKEW), so that applying the tap later or again (a
   replay) picks the same message;
4. else it answers no campaign message (a text without context, a payload nobody bound).
A message keeps its first answer, by its time (then by its text, for answers in the same
second): like status timestamps, a min, so answers in any order, or twice, end the same.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session

from campaign import identity
from campaign.events import InboundItem, PreferenceItem
from campaign.models import Campaign, Contact, Message, UnmatchedInbound
from campaign.people import find, learn_user_ids
from campaign.states import SuppressionScope, SuppressionSource
from campaign.sql import batches, insert_ignore
from campaign.statuses import bound_payloads, parse_quick_reply_payload
from campaign.suppressions import suppress, unsuppress

# "Stop promotions" is the quick reply Meta's marketing templates offer for opting out.
DEFAULT_OPT_OUT_WORDS: tuple[str, ...] = ("STOP", "UNSUBSCRIBE", "STOP PROMOTIONS")
DEFAULT_OPT_IN_WORDS: tuple[str, ...] = ("START",)
REPLY_CHARS = 200
"""A text reply is kept to its first 200 characters: the report's column, not an inbox."""
SEND_CLOCK_SKEW = timedelta(minutes=1)
"""How much later than a tap a message's `sent_at` may be and still be the one tapped: Meta's
times are whole seconds of its clock, `sent_at` our clock when the send was answered."""


def apply_inbound(session: Session, inbound: list[InboundItem], preferences: list[PreferenceItem], *,
                  opt_out: frozenset[str], opt_in: frozenset[str]) -> int:
    """Inbound messages and marketing preferences applied; the number of inbound messages.

    `opt_out` and `opt_in` are the stripped, casefolded words that opt out or back in."""
    if not inbound and not preferences:
        return 0
    people = _contacts_for(session, {key_of(i) for i in [*inbound, *preferences]})
    for message in inbound:
        contacts = people[key_of(message)]
        for contact in contacts:
            # The window opens at the user's message time (whatsapp-cloud-api.md, "The 24-hour window").
            contact.last_inbound_at = _latest(contact.last_inbound_at, message.at)
            contact.wa_id = contact.wa_id or message.wa_id
        said = {w.strip().casefold() for w in message.words}
        if said & opt_out:
            # A typed STOP stops everything; a tapped button ("Stop promotions" on a marketing
            # template) stops marketing: utility and authentication templates still reach them.
            typed = message.text is not None and message.text.strip().casefold() in opt_out
            _opt_out(session, contacts, message.at, SuppressionScope.ALL if typed else SuppressionScope.MARKETING)
        elif said & opt_in:
            _opt_in(session, contacts, message.at, (SuppressionSource.OPT_OUT,))
    for preference in preferences:
        contacts = people[key_of(preference)]
        if preference.value == "stop":  # Meta's own switch: marketing messages only
            _opt_out(session, contacts, preference.at, SuppressionScope.MARKETING)
        else:
            _opt_in(session, contacts, preference.at, (SuppressionSource.OPT_OUT, SuppressionSource.ERROR_131050))
    return len(inbound)


def key_of(item: InboundItem | PreferenceItem) -> str:
    """The name a webhook gives its user (people.find): the number's digits, else the BSUID."""
    key = item.wa_id or item.user_id
    assert key is not None, "events.py keeps no item without either"
    return key


def _contacts_for(session: Session, keys: set[str]) -> dict[str, list[Contact]]:
    """Every contact of each sender, a new one for a number no contact has (people.find; a
    BSUID no contact has was set aside by `resolve_identities`)."""
    people = find(session, keys)
    new = [{"phone": "+" + k, "wa_id": k} for k in sorted(keys) if not people[k] and not identity.is_user_id(k)]
    if not new:
        return people
    for chunk in batches(new):
        session.execute(insert_ignore(session, Contact), list(chunk))
    return find(session, keys)


def _opt_out(session: Session, contacts: list[Contact], at: datetime, scope: SuppressionScope) -> None:
    """STOP at `at`: void if the person opted in later (see module docstring)."""
    numbers = []
    for contact in contacts:
        if contact.opted_in_at is None or at >= contact.opted_in_at:
            contact.opted_out_at = _latest(contact.opted_out_at, at)
            numbers += contact.identities
    if numbers:
        session.flush()
        reason = "the recipient opted out" + (" of marketing messages" if scope is SuppressionScope.MARKETING else "")
        suppress(session, numbers, reason=reason, source=SuppressionSource.OPT_OUT, scope=scope, now=at)


def _opt_in(session: Session, contacts: list[Contact], at: datetime, sources: tuple[SuppressionSource, ...]) -> None:
    """START (or marketing resumed) at `at`: lifts an opt-out older than it, never a manual one."""
    numbers = []
    for contact in contacts:
        contact.opted_in_at = _latest(contact.opted_in_at, at)
        if contact.opted_out_at is None or contact.opted_out_at < at:
            contact.opted_out_at = None
            numbers += contact.identities
    if numbers:
        session.flush()
        unsuppress(session, numbers, sources)


def _latest(current: datetime | None, new: datetime) -> datetime:
    return new if current is None else max(current, new)


# -- replies ------------------------------------------------------------------------------------


def apply_replies(session: Session, inbound: list[InboundItem]) -> int:
    """Each inbound message that answers a campaign message recorded on it, if it is the
    message's first answer (module docstring); the number of inbound messages attributed.

    A few queries per batch, whatever its size: by wamid, by message id, by contact."""
    answers = [m for m in inbound if m.context_id or m.payload]
    if not answers:
        return 0
    attributed = _answered_messages(session, answers)
    _keep_first_answers(session, attributed)
    return len(attributed)


def reply_text(item: InboundItem) -> str | None:
    """What `Message.reply` shows of an answer: a bound payload as it is; for an engine
    default payload the button's label (the payload only names the message); the start of
    a text. None for other answers (a photo replying to the message)."""
    if item.payload is not None:
        if parse_quick_reply_payload(item.payload) is not None:
            return item.label or item.payload
        return item.payload
    return item.text[:REPLY_CHARS] if item.text is not None else None


def _answered_messages(session: Session, answers: list[InboundItem]) -> list[tuple[int, InboundItem]]:
    """(message id, answer) for each answer that answers a campaign message."""
    by_wamid: dict[str, int] = {}
    for chunk in batches(sorted({m.context_id for m in answers if m.context_id})):
        by_wamid.update(session.execute(select(Message.wamid, Message.id).where(Message.wamid.in_(chunk))).all())
    attributed: list[tuple[int, InboundItem]] = []
    named: list[tuple[int, InboundItem]] = []
    bound: list[InboundItem] = []
    for item in answers:
        default = parse_quick_reply_payload(item.payload)
        if item.context_id is not None and item.context_id in by_wamid:
            attributed.append((by_wamid[item.context_id], item))
        elif default is not None:
            named.append((default[0], item))
        elif item.payload is not None:
            bound.append(item)
    attributed += _senders_own(session, named)
    attributed += _latest_bound(session, bound)
    return attributed


def _senders_own(session: Session, named: list[tuple[int, InboundItem]]) -> list[tuple[int, InboundItem]]:
    """The taps whose default payload names a message that went to the tapper."""
    owners: dict[int, set[str]] = defaultdict(set)
    for chunk in batches(sorted({message_id for message_id, _ in named})):
        rows = session.execute(
            select(Message.id, Message.wa_id, Contact.phone, Contact.wa_id, Contact.user_id)
            .join(Contact, Contact.id == Message.contact_id).where(Message.id.in_(chunk))
        )
        for message_id, sent_to, phone, wa_id, user_id in rows:
            # The recipient by every name Meta may give them: the send's answer, the number,
            # the contact's wa_id and BSUID.
            owners[message_id].update(i for i in (sent_to, phone[1:] if phone else None, wa_id, user_id) if i)
    return [(message_id, item) for message_id, item in named
            if {item.wa_id, item.user_id} & owners.get(message_id, set())]


def _latest_bound(session: Session, taps: list[InboundItem]) -> list[tuple[int, InboundItem]]:
    """The taps on a literal payload some campaign bound, each to the latest such campaign's
    message sent to the tapper before it."""
    if not taps:
        return []
    campaigns_of: dict[str, set[int]] = defaultdict(set)
    for campaign_id, binding in session.execute(select(Campaign.id, Campaign.binding).where(Campaign.binding.is_not(None))):
        for payload in bound_payloads(binding):
            campaigns_of[payload].add(campaign_id)
    taps = [t for t in taps if t.payload in campaigns_of]
    if not taps:
        return []
    people = find(session, {key_of(t) for t in taps})
    contact_ids = sorted({c.id for contacts in people.values() for c in contacts})
    wanted = sorted({c for t in taps for c in campaigns_of[t.payload or ""]})
    sent: dict[int, list[tuple[datetime, int, int]]] = defaultdict(list)  # contact -> (sent_at, id, campaign)
    for chunk in batches(contact_ids):
        rows = session.execute(
            select(Message.contact_id, Message.sent_at, Message.id, Message.campaign_id)
            .where(Message.contact_id.in_(chunk), Message.campaign_id.in_(wanted), Message.sent_at.is_not(None))
        )
        for contact_id, sent_at, message_id, campaign_id in rows:
            sent[contact_id].append((sent_at, message_id, campaign_id))
    attributed = []
    for tap in taps:
        bound_by = campaigns_of[tap.payload or ""]
        candidates = [(sent_at, message_id) for contact in people[key_of(tap)]
                      for sent_at, message_id, campaign_id in sent[contact.id]
                      if campaign_id in bound_by and sent_at <= tap.at + SEND_CLOCK_SKEW]
        if candidates:
            attributed.append((max(candidates)[1], tap))
    return attributed


_SET_REPLY = (
    update(Message.__table__)
    .where(Message.__table__.c.id == bindparam("message_id"))
    .values(replied_at=bindparam("replied_at", type_=Message.__table__.c.replied_at.type),
            reply=bindparam("reply", type_=Message.__table__.c.reply.type))
)


def _keep_first_answers(session: Session, attributed: list[tuple[int, InboundItem]]) -> None:
    """Each message's earliest answer, merged with the one it already has (a min)."""
    first: dict[int, tuple[datetime, str | None]] = {}
    for message_id, item in attributed:
        answer = (item.at, reply_text(item))
        if message_id not in first or _answer_key(answer) < _answer_key(first[message_id]):
            first[message_id] = answer
    changed = []
    for chunk in batches(sorted(first)):
        for message_id, replied_at, reply in session.execute(
                select(Message.id, Message.replied_at, Message.reply).where(Message.id.in_(chunk))):
            answer = first[message_id]
            if replied_at is None or _answer_key(answer) < _answer_key((replied_at, reply)):
                changed.append({"message_id": message_id, "replied_at": answer[0], "reply": answer[1]})
    if changed:
        session.execute(_SET_REPLY, changed)


def _answer_key(answer: tuple[datetime, str | None]) -> tuple[datetime, bool, str]:
    """Earliest first; in the same second, by content (a text before none), never by arrival."""
    at, reply = answer
    return (at, reply is None, reply or "")


# -- identities: phone numbers and business-scoped user ids ---------------------------------------


def resolve_identities(session: Session, inbound: list[InboundItem], preferences: list[PreferenceItem],
                       now: datetime) -> tuple[list[InboundItem], list[PreferenceItem], int]:
    """Items that came with a BSUID and no phone number are applied to the contact that has
    the BSUID (people.find); the ones no contact has yet are kept in `unmatched_inbound` (an
    opt-out is never dropped for want of a number) and applied when a webhook or an import
    gives a contact that BSUID (`apply_unmatched`). Items with both teach the contact its
    BSUID first. Returns the items to apply now and how many were kept for later."""
    with_both = {i.wa_id: i.user_id for i in [*inbound, *preferences] if i.wa_id and i.user_id}
    if with_both:
        people = find(session, set(with_both))
        learn_user_ids(session, [(c.id, with_both[w]) for w, cs in people.items() for c in cs])
        session.flush()
    phone_less = {i.user_id for i in [*inbound, *preferences] if i.wa_id is None and i.user_id}
    known = {k for k, contacts in find(session, phone_less).items() if contacts}
    inbound, kept_inbound = _known_only(inbound, known)
    preferences, kept_preferences = _known_only(preferences, known)
    kept = [{"user_id": item.user_id, "kind": kind, "at": item.at, "item": _as_json(item), "received_at": now}
            for kind, items in (("inbound", kept_inbound), ("preference", kept_preferences)) for item in items]
    if kept:
        session.execute(insert(UnmatchedInbound), kept)
    return inbound, preferences, len(kept)


_Item = TypeVar("_Item", InboundItem, PreferenceItem)


def _known_only(items: list[_Item], known: set[str]) -> tuple[list[_Item], list[_Item]]:
    """(items with a number or a BSUID some contact has, items whose BSUID none has)."""
    resolved, kept = [], []
    for item in items:
        (resolved if item.wa_id is not None or item.user_id in known else kept).append(item)
    return resolved, kept


def apply_unmatched(session: Session, *, opt_out: frozenset[str], opt_in: frozenset[str]) -> int:
    """Kept items whose BSUID a contact has now: applied as if they had just come, then
    forgotten. Returns how many."""
    waiting = sorted(set(session.scalars(select(UnmatchedInbound.user_id))))
    if not waiting:
        return 0
    known = [k for k, contacts in find(session, set(waiting)).items() if contacts]
    rows = []
    for chunk in batches(known):
        rows += session.execute(
            select(UnmatchedInbound.id, UnmatchedInbound.kind, UnmatchedInbound.item)
            .where(UnmatchedInbound.user_id.in_(chunk))
        ).all()
    if not rows:
        return 0
    rows.sort(key=lambda row: row[0])
    inbound = [_inbound_from_json(item) for _, kind, item in rows if kind == "inbound"]
    preferences = [_preference_from_json(item) for _, kind, item in rows if kind != "inbound"]
    apply_inbound(session, inbound, preferences, opt_out=opt_out, opt_in=opt_in)
    apply_replies(session, inbound)
    for chunk in batches([row[0] for row in rows]):
        session.execute(delete(UnmatchedInbound).where(UnmatchedInbound.id.in_(chunk)))
    return len(rows)


def unmatched_counts(session: Session) -> dict[str, int]:
    """Kept items by kind (`inbound`, `preference`): what `campaign status` shows as waiting
    for a contact to have their BSUID."""
    return dict(session.execute(select(UnmatchedInbound.kind, func.count()).group_by(UnmatchedInbound.kind)).all())


def _as_json(item: InboundItem | PreferenceItem) -> dict[str, Any]:
    data = asdict(item)
    data["at"] = item.at.isoformat()
    return data


def _inbound_from_json(data: dict[str, Any]) -> InboundItem:
    return InboundItem(**{**data, "at": datetime.fromisoformat(data["at"]), "words": tuple(data["words"])})


def _preference_from_json(data: dict[str, Any]) -> PreferenceItem:
    return PreferenceItem(**{**data, "at": datetime.fromisoformat(data["at"])})
