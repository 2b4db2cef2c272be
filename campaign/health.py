"""Template and sender health: what Meta says of a template or a sender number, remembered,
and what it does to the campaigns (DESIGN.md guarantee 7; INTERFACE.md, "Rules the dispatcher
keeps").

- A template PAUSED, DISABLED or REJECTED (its `message_template_status_update`) pauses every
  running or scheduled campaign using that name in that language; its status is remembered in
  `template_statuses`, so `campaign resume` refuses until an APPROVED or REINSTATED one.
- A sender FLAGGED or DOWNGRADEd (`phone_number_quality_update`) pauses its running and
  scheduled marketing campaigns (and those whose category is not known yet); utility and
  authentication go on. THROUGHPUT_UPGRADE raises its throughput to 1,000 MPS.
- The messaging limit (a quality update's tier, a `business_capability_update`, the GET) is
  the portfolio's since October 2025: it updates every known sender and the business row `*`,
  which a sender without a limit of its own falls back to. The dispatcher reads it as its daily
  budget when `CAMPAIGN_DAILY_UNIQUE_LIMIT` is unset.

Every fact keeps the time Meta stated it (the webhook entry's `time`, or the GET's): applying
webhooks again or in another order ends with the latest; a pause only follows the latest
news, and never a campaign paused (and so resumed) after that news, as reconcile's statuses.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from campaign import campaigns
from campaign.config import Settings
from campaign.db import Database
from campaign.events import (SENDER_QUALITY_STOPS, TEMPLATE_STOPPED, THROUGHPUT_UPGRADE, MessagingLimit,
                             SenderItem, TemplateStatusItem, messaging_limit)
from campaign.exceptions import CampaignError
from campaign.graph import GraphClient, GraphError, TransportError
from campaign.models import Campaign, Sender, TemplateStatus
from campaign.states import CampaignState

log = logging.getLogger(__name__)

BUSINESS = "*"
"""The `senders` row of the business (portfolio) itself: facts Meta states for all its numbers."""
STANDARD_MPS = 80
HIGH_MPS = 1000
"""Meta's throughput before and after the automatic upgrade (whatsapp-templates.md §3)."""
_ACTIVE = (CampaignState.RUNNING.value, CampaignState.SCHEDULED.value)
_PERMISSION_CODES = frozenset({3, 10, *range(200, 300)})
_MISSING_CODES = frozenset({100, 2500})


# -- what the dispatcher reads ------------------------------------------------------------------


@dataclass(frozen=True)
class SenderLimits:
    mps: int | None
    """Meta's throughput for the number; None when unknown."""
    daily_limit: int | None
    """The messaging limit; None when unlimited or unknown."""
    limit_known: bool = False


def sender_limits(session: Session) -> dict[str, SenderLimits]:
    """Every sender's limits, in one query (the dispatcher reads them once per refresh)."""
    return {pid: SenderLimits(mps, daily, tier is not None) for pid, mps, daily, tier in session.execute(
        select(Sender.phone_number_id, Sender.mps, Sender.daily_limit, Sender.messaging_limit))}


def limits_for(limits: dict[str, SenderLimits], sender: str) -> SenderLimits:
    """`sender`'s limits; the business's messaging limit when it has none of its own."""
    own = limits.get(sender, SenderLimits(None, None))
    if own.limit_known:
        return own
    business = limits.get(BUSINESS, SenderLimits(None, None))
    return SenderLimits(own.mps, business.daily_limit, business.limit_known)


# -- template status webhooks -------------------------------------------------------------------


def apply_template_statuses(session: Session, items: Iterable[tuple[TemplateStatusItem, datetime]], now: datetime,
                            notes: list[tuple[int, str]]) -> None:
    """Remember each template's latest status; a stopping one pauses the campaigns using it."""
    latest: dict[tuple[str, str], tuple[TemplateStatusItem, datetime]] = {}
    for item, at in items:
        key = (item.name, item.language)
        if key not in latest or at >= latest[key][1]:
            latest[key] = (item, at)
    for (name, language), (item, at) in sorted(latest.items()):
        row = session.get(TemplateStatus, (name, language))
        if row is not None and at < row.event_at:
            notes.append((logging.INFO, f"template {name} [{language}] {item.event} at {at:%Y-%m-%d %H:%M:%S} is older "
                                        f"than its {row.status} at {row.event_at:%Y-%m-%d %H:%M:%S}: kept {row.status}"))
            continue
        if row is None:
            session.add(TemplateStatus(name=name, language=language, status=item.event, reason=item.reason,
                                       event_at=at, updated_at=now))
        else:
            row.status, row.reason, row.event_at, row.updated_at = item.event, item.reason, at, now
        code = TEMPLATE_STOPPED.get(item.event)
        if code is None:
            continue
        reason = (f"Meta {item.event} template {name} [{language}] (reason {item.reason or 'NONE'}): "
                  "campaigns using it cannot send until Meta approves it again")
        using = session.scalars(select(Campaign).where(
            Campaign.template_name == name, Campaign.template_language == language,
            Campaign.state.in_(_ACTIVE)).order_by(Campaign.id))
        _pause(session, list(using), at, reason, code, now, notes)


def remember_approved(session: Session, name: str, language: str, now: datetime) -> None:
    """Launch's own reading of the template (APPROVED, from the WABA) is news as of now."""
    row = session.get(TemplateStatus, (name, language))
    if row is None:
        session.add(TemplateStatus(name=name, language=language, status="APPROVED", event_at=now, updated_at=now))
    elif now >= row.event_at:
        row.status, row.reason, row.event_at, row.updated_at = "APPROVED", None, now, now


# -- sender quality and capability webhooks -----------------------------------------------------


def apply_sender_updates(session: Session, items: Iterable[tuple[SenderItem, datetime]], now: datetime,
                         notes: list[tuple[int, str]]) -> None:
    """Limits and throughput by their own times; a FLAGGED or DOWNGRADE that is the sender's
    latest quality news pauses its marketing campaigns."""
    latest_quality: dict[str, tuple[SenderItem, datetime, Sender | None]] = {}
    for item, at in sorted(items, key=lambda pair: pair[1]):
        sender = _by_display(session, item.display_phone_number) if item.display_phone_number else None
        if item.limit is not None:
            for row in [*session.scalars(select(Sender).where(Sender.phone_number_id != BUSINESS)), _business(session, now)]:
                _set_limit(row, item.limit, at, now)
        if item.event == "CAPABILITY":
            continue
        if item.event == THROUGHPUT_UPGRADE:
            if sender is None:
                notes.append((logging.WARNING, f"throughput upgrade of sender {item.display_phone_number}, which the "
                                               "engine does not know: run `campaign sender PHONE_NUMBER_ID` to record it"))
            elif sender.mps_at is None or at >= sender.mps_at:
                sender.mps, sender.mps_at, sender.updated_at = HIGH_MPS, at, now
        row = sender if sender is not None else _business(session, now)
        if row.quality_at is None or at >= row.quality_at:
            row.quality_event, row.quality_at, row.updated_at = item.event, at, now
            latest_quality[row.phone_number_id] = (item, at, sender)
    for item, at, sender in latest_quality.values():
        if item.event in SENDER_QUALITY_STOPS:
            _pause_marketing(session, item, at, sender, now, notes)


def _pause_marketing(session: Session, item: SenderItem, at: datetime, sender: Sender | None, now: datetime,
                     notes: list[tuple[int, str]]) -> None:
    marketing = or_(Campaign.template_category == "marketing", Campaign.template_category.is_(None))
    if sender is not None:
        mine = Campaign.phone_number_id == sender.phone_number_id
        if sender.is_default:
            mine = or_(mine, Campaign.phone_number_id.is_(None))
        who = f"sender {sender.phone_number_id} (+{item.display_phone_number})"
    else:
        known = select(Sender.phone_number_id).where(Sender.phone_number_id != BUSINESS)
        mine = Campaign.phone_number_id.not_in(known)
        if session.scalar(select(Sender.phone_number_id).where(Sender.is_default.is_(True)).limit(1)) is None:
            mine = or_(mine, Campaign.phone_number_id.is_(None))
        who = f"sender +{item.display_phone_number}"
        notes.append((logging.WARNING, f"{who} is not known (`campaign sender` records it): pausing the marketing "
                                       "campaigns of every sender the engine cannot name"))
    reason = (f"Meta {item.event} {who}: its marketing campaigns are paused before its quality drops further "
              "(utility and authentication go on); see `campaign sender`, then resume")
    targets = session.scalars(select(Campaign).where(mine, marketing, Campaign.state.in_(_ACTIVE)).order_by(Campaign.id))
    _pause(session, list(targets), at, reason, None, now, notes)


def _by_display(session: Session, digits: str) -> Sender | None:
    return session.scalars(select(Sender).where(Sender.display_phone_number == digits, Sender.phone_number_id != BUSINESS)
                           .order_by(Sender.is_default.desc(), Sender.phone_number_id).limit(1)).first()


def _business(session: Session, now: datetime) -> Sender:
    row = session.get(Sender, BUSINESS)
    if row is None:
        row = Sender(phone_number_id=BUSINESS, is_default=False, updated_at=now)
        session.add(row)
        session.flush()
    return row


def _set_limit(row: Sender, limit: MessagingLimit, at: datetime, now: datetime) -> None:
    if row.limit_at is None or at >= row.limit_at:
        row.messaging_limit, row.daily_limit, row.limit_at, row.updated_at = limit.tier, limit.daily, at, now


def _pause(session: Session, targets: list[Campaign], at: datetime, reason: str, code: int | None, now: datetime,
           notes: list[tuple[int, str]]) -> None:
    for target in targets:
        # Old news the user already acted on (paused, then resumed) does not pause again;
        # this also keeps a replay from pausing campaigns (as reconcile._pause_for).
        if target.paused_at is not None and at <= target.paused_at:
            continue
        if campaigns.engine_pause(session, target, reason, code, now=max(now, at)):
            notes.append((logging.WARNING, f"campaign {target.name!r} paused: {reason}"))


# -- GET /{phone-number-id} -----------------------------------------------------------------------


@dataclass(frozen=True)
class SenderHealth:
    """`GET /{phone-number-id}` read (whatsapp-templates.md §6)."""

    phone_number_id: str
    display_phone_number: str | None
    verified_name: str | None
    status: str | None
    quality_rating: str | None
    messaging_limit: str | None
    throughput: str | None
    name_status: str | None
    code_verification_status: str | None
    daily_limit: int | None = None
    mps: int | None = None

    @classmethod
    def from_graph(cls, phone_number_id: str, answer: dict[str, Any]) -> SenderHealth:
        # The portfolio's limit (v24+) first; the number's own tier (up to v23) else.
        limit = _limit_in(answer.get("whatsapp_business_manager_messaging_limit")) or _limit_in(
            answer.get("messaging_limit_tier"))
        throughput = answer.get("throughput")
        level = _text(throughput.get("level")) if isinstance(throughput, dict) else _text(throughput)
        return cls(
            phone_number_id=phone_number_id,
            display_phone_number=_text(answer.get("display_phone_number")),
            verified_name=_text(answer.get("verified_name")),
            status=_text(answer.get("status")),
            quality_rating=_text(answer.get("quality_rating")),
            messaging_limit=limit.tier if limit else None,
            throughput=level,
            name_status=_text(answer.get("name_status")),
            code_verification_status=_text(answer.get("code_verification_status")),
            daily_limit=limit.daily if limit else None,
            mps={"STANDARD": STANDARD_MPS, "HIGH": HIGH_MPS}.get((level or "").upper()),
        )


def _text(value: Any) -> str | None:
    return str(value)[:200] if value not in (None, "") else None


def _limit_in(value: Any) -> MessagingLimit | None:
    if isinstance(value, dict):
        return next((found for key in ("max_daily_conversations_per_business", "current_limit", "tier", "limit")
                     if (found := messaging_limit(value.get(key))) is not None), None)
    return messaging_limit(value)


@dataclass(frozen=True)
class SenderReport:
    """What `campaign sender` shows: Meta's answer and the daily budget the engine uses."""

    health: SenderHealth
    daily_budget: int | None
    """None: unlimited, or unknown (`budget_source` says which)."""
    budget_source: str

    def as_json(self) -> dict[str, Any]:
        found = {k: v for k, v in asdict(self.health).items()}
        return {**found, "daily_budget": self.daily_budget, "budget_source": self.budget_source}


def fetch(settings: Settings, phone_number_id: str) -> SenderHealth:
    """Meta's answer for the number; raises GraphError or TransportError."""
    token = settings.access_token
    if not token:
        raise CampaignError("WA_ACCESS_TOKEN is not set: reading the sender's health needs a system-user access token")

    async def get() -> dict[str, Any]:
        async with GraphClient(settings.api_base_url, settings.api_version, token, connections=2) as client:
            return await client.fetch_sender(phone_number_id)

    return SenderHealth.from_graph(phone_number_id, asyncio.run(get()))


def record(session: Session, health: SenderHealth, now: datetime, *, is_default: bool) -> Sender:
    """Store what the GET said: the latest news of each fact it carries."""
    row = session.get(Sender, health.phone_number_id)
    if row is None:
        row = Sender(phone_number_id=health.phone_number_id, is_default=False, updated_at=now)
        session.add(row)
    if health.display_phone_number:
        row.display_phone_number = "".join(ch for ch in health.display_phone_number if ch.isdigit())[:32] or None
    row.status, row.quality_rating = health.status, health.quality_rating
    if health.messaging_limit is not None:
        _set_limit(row, MessagingLimit(health.messaging_limit, health.daily_limit), now, now)
    if health.mps is not None and (row.mps_at is None or now >= row.mps_at):
        row.mps, row.mps_at = health.mps, now
    if is_default:
        for other in session.scalars(select(Sender).where(Sender.is_default.is_(True))):
            other.is_default = False
        row.is_default = True
    row.health_checked_at = row.updated_at = now
    session.flush()
    return row


def daily_budget(settings: Settings, limits: SenderLimits) -> tuple[int | None, str]:
    """The dispatcher's daily budget for a sender, and where it comes from."""
    if settings.daily_unique_limit is not None:
        return settings.daily_unique_limit, "CAMPAIGN_DAILY_UNIQUE_LIMIT"
    if limits.limit_known:
        return limits.daily_limit, "Meta's messaging limit" if limits.daily_limit is not None else "unlimited"
    return None, "unknown: no messaging limit from Meta yet"


def check_sender(db: Database, settings: Settings, phone_number_id: str | None = None, *,
                 now: datetime) -> SenderReport:
    """`campaign sender`: read the number's health from Meta, store it, derive the budget."""
    sender = campaigns.require_sender(phone_number_id, settings.phone_number_id)
    try:
        health = fetch(settings, sender)
    except (GraphError, TransportError) as exc:
        raise CampaignError(f"cannot read the health of sender {sender}: {exc}") from None
    return _store(db, settings, health, now)


def _store(db: Database, settings: Settings, health: SenderHealth, now: datetime) -> SenderReport:
    with db.session() as session:
        record(session, health, now, is_default=health.phone_number_id == settings.phone_number_id)
        limits = limits_for(sender_limits(session), health.phone_number_id)
    return SenderReport(health, *daily_budget(settings, limits))


def preflight(db: Database, settings: Settings, sender: str, *, now: datetime,
              warn: Callable[[str], None]) -> None:
    """Launch's look at the sender: refuses one Meta does not have CONNECTED, warns on a RED
    quality rating, records the limits. A GET Meta refuses for permissions, or a version
    without the endpoint, leaves launch going on with a warning: the engine works without it."""
    try:
        health = fetch(settings, sender)
    except GraphError as exc:
        if exc.code in _PERMISSION_CODES or exc.code in _MISSING_CODES or exc.http_status == 404:
            warn(f"could not read the health of sender {sender} ({exc}); launching without it")
            return
        raise CampaignError(f"cannot read the health of sender {sender}: {exc}") from None
    except TransportError as exc:
        warn(f"could not reach the Graph API for the health of sender {sender} ({exc}); launching without it")
        return
    _store(db, settings, health, now)
    if health.status is not None and health.status.upper() != "CONNECTED":
        raise CampaignError(f"sender {sender} is {health.status} at Meta, not CONNECTED: it cannot send "
                            f"(`campaign sender {sender}` shows its health)")
    if (health.quality_rating or "").upper() == "RED":
        warn(f"sender {sender} has quality rating RED: Meta may lower its messaging limit or restrict it")
