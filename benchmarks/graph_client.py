"""Graph client benchmark: CPU per request of the engine's client against httpx.

    python benchmarks/graph_client.py                 # 300 requests/s for 10 s, 50-100 ms latency
    python benchmarks/graph_client.py --rate 600

Sends template messages to the sandbox (its own process) at an even rate, once with the
engine's `GraphClient` (aiohttp) and once with httpx set up as well as it measured here
(many clients of two connections: httpcore's pool assignment is quadratic in connections),
and prints the client process's CPU per request for each. This is why the Graph client is
on aiohttp (`campaign/graph.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from dispatch_helpers import SENDER, TOKEN, sandbox_process  # noqa: E402

from campaign.graph import GraphClient  # noqa: E402


def body(i: int) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp", "to": f"+4915123{i:06d}", "type": "template",
        "template": {"name": "order_update", "language": {"code": "en_US"}, "components": [
            {"type": "body", "parameters": [{"type": "text", "text": f"N{i}"}, {"type": "text", "text": f"A-{i}"}]}]},
        "biz_opaque_callback_data": f"m{i}",
    }


async def paced(send: Callable[[int], Awaitable[None]], rate: int, seconds: float) -> tuple[float, float]:
    """(requests/s reached, ms of CPU per request) for `rate` x `seconds` requests sent evenly."""
    count = int(rate * seconds)
    tasks = []
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(count):
        if (delay := wall + i / rate - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(i)))
    await asyncio.gather(*tasks)
    return count / (time.perf_counter() - wall), (time.process_time() - cpu) / count * 1e3


async def with_graph_client(url: str, rate: int, seconds: float) -> tuple[float, float]:
    async with GraphClient(url, "v21.0", TOKEN, connections=rate) as client:
        async def send(i: int) -> None:
            await client.send_message(SENDER, body(i))

        return await paced(send, rate, seconds)


async def with_httpx(url: str, rate: int, seconds: float) -> tuple[float, float]:
    limits = httpx.Limits(max_connections=2, max_keepalive_connections=2)
    clients = [httpx.AsyncClient(base_url=f"{url}/v21.0/", headers={"Authorization": f"Bearer {TOKEN}"}, limits=limits)
               for _ in range(64)]
    busy = [0] * len(clients)

    async def send(i: int) -> None:
        index = min(range(len(busy)), key=busy.__getitem__)
        busy[index] += 1
        try:
            response = await clients[index].post(f"{SENDER}/messages", json=body(i))
            response.raise_for_status()
            response.json()
        finally:
            busy[index] -= 1

    try:
        return await paced(send, rate, seconds)
    finally:
        for client in clients:
            await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, \
            sandbox_process(Path(folder), mps=1_000_000, pair_interval=0, latency_ms=[50, 100]) as sandbox:
        for name, run in (("GraphClient (aiohttp)", with_graph_client), ("httpx, 64 clients x 2", with_httpx)):
            reached, cpu = asyncio.run(run(sandbox.url, args.rate, args.seconds))
            print(f"{name:24} {reached:6.0f} requests/s, {cpu:.2f} ms CPU per request")


if __name__ == "__main__":
    main()
