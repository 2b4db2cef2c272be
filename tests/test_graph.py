"""The Graph client tells the three outcomes apart: answered, certainly not sent, maybe sent.

Which one it is decides whether a message may go out again, so each is driven here by a
real socket that behaves the way a failing network or server does."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from campaign.graph import Accepted, GraphClient, GraphError, NotSent, ServerError, Uncertain

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
BODY = {"messaging_product": "whatsapp", "to": "+4915123456789", "type": "text", "text": {"body": "hi"}}


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """The request line, once the whole request has been read."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    await reader.readexactly(length)
    return head.split(b"\r\n")[0]


async def respond(writer: asyncio.StreamWriter, status: int, body: Any) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(content)}\r\n\r\n".encode()
                 + content)
    await writer.drain()
    writer.close()


def answer(status: int, body: Any) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await respond(writer, status, body)

    return handle


async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads the whole request, then closes without a word: it may have been processed."""
    await read_request(reader)
    writer.close()


async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    await asyncio.sleep(5)
    writer.close()


async def send(handler: Handler, **client: Any) -> Accepted:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with GraphClient(f"http://127.0.0.1:{port}", "v21.0", "token", **client) as graph:
            return await graph.send_message("PNID", BODY)
    finally:
        server.close()


def test_an_answer_with_a_message_id_is_accepted() -> None:
    ok = {"messaging_product": "whatsapp", "contacts": [{"input": "+4915123456789", "wa_id": "4915123456789"}],
          "messages": [{"id": "wamid.X", "message_status": "accepted"}]}
    assert asyncio.run(send(answer(200, ok))) == Accepted("wamid.X", "4915123456789", "accepted")


def test_metas_error_body_is_an_error_with_its_code() -> None:
    error = {"error": {"message": "(#131026) Message undeliverable", "code": 131026, "fbtrace_id": "A"}}
    with pytest.raises(GraphError) as raised:
        asyncio.run(send(answer(400, error)))
    assert (raised.value.code, raised.value.http_status) == (131026, 400)


@pytest.mark.parametrize("status,code", [(500, 131000), (503, 2)])
def test_metas_5xx_is_an_answer_but_not_a_verdict(status: int, code: int) -> None:
    # Meta may have sent the message behind a 500 or a 503: the error is kept, the outcome uncertain.
    error = {"error": {"message": "Something went wrong", "code": code, "fbtrace_id": "A"}}
    with pytest.raises(ServerError) as raised:
        asyncio.run(send(answer(status, error)))
    assert isinstance(raised.value, Uncertain) and raised.value.error.code == code


def test_a_closed_port_is_certainly_not_sent() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: the connection is refused

        async def refused() -> None:
            async with GraphClient(f"http://127.0.0.1:{port}", "v21.0", "token") as graph:
                await graph.send_message("PNID", BODY)

        with pytest.raises(NotSent):
            asyncio.run(refused())


def test_waiting_too_long_for_a_free_connection_is_certainly_not_sent() -> None:
    async def two_at_once() -> list[BaseException | Accepted]:
        server = await asyncio.start_server(hang, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        timeout = aiohttp.ClientTimeout(total=None, connect=0.3, sock_read=2)
        try:
            async with GraphClient(f"http://127.0.0.1:{port}", "v21.0", "token", timeout=timeout, connections=1) as graph:
                first = asyncio.create_task(graph.send_message("PNID", BODY))
                await asyncio.sleep(0.1)  # the first holds the only connection
                second = asyncio.create_task(graph.send_message("PNID", BODY))
                return await asyncio.gather(first, second, return_exceptions=True)
        finally:
            server.close()

    first, second = asyncio.run(two_at_once())
    assert isinstance(first, Uncertain)  # it left, and no answer came in time
    assert isinstance(second, NotSent)  # it never got a connection


@pytest.mark.parametrize("handler", [drop, answer(502, b"<html>Bad Gateway</html>"), answer(200, {"messages": []})],
                         ids=["connection dropped after the request", "gateway error without Meta's body",
                              "200 without a message id"])
def test_a_request_that_may_have_reached_meta_is_uncertain(handler: Handler) -> None:
    with pytest.raises(Uncertain):
        asyncio.run(send(handler))


def test_no_answer_within_the_read_timeout_is_uncertain() -> None:
    with pytest.raises(Uncertain):
        asyncio.run(send(hang, timeout=aiohttp.ClientTimeout(total=None, connect=1, sock_read=0.3)))


def test_requests_go_through_the_proxy_the_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))  # a proxy is asked for the absolute URL
        await respond(writer, 200, {"messages": [{"id": "wamid.P"}]})

    async def via_proxy() -> Accepted:
        server = await asyncio.start_server(proxy, "127.0.0.1", 0)
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        try:
            async with GraphClient("http://graph.invalid", "v21.0", "token") as graph:  # not resolvable
                return await graph.send_message("PNID", BODY)
        finally:
            server.close()

    assert asyncio.run(via_proxy()).wamid == "wamid.P"
    assert seen[0].startswith(b"POST http://graph.invalid/v21.0/PNID/messages ")

