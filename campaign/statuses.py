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
and back in status webhooks (DESIGN.md guarantee 3). Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime

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
