"""Meta's per-user marketing rules: the per-user limit (131049, retried later) and no marketing to the US."""
from __future__ import annotations

import json

import pytest

from campaign.sandbox.config import SandboxConfig
from campaign.sandbox.emulator import Sandbox
from sandbox_helpers import FAST, PHONE_ID, send, template_message

AUTH = "Bearer " + FAST["access_token"]
LIMITED = "+4915100000009"


def make(**overrides) -> Sandbox:
    return Sandbox(SandboxConfig(**{**FAST, "pair_interval": 0, **overrides}))


def marketing(to: str) -> dict:
    return template_message(to, name="spring_sale", params=["Ana"])


def utility(to: str) -> dict:
    return template_message(to)


def authentication(to: str) -> dict:
    body = template_message(to, name="login_code", params=["482913"])
    body["template"]["components"].append({"type": "button", "sub_type": "url", "index": "0",
                                           "parameters": [{"type": "text", "text": "482913"}]})
    return body


def failure_codes(sandbox: Sandbox, *bodies: dict) -> list[int | None]:
    """The status-webhook failure of each send (None: delivered); every send must be accepted."""
    codes = []
    for body in bodies:
        reply = sandbox.send(PHONE_ID, json.dumps(body).encode(), AUTH)
        assert reply.status == 200, reply.encoded()
        codes.append(sandbox.ledger.entries[-1].failure_code)
    return codes


def statuses_of(receiver, wamid: str) -> list[dict]:
    return [s for s in receiver.statuses() if s["id"] == wamid]


def test_a_limited_user_gets_200_then_a_failed_webhook_with_131049(make_sandbox, receiver) -> None:
    server = make_sandbox(webhook_url=receiver.url, marketing_limited=[LIMITED])
    wamid = send(server, marketing(LIMITED))
    receiver.wait_for(lambda r: statuses_of(r, wamid))
    [status] = statuses_of(receiver, wamid)
    assert status["status"] == "failed" and status["errors"][0]["code"] == 131049


def test_a_limited_user_is_delivered_on_the_try_after_marketing_limited_times(make_sandbox, receiver) -> None:
    server = make_sandbox(webhook_url=receiver.url, marketing_limited=[LIMITED], marketing_limited_times=1,
                          pair_interval=0)
    first, retry = send(server, marketing(LIMITED)), send(server, marketing(LIMITED))
    receiver.wait_for(lambda r: statuses_of(r, first) and "read" in [s["status"] for s in statuses_of(r, retry)])
    assert [s["status"] for s in statuses_of(receiver, first)] == ["failed"]
    assert [s["status"] for s in statuses_of(receiver, retry)] == ["sent", "delivered", "read"]


@pytest.mark.parametrize("times,expected", [
    (None, [131049, 131049, 131049, 131049]),  # the default: every attempt fails
    (0, [None, None, None, None]),
    (1, [131049, None, None, None]),
    (3, [131049, 131049, 131049, None]),
])
def test_marketing_limited_times_counts_the_failures_before_delivery(times, expected) -> None:
    sandbox = make(marketing_limited=[LIMITED], marketing_limited_times=times)
    assert failure_codes(sandbox, *[marketing(LIMITED)] * 4) == expected


def test_the_failures_are_counted_per_user() -> None:
    other = "+4915100000008"
    sandbox = make(marketing_limited=[LIMITED, other], marketing_limited_times=1)
    assert failure_codes(sandbox, marketing(LIMITED), marketing(LIMITED), marketing(other)) == [131049, None, 131049]


def test_a_hashed_fraction_of_users_is_limited_too() -> None:
    sandbox = make(marketing_limited_fraction=1.0, marketing_limited_times=1)
    assert failure_codes(sandbox, marketing("+4915100000001"), marketing("+4915100000001")) == [131049, None]


@pytest.mark.parametrize("build", [utility, authentication], ids=["utility", "authentication"])
def test_utility_and_authentication_templates_ignore_the_marketing_limit(build) -> None:
    sandbox = make(marketing_limited=[LIMITED], marketing_limited_times=1)
    assert failure_codes(sandbox, build(LIMITED), build(LIMITED), marketing(LIMITED)) == [None, None, 131049]


def test_reset_forgets_the_failures_counted() -> None:
    sandbox = make(marketing_limited=[LIMITED], marketing_limited_times=1)
    failure_codes(sandbox, marketing(LIMITED))
    sandbox.reset()
    assert failure_codes(sandbox, marketing(LIMITED)) == [131049]


@pytest.mark.parametrize("number,build,code", [
    ("+12025550123", marketing, 131049),  # Washington DC
    ("+13125551234", marketing, 131049),  # Chicago
    ("+14165550123", marketing, None),  # Toronto: +1, but Canada
    ("+16045551234", marketing, None),  # Vancouver
    ("+18765550123", marketing, None),  # Jamaica
    ("+15550783881", marketing, None),  # a fictional 555 number has no region
    ("+12025550123", utility, None),
    ("+12025550123", authentication, None),
])
def test_marketing_to_united_states_numbers_fails_131049_by_region(number, build, code) -> None:
    assert failure_codes(make(), build(number)) == [code]


def test_the_us_rule_can_be_turned_off() -> None:
    assert failure_codes(make(block_us_marketing=False), marketing("+12025550123")) == [None]


def test_us_marketing_is_accepted_then_fails_by_webhook(make_sandbox, receiver) -> None:
    server = make_sandbox(webhook_url=receiver.url)
    wamid = send(server, marketing("+12025550123"))
    receiver.wait_for(lambda r: statuses_of(r, wamid))
    [status] = statuses_of(receiver, wamid)
    assert (status["status"], status["errors"][0]["code"], status["recipient_id"]) == ("failed", 131049, "12025550123")


def test_a_us_user_stays_refused_whatever_marketing_limited_times_allows() -> None:
    us = "+12025550123"
    sandbox = make(marketing_limited=[us], marketing_limited_times=1)
    assert failure_codes(sandbox, marketing(us), marketing(us)) == [131049, 131049]
