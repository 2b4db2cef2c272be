"""Status merging: how Meta's status webhooks move a message, whatever order they arrive in.

Meta delivers status webhooks concurrently, batched, duplicated and in any order;
`delivered` may be skipped when a message is read at once, and `failed` may arrive after
`sent` (whatsapp-cloud-api.md, "Webhooks"). So a merge must be order-free: `merge` is a
join in a semilattice (commutative, associative, idempotent), and any permutation or
duplication of one message's statuses ends in one state:

- the state only climbs the ranks `sent < delivered < failed < read`: a `sent` never undoes
  `delivered`; `failed` wins over `sent`/`delivered` (it is final) but not over `read` (a read
  message reached its reader, whatever else was reported). `played` (a voice message
  played) counts as `read`. The states before Meta accepted the message (`queued`,
  `sending`, and `skipped`/`cancelled`, which should never see a status) rank lowest: a
  status proves the message left, so it moves them too.
- every timestamp is the earliest one reported for it; `read` implies delivered and sent,
  `delivered` implies sent, so a late `delivered` after `read` only fills (or moves earlier)
  `delivered_at`, as INTERFACE.md requires.
- a message has one `failed` status in practice; should two report different errors, the
  one kept is chosen by content (the smallest code first), not by arrival.

Also the format of `biz_opaque_callback_data`, which carries the outbox id through Meta
and back in status webhooks (DESIGN.md guarantee 3), and of the engine's default quick-reply
payload, which carries it back in a button tap (reply attribution, inbound.py). Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from campaign.states import MessageState

SENT, DELIVERED, READ, FAILED, PLAYED = "sent", "delivered", "read", "failed", "played"
STATUS_WORDS = frozenset({SENT, DELIVERED, READ, FAILED, PLAYED})
"""The `statuses[].status` values that move a message; others are logged and ignored."""

_RANK: dict[str, int] = {
    MessageState.SENT: 1,
    MessageState.DELIVERED: 2,
    MessageState.FAILED: 3,
    MessageState.READ: 4,
}
"""States absent here (queued, sending, skipped, cancelled) rank 0."""

_STATE_OF_STATUS: dict[str, MessageState] = {
    SENT: MessageState.SENT,
    DELIVERED: MessageState.DELIVERED,
    READ: MessageState.READ,
    PLAYED: MessageState.READ,
    FAILED: MessageState.FAILED,
}


@dataclass(frozen=True)
class StatusError:
    """`statuses[].errors[0]`: what the report shows for a failed message."""

    code: int | None
    title: str | None
    details: str | None


@dataclass(frozen=True)
class StatusUpdate:
    """One status webhook item, reduced to what the merge needs."""

    status: str
    """One of STATUS_WORDS."""
    at: datetime
    error: StatusError | None = None


@dataclass(frozen=True)
class Delivery:
    """A message's delivery facts: the part of the outbox row that statuses change."""

    state: str
    sent_at: datetime | None = None
    delivered_at: datetime | None = None
    read_at: datetime | None = None
    failed_at: datetime | None = None
    error: StatusError | None = None


def rank(state: str) -> int:
    return _RANK.get(state, 0)


def _earliest(current: datetime | None, new: datetime | None) -> datetime | None:
    if current is None:
        return new
    if new is None:
        return current
    return min(current, new)


def _error_key(error: StatusError) -> tuple[int, str, str]:
    return (error.code if error.code is not None else -1, error.title or "", error.details or "")


def merge(current: Delivery, update: StatusUpdate) -> Delivery:
    """`current` after `update`: the state climbs, timestamps keep their earliest value."""
    if update.status not in _STATE_OF_STATUS:
        raise ValueError(f"not a message status: {update.status!r}")
    target = _STATE_OF_STATUS[update.status]
    state = target.value if rank(target) > rank(current.state) else current.state
    at = update.at
    if target is MessageState.FAILED:
        error = current.error
        if update.error is not None and (error is None or _error_key(update.error) < _error_key(error)):
            error = update.error
        return replace(current, state=state, failed_at=_earliest(current.failed_at, at), error=error)
    implied_delivered = at if target is MessageState.READ else None
    implied_read = at if target is MessageState.READ else None
    return replace(
        current,
        state=state,
        sent_at=_earliest(current.sent_at, at),
        delivered_at=_earliest(current.delivered_at, at if target is MessageState.DELIVERED else implied_delivered),
        read_at=_earliest(current.read_at, implied_read),
    )


def merge_all(current: Delivery, updates: list[StatusUpdate]) -> Delivery:
    for update in updates:
        current = merge(current, update)
    return current


# -- biz_opaque_callback_data -------------------------------------------------------------

_CALLBACK = re.compile(r"m([1-9][0-9]{0,17})")


def callback_data(message_id: int) -> str:
    """What the dispatcher sends as `biz_opaque_callback_data` (≤ 256 bytes, echoed by Meta)."""
    return f"m{message_id}"


def parse_callback_data(value: str | None) -> int | None:
    """The outbox id in a status's `biz_opaque_callback_data`, or None for anything else
    (other apps on the same number may use the field for their own data)."""
    if not isinstance(value, str):
        return None
    match = _CALLBACK.fullmatch(value)
    return int(match.group(1)) if match else None


# -- quick-reply payloads -----------------------------------------------------------------------

_QUICK_REPLY = re.compile(r"m([1-9][0-9]{0,17})\.q(0|[1-9][0-9]{0,3})")


def quick_reply_payload(message_id: int, index: int) -> str:
    """The payload the dispatcher sends for quick-reply button `index` (0-based) of message
    `message_id` when the user bound none: Meta echoes it in the tap's `button.payload`, so a
    tap names its message even when the webhook has no `context` (whatsapp-templates.md §7)."""
    return f"m{message_id}.q{index}"


def parse_quick_reply_payload(value: str | None) -> tuple[int, int] | None:
    """(message id, button index) of an engine default payload, or None for anything else (a
    payload the user bound, another app's)."""
    if not isinstance(value, str):
        return None
    match = _QUICK_REPLY.fullmatch(value)
    return (int(match.group(1)), int(match.group(2))) if match else None


_BUTTON_TARGET = re.compile(r"(card\.[0-9]+\.)?button\.[0-9]+")


def bound_payloads(binding: Mapping[str, Any] | None) -> frozenset[str]:
    """The literal payloads a campaign's binding gives its buttons (`button.N=` or
    `card.K.button.N=` a `=TEXT` literal, stored as `{"literal": TEXT}`): the same for every
    recipient, so a tap carrying one names the campaign but not the message."""
    if not isinstance(binding, Mapping):
        return frozenset()
    return frozenset(
        source["literal"] for target, source in binding.items()
        if isinstance(target, str) and _BUTTON_TARGET.fullmatch(target)
        and isinstance(source, Mapping) and isinstance(source.get("literal"), str) and source["literal"]
    )


def quick_reply_labels(template: Any) -> frozenset[str]:
    """The texts of a template definition's quick-reply buttons (carousel cards' included),
    as `GET /{waba-id}/message_templates` returns it: what a tap on one shows as its label."""
    labels: set[str] = set()
    stack = [template]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, Mapping):
            if str(node.get("type", "")).upper() == "QUICK_REPLY" and isinstance(node.get("text"), str):
                labels.add(node["text"])
            stack.extend(v for v in node.values() if isinstance(v, (list, Mapping)))
    return frozenset(labels)
