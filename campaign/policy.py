"""The send policy: Meta's rules on what may be sent to whom, and when. Pure, no I/O.

Sources (whatsapp-cloud-api.md): the 24-hour customer-service window, which the
recipient's own message opens (free-form only inside it; a free-form send outside is
accepted and then fails with 131047), marketing templates not delivered to United States
numbers, 131026 remembered for a while, the pair rate
(131056: back off 4^x seconds), the messaging limit (unique users reached outside a window
in a moving 24 hours), the per-user marketing limit (131049: not again within 24 hours).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from campaign.states import SuppressionScope

WINDOW = timedelta(hours=24)
MAX_TRANSIENT_ATTEMPTS = 5
"""A message that failed transiently this many times fails for good."""
MAX_PAIR_RETRIES = 6
"""4^6 s is over an hour: a recipient still limited by then is failed."""
UNREACHABLE_FOR = timedelta(days=30)
"""131026 also means an old app or terms not yet accepted: the memory of it expires
(CAMPAIGN_UNREACHABLE_DAYS)."""


class Choice(StrEnum):
    TEMPLATE = "template"
    TEXT = "text"
    SKIP = "skip"
    WAIT = "wait"
    """Not now: Meta holds this recipient until `Decision.until` (the message is not skipped)."""


@dataclass(frozen=True)
class Decision:
    choice: Choice
    reason: str = ""
    business_initiated: bool = False
    """Reaches the user outside an open window: counts against the messaging limit."""
    until: datetime | None = None
    """For WAIT: when to try again."""


@dataclass(frozen=True)
class Recipient:
    """What the policy needs to know about one recipient."""

    suppressed: bool
    last_inbound_at: datetime | None
    marketing_limited_until: datetime | None = None
    unreachable_at: datetime | None = None
    """When a message to them last failed with 131026."""
    in_united_states: bool = False
    phone_less: bool = False
    """Known only by a BSUID: Meta refuses authentication templates to these (131062)."""


def suppression_applies(scope: str | None, category: str | None) -> bool:
    """Whether a suppression of `scope` stops a template of `category`. A marketing-only
    opt-out stops a template whose category is not known yet: an opt-out is never risked."""
    if scope is None:
        return False
    return scope != SuppressionScope.MARKETING or category not in ("utility", "authentication")


def window_open(last_inbound_at: datetime | None, now: datetime) -> bool:
    """The customer-service window: 24 hours from the user's last message."""
    return last_inbound_at is not None and now - last_inbound_at < WINDOW


def choose_message(
    recipient: Recipient, *, has_template: bool, has_text: bool, marketing: bool, now: datetime,
    unreachable_for: timedelta = UNREACHABLE_FOR, authentication: bool = False,
) -> Decision:
    """Template or free-form for one recipient, or why nothing may be sent (now, or at all).

    The window is the recipient's: whoever wrote within 24 hours may get the free-form text,
    whether or not the business wrote to them before; the business writing first is a
    template (whatsapp-cloud-api.md, "The 24-hour window")."""
    if recipient.suppressed:
        return Decision(Choice.SKIP, "the number is on the suppression list")
    if recipient.unreachable_at is not None and now - recipient.unreachable_at < unreachable_for:
        return Decision(Choice.SKIP, f"a message to this number failed with 131026 (not on WhatsApp, an old app, "
                                     f"or terms not accepted) on {recipient.unreachable_at:%Y-%m-%d}")
    is_open = window_open(recipient.last_inbound_at, now)
    if has_text and is_open:
        return Decision(Choice.TEXT)
    if not has_template:
        return Decision(Choice.SKIP, "the 24-hour window is closed and the campaign has no template")
    if authentication and recipient.phone_less:
        return Decision(Choice.SKIP, "Meta does not send authentication templates to a user known only by a "
                                     "business-scoped user id (131062)")
    if marketing and recipient.in_united_states:
        return Decision(Choice.SKIP, "Meta does not deliver marketing templates to United States numbers")
    if marketing and recipient.marketing_limited_until is not None and now < recipient.marketing_limited_until:
        return Decision(Choice.WAIT, "Meta's per-user marketing limit (131049)", until=recipient.marketing_limited_until)
    return Decision(Choice.TEMPLATE, business_initiated=not is_open)


def pair_due(last_sent_at: datetime | None, interval: float, now: datetime) -> datetime:
    """The earliest time another message may go to this recipient."""
    if last_sent_at is None:
        return now
    return max(now, last_sent_at + timedelta(seconds=interval))


def pair_backoff(pair_hits: int) -> float:
    """Seconds to wait after the n-th 131056 for one recipient: 1, 4, 16, 64, ..."""
    return float(4 ** max(pair_hits - 1, 0))


def transient_backoff(attempt: int, rng: random.Random | None = None, *, base: float = 2.0, cap: float = 300.0) -> float:
    """Exponential backoff with full jitter for the n-th failed attempt (n >= 1)."""
    ceiling = min(cap, base * 2 ** max(attempt - 1, 0))
    return (rng or random).uniform(ceiling / 2, ceiling)


def budget_left(limit: int | None, reached_in_window: int) -> int | None:
    """How many more distinct users may be reached outside a window now; `None` = unlimited."""
    if limit is None:
        return None
    return max(limit - reached_in_window, 0)
