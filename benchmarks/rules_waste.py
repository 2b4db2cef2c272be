"""Meta's rules benchmark: what a marketing campaign wastes on the people Meta refuses.

    python benchmarks/rules_waste.py                         # the engine of this checkout
    python benchmarks/rules_waste.py --engine /tmp/before    # the engine of another checkout

A 10,000-recipient MARKETING campaign (template `spring_sale`) against the sandbox (its own
process, always this checkout's: the same Meta for every engine), where 5% of the recipients
are marketing-limited (131049 once, then they accept a marketing template again:
`marketing_limited_times=1`) and 2% are not on WhatsApp (131026); the portfolio's messaging
limit is TIER_100K (the sandbox's default, TIER_2K, would stop the campaign at 2,000). Meta's status webhooks go
to the engine's receiver (`campaign webhooks`, a process, with its reconciler), and one
`campaign worker` sends at 200 MPS with `CAMPAIGN_MARKETING_RETRY_AFTER=5` (Meta's day,
shortened), until the campaign settles (nothing queued or sending, no webhook left to
deliver, every stored event applied) or the time limit.

Every engine process (create, import, launch, worker, receiver) runs from `--engine`'s
checkout, put first on PYTHONPATH. An older checkout needs its migrations reachable as
`campaign.migrations`, as the editable install maps them:
`ln -s /tmp/before/migrations /tmp/before/campaign/migrations`. An engine that does not know
a setting (CAMPAIGN_MARKETING_RETRY_AFTER) ignores it: that is the comparison.

Prints messages delivered or read, messages failed (and skipped) by reason, the requests Meta
refused or accepted and then failed (the waste), total requests and the wall time, as a block
to paste into a note.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from measure import free_port

HERE = Path(__file__).resolve().parent.parent
SENDER, WABA = "106540352242922", "102290129340398"
TOKEN, SECRET, VERIFY = "rules-waste-token", "rules-waste-secret", "rules-waste-verify"
NAME, TEMPLATE = "rules_waste", "spring_sale"


def numbers(n: int) -> list[str]:
    return [f"+4915123{i:06d}" for i in range(n)]


def wait_for(url: str, process: subprocess.Popen[bytes], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.05)


def describe(engine: Path) -> str:
    try:
        commit = subprocess.run(["git", "-C", str(engine), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(engine), "status", "--porcelain", "--untracked-files=no",
                                "--", "campaign", "migrations"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return str(engine)
    return f"{engine} @ {commit}" + (" + uncommitted changes to the engine" if dirty else "")


class Run:
    """The engine's processes and the database they share."""

    def __init__(self, engine: Path, folder: Path, url: str, sandbox_url: str, mps: int, retry_after: float) -> None:
        self.folder, self.url = folder, url
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(engine), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                    "CAMPAIGN_DATABASE_URL": url, "WA_API_BASE_URL": sandbox_url, "WA_ACCESS_TOKEN": TOKEN,
                    "WA_PHONE_NUMBER_ID": SENDER, "WA_BUSINESS_ACCOUNT_ID": WABA, "WA_APP_SECRET": SECRET,
                    "WA_VERIFY_TOKEN": VERIFY, "CAMPAIGN_MPS": str(mps),
                    "CAMPAIGN_MARKETING_RETRY_AFTER": f"{retry_after:g}"}
        self.engine = create_engine(url)

    def cli(self, *args: str) -> None:
        done = subprocess.run([sys.executable, "-m", "campaign", *args], env=self.env, cwd=self.folder,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"campaign {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.folder / f"{args[0]}.log", "wb")
        return subprocess.Popen([sys.executable, "-m", "campaign", *args], env=self.env, cwd=self.folder,
                                stdout=log, stderr=subprocess.STDOUT)

    def query(self, sql: str) -> list[Sequence[Any]]:
        with self.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql))]

    def states(self) -> dict[str, int]:
        return dict(self.query("SELECT state, COUNT(*) FROM messages GROUP BY state"))  # type: ignore[arg-type]

    def unprocessed_events(self) -> int:
        return self.query("SELECT COUNT(*) FROM webhook_events WHERE processed_at IS NULL")[0][0]


def repeats(entries: list[dict[str, Any]]) -> tuple[dict[str, int], int]:
    """Accepted sends of a message (its callback data) that reached Meta before: by the code
    Meta failed every earlier one with (a 131049 wait is tried again), and true duplicates (an
    earlier one was not failed). The sandbox's own `duplicate_sends` counts both."""
    earlier: dict[str, list[int | None]] = {}
    resends: dict[str, int] = {}
    duplicates = 0
    for entry in entries:
        key = entry["callback_data"]
        if entry["outcome"] != "accepted" or key is None:
            continue
        before = earlier.setdefault(key, [])
        if before and all(code is not None for code in before):
            resends[str(before[-1])] = resends.get(str(before[-1]), 0) + 1
        elif before:
            duplicates += 1
        before.append(entry["failure_code"])
    return resends, duplicates


def settled(run: Run, sandbox_url: str) -> bool:
    """Nothing queued or sending, Meta has nothing left to post, every stored event applied; the
    states read again last, as applying an event can queue a message again (a 131049 wait)."""
    if {"queued", "sending"} & run.states().keys():
        return False
    if not httpx.get(f"{sandbox_url}/_sandbox/webhooks", timeout=5).json()["idle"]:
        return False
    return run.unprocessed_events() == 0 and not {"queued", "sending"} & run.states().keys()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", type=Path, default=HERE, help="checkout whose engine runs (default: this one)")
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--mps", type=int, default=200)
    parser.add_argument("--latency", default="150-250", help="the sandbox's answer time, ms")
    parser.add_argument("--limited", type=float, default=0.05, help="share of marketing-limited recipients")
    parser.add_argument("--unreachable", type=float, default=0.02, help="share of recipients not on WhatsApp")
    parser.add_argument("--retry-after", type=float, default=5.0, help="CAMPAIGN_MARKETING_RETRY_AFTER, seconds")
    parser.add_argument("--limit", type=float, default=150.0, help="give up waiting after this many seconds")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    engine = args.engine.resolve()
    if not (engine / "campaign" / "__init__.py").is_file():
        parser.error(f"{engine} holds no campaign package")

    with tempfile.TemporaryDirectory(prefix="rules-waste-") as name:
        folder = Path(name)
        with open(folder / "recipients.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["phone", "name"])
            writer.writerows([number, f"N{i}"] for i, number in enumerate(numbers(args.messages)))

        sandbox_port, receiver_port = free_port(), free_port()
        low, _, high = args.latency.partition("-")
        config = {"access_token": TOKEN, "app_secret": SECRET, "phone_number_id": SENDER, "waba_id": WABA,
                  "mps": args.mps, "latency_ms": [float(low), float(high or low)], "seed": args.seed,
                  "webhook_url": f"http://127.0.0.1:{receiver_port}/webhook",
                  "not_on_whatsapp_fraction": args.unreachable, "marketing_limited_fraction": args.limited,
                  "marketing_limited_times": 1,
                  # A business sending 10,000 a day has a messaging limit above the default TIER_2K.
                  "health": {"whatsapp_business_manager_messaging_limit": "TIER_100K",
                             "messaging_limit_tier": "TIER_100K"}}
        (folder / "sandbox.json").write_text(json.dumps(config))
        sandbox_env = {**os.environ, "PYTHONPATH": str(HERE)}  # Meta is this checkout's sandbox, whatever the engine
        sandbox = subprocess.Popen([sys.executable, "-m", "campaign.sandbox", "--port", str(sandbox_port),
                                    "--config", str(folder / "sandbox.json"), "--log-level", "WARNING"],
                                   env=sandbox_env, cwd=folder)
        sandbox_url = f"http://127.0.0.1:{sandbox_port}"
        run = Run(engine, folder, f"sqlite:///{folder}/campaign.db", sandbox_url, args.mps, args.retry_after)
        processes: list[subprocess.Popen[bytes]] = []
        try:
            wait_for(f"{sandbox_url}/_sandbox/health", sandbox, "the sandbox")
            run.cli("db", "upgrade")
            run.cli("create", NAME, "--template", TEMPLATE, "--language", "en_US", "--param", "name",
                    "--category", "marketing")
            run.cli("import", NAME, str(folder / "recipients.csv"))
            run.cli("launch", NAME, "--detach")
            receiver = run.start("webhooks", "--port", str(receiver_port))
            processes.append(receiver)
            wait_for(f"http://127.0.0.1:{receiver_port}/health", receiver, "the receiver")

            start = time.perf_counter()
            processes.append(run.start("worker"))
            done = False
            while time.perf_counter() - start < args.limit:
                time.sleep(0.5)
                if any(p.poll() is not None for p in processes):
                    raise RuntimeError(f"an engine process exited; see the logs in {folder}")
                if settled(run, sandbox_url):
                    done = True
                    break
            wall = time.perf_counter() - start
            figures = httpx.get(f"{sandbox_url}/_sandbox/figures", params={"phone_number_id": SENDER}).json()
            ledger = httpx.get(f"{sandbox_url}/_sandbox/ledger", params={"phone_number_id": SENDER}, timeout=60).json()
            resends, duplicates = repeats(ledger["entries"])
            states = run.states()
            failed = run.query("SELECT error_code, MIN(error_title), COUNT(*) FROM messages WHERE state = 'failed' "
                               "GROUP BY error_code ORDER BY COUNT(*) DESC")
            skipped = run.query("SELECT error_title, COUNT(*) FROM messages WHERE state = 'skipped' "
                                "GROUP BY error_title ORDER BY COUNT(*) DESC")
        finally:
            for process in reversed(processes):
                process.terminate()
            for process in processes:
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
            sandbox.terminate()
            sandbox.wait()
            run.engine.dispose()

    limited_note = "accepted again after one refusal"
    late = figures["status_failures_by_code"]
    refused = figures["errors_by_code"]
    accepted_then_failed = sum(late.values())
    refused_total = figures["requests"] - figures["accepted"]

    def by_code(counts: dict[str, int]) -> str:
        return ", ".join(f"{code} {n:,}" for code, n in sorted(counts.items(), key=lambda kv: -kv[1])) or "none"

    print(f"rules_waste: {args.messages:,} marketing ({TEMPLATE}), {args.limited:.0%} marketing-limited ({limited_note}), "
          f"{args.unreachable:.0%} not on WhatsApp; {args.mps} MPS, latency {args.latency} ms, "
          f"CAMPAIGN_MARKETING_RETRY_AFTER={args.retry_after:g}")
    print(f"engine: {describe(engine)}")
    print(f"settled: {'yes' if done else f'NO, stopped at the {args.limit:g} s limit'}; wall {wall:.1f} s")
    print(f"delivered or read: {states.get('delivered', 0) + states.get('read', 0):,} "
          f"(delivered {states.get('delivered', 0):,}, read {states.get('read', 0):,}); "
          f"sent (no receipt) {states.get('sent', 0):,}")
    print(f"failed: {sum(n for *_, n in failed):,}" + "".join(f"\n  {code}: {n:,} ({title})" for code, title, n in failed))
    if skipped:
        print(f"skipped: {sum(n for _, n in skipped):,}" + "".join(f"\n  {n:,}: {title}" for title, n in skipped))
    others = {k: v for k, v in states.items() if k not in ("delivered", "read", "sent", "failed", "skipped")}
    if others:
        print("other states: " + ", ".join(f"{k} {v:,}" for k, v in sorted(others.items())))
    print(f"waste (Meta refused or failed): {accepted_then_failed + refused_total:,} = accepted then failed "
          f"{accepted_then_failed:,} ({by_code(late)}) + refused {refused_total:,} ({by_code(refused)})")
    print(f"requests: {figures['requests']:,} (accepted {figures['accepted']:,}; sent again after Meta failed them "
          f"{by_code(resends)}; duplicates {duplicates})")


if __name__ == "__main__":
    main()
