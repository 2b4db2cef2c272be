"""Helpers for the sandbox's tests: settings, message builders, a webhook receiver."""
from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from campaign.sandbox.server import BackgroundServer, SandboxServer

TOKEN = "test-token"
SECRET = "test-app-secret"
WABA_ID = "102290129340398"
PHONE_ID = "106540352242922"
VERSION = "v21.0"

# Fast everything: no answer latency, webhooks within milliseconds, quick retries.
FAST = dict(
    access_token=TOKEN, app_secret=SECRET, waba_id=WABA_ID, phone_number_id=PHONE_ID,
    latency_ms=(0, 0), seed=20240601,
    sent_delay_ms=(0, 5), delivered_delay_ms=(0, 5), read_delay_ms=(0, 5), failed_delay_ms=(0, 5),
    delivered_fraction=1.0, read_fraction=1.0,
    webhook_flush_interval=0.01, webhook_retry_base=0.02, webhook_retry_max_delay=0.1,
    webhook_max_attempts=5, webhook_timeout=5.0,
)


@dataclass
class Delivery:
    """One webhook POST as the receiver got it."""

    raw: bytes
    headers: dict[str, str]
    answered: int

    @property
    def body(self) -> dict[str, Any]:
        return json.loads(self.raw)

    @property
    def statuses(self) -> list[dict[str, Any]]:
        return [s for e in self.body["entry"] for c in e["changes"] for s in c["value"].get("statuses", [])]

    def verifies(self, secret: str = SECRET) -> bool:
        expected = "sha256=" + hmac.new(secret.encode(), self.raw, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, self.headers.get("x-hub-signature-256", ""))


class Receiver:
    """A webhook endpoint in a thread: records every POST's raw bytes, answers as scripted."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self._answers: list[int] = []  # next answers, then 200
        self._lock = threading.Lock()
        app = Starlette(routes=[Route("/webhook", self._handle, methods=["POST"])])
        self.server = BackgroundServer(app)
        self.url = self.server.url + "/webhook"

    async def _handle(self, request: Request) -> Response:
        raw = await request.body()
        with self._lock:
            status = self._answers.pop(0) if self._answers else 200
            self.deliveries.append(Delivery(raw, dict(request.headers), status))
        return Response(b"", status_code=status)

    def answer_next(self, *statuses: int) -> None:
        """Answer the next POSTs with these statuses (then 200 again)."""
        with self._lock:
            self._answers.extend(statuses)

    def accepted(self) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if d.answered == 200]

    def statuses(self) -> list[dict[str, Any]]:
        """Every status item of every POST answered 200, in arrival order."""
        return [s for d in self.accepted() for s in d.statuses]

    def messages(self) -> list[dict[str, Any]]:
        """Every inbound ``messages[]`` value posted."""
        return [c["value"] for d in self.accepted() for e in d.body["entry"] for c in e["changes"]
                if "messages" in c["value"]]

    def status_values(self) -> list[dict[str, Any]]:
        """Every ``value`` carrying ``statuses[]`` (with its ``contacts``, if any), in arrival order."""
        return [c["value"] for d in self.accepted() for e in d.body["entry"] for c in e["changes"]
                if "statuses" in c["value"]]

    def changes(self, field: str) -> list[tuple[Delivery, dict[str, Any]]]:
        """Every ``entry`` of a POST answered 200 that carries a change of ``field``, with its POST."""
        return [(d, e) for d in self.accepted() for e in d.body["entry"]
                if any(c["field"] == field for c in e["changes"])]

    def wait_for(self, predicate: Callable[[Receiver], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"receiver: condition not met in {timeout}s; got {len(self.deliveries)} POSTs")
            time.sleep(0.01)


ERROR_KEYS = {"message", "type", "code", "error_data", "fbtrace_id"}


def assert_meta_error(response: httpx.Response, status: int, code: int) -> dict:
    """Check ``response`` is Meta's error body with this HTTP status and code; return the error."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert ERROR_KEYS <= set(error) <= ERROR_KEYS | {"error_subcode"}
    assert error["type"] == "OAuthException"
    assert error["code"] == code
    assert error["error_data"]["messaging_product"] == "whatsapp"
    assert isinstance(error["error_data"]["details"], str) and error["error_data"]["details"]
    assert isinstance(error["fbtrace_id"], str) and error["fbtrace_id"]
    return error


def client_for(server: SandboxServer, token: str | None = TOKEN) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=server.url, headers=headers, timeout=10.0)


def messages_path(phone_id: str = PHONE_ID) -> str:
    return f"/{VERSION}/{phone_id}/messages"


def send(server: SandboxServer, body: dict) -> str:
    """Send ``body``, check it was accepted, return its wamid."""
    with client_for(server) as c:
        response = c.post(messages_path(), json=body)
    assert response.status_code == 200, response.text
    return response.json()["messages"][0]["id"]


def template_message(to: str, name: str = "order_update", params: list[str] | None = ("Ana", "A-1"),
                     language: str = "en_US", callback: str | None = None, header: list[dict] | None = None) -> dict:
    components: list[dict[str, Any]] = []
    if header is not None:
        components.append({"type": "header", "parameters": header})
    if params is not None:
        components.append({"type": "body", "parameters": [{"type": "text", "text": p} for p in params]})
    body: dict[str, Any] = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": to,
                            "type": "template",
                            "template": {"name": name, "language": {"code": language}, "components": components}}
    if callback is not None:
        body["biz_opaque_callback_data"] = callback
    return body


def text_message(to: str, text: str = "Hello there", callback: str | None = None) -> dict:
    body: dict[str, Any] = {"messaging_product": "whatsapp", "to": to, "type": "text", "text": {"body": text}}
    if callback is not None:
        body["biz_opaque_callback_data"] = callback
    return body
