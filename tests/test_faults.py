"""Faults Meta and the network bring, end to end: the sandbox as Meta posting its webhooks to the
receiver, a worker between them, and every assertion on the sandbox's ledger: nobody got two
messages, nobody is missing, and the outbox agrees with what the sandbox did."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from dispatch_helpers import phones  # noqa: E402
from meta_helpers import SENDER, Meta, campaign, meta, states, work_until  # noqa: E402,F401


def all_reached(meta: Meta, campaign_id: int, total: int):  # type: ignore[no-untyped-def]
    """Every message sent (or further) as the outbox has it, and nothing left to send."""
    return lambda: sum(states(meta.db, campaign_id).get(s, 0) for s in ("sent", "delivered", "read")) == total


def test_a_5xx_after_meta_sent_the_message_is_settled_by_its_webhook_never_sent_twice(meta: Meta) -> None:
    # 3% of sends: Meta answers 500/503 though the message went out; another 3% it did not.
    meta.sandbox.patch_config(transient_rate=0.06, transient_sent_fraction=0.5)
    campaign_id = campaign(meta, "flaky", phones(300), template="order_update", category="utility")
    work_until(meta, all_reached(meta, campaign_id, 300), timeout=40, mps=80,
               server_error_grace=timedelta(seconds=3), recover_every=0.2)
    figures = meta.sandbox.figures(SENDER)
    assert figures.sent_anyway > 0 and figures.transient_errors > figures.sent_anyway
    # Each person got the message once: accepted, or answered 5xx and sent all the same.
    assert (figures.accepted + figures.sent_anyway, figures.duplicate_sends) == (300, 0)


class SwitchableProxy:
    """A TCP proxy to the sandbox that can drop the network: off, it closes every connection
    and refuses new ones (the port is not listening), as when the link to Meta goes down."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.loop = asyncio.new_event_loop()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def up(self) -> None:
        async def start() -> None:
            self.server = await asyncio.start_server(self._pipe, "127.0.0.1", self.port)
        self._run(start())

    def down(self) -> None:
        async def stop() -> None:
            assert self.server is not None
            self.server.close()
            for writer in list(self.writers):
                writer.transport.abort()
        self._run(stop())

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers.update((writer, upstream_writer))

        async def copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.transport.abort()
                self.writers.discard(sink)

        await asyncio.gather(copy(reader, upstream_writer), copy(upstream_reader, writer))

    def close(self) -> None:
        self.down()
        self.loop.call_soon_threadsafe(self.loop.stop)


def test_a_network_drop_pauses_sending_and_the_cap_holds_after_it(meta: Meta) -> None:
    proxy = SwitchableProxy(int(meta.sandbox.url.rsplit(":", 1)[1]))
    try:
        campaign_id = campaign(meta, "dropped", phones(400), template="order_update", category="utility")
        settings = meta.settings.with_overrides(api_base_url=proxy.url)
        accepted = lambda: meta.sandbox.figures(SENDER).accepted  # noqa: E731

        def drop_for_a_while() -> None:
            while accepted() < 100:
                time.sleep(0.02)
            proxy.down()
            time.sleep(3)  # no request reaches Meta meanwhile
            during = accepted()
            time.sleep(0.5)
            assert accepted() == during
            proxy.up()

        dropper = threading.Thread(target=drop_for_a_while)
        dropper.start()
        # Requests cut mid-way are in doubt: their webhooks settle the ones that reached Meta,
        # and a short grace (CAMPAIGN_SEND_GRACE is 10 minutes) sends the others again.
        work_until(meta, all_reached(meta, campaign_id, 400), timeout=60, settings=settings, mps=80,
                   grace=timedelta(seconds=3), recover_every=0.2)
        dropper.join()
    finally:
        proxy.close()
    figures = meta.sandbox.figures(SENDER)
    assert (figures.accepted, figures.duplicate_sends) == (400, 0)
    assert figures.max_in_any_second <= 80  # no burst to catch up
    assert "failed" not in states(meta.db, campaign_id)  # nothing failed for want of a connection
