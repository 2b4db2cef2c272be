"""Webhooks as Meta sends them: status objects, inbound messages, batching, signing, retries.

Meta batches updates (up to 1,000 per POST, batching not guaranteed), delivers concurrently so
duplicates and any order occur, may skip ``delivered`` when a message is read at once, and
retries a non-200 answer with decreasing frequency. A receiver must hash the exact bytes it got,
so a retry re-sends the very same bytes. (whatsapp-cloud-api.md, "Webhooks".)

Users are named as Meta has since 2026 (whatsapp-usernames.md §2): by business-scoped user id
always, by number only when Meta shows it, and a key that does not apply is left out, never
``""`` nor null. Each status is posted as its own ``value`` with its recipient's ``contacts``
(none on ``failed``), since SDKs read ``contacts[0]`` as the contact of ``statuses[0]``.
"""
from __future__ import annotations

import asyncio
import hashlib
import heapq
import hmac
import itertools
import json
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx

from campaign.sandbox.config import SandboxConfig
from campaign.sandbox.meta_errors import MetaError
from campaign.sandbox.recipients import User

logger = logging.getLogger("campaign.sandbox")

STATUS_ORDER = ("sent", "delivered", "read")


def sign(body: bytes, secret: str) -> str:
    """``X-Hub-Signature-256``: ``sha256=`` + hex HMAC-SHA256 of the exact body bytes."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def sign_sha1(body: bytes, secret: str) -> str:
    """The legacy ``X-Hub-Signature`` header Meta still sends beside the SHA-256 one."""
    return "sha1=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha1).hexdigest()


def envelope(waba_id: str, phone_number_id: str, display_phone_number: str, value: dict[str, Any],
             field_name: str = "messages") -> dict[str, Any]:
    """Wrap a ``value`` as Meta's webhook body: object, entry[id], changes[value, field]."""
    return envelope_many(waba_id, phone_number_id, display_phone_number, [value], field_name)


def envelope_many(waba_id: str, phone_number_id: str, display_phone_number: str, values: list[dict[str, Any]],
                  field_name: str = "messages") -> dict[str, Any]:
    """Wrap several ``value``s of one sender as one webhook body, one change each."""
    metadata = {"display_phone_number": display_phone_number, "phone_number_id": phone_number_id}
    changes = [{"value": {"messaging_product": "whatsapp", "metadata": metadata, **value}, "field": field_name}
               for value in values]
    return {"object": "whatsapp_business_account", "entry": [{"id": waba_id, "changes": changes}]}


def account_envelope(waba_id: str, time: int, field_name: str, value: dict[str, Any]) -> dict[str, Any]:
    """Wrap the ``value`` of an account-level field (template status, quality, capability) as Meta
    does: no ``messaging_product`` nor ``metadata``, and the entry carries ``time`` (unix seconds)."""
    return {"object": "whatsapp_business_account",
            "entry": [{"id": waba_id, "time": int(time), "changes": [{"value": value, "field": field_name}]}]}


def encode(body: dict[str, Any]) -> bytes:
    """Compact JSON with non-ASCII escaped, as Meta's bodies are."""
    return json.dumps(body, separators=(",", ":")).encode("ascii")


@dataclass(frozen=True, slots=True)
class Conversation:
    """Meta's conversation object of a status (kept for receivers that still read it)."""

    id: str
    expiration_timestamp: int
    origin: str


def contact(user: User, name: str, with_username: bool = True) -> dict[str, Any]:
    """One ``contacts[]`` item: the profile (its ``username`` for username users), ``wa_id`` when
    the number is shown, ``user_id`` always."""
    profile = {"name": name}
    if with_username and user.username is not None:
        profile["username"] = user.username
    item: dict[str, Any] = {"profile": profile}
    if user.phone is not None:
        item["wa_id"] = user.phone
    item["user_id"] = user.user_id
    return item


def status_object(wamid: str, status: str, timestamp: int, recipient_id: str | None, *,
                  recipient_user_id: str | None = None,
                  callback_data: str | None = None, conversation: Conversation | None = None,
                  category: str | None = None, billable: bool = True, pricing_type: str = "regular",
                  error: MetaError | None = None) -> dict[str, Any]:
    """One ``value.statuses[]`` item, shaped like Meta's (fixtures/meta-webhooks/message_status.json);
    ``recipient_id`` / ``recipient_user_id`` are left out when None."""
    item: dict[str, Any] = {"id": wamid, "status": status, "timestamp": str(int(timestamp))}
    if recipient_id is not None:
        item["recipient_id"] = recipient_id
    if recipient_user_id is not None:
        item["recipient_user_id"] = recipient_user_id
    if callback_data is not None:
        item["biz_opaque_callback_data"] = callback_data
    if status == "failed":
        if error is not None:
            item["errors"] = [error.status_error()]
        return item
    if conversation is not None:
        conv: dict[str, Any] = {"id": conversation.id}
        if status == "sent":  # Meta gives the expiration on the first status only
            conv["expiration_timestamp"] = str(conversation.expiration_timestamp)
        conv["origin"] = {"type": conversation.origin}
        item["conversation"] = conv
    if category is not None:
        item["pricing"] = {"billable": billable, "pricing_model": "PMP", "type": pricing_type,
                           "category": category}
    return item


def inbound_message(user: User, wamid: str, timestamp: int) -> dict[str, Any]:
    """The head of an inbound ``messages[]`` item: ``from`` (when the number is shown),
    ``from_user_id``, ``id``, ``timestamp``; the caller adds ``type`` and its content."""
    message: dict[str, Any] = {}
    if user.phone is not None:
        message["from"] = user.phone
    message["from_user_id"] = user.user_id
    message["id"] = wamid
    message["timestamp"] = str(int(timestamp))
    return message


def inbound_value(user: User, name: str, message: dict[str, Any]) -> dict[str, Any]:
    """``value`` of an inbound-message webhook: the sender's contact and the message."""
    return {"contacts": [contact(user, name)], "messages": [message]}


def user_preferences_value(user: User, name: str, value: str, timestamp: int) -> dict[str, Any]:
    """``value`` of a ``user_preferences`` webhook: the user stopped or resumed marketing messages."""
    detail = {"stop": "User requested to stop marketing messages",
              "resume": "User requested to resume marketing messages"}[value]
    item: dict[str, Any] = {}
    if user.phone is not None:
        item["wa_id"] = user.phone
    item["user_id"] = user.user_id
    item.update(detail=detail, category="marketing_messages", value=value, timestamp=int(timestamp))
    return {"contacts": [contact(user, name)], "user_preferences": [item]}


def template_status_value(template_id: str, name: str, language: str, category: str, event: str,
                          reason: str = "NONE", **extra: Any) -> dict[str, Any]:
    """``value`` of a ``message_template_status_update`` (whatsapp-templates.md §5, recorded in
    tests/fixtures/meta-webhooks/template_status_update.json): the id is a number there; ``extra``
    holds the optional ``disable_info``, ``other_info`` or ``rejection_info``."""
    return {"event": event, "message_template_id": int(template_id) if template_id.isdecimal() else template_id,
            "message_template_name": name, "message_template_language": language, "reason": reason,
            "message_template_category": category, **extra}


@dataclass(frozen=True, slots=True)
class PlannedStatus:
    """A status the sandbox will post: when it happened (its timestamp) and when it is posted."""

    status: str
    happened_after: float  # seconds after the send was accepted
    posted_after: float


def plan_statuses(config: SandboxConfig, rng: random.Random, failed: bool) -> list[PlannedStatus]:
    """The statuses of one accepted message, with Meta's disorder applied by the configured rates.

    Out of order means the webhooks arrive in another order than the events happened (``read``
    before ``delivered``, ``failed`` before ``sent``); timestamps stay true. Apart from that,
    ``delivered`` may be skipped when the message is read at once.
    """
    def seconds(bounds: tuple[float, float]) -> float:
        low, high = bounds
        return (rng.uniform(low, high) if high > low else low) / 1000.0

    events: list[tuple[str, float]] = []
    if failed:
        at = 0.0
        if rng.random() < config.sent_before_failed_fraction:
            at += seconds(config.sent_delay_ms)
            events.append(("sent", at))
        events.append(("failed", at + seconds(config.failed_delay_ms)))
    else:
        at = seconds(config.sent_delay_ms)
        events.append(("sent", at))
        if rng.random() < config.delivered_fraction:
            at += seconds(config.delivered_delay_ms)
            events.append(("delivered", at))
            if rng.random() < config.read_fraction:
                at += seconds(config.read_delay_ms)
                events.append(("read", at))
    planned = [PlannedStatus(name, when, when) for name, when in events]
    if len(planned) == 3 and config.skip_delivered_rate > 0 and rng.random() < config.skip_delivered_rate:
        del planned[1]  # delivered skipped: the message was read at once
    if len(planned) >= 2 and config.out_of_order_rate > 0 and rng.random() < config.out_of_order_rate:
        first, second = planned[-2], planned[-1]  # the last two posted in swapped order
        planned[-2] = PlannedStatus(first.status, first.happened_after, second.posted_after)
        planned[-1] = PlannedStatus(second.status, second.happened_after, first.posted_after)
    if config.duplicate_rate > 0:
        for item in list(planned):
            if rng.random() < config.duplicate_rate:
                extra = rng.uniform(0.0, 2 * config.webhook_flush_interval)
                planned.append(PlannedStatus(item.status, item.happened_after, item.posted_after + extra))
    return planned


@dataclass
class WebhookStats:
    """What the sender has done, for tests and ``GET /_sandbox/webhooks``."""

    scheduled: int = 0  # items (statuses, messages) scheduled
    posts: int = 0  # POST attempts
    posts_ok: int = 0  # answered 200
    posts_failed: int = 0  # non-200 or connection error
    retries: int = 0
    items_delivered: int = 0
    batches_dropped: int = 0  # gave up after webhook_max_attempts
    items_discarded: int = 0  # due while no webhook_url was set
    last_error: str | None = None
    answers: dict[int, int] = field(default_factory=dict)  # HTTP status -> count

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        data = dict(self.__dict__)
        data["answers"] = {str(k): v for k, v in self.answers.items()}
        return data


_STATUS, _OTHER, _WHOLE = 0, 1, 2  # a status value (batched), a value posted alone, a body already wrapped


class WebhookSender:
    """Posts scheduled webhook items to ``config.webhook_url``: batched, signed, retried.

    Lives in the sandbox's event loop; ``schedule`` is synchronous and cheap (a heap push), a
    flusher task groups due statuses per sender number into batches every
    ``webhook_flush_interval``, and each batch is delivered by its own task (at most
    ``webhook_concurrency`` POSTs at once; a batch waiting to retry does not hold a slot).
    """

    def __init__(self, config: SandboxConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._heap: list[tuple[float, int, int, str, str, dict[str, Any]]] = []
        self._seq = itertools.count()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flusher: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self._slots: asyncio.Semaphore | None = None
        self._generation = 0
        self.stats = WebhookStats()

    async def start(self) -> None:
        """Open the HTTP client and start flushing (called from the app's lifespan)."""
        concurrency = self.config.webhook_concurrency
        # httpx's pool degrades past ~20 keep-alive connections (library-notes.md).
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=min(concurrency, 20))
        self._client = httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(self.config.webhook_timeout))
        self._slots = asyncio.Semaphore(concurrency)
        self._flusher = asyncio.create_task(self._flush_forever(), name="sandbox-webhook-flusher")
        if self.config.webhook_url and not self.config.app_secret:
            logger.warning("sandbox webhooks are not signed: no app secret (WA_APP_SECRET) is configured")

    async def stop(self) -> None:
        """Stop flushing and cancel deliveries in flight."""
        tasks = [t for t in (self._flusher, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._flusher = None
        self._tasks.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def schedule_status(self, due: float, phone_number_id: str, status: dict[str, Any],
                        contacts: list[dict[str, Any]] | None = None) -> None:
        """Post ``status`` (a ``statuses[]`` item, with its recipient's ``contacts`` unless None) at
        monotonic time ``due``, batched with others into one body (a change each)."""
        value = {"statuses": [status]} if contacts is None else {"contacts": contacts, "statuses": [status]}
        heapq.heappush(self._heap, (due, next(self._seq), _STATUS, phone_number_id, "messages", value))
        self.stats.scheduled += 1

    def schedule_value(self, due: float, phone_number_id: str, value: dict[str, Any],
                       field_name: str = "messages") -> None:
        """Post a whole ``value`` (an inbound message, a preference change) on its own at ``due``."""
        heapq.heappush(self._heap, (due, next(self._seq), _OTHER, phone_number_id, field_name, value))
        self.stats.scheduled += 1

    def schedule_account_event(self, due: float, field_name: str, value: dict[str, Any], time: int) -> None:
        """Post an account-level ``value`` (``field_name``: message_template_status_update,
        phone_number_quality_update, business_capability_update...) on its own at ``due``."""
        body = account_envelope(self.config.waba_id, time, field_name, value)
        heapq.heappush(self._heap, (due, next(self._seq), _WHOLE, "", field_name, body))
        self.stats.scheduled += 1

    def clear(self) -> None:
        """Drop everything scheduled and stop retrying batches in flight (``/_sandbox/reset``)."""
        self._heap.clear()
        self._generation += 1
        self.stats = WebhookStats()

    @property
    def pending(self) -> int:
        """Items scheduled and not yet handed to a delivery."""
        return len(self._heap)

    @property
    def in_flight(self) -> int:
        """Batches being posted or waiting to retry."""
        return len(self._tasks)

    def idle(self) -> bool:
        """Nothing scheduled and nothing being delivered."""
        return not self._heap and not self._tasks

    def next_due(self) -> float | None:
        """When the next scheduled item is due (monotonic), if any."""
        return self._heap[0][0] if self._heap else None

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.webhook_flush_interval)
            try:
                self.flush(self._clock())
            except Exception:  # a bug here must not silently end all webhooks
                logger.exception("sandbox webhook flush failed")

    def flush(self, now: float) -> int:
        """Hand every item due by ``now`` to deliveries; return the number of POST bodies started."""
        if not self._heap or self._heap[0][0] > now:
            return 0
        statuses: dict[str, list[dict[str, Any]]] = {}
        singles: list[tuple[str, str, dict[str, Any]]] = []
        wholes: list[dict[str, Any]] = []
        while self._heap and self._heap[0][0] <= now:
            _, _, kind, phone_number_id, field_name, item = heapq.heappop(self._heap)
            if kind == _STATUS:
                statuses.setdefault(phone_number_id, []).append(item)
            elif kind == _WHOLE:
                wholes.append(item)
            else:
                singles.append((phone_number_id, field_name, item))
        config = self.config
        if not config.webhook_url:
            self.stats.items_discarded += sum(map(len, statuses.values())) + len(singles) + len(wholes)
            return 0
        bodies: list[tuple[bytes, int]] = [(encode(body), 1) for body in wholes]
        for phone_number_id, field_name, value in singles:
            bodies.append((encode(envelope(config.waba_id, phone_number_id, config.display_phone_number,
                                           value, field_name)), 1))
        size = config.webhook_batch_max
        for phone_number_id, items in statuses.items():
            for start in range(0, len(items), size):
                batch = items[start:start + size]
                body = envelope_many(config.waba_id, phone_number_id, config.display_phone_number, batch)
                bodies.append((encode(body), len(batch)))
        for body, count in bodies:
            task = asyncio.create_task(self._deliver(body, count, self._generation))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(bodies)

    async def _deliver(self, body: bytes, count: int, generation: int) -> None:
        attempt = 0
        while generation == self._generation:
            attempt += 1
            if await self._post(body):
                self.stats.items_delivered += count
                return
            if generation != self._generation:
                return
            if attempt >= self.config.webhook_max_attempts:
                self.stats.batches_dropped += 1
                logger.warning("sandbox gave up a webhook batch of %d after %d attempts", count, attempt)
                return
            self.stats.retries += 1
            delay = min(self.config.webhook_retry_base * 2 ** (attempt - 1), self.config.webhook_retry_max_delay)
            await asyncio.sleep(delay)

    async def _post(self, body: bytes) -> bool:
        url = self.config.webhook_url
        client, slots = self._client, self._slots
        if not url or client is None or slots is None:
            return False
        headers = {"Content-Type": "application/json", "User-Agent": "facebookexternalua"}
        secret = self.config.app_secret
        if secret:
            headers["X-Hub-Signature-256"] = sign(body, secret)
            headers["X-Hub-Signature"] = sign_sha1(body, secret)
        async with slots:
            self.stats.posts += 1
            try:
                response = await client.post(url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                self.stats.posts_failed += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                logger.debug("sandbox webhook POST %s failed: %s", url, self.stats.last_error)
                return False
        self.stats.answers[response.status_code] = self.stats.answers.get(response.status_code, 0) + 1
        if response.status_code == 200:
            self.stats.posts_ok += 1
            return True
        self.stats.posts_failed += 1
        self.stats.last_error = f"HTTP {response.status_code}"
        logger.debug("sandbox webhook POST %s answered %d", url, response.status_code)
        return False
