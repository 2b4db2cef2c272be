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
import re
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


FREQUENCY_SETTING = "CAMPAIGN_MARKETING_FREQUENCY"
FREQUENCY_CAP = "frequency_cap"
"""The first word of a frequency-capped message's error_title: what reports and scripts match on."""
_FREQUENCY_HOURS = {"h": 1, "d": 24, "w": 24 * 7}
_FREQUENCY = re.compile(r"(?P<count>[0-9]{1,9})\s*/\s*(?P<amount>[0-9]{1,9})\s*(?P<unit>[hdw])", re.IGNORECASE)
MAX_FREQUENCY_PERIOD = timedelta(days=366)
"""A year: the claim looks this far back in the outbox; a longer cap is a typo more likely than a plan."""


@dataclass(frozen=True)
class MarketingFrequency:
    """The business's own marketing frequency cap (CAMPAIGN_MARKETING_FREQUENCY): no recipient
    gets more than `count` marketing templates in any moving `period`, across campaigns.

    Not Meta's rule (Meta's per-user marketing limit, 131049, is opaque and answers after the
    fact): a cap the business keeps so one person is not sent every campaign of the week.
    Counted: marketing templates that reached or may have reached the person. Not counted:
    utility and authentication templates, free-form text inside the 24-hour window (not a
    template), failed, skipped or cancelled messages (nothing reached them)."""

    count: int
    period: timedelta

    def __str__(self) -> str:
        """The setting's canonical spelling: `2/7d`, `1/36h`; whole days in days (`1/24h` is
        `1/1d`, `2/1w` is `2/7d`), so workers that spell one cap differently still write one
        error_title, and the summary counts their skips as one reason."""
        if self.period % timedelta(days=1) == timedelta(0):
            return f"{self.count}/{self.period // timedelta(days=1)}d"
        return f"{self.count}/{self.period // timedelta(hours=1)}h"

    def capped(self, marketing_templates_in_period: int) -> bool:
        """Whether one more marketing template would pass the cap."""
        return marketing_templates_in_period >= self.count

    @property
    def reason(self) -> str:
        """The skipped message's error_title: the same text for every capped message, so the
        summary's skipped reasons count them as one line."""
        days, hours = divmod(self.period // timedelta(hours=1), 24)
        span = _plural(days, "day") if not hours else _plural(days * 24 + hours, "hour")
        return (f"{FREQUENCY_CAP}: {_plural(self.count, 'marketing template')} in the last {span} "
                f"({FREQUENCY_SETTING}={self})")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def parse_marketing_frequency(text: str) -> MarketingFrequency:
    """`N/<int>d`, `N/<int>h` or `N/<int>w` (`2/7d`: at most 2 marketing templates in any 7
    days), the period at most a year. A ValueError says what is wrong in a phrase the settings
    reader puts after the setting's name."""
    spelled = "N/<days>d, N/<hours>h or N/<weeks>w, e.g. 2/7d: at most 2 marketing templates in any 7 days"
    match = _FREQUENCY.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"is not {spelled}")
    count, hours = int(match["count"]), int(match["amount"]) * _FREQUENCY_HOURS[match["unit"].lower()]
    if count < 1:
        raise ValueError(f"allows no marketing template at all: the count must be at least 1 ({spelled})")
    if not 1 <= hours <= MAX_FREQUENCY_PERIOD // timedelta(hours=1):
        raise ValueError(f"needs a period of 1 hour to 366 days ({spelled})")
    return MarketingFrequency(count, timedelta(hours=hours))


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
