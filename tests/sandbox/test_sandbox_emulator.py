"""The live ``Sandbox`` object driven directly with a fake clock: decisions without a server."""
from __future__ import annotations

import json

from campaign.sandbox.config import SandboxConfig
from campaign.sandbox.emulator import Sandbox
from sandbox_helpers import FAST, PHONE_ID, template_message, text_message

AUTH = "Bearer " + FAST["access_token"]


class FakeClock:
    """Monotonic and wall time that only move when told."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.wall = 1_750_000_000.0

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.wall += seconds


def make(clock: FakeClock, **overrides) -> Sandbox:
    return Sandbox(SandboxConfig(**{**FAST, **overrides}), clock=lambda: clock.now, wall_clock=lambda: clock.wall)


def post(sandbox: Sandbox, body: dict) -> tuple[int, dict]:
    reply = sandbox.send(PHONE_ID, json.dumps(body).encode(), AUTH)
    return reply.status, json.loads(reply.encoded())


def code(sandbox: Sandbox, body: dict) -> int | None:
    status, answer = post(sandbox, body)
    return None if status == 200 else answer["error"]["code"]


def test_pair_interval_measured_on_the_sandbox_clock() -> None:
    clock = FakeClock()
    sandbox = make(clock, pair_interval=6.0)
    assert code(sandbox, template_message("+4915112345678")) is None
    clock.advance(5.999)
    assert code(sandbox, template_message("+4915112345678")) == 131056
    clock.advance(0.001)
    assert code(sandbox, template_message("+4915112345678")) is None


def test_throughput_window_slides_with_the_clock() -> None:
    clock = FakeClock()
    sandbox = make(clock, mps=3, pair_interval=0)
    codes = []
    for _ in range(4):
        codes.append(code(sandbox, template_message("+4915112345678")))
        clock.advance(0.25)
    assert codes == [None, None, None, 130429]  # at 0.75 s three are still in the window
    clock.advance(0.001)  # now 1.001 s after the first: it has left the window
    assert code(sandbox, template_message("+4915112345678")) is None
    assert sandbox.ledger.figures().max_accepted_in_any_second == 3


def test_the_window_closes_24_hours_after_the_last_inbound_message() -> None:
    clock = FakeClock()
    sandbox = make(clock, pair_interval=0)
    sandbox.inbound({"from": "+4915112345678", "text": "hi"})
    clock.advance(24 * 3600 - 1)
    post(sandbox, text_message("+4915112345678", text="inside"))
    clock.advance(1)
    post(sandbox, text_message("+4915112345678", text="outside"))
    inside, outside = sandbox.ledger.entries
    assert (inside.window_open, inside.failure_code) == (True, None)
    assert (outside.window_open, outside.failure_code, outside.fate) == (False, 131047, "failed")
    assert sandbox.ledger.figures().window_violations == 1


def test_templates_need_no_window() -> None:
    clock = FakeClock()
    sandbox = make(clock)
    post(sandbox, template_message("+4915112345678"))
    [entry] = sandbox.ledger.entries
    assert entry.outcome == "accepted" and entry.window_open is None and entry.failure_code is None


def test_hashed_fractions_make_some_numbers_unreachable() -> None:
    clock = FakeClock()
    sandbox = make(clock, not_on_whatsapp_fraction=0.25, pair_interval=0, mps=10_000)
    for n in range(400):
        post(sandbox, template_message(f"+49151{n:08d}"))
    failures = sandbox.ledger.figures().status_failures_by_code
    assert 60 <= failures.get(131026, 0) <= 140
    again = make(FakeClock(), not_on_whatsapp_fraction=0.25, pair_interval=0, mps=10_000)
    for n in range(400):
        post(again, template_message(f"+49151{n:08d}"))
    assert [e.failure_code for e in again.ledger.entries] == [e.failure_code for e in sandbox.ledger.entries]


def test_mexican_numbers_answer_the_canonical_wa_id() -> None:
    status, answer = post(make(FakeClock()), template_message("+52 55 1234 5678"))
    assert status == 200
    assert answer["contacts"] == [{"input": "+52 55 1234 5678", "wa_id": "5215512345678"}]
