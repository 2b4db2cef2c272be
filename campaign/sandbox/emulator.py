"""The live emulator: Meta's behaviour for each request, its state, its ledger and its webhooks.

The HTTP layer (``app``) only moves bytes; every decision is made here, synchronously and inside
the one event loop, so a request is decided atomically at its arrival time (the same time the
ledger records and the throughput window counts).
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import itertools
import json
import logging
import random
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlencode

from campaign.sandbox import meta_errors
from campaign.sandbox.config import TEMPLATES_PAGE_MAX, SandboxConfig, digits
from campaign.sandbox.health import (NODE_TYPE, TIER_OF_DAILY_LIMIT, QualityEvent, SenderHealth, apply_quality_event,
                                     capability_value, phone_number_json)
from campaign.sandbox.ledger import Ledger, LedgerEntry
from campaign.sandbox.meta_errors import MetaError
from campaign.sandbox.recipients import (PROFILE_NAME, Profile, User, canonical_wa_id, is_us_number, profile_of,
                                         user_of, wa_id_of_user)
from campaign.sandbox.rules import (Media, PairSpacing, SendRequest, ServiceWindows, ThroughputWindow,
                                    link_fetchable, summarize, validate_send)
from campaign.sandbox.templates import STATUS_AFTER_EVENT, Template, TemplateRegistry
from campaign.sandbox.webhooks import (Conversation, WebhookSender, contact, inbound_message, inbound_value,
                                       plan_statuses, status_object, template_status_value, user_preferences_value)

logger = logging.getLogger("campaign.sandbox")

_DEBUG = logging.DEBUG


@dataclass(slots=True)
class Reply:
    """An HTTP answer: status, JSON body, extra headers."""

    status: int
    body: Any  # JSON-able data, or bytes already encoded
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> bytes:
        """The body as compact JSON bytes."""
        if isinstance(self.body, bytes):
            return self.body
        return json.dumps(self.body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _accepted_body(to: str, wa_id: str, wamid: str) -> bytes:
    """Meta's 200 answer, formatted directly: it is the hot path's only serialization."""
    return (b'{"messaging_product":"whatsapp","contacts":[{"input":%s,"wa_id":"%s"}],'
            b'"messages":[{"id":"%s","message_status":"accepted"}]}'
            % (json.dumps(to, ensure_ascii=False).encode("utf-8"), wa_id.encode(), wamid.encode()))


def _accepted_by_user_id_body(user_id: str, wamid: str) -> dict[str, Any]:
    """Meta's 200 answer to a send addressed by BSUID: ``user_id`` in place of ``wa_id``, which a
    BSUID-only send never gets back (whatsapp-usernames.md §3)."""
    return {"messaging_product": "whatsapp", "contacts": [{"input": user_id, "user_id": user_id}],
            "messages": [{"id": wamid, "message_status": "accepted"}]}


@dataclass(frozen=True, slots=True)
class MediaFile:
    """A file uploaded with ``POST /{phone-number-id}/media``; its bytes are not kept."""

    phone_number_id: str
    mime_type: str
    filename: str | None
    size: int
    sha256: str
    uploaded_at: float  # wall clock


@dataclass(frozen=True, slots=True)
class UploadForm:
    """The multipart form of an upload, as the HTTP layer read it (None: the field was absent)."""

    messaging_product: str | None
    mime_type: str | None  # the ``type`` field
    filename: str | None
    content: bytes | None  # the ``file`` part; None when no file was sent


class ControlError(ValueError):
    """A bad request to a ``/_sandbox`` control endpoint."""


def _error_reply(error: MetaError) -> Reply:
    headers = {}
    if error.http_status == 401:
        headers["WWW-Authenticate"] = f'OAuth "Facebook Platform" "invalid_token" "{error.message}"'
    return Reply(error.http_status, error.body(), headers)


class Sandbox:
    """Meta as the engine sees it: the Graph endpoints' decisions, plus the controls tests use."""

    def __init__(self, config: SandboxConfig, *, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._clock = clock
        self._wall = wall_clock
        self.ledger = Ledger()
        self.registry = TemplateRegistry(config.templates)
        self.webhooks = WebhookSender(config, clock)
        self.windows = ServiceWindows()
        self._throughput = ThroughputWindow()
        self._pairs = PairSpacing()
        self._opted_out: set[str] = set()  # users who stopped marketing at runtime
        self._marketing_failures: dict[str, int] = {}  # 131049 failures so far per limited user
        self._before_flag: SenderHealth | None = None  # the number's health before a FLAGGED event
        self._conversations: dict[tuple[str, str, str], Conversation] = {}
        self._rng = random.Random(config.seed)
        self._id_salt = secrets.token_hex(4)
        self._ids = itertools.count(1)
        self.media: dict[str, MediaFile] = {}  # uploaded files by the id the sandbox answered

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start webhook delivery (the app's lifespan calls this inside the serving loop)."""
        await self.webhooks.start()

    async def stop(self) -> None:
        """Stop webhook delivery."""
        await self.webhooks.stop()

    # --- Graph API ------------------------------------------------------------------------------

    def authorized(self, authorization: str | None, query_token: str | None = None) -> bool:
        """Bearer token check; with no token configured any token is accepted, but one is required."""
        token = None
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                token = value.strip()
        if token is None and query_token:
            token = query_token
        if token is None:
            return False
        expected = self.config.access_token
        return expected is None or hmac.compare_digest(token.encode(), expected.encode())

    def send(self, phone_number_id: str, raw_body: bytes, authorization: str | None,
             query_token: str | None = None) -> Reply:
        """``POST /{version}/{phone-number-id}/messages``, decided at arrival."""
        now, wall = self._clock(), self._wall()
        entry = self.ledger.new_entry(now, wall, phone_number_id)
        payload: Any = None
        parse_error = None
        try:
            payload = json.loads(raw_body) if raw_body else None
        except (ValueError, UnicodeDecodeError) as exc:
            parse_error = f"The request body is not valid JSON: {exc}"
        summary = summarize(payload)
        entry.to, entry.type = summary.to, summary.type
        entry.template_name, entry.template_language = summary.template_name, summary.template_language
        entry.components = summary.components
        entry.callback_data = summary.callback_data
        if summary.recipient is not None:
            entry.addressed_by, entry.user_id = "recipient", summary.recipient
        if not self.authorized(authorization, query_token):
            return self._refuse(entry, meta_errors.invalid_token())
        if parse_error is not None:
            return self._refuse(entry, meta_errors.invalid_parameter(parse_error))
        checked = validate_send(payload, self.registry, self.config.rewrite_wa_ids)
        if isinstance(checked, MetaError):
            return self._refuse(entry, checked)
        request = checked
        entry.wa_id = request.wa_id
        entry.content_key = request.content_key
        config = self.config
        rng = self._rng
        if config.transient_rate > 0 and rng.random() < config.transient_rate:
            fault = (meta_errors.service_unavailable() if rng.random() < config.transient_503_share
                     else meta_errors.internal_error())
            if (config.transient_sent_fraction > 0 and rng.random() < config.transient_sent_fraction
                    and self._within_limits(phone_number_id, request, now)):
                self._dispatch(entry, request, phone_number_id, now, wall)
                entry.sent_anyway = True
            return self._refuse(entry, fault)
        if not self._throughput.admits(phone_number_id, now, config.mps):
            return self._refuse(entry, meta_errors.throughput_exceeded())
        if not self._pairs.admits(phone_number_id, request.wa_id, now, config.pair_interval, config.pair_burst):
            return self._refuse(entry, meta_errors.pair_rate_limited())
        wamid = self._dispatch(entry, request, phone_number_id, now, wall)
        self.ledger.mark_accepted(entry)
        if logger.isEnabledFor(_DEBUG):
            logger.debug("POST /%s/messages to=%s type=%s template=%s -> 200 %s", phone_number_id, request.to,
                         request.type, entry.template_name, wamid)
        if request.user_id is not None:
            return Reply(200, _accepted_by_user_id_body(request.user_id, wamid))
        return Reply(200, _accepted_body(request.to, request.wa_id, wamid))

    def check_contacts(self, phone_number_id: str, raw_body: bytes, authorization: str | None,
                       query_token: str | None = None) -> Reply:
        """``POST /{version}/{phone-number-id}/contacts``: valid unless scripted as not on WhatsApp."""
        self.ledger.count_other("contacts")
        if not self.authorized(authorization, query_token):
            return self._log_refusal("contacts", meta_errors.invalid_token())
        try:
            payload = json.loads(raw_body) if raw_body else None
        except (ValueError, UnicodeDecodeError):
            payload = None
        contacts = payload.get("contacts") if isinstance(payload, dict) else None
        if not isinstance(contacts, list) or not all(isinstance(c, str) for c in contacts):
            return self._log_refusal("contacts", meta_errors.invalid_parameter(
                "The parameter contacts is required and must be an array of strings."))
        if payload.get("blocking", "wait") not in ("wait", "no_wait"):
            return self._log_refusal("contacts", meta_errors.invalid_parameter(
                'Param blocking must be one of {WAIT, NO_WAIT}.'))
        results = []
        for number in contacts:
            wa_id = canonical_wa_id(number, self.config.rewrite_wa_ids)
            if profile_of(wa_id, self.config, self._opted_out, digits(number)) is Profile.NOT_ON_WHATSAPP:
                results.append({"input": number, "status": "invalid"})
            else:
                results.append({"input": number, "status": "valid", "wa_id": wa_id})
        logger.debug("POST /%s/contacts %d numbers -> 200", phone_number_id, len(contacts))
        return Reply(200, {"contacts": results})

    def list_templates(self, waba_id: str, query: dict[str, str], authorization: str | None,
                       base: str = "") -> Reply:
        """``GET /{version}/{waba-id}/message_templates`` from the registry, with Meta's paging.

        ``limit`` defaults to ``templates_page_size`` (25, Meta's default) and is honoured up to 100;
        ``paging.next`` is the URL of the next page (``base`` is what precedes ``/{waba-id}``, e.g.
        ``http://127.0.0.1:8555/v21.0``), with the same filters and ``after`` set to ``cursors.after``.
        """
        self.ledger.count_other("message_templates")
        if not self.authorized(authorization, query.get("access_token")):
            return self._log_refusal("message_templates", meta_errors.invalid_token())
        if waba_id != self.config.waba_id:
            return self._log_refusal("message_templates", meta_errors.unknown_object(waba_id))
        fields = query.get("fields")
        wanted = [f for f in fields.split(",")] if fields else None
        found = self.registry.search(name=query.get("name"), status=query.get("status"),
                                     language=query.get("language"), category=query.get("category"))
        try:
            limit = max(1, min(int(query.get("limit") or self.config.templates_page_size), TEMPLATES_PAGE_MAX))
            start = int(base64.urlsafe_b64decode(query["after"]).decode()) + 1 if query.get("after") else 0
        except ValueError:
            return self._log_refusal("message_templates", meta_errors.invalid_parameter("Invalid paging parameter."))
        page = found[start:start + limit]
        paging: dict[str, Any] = {}
        if page:
            cursor = lambda i: base64.urlsafe_b64encode(str(i).encode()).decode()  # noqa: E731
            paging["cursors"] = {"before": cursor(start), "after": cursor(start + len(page) - 1)}
            if start + len(page) < len(found):
                kept = {k: v for k, v in query.items() if k not in ("after", "before", "limit")}
                paging["next"] = (f"{base}/{waba_id}/message_templates?"
                                  + urlencode({**kept, "limit": limit, "after": cursor(start + len(page) - 1)}))
        logger.debug("GET /%s/message_templates name=%s -> %d", waba_id, query.get("name"), len(page))
        return Reply(200, {"data": [t.graph_json(wanted) for t in page], "paging": paging})

    def phone_number(self, phone_number_id: str, query: dict[str, str], authorization: str | None) -> Reply:
        """``GET /{version}/{phone-number-id}?fields=...``: the sender's health (whatsapp-templates.md §6),
        the fields asked for plus ``id``."""
        self.ledger.count_other("phone_number")
        if not self.authorized(authorization, query.get("access_token")):
            return self._log_refusal("phone_number", meta_errors.invalid_token())
        if phone_number_id != self.config.phone_number_id:
            return self._log_refusal("phone_number", meta_errors.unknown_object(phone_number_id))
        fields = query.get("fields")
        answer = phone_number_json(self.config.health, phone_number_id, self.config.display_phone_number,
                                   fields.split(",") if fields else None)
        if isinstance(answer, str):
            return self._log_refusal("phone_number", meta_errors.nonexisting_field(answer, NODE_TYPE))
        logger.debug("GET /%s fields=%s -> 200", phone_number_id, fields)
        return Reply(200, answer)

    def upload_media(self, phone_number_id: str, form: UploadForm | None, authorization: str | None,
                     query_token: str | None = None) -> Reply:
        """``POST /{version}/{phone-number-id}/media`` (multipart: ``messaging_product``, ``file``,
        ``type``): keep the file's description and answer ``{"id": <media id>}``. ``form`` is None
        when the body was not a readable form."""
        self.ledger.count_other("media")
        if not self.authorized(authorization, query_token):
            return self._log_refusal("media", meta_errors.invalid_token())
        if form is None:
            return self._log_refusal("media", meta_errors.invalid_parameter(
                "The request body must be multipart/form-data."))
        if form.messaging_product is None:
            return self._log_refusal("media", meta_errors.invalid_parameter(
                "The parameter messaging_product is required.", "(#100) The parameter messaging_product is required."))
        if form.messaging_product != "whatsapp":
            return self._log_refusal("media", meta_errors.invalid_parameter(
                f'Param messaging_product must be one of {{WHATSAPP}} - got "{form.messaging_product}".'))
        if form.content is None:
            return self._log_refusal("media", meta_errors.invalid_parameter(
                "The parameter file is required.", "(#100) The parameter file is required."))
        if not form.mime_type or "/" not in form.mime_type:
            return self._log_refusal("media", meta_errors.invalid_parameter(
                "The parameter type is required and must be a MIME type.", "(#100) The parameter type is required."))
        media_id = self._new_media_id()
        self.media[media_id] = MediaFile(phone_number_id, form.mime_type, form.filename, len(form.content),
                                         hashlib.sha256(form.content).hexdigest(), self._wall())
        self.ledger.count_upload(phone_number_id)
        logger.debug("POST /%s/media %s %d bytes -> 200 %s", phone_number_id, form.mime_type, len(form.content),
                     media_id)
        return Reply(200, {"id": media_id})

    def latency(self) -> float:
        """Seconds to wait before answering, drawn uniformly from ``latency_ms``."""
        low, high = self.config.latency_ms
        if high <= 0:
            return 0.0
        return (self._rng.uniform(low, high) if high > low else low) / 1000.0

    # --- controls -----------------------------------------------------------------------------

    def inbound(self, data: dict[str, Any]) -> dict[str, Any]:
        """A user writes to the business: open their window and post the inbound-message webhook.

        ``{"from": "+...", "text": "STOP"}`` (or ``"user_id": BSUID`` in place of ``from``), or
        ``"button": {"payload", "text"}`` (a template's quick reply), or ``"interactive": {...}``;
        optional ``name``, ``phone_number_id``, ``context`` (the wamid replied to) and ``timestamp``
        (unix seconds). A user whose number is withheld writes without ``from``.
        """
        user = self._control_user(data, "from")
        wa_id = user.wa_id
        wall = float(data.get("timestamp", self._wall()))
        message = inbound_message(user, self._new_wamid(user.phone or user.user_id), int(wall))
        if isinstance(data.get("context"), str):
            message["context"] = {"from": self.config.display_phone_number, "id": data["context"]}
        if isinstance(data.get("button"), dict):
            button = data["button"]
            message["type"] = "button"
            message["button"] = {"payload": str(button.get("payload", "")),
                                 "text": str(button.get("text", button.get("payload", "")))}
        elif isinstance(data.get("interactive"), dict):
            message["type"] = "interactive"
            message["interactive"] = data["interactive"]
        elif isinstance(data.get("text"), str):
            message["type"] = "text"
            message["text"] = {"body": data["text"]}
        else:
            raise ControlError("give 'text', 'button' or 'interactive'")
        phone_number_id = data.get("phone_number_id")
        self.windows.open(wa_id, wall, phone_number_id)
        if self.config.webhook_url:
            self.webhooks.schedule_value(self._clock(), phone_number_id or self.config.phone_number_id,
                                         inbound_value(user, str(data.get("name", PROFILE_NAME)), message))
        logger.debug("inbound %s from %s", message["type"], wa_id)
        return {"id": message["id"], "wa_id": wa_id, "user_id": user.user_id,
                "window_open_until": int(wall + self.config.window_seconds)}

    def set_window(self, data: dict[str, Any]) -> dict[str, Any]:
        """Open (``{"to", "open": true, "age_seconds"?: s}``) or close a user's window without a webhook;
        the user may be named by ``user_id`` (a BSUID) in place of ``to``."""
        wa_id = self._control_user(data, "to", "from", "wa_id").wa_id
        phone_number_id = data.get("phone_number_id")
        if data.get("open", True):
            at = float(data["at"]) if "at" in data else self._wall() - float(data.get("age_seconds", 0))
            self.open_window(wa_id, at, phone_number_id)
        else:
            self.windows.close(wa_id, phone_number_id)
        last = self.windows.last_inbound(wa_id, phone_number_id)
        is_open = last is not None and self._wall() - last < self.config.window_seconds
        return {"wa_id": wa_id, "open": is_open, "last_inbound": last}

    def open_window(self, number: str, at: float | None = None, phone_number_id: str | None = None) -> None:
        """Record an inbound message from ``number`` at wall time ``at`` (now by default), silently."""
        wa_id = canonical_wa_id(number, self.config.rewrite_wa_ids)
        self.windows.open(wa_id, self._wall() if at is None else at, phone_number_id)

    def marketing_preference(self, data: dict[str, Any]) -> dict[str, Any]:
        """The user (``from``, or ``user_id``: a BSUID) stops (``"value": "stop"``) or resumes marketing
        messages; posts ``user_preferences``."""
        value = data.get("value", "stop")
        if value not in ("stop", "resume"):
            raise ControlError("'value' must be 'stop' or 'resume'")
        user = self._control_user(data, "from")
        wa_id = user.wa_id
        if value == "stop":
            self._opted_out.add(wa_id)
        else:
            self._opted_out.discard(wa_id)
        if self.config.webhook_url:
            phone_number_id = data.get("phone_number_id") or self.config.phone_number_id
            self.webhooks.schedule_value(self._clock(), phone_number_id,
                                         user_preferences_value(user, str(data.get("name", PROFILE_NAME)),
                                                                value, int(self._wall())),
                                         field_name="user_preferences")
        return {"wa_id": wa_id, "user_id": user.user_id, "value": value}

    def template_status(self, data: dict[str, Any]) -> dict[str, Any]:
        """Meta changes a template's status: ``{"name", "language", "event", "reason"?}`` (plus optional
        ``disable_info``, ``other_info``, ``rejection_info``). The registry takes the new status (sends
        of a PAUSED template answer 132015, DISABLED 132016, REJECTED 132001; REINSTATED is APPROVED
        again) and a ``message_template_status_update`` is posted."""
        name, language, event = data.get("name"), data.get("language"), data.get("event")
        if not isinstance(name, str) or not isinstance(language, str):
            raise ControlError("give the template's 'name' and 'language'")
        if event not in STATUS_AFTER_EVENT:
            raise ControlError(f"'event' must be one of {', '.join(STATUS_AFTER_EVENT)}")
        extra = {k: data[k] for k in ("disable_info", "other_info", "rejection_info") if k in data}
        unknown = set(data) - {"name", "language", "event", "reason", *extra}
        if unknown:
            raise ControlError(f"unknown template-status keys: {sorted(unknown)}")
        template = self.registry.get(name, language)
        if template is None:
            raise ControlError(f"no template {name!r} in {language!r}")
        self._set_template(dataclasses.replace(template, status=STATUS_AFTER_EVENT[event]))
        value = template_status_value(template.id, name, language, template.category, event,
                                      str(data.get("reason") or "NONE"), **extra)
        self._post_account_event("message_template_status_update", value)
        return {"status": STATUS_AFTER_EVENT[event], "value": value}

    def quality(self, data: dict[str, Any]) -> dict[str, Any]:
        """The number's quality or limit changes: ``{"event": FLAGGED|UNFLAGGED|DOWNGRADE|UPGRADE|
        THROUGHPUT_UPGRADE|ONBOARDING, "current_limit"?, "max_daily_conversations_per_business"?,
        "old_limit"?, "quality_rating"?}``. Updates the health (and, on THROUGHPUT_UPGRADE, the MPS)
        and posts a ``phone_number_quality_update``."""
        event = QualityEvent.from_dict(data)
        config = self.config
        if event.event == "FLAGGED" and config.health.status != "FLAGGED":
            self._before_flag = config.health
        change = apply_quality_event(config.health, event, config.display_phone_number, config.mps,
                                     self._before_flag if event.event == "UNFLAGGED" else None)
        if event.event == "UNFLAGGED":
            self._before_flag = None
        config.health, config.mps = change.health, change.mps
        self._post_account_event("phone_number_quality_update", change.value)
        return {"health": change.health.graph_json(), "mps": change.mps, "value": change.value}

    def capability(self, data: dict[str, Any]) -> dict[str, Any]:
        """The business portfolio's capabilities change: ``{"max_daily_conversations_per_business":
        2000, ...}``. Updates ``whatsapp_business_manager_messaging_limit`` and posts a
        ``business_capability_update``."""
        value = capability_value(data)
        daily = value.get("max_daily_conversations_per_business")
        if daily is not None:
            self.config.health = self.config.health.updated(
                {"whatsapp_business_manager_messaging_limit": TIER_OF_DAILY_LIMIT[daily]})
        self._post_account_event("business_capability_update", value)
        return {"health": self.config.health.graph_json(), "value": value}

    def reset(self) -> None:
        """Clear the ledger and all state (limits, windows, opt-outs, uploaded media, scheduled webhooks);
        keep config."""
        self.ledger.clear()
        self.webhooks.clear()
        self.windows = ServiceWindows()
        self._throughput = ThroughputWindow()
        self._pairs = PairSpacing()
        self._opted_out.clear()
        self._marketing_failures.clear()
        self._before_flag = None
        self._conversations.clear()
        self.media.clear()
        self._rng = random.Random(self.config.seed)

    def patch_config(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Change settings at runtime (faults mid-run); returns the public config."""
        self.config.patch(changes)
        if "templates" in changes or "add_templates" in changes:
            self.registry = TemplateRegistry(self.config.templates)
        if "seed" in changes:
            self._rng = random.Random(self.config.seed)
        return self.config.public_dict()

    def webhook_stats(self) -> dict[str, Any]:
        """Webhook delivery state, for ``GET /_sandbox/webhooks``."""
        return {"pending": self.webhooks.pending, "in_flight": self.webhooks.in_flight,
                "idle": self.webhooks.idle(), **self.webhooks.stats.as_dict()}

    # --- internals ----------------------------------------------------------------------------

    def _refuse(self, entry: LedgerEntry, error: MetaError) -> Reply:
        entry.http_status = error.http_status
        entry.error_code = error.code
        if logger.isEnabledFor(_DEBUG):
            logger.debug("POST /%s/messages to=%s type=%s template=%s -> %d code %d", entry.phone_number_id,
                         entry.to, entry.type, entry.template_name, error.http_status, error.code)
        return _error_reply(error)

    def _control_user(self, data: dict[str, Any], *number_keys: str) -> User:
        """The user a control request names: by phone number under the first of ``number_keys``
        present, else by BSUID under ``user_id``."""
        number = next((data[key] for key in number_keys if data.get(key) is not None), None)
        if number is not None:
            if not isinstance(number, str) or not digits(number):
                raise ControlError(f"'{number_keys[0]}' must be a phone number")
            return user_of(canonical_wa_id(number, self.config.rewrite_wa_ids), self.config, digits(number))
        user_id = data.get("user_id")
        if user_id is None:
            raise ControlError(f"give '{number_keys[0]}' (a phone number) or 'user_id' (a BSUID)")
        wa_id = wa_id_of_user(user_id) if isinstance(user_id, str) else None
        if wa_id is None:
            raise ControlError(f"'user_id' {user_id!r} is not a business-scoped user id of this sandbox")
        return user_of(wa_id, self.config)

    def _log_refusal(self, endpoint: str, error: MetaError) -> Reply:
        logger.debug("%s -> %d code %d", endpoint, error.http_status, error.code)
        return _error_reply(error)

    def _post_account_event(self, field_name: str, value: dict[str, Any]) -> None:
        if self.config.webhook_url:
            self.webhooks.schedule_account_event(self._clock(), field_name, value, int(self._wall()))
        logger.debug("%s %s", field_name, value.get("event", ""))

    def _set_template(self, template: Template) -> None:
        """Put ``template`` in the registry and in the config (a later config patch rebuilds the registry)."""
        self.registry.put(template)
        key = (template.name, template.language)
        self.config.templates = [template if (t.name, t.language) == key else t for t in self.config.templates]

    def _within_limits(self, phone_number_id: str, request: SendRequest, now: float) -> bool:
        config = self.config
        return (self._throughput.admits(phone_number_id, now, config.mps)
                and self._pairs.admits(phone_number_id, request.wa_id, now, config.pair_interval, config.pair_burst))

    def _new_media_id(self) -> str:
        # Meta's media ids are 15-16 digit numbers.
        while True:
            media_id = str(10**15 + secrets.randbelow(9 * 10**15))
            if media_id not in self.media:
                return media_id

    def _new_wamid(self, wa_id: str) -> str:
        # Real wamids are base64 of a protobuf-ish blob holding the number and a message id (the
        # sandbox puts a BSUID there when the number must not show).
        raw = f"{wa_id}\x15\x02\x00\x11\x18\x12{self._id_salt}{next(self._ids):012X}".encode()
        return "wamid.HBgL" + base64.b64encode(raw).decode().rstrip("=")

    def _dispatch(self, entry: LedgerEntry, request: SendRequest, phone_number_id: str, now: float,
                  wall: float) -> str:
        """The message leaves: count it against the limits, decide its fate, schedule its webhooks."""
        config = self.config
        self._throughput.record(phone_number_id, now)
        self._pairs.record(phone_number_id, request.wa_id, now, config.pair_interval)
        wamid = self._new_wamid(request.user_id or request.wa_id)  # the id it was sent to, as Meta's do
        entry.wamid = wamid
        in_window = self.windows.is_open(request.wa_id, phone_number_id, wall, config.window_seconds)
        if request.free_form:
            entry.window_open = in_window
        failure = self._failure_for(request, in_window, phone_number_id)
        entry.failure_code = failure.code if failure is not None else None
        if not config.webhook_url:
            entry.fate = "failed" if failure is not None else None
            return wamid
        plan = plan_statuses(config, self._rng, failed=failure is not None)
        entry.fate = max(plan, key=lambda p: p.happened_after).status
        category = request.category
        conversation = None if failure is not None else self._conversation(phone_number_id, request.wa_id,
                                                                           category, wall)
        # Per-message pricing (July 2025): service messages and utility templates inside an open
        # window are free; everything else is billed at the template's category.
        free = category == "service" or (category == "utility" and in_window)
        by_phone = request.user_id is None
        user = user_of(request.wa_id, config, digits(request.to) if by_phone else None)
        # whatsapp-usernames.md §2: the number when the send named it, or when Meta shows it; the
        # BSUID always but on a ``failed`` sent to a phone; contacts on all but ``failed``, the
        # username not on ``sent``.
        recipient_id = request.wa_id if by_phone else user.phone
        for planned in plan:
            failed = planned.status == "failed"
            status = status_object(wamid, planned.status, int(wall + planned.happened_after), recipient_id,
                                   recipient_user_id=None if failed and by_phone else user.user_id,
                                   callback_data=request.callback_data, conversation=conversation,
                                   category=category, billable=not free,
                                   pricing_type="free_customer_service" if free else "regular",
                                   error=failure)
            contacts = None if failed else [contact(user, PROFILE_NAME, with_username=planned.status != "sent")]
            self.webhooks.schedule_status(now + planned.posted_after, phone_number_id, status, contacts)
        return wamid

    def _failure_for(self, request: SendRequest, in_window: bool, phone_number_id: str) -> MetaError | None:
        """Meta's silent failures: accepted with 200, then a ``failed`` status."""
        input_digits = digits(request.to) if request.user_id is None else None
        profile = profile_of(request.wa_id, self.config, self._opted_out, input_digits)
        if profile is Profile.NOT_ON_WHATSAPP:
            return meta_errors.undeliverable()
        if request.free_form and not in_window:
            return meta_errors.reengagement_required()
        if request.media:
            failure = self._media_failure(request.media)
            if failure is not None:
                return failure
        if request.category == "marketing":
            if profile is Profile.MARKETING_OPTED_OUT:
                return meta_errors.marketing_opted_out()
            if self.config.block_us_marketing and is_us_number(request.wa_id):
                return meta_errors.marketing_limited()
            if profile is Profile.MARKETING_LIMITED and self._marketing_limit_holds(request.wa_id):
                return meta_errors.marketing_limited()
        return None

    def _marketing_limit_holds(self, wa_id: str) -> bool:
        """Whether a limited user's marketing template fails (131049) this time: always, or until it
        has failed ``marketing_limited_times`` times (then they are delivered, as after Meta's wait)."""
        times = self.config.marketing_limited_times
        failures = self._marketing_failures.get(wa_id, 0)
        if times is not None and failures >= times:
            return False
        self._marketing_failures[wa_id] = failures + 1
        return True

    def _media_failure(self, media: tuple[Media, ...]) -> MetaError | None:
        """131053 when Meta could not get a media: an id it never issued, a link it cannot fetch."""
        for kind, value in media:
            if kind == "id" and value not in self.media:
                return meta_errors.media_download_failed(f"Media ID {value} does not exist or has expired.")
            if kind == "link" and not link_fetchable(value, self.config.broken_media_links):
                return meta_errors.media_download_failed(
                    "Downloading media from weblink failed with http code 404, status message Not Found")
        return None

    def _conversation(self, phone_number_id: str, wa_id: str, category: str, wall: float) -> Conversation:
        key = (phone_number_id, wa_id, category)
        current = self._conversations.get(key)
        if current is None or current.expiration_timestamp <= wall:
            conversation_id = hashlib.md5(f"{key}{wall}{self._id_salt}".encode()).hexdigest()
            current = Conversation(conversation_id, int(wall + 24 * 3600), category)
            self._conversations[key] = current
        return current
