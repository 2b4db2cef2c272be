"""How many send requests per second the sandbox answers, and the CPU it spends on each.

The dispatcher benchmark needs the sandbox not to be the bottleneck at 1,000 MPS. This starts
``python -m campaign.sandbox`` as a subprocess (latency 0, no throughput or pair limit), hammers
``/messages`` from several client processes, each running asyncio with ~20 httpx connections,
and prints requests/second answered, the server's CPU per request and the clients' CPU.

    .venv/bin/python benchmarks/sandbox_throughput.py [--seconds 10] [--clients 2] [--connections 20]
                                                      [--client httpx|raw]

On a small machine clients and server share the cores, so the server's CPU per request (and
the ceiling it implies, 1 / cpu-per-request) is the figure that says whether it can keep up.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path
import time

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from measure import free_port, process_cpu_seconds  # noqa: E402

TOKEN = "bench-token"




async def hammer(base_url: str, client_index: int, connections: int, seconds: float) -> dict[str, float]:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    counts = {"ok": 0, "error": 0, "other": 0}
    stop_at = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=httpx.Timeout(30.0),
                                 headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        async def worker(worker_index: int) -> None:
            n = 0
            while time.monotonic() < stop_at:
                n += 1
                response = await client.post("/v21.0/106540352242922/messages",
                                             json=send_body(client_index, worker_index, n))
                if response.status_code == 200:
                    counts["ok"] += 1
                elif response.status_code >= 400:
                    counts["error"] += 1
                else:
                    counts["other"] += 1
        started = time.monotonic()
        await asyncio.gather(*(worker(i) for i in range(connections)))
        counts["elapsed"] = time.monotonic() - started
    return counts


def send_body(client_index: int, worker_index: int, n: int) -> dict:
    number = f"+49151{client_index:02d}{worker_index:03d}{n % 10000:04d}"
    return {"messaging_product": "whatsapp", "recipient_type": "individual", "to": number,
            "type": "template", "biz_opaque_callback_data": f"{client_index}-{worker_index}-{n}",
            "template": {"name": "order_update", "language": {"code": "en_US"},
                         "components": [{"type": "body", "parameters": [
                             {"type": "text", "text": "Ana"}, {"type": "text", "text": f"A-{n}"}]}]}}


async def hammer_raw(base_url: str, client_index: int, connections: int, seconds: float) -> dict[str, float]:
    """The same load from a minimal keep-alive HTTP/1.1 client (~0.15 ms CPU per request instead of
    httpx's 1.5-3 ms), so that on two cores the server, not the client, is what gets measured."""
    host, port = base_url.removeprefix("http://").split(":")
    counts = {"ok": 0, "error": 0, "other": 0}
    stop_at = time.monotonic() + seconds

    async def worker(worker_index: int) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        n = 0
        while time.monotonic() < stop_at:
            n += 1
            body = json.dumps(send_body(client_index, worker_index, n)).encode()
            writer.write(b"POST /v21.0/106540352242922/messages HTTP/1.1\r\nHost: sandbox\r\n"
                         b"Authorization: Bearer " + TOKEN.encode() + b"\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body) + body)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            at = head.lower().index(b"content-length:")
            await reader.readexactly(int(head[at + 15:head.index(b"\r\n", at)]))
            counts["ok" if status == 200 else "error" if status >= 400 else "other"] += 1
        writer.close()

    started = time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(connections)))
    counts["elapsed"] = time.monotonic() - started
    return counts


def client_main(base_url: str, client_index: int, connections: int, seconds: float, queue: multiprocessing.Queue,
                kind: str = "httpx") -> None:
    run = hammer if kind == "httpx" else hammer_raw
    cpu_before = time.process_time()
    counts = asyncio.run(run(base_url, client_index, connections, seconds))
    counts["cpu"] = time.process_time() - cpu_before
    queue.put(counts)


def run_phase(base_url: str, server_pid: int, kind: str, clients: int, connections: int, seconds: float) -> None:
    """Hammer the sandbox with ``clients`` processes of ``kind`` and print what it answered."""
    httpx.post(f"{base_url}/_sandbox/reset", timeout=30)
    cpu_before = process_cpu_seconds(server_pid)
    queue: multiprocessing.Queue = multiprocessing.Queue()
    workers = [multiprocessing.Process(target=client_main, args=(base_url, i, connections, seconds, queue, kind))
               for i in range(clients)]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    results = [queue.get() for _ in workers]
    for worker in workers:
        worker.join()
    wall = time.monotonic() - started
    server_cpu = process_cpu_seconds(server_pid) - cpu_before
    figures = httpx.get(f"{base_url}/_sandbox/figures", timeout=30).json()

    answered = sum(r["ok"] + r["error"] + r["other"] for r in results)
    elapsed = max(r["elapsed"] for r in results)
    client_cpu = sum(r["cpu"] for r in results)
    per_request_ms = 1000 * server_cpu / answered
    print(f"[{kind} clients: {clients} processes x {connections} connections, {elapsed:.1f} s]")
    print(f"  answered: {answered / elapsed:,.0f} requests/s ({answered:,} requests, "
          f"{sum(r['ok'] for r in results):,} accepted, {sum(r['error'] for r in results):,} errors)")
    print(f"  server CPU: {server_cpu:.1f} s = {100 * server_cpu / wall:.0f}% of one core, {per_request_ms:.3f} ms "
          f"per request -> ceiling ~{1000 / per_request_ms:,.0f} requests/s on one core")
    print(f"  client CPU: {client_cpu:.1f} s ({1000 * client_cpu / answered:.3f} ms per request)")
    print("  ledger: " + json.dumps({k: figures[k] for k in ("requests", "accepted", "max_in_any_second",
                                                            "duplicate_sends", "errors_by_code")}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--connections", type=int, default=20, help="concurrent connections per client")
    parser.add_argument("--client", choices=("httpx", "raw", "both"), default="both",
                        help="httpx (as the engine sends), a minimal raw HTTP/1.1 client (cheap: measures the "
                             "server), or both one after the other (default)")
    args = parser.parse_args()

    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, WA_ACCESS_TOKEN=TOKEN)
    server = subprocess.Popen(
        [sys.executable, "-m", "campaign.sandbox", "--port", str(port), "--latency-ms", "0",
         "--mps", "100000", "--pair-interval", "0", "--log-level", "WARNING"], env=env)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{base_url}/_sandbox/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                print("error: the sandbox did not start", file=sys.stderr)
                return 1
            time.sleep(0.05)
        print(f"sandbox: python -m campaign.sandbox, latency 0, mps 100000, pair interval 0; "
              f"{os.cpu_count()} cores shared by server and clients")
        for kind in (("httpx", "raw") if args.client == "both" else (args.client,)):
            run_phase(base_url, server.pid, kind, args.clients, args.connections, args.seconds)
    finally:
        server.terminate()
        server.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
