"""The sender's health: ``GET /{phone-number-id}`` and the controls that post Meta's account-level
webhooks (template status, number quality, business capability) and change what sends and GET see."""
from __future__ import annotations

import time

import pytest

from sandbox_helpers import (PHONE_ID, SECRET, TOKEN, VERSION, WABA_ID, client_for, messages_path,
                             template_message)

NODE = f"/{VERSION}/{PHONE_ID}"
DEFAULT_HEALTH = {
    "id": PHONE_ID, "display_phone_number": "+1 555-078-3881", "verified_name": "Sandbox Business",
    "status": "CONNECTED", "quality_rating": "GREEN", "name_status": "APPROVED",
    "code_verification_status": "VERIFIED", "messaging_limit_tier": "TIER_1K",
    "whatsapp_business_manager_messaging_limit": "TIER_2K", "throughput": {"level": "STANDARD"},
    "platform_type": "CLOUD_API",
}


def health(server, fields: str | None = None) -> dict:
    with client_for(server) as c:
        response = c.get(NODE, params={"fields": fields} if fields else None)
    assert response.status_code == 200, response.text
    return response.json()


def all_fields(server) -> dict:
    return health(server, ",".join(k for k in DEFAULT_HEALTH if k != "id"))


def send_code(server, body: dict) -> int | None:
    """None when accepted, else the error code the send was answered with."""
    with client_for(server) as c:
        response = c.post(messages_path(), json=body)
    return None if response.status_code == 200 else response.json()["error"]["code"]


def posted_value(receiver, field: str) -> dict:
    """The one ``value`` posted for ``field``, after checking Meta's account-level envelope and signature."""
    receiver.wait_for(lambda r: r.changes(field))
    [(delivery, entry)] = receiver.changes(field)
    assert delivery.verifies(SECRET)
    assert set(delivery.body) == {"object", "entry"} and delivery.body["object"] == "whatsapp_business_account"
    assert entry["id"] == WABA_ID and abs(entry["time"] - time.time()) < 60
    [change] = entry["changes"]
    assert set(change) == {"field", "value"}
    return change["value"]


# --- GET /{phone-number-id} ---------------------------------------------------------------------

def test_get_without_fields_answers_metas_default_fields(sandbox) -> None:
    assert health(sandbox) == {k: DEFAULT_HEALTH[k] for k in (
        "id", "verified_name", "code_verification_status", "display_phone_number", "quality_rating",
        "platform_type", "throughput")}


@pytest.mark.parametrize("field", [k for k in DEFAULT_HEALTH if k != "id"])
def test_get_with_fields_answers_those_fields_and_the_id(sandbox, field) -> None:
    assert health(sandbox, field) == {"id": PHONE_ID, field: DEFAULT_HEALTH[field]}


def test_get_with_several_fields_answers_each_of_them(sandbox) -> None:
    assert health(sandbox, "quality_rating, whatsapp_business_manager_messaging_limit,throughput") == {
        "id": PHONE_ID, "quality_rating": "GREEN", "whatsapp_business_manager_messaging_limit": "TIER_2K",
        "throughput": {"level": "STANDARD"}}


@pytest.mark.parametrize("path,token,status,code", [
    (NODE, "wrong-token", 401, 190),
    (NODE, None, 401, 190),
    (f"/{VERSION}/999999999", TOKEN, 400, 100),  # no such object
    (NODE + "?fields=quality_score", TOKEN, 400, 100),  # no such field on a phone number
])
def test_get_refusals_are_metas_errors(sandbox, path, token, status, code) -> None:
    with client_for(sandbox, token) as c:
        response = c.get(path)
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)


def test_an_unknown_phone_number_id_is_an_unknown_object(client) -> None:
    error = client.get(f"/{VERSION}/999999999").json()["error"]
    assert error["error_subcode"] == 33 and "999999999" in error["message"]


def test_health_comes_from_the_config(make_sandbox) -> None:
    server = make_sandbox(health={"quality_rating": "YELLOW", "throughput": {"level": "HIGH"}})
    assert health(server, "quality_rating,throughput,status") == {
        "id": PHONE_ID, "quality_rating": "YELLOW", "throughput": {"level": "HIGH"}, "status": "CONNECTED"}


def test_a_config_patch_of_health_changes_only_the_keys_it_names(sandbox, client) -> None:
    assert client.patch("/_sandbox/config", json={"health": {"quality_rating": "RED"}}).status_code == 200
    assert client.patch("/_sandbox/config", json={"health": {"status": "RESTRICTED"}}).status_code == 200
    assert health(sandbox, "quality_rating,status") == {"id": PHONE_ID, "quality_rating": "RED",
                                                        "status": "RESTRICTED"}


@pytest.mark.parametrize("patch", [{"quality_rating": "PURPLE"}, {"throughput": "HIGH"}, {"no_such": 1}])
def test_a_bad_health_patch_changes_nothing(sandbox, client, patch) -> None:
    assert client.patch("/_sandbox/config", json={"health": patch}).status_code == 400
    assert all_fields(sandbox) == DEFAULT_HEALTH


def test_the_health_helper_sets_fields_without_a_webhook(make_sandbox, receiver) -> None:
    server = make_sandbox(webhook_url=receiver.url)
    assert server.health(name_status="PENDING_REVIEW")["name_status"] == "PENDING_REVIEW"
    assert health(server, "name_status")["name_status"] == "PENDING_REVIEW"
    assert server.wait_webhooks_idle() and receiver.deliveries == []


# --- POST /_sandbox/template-status ----------------------------------------------------------------

SPRING_SALE = template_message("+4915100000001", name="spring_sale", params=["Ana"])


@pytest.mark.parametrize("event,code", [
    ("PAUSED", 132015),
    ("DISABLED", 132016),
    ("REJECTED", 132001),
    ("PENDING_DELETION", 132001),
    ("FLAGGED", None),  # at risk, still sendable
    ("APPROVED", None),
])
def test_a_template_status_event_decides_the_next_send(make_sandbox, event, code) -> None:
    server = make_sandbox()
    server.template_status("spring_sale", "en_US", event)
    assert send_code(server, SPRING_SALE) == code


@pytest.mark.parametrize("event", ["APPROVED", "REINSTATED"])
def test_a_paused_template_sends_again_once_approved_or_reinstated(make_sandbox, event) -> None:
    server = make_sandbox()
    server.template_status("spring_sale", "en_US", "PAUSED")
    server.template_status("spring_sale", "en_US", event)
    assert send_code(server, SPRING_SALE) is None


def test_a_template_status_event_posts_metas_value(make_sandbox, receiver) -> None:
    server = make_sandbox(webhook_url=receiver.url)
    with client_for(server) as c:
        template_id = c.get(f"/{VERSION}/{WABA_ID}/message_templates", params={"name": "spring_sale"}).json()[
            "data"][0]["id"]
        answer = c.post("/_sandbox/template-status", json={
            "name": "spring_sale", "language": "en_US", "event": "PAUSED", "reason": "NONE",
            "other_info": {"title": "FIRST_PAUSE", "description": "Paused for 3 hours"}})
    assert answer.status_code == 200
    assert posted_value(receiver, "message_template_status_update") == {
        "event": "PAUSED", "message_template_id": int(template_id), "message_template_name": "spring_sale",
        "message_template_language": "en_US", "reason": "NONE", "message_template_category": "MARKETING",
        "other_info": {"title": "FIRST_PAUSE", "description": "Paused for 3 hours"}}


def test_the_template_listing_shows_the_new_status(make_sandbox) -> None:
    server = make_sandbox()
    server.template_status("winter_promo", "en_US", "APPROVED")
    with client_for(server) as c:
        [listed] = c.get(f"/{VERSION}/{WABA_ID}/message_templates", params={"name": "winter_promo"}).json()["data"]
    assert listed["status"] == "APPROVED"


def test_a_template_status_survives_a_config_patch_of_the_templates(make_sandbox) -> None:
    server = make_sandbox()
    server.template_status("spring_sale", "en_US", "DISABLED")
    server.patch_config(add_templates=[{"name": "fresh", "language": "en_US",
                                        "components": [{"type": "BODY", "text": "Hi"}]}])
    assert send_code(server, SPRING_SALE) == 132016


@pytest.mark.parametrize("body", [
    {"name": "spring_sale", "language": "en_US", "event": "EXPLODED"},
    {"name": "no_such_template", "language": "en_US", "event": "PAUSED"},
    {"name": "spring_sale", "event": "PAUSED"},
    {"name": "spring_sale", "language": "en_US", "event": "PAUSED", "colour": "red"},
])
def test_a_bad_template_status_request_is_400_and_changes_nothing(client, body) -> None:
    assert client.post("/_sandbox/template-status", json=body).status_code == 400
    assert client.post(messages_path(), json=SPRING_SALE).status_code == 200


# --- POST /_sandbox/quality ------------------------------------------------------------------------

@pytest.mark.parametrize("request_body,value,after", [
    ({"event": "FLAGGED"},
     {"event": "FLAGGED", "current_limit": "TIER_1K", "max_daily_conversations_per_business": "TIER_2K"},
     {"status": "FLAGGED", "quality_rating": "RED"}),
    ({"event": "DOWNGRADE", "current_limit": "TIER_250"},
     {"event": "DOWNGRADE", "current_limit": "TIER_250", "max_daily_conversations_per_business": "TIER_250",
      "old_limit": "TIER_1K"},
     {"messaging_limit_tier": "TIER_250", "whatsapp_business_manager_messaging_limit": "TIER_250"}),
    ({"event": "UPGRADE", "current_limit": "TIER_10K", "max_daily_conversations_per_business": "TIER_10K",
      "old_limit": "TIER_2K"},
     {"event": "UPGRADE", "current_limit": "TIER_10K", "max_daily_conversations_per_business": "TIER_10K",
      "old_limit": "TIER_2K"},
     {"messaging_limit_tier": "TIER_10K", "whatsapp_business_manager_messaging_limit": "TIER_10K"}),
    ({"event": "THROUGHPUT_UPGRADE"},
     {"event": "THROUGHPUT_UPGRADE", "current_limit": "TIER_UNLIMITED",
      "max_daily_conversations_per_business": "TIER_UNLIMITED"},
     {"throughput": {"level": "HIGH"}, "messaging_limit_tier": "TIER_UNLIMITED",
      "whatsapp_business_manager_messaging_limit": "TIER_UNLIMITED"}),
    ({"event": "ONBOARDING", "quality_rating": "NA"},
     {"event": "ONBOARDING", "current_limit": "TIER_1K", "max_daily_conversations_per_business": "TIER_2K"},
     {"quality_rating": "NA"}),
])
def test_a_quality_event_posts_metas_value_and_changes_the_health(make_sandbox, receiver, request_body, value,
                                                                   after) -> None:
    server = make_sandbox(webhook_url=receiver.url)
    with client_for(server) as c:
        assert c.post("/_sandbox/quality", json=request_body).status_code == 200
    assert posted_value(receiver, "phone_number_quality_update") == {"display_phone_number": "15550783881", **value}
    assert all_fields(server) == {**DEFAULT_HEALTH, **after}


def test_unflagged_brings_back_the_health_from_before_the_flag(make_sandbox) -> None:
    server = make_sandbox(health={"quality_rating": "YELLOW"})
    server.quality("FLAGGED")
    server.quality("UNFLAGGED")
    assert health(server, "status,quality_rating") == {"id": PHONE_ID, "status": "CONNECTED",
                                                       "quality_rating": "YELLOW"}


def test_a_throughput_upgrade_raises_the_sandboxs_own_mps_to_1000(make_sandbox) -> None:
    server = make_sandbox(mps=2)
    server.quality("THROUGHPUT_UPGRADE")
    codes = [send_code(server, template_message(f"+49151{n:08d}")) for n in range(5)]
    assert codes == [None] * 5
    assert server.call(lambda: server.sandbox.config.mps) == 1000


def test_a_throughput_upgrade_never_lowers_a_higher_mps(make_sandbox) -> None:
    server = make_sandbox(mps=5000)
    assert server.quality("THROUGHPUT_UPGRADE")["mps"] == 5000


@pytest.mark.parametrize("body", [
    {"event": "SPARKLED"},
    {"event": "DOWNGRADE"},  # which tier?
    {"event": "UPGRADE", "current_limit": "TIER_7"},
    {"event": "FLAGGED", "quality_rating": "PURPLE"},
    {"event": "FLAGGED", "colour": "red"},
])
def test_a_bad_quality_request_is_400_and_changes_nothing(sandbox, client, body) -> None:
    assert client.post("/_sandbox/quality", json=body).status_code == 400
    assert all_fields(sandbox) == DEFAULT_HEALTH


def test_quality_events_change_the_health_without_a_webhook_url(sandbox) -> None:
    sandbox.quality("FLAGGED")
    assert health(sandbox, "status")["status"] == "FLAGGED"


# --- POST /_sandbox/capability ---------------------------------------------------------------------

@pytest.mark.parametrize("request_body,limit", [
    ({"max_daily_conversations_per_business": 2000}, "TIER_2K"),
    ({"max_daily_conversations_per_business": 100000, "max_phone_numbers_per_business": 20}, "TIER_100K"),
    ({"max_daily_conversations_per_business": -1, "max_daily_conversation_per_phone": -1}, "TIER_UNLIMITED"),
    ({"max_phone_numbers_per_waba": 2}, "TIER_250"),  # no daily limit named: unchanged
])
def test_a_capability_event_posts_metas_value_and_sets_the_portfolio_limit(make_sandbox, receiver, request_body,
                                                                          limit) -> None:
    server = make_sandbox(webhook_url=receiver.url, health={"whatsapp_business_manager_messaging_limit": "TIER_250"})
    with client_for(server) as c:
        assert c.post("/_sandbox/capability", json=request_body).status_code == 200
    assert posted_value(receiver, "business_capability_update") == request_body
    assert health(server, "whatsapp_business_manager_messaging_limit")[
        "whatsapp_business_manager_messaging_limit"] == limit


@pytest.mark.parametrize("body", [
    {},
    {"max_daily_conversations_per_business": 3000},
    {"max_daily_conversations_per_business": "2000"},
    {"max_daily_conversations_per_business": 2000, "colour": "red"},
])
def test_a_bad_capability_request_is_400_and_changes_nothing(sandbox, client, body) -> None:
    assert client.post("/_sandbox/capability", json=body).status_code == 400
    assert all_fields(sandbox) == DEFAULT_HEALTH


def test_the_capability_helper_returns_the_new_health(sandbox) -> None:
    answer = sandbox.capability(max_daily_conversations_per_business=10000)
    assert answer["health"]["whatsapp_business_manager_messaging_limit"] == "TIER_10K"
    assert answer["value"] == {"max_daily_conversations_per_business": 10000}
