"""The parsing of Meta's webhook bodies into typed items: pure, no database.

`parse_event` walks every `entry → changes → value` of one stored body and returns its items,
parsed and validated completely before the reconciler (reconcile.py) applies anything:

- `statuses[]` become `StatusItem`s (`parse_status`): the wamid, the status, its time, the
  recipient, `biz_opaque_callback_data` (the outbox id the dispatcher sent), the pricing
  (category, billable, pricing model, type) and the error of a `failed` status. A status word that does not move a message is
  noted and ignored.
- `messages[]` (inbound) become `InboundItem`s, with the texts that may carry an opt-out or
  opt-in word: typed, sent as a quick-reply button or an interactive reply; and what reply
  attribution (inbound.py) reads: the message replied to (`context.id`), a button's payload
  and label, a text's body. Types that are not the user writing to the business (a deleted
  or edited message, a reaction) are noted, not applied. A `system` message that re-keys the
  user (a changed number or BSUID) becomes an `IdentityChange` (people.py applies it).
- `user_preferences` (the user stopped or resumed marketing in WhatsApp) become
  `PreferenceItem`s.
- `message_template_status_update` becomes a `TemplateStatusItem` (name, language, event,
  reason, time); `phone_number_quality_update` and `business_capability_update` become
  `SenderItem`s (the sender's display number, the event, the messaging limit, the time): the
  reconciler applies them through health.py. Their time is the entry's `time` (None when Meta
  sent none: the receipt time stands in).
- out-of-band `errors[]`, template status / quality updates, account updates and unknown
  fields become notes to log (a template paused, disabled or rejected, or a quality drop, as
  a warning) and are kept: the raw body stays in `webhook_events`.

A body that is not a well-formed webhook (invalid JSON, wrong types, huge numbers, deep
nesting) raises `Malformed`: nothing is applied from it, and its event is marked processed
with that error.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from campaign.identity import is_user_id
from campaign.statuses import STATUS_WORDS, StatusError

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
TEMPLATE_STOPPED = {"PAUSED": 132015, "DISABLED": 132016, "REJECTED": 132001}
"""Template statuses that stop every campaign using the template, with the error code Meta
answers a send of it with (whatsapp-templates.md §3). FLAGGED is not here: a flagged template
still sends (§1), it is only at risk."""
SENDER_QUALITY_STOPS = frozenset({"FLAGGED", "DOWNGRADE"})
"""`phone_number_quality_update` events that pause the sender's marketing campaigns (§5)."""
THROUGHPUT_UPGRADE = "THROUGHPUT_UPGRADE"
_TIERS: dict[str, int | None] = {"TIER_50": 50, "TIER_250": 250, "TIER_1K": 1000, "TIER_2K": 2000,
                                 "TIER_10K": 10_000, "TIER_100K": 100_000, "TIER_UNLIMITED": None}
"""Meta's messaging-limit tiers: distinct recipients outside their window per moving 24 hours
(None: unlimited). TIER_1K and TIER_50 are older steps (§5, §6)."""


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
    recipient_user_id: str | None = None
    """The recipient's BSUID (`recipient_user_id`): absent on a `failed` sent to a phone."""
    pricing_billable: bool | None = None
    """`pricing.billable`: whether Meta charges this message (None when absent or not a bool)."""
    pricing_model: str | None = None
    """`pricing.pricing_model`: `PMP` (per-message pricing, since July 2025), formerly `CBP`."""
    pricing_type: str | None = None
    """`pricing.type`: `regular`, `free_customer_service`, `free_entry_point`."""


@dataclass(frozen=True)
class InboundItem:
    wa_id: str | None
    """The sender's phone digits (`from`); None when Meta withholds the number."""
    at: datetime
    type: str
    words: tuple[str, ...]
    """Texts that may carry an opt-out or opt-in word: the body, a button's payload and
    text, an interactive reply's id and title."""
    message_id: str = ""
    """The inbound message's own wamid (empty if Meta sent none)."""
    context_id: str | None = None
    """`context.id`: the wamid of the message this one replies to. Meta sometimes leaves
    `context` out of a quick-reply tap (whatsapp-templates.md §7), hence `payload` too."""
    payload: str | None = None
    """A `button` message's payload, or an interactive reply's `button_reply.id` / `list_reply.id`."""
    label: str | None = None
    """The button's text, or the interactive reply's title."""
    text: str | None = None
    """A `text` message's body."""
    user_id: str | None = None
    """The sender's BSUID (`from_user_id`)."""


@dataclass(frozen=True)
class IdentityChange:
    """A `system` message: the user changed their number (`user_changed_number`, which also
    gives them a new BSUID) or Meta gave them a new BSUID (`user_changed_user_id`). Ids that
    did not change, or that Meta did not send, are None."""

    at: datetime
    old_wa_id: str | None
    new_wa_id: str | None
    old_user_id: str | None
    new_user_id: str | None


@dataclass(frozen=True)
class PreferenceItem:
    wa_id: str | None
    at: datetime
    value: str
    user_id: str | None = None


@dataclass(frozen=True)
class MessagingLimit:
    tier: str
    """As Meta names it, e.g. `TIER_2K`, `TIER_UNLIMITED`."""
    daily: int | None
    """Distinct recipients outside their window per moving 24 hours; None for unlimited."""


def messaging_limit(value: Any) -> MessagingLimit | None:
    """A tier (`TIER_2K`, `UNLIMITED`) or a capability's number (2000, -1 for unlimited);
    None for NOT_SET or anything else."""
    if isinstance(value, str):
        tier = value.strip().upper()
        tier = tier if tier.startswith("TIER_") else f"TIER_{tier}"
        if tier in _TIERS:
            return MessagingLimit(tier, _TIERS[tier])
        return None
    if type(value) is int and value == -1:
        return MessagingLimit("TIER_UNLIMITED", None)
    if type(value) is int and 0 < value < _MAX_ERROR_CODE:
        named = next((tier for tier, daily in _TIERS.items() if daily == value), str(value))
        return MessagingLimit(named, value)
    return None


@dataclass(frozen=True)
class TemplateStatusItem:
    name: str
    language: str
    event: str
    reason: str | None
    at: datetime | None
    """The entry's time; None when Meta sent none (the receipt time stands in)."""


@dataclass(frozen=True)
class SenderItem:
    """A `phone_number_quality_update` (event FLAGGED, DOWNGRADE, THROUGHPUT_UPGRADE, ...) or a
    `business_capability_update` (event CAPABILITY, no display number: the whole portfolio)."""

    display_phone_number: str | None
    event: str
    limit: MessagingLimit | None
    at: datetime | None


@dataclass
class ParsedEvent:
    statuses: list[StatusItem] = field(default_factory=list)
    inbound: list[InboundItem] = field(default_factory=list)
    preferences: list[PreferenceItem] = field(default_factory=list)
    identities: list[IdentityChange] = field(default_factory=list)
    templates: list[TemplateStatusItem] = field(default_factory=list)
    senders: list[SenderItem] = field(default_factory=list)
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
        at = _entry_time(entry.get("time"))
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
                _parse_template_status(value, at, event)
            elif name == "phone_number_quality_update":
                _parse_sender_quality(value, at, event)
            elif name == "business_capability_update":
                _parse_capability(value, at, event)
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
    billable = pricing.get("billable")
    pricing_model = _opt_str(pricing.get("pricing_model"), "statuses[].pricing.pricing_model")
    pricing_type = _opt_str(pricing.get("type"), "statuses[].pricing.type")
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
        recipient_user_id=_bsuid(raw.get("recipient_user_id")),
        callback_data=callback,
        pricing_category=category[:32] if category else None,
        pricing_billable=billable if isinstance(billable, bool) else None,
        pricing_model=pricing_model[:16] if pricing_model else None,
        pricing_type=pricing_type[:32] if pricing_type else None,
        error=error,
        payload=raw,
    )


def _parse_inbound(raw: dict[str, Any], event: ParsedEvent) -> None:
    phone = _opt_str(raw.get("from"), "messages[].from")
    user_id = _bsuid(raw.get("from_user_id"))
    at = _time(raw.get("timestamp"), "messages[].timestamp")
    kind = _opt_str(raw.get("type"), "messages[].type") or "unknown"
    if phone is not None and not _WA_ID.fullmatch(phone):
        phone = None  # `from` never carries a BSUID (whatsapp-usernames.md §2)
    if phone is None and user_id is None:
        event.notes.append((logging.INFO, f"inbound {kind} from {_short(raw.get('from'), 40)!r} ignored: "
                                          "neither a phone number nor a user id"))
        return
    sender = phone or user_id
    if kind == "system":
        _parse_system(raw, phone, user_id, at, event)
        return
    if kind in _NOT_WINDOW_OPENING:
        event.notes.append((logging.INFO, f"inbound {kind} from {sender} kept, not applied"))
        return
    text: str | None = None
    choices: list[tuple[str | None, str | None]] = []  # (payload, label) of a tap
    if kind == "text":
        text = _opt_str(_dict(raw.get("text", {}), "text").get("body"), "text.body")
    elif kind == "button":
        button = _dict(raw.get("button", {}), "button")
        choices.append((_opt_str(button.get("payload"), "button.payload"), _opt_str(button.get("text"), "button.text")))
    elif kind == "interactive":
        interactive = _dict(raw.get("interactive", {}), "interactive")
        for reply in ("button_reply", "list_reply"):
            chosen = _dict(interactive.get(reply, {}), f"interactive.{reply}")
            choices.append((_opt_str(chosen.get("id"), f"{reply}.id"), _opt_str(chosen.get("title"), f"{reply}.title")))
    words = [text] + [w for choice in choices for w in choice]
    payload, label = next(((p, t) for p, t in choices if p or t), (None, None))
    event.inbound.append(InboundItem(
        phone, at, kind, tuple(w for w in words if w), user_id=user_id,
        message_id=_wamid_or_none(raw.get("id")) or "",
        context_id=_wamid_or_none(_get(raw, "context", "id")),
        payload=payload or None, label=label or None, text=text or None,
    ))


_REKEYS = frozenset({"user_changed_number", "user_changed_user_id"})


def _parse_system(raw: dict[str, Any], phone: str | None, user_id: str | None, at: datetime,
                  event: ParsedEvent) -> None:
    """A number or BSUID change. The new number is `system.wa_id`, the old one `from`; the
    old BSUID `system.previous_user_id`, the new one `system.user_id`, else a `from_user_id`
    that differs from the old (the reference names the previous ids, not where the new BSUID
    goes: both are read)."""
    system = _dict(raw.get("system", {}), "messages[].system")
    kind = _opt_str(system.get("type"), "system.type")
    if kind not in _REKEYS:
        event.notes.append((logging.INFO, f"inbound system {_short(kind)} from {phone or user_id} kept, not applied"))
        return
    new_wa_id = _opt_str(system.get("wa_id"), "system.wa_id")
    new_wa_id = new_wa_id if new_wa_id and _WA_ID.fullmatch(new_wa_id) and new_wa_id != phone else None
    old_user_id = _bsuid(system.get("previous_user_id"))
    new_user_id = _bsuid(system.get("user_id")) or (user_id if user_id != old_user_id else None)
    if new_user_id == old_user_id:
        new_user_id = None
    change = IdentityChange(at, phone, new_wa_id, old_user_id or (user_id if new_user_id is None else None), new_user_id)
    if (change.new_wa_id or change.new_user_id) and (change.old_wa_id or change.old_user_id):
        event.identities.append(change)
    else:
        event.notes.append((logging.INFO, f"inbound system {kind} from {phone or user_id} without old and new ids ignored"))


def _wamid_or_none(value: Any) -> str | None:
    """A message id as Meta sends it, or None: an odd `id` or `context` (a forwarded message's
    context has no id) never rejects the body, whose opt-out must not be lost."""
    return value if isinstance(value, str) and 1 <= len(value) <= 128 else None


def _parse_preference(raw: dict[str, Any], event: ParsedEvent) -> None:
    wa_id = _opt_str(raw.get("wa_id"), "user_preferences[].wa_id")
    user_id = _bsuid(raw.get("user_id"))
    value = _str(raw.get("value"), "user_preferences[].value")
    category = _opt_str(raw.get("category"), "user_preferences[].category")
    at = _time(raw.get("timestamp"), "user_preferences[].timestamp")
    if wa_id is not None and not _WA_ID.fullmatch(wa_id):
        wa_id = None
    if category != "marketing_messages" or value not in ("stop", "resume", "signup") or (wa_id or user_id) is None:
        event.notes.append((logging.INFO, f"user preference {_short(category)}={_short(value)} for "
                                          f"{_short(raw.get('wa_id') or raw.get('user_id'), 40)!r} ignored"))
        return
    event.preferences.append(PreferenceItem(wa_id, at, value, user_id))


def _bsuid(value: Any) -> str | None:
    """A BSUID, or None for anything else: an odd id never rejects a body whose STOP counts.
    Since 2026 every messages webhook carries one, and a user with a username may come with no
    phone number at all (`from`, `wa_id`, `recipient_id` absent)."""
    return value if isinstance(value, str) and is_user_id(value) else None


def _note_template_status(value: dict[str, Any], event: ParsedEvent) -> None:
    status = _short(value.get("event"))
    name = f"{_short(value.get('message_template_name'))} ({_short(value.get('message_template_language'))})"
    if status in _BAD_TEMPLATE_EVENTS:
        event.notes.append((logging.WARNING, f"template {name} is {status}: reason {_short(value.get('reason'))}; "
                                             "campaigns using it will fail (132015/132016/132001)"))
    else:
        event.notes.append((logging.INFO, f"template {name} is {status}"))


def _parse_template_status(value: dict[str, Any], at: datetime | None, event: ParsedEvent) -> None:
    name = _opt_str(value.get("message_template_name"), "message_template_name")
    language = _opt_str(value.get("message_template_language"), "message_template_language")
    status = _opt_str(value.get("event"), "message_template_status_update.event")
    if not name or not language or not status:
        event.notes.append((logging.INFO, "template status update without a name, language or event ignored"))
        return
    reason = value.get("reason")
    event.templates.append(TemplateStatusItem(name[:512], language[:32], status[:32].upper(),
                                              _short(reason, 200) if reason not in (None, "") else None, at))


def _parse_sender_quality(value: dict[str, Any], at: datetime | None, event: ParsedEvent) -> None:
    display = _opt_str(value.get("display_phone_number"), "display_phone_number")
    kind = _opt_str(value.get("event"), "phone_number_quality_update.event")
    if not kind:
        event.notes.append((logging.INFO, "phone number quality update without an event ignored"))
        return
    # `current_limit` yields to `max_daily_conversations_per_business` (Feb 2026, §5).
    limit = messaging_limit(value.get("max_daily_conversations_per_business")) or messaging_limit(value.get("current_limit"))
    level = logging.WARNING if kind.upper() in SENDER_QUALITY_STOPS else logging.INFO
    event.notes.append((level, f"sender {_short(display)} quality update {_short(kind)}"
                               + (f", messaging limit {limit.tier}" if limit else "")))
    digits = "".join(ch for ch in display or "" if ch.isdigit())
    event.senders.append(SenderItem(digits or None, kind[:32].upper(), limit, at))


def _parse_capability(value: dict[str, Any], at: datetime | None, event: ParsedEvent) -> None:
    # The `..._per_phone` field is deprecated: the per-business one wins when both are there.
    limit = (messaging_limit(value.get("max_daily_conversations_per_business"))
             or messaging_limit(value.get("max_daily_conversation_per_phone")))
    if limit is None:
        event.notes.append((logging.INFO, f"business capability update without a messaging limit: {_short(value, 200)}"))
        return
    event.notes.append((logging.INFO, f"business capability update: messaging limit {limit.tier}"))
    event.senders.append(SenderItem(None, "CAPABILITY", limit, at))


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


def _entry_time(value: Any) -> datetime | None:
    """An entry's `time` (unix seconds), or None: a missing or odd one never rejects the body."""
    try:
        return _time(value, "entry[].time")
    except Malformed:
        return None


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
