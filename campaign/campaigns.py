"""Campaigns: create, look up, count their outbox, and move them through their states
(the user's commands and the engine's own transitions: start when scheduled, pause for an
error that dooms them, complete when nothing is left to send)."""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from campaign.exceptions import CampaignError
from campaign.clock import utcnow
from campaign.events import TEMPLATE_STOPPED
from campaign.models import Campaign, Contact, MediaUpload, Message, TemplateStatus, in_state
from campaign import binding, errors, zone_sets
from campaign.binding import Binding, Source, SourceKind
from campaign.payloads import MessageSpec
from campaign.send_window import SendWindow, parse_timezone
from campaign.templates import TemplateInfo, parse_template
from campaign.sql import batches
from campaign.states import CampaignState, MessageState

HEADER_TYPES = ("image", "video", "document")
TEMPLATE_CATEGORIES = ("marketing", "utility", "authentication")
FINAL_STATES = (CampaignState.COMPLETED, CampaignState.CANCELLED)
_TEMPLATE_NAME = re.compile(r"^[a-z0-9_]{1,512}$")
_LANGUAGE = re.compile(r"^[a-z]{2,3}(_[A-Za-z]{2,4})?$")


@dataclass(frozen=True)
class CampaignSpec:
    """What `campaign create` asks for."""

    name: str
    template: str
    language: str
    params: list[str] = field(default_factory=list)
    """`--param`: shorthand for `--bind body.N=COLUMN`."""
    binds: list[str] = field(default_factory=list)
    """`--bind TARGET=SOURCE`, as typed."""
    text: str | None = None
    header_type: str | None = None
    header_link: str | None = None
    phone_number_id: str | None = None
    mps: int | None = None
    category: str | None = None
    send_window: str | None = None
    """`--send-window HH:MM-HH:MM` of the recipient's local time."""
    timezone: str | None = None
    """`--timezone`: the zone of recipients whose number places them nowhere (default UTC)."""


def text_placeholders(body: str) -> list[str]:
    """The `{column}` names a free-form body uses, in order."""
    try:
        return [name for _, name, _, _ in string.Formatter().parse(body) if name]
    except ValueError as exc:
        raise CampaignError(f"--text: {exc} (write a literal brace as {{{{ or }}}})") from None


def validate_spec(spec: CampaignSpec) -> None:
    if not spec.name.strip() or len(spec.name) > 200:
        raise CampaignError("a campaign name must be 1 to 200 characters")
    if not _TEMPLATE_NAME.match(spec.template):
        raise CampaignError(
            f"--template {spec.template!r}: Meta's template names are lowercase letters, digits and underscores"
        )
    if not _LANGUAGE.match(spec.language):
        raise CampaignError(f"--language {spec.language!r} is not a language code such as en_US or de")
    if len(set(spec.params)) != len(spec.params):
        raise CampaignError("--param names a column twice")
    if spec.text is not None:
        if not spec.text.strip():
            raise CampaignError("--text is empty")
        if len(spec.text) > 4096:
            raise CampaignError(f"--text is {len(spec.text)} characters; WhatsApp allows 4096")
        text_placeholders(spec.text)
    if (spec.header_type is None) != (spec.header_link is None) or (
        spec.header_type is not None and spec.header_type not in HEADER_TYPES
    ):
        raise CampaignError("a header needs one of --header-image, --header-video or --header-document with a URL")
    if spec.mps is not None and spec.mps <= 0:
        raise CampaignError("--mps must be greater than 0")
    if spec.category is not None and spec.category not in TEMPLATE_CATEGORIES:
        raise CampaignError(f"--category must be one of {', '.join(TEMPLATE_CATEGORIES)}")
    if spec.send_window is not None:
        SendWindow.parse(spec.send_window)
    if spec.timezone is not None:
        if spec.send_window is None:
            raise CampaignError("--timezone is the default zone of --send-window: give a send window too")
        parse_timezone(spec.timezone)
    binding_of_spec(spec)


def binding_of_spec(spec: CampaignSpec) -> Binding:
    """Every target the campaign fills, from `--bind` and the shorthands."""
    return binding.from_options(spec.binds, spec.params, spec.header_type, spec.header_link)


def create(session: Session, spec: CampaignSpec, *, now: datetime | None = None) -> Campaign:
    """A new campaign in state `draft`."""
    validate_spec(spec)
    if session.scalar(select(Campaign.id).where(Campaign.name == spec.name)) is not None:
        raise CampaignError(f"a campaign named {spec.name!r} already exists")
    campaign = Campaign(
        name=spec.name,
        state=CampaignState.DRAFT,
        template_name=spec.template,
        template_language=spec.language,
        template_category=spec.category,
        param_columns=list(spec.params),
        text_body=spec.text,
        header_type=spec.header_type,
        header_link=spec.header_link,
        binding={key: source.as_json() for key, source in binding_of_spec(spec).items()},
        phone_number_id=spec.phone_number_id,
        mps=spec.mps,
        send_window=str(SendWindow.parse(spec.send_window)) if spec.send_window else None,
        timezone=spec.timezone,
        created_at=now or utcnow(),
    )
    session.add(campaign)
    try:
        session.flush()
    except IntegrityError:  # created concurrently by another process
        raise CampaignError(f"a campaign named {spec.name!r} already exists") from None
    return campaign


def get(session: Session, name: str) -> Campaign:
    campaign = session.scalar(select(Campaign).where(Campaign.name == name))
    if campaign is None:
        raise CampaignError(f"no campaign named {name!r} (`campaign status` lists them)")
    return campaign


def list_all(session: Session) -> list[Campaign]:
    return list(session.scalars(select(Campaign).order_by(Campaign.created_at, Campaign.id)))


@dataclass(frozen=True)
class Counts:
    """Messages per state, every state present."""

    by_state: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.by_state.values())


def counts(session: Session, campaign_ids: list[int] | None = None) -> dict[int, Counts]:
    """Per campaign id, its messages counted per state, straight from the outbox."""
    query = select(Message.campaign_id, Message.state, func.count()).group_by(Message.campaign_id, Message.state)
    if campaign_ids is not None:
        query = query.where(Message.campaign_id.in_(campaign_ids))
    found: dict[int, dict[str, int]] = {}
    for campaign_id, state, n in session.execute(query):
        found.setdefault(campaign_id, {})[state] = n
    ids = campaign_ids if campaign_ids is not None else list(found)
    return {
        cid: Counts({s.value: found.get(cid, {}).get(s.value, 0) for s in MessageState}) for cid in ids
    }


# -- lifecycle -------------------------------------------------------------------------------
# draft -> scheduled -> running <-> paused -> completed; any non-final -> cancelled.


def _require(campaign: Campaign, allowed: tuple[CampaignState, ...], verb: str) -> None:
    if campaign.state not in allowed:
        raise CampaignError(f"campaign {campaign.name!r} is {campaign.state}: cannot {verb} it")


def pause(session: Session, campaign: Campaign, *, now: datetime | None = None) -> None:
    """The user's pause: workers stop sending it within about a second."""
    _require(campaign, (CampaignState.RUNNING, CampaignState.SCHEDULED), "pause")
    campaign.state = CampaignState.PAUSED
    campaign.paused_at = now or utcnow()
    campaign.pause_reason = None
    campaign.pause_code = None


def engine_pause(session: Session, campaign: Campaign, reason: str, code: int | None, *, now: datetime | None = None) -> bool:
    """The engine's pause, for an error that dooms the campaign; the reason shows in `status`.

    Returns False when the campaign was not running (already paused, cancelled, ...)."""
    if campaign.state not in (CampaignState.RUNNING, CampaignState.SCHEDULED):
        return False
    campaign.state = CampaignState.PAUSED
    campaign.paused_at = now or utcnow()
    campaign.pause_reason = reason
    campaign.pause_code = code
    return True


def stopped_template(session: Session, campaign: Campaign) -> str | None:
    """Why the campaign cannot send while Meta has its template PAUSED, DISABLED or REJECTED
    (its latest status webhook, health.py); None otherwise."""
    known = session.get(TemplateStatus, (campaign.template_name, campaign.template_language))
    if known is None or known.status not in TEMPLATE_STOPPED:
        return None
    return (f"template {campaign.template_name} [{campaign.template_language}] is {known.status} at Meta "
            f"(reason {known.reason or 'NONE'}): campaign {campaign.name!r} cannot send until Meta approves it again")


def resume(session: Session, campaign: Campaign, *, now: datetime | None = None) -> None:
    _require(campaign, (CampaignState.PAUSED,), "resume")
    if (stopped := stopped_template(session, campaign)) is not None:
        raise CampaignError(stopped)
    campaign.state = CampaignState.RUNNING
    campaign.pause_reason = None
    campaign.pause_code = None
    place_recipients(session, campaign)  # contacts imported while it was paused


LAUNCHABLE = (CampaignState.DRAFT, CampaignState.PAUSED, CampaignState.SCHEDULED)


def require_launchable(campaign: Campaign) -> None:
    """Refuse (CampaignError) a campaign whose state does not allow a launch."""
    _require(campaign, LAUNCHABLE, "launch")


def launch(session: Session, campaign: Campaign, *, at: datetime | None = None, now: datetime | None = None) -> None:
    """`draft` or `paused` → `running`, or `scheduled` until `at`."""
    require_launchable(campaign)
    now = now or utcnow()
    if at is not None and at > now:
        campaign.state = CampaignState.SCHEDULED
        campaign.scheduled_at = at
    else:
        campaign.state = CampaignState.RUNNING
        campaign.launched_at = campaign.launched_at or now
    campaign.pause_reason = None
    campaign.pause_code = None
    place_recipients(session, campaign)


def place_recipients(session: Session, campaign: Campaign) -> None:
    """Give the campaign's contacts their time zones, when it has a send window (zone_sets):
    at launch and resume, and at an import into a campaign that is no longer a draft."""
    if campaign.send_window:
        zone_sets.fill(session, campaign.id)


def cancel(session: Session, campaign: Campaign, *, now: datetime | None = None) -> int:
    """End the campaign: its queued messages become `cancelled`. Returns how many.

    So do those a worker has claimed but not yet marked in flight (`sending` without
    `sending_at`: they never left, outbox.py), and their recipients are freed as a worker
    giving them back would free them. The update races a worker's `mark_in_flight` on the
    same rows and exactly one wins: a message either left (and is recorded as sent) or is
    cancelled. Messages a worker gives back after this (marked, but their slot not reached)
    are cancelled by the next `complete_finished`."""
    _require(campaign, (CampaignState.DRAFT, CampaignState.SCHEDULED, CampaignState.RUNNING, CampaignState.PAUSED), "cancel")
    now = now or utcnow()
    campaign.state = CampaignState.CANCELLED
    campaign.cancelled_at = now
    result = session.execute(
        update(Message)
        .where(Message.campaign_id == campaign.id, Message.state == MessageState.QUEUED)
        .values(state=MessageState.CANCELLED)
    )
    claimed = list(session.scalars(
        update(Message)
        .where(Message.campaign_id == campaign.id, Message.state == MessageState.SENDING, Message.sending_at.is_(None))
        .values(state=MessageState.CANCELLED, lease_owner=None, lease_expires_at=None)
        .returning(Message.contact_id)
    ))
    for batch in batches(sorted(set(claimed))):
        session.execute(update(Contact).where(Contact.id.in_(batch)).values(next_send_at=now))
    return result.rowcount + len(claimed)  # type: ignore[attr-defined,no-any-return]


def cancel_leftovers(session: Session) -> int:
    """Messages of cancelled campaigns back in the queue (a worker gave back what it held when
    the cancel came, an in-doubt send was re-queued, a retry came due) become `cancelled`:
    nothing sends a cancelled campaign, and none of its messages waits for it."""
    cancelled = select(Campaign.id).where(Campaign.state == CampaignState.CANCELLED)
    result = session.execute(
        update(Message)
        .where(Message.campaign_id.in_(cancelled), in_state(MessageState.QUEUED))
        .values(state=MessageState.CANCELLED, next_attempt_at=None)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount  # type: ignore[attr-defined,no-any-return]


def sender_of(campaign_sender: str | None, default: str | None) -> str | None:
    """The phone-number id a campaign sends from: its own, else WA_PHONE_NUMBER_ID; None without either."""
    return campaign_sender or default


def require_sender(campaign_sender: str | None, default: str | None) -> str:
    found = sender_of(campaign_sender, default)
    if found is None:
        raise CampaignError(NO_SENDER)
    return found


NO_SENDER = "no sender: set WA_PHONE_NUMBER_ID for the workers, or create the campaign with --phone-number-id"


def retry_failed(session: Session, campaign: Campaign, codes: Sequence[int] = ()) -> int:
    """`campaign retry`: failed messages (with one of `codes`, when given) go back to the
    queue, a completed campaign runs again. Only messages Meta never accepted: one with a
    wamid may have reached the person, and at most once holds. Returns how many."""
    _require(campaign, (CampaignState.DRAFT, CampaignState.SCHEDULED, CampaignState.RUNNING, CampaignState.PAUSED,
                        CampaignState.COMPLETED), "retry")
    query = (update(Message)
             .where(Message.campaign_id == campaign.id, Message.state == MessageState.FAILED, Message.wamid.is_(None))
             .values(state=MessageState.QUEUED, failed_at=None, next_attempt_at=None, attempts=0, pair_hits=0,
                     marketing_waits=0, sending_at=None, lease_owner=None, lease_expires_at=None))
    if codes:
        query = query.where(Message.error_code.in_(list(codes)))
    count: int = session.execute(query).rowcount  # type: ignore[attr-defined]
    if count and campaign.state == CampaignState.COMPLETED:
        campaign.state = CampaignState.RUNNING
        campaign.completed_at = None
    return count


# -- the engine's transitions ------------------------------------------------------------------


@dataclass(frozen=True)
class RunningCampaign:
    """What a worker needs of a running campaign, read once per poll."""

    id: int
    name: str
    state: str
    sender: str | None
    spec: MessageSpec
    marketing: bool
    mps: int | None
    category: str | None = None
    """marketing, utility or authentication; None until given or read at launch."""
    missing_media: tuple[str, ...] = ()
    """Files of the binding with no live upload for the sender (a worker uploads them)."""
    send_window: SendWindow | None = None
    timezone: str = "UTC"
    """The send window's zone for recipients placed in none."""


def running(session: Session, names: Sequence[str] | None, now: datetime,
            default_sender: str | None = None) -> list[RunningCampaign]:
    """Running campaigns (scheduled ones whose time came are started first), each with the
    media ids its file sources were uploaded under (see `media`)."""
    due = select(Campaign).where(Campaign.state == CampaignState.SCHEDULED, Campaign.scheduled_at <= now)
    for campaign in session.scalars(due):
        campaign.state = CampaignState.RUNNING
        campaign.launched_at = campaign.launched_at or now
    query = select(Campaign).where(Campaign.state == CampaignState.RUNNING)
    if names:
        query = query.where(Campaign.name.in_(names))
    return [sendable(session, campaign, default_sender, now) for campaign in session.scalars(query)]


def sendable(session: Session, campaign: Campaign, default_sender: str | None, now: datetime) -> RunningCampaign:
    """What a worker needs to send `campaign`, with the live uploads of its files."""
    files = [s.value for s in binding_of(campaign).values() if s.kind is SourceKind.FILE]
    uploads = _uploads(session, sender_of(campaign.phone_number_id, default_sender), files, now) if files else {}
    return _running(campaign, uploads, tuple(f for f in files if f not in uploads))


def of_sender(session: Session, sender: str | None, default_sender: str | None, *,
              states: Sequence[str] = (CampaignState.RUNNING, CampaignState.SCHEDULED)) -> list[Campaign]:
    """The campaigns that send from `sender`: those naming it, and, when it is the workers'
    WA_PHONE_NUMBER_ID (or unknown), those naming no sender: they are the same number."""
    same = Campaign.phone_number_id == sender if sender is not None else Campaign.phone_number_id.is_(None)
    if sender is None or sender == default_sender:
        same = or_(same, Campaign.phone_number_id.is_(None))
    return list(session.scalars(select(Campaign).where(same, Campaign.state.in_([s for s in states]))
                                .order_by(Campaign.id)))


def engine_pause_sender(session: Session, sender: str | None, default_sender: str | None, reason: str,
                        code: int | None, now: datetime) -> list[str]:
    """An error that dooms the sender (token, permission, account, payment): every running
    campaign of it pauses in the database, so every worker stops, not only the one that saw it."""
    return [c.name for c in of_sender(session, sender, default_sender) if engine_pause(session, c, reason, code, now=now)]


def resume_sender(session: Session, sender: str | None, default_sender: str | None, *,
                  now: datetime | None = None) -> list[str]:
    """`campaign resume --sender`: every campaign the engine paused for a sender-wide error
    goes on (the user says it is fixed); campaigns paused by the user or for their own
    reasons stay paused."""
    resumed = []
    for campaign in of_sender(session, sender, default_sender, states=(CampaignState.PAUSED,)):
        if campaign.pause_code is not None and errors.rule_for(campaign.pause_code).action is errors.Action.PAUSE_ALL:
            resume(session, campaign, now=now)
            resumed.append(campaign.name)
    return resumed


def _uploads(session: Session, sender: str | None, paths: list[str], now: datetime) -> dict[str, str]:
    """Path -> media id of its live upload for `sender`."""
    rows = session.execute(select(MediaUpload.path, MediaUpload.media_id)
                           .where(MediaUpload.sender == sender, MediaUpload.path.in_(paths), MediaUpload.expires_at > now)
                           .order_by(MediaUpload.uploaded_at)).all()
    return dict(rows)


def complete_finished(session: Session, now: datetime) -> list[str]:
    """Running campaigns with nothing queued or sending become `completed` (and the
    leftovers of cancelled ones are cancelled: `cancel_leftovers`)."""
    cancel_leftovers(session)
    queued = select(Message.id).where(Message.campaign_id == Campaign.id, in_state(MessageState.QUEUED))
    sending = select(Message.id).where(Message.campaign_id == Campaign.id, in_state(MessageState.SENDING))
    done = list(session.scalars(select(Campaign).where(Campaign.state == CampaignState.RUNNING,
                                                       ~queued.exists(), ~sending.exists())))
    for campaign in done:
        campaign.state = CampaignState.COMPLETED
        campaign.completed_at = now
    return [c.name for c in done]


def engine_pause_all(session: Session, campaign_ids: Iterable[int], reason: str, code: int | None, now: datetime) -> list[str]:
    """`engine_pause` for each campaign; the names of those it paused."""
    return [campaign.name for campaign in session.scalars(select(Campaign).where(Campaign.id.in_(list(campaign_ids))))
            if engine_pause(session, campaign, reason, code, now=now)]


def _running(campaign: Campaign, media_ids: dict[str, str], missing_media: tuple[str, ...]) -> RunningCampaign:
    return RunningCampaign(
        id=campaign.id,
        name=campaign.name,
        state=campaign.state,
        sender=campaign.phone_number_id,
        spec=message_spec(campaign, media_ids),
        marketing=campaign.template_category == "marketing",
        mps=campaign.mps,
        category=campaign.template_category,
        missing_media=missing_media,
        send_window=zone_sets.window_of(campaign),
        timezone=campaign.timezone or "UTC",
    )


def binding_of(campaign: Campaign) -> Binding:
    """The campaign's binding (a campaign created before `--bind` existed: its shorthands)."""
    if campaign.binding is not None:
        return {key: Source.from_json(source) for key, source in campaign.binding.items()}
    return binding.from_options((), campaign.param_columns, campaign.header_type, campaign.header_link)


def template_info(campaign: Campaign) -> TemplateInfo | None:
    """The template as the last check found it, when there was one."""
    return parse_template(campaign.template_definition) if campaign.template_definition else None


def message_spec(campaign: Campaign, media_ids: dict[str, str] | None = None) -> MessageSpec:
    info = template_info(campaign)
    bound = binding_of(campaign)
    return MessageSpec(
        template_name=campaign.template_name,
        template_language=campaign.template_language,
        text_body=campaign.text_body,
        binding=tuple(bound.items()),
        targets=info.targets if info is not None else None,
        named=info.parameter_format == "NAMED" if info is not None else any(
            key.startswith("body.") and not key[5:].isdigit() for key in bound),
        header_kind=campaign.header_type,
        media_ids=tuple(sorted((media_ids or {}).items())),
    )
