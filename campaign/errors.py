"""Meta's Graph error codes and what each means for the engine: one table, and one function
(`consequence`) that says what an error does to the message, the contact, the campaign and
the sender. The dispatcher (an error answered to a send) and the reconciler (a `failed`
status webhook) both apply what it says, and the report reads the table for what a
failure means and what to do about it.

Source: whatsapp-cloud-api.md, "Error codes" (Meta's error-code reference). Branch on the
code, never on the message text. Pure data and rules, no I/O. `error_subcode` is read into
GraphError for the logs but never decides anything: Meta deprecated it and leaves it out of
v16.0+ answers ("build error handling around code and details").
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

from campaign import policy
from campaign.states import SuppressionScope


class Action(StrEnum):
    RETRY = "retry"
    """Transient: back off exponentially with jitter, up to a bounded number of attempts."""
    SLOW_DOWN = "slow_down"
    """Throughput exceeded: retry, and slow the whole sender down."""
    RETRY_RECIPIENT_LATER = "retry_recipient_later"
    """Pair rate: this recipient later (4^x s); others go on."""
    WAIT = "wait"
    """Meta holds this recipient for a while (`no_resend_for`): try again after it, a
    bounded number of times; no message of the kind goes to them meanwhile."""
    FAIL = "fail"
    """Permanent for this message."""
    FAIL_AND_SUPPRESS = "fail_and_suppress"
    """Permanent, and the number goes on the suppression list."""
    PAUSE_CAMPAIGN = "pause_campaign"
    """The campaign cannot succeed as it is (its template, its spam rating): pause it."""
    PAUSE_ALL = "pause_all"
    """The account or token is broken: pause every running campaign of the sender."""


@dataclass(frozen=True)
class ErrorRule:
    codes: tuple[int, ...]
    meaning: str
    action: Action
    advice: str
    retry_after: float | None = None
    """A minimum wait in seconds before the next attempt, where Meta gives one."""
    unreachable: bool = False
    """The number is not on WhatsApp: remembered for future contacts checks."""
    no_resend_for: float | None = None
    """Seconds during which the recipient must not get another message of this kind."""
    pause_when_most: bool = False
    """Fails the message; pauses the campaign when most of its messages fail with it
    (131053: a header link Meta cannot fetch fails every send)."""


MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0

RULES: tuple[ErrorRule, ...] = (
    ErrorRule((0, 190), "authentication failed or the access token expired", Action.PAUSE_ALL,
              "create a new system-user token with whatsapp_business_messaging and set WA_ACCESS_TOKEN"),
    ErrorRule((3, 10, 131005), "permission missing", Action.PAUSE_ALL,
              "give the token's system user the whatsapp_business_messaging permission on this WABA"),
    ErrorRule(tuple(range(200, 300)), "permission missing", Action.PAUSE_ALL,
              "give the token's system user the whatsapp_business_messaging permission on this WABA"),
    ErrorRule((4, 80007), "app or account API call limit reached", Action.RETRY,
              "wait; management calls are limited per hour", retry_after=5 * MINUTE),
    ErrorRule((130429,), "throughput exceeded for the sender number", Action.SLOW_DOWN,
              "lower CAMPAIGN_MPS or let the engine slow down"),
    ErrorRule((131056,), "too many messages to this recipient (pair rate)", Action.RETRY_RECIPIENT_LATER,
              "the engine retries this recipient later"),
    ErrorRule((131048,), "spam rate limit: too many recipients blocked or reported the messages", Action.PAUSE_CAMPAIGN,
              "check the number's quality rating; send to people who opted in"),
    ErrorRule((131064,), "limited for template misclassification", Action.PAUSE_CAMPAIGN,
              "recategorize the template in WhatsApp Manager"),
    ErrorRule((368, 131031), "account restricted or locked for a policy violation", Action.PAUSE_ALL,
              "see Business Support Home for the violation and appeal"),
    ErrorRule((1, 131000), "unknown or internal error at Meta", Action.RETRY, "retried automatically"),
    ErrorRule((2, 131016, 133004), "service temporarily unavailable", Action.RETRY, "retried automatically"),
    ErrorRule((131057,), "account in maintenance or throughput upgrade", Action.RETRY,
              "retried after about a minute", retry_after=MINUTE),
    ErrorRule((133010, 131045, 133000, 33), "sender number not registered or deleted", Action.PAUSE_ALL,
              "register the phone number (POST /PHONE_NUMBER_ID/register) and check WA_PHONE_NUMBER_ID"),
    ErrorRule((100, 131009, 135000, 131051), "invalid parameter value, or unsupported message type",
              Action.FAIL, "check the recipient's row values and the campaign's parameters"),
    ErrorRule((131008, 132018), "a template parameter Meta refuses (missing, a newline or tab, too many spaces)",
              Action.PAUSE_CAMPAIGN, "fix the binding or the rows (campaign import checks them); the parameters "
              "will not fix themselves"),
    ErrorRule((131021,), "sender and recipient are the same number", Action.FAIL, "remove the business's own number"),
    ErrorRule((131026,), "undeliverable: not on WhatsApp, an old app, or terms not accepted", Action.FAIL,
              "the number is remembered as unreachable; use another channel", unreachable=True),
    ErrorRule((131030,), "recipient not in the allowed list of a test number", Action.FAIL,
              "add the number to the test number's allowed list, or use a production number"),
    ErrorRule((131042,), "payment problem on the WhatsApp Business Account", Action.PAUSE_ALL,
              "fix the payment method in Business Settings"),
    ErrorRule((131047,), "more than 24 hours since the customer last replied: free-form refused", Action.FAIL,
              "send a template instead (the engine should never cause this)"),
    ErrorRule((131049,), "Meta's per-user marketing limit", Action.WAIT,
              "do not resend marketing to this user within 24 hours", no_resend_for=DAY),
    ErrorRule((131050,), "the user stopped marketing messages from this business", Action.FAIL_AND_SUPPRESS,
              "the number is suppressed"),
    ErrorRule((130472,), "the user's number is part of a Meta experiment", Action.FAIL, "do not retry"),
    ErrorRule((130497,), "the business cannot message users in that country", Action.FAIL,
              "check the business's country restrictions"),
    ErrorRule((132000, 132012), "template parameters do not match the template", Action.PAUSE_CAMPAIGN,
              "make --param match the template's {{n}} placeholders"),
    ErrorRule((132001,), "template does not exist in that language or is not approved", Action.PAUSE_CAMPAIGN,
              "check the template's name, language and status in WhatsApp Manager"),
    ErrorRule((132005, 132007), "template text too long or against policy", Action.PAUSE_CAMPAIGN,
              "shorten or edit the template"),
    ErrorRule((132015, 132016), "template paused or disabled for low quality", Action.PAUSE_CAMPAIGN,
              "edit the template or wait for Meta to unpause it"),
    ErrorRule((131052, 131053), "media download or upload failed", Action.FAIL,
              "check that the header's URL is public and of a supported type", pause_when_most=True),
)

_BY_CODE: dict[int, ErrorRule] = {code: rule for rule in RULES for code in rule.codes}

UNKNOWN_ERROR = ErrorRule((), "an error the engine does not know", Action.FAIL,
                          "look the code up in Meta's error-code reference")
TRANSIENT_HTTP = ErrorRule((), "the Graph API answered with a server error", Action.RETRY, "retried automatically")


def rule_for(code: int | None, http_status: int | None = None) -> ErrorRule:
    """What an error code means; a code-less 5xx or 429 is transient, anything else unknown."""
    if code is not None and code in _BY_CODE:
        return _BY_CODE[code]
    if http_status is not None and (http_status >= 500 or http_status == 429):
        return TRANSIENT_HTTP
    return UNKNOWN_ERROR


# -- what an error does ----------------------------------------------------------------------


class Source(StrEnum):
    SEND = "send"
    """Meta answered the send request with the error: it did not accept the message."""
    STATUS = "status"
    """A `failed` status webhook: Meta had accepted the message and could not deliver it."""


class Fate(StrEnum):
    RETRY = "retry"
    """Back to the queue, due `retry_after` seconds from the error."""
    HOLD = "hold"
    """Back to the queue as it was (not counted as a failed attempt): the campaign or the
    sender pauses, and the message goes when it is resumed."""
    FAIL = "fail"


class Pause(StrEnum):
    CAMPAIGN = "campaign"
    SENDER = "sender"
    """Every campaign of the sender number, on every worker."""


@dataclass(frozen=True)
class Consequence:
    rule: ErrorRule
    fate: Fate
    retry_after: float = 0.0
    gave_up: bool = False
    """A retryable error that came once too often: the message fails."""
    pair_hit: bool = False
    """131056: the recipient stays held until the retry (Meta: back off that recipient)."""
    slow_sender: bool = False
    unreachable: bool = False
    """The contact is remembered as unreachable (131026)."""
    suppress: SuppressionScope | None = None
    """The number goes on the suppression list, for this scope (131050: marketing)."""
    limit_marketing_for: float | None = None
    """No marketing to the contact for this many seconds (131049)."""
    marketing_wait: bool = False
    """The retry is one of the message's bounded waits for the marketing limit."""
    pause: Pause | None = None


def consequence(
    rule: ErrorRule,
    *,
    source: Source,
    attempts: int,
    pair_hits: int = 0,
    rng: random.Random | None = None,
    retry_base: float = 2.0,
    marketing_waits: int = 0,
    marketing_retries: int = 3,
    marketing_retry_after: float = DAY,
) -> Consequence:
    """What `rule`'s error does, for a message tried `attempts` times (this one included)
    and refused `pair_hits` times before for the pair rate.

    A message Meta had accepted (`Source.STATUS`) is final when it fails, except for the
    per-user marketing limit, which Meta lifts later: the engine does not resend what Meta
    accepted and failed for another reason. The contact, campaign and sender effects are
    the same from either source."""
    limit = marketing_retry_after if rule.no_resend_for else None
    effects = {"unreachable": rule.unreachable, "limit_marketing_for": limit,
               # 131050: the user stopped marketing from the business; other templates still reach them.
               "suppress": SuppressionScope.MARKETING if rule.action is Action.FAIL_AND_SUPPRESS else None}
    action = rule.action
    if action in (Action.PAUSE_CAMPAIGN, Action.PAUSE_ALL):
        pause = Pause.SENDER if action is Action.PAUSE_ALL else Pause.CAMPAIGN
        fate = Fate.HOLD if source is Source.SEND else Fate.FAIL
        return Consequence(rule, fate, pause=pause, **effects)
    if action is Action.WAIT:
        # 131049, from a send's answer or a failed status alike: Meta did not deliver it and
        # lifts the limit later, so it waits (CAMPAIGN_MARKETING_RETRY_AFTER), a bounded
        # number of times (CAMPAIGN_MARKETING_RETRIES).
        if marketing_waits < marketing_retries:
            return Consequence(rule, Fate.RETRY, retry_after=marketing_retry_after, marketing_wait=True, **effects)
        return Consequence(rule, Fate.FAIL, gave_up=True, **effects)
    if source is Source.STATUS or action in (Action.FAIL, Action.FAIL_AND_SUPPRESS):
        return Consequence(rule, Fate.FAIL, **effects)
    if action is Action.SLOW_DOWN:
        return Consequence(rule, Fate.RETRY, retry_after=1.0, slow_sender=True, **effects)
    if action is Action.RETRY_RECIPIENT_LATER:
        hits = pair_hits + 1
        if hits > policy.MAX_PAIR_RETRIES:
            return Consequence(rule, Fate.FAIL, gave_up=True, **effects)
        return Consequence(rule, Fate.RETRY, retry_after=policy.pair_backoff(hits), pair_hit=True, **effects)
    # Action.RETRY: transient; exponential backoff with jitter, a bounded number of times.
    if attempts >= policy.MAX_TRANSIENT_ATTEMPTS:
        return Consequence(rule, Fate.FAIL, gave_up=True, **effects)
    delay = max(policy.transient_backoff(attempts, rng, base=retry_base), rule.retry_after or 0.0)
    return Consequence(rule, Fate.RETRY, retry_after=delay, **effects)
