"""Webhooks the sandbox posts: Meta's shapes, signatures, silent failures, disorder, retries."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from sandbox_helpers import PHONE_ID, SECRET, WABA_ID, client_for, send, template_message, text_message

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "meta-webhooks"


def statuses_of(receiver, wamid: str) -> list[str]:
    return [s["status"] for s in receiver.statuses() if s["id"] == wamid]


def test_status_webhooks_are_signed_over_the_exact_bytes(make_sandbox, receiver) -> None:
    server = make_sandbox(webhook_url=receiver.url)
    wamid = send(server, template_message("+4915112345678"))
    receiver.wait_for(lambda r: "read" in statuses_of(r, wamid))
    for delivery in receiver.deliveries:
        assert delivery.verifies(SECRET)
        assert not delivery.verifies("another-secret")
        assert delivery.headers["content-type"] == "application/json"
        assert delivery.headers["x-hub-signature"].startswith("sha1=")


def test_a_delivered_message_reports_sent_delivered_read_in_metas_shape(make_sandbox, receiver) -> None:
    server = make_sandbox(webhook_url=receiver.url)
    wamid = send(server, template_message("+4915112345678", callback="outbox-42"))
    receiver.wait_for(lambda r: len(statuses_of(r, wamid)) == 3)
    assert statuses_of(receiver, wamid) == ["sent", "delivered", "read"]
    body = receiver.accepted()[0].body
    assert body["object"] == "whatsapp_business_account"
    [entry] = body["entry"]
    assert entry["id"] == WABA_ID
    change = entry["changes"][0]  # statuses posted together come as a change each
    assert change["field"] == "messages"
    value = change["value"]
    assert value["messaging_product"] == "whatsapp"
    assert value["metadata"]["phone_number_id"] == PHONE_ID and value["metadata"]["display_phone_number"]
    sent = next(s for s in receiver.statuses() if s["status"] == "sent")
    assert sent["recipient_id"] == "4915112345678"
    assert sent["recipient_user_id"] == "DE.78765432115194"
    assert sent["biz_opaque_callback_data"] == "outbox-42"
    assert isinstance(sent["timestamp"], str) and sent["timestamp"].isdigit()
    assert sent["pricing"] == {"billable": True, "pricing_model": "PMP", "type": "regular", "category": "utility"}
    assert sent["conversation"]["origin"] == {"type": "utility"} and sent["conversation"]["expiration_timestamp"]


def test_status_objects_have_the_keys_of_metas_recorded_webhooks(make_sandbox, receiver) -> None:
    recorded = json.loads((FIXTURES / "message_status.json").read_text())
    server = make_sandbox(webhook_url=receiver.url)
    wamid = send(server, template_message("+4915112345678", callback="x"))
    receiver.wait_for(lambda r: len(statuses_of(r, wamid)) == 3)
    ours = {s["status"]: s for s in receiver.statuses()}

    def keys(case: str) -> set[str]:
        [status] = recorded[case]["entry"][0]["changes"][0]["value"]["statuses"]
        return set(status)

    # The recording predates BSUIDs (2026), which every status now carries.
    assert set(ours["sent"]) == keys("with_tracker") | {"recipient_user_id"}
    assert set(ours["delivered"]) == keys("delivered") | {"biz_opaque_callback_data", "recipient_user_id"}
    assert set(ours["sent"]["conversation"]) == set(recorded["sent"]["entry"][0]["changes"][0]["value"]
                                                    ["statuses"][0]["conversation"])
    recorded_envelope = recorded["sent"]
    body = receiver.accepted()[0].body
    assert set(body) == set(recorded_envelope)
    assert set(body["entry"][0]) == set(recorded_envelope["entry"][0])
    assert set(body["entry"][0]["changes"][0]) == set(recorded_envelope["entry"][0]["changes"][0])


def test_free_form_outside_the_window_is_accepted_then_fails_131047(make_sandbox, receiver) -> None:
    server = make_sandbox(webhook_url=receiver.url)
    wamid = send(server, text_message("+4915112345678", callback="outbox-1"))
    receiver.wait_for(lambda r: statuses_of(r, wamid) == ["failed"])
    [failed] = receiver.statuses()
    assert failed["biz_opaque_callback_data"] == "outbox-1"
    [error] = failed["errors"]
    assert error["code"] == 131047
    assert error["title"] and error["message"] and error["error_data"]["details"]
    assert "pricing" not in failed
    figures = server.figures()
    assert figures.window_violations == 1 and figures.status_failures_by_code == {131047: 1}


def test_an_inbound_message_opens_the_window_so_free_form_is_delivered(make_sandbox, receiver) -> None:
    server = make_sandbox(webhook_url=receiver.url)
    with client_for(server) as c:
        answer = c.post("/_sandbox/inbound", json={"from": "+4915112345678", "text": "Hi!", "name": "Ana"})
    assert answer.status_code == 200
    receiver.wait_for(lambda r: len(r.messages()) == 1)
    [value] = receiver.messages()
    assert value["contacts"] == [{"profile": {"name": "Ana"}, "wa_id": "4915112345678",
                                  "user_id": "DE.78765432115194"}]
    [message] = value["messages"]
    assert (message["from"], message["from_user_id"], message["type"], message["text"], message["id"]) == (
        "4915112345678", "DE.78765432115194", "text", {"body": "Hi!"}, answer.json()["id"])
    assert receiver.accepted()[0].verifies(SECRET)

    wamid = send(server, text_message("+4915112345678"))
    receiver.wait_for(lambda r: "read" in statuses_of(r, wamid))
    assert "failed" not in statuses_of(receiver, wamid)
    sent = next(s for s in receiver.statuses() if s["id"] == wamid and s["status"] == "sent")
    assert sent["pricing"]["category"] == "service" and sent["pricing"]["billable"] is False
    assert server.figures().window_violations == 0


def test_an_inbound_quick_reply_button_is_posted_as_a_button_message(make_sandbox, receiver) -> None:
    server = make_sandbox(webhook_url=receiver.url)
    with client_for(server) as c:
        c.post("/_sandbox/inbound", json={"from": "+4915112345678", "context": "wamid.abc",
                                          "button": {"payload": "STOP", "text": "Stop promotions"}})
    receiver.wait_for(lambda r: len(r.messages()) == 1)
    [message] = receiver.messages()[0]["messages"]
    assert message["type"] == "button"
    assert message["button"] == {"payload": "STOP", "text": "Stop promotions"}
    assert message["context"]["id"] == "wamid.abc"


def test_the_window_can_be_opened_directly_and_expires(make_sandbox, receiver) -> None:
    server = make_sandbox(webhook_url=receiver.url, window_seconds=3600)
    with client_for(server) as c:
        assert c.post("/_sandbox/window", json={"to": "+4915112345678", "age_seconds": 60}).json()["open"]
        assert not c.post("/_sandbox/window", json={"to": "+4915112345679", "age_seconds": 3601}).json()["open"]
    open_wamid = send(server, text_message("+4915112345678"))
    closed_wamid = send(server, text_message("+4915112345679"))
    receiver.wait_for(lambda r: "read" in statuses_of(r, open_wamid) and statuses_of(r, closed_wamid))
    assert statuses_of(receiver, closed_wamid) == ["failed"]
    assert receiver.messages() == []  # opening a window directly posts nothing


@pytest.mark.parametrize("config_key,template,params,code", [
    ("not_on_whatsapp", "order_update", ["Ana", "A-1"], 131026),
    ("marketing_limited", "spring_sale", ["Ana"], 131049),
    ("marketing_opted_out", "spring_sale", ["Ana"], 131050),
])
def test_scripted_recipients_fail_after_acceptance(make_sandbox, receiver, config_key, template, params, code) -> None:
    server = make_sandbox(webhook_url=receiver.url, **{config_key: ["+4915100000009"]})
    wamid = send(server, template_message("+4915100000009", name=template, params=params, callback="c"))
    receiver.wait_for(lambda r: statuses_of(r, wamid) == ["failed"])
    [status] = receiver.statuses()
    assert status["errors"][0]["code"] == code
    assert status["recipient_id"] == "4915100000009"
    assert server.figures().status_failures_by_code == {code: 1}


def test_marketing_limits_do_not_touch_utility_templates(make_sandbox, receiver) -> None:
    server = make_sandbox(webhook_url=receiver.url, marketing_limited=["+4915100000009"],
                          marketing_opted_out=["+4915100000008"])
    wamids = [send(server, template_message(n)) for n in ("+4915100000009", "+4915100000008")]
    receiver.wait_for(lambda r: all("read" in statuses_of(r, w) for w in wamids))


def test_a_marketing_stop_posts_user_preferences_and_then_fails_131050(make_sandbox, receiver) -> None:
    server = make_sandbox(webhook_url=receiver.url)
    with client_for(server) as c:
        c.post("/_sandbox/marketing-preferences", json={"from": "+4915112345678", "value": "stop"})
    receiver.wait_for(lambda r: len(r.accepted()) == 1)
    [change] = receiver.accepted()[0].body["entry"][0]["changes"]
    assert change["field"] == "user_preferences"
    assert change["value"]["user_preferences"][0]["value"] == "stop"
    wamid = send(server, template_message("+4915112345678", name="spring_sale", params=["Ana"]))
    receiver.wait_for(lambda r: statuses_of(r, wamid) == ["failed"])
    assert [s for s in receiver.statuses() if s["id"] == wamid][0]["errors"][0]["code"] == 131050


def test_statuses_are_batched_up_to_the_batch_size(make_sandbox, receiver) -> None:
    server = make_sandbox(webhook_url=receiver.url, webhook_batch_max=4, webhook_flush_interval=0.2,
                          pair_interval=0, delivered_fraction=0.0)
    wamids = [send(server, template_message(f"+49151{n:08d}")) for n in range(10)]
    receiver.wait_for(lambda r: len(r.statuses()) == 10)
    sizes = [len(d.statuses) for d in receiver.accepted()]
    assert max(sizes) <= 4 and max(sizes) > 1
    assert sorted(s["id"] for s in receiver.statuses()) == sorted(wamids)


def test_duplicates_are_posted_when_the_rate_is_one(make_sandbox, receiver) -> None:
    server = make_sandbox(webhook_url=receiver.url, duplicate_rate=1.0)
    wamid = send(server, template_message("+4915112345678"))
    receiver.wait_for(lambda r: len(statuses_of(r, wamid)) == 6)
    assert sorted(statuses_of(receiver, wamid)) == ["delivered", "delivered", "read", "read", "sent", "sent"]


def test_out_of_order_when_the_rate_is_one(make_sandbox, receiver) -> None:
    server = make_sandbox(webhook_url=receiver.url, out_of_order_rate=1.0, pair_interval=0,
                          delivered_delay_ms=(50, 50), read_delay_ms=(50, 50))
    wamids = [send(server, template_message(f"+49151{n:08d}")) for n in range(5)]
    receiver.wait_for(lambda r: all(len(statuses_of(r, w)) == 3 for w in wamids))
    for wamid in wamids:
        assert statuses_of(receiver, wamid) == ["sent", "read", "delivered"]  # read posted before delivered
        by_status = {s["status"]: int(s["timestamp"]) for s in receiver.statuses() if s["id"] == wamid}
        assert by_status["sent"] <= by_status["delivered"] <= by_status["read"]  # timestamps tell the truth


def test_delivered_is_skipped_when_the_rate_is_one(make_sandbox, receiver) -> None:
    server = make_sandbox(webhook_url=receiver.url, skip_delivered_rate=1.0, pair_interval=0)
    wamids = [send(server, template_message(f"+49151{n:08d}")) for n in range(5)]
    receiver.wait_for(lambda r: all("read" in statuses_of(r, w) for w in wamids))
    assert server.wait_webhooks_idle()
    assert all(statuses_of(receiver, w) == ["sent", "read"] for w in wamids)


def test_failed_may_follow_a_sent_status(make_sandbox, receiver) -> None:
    server = make_sandbox(webhook_url=receiver.url, sent_before_failed_fraction=1.0)
    wamid = send(server, text_message("+4915112345678"))
    receiver.wait_for(lambda r: len(statuses_of(r, wamid)) == 2)
    assert statuses_of(receiver, wamid) == ["sent", "failed"]


def test_a_receiver_answering_500_gets_the_same_bytes_again(make_sandbox, receiver) -> None:
    receiver.answer_next(500, 503)
    server = make_sandbox(webhook_url=receiver.url, delivered_fraction=0.0)
    wamid = send(server, template_message("+4915112345678"))
    receiver.wait_for(lambda r: len(r.accepted()) == 1)
    first, second, third = receiver.deliveries[:3]
    assert (first.answered, second.answered, third.answered) == (500, 503, 200)
    assert first.raw == second.raw == third.raw
    assert third.verifies(SECRET)
    assert statuses_of(receiver, wamid) == ["sent"]
    assert server.wait_webhooks_idle()
    stats = server.call(server.sandbox.webhook_stats)
    assert stats["retries"] == 2 and stats["posts_ok"] == 1


def test_a_receiver_that_is_down_is_retried_until_it_is_up(make_sandbox, receiver) -> None:
    server = make_sandbox(webhook_url="http://127.0.0.1:1/webhook",  # nothing listens on port 1
                          delivered_fraction=0.0, webhook_max_attempts=50)
    wamid = send(server, template_message("+4915112345678"))
    deadline = time.monotonic() + 5
    while server.call(server.sandbox.webhook_stats)["posts_failed"] < 2:
        assert time.monotonic() < deadline, "the sandbox did not retry"
        time.sleep(0.01)
    server.patch_config(webhook_url=receiver.url)
    receiver.wait_for(lambda r: statuses_of(r, wamid) == ["sent"])
