"""Business-scoped user ids (BSUIDs) and usernames: sends through ``recipient`` and the webhooks'
BSUID fields, as whatsapp-usernames.md describes Meta since 2026."""
from __future__ import annotations

import base64
import json
import re
from typing import Any, Iterator

import pytest

from campaign.sandbox.config import SandboxConfig
from campaign.sandbox.recipients import user_id_of, username_of, wa_id_of_user, withholds_number
from sandbox_helpers import assert_meta_error, client_for, messages_path, send, template_message, text_message

BSUID_FORMAT = re.compile(r"^[A-Z]{2}\.(ENT\.)?[A-Za-z0-9]{1,128}$")
ANA = "+4915112345678"
ANA_WA_ID = "4915112345678"
ANA_USER_ID = user_id_of(ANA_WA_ID)
BEA = "+4915187654321"  # in username_numbers below: a username, and her number withheld
BEA_WA_ID = "4915187654321"
BEA_USER_ID = user_id_of(BEA_WA_ID)


def to_user(body: dict[str, Any], user_id: str) -> dict[str, Any]:
    """``body`` addressed by BSUID: ``recipient`` in place of ``to``."""
    body = {key: value for key, value in body.items() if key != "to"}
    body["recipient"] = user_id
    return body


def authentication(to: str) -> dict[str, Any]:
    body = template_message(to, name="login_code", params=["482913"])
    body["template"]["components"].append({"type": "button", "sub_type": "url", "index": "0",
                                           "parameters": [{"type": "text", "text": "482913"}]})
    return body


def keys_in(data: Any) -> Iterator[str]:
    """Every key of every object nested in ``data``."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield key
            yield from keys_in(value)
    elif isinstance(data, list):
        for item in data:
            yield from keys_in(item)


def values_of(receiver, wamid: str) -> dict[str, dict[str, Any]]:
    """The posted status ``value`` of each status of ``wamid``, by status."""
    return {v["statuses"][0]["status"]: v for v in receiver.status_values() if v["statuses"][0]["id"] == wamid}


def ledger(server) -> list[dict[str, Any]]:
    with client_for(server) as c:
        return c.get("/_sandbox/ledger").json()["entries"]


# --- the sandbox's BSUIDs --------------------------------------------------------------------------------

@pytest.mark.parametrize("wa_id,region", [
    ("12025550123", "US"), ("14165550123", "US"),  # +1 is the United States' calling code, Canada's too
    ("447700900123", "GB"), ("5511987654321", "BR"), ("919876543210", "IN"), ("4915112345678", "DE"),
    ("5215512345678", "MX"), ("80012345678", "ZZ"),  # +800: international freephone, no region
])
def test_a_bsuid_has_metas_format_and_the_numbers_region_and_leads_back_to_the_wa_id(wa_id, region) -> None:
    user_id = user_id_of(wa_id)
    assert BSUID_FORMAT.match(user_id)
    assert user_id.startswith(region + ".")
    assert wa_id not in user_id
    assert wa_id_of_user(user_id) == wa_id


@pytest.mark.parametrize("user_id", [
    "US.13491208655302741918",  # Meta's own (opaque) ids are not the sandbox's users
    "GB." + user_id_of("12025550123")[3:],  # the region of another country
    "US.ENT." + user_id_of("12025550123")[3:],  # a parent BSUID: the sandbox issues none
    "us.73210555202", "US.7abc", "US.7", "12025550123", "", "US.7" + "1" * 20,
])
def test_anything_but_a_sandbox_bsuid_leads_to_no_one(user_id) -> None:
    assert wa_id_of_user(user_id) is None


def test_a_username_is_made_of_the_last_four_digits() -> None:
    assert username_of("4915112345678") == "@user5678"


def test_numbers_are_withheld_when_listed_or_in_the_hashed_fraction() -> None:
    listed = SandboxConfig(username_numbers=["+49 151 87654321"])
    assert listed.username_numbers == frozenset({BEA_WA_ID})
    assert withholds_number(BEA_WA_ID, listed) and not withholds_number(ANA_WA_ID, listed)
    numbers = [f"4915100{n:06d}" for n in range(2000)]
    assert not any(withholds_number(n, SandboxConfig()) for n in numbers)
    assert all(withholds_number(n, SandboxConfig(username_fraction=1.0)) for n in numbers)
    half = SandboxConfig(username_fraction=0.5)
    withheld = [n for n in numbers if withholds_number(n, half)]
    assert 800 < len(withheld) < 1200
    assert withheld == [n for n in numbers if withholds_number(n, half)]  # the same users every time


def test_username_settings_come_from_a_file_and_from_patch(tmp_path, make_sandbox) -> None:
    path = tmp_path / "sandbox.toml"
    path.write_text('username_numbers = ["+4915187654321"]\nusername_fraction = 0.25\n')
    config = SandboxConfig.from_file(path)
    assert (config.username_numbers, config.username_fraction) == (frozenset({BEA_WA_ID}), 0.25)
    server = make_sandbox()
    with client_for(server) as c:
        answer = c.patch("/_sandbox/config", json={"username_numbers": ["+4915100000001", "4915100000002"],
                                                   "username_fraction": 0.5})
        assert answer.status_code == 200
        assert answer.json()["username_numbers"] == ["4915100000001", "4915100000002"]
        assert answer.json()["username_fraction"] == 0.5
        assert c.patch("/_sandbox/config", json={"username_fraction": 1.5}).status_code == 400


# --- sends through ``recipient`` ---------------------------------------------------------------------------

def test_a_send_through_recipient_is_answered_with_the_user_id_and_recorded_under_the_wa_id(sandbox) -> None:
    with client_for(sandbox) as c:
        response = c.post(messages_path(), json=to_user(template_message(ANA), ANA_USER_ID))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["contacts"] == [{"input": ANA_USER_ID, "user_id": ANA_USER_ID}]
    [message] = answer["messages"]
    assert message["id"].startswith("wamid.")
    [entry] = ledger(sandbox)
    assert (entry["outcome"], entry["wa_id"], entry["addressed_by"], entry["user_id"], entry["to"]) == (
        "accepted", ANA_WA_ID, "recipient", ANA_USER_ID, None)
    assert entry["wamid"] == message["id"]


def test_a_phone_send_is_recorded_as_addressed_by_to(client) -> None:
    assert client.post(messages_path(), json=template_message(ANA)).json()["contacts"] == [
        {"input": ANA, "wa_id": ANA_WA_ID}]
    [entry] = client.get("/_sandbox/ledger").json()["entries"]
    assert (entry["addressed_by"], entry["user_id"], entry["wa_id"]) == ("to", None, ANA_WA_ID)


def test_when_both_are_given_to_wins(client) -> None:
    body = template_message(ANA)
    body["recipient"] = BEA_USER_ID
    assert client.post(messages_path(), json=body).json()["contacts"] == [{"input": ANA, "wa_id": ANA_WA_ID}]
    [entry] = client.get("/_sandbox/ledger").json()["entries"]
    assert (entry["wa_id"], entry["addressed_by"]) == (ANA_WA_ID, "to")


@pytest.mark.parametrize("user_id", ["US.13491208655302741918", "not-a-bsuid", "DE.ENT.787654321151", 4915112345678])
def test_an_unknown_or_malformed_bsuid_is_code_100_and_nothing_is_sent(sandbox, user_id) -> None:
    with client_for(sandbox) as c:
        assert_meta_error(c.post(messages_path(), json=to_user(template_message(ANA), user_id)), 400, 100)
    figures = sandbox.figures()
    assert (figures.requests, figures.accepted, figures.errors_by_code) == (1, 0, {100: 1})
    [entry] = ledger(sandbox)
    assert (entry["addressed_by"], entry["user_id"], entry["wa_id"]) == ("recipient", str(user_id), None)


def test_recipient_type_business_scoped_user_id_is_code_100(client) -> None:
    body = to_user(template_message(ANA), ANA_USER_ID)
    body["recipient_type"] = "business_scoped_user_id"
    assert_meta_error(client.post(messages_path(), json=body), 400, 100)
    assert client.get("/_sandbox/figures").json()["accepted"] == 0


def test_a_bsuid_in_to_is_taken_for_a_phone_number_and_reaches_no_one(sandbox) -> None:
    """Meta answers 200 and drops it (a field report, whatsapp-usernames.md §3); the sandbox reads
    the digits as a number, too long to be on WhatsApp: accepted, then failed 131026."""
    send(sandbox, template_message("US.13491208655302741918"))
    [entry] = sandbox.call(sandbox.sandbox.ledger.snapshot)
    assert (entry.addressed_by, entry.failure_code) == ("to", 131026)


def test_an_authentication_template_through_recipient_is_131062_and_through_to_is_sent(sandbox) -> None:
    with client_for(sandbox) as c:
        error = assert_meta_error(c.post(messages_path(), json=to_user(authentication(ANA), ANA_USER_ID)), 400,
                                  131062)
        assert "BSUID recipients are not supported" in error["message"]
        assert c.post(messages_path(), json=authentication(ANA)).status_code == 200
    assert [(e["outcome"], e["error_code"], e["addressed_by"]) for e in ledger(sandbox)] == [
        ("error", 131062, "recipient"), ("accepted", None, "to")]


def test_the_pair_limit_counts_the_person_whichever_field_named_them(sandbox) -> None:
    with client_for(sandbox) as c:
        assert c.post(messages_path(), json=template_message(ANA)).status_code == 200
        assert_meta_error(c.post(messages_path(), json=to_user(template_message(ANA, params=["Ana", "A-2"]),
                                                               ANA_USER_ID)), 400, 131056)
    assert [e["wa_id"] for e in ledger(sandbox) if e["outcome"] == "accepted"] == [ANA_WA_ID]


def test_the_same_message_to_both_identities_is_a_duplicate_send(make_sandbox) -> None:
    server = make_sandbox(pair_interval=0)
    send(server, template_message(ANA))
    send(server, to_user(template_message(ANA), ANA_USER_ID))
    assert server.figures().duplicate_content == 1


def test_a_window_opened_by_the_phone_serves_a_free_form_send_by_bsuid(make_sandbox, receiver) -> None:
    server = make_sandbox(webhook_url=receiver.url)
    with client_for(server) as c:
        c.post("/_sandbox/inbound", json={"from": ANA, "text": "Hi"})
    wamid = send(server, to_user(text_message(ANA), ANA_USER_ID))
    receiver.wait_for(lambda r: "read" in values_of(r, wamid))
    assert "failed" not in values_of(receiver, wamid)
    assert server.figures().window_violations == 0


def test_a_marketing_stop_by_bsuid_holds_for_sends_to_the_phone(make_sandbox) -> None:
    server = make_sandbox()
    with client_for(server) as c:
        assert c.post("/_sandbox/marketing-preferences", json={"user_id": ANA_USER_ID, "value": "stop"}).json() == {
            "wa_id": ANA_WA_ID, "user_id": ANA_USER_ID, "value": "stop"}
    send(server, template_message(ANA, name="spring_sale", params=["Ana"]))
    assert server.figures().status_failures_by_code == {131050: 1}


# --- status webhooks -----------------------------------------------------------------------------------

def test_statuses_of_a_user_with_a_number_carry_both_ids_and_a_contact(make_sandbox, receiver) -> None:
    server = make_sandbox(webhook_url=receiver.url)
    wamid = send(server, template_message(ANA))
    receiver.wait_for(lambda r: len(values_of(r, wamid)) == 3)
    for status, value in values_of(receiver, wamid).items():
        [item] = value["statuses"]
        assert (item["recipient_id"], item["recipient_user_id"]) == (ANA_WA_ID, ANA_USER_ID), status
        assert value["contacts"] == [{"profile": {"name": "Sandbox User"}, "wa_id": ANA_WA_ID,
                                      "user_id": ANA_USER_ID}], status


def test_a_bsuid_send_to_a_user_with_a_number_still_reports_the_number(make_sandbox, receiver) -> None:
    server = make_sandbox(webhook_url=receiver.url)
    wamid = send(server, to_user(template_message(ANA), ANA_USER_ID))
    receiver.wait_for(lambda r: len(values_of(r, wamid)) == 3)
    for value in values_of(receiver, wamid).values():
        assert value["statuses"][0]["recipient_id"] == ANA_WA_ID
        assert value["contacts"][0]["wa_id"] == ANA_WA_ID


def test_statuses_of_a_username_user_sent_by_bsuid_never_show_the_number(make_sandbox, receiver) -> None:
    server = make_sandbox(webhook_url=receiver.url, username_numbers=[BEA])
    wamid = send(server, to_user(template_message(BEA), BEA_USER_ID))
    receiver.wait_for(lambda r: len(values_of(r, wamid)) == 3)
    values = values_of(receiver, wamid)
    for status, value in values.items():
        assert not {"wa_id", "recipient_id", "from"} & set(keys_in(value)), status
        assert value["statuses"][0]["recipient_user_id"] == BEA_USER_ID
        assert value["contacts"][0]["user_id"] == BEA_USER_ID
    assert values["sent"]["contacts"][0]["profile"] == {"name": "Sandbox User"}  # no username on sent
    assert values["delivered"]["contacts"][0]["profile"]["username"] == "@user4321"
    assert values["read"]["contacts"][0]["profile"]["username"] == "@user4321"
    assert not any(BEA_WA_ID in json.dumps(v) or BEA_WA_ID in base64.b64decode(wamid[10:] + "==").decode()
                   for v in values.values())  # not even inside the wamid


def test_a_send_to_a_username_users_phone_reports_the_number_it_named(make_sandbox, receiver) -> None:
    server = make_sandbox(webhook_url=receiver.url, username_numbers=[BEA])
    wamid = send(server, template_message(BEA))
    receiver.wait_for(lambda r: len(values_of(r, wamid)) == 3)
    for value in values_of(receiver, wamid).values():
        assert value["statuses"][0]["recipient_id"] == BEA_WA_ID
        assert "wa_id" not in value["contacts"][0]


def test_a_username_fraction_of_one_withholds_everyone(make_sandbox, receiver) -> None:
    server = make_sandbox(webhook_url=receiver.url)
    with client_for(server) as c:
        c.patch("/_sandbox/config", json={"username_fraction": 1.0})
    wamid = send(server, to_user(template_message(ANA), ANA_USER_ID))
    receiver.wait_for(lambda r: "read" in values_of(r, wamid))
    assert "recipient_id" not in values_of(receiver, wamid)["read"]["statuses"][0]


@pytest.mark.parametrize("by_bsuid", [False, True])
def test_a_failed_status_has_no_contacts_and_a_bsuid_only_when_sent_to_one(make_sandbox, receiver, by_bsuid) -> None:
    server = make_sandbox(webhook_url=receiver.url)
    body = text_message(ANA)  # free-form, no window: fails 131047
    wamid = send(server, to_user(body, ANA_USER_ID) if by_bsuid else body)
    receiver.wait_for(lambda r: "failed" in values_of(r, wamid))
    value = values_of(receiver, wamid)["failed"]
    assert "contacts" not in value
    [item] = value["statuses"]
    assert item["errors"][0]["code"] == 131047
    assert item["recipient_id"] == ANA_WA_ID
    assert ("recipient_user_id" in item) is by_bsuid
    if by_bsuid:
        assert item["recipient_user_id"] == ANA_USER_ID


# --- inbound messages and marketing preferences -----------------------------------------------------------

def test_an_inbound_message_from_a_username_user_has_no_from(make_sandbox, receiver) -> None:
    server = make_sandbox(webhook_url=receiver.url, username_numbers=[BEA])
    with client_for(server) as c:
        answer = c.post("/_sandbox/inbound", json={"from": BEA, "text": "STOP", "name": "Bea"}).json()
    assert (answer["wa_id"], answer["user_id"]) == (BEA_WA_ID, BEA_USER_ID)
    receiver.wait_for(lambda r: len(r.messages()) == 1)
    [value] = receiver.messages()
    assert value["contacts"] == [{"profile": {"name": "Bea", "username": "@user4321"}, "user_id": BEA_USER_ID}]
    [message] = value["messages"]
    assert "from" not in message
    assert (message["from_user_id"], message["text"]) == (BEA_USER_ID, {"body": "STOP"})


def test_an_inbound_button_tap_may_name_the_user_by_bsuid(make_sandbox, receiver) -> None:
    server = make_sandbox(webhook_url=receiver.url)
    with client_for(server) as c:
        answer = c.post("/_sandbox/inbound", json={"user_id": ANA_USER_ID, "button": {"payload": "STOP"}})
        assert answer.json()["wa_id"] == ANA_WA_ID
        assert c.post("/_sandbox/inbound", json={"user_id": "US.13491208655302741918", "text": "x"}).status_code == 400
    receiver.wait_for(lambda r: len(r.messages()) == 1)
    [value] = receiver.messages()
    assert value["contacts"] == [{"profile": {"name": "Sandbox User"}, "wa_id": ANA_WA_ID, "user_id": ANA_USER_ID}]
    [message] = value["messages"]
    assert (message["from"], message["from_user_id"], message["type"]) == (ANA_WA_ID, ANA_USER_ID, "button")


def test_a_marketing_stop_of_a_username_user_carries_the_user_id_only(make_sandbox, receiver) -> None:
    server = make_sandbox(webhook_url=receiver.url, username_numbers=[BEA])
    with client_for(server) as c:
        c.post("/_sandbox/marketing-preferences", json={"from": BEA, "value": "stop"})
    receiver.wait_for(lambda r: len(r.changes("user_preferences")) == 1)
    [(_, entry)] = receiver.changes("user_preferences")
    value = entry["changes"][0]["value"]
    [item] = value["user_preferences"]
    assert (item["user_id"], item["value"], item["category"]) == (BEA_USER_ID, "stop", "marketing_messages")
    assert "wa_id" not in set(keys_in(value))
    assert value["contacts"][0]["user_id"] == BEA_USER_ID


def test_a_marketing_stop_of_a_user_with_a_number_carries_both(make_sandbox, receiver) -> None:
    server = make_sandbox(webhook_url=receiver.url)
    with client_for(server) as c:
        c.post("/_sandbox/marketing-preferences", json={"from": ANA, "value": "stop"})
    receiver.wait_for(lambda r: len(r.changes("user_preferences")) == 1)
    [(_, entry)] = receiver.changes("user_preferences")
    value = entry["changes"][0]["value"]
    assert (value["user_preferences"][0]["wa_id"], value["user_preferences"][0]["user_id"]) == (ANA_WA_ID,
                                                                                                ANA_USER_ID)
    assert value["contacts"] == [{"profile": {"name": "Sandbox User"}, "wa_id": ANA_WA_ID, "user_id": ANA_USER_ID}]
