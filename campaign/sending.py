"""Sending campaigns from Python: launch (with the pre-flight template check), run a worker,
send test messages. The CLI wraps these; a script can call them directly."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import func, select

from campaign import binding, campaigns, errors, health, media, phone, send_window, zone_sets
from campaign.binding import SourceKind
from campaign.clock import SYSTEM, Clock, utcnow
from campaign.config import Settings
from campaign.db import Database, database_unavailable, one_line
from campaign.dispatcher import DispatchConfig, Dispatcher, DispatchStats
from campaign.exceptions import CampaignError
from campaign.graph import GraphClient, GraphError, TransportError
from campaign.models import Campaign, Message, in_state
from campaign.payloads import targets_without_definition, template_payload
from campaign.states import CampaignState, MessageState
from campaign.templates import TemplateInfo, parse_template

log = logging.getLogger(__name__)


def client_factory(settings: Settings) -> Callable[[int], GraphClient]:
    """Graph clients of a given number of connections, with the configured token."""
    token = settings.access_token
    if not token:
        raise CampaignError("WA_ACCESS_TOKEN is not set: sending needs a system-user access token")
    return lambda connections=20: GraphClient(settings.api_base_url, settings.api_version, token, connections=connections)


def templates(settings: Settings, name: str | None = None) -> list[tuple[dict[str, Any], TemplateInfo]]:
    """The WABA's templates (every page; those called `name` when given): each as Meta
    describes it, and read as bind targets."""
    waba = settings.business_account_id
    if not waba:
        raise CampaignError("WA_BUSINESS_ACCOUNT_ID is not set: the templates live in the WhatsApp Business Account")

    async def fetch() -> list[dict[str, Any]]:
        async with client_factory(settings)(4) as client:
            return await client.fetch_templates(waba, name)

    try:
        items = asyncio.run(fetch())
    except (GraphError, TransportError) as exc:
        raise CampaignError(f"cannot read the templates of WhatsApp Business Account {waba}: {exc}") from None
    return [(item, parse_template(item)) for item in items]


def check(db: Database, settings: Settings, name: str, *, now: datetime | None = None,
          warn: Callable[[str], None] | None = None) -> Campaign:
    """The pre-flight of launch and `campaign test`: the template exists, is APPROVED in the
    language, and every part of it is bound and nothing else is (with the WABA id: against
    its definition, which is kept with the campaign; without it, the template must not be
    PAUSED, DISABLED or REJECTED by its latest status webhook); files bound to a media header
    are uploaded (or their live upload reused); with a token, the sender must be CONNECTED
    (health.preflight: `warn` gets what is worth knowing but not refusing, else it is logged).
    Raises CampaignError with one line naming the template and the target, or the sender."""
    now = now or utcnow()
    with db.read_session() as session:
        campaign = campaigns.get(session, name)
        stopped = campaigns.stopped_template(session, campaign)
    bound = campaigns.binding_of(campaign)
    definition, info = None, None
    if settings.business_account_id:
        found = templates(settings, campaign.template_name)
        info = binding.choose([i for _, i in found], campaign.template_name, campaign.template_language)
        definition = next(item for item, i in found if i is info)
        kinds = {key: media.kind_of(s.value) for key, s in bound.items() if s.kind is SourceKind.FILE}
        binding.check(info, bound, media_kinds=kinds)
    else:
        # Without the definition only what the options say can be sent: a header of the kind
        # --header-image/-video/-document named, and body text.
        known = {t.key for t in targets_without_definition(bound, campaign.header_type)}
        for key in bound:
            if key not in known:
                raise CampaignError(
                    f"{campaign.template_name}: {key} can be bound only against the template's definition: "
                    "set WA_BUSINESS_ACCOUNT_ID (or use --header-image/--header-video/--header-document)")
        if stopped is not None:
            raise CampaignError(stopped)
    sender = campaigns.sender_of(campaign.phone_number_id, settings.phone_number_id)
    if settings.access_token and sender is not None:
        health.preflight(db, settings, sender, now=now, warn=warn or log.warning)
    files = {s.value for s in bound.values() if s.kind is SourceKind.FILE}
    if files:
        sender = campaigns.require_sender(campaign.phone_number_id, settings.phone_number_id)
        factory = client_factory(settings)
        for path in sorted(files):
            media.media_id(db, lambda: factory(4), sender, path, now)
    with db.session() as session:
        campaign = campaigns.get(session, name)
        if info is not None:
            health.remember_approved(session, campaign.template_name, campaign.template_language, now)
            campaign.template_definition = definition
            campaign.template_checked_at = now
            campaign.template_category = info.category or campaign.template_category
        return campaign


def launch(db: Database, settings: Settings, name: str, *, at: datetime | None = None,
           warn: Callable[[str], None] | None = None, sends_here: bool = False,
           now: datetime | None = None) -> Campaign:
    """Start (or schedule) a campaign, after the pre-flight (`check`; `warn` as there).

    Every check that can refuse comes before the state changes, so a refused launch leaves the
    campaign as it was: its state allows a launch; with `sends_here` (`campaign launch` in the
    foreground: this process sends it next) what sending needs, a token and a sender
    (`require_sending`); then the template (`check`)."""
    now = now or utcnow()
    with db.read_session() as session:
        campaigns.require_launchable(campaigns.get(session, name))
    if sends_here:
        require_sending(db, settings, name)
    checked = check(db, settings, name, now=now, warn=warn)
    if checked.template_category is None:
        (warn or log.warning)(
            f"the category of template {checked.template_name!r} is unknown (set WA_BUSINESS_ACCOUNT_ID, or create "
            "the campaign with --category): marketing opt-outs are honoured as if it were marketing, and if it is "
            "marketing Meta refuses it to United States numbers and to people it limits (131049)")
    with db.session() as session:
        campaign = campaigns.get(session, name)
        campaigns.launch(session, campaign, at=at, now=now)
        return campaign


def require_sending(db: Database, settings: Settings, name: str) -> None:
    """What a worker needs to send campaign `name` from these settings: a token and a sender
    (the campaign's own phone-number id, else WA_PHONE_NUMBER_ID). Raises CampaignError."""
    client_factory(settings)
    with db.read_session() as session:
        campaign = campaigns.get(session, name)
    campaigns.require_sender(campaign.phone_number_id, settings.phone_number_id)


def build_dispatcher(
    db: Database,
    settings: Settings,
    *,
    on_progress: Callable[[DispatchStats], None] | None = None,
    clock: Clock = SYSTEM,
    **config: Any,
) -> Dispatcher:
    """A worker for `settings`; `config` overrides DispatchConfig fields (tests, benchmarks)."""
    return Dispatcher(db, client_factory(settings), DispatchConfig.from_settings(settings, **config),
                      on_progress=on_progress, clock=clock)


@dataclass(frozen=True)
class WorkerRun:
    stats: DispatchStats
    interrupted: bool
    """A signal (Ctrl-C, SIGTERM) stopped it."""
    paused: list[str]
    """Campaigns paused because of the signal (`pause_on_interrupt`)."""


def run_worker(
    db: Database,
    settings: Settings,
    *,
    campaigns_: Sequence[str] | None = None,
    exit_when_idle: bool = False,
    on_progress: Callable[[DispatchStats], None] | None = None,
    stop: asyncio.Event | None = None,
    handle_signals: bool = False,
    pause_on_interrupt: bool = False,
    clock: Clock = SYSTEM,
    **config: Any,
) -> WorkerRun:
    """Run one worker until `stop`, until idle with `exit_when_idle`, or, with
    `handle_signals`, until SIGINT or SIGTERM: requests already sent finish and are recorded
    before it returns. With `pause_on_interrupt` a signal also pauses the campaigns it was
    sending (`campaign launch` in the foreground: Ctrl-C pauses, `resume` goes on)."""
    dispatcher = build_dispatcher(db, settings, on_progress=on_progress, clock=clock, **config)
    interrupted = False

    def on_signal() -> None:
        nonlocal interrupted
        interrupted = True
        dispatcher.stop()

    async def main() -> DispatchStats:
        if handle_signals:
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, on_signal)
        return await dispatcher.run(campaigns=campaigns_, exit_when_idle=exit_when_idle, stop=stop)

    try:
        stats = asyncio.run(main())
    except Exception as exc:
        # The dispatcher waits out a database outage by itself; it gives up only when stopped
        # (a signal) while the database stays away: say so in one line, not a traceback.
        if not database_unavailable(exc):
            raise
        raise CampaignError(f"the worker stopped while the database was unavailable ({one_line(exc)}): messages it "
                            "sent but could not record stay `sending` until their status webhooks settle them") from exc
    paused: list[str] = []
    if interrupted and pause_on_interrupt and campaigns_:
        with db.session() as session:
            for name in campaigns_:
                campaign = campaigns.get(session, name)
                if campaign.state == CampaignState.RUNNING:
                    campaigns.pause(session, campaign, now=clock.now())
                    paused.append(name)
    return WorkerRun(stats, interrupted, paused)


@dataclass(frozen=True)
class TestSend:
    phone: str
    wamid: str | None
    error: str | None


def send_test(db: Database, settings: Settings, name: str, numbers: Sequence[str], default_region: str | None = None) -> list[TestSend]:
    """The campaign's template to a few numbers now, with its first recipient's values; not
    counted. The pre-flight runs first, as for launch."""
    targets = phone.normalize_many(numbers, default_region, source="--to: ")
    check(db, settings, name)
    with db.read_session() as session:
        campaign = campaigns.get(session, name)
        row = session.scalar(select(Message.params).where(Message.campaign_id == campaign.id).order_by(Message.id).limit(1))
        sender = campaigns.require_sender(campaign.phone_number_id, settings.phone_number_id)
        spec = campaigns.sendable(session, campaign, settings.phone_number_id, utcnow()).spec
    if binding.columns(campaigns.binding_of(campaign)) and row is None:
        raise CampaignError(f"campaign {name!r} has no recipients yet: import some first (their values fill the template)")

    async def send() -> list[TestSend]:
        results = []
        async with client_factory(settings)(4) as client:
            for target in targets:
                try:
                    accepted = await client.send_message(sender, template_payload(spec, target, row or {}, "test"))
                    results.append(TestSend(target, accepted.wamid, None))
                except (GraphError, TransportError) as exc:  # each number reports its own outcome
                    results.append(TestSend(target, None, str(exc)))
        return results

    return asyncio.run(send())


@dataclass(frozen=True)
class Progress:
    """A campaign's figures for `status`: counts, the recent send rate, the time left, the
    messages waiting out Meta's per-user marketing limit (131049) and those waiting for
    their send window."""

    counts: campaigns.Counts
    rate: float
    eta_seconds: float | None
    marketing_waiting: int = 0
    marketing_waiting_until: datetime | None = None
    """When the last of them goes again."""
    send_window: send_window.Waiting | None = None
    """Queued messages outside their recipient's send window (None: the campaign has none)."""


def progress(db: Database, campaign_id: int, *, now: datetime | None = None, window_seconds: float = 60.0) -> Progress:
    now = now or utcnow()
    with db.read_session() as session:
        counts = campaigns.counts(session, [campaign_id])[campaign_id]
        recent = session.scalar(
            select(func.count()).where(Message.campaign_id == campaign_id, Message.sent_at >= now - timedelta(seconds=window_seconds))
        ) or 0
        waiting, until = session.execute(
            select(func.count(), func.max(Message.next_attempt_at)).where(
                Message.campaign_id == campaign_id, in_state(MessageState.QUEUED),
                Message.error_code.in_(errors.rule_for(131049).codes), Message.next_attempt_at > now)
        ).one()
        campaign = session.get(Campaign, campaign_id)
        window = zone_sets.window_of(campaign) if campaign is not None else None
        queued = zone_sets.queued_by_set(session, campaign_id) if window is not None else []
    rate = recent / window_seconds
    left = counts.by_state[MessageState.QUEUED] + counts.by_state[MessageState.SENDING]
    eta = left / rate if rate > 0 else None
    outside = None
    if window is not None and campaign is not None:
        # Messages outside their window wait for it: the time left is when the last one can go.
        zone = campaign.timezone or "UTC"
        outside = send_window.waiting(window, zone, queued, now)
        done = send_window.finish_time(window, zone, queued, now, rate) if rate > 0 else None
        eta = (done - now).total_seconds() if done is not None else None
    if until is not None and until.tzinfo is None:  # an aggregate skips the column's type on SQLite
        until = datetime.fromisoformat(str(until)).replace(tzinfo=timezone.utc)
    return Progress(counts, rate, eta, waiting, until, outside)
