"""What Meta says about the sending number: ``GET /{phone-number-id}`` and the events that change it.

Fields and values follow whatsapp-templates.md §6 (health) and §5 (``phone_number_quality_update``,
``business_capability_update``). Pure: the emulator keeps a ``SenderHealth`` in its config, asks
here what an event does to it and what the webhook says, and posts the webhook itself.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable

import phonenumbers

QUALITY_RATINGS = ("GREEN", "YELLOW", "RED", "NA")
NUMBER_STATUSES = ("CONNECTED", "DISCONNECTED", "PENDING", "FLAGGED", "RESTRICTED", "UNVERIFIED")
NAME_STATUSES = ("APPROVED", "AVAILABLE_WITHOUT_REVIEW", "DECLINED", "EXPIRED", "PENDING_REVIEW", "NONE")
CODE_VERIFICATION_STATUSES = ("VERIFIED", "UNVERIFIED", "NOT_VERIFIED", "EXPIRED")  # the last two: pywa
THROUGHPUT_LEVELS = ("STANDARD", "HIGH")  # HIGH is unverified (§6)
TIERS = ("TIER_50", "TIER_250", "TIER_1K", "TIER_2K", "TIER_10K", "TIER_100K", "TIER_UNLIMITED", "TIER_NOT_SET")
# business_capability_update gives the portfolio limit as a number of users a day; -1 is unlimited (§5).
TIER_OF_DAILY_LIMIT = {50: "TIER_50", 250: "TIER_250", 1000: "TIER_1K", 2000: "TIER_2K", 10000: "TIER_10K",
                       100000: "TIER_100K", -1: "TIER_UNLIMITED"}
QUALITY_EVENTS = ("FLAGGED", "UNFLAGGED", "DOWNGRADE", "UPGRADE", "THROUGHPUT_UPGRADE", "ONBOARDING")
CAPABILITY_KEYS = ("max_daily_conversation_per_phone", "max_daily_conversations_per_business",
                   "max_phone_numbers_per_business", "max_phone_numbers_per_waba")
# Meta raises a number's throughput from 80 to 1,000 messages per second (whatsapp-cloud-api.md, "Limits").
HIGH_THROUGHPUT_MPS = 1000
# The fields a GET without ``fields`` answers (Meta's default for a phone-number node, as its examples show).
DEFAULT_FIELDS = ("verified_name", "code_verification_status", "display_phone_number", "quality_rating",
                  "platform_type", "throughput", "id")
NODE_TYPE = "WhatsAppBusinessPhoneNumber"


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


@dataclass(frozen=True, slots=True)
class SenderHealth:
    """The sending number as ``GET /{phone-number-id}`` shows it (``id`` and the number come from the config)."""

    verified_name: str = "Sandbox Business"
    status: str = "CONNECTED"
    quality_rating: str = "GREEN"
    name_status: str = "APPROVED"
    code_verification_status: str = "VERIFIED"
    messaging_limit_tier: str = "TIER_1K"  # deprecated by Meta (v23 and older), still answered
    whatsapp_business_manager_messaging_limit: str = "TIER_2K"  # the portfolio's limit (v24+)
    throughput_level: str = "STANDARD"
    platform_type: str = "CLOUD_API"

    def __post_init__(self) -> None:
        _one_of("health quality_rating", self.quality_rating, QUALITY_RATINGS)
        _one_of("health status", self.status, NUMBER_STATUSES)
        _one_of("health name_status", self.name_status, NAME_STATUSES)
        _one_of("health code_verification_status", self.code_verification_status, CODE_VERIFICATION_STATUSES)
        _one_of("health messaging_limit_tier", self.messaging_limit_tier, TIERS)
        _one_of("health whatsapp_business_manager_messaging_limit",
                self.whatsapp_business_manager_messaging_limit, TIERS)
        _one_of("health throughput level", self.throughput_level, THROUGHPUT_LEVELS)

    def updated(self, changes: dict[str, Any]) -> SenderHealth:
        """A copy with ``changes`` (Graph keys; ``throughput`` as ``{"level": ...}``) applied; validated."""
        changes = dict(changes)
        throughput = changes.pop("throughput", None)
        if throughput is not None:
            if not isinstance(throughput, dict) or set(throughput) != {"level"}:
                raise ValueError('health throughput must be {"level": "STANDARD" | "HIGH"}')
            changes["throughput_level"] = throughput["level"]
        known = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown health keys: {sorted(unknown)}")
        return dataclasses.replace(self, **{k: str(v) for k, v in changes.items()})

    def graph_json(self) -> dict[str, Any]:
        """The health fields in the Graph API's shape (no ``id``, no ``display_phone_number``)."""
        return {"verified_name": self.verified_name, "status": self.status, "quality_rating": self.quality_rating,
                "name_status": self.name_status, "code_verification_status": self.code_verification_status,
                "messaging_limit_tier": self.messaging_limit_tier,
                "whatsapp_business_manager_messaging_limit": self.whatsapp_business_manager_messaging_limit,
                "throughput": {"level": self.throughput_level}, "platform_type": self.platform_type}


def displayed_number(digits: str) -> str:
    """How the Graph API shows a number: ``15550783881`` -> ``+1 555-078-3881`` (international format)."""
    try:
        parsed = phonenumbers.parse("+" + digits)
    except phonenumbers.NumberParseException:
        return "+" + digits
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.INTERNATIONAL)


def phone_number_json(health: SenderHealth, phone_number_id: str, display_digits: str,
                      fields: Iterable[str] | None) -> dict[str, Any] | str:
    """The node as ``GET /{phone-number-id}?fields=...`` answers it: the fields asked for plus ``id``
    (Meta's default set without ``fields``); a field the node does not have is returned as a str."""
    full = {"id": phone_number_id, "display_phone_number": displayed_number(display_digits), **health.graph_json()}
    wanted = DEFAULT_FIELDS if fields is None else [f.strip() for f in fields if f.strip()]
    for name in wanted:
        if name not in full:
            return name
    return {key: value for key, value in full.items() if key in wanted or key == "id"}


@dataclass(frozen=True, slots=True)
class QualityEvent:
    """What ``POST /_sandbox/quality`` asks for: a ``phone_number_quality_update`` and its effect."""

    event: str
    current_limit: str | None = None
    max_daily_conversations_per_business: str | None = None
    old_limit: str | None = None
    quality_rating: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QualityEvent:
        """Read and check the control's body."""
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown quality keys: {sorted(unknown)}")
        event = cls(**{k: (None if v is None else str(v)) for k, v in data.items()})
        _one_of("event", event.event, QUALITY_EVENTS)
        for name in ("current_limit", "max_daily_conversations_per_business", "old_limit"):
            value = getattr(event, name)
            if value is not None:
                _one_of(name, value, TIERS)
        if event.quality_rating is not None:
            _one_of("quality_rating", event.quality_rating, QUALITY_RATINGS)
        if event.event in ("DOWNGRADE", "UPGRADE") and event.current_limit is None:
            raise ValueError(f"a {event.event} needs current_limit (the new tier, e.g. TIER_10K)")
        return event


@dataclass(frozen=True, slots=True)
class QualityChange:
    """An event's outcome: the health after it, the webhook's ``value``, and the MPS the number now has."""

    health: SenderHealth
    value: dict[str, Any]
    mps: int


def apply_quality_event(health: SenderHealth, event: QualityEvent, display_digits: str, mps: int,
                        before_flag: SenderHealth | None = None) -> QualityChange:
    """What Meta's ``phone_number_quality_update`` means for the number (whatsapp-templates.md §5, §6).

    FLAGGED: quality RED, status FLAGGED. UNFLAGGED: status and quality as before the flag (else
    CONNECTED, GREEN). DOWNGRADE/UPGRADE: the new limit. THROUGHPUT_UPGRADE: throughput HIGH, 1,000
    MPS and, unless told otherwise, an unlimited tier (Meta upgrades numbers that reached it).
    The limits the webhook carries are the limits the number has afterwards; ``old_limit`` is sent
    when given, and for DOWNGRADE/UPGRADE defaults to the tier before the event.
    """
    kind = event.event
    changes: dict[str, Any] = {}
    if kind == "FLAGGED":
        changes.update(status="FLAGGED", quality_rating="RED")
    elif kind == "UNFLAGGED":
        previous = before_flag or SenderHealth()
        changes.update(status=previous.status if previous.status != "FLAGGED" else "CONNECTED",
                       quality_rating=previous.quality_rating)
    elif kind == "THROUGHPUT_UPGRADE":
        changes["throughput_level"] = "HIGH"
        mps = max(mps, HIGH_THROUGHPUT_MPS)
    if event.quality_rating is not None:
        changes["quality_rating"] = event.quality_rating
    default_limit = "TIER_UNLIMITED" if kind == "THROUGHPUT_UPGRADE" else None
    current = event.current_limit or default_limit or health.messaging_limit_tier
    portfolio = (event.max_daily_conversations_per_business or event.current_limit or default_limit
                 or health.whatsapp_business_manager_messaging_limit)
    changes.update(messaging_limit_tier=current, whatsapp_business_manager_messaging_limit=portfolio)
    value: dict[str, Any] = {"display_phone_number": display_digits, "event": kind, "current_limit": current,
                             "max_daily_conversations_per_business": portfolio}
    old = event.old_limit or (health.messaging_limit_tier if kind in ("DOWNGRADE", "UPGRADE") else None)
    if old is not None:
        value["old_limit"] = old
    return QualityChange(health.updated(changes), value, mps)


def capability_value(data: dict[str, Any]) -> dict[str, int]:
    """The ``value`` of a ``business_capability_update`` from the control's body (§5): integers;
    the daily limits are 50, 250, 1000, 2000, 10000, 100000 or -1 (unlimited)."""
    unknown = set(data) - set(CAPABILITY_KEYS)
    if unknown:
        raise ValueError(f"unknown capability keys: {sorted(unknown)}; known: {', '.join(CAPABILITY_KEYS)}")
    if not data:
        raise ValueError(f"give at least one of {', '.join(CAPABILITY_KEYS)}")
    value: dict[str, int] = {}
    for key in CAPABILITY_KEYS:
        if key not in data:
            continue
        number = data[key]
        if isinstance(number, bool) or not isinstance(number, int):
            raise ValueError(f"{key} must be an integer")
        if key.startswith("max_daily") and number not in TIER_OF_DAILY_LIMIT:
            raise ValueError(f"{key} must be one of {sorted(TIER_OF_DAILY_LIMIT)}")
        value[key] = number
    return value
