"""The data model (DESIGN.md, "Data"): one database is the single source of truth.

Times are timezone-aware UTC datetimes in Python. SQLite has no time zone type, so
`UTCDateTime` stores naive UTC (`func.now()` on SQLite is a one-second-resolution string:
always bind Python datetimes instead, see library-notes.md).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    literal_column,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from campaign.clock import utcnow
from campaign.states import CampaignState, MessageState, SuppressionScope, SuppressionSource


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every dialect."""

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        return dialect.type_descriptor(DateTime(timezone=dialect.name == "postgresql"))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass timezone-aware UTC times")
        value = value.astimezone(timezone.utc)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class JSONText(TypeDecorator[Any]):
    """JSON kept as text on both dialects (never queried inside).

    A `str` bound value is taken as already-serialized JSON: the importer serializes a whole
    chunk of rows at C speed with pandas rather than one `json.dumps` per row.
    """

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None or isinstance(value, str):
            return value
        return json.dumps(value, ensure_ascii=False)

    def process_result_value(self, value: str | None, dialect: Dialect) -> Any:
        return None if value is None else json.loads(value)


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONText(), list[str]: JSONText()}


class Campaign(Base):
    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    state: Mapped[str] = mapped_column(String(16), default=CampaignState.DRAFT)
    phone_number_id: Mapped[str | None] = mapped_column(String(64))
    """The sender; `None` means the `WA_PHONE_NUMBER_ID` of the worker that sends it."""
    template_name: Mapped[str] = mapped_column(String(512))
    template_language: Mapped[str] = mapped_column(String(32))
    template_category: Mapped[str | None] = mapped_column(String(32))
    """`marketing`, `utility` or `authentication` once known (given, or read at launch)."""
    param_columns: Mapped[list[str]] = mapped_column(default=list)
    text_body: Mapped[str | None] = mapped_column(Text)
    header_type: Mapped[str | None] = mapped_column(String(16))
    header_link: Mapped[str | None] = mapped_column(Text)
    mps: Mapped[int | None] = mapped_column(Integer)
    send_window: Mapped[str | None] = mapped_column(String(16))
    """`--send-window`, e.g. `09:00-20:00` of the recipient's local time (send_window.py)."""
    timezone: Mapped[str | None] = mapped_column(String(64))
    """`--timezone`: the zone of recipients whose number places them nowhere (None: UTC)."""
    binding: Mapped[dict[str, Any] | None] = mapped_column(JSONText)
    """Template target -> its source (binding.Source as JSON), in the order they were given."""
    template_definition: Mapped[dict[str, Any] | None] = mapped_column(JSONText)
    """The template as `GET /{waba-id}/message_templates` returned it at the last check: what
    the payloads and the import's checks are built from."""
    template_checked_at: Mapped[datetime | None]
    pause_reason: Mapped[str | None] = mapped_column(Text)
    """Why the engine (not the user) paused it, shown by `campaign status`."""
    pause_code: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    scheduled_at: Mapped[datetime | None]
    launched_at: Mapped[datetime | None]
    paused_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    cancelled_at: Mapped[datetime | None]


class Contact(Base):
    """One per person, shared by every campaign: the windows and limits are per person.

    A person has a number, a BSUID, or both (identity.py): at least one is set."""

    __tablename__ = "contacts"

    id: Mapped[int] = mapped_column(primary_key=True)
    phone: Mapped[str | None] = mapped_column(String(20), unique=True)
    """E.164 with `+`; None for a person known only by a BSUID."""
    wa_id: Mapped[str | None] = mapped_column(String(32))
    """Meta's canonical id, which may differ from the number (BR, MX, AR prefixes)."""
    user_id: Mapped[str | None] = mapped_column(String(160), unique=True, index=True)
    """The business-scoped user id (BSUID) Meta names the person by, imported or learned from
    webhooks: how an inbound message that comes without a phone number finds its contact."""

    @property
    def identity(self) -> str:
        """What a send addresses: the number when known (Meta: `to` wins), else the BSUID."""
        return self.phone or self.user_id or ""

    @property
    def identities(self) -> list[str]:
        """Every name Meta may use for the person now."""
        return [i for i in (self.phone, self.user_id) if i]
    wa_status: Mapped[str | None] = mapped_column(String(16))
    """Contacts check result: `valid` or `invalid`."""
    wa_checked_at: Mapped[datetime | None]
    unreachable_at: Mapped[datetime | None]
    """When a message to it failed with 131026 (not on WhatsApp, old app, terms not accepted)."""
    last_inbound_at: Mapped[datetime | None]
    """The 24-hour customer-service window opens here."""
    last_sent_at: Mapped[datetime | None]
    """The pair limit counts from here."""
    marketing_limited_until: Mapped[datetime | None]
    """131049: no marketing message before this time."""
    opted_out_at: Mapped[datetime | None]
    opted_in_at: Mapped[datetime | None]
    """The latest opt-in (START, or marketing resumed): an opt-out older than it is void,
    so STOP and START arriving in either order end the same (inbound.py)."""
    next_send_at: Mapped[datetime | None]
    """The pair limit, across campaigns and workers: a claim reserves the contact until here."""
    zone_set_id: Mapped[int | None] = mapped_column(Integer)
    """The number's time zones (a `ZoneSet`), filled when a campaign with a send window
    imports or launches it; None until then."""


class ZoneSet(Base):
    """The distinct sets of time zones numbers belong to (a few hundred exist): a contact
    points at one, so the claim filters send windows by a small integer."""

    __tablename__ = "zone_sets"

    id: Mapped[int] = mapped_column(primary_key=True)
    zones: Mapped[str] = mapped_column(String(2000), unique=True)
    """IANA names, sorted, space-separated; empty for a number placed in no zone."""


class Import(Base):
    """An import's audit trail."""

    __tablename__ = "imports"

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    file: Mapped[str] = mapped_column(Text)
    rows: Mapped[int] = mapped_column(default=0)
    imported: Mapped[int] = mapped_column(default=0)
    rejected: Mapped[int] = mapped_column(default=0)
    invalid: Mapped[int] = mapped_column(default=0)
    duplicate: Mapped[int] = mapped_column(default=0)
    suppressed: Mapped[int] = mapped_column(default=0)
    not_on_whatsapp: Mapped[int] = mapped_column(default=0)
    bad_param: Mapped[int] = mapped_column(default=0)
    """Rows whose value for a bound target Meta would refuse (empty, bad whitespace, too long)."""
    us_numbers: Mapped[int] = mapped_column(default=0)
    rejects_file: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class Message(Base):
    """The outbox: one message per (campaign, contact)."""

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("campaign_id", "contact_id"),
        # A campaign's messages in id order (reports, counts): no column of it ever changes.
        Index("ix_messages_campaign", "campaign_id", "id"),
        # "Next sendable messages of a running campaign", walked in id order: the claim reads
        # the index in order and stops at its LIMIT instead of sorting every queued row. Only
        # queued rows are in it, and only sending ones in the lease index, so a status that
        # moves a message from sent to delivered to read touches neither (a full index on
        # state moved every row's entry at every status: reconciling grew with the campaign),
        # and what the claim walks shrinks as the campaign drains. A query uses them only
        # when it says the state as a literal (`in_state`).
        Index("ix_messages_queued", "campaign_id", "id",
              sqlite_where=text("state = 'queued'"), postgresql_where=text("state = 'queued'")),
        Index("ix_messages_leased", "lease_expires_at",
              sqlite_where=text("state = 'sending'"), postgresql_where=text("state = 'sending'")),
        # The messaging limit's count reads the last day of business-initiated sends from here
        # (outbox._reached_count), not every message the database holds. A query uses it when
        # it says `where(Message.business_initiated)`, which each dialect renders as this WHERE.
        Index("ix_messages_reached", "sent_at", "contact_id",
              sqlite_where=text("business_initiated = 1"), postgresql_where=text("business_initiated")),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"), index=True)
    import_id: Mapped[int | None] = mapped_column(ForeignKey("imports.id", ondelete="SET NULL"))
    row_number: Mapped[int | None] = mapped_column(Integer)
    """The row's line in its file, for the report's order and for the user's own checks."""
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """The recipient's row as imported: template parameters and the report's extra columns."""
    kind: Mapped[str | None] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default=MessageState.QUEUED)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None]
    wamid: Mapped[str | None] = mapped_column(String(128), unique=True)
    wa_id: Mapped[str | None] = mapped_column(String(32))
    error_code: Mapped[int | None] = mapped_column(BigInteger)
    error_title: Mapped[str | None] = mapped_column(Text)
    error_details: Mapped[str | None] = mapped_column(Text)
    pricing_category: Mapped[str | None] = mapped_column(String(32))
    pricing_billable: Mapped[bool | None] = mapped_column()
    """`pricing.billable` of the latest status webhook that carried pricing: Meta charges it."""
    pricing_model: Mapped[str | None] = mapped_column(String(16))
    """`pricing.pricing_model`, e.g. `PMP` (per-message pricing)."""
    pricing_type: Mapped[str | None] = mapped_column(String(32))
    """`pricing.type`: `regular`, `free_customer_service`, `free_entry_point`."""
    business_initiated: Mapped[bool] = mapped_column(default=False)
    """Sent (or reserved to be sent) outside the user's window: counts against the messaging limit."""
    pair_hits: Mapped[int] = mapped_column(default=0)
    """How often Meta refused it for the pair rate (131056): the backoff is 4^x seconds."""
    marketing_waits: Mapped[int] = mapped_column(default=0, server_default="0")
    """How often it went back to wait for Meta's per-user marketing limit (131049)."""
    queued_at: Mapped[datetime] = mapped_column(default=utcnow)
    sending_at: Mapped[datetime | None]
    in_doubt_until: Mapped[datetime | None]
    """Marked in flight, its request may have reached Meta: not sent again before this time
    unless a status webhook settles it (outbox.recover)."""
    sent_at: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    read_at: Mapped[datetime | None]
    failed_at: Mapped[datetime | None]
    replied_at: Mapped[datetime | None]
    """When the recipient first answered this message (a reply whose context is its wamid, or
    a tap on one of its quick-reply buttons)."""
    reply: Mapped[str | None] = mapped_column(Text)
    """That first answer: the button's payload (its label for an engine default payload), or
    the start of the text."""


def in_state(state: MessageState) -> ColumnElement[bool]:
    """`messages.state = '<state>'` with the state as a literal, not a bound parameter:
    SQLite, and PostgreSQL's generic plan of a prepared statement, use a partial index
    (`ix_messages_queued`, `ix_messages_leased`) only for a condition they can match to
    its WHERE when planning."""
    return Message.__table__.c.state == literal_column(f"'{MessageState(state).value}'")


class RetiredWamid(Base):
    """The wamid of a send Meta failed with the marketing limit (131049), whose message went
    back to the queue for another send: late statuses of the old send are recognized and
    ignored, never applied to the new one."""

    __tablename__ = "retired_wamids"

    wamid: Mapped[str] = mapped_column(String(128), primary_key=True)
    message_id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))
    retired_at: Mapped[datetime]


class ContactAlias(Base):
    """A number or BSUID a contact was known by before Meta re-keyed it (`user_changed_number`,
    `user_changed_user_id`): late webhooks with the old id still find the person, and a
    suppression of the old id was copied to the new ones (people.py)."""

    __tablename__ = "contact_aliases"

    identity: Mapped[str] = mapped_column(String(160), primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"), index=True)
    retired_at: Mapped[datetime]


class UnmatchedInbound(Base):
    """An inbound message or marketing preference from a user known only by a BSUID that no
    contact has yet: kept (an opt-out is never dropped) and applied when a webhook tells
    which contact has that BSUID."""

    __tablename__ = "unmatched_inbound"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(160), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    """`inbound` or `preference`."""
    at: Mapped[datetime]
    item: Mapped[dict[str, Any]] = mapped_column()
    """The parsed item (events.InboundItem / PreferenceItem) as JSON."""
    received_at: Mapped[datetime]


class MediaUpload(Base):
    """A file uploaded to Meta once (`POST /{phone-number-id}/media`) and reused by its id
    until it expires (Meta keeps uploads 30 days)."""

    __tablename__ = "media_uploads"
    __table_args__ = (UniqueConstraint("sender", "path"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    sender: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    """As the binding names it (`file:PATH`): what a worker looks the upload up by."""
    digest: Mapped[str] = mapped_column(String(64), index=True)
    """SHA-256 of the file's bytes: the same content is uploaded once, whatever its path."""
    mime_type: Mapped[str] = mapped_column(String(128))
    media_id: Mapped[str] = mapped_column(String(128))
    uploaded_at: Mapped[datetime]
    expires_at: Mapped[datetime]


class WebhookEvent(Base):
    """A webhook body exactly as received (raw bytes), stored before it is answered 200."""

    __tablename__ = "webhook_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    """SHA-256 of the body: Meta's duplicate deliveries are stored once."""
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column(index=True)
    error: Mapped[str | None] = mapped_column(Text)


class Suppression(Base):
    """The opt-out list, honoured by import and by the dispatcher: a number or a BSUID (one of
    the two per row); a person is suppressed when either of their identities is."""

    __tablename__ = "suppressions"

    id: Mapped[int] = mapped_column(primary_key=True)
    phone: Mapped[str | None] = mapped_column(String(20), unique=True)
    user_id: Mapped[str | None] = mapped_column(String(160), unique=True, index=True)
    reason: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(16), default=SuppressionSource.MANUAL)
    scope: Mapped[str] = mapped_column(String(16), default=SuppressionScope.ALL, server_default=SuppressionScope.ALL.value)
    """`all`, or `marketing`: utility and authentication templates still reach the number."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SendSlots(Base):
    """The send pacing of one sender number, shared by every worker through the database.

    `rate` is what all workers together may send (130429 lowers it for all of them); each
    worker paces its own share of it in a `SendLane`. `next_at` is the end of the latest
    slot any worker reserved: a worker that joins starts after it. Times are Unix seconds
    as floats: slot arithmetic stays the same on both dialects.
    """

    __tablename__ = "send_slots"

    sender: Mapped[str] = mapped_column(String(64), primary_key=True)
    next_at: Mapped[float] = mapped_column(Double, default=0.0)
    rate: Mapped[float] = mapped_column(Double)
    adjusted_at: Mapped[float] = mapped_column(Double, default=0.0)


class SendLane(Base):
    """One worker's share of a sender's rate: its slots are spaced at rate / live lanes.

    A lane is live until a moment after its last reserved slot; a worker that stops cleanly
    deletes its lanes, one that dies leaves them to expire. Evenly spaced lanes are what let
    several workers reach the cap: a worker never has to send faster than its share."""

    __tablename__ = "send_lanes"

    sender: Mapped[str] = mapped_column(String(64), primary_key=True)
    worker: Mapped[str] = mapped_column(String(64), primary_key=True)
    """The worker id, as in `messages.lease_owner`."""
    next_at: Mapped[float] = mapped_column(Double)
    """The end of this worker's last reserved slot (Unix seconds)."""


class PendingStatus(Base):
    """A status webhook whose message is not known yet (the webhook can beat the send's
    commit): kept and retried on every reconcile pass, orphaned after a long wait."""

    __tablename__ = "pending_statuses"
    __table_args__ = (Index("ix_pending_statuses_waiting", "orphaned_at", "first_seen_at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    event_id: Mapped[int | None] = mapped_column(BigInteger)
    """The webhook event it came from."""
    wamid: Mapped[str] = mapped_column(String(128), index=True)
    callback_data: Mapped[str | None] = mapped_column(Text)
    """`biz_opaque_callback_data` as received."""
    message_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    """The outbox id parsed from `callback_data`, when it is one of ours."""
    status: Mapped[str] = mapped_column(String(16))
    payload: Mapped[dict[str, Any]] = mapped_column()
    """The `statuses[]` item exactly as received."""
    first_seen_at: Mapped[datetime]
    """When its event was received."""
    orphaned_at: Mapped[datetime | None]
    """Set when no message turned up within the orphan limit: reported, no longer retried."""


class Sender(Base):
    """What Meta says of a sender number: from `campaign sender` / launch (`GET /{phone-number-id}`)
    and from quality and capability webhooks. Each group of facts keeps the time Meta stated it,
    so webhooks applied in any order end with the latest (health.py).

    The row `*` is the business (portfolio): the messaging limit is shared by its numbers since
    October 2025 (whatsapp-templates.md §6), so a capability update lands there too, and a sender
    without a limit of its own reads it from there."""

    __tablename__ = "senders"

    phone_number_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    display_phone_number: Mapped[str | None] = mapped_column(String(32), index=True)
    """Digits only, as the quality webhook names the number."""
    status: Mapped[str | None] = mapped_column(String(32))
    """CONNECTED, DISCONNECTED, FLAGGED, RESTRICTED, ... (the last GET)."""
    quality_rating: Mapped[str | None] = mapped_column(String(16))
    quality_event: Mapped[str | None] = mapped_column(String(32))
    """The latest `phone_number_quality_update` event (FLAGGED, UNFLAGGED, DOWNGRADE, ...)."""
    quality_at: Mapped[datetime | None]
    messaging_limit: Mapped[str | None] = mapped_column(String(32))
    """The tier as Meta names it, e.g. TIER_2K."""
    daily_limit: Mapped[int | None] = mapped_column(BigInteger)
    """The tier as a number of recipients; NULL is unlimited once `messaging_limit` is known."""
    limit_at: Mapped[datetime | None]
    mps: Mapped[int | None] = mapped_column(Integer)
    """Meta's throughput for the number (80, or 1,000 after THROUGHPUT_UPGRADE); NULL unknown."""
    mps_at: Mapped[datetime | None]
    is_default: Mapped[bool] = mapped_column(default=False)
    """Read as `WA_PHONE_NUMBER_ID`: campaigns without a sender of their own send from it."""
    health_checked_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class TemplateStatus(Base):
    """The latest `message_template_status_update` of a template in a language (and launch's own
    reading of an APPROVED one): campaigns using a PAUSED, DISABLED or REJECTED one cannot resume."""

    __tablename__ = "template_statuses"

    name: Mapped[str] = mapped_column(String(512), primary_key=True)
    language: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(Text)
    event_at: Mapped[datetime]
    """When Meta stated it: the latest wins, whatever order the webhooks arrive in."""
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
