"""Media: ``POST /{phone-number-id}/media`` uploads, and media Meta cannot get failing by webhook (131053)."""
from __future__ import annotations

from typing import Any

import pytest

from sandbox_helpers import PHONE_ID, TOKEN, VERSION, client_for, messages_path

MEDIA_PATH = f"/{VERSION}/{PHONE_ID}/media"
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64
BROKEN_LINK = "https://cdn.example.com/gone.jpg"


def upload(server, token: str | None = TOKEN, **fields: Any):
    form = {"messaging_product": "whatsapp", "type": "image/jpeg"} | fields
    files = {"file": ("promo.jpg", JPEG, "image/jpeg")} if form.pop("file", True) else None
    with client_for(server, token) as c:
        return c.post(MEDIA_PATH, data={k: v for k, v in form.items() if v is not None}, files=files)


def promo_image(to: str, image: dict[str, str]) -> dict[str, Any]:
    return {"messaging_product": "whatsapp", "to": to, "type": "template",
            "template": {"name": "promo_image", "language": {"code": "en_US"}, "components": [
                {"type": "header", "parameters": [{"type": "image", "image": image}]},
                {"type": "body", "parameters": [{"type": "text", "text": "Ana"}]},
                {"type": "button", "sub_type": "url", "index": "0", "parameters": [{"type": "text", "text": "A-1"}]}]}}


def statuses_of(receiver, wamid: str) -> list[dict[str, Any]]:
    return [s for s in receiver.statuses() if s["id"] == wamid]


def send(server, body: dict[str, Any]) -> str:
    with client_for(server) as c:
        response = c.post(messages_path(), json=body)
    assert response.status_code == 200, response.text
    return response.json()["messages"][0]["id"]


# --- upload ---------------------------------------------------------------------------------------

def test_an_upload_answers_a_new_media_id_and_is_counted(sandbox) -> None:
    first, second = upload(sandbox), upload(sandbox)
    assert first.status_code == 200, first.text
    media_id = first.json()["id"]
    assert set(first.json()) == {"id"} and media_id.isdigit()
    assert second.json()["id"] != media_id
    assert sandbox.figures().media_uploads == 2
    kept = sandbox.sandbox.media[media_id]
    assert (kept.phone_number_id, kept.mime_type, kept.filename, kept.size) == (PHONE_ID, "image/jpeg", "promo.jpg",
                                                                               len(JPEG))


@pytest.mark.parametrize("token,fields,status,code", [
    (None, {}, 401, 190),
    ("wrong-token", {}, 401, 190),
    (TOKEN, {"messaging_product": None}, 400, 100),
    (TOKEN, {"messaging_product": "sms"}, 400, 100),
    (TOKEN, {"file": False}, 400, 100),
    (TOKEN, {"type": None}, 400, 100),
], ids=["no-token", "wrong-token", "no-product", "wrong-product", "no-file", "no-type"])
def test_a_bad_upload_is_refused(sandbox, token, fields, status, code) -> None:
    response = upload(sandbox, token, **fields)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert sandbox.figures().media_uploads == 0


def test_an_upload_that_is_not_a_form_is_code_100(client) -> None:
    response = client.post(MEDIA_PATH, json={"messaging_product": "whatsapp"})
    assert (response.status_code, response.json()["error"]["code"]) == (400, 100)


def test_reset_forgets_uploaded_media(sandbox) -> None:
    media_id = upload(sandbox).json()["id"]
    sandbox.reset()
    assert media_id not in sandbox.sandbox.media and sandbox.figures().media_uploads == 0


# --- media Meta cannot get: accepted, then failed 131053 ----------------------------------------

@pytest.mark.parametrize("image", [
    {"id": "1000000000000001"},  # never issued by this sandbox
    {"link": BROKEN_LINK},  # listed in broken_media_links
    {"link": "https://cdn.shop.invalid/promo.jpg"},  # RFC 2606: never resolves
], ids=["unknown-id", "listed-link", "invalid-host"])
def test_media_meta_cannot_get_fails_by_webhook_with_131053(make_sandbox, receiver, image) -> None:
    server = make_sandbox(webhook_url=receiver.url, broken_media_links=[BROKEN_LINK])
    wamid = send(server, promo_image("+4915112345678", image))
    receiver.wait_for(lambda r: [s["status"] for s in statuses_of(r, wamid)] == ["failed"])
    [status] = statuses_of(receiver, wamid)
    assert status["errors"][0]["code"] == 131053
    assert server.figures().status_failures_by_code == {131053: 1}


@pytest.mark.parametrize("source", ["uploaded-id", "link"])
def test_media_meta_can_get_is_delivered(make_sandbox, receiver, source) -> None:
    server = make_sandbox(webhook_url=receiver.url, broken_media_links=[BROKEN_LINK])
    image = ({"id": upload(server).json()["id"]} if source == "uploaded-id"
             else {"link": "https://cdn.example.com/ok.jpg"})
    wamid = send(server, promo_image("+4915112345678", image))
    receiver.wait_for(lambda r: "read" in [s["status"] for s in statuses_of(r, wamid)])
    assert server.figures().status_failures_by_code == {}


def test_without_webhooks_the_ledger_still_records_the_131053(sandbox) -> None:
    send(sandbox, promo_image("+4915112345678", {"id": "1000000000000001"}))
    [entry] = sandbox.call(sandbox.sandbox.ledger.snapshot)
    assert (entry.outcome, entry.fate, entry.failure_code) == ("accepted", "failed", 131053)


def test_a_free_form_image_with_an_unknown_id_also_fails_131053(make_sandbox) -> None:
    server = make_sandbox()
    server.open_window("+4915112345678")
    send(server, {"messaging_product": "whatsapp", "to": "+4915112345678", "type": "image",
                  "image": {"id": "1000000000000001"}})
    assert server.figures().status_failures_by_code == {131053: 1}
