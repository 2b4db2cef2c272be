"""The webhook receiver: Meta's verification handshake, and signed events stored before 200.

DESIGN.md guarantee 4 ("nothing lost"): a body is answered 200 only once it is committed to
`webhook_events`; an unverified one is refused (401) and stored nowhere; when it cannot be
stored the answer is 503, and Meta retries a non-200 for days (whatsapp-cloud-api.md,
"Webhooks"). The receiver does nothing else with a body: parsing and applying is the
reconciler's job (reconcile.py), which runs here as a background task, woken at once by
every stored body and otherwise polling, so receivers stay stateless and fast (Meta
expects a median answer under 250 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterable
from datetime import datetime, timedelta

import anyio.to_thread
import uvicorn
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from campaign.config import Settings
from campaign.db import Database, one_line, create_db_engine, database_unavailable, is_sqlite
from campaign.exceptions import CampaignError
from campaign.breaker import FailureBreaker
from campaign.clock import SYSTEM, Clock, utcnow
from campaign.inbound import DEFAULT_OPT_IN_WORDS, DEFAULT_OPT_OUT_WORDS
from campaign.models import WebhookEvent
from campaign.reconcile import DEFAULT_ORPHAN_AFTER, reconcile_once
from campaign.sql import insert_ignore

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 3 * 1024 * 1024
"""Meta batches at most 1,000 updates per POST (well under 1 MB); anything far larger is refused (413)."""
SIGNATURE_HEADER = "x-hub-signature-256"
RECONCILE_POLL_SECONDS = 0.25
RECONCILE_RETRY_MAX_SECONDS = 10.0


def signature(secret: str, body: bytes) -> str:
    """The `X-Hub-Signature-256` value Meta sends for `body`: HMAC-SHA256 of the raw bytes."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_valid(secret: str, body: bytes, header: str | None) -> bool:
    """Constant-time check over the bytes exactly as received: re-serialized JSON (other
    escaping, other spacing) does not match (whatsapp-cloud-api.md, "Webhooks")."""
    if not header:
        return False
    expected = signature(secret, body).encode()
    # Headers arrive as latin-1 text; compare bytes so a non-ASCII header is just "wrong".
    return hmac.compare_digest(expected, header.strip().encode("latin-1", "replace").lower())


class _Reconciler:
    """Runs `reconcile_once` in a worker thread: after every stored body, and every poll interval."""

    def __init__(self, db: Database, options: dict[str, object]) -> None:
        self._db = db
        self._options = options
        self._wake: asyncio.Event | None = None

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        self._wake = wake = asyncio.Event()  # made in the loop that serves the app
        delay = RECONCILE_POLL_SECONDS
        down_since: float | None = None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=delay)
            wake.clear()
            try:
                stats = await anyio.to_thread.run_sync(lambda: reconcile_once(self._db, **self._options))
            except Exception as exc:
                # Nothing is lost: the events stay stored and unprocessed, and the next pass
                # (woken by the next stored body, or after the backoff) applies them. An outage
                # is logged once, not once a pass; anything else with its traceback.
                if not database_unavailable(exc):
                    log.exception("reconcile failed; retrying")
                elif down_since is None:
                    down_since = time.monotonic()
                    log.warning("reconcile waits for the database (%s); stored events are applied once it is back",
                                one_line(exc))
                delay = min(delay * 2, RECONCILE_RETRY_MAX_SECONDS)
                continue
            if down_since is not None:
                log.warning("database back after %.1fs: reconciling again", time.monotonic() - down_since)
                down_since = None
            delay = RECONCILE_POLL_SECONDS
            if stats.events:
                log.debug("reconciled %s", stats)


def create_app(
    db: Database,
    settings: Settings,
    *,
    reconcile: bool = True,
    opt_out_words: Iterable[str] = DEFAULT_OPT_OUT_WORDS,
    opt_in_words: Iterable[str] = DEFAULT_OPT_IN_WORDS,
    orphan_after: timedelta = DEFAULT_ORPHAN_AFTER,
    max_body_bytes: int = MAX_BODY_BYTES,
    clock: Clock = SYSTEM,
) -> Starlette:
    """The receiver's ASGI app: `GET/POST /webhook` and `GET /health`; with `reconcile`, the
    reconciler runs in the background for the app's lifetime."""
    if not settings.app_secret:
        raise CampaignError("WA_APP_SECRET is not set: the webhook receiver cannot verify X-Hub-Signature-256 without it")
    if not settings.verify_token:
        raise CampaignError("WA_VERIFY_TOKEN is not set: the webhook receiver cannot answer Meta's verification without it")
    secret: str = settings.app_secret
    verify_token: str = settings.verify_token
    # SQLite has one writer at a time, and a writer that finds it busy polls with sleeps of up
    # to 100 ms: the receiver and its reconciler queue on one lock instead, so a body waits for
    # a reconcile transaction to end, not for the next poll after it.
    write_lock: contextlib.AbstractContextManager[object] = (
        threading.Lock() if is_sqlite(db.engine) else contextlib.nullcontext()
    )
    reconciler = _Reconciler(db, {"opt_out_words": tuple(opt_out_words), "opt_in_words": tuple(opt_in_words),
                                  "orphan_after": orphan_after, "write_lock": write_lock, "clock": clock,
                                  "marketing_retries": settings.marketing_retries,
                                  "marketing_retry_after": settings.marketing_retry_after,
                                  "default_sender": settings.phone_number_id,
                                  "breaker": FailureBreaker(window=settings.breaker_window,
                                                            threshold=settings.breaker_threshold)}) if reconcile else None

    def store(body: bytes) -> bool:
        with write_lock:
            return store_event(db, body, received_at=clock.now())

    async def verify(request: Request) -> Response:
        """Meta's subscription handshake: echo `hub.challenge` when the token matches."""
        params = request.query_params
        token = params.get("hub.verify_token", "")
        if params.get("hub.mode") == "subscribe" and hmac.compare_digest(
            token.encode("utf-8", "replace"), verify_token.encode("utf-8")
        ):
            return PlainTextResponse(params.get("hub.challenge", ""))
        log.warning("webhook verification refused from %s", _client(request))
        return PlainTextResponse("forbidden", status_code=403)

    async def receive(request: Request) -> Response:
        body = await _read_capped(request, max_body_bytes)
        if body is None:
            log.warning("webhook body over %d bytes refused from %s", max_body_bytes, _client(request))
            return PlainTextResponse("payload too large", status_code=413)
        header = request.headers.get(SIGNATURE_HEADER)
        if not signature_valid(secret, body, header):
            log.warning("webhook refused from %s: %s X-Hub-Signature-256", _client(request),
                        "wrong" if header else "missing")
            return PlainTextResponse("invalid signature", status_code=401)
        try:
            stored = await anyio.to_thread.run_sync(store, body)
        except SQLAlchemyError as exc:
            log.error("webhook body could not be stored (answered 503, Meta retries): %s", one_line(exc))
            return PlainTextResponse("storage unavailable", status_code=503)
        if stored and reconciler is not None:
            reconciler.wake()
        return PlainTextResponse("ok")

    async def health(request: Request) -> Response:
        try:
            await anyio.to_thread.run_sync(_ping, db)
        except SQLAlchemyError:
            return JSONResponse({"status": "unavailable", "database": "unreachable"}, status_code=503)
        return JSONResponse({"status": "ok", "database": "ok"})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(reconciler.run()) if reconciler is not None else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    return Starlette(
        routes=[
            Route("/webhook", verify, methods=["GET"]),
            Route("/webhook", receive, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def store_event(db: Database, body: bytes, *, received_at: datetime | None = None) -> bool:
    """Commit `body` to `webhook_events`; False when the same bytes were stored already
    (Meta redelivers, so a duplicate is answered 200 and stored once)."""
    digest = hashlib.sha256(body).hexdigest()
    with db.session() as session:
        result = session.execute(
            insert_ignore(session, WebhookEvent).values(body=body, content_hash=digest,
                                                       received_at=received_at or utcnow())
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the receiver and its reconciler until interrupted (`campaign webhooks`).

    A receiver (re)started while the database is away waits for it before it listens (Meta
    retries what it cannot deliver meanwhile), then checks the schema as every command does."""
    db = Database(create_db_engine(settings.database_url))
    try:
        _wait_for_database(db)
        db.ensure_schema()
        app = create_app(db, settings)
        uvicorn.run(app, host=host, port=port, access_log=False, log_level="info")
    finally:
        db.close()


async def _read_capped(request: Request, limit: int) -> bytes | None:
    """The raw body, or None once it passes `limit` bytes (Content-Length is not trusted:
    a chunked body has none, and a lying one is caught while reading)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _wait_for_database(db: Database, *, max_delay: float = 5.0) -> None:
    delay, since = 0.1, time.monotonic()
    while not db.reachable():
        if delay == 0.1:
            log.warning("the database is unavailable: the receiver waits for it before it listens")
        time.sleep(delay)
        delay = min(delay * 2, max_delay)
    if delay > 0.1:
        log.warning("database reachable after %.1fs", time.monotonic() - since)


def _ping(db: Database) -> None:
    with db.read_session() as session:
        session.execute(text("SELECT 1")).one()


def _client(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "unknown client"
