"""The Graph API endpoints of the sandbox, held against a plain httpx client."""
from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from campaign.sandbox.templates import Template, default_templates
from sandbox_helpers import (PHONE_ID, TOKEN, VERSION, WABA_ID, assert_meta_error, client_for, messages_path,
                             template_message, text_message)


# --- token ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_a_missing_or_wrong_token_is_401_code_190(sandbox, token) -> None:
    with client_for(sandbox, token) as c:
        response = c.post(messages_path(), json=template_message("+4915112345678"))
    assert_meta_error(response, 401, 190)
    assert sandbox.figures().errors_by_code == {190: 1}


def test_with_no_token_configured_any_bearer_token_is_accepted(make_sandbox) -> None:
    server = make_sandbox(access_token=None)
    with client_for(server, "anything") as c:
        assert c.post(messages_path(), json=template_message("+4915112345678")).status_code == 200
    with client_for(server, None) as c:
        assert_meta_error(c.post(messages_path(), json=template_message("+4915112345679")), 401, 190)


def test_the_token_may_come_as_a_query_parameter(sandbox) -> None:
    with client_for(sandbox, None) as c:
        response = c.post(messages_path(), params={"access_token": TOKEN}, json=template_message("+4915112345678"))
    assert response.status_code == 200


# --- validation ---------------------------------------------------------------------------------------

def test_a_body_that_is_not_json_is_code_100(client) -> None:
    response = client.post(messages_path(), content=b"{not json", headers={"Content-Type": "application/json"})
    assert_meta_error(response, 400, 100)


def test_a_wrong_messaging_product_is_code_100(client) -> None:
    body = text_message("+4915112345678") | {"messaging_product": "sms"}
    assert_meta_error(client.post(messages_path(), json=body), 400, 100)


def test_an_unknown_template_is_404_code_132001(client) -> None:
    response = client.post(messages_path(), json=template_message("+4915112345678", name="nope", params=None))
    assert_meta_error(response, 404, 132001)


def test_a_pending_template_is_404_code_132001(client) -> None:
    response = client.post(messages_path(), json=template_message("+4915112345678", name="winter_promo",
                                                                  params=["Ana"]))
    assert_meta_error(response, 404, 132001)


def test_a_template_in_another_language_is_404_code_132001(client) -> None:
    response = client.post(messages_path(), json=template_message("+4915112345678", language="de"))
    assert_meta_error(response, 404, 132001)


def test_a_wrong_number_of_body_parameters_is_400_code_132000(client) -> None:
    response = client.post(messages_path(), json=template_message("+4915112345678", params=["only one"]))
    assert_meta_error(response, 400, 132000)


# --- success ------------------------------------------------------------------------------------------------

def test_an_accepted_send_answers_metas_body_with_a_unique_wamid(client) -> None:
    wamids = set()
    for n in range(20):
        number = f"+49 151 0000 {n:04d}"
        response = client.post(messages_path(), json=template_message(number))
        assert response.status_code == 200
        body = response.json()
        assert set(body) == {"messaging_product", "contacts", "messages"}
        assert body["messaging_product"] == "whatsapp"
        assert body["contacts"] == [{"input": number, "wa_id": f"491510000{n:04d}"}]
        [message] = body["messages"]
        assert message["message_status"] == "accepted"
        assert message["id"].startswith("wamid.")
        wamids.add(message["id"])
    assert len(wamids) == 20


def test_the_ledger_records_what_was_asked_and_answered(sandbox, client) -> None:
    client.post(messages_path(), json=template_message("+4915112345678", callback="outbox-1"))
    client.post(messages_path(), json=template_message("+4915112345678", callback="outbox-2"))
    first, second = sandbox.call(sandbox.sandbox.ledger.snapshot)
    assert (first.outcome, first.http_status, first.error_code) == ("accepted", 200, None)
    assert (first.phone_number_id, first.to, first.wa_id, first.type, first.template_name, first.callback_data) == (
        PHONE_ID, "+4915112345678", "4915112345678", "template", "order_update", "outbox-1")
    assert first.wamid and first.monotonic <= second.monotonic and first.wall > 1.6e9
    assert (second.outcome, second.error_code) == ("error", 131056)


# --- limits ----------------------------------------------------------------------------------------------------

def test_a_burst_of_200_concurrent_sends_is_throttled_at_the_cap(make_sandbox) -> None:
    server = make_sandbox(mps=80, latency_ms=(5, 15))

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=30,
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as c:
            return await asyncio.gather(*(c.post(messages_path(), json=template_message(f"+49151{n:08d}"))
                                          for n in range(200)))

    responses = asyncio.run(burst())
    throttled = [r for r in responses if r.status_code == 400]
    for response in throttled:
        assert_meta_error(response, 400, 130429)
    figures = server.figures()
    assert figures.accepted + figures.throttled == 200
    assert figures.throttled == len(throttled) > 0
    assert 80 <= figures.accepted
    assert figures.max_accepted_in_any_second <= 80
    assert figures.max_in_any_second > 80


def test_the_cap_is_per_sender_number(make_sandbox) -> None:
    server = make_sandbox(mps=2)
    with client_for(server) as c:
        codes = [c.post(messages_path(phone), json=template_message(f"+49151{n:08d}")).status_code
                 for phone in ("111", "222") for n in range(3)]
    assert codes == [200, 200, 400, 200, 200, 400]


def test_a_second_message_to_one_recipient_within_the_pair_interval_is_131056(make_sandbox) -> None:
    server = make_sandbox(pair_interval=0.3)
    with client_for(server) as c:
        assert c.post(messages_path(), json=template_message("+4915112345678")).status_code == 200
        assert_meta_error(c.post(messages_path(), json=template_message("+4915112345678")), 400, 131056)
        assert c.post(messages_path(), json=template_message("+4915112345679")).status_code == 200
        time.sleep(0.35)
        assert c.post(messages_path(), json=template_message("+4915112345678")).status_code == 200
    figures = server.figures()
    assert figures.pair_limit_hits == 1
    assert figures.min_pair_gap >= 0.3


def test_the_pair_limit_can_allow_metas_burst(make_sandbox) -> None:
    server = make_sandbox(pair_interval=6.0, pair_burst=3)
    with client_for(server) as c:
        codes = [c.post(messages_path(), json=template_message("+4915112345678", params=["Ana", str(n)])).status_code
                 for n in range(4)]
    assert codes == [200, 200, 200, 400]


# --- faults -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("share,status,code", [(0.0, 500, 131000), (1.0, 503, 2)])
def test_transient_faults_at_rate_one(make_sandbox, share, status, code) -> None:
    server = make_sandbox(transient_rate=1.0, transient_503_share=share)
    with client_for(server) as c:
        for n in range(5):
            assert_meta_error(c.post(messages_path(), json=template_message(f"+49151{n:08d}")), status, code)
    figures = server.figures()
    assert (figures.accepted, figures.transient_errors, figures.errors_by_code) == (0, 5, {code: 5})


def test_transient_faults_mix_500_and_503(make_sandbox) -> None:
    server = make_sandbox(transient_rate=1.0)
    with client_for(server) as c:
        statuses = {c.post(messages_path(), json=template_message(f"+49151{n:08d}")).status_code for n in range(40)}
    assert statuses == {500, 503}


def test_latency_is_drawn_from_the_configured_range(make_sandbox) -> None:
    server = make_sandbox(latency_ms=(80, 120))
    with client_for(server) as c:
        started = time.monotonic()
        for n in range(3):
            c.post(messages_path(), json=template_message(f"+49151{n:08d}"))
        elapsed = time.monotonic() - started
    assert 0.24 <= elapsed < 1.0


def test_latency_overlaps_across_concurrent_requests(make_sandbox) -> None:
    server = make_sandbox(latency_ms=(200, 200))

    async def many() -> float:
        async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
            started = time.monotonic()
            await asyncio.gather(*(c.post(messages_path(), json=template_message(f"+49151{n:08d}"))
                                   for n in range(20)))
            return time.monotonic() - started

    assert asyncio.run(many()) < 1.0  # 20 x 200 ms would be 4 s if they did not overlap


def test_a_transient_fault_may_still_send_the_message(make_sandbox) -> None:
    server = make_sandbox(transient_rate=1.0, transient_sent_fraction=1.0)
    with client_for(server) as c:
        assert c.post(messages_path(), json=template_message("+4915112345678", callback="m1")).status_code >= 500
    [entry] = server.call(server.sandbox.ledger.snapshot)
    assert entry.sent_anyway and entry.wamid
    assert server.figures().sent_anyway == 1


# --- contacts and templates ------------------------------------------------------------------------------

def test_contacts_check_reports_numbers_not_on_whatsapp_invalid(make_sandbox) -> None:
    server = make_sandbox(not_on_whatsapp=["+4915100000002"])
    with client_for(server) as c:
        response = c.post(f"/{VERSION}/{PHONE_ID}/contacts",
                          json={"blocking": "wait", "contacts": ["+4915100000001", "+4915100000002"],
                                "force_check": False})
    assert response.status_code == 200
    assert response.json() == {"contacts": [
        {"input": "+4915100000001", "status": "valid", "wa_id": "4915100000001"},
        {"input": "+4915100000002", "status": "invalid"},
    ]}


def test_contacts_check_needs_the_token_and_a_list(sandbox) -> None:
    with client_for(sandbox, "wrong") as c:
        assert_meta_error(c.post(f"/{VERSION}/{PHONE_ID}/contacts", json={"contacts": ["+1"]}), 401, 190)
    with client_for(sandbox) as c:
        assert_meta_error(c.post(f"/{VERSION}/{PHONE_ID}/contacts", json={"contacts": "+1"}), 400, 100)


def test_templates_are_listed_with_the_requested_fields(client) -> None:
    response = client.get(f"/{VERSION}/{WABA_ID}/message_templates",
                          params={"name": "order_update",
                                  "fields": "name,language,status,category,components,parameter_format"})
    assert response.status_code == 200
    body = response.json()
    [template] = body["data"]
    assert set(template) == {"name", "language", "status", "category", "components", "parameter_format", "id"}
    assert (template["name"], template["language"], template["status"], template["category"],
            template["parameter_format"]) == ("order_update", "en_US", "APPROVED", "UTILITY", "POSITIONAL")
    [body_component] = [c for c in template["components"] if c["type"] == "BODY"]
    assert "{{1}}" in body_component["text"] and "{{2}}" in body_component["text"]
    assert "cursors" in body["paging"]


def test_templates_listing_pages_and_filters(client) -> None:
    everything = client.get(f"/{VERSION}/{WABA_ID}/message_templates").json()["data"]
    names = {t["name"] for t in everything}
    assert {"hello_world", "order_update", "spring_sale", "winter_promo"} <= names
    pending = client.get(f"/{VERSION}/{WABA_ID}/message_templates", params={"status": "PENDING"}).json()["data"]
    assert [t["name"] for t in pending] == ["winter_promo"]
    first = client.get(f"/{VERSION}/{WABA_ID}/message_templates", params={"limit": 2}).json()
    assert len(first["data"]) == 2 and "next" in first["paging"]
    after = first["paging"]["cursors"]["after"]
    second = client.get(f"/{VERSION}/{WABA_ID}/message_templates", params={"limit": 2, "after": after}).json()
    assert second["data"][0]["name"] == everything[2]["name"]


def test_templates_of_another_waba_are_code_100(client) -> None:
    response = client.get(f"/{VERSION}/999/message_templates")
    assert assert_meta_error(response, 400, 100)["error_subcode"] == 33


def test_an_unknown_path_is_a_graph_error(client) -> None:
    assert client.get(f"/{VERSION}/{PHONE_ID}/whatever").json()["error"]["code"] == 2500


def test_templates_listing_pages_at_metas_default_of_25_and_next_leads_on(make_sandbox) -> None:
    extra = [Template(f"bulk_{n:02d}", "en_US", components=[{"type": "BODY", "text": "Hi {{1}}"}]) for n in range(30)]
    server = make_sandbox(templates=default_templates() + extra)
    total = len(default_templates()) + len(extra)
    with client_for(server) as c:
        first = c.get(f"/{VERSION}/{WABA_ID}/message_templates", params={"fields": "name"}).json()
        assert len(first["data"]) == 25
        second = c.get(first["paging"]["next"]).json()  # an absolute URL, filters kept
        assert set(second["data"][0]) == {"name", "id"}
        assert "next" not in second["paging"]
        by_cursor = c.get(f"/{VERSION}/{WABA_ID}/message_templates",
                          params={"fields": "name", "after": first["paging"]["cursors"]["after"]}).json()
    names = [t["name"] for t in first["data"] + second["data"]]
    assert len(names) == len(set(names)) == total
    assert by_cursor["data"] == second["data"]


@pytest.mark.parametrize("limit,size", [(100, 45), (1000, 100), (3, 3)])
def test_a_templates_limit_is_honoured_up_to_100(make_sandbox, limit, size) -> None:
    extra = [Template(f"bulk_{n:03d}", "en_US", components=[{"type": "BODY", "text": "Hi"}]) for n in range(120)]
    server = make_sandbox(templates=extra[:45] if limit == 100 else extra)
    with client_for(server) as c:
        page = c.get(f"/{VERSION}/{WABA_ID}/message_templates", params={"limit": limit}).json()
    assert len(page["data"]) == size


def test_the_ledger_keeps_each_recipients_components_as_sent(sandbox, client) -> None:
    sent = {}
    for n, name in enumerate(["Ana", "Bo", "Cy"]):
        image = {"type": "image", "image": {"link": f"https://cdn.example.com/{n}.jpg"}}
        components = [{"type": "header", "parameters": [image]},
                      {"type": "body", "parameters": [{"type": "text", "text": name}]},
                      {"type": "button", "sub_type": "url", "index": "0",
                       "parameters": [{"type": "text", "text": f"o-{n}"}]},
                      {"type": "button", "sub_type": "quick_reply", "index": 2,
                       "parameters": [{"type": "payload", "payload": f"stop-{n}"}]}]
        to = f"+49151000000{n:02d}"
        body = {"messaging_product": "whatsapp", "to": to, "type": "template",
                "template": {"name": "promo_image", "language": {"code": "en_US"}, "components": components}}
        assert client.post(messages_path(), json=body).status_code == 200
        sent[to] = components
    entries = client.get("/_sandbox/ledger").json()["entries"]
    assert {e["to"]: e["components"] for e in entries} == sent
    assert all(e["outcome"] == "accepted" for e in entries)
