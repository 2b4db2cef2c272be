"""Running the sandbox: blocking (``campaign sandbox``) or in a background thread (tests, demo).

In a thread, uvicorn gets its own event loop; everything that touches the sandbox's state should
run in that loop (``BackgroundServer.call``), since the emulator is single-threaded by design.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import socket
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, TypeVar

import uvicorn
from starlette.applications import Starlette

from campaign.sandbox.app import create_app
from campaign.sandbox.config import SandboxConfig
from campaign.sandbox.emulator import Sandbox
from campaign.sandbox.ledger import LedgerFigures

logger = logging.getLogger("campaign.sandbox")

T = TypeVar("T")


def _uvicorn_config(app: Starlette, host: str, port: int) -> uvicorn.Config:
    # No access log and warning level: per-request logging would cost more than the emulation.
    # httptools and uvloop are not dependencies, so ask for the pure-Python stack explicitly.
    return uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                          loop="asyncio", http="h11", lifespan="on", timeout_graceful_shutdown=2,
                          backlog=2048, proxy_headers=False, server_header=False)


FREEZE_EVERY = 1.0


def _freeze_heap_periodically() -> None:
    """Keep full garbage collections short in a sandbox process that runs for long.

    The ledger and the per-user state only grow, and a full collection walks all of it: at
    60,000 sends the process paused 60-80 ms, and the requests that waited meanwhile were
    stamped as arriving together (1,052 "arrivals" in a second paced at 970). Freezing moves
    what exists to the permanent generation, so collections walk only what is new. The
    price: cyclic garbage that exists at a freeze is never freed (little: the young
    generations are collected hundreds of times a second). Only for the sandbox's own
    process; an in-process ``BackgroundServer`` leaves its host's collector alone."""

    def run() -> None:
        while True:
            time.sleep(FREEZE_EVERY)
            gc.freeze()

    threading.Thread(target=run, name="sandbox-gc-freeze", daemon=True).start()


def serve(config: SandboxConfig, host: str = "127.0.0.1", port: int = 8555) -> None:
    """Run the sandbox in the foreground until interrupted (``campaign sandbox``)."""
    app = create_app(config)
    _freeze_heap_periodically()
    logger.info("sandbox serving the Graph API at http://%s:%d/ (mps %d, pair interval %gs, latency %s ms)",
                host, port, config.mps, config.pair_interval, "-".join(f"{v:g}" for v in config.latency_ms))
    if config.webhook_url:
        logger.info("sandbox posting webhooks to %s", config.webhook_url)
    try:
        uvicorn.Server(_uvicorn_config(app, host, port)).run()
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown
        logger.info("sandbox stopped")


class BackgroundServer:
    """Any ASGI app served by uvicorn in a background thread on a loopback port.

    ``port=0`` picks a free port; the socket is bound before the thread starts so ``url`` is
    known at once and no other process can take the port in between.
    """

    def __init__(self, app: Starlette, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        # proto must be IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted connections only then,
        # and without it Nagle holds each response body for the client's delayed ACK (~40 ms).
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host, self.port = self._sock.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"
        self._server = uvicorn.Server(_uvicorn_config(app, self.host, self.port))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    def start(self, timeout: float = 10.0) -> BackgroundServer:
        """Start serving; return once the app's lifespan has started."""
        self._thread = threading.Thread(target=self._run, name=f"uvicorn-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if self._failure is not None or not self._thread.is_alive():
                raise RuntimeError(f"server on {self.url} failed to start") from self._failure
            if time.monotonic() > deadline:
                raise TimeoutError(f"server on {self.url} did not start within {timeout}s")
            time.sleep(0.005)
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._server.serve(sockets=[self._sock]))
        except BaseException as exc:  # reported to start()/stop()
            self._failure = exc
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask uvicorn to exit, wait for its lifespan shutdown, release the port."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(timeout)
        self._sock.close()

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 10.0) -> T:
        """Run ``fn(*args)`` (a plain function or one returning an awaitable) inside the server's loop."""
        if self._loop is None:
            raise RuntimeError("server is not running")
        future: Future[T] = Future()

        def run() -> None:
            try:
                result = fn(*args)
                if asyncio.iscoroutine(result):
                    task = asyncio.ensure_future(result)
                    task.add_done_callback(lambda t: _settle(future, t))
                else:
                    future.set_result(result)
            except BaseException as exc:  # handed to the caller
                future.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return future.result(timeout)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _settle(future: Future[Any], task: asyncio.Future[Any]) -> None:
    if task.cancelled():
        future.cancel()
    elif task.exception() is not None:
        future.set_exception(task.exception())
    else:
        future.set_result(task.result())


class SandboxServer(BackgroundServer):
    """The sandbox in-process on a free loopback port (``with SandboxServer(config) as sb: sb.url``)."""

    def __init__(self, config: SandboxConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config if config is not None else SandboxConfig()
        super().__init__(create_app(self.config), host, port)
        self.sandbox: Sandbox = self.app.state.sandbox

    def __enter__(self) -> SandboxServer:
        self.start()
        return self

    def base_url(self) -> str:
        """What ``WA_API_BASE_URL`` should be set to."""
        return self.url

    def figures(self, phone_number_id: str | None = None) -> LedgerFigures:
        """Ledger figures, computed inside the sandbox's loop."""
        return self.call(self.sandbox.ledger.figures, phone_number_id)

    def patch_config(self, **changes: Any) -> dict[str, Any]:
        """Change settings mid-run (e.g. ``transient_rate=0.5``)."""
        return self.call(self.sandbox.patch_config, changes)

    def reset(self) -> None:
        """Clear the ledger and state."""
        self.call(self.sandbox.reset)

    def inbound(self, **message: Any) -> dict[str, Any]:
        """A user writes in: ``inbound(**{"from": "+49...", "text": "hi"})``, or by BSUID: ``inbound(user_id=...)``."""
        return self.call(self.sandbox.inbound, message)

    def template_status(self, name: str, language: str, event: str, reason: str | None = None,
                        **extra: Any) -> dict[str, Any]:
        """Meta changes a template's status (``event``: PAUSED, DISABLED, REJECTED, APPROVED, REINSTATED...);
        posts ``message_template_status_update``. ``extra``: ``disable_info``, ``other_info``, ``rejection_info``."""
        data: dict[str, Any] = {"name": name, "language": language, "event": event, **extra}
        if reason is not None:
            data["reason"] = reason
        return self.call(self.sandbox.template_status, data)

    def quality(self, event: str, **fields: Any) -> dict[str, Any]:
        """The number's quality event (FLAGGED, UNFLAGGED, DOWNGRADE, UPGRADE, THROUGHPUT_UPGRADE, ONBOARDING),
        with ``current_limit``, ``max_daily_conversations_per_business``, ``old_limit``, ``quality_rating``;
        posts ``phone_number_quality_update``."""
        return self.call(self.sandbox.quality, {"event": event, **fields})

    def capability(self, **fields: Any) -> dict[str, Any]:
        """The portfolio's capabilities change (``max_daily_conversations_per_business=2000``...);
        posts ``business_capability_update``."""
        return self.call(self.sandbox.capability, fields)

    def health(self, **fields: Any) -> dict[str, Any]:
        """Set health fields silently (``quality_rating="YELLOW"``, ``throughput={"level": "HIGH"}``);
        returns what ``GET /{phone-number-id}`` now shows of them."""
        return self.patch_config(health=fields)["health"]

    def open_window(self, number: str, at: float | None = None) -> None:
        """Open a user's 24-hour window without a webhook."""
        self.call(self.sandbox.open_window, number, at)

    def wait_webhooks_idle(self, timeout: float = 10.0) -> bool:
        """Wait until every scheduled webhook was delivered (or given up); True if it happened in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.call(self.sandbox.webhooks.idle):
                return True
            time.sleep(0.01)
        return False
