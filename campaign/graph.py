"""The Graph API edge: async aiohttp with one bounded pool and explicit timeouts.

Only transport and Meta's error body live here; what an error *means* for the engine is the
error table's business (`campaign.errors`). No library exception leaves this module: a call
ends in an answer, a `GraphError` (Meta said no), `NotSent` (the request certainly never
left) or `Uncertain` (it may have reached Meta).

Why aiohttp and not httpx, the stack's first choice: at 300 requests/s against the sandbox,
httpx took 0.97 ms of CPU per request (its anyio layer, URL merging, cookie extraction and
per-request connection checks) and this client 0.37 ms (`benchmarks/graph_client.py`). At
the 1,000 MPS a number can be raised to, that difference is over half a core.
"""

from __future__ import annotations

import asyncio
import functools
import json
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

CONNECTIONS = 20
TEMPLATES_PAGE = 100
MAX_PAGES = 1000
SENDER_FIELDS = ("id", "display_phone_number", "verified_name", "status", "quality_rating", "messaging_limit_tier",
                 "whatsapp_business_manager_messaging_limit", "throughput", "name_status", "code_verification_status")
OPTIONAL_SENDER_FIELDS = frozenset({"messaging_limit_tier", "whatsapp_business_manager_messaging_limit",
                                    "throughput", "name_status", "code_verification_status"})
TIMEOUT = aiohttp.ClientTimeout(total=None, connect=30.0, sock_connect=10.0, sock_read=10.0)
"""`connect` covers waiting for a free connection of the pool as well: a request that times
out there never left."""


class GraphError(Exception):
    """An error answer from the Graph API."""

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        subcode: int | None = None,
        details: str | None = None,
        http_status: int | None = None,
        fbtrace_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.subcode = subcode
        self.details = details
        self.http_status = http_status
        self.fbtrace_id = fbtrace_id

    def __str__(self) -> str:
        code = f" (code {self.code})" if self.code is not None else ""
        details = f": {self.details}" if self.details and self.details != self.message else ""
        return f"{self.message}{code}{details}"

    @classmethod
    def from_answer(cls, status: int, body: bytes) -> GraphError:
        """Meta's `{"error": {...}}` body; anything else is kept as the HTTP status."""
        try:
            error = json.loads(body)["error"]
            data = error.get("error_data") or {}
            return cls(
                str(error.get("message") or f"HTTP {status}"),
                code=_int_or_none(error.get("code")),
                subcode=_int_or_none(error.get("error_subcode")),
                details=data.get("details") if isinstance(data, dict) else None,
                http_status=status,
                fbtrace_id=error.get("fbtrace_id"),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return cls(f"HTTP {status} from the Graph API", http_status=status)


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class ContactCheck:
    input: str
    valid: bool
    wa_id: str | None


class TransportError(Exception):
    """No answer from the Graph API."""


class NotSent(TransportError):
    """The request certainly never left: no connection could be had. Safe to send again."""


class Uncertain(TransportError):
    """The request may have reached Meta and its answer was lost (timeout, dropped connection).

    There is no idempotency key in the Cloud API: such a message must not be re-sent
    blindly; a status webhook carrying its callback data, or a grace period, settles it."""


class ServerError(Uncertain):
    """Meta answered 5xx (500 with 131000, 503 with code 2, a gateway error): an answer, not
    a verdict. Meta may have acted on the request (whatsapp-cloud-api.md), so the message is
    in doubt like a timed-out one, though for a shorter wait (CAMPAIGN_SERVER_ERROR_GRACE)."""

    def __init__(self, error: GraphError) -> None:
        super().__init__(str(error))
        self.error = error


# Only these prove the request never left: aiohttp raises them before a byte is written, and
# it never retries a POST by itself.
_NOT_SENT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)


@dataclass(frozen=True)
class Accepted:
    wamid: str
    wa_id: str | None
    message_status: str | None


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context for every client: loading the CA bundle costs ~25 ms, and
    a worker may open several clients."""
    return ssl.create_default_context()


def _env_proxy(url: str) -> tuple[URL | None, aiohttp.BasicAuth | None]:
    """HTTPS_PROXY / HTTP_PROXY for `url` (NO_PROXY honoured), as httpx used them, looked up
    once: aiohttp's `trust_env` looks them up on every request, which cost 0.4 ms each."""
    try:
        return get_env_proxy_for_url(URL(url))
    except LookupError:
        return None, None


class GraphClient:
    """One pooled connection set to the Graph API (or the sandbox) with the system-user token.

    The aiohttp session is opened on first use, inside the event loop that uses it."""

    def __init__(
        self,
        base_url: str,
        version: str,
        access_token: str,
        *,
        timeout: aiohttp.ClientTimeout = TIMEOUT,
        connections: int = CONNECTIONS,
    ) -> None:
        self._base = f"{base_url.rstrip('/')}/{version.strip('/')}/"
        self._headers = {"Authorization": f"Bearer {access_token}"}
        self._timeout = timeout
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> GraphClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._connections, ssl=_tls_context())
            proxy, proxy_auth = _env_proxy(self._base)
            self._session = aiohttp.ClientSession(connector=connector, headers=self._headers, timeout=self._timeout,
                                                  cookie_jar=aiohttp.DummyCookieJar(), proxy=proxy, proxy_auth=proxy_auth)
        return self._session

    async def _request(self, method: str, path: str, *, body: dict[str, Any] | None = None,
                       params: dict[str, str] | None = None, data: aiohttp.FormData | None = None) -> tuple[int, bytes]:
        """(HTTP status, body). Raises `NotSent` or `Uncertain` when there is no answer."""
        try:
            async with self._open().request(method, self._base + path, json=body, params=params,
                                            data=data) as response:
                return response.status, await response.read()
        except _NOT_SENT as exc:
            raise NotSent(f"{type(exc).__name__}: {exc}") from exc
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise Uncertain(f"{type(exc).__name__}: {exc}") from exc

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        status, content = await self._request("POST", path, body=body)
        if status != 200:
            raise GraphError.from_answer(status, content)
        return _json_object(content, status)

    async def check_contacts(self, phone_number_id: str, numbers: list[str]) -> list[ContactCheck]:
        """Which of `numbers` (E.164) have WhatsApp, where the provider still offers the check."""
        body = {"blocking": "wait", "contacts": numbers, "force_check": False}
        answer = await self._post(f"{phone_number_id}/contacts", body)
        return [
            ContactCheck(str(c.get("input", "")), c.get("status") == "valid", c.get("wa_id"))
            for c in answer.get("contacts", [])
        ]

    async def send_message(self, phone_number_id: str, body: dict[str, Any]) -> Accepted:
        """POST one message. Raises `GraphError` (Meta said no), `Uncertain` (unknown
        outcome), or `NotSent` (certainly not sent)."""
        status, content = await self._request("POST", f"{phone_number_id}/messages", body=body)
        if status == 200:
            try:
                answer = json.loads(content)
                message = answer["messages"][0]
                contact = (answer.get("contacts") or [{}])[0]
                return Accepted(str(message["id"]), contact.get("wa_id"), message.get("message_status"))
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                raise Uncertain(f"200 without a message id: {content[:200]!r}") from exc
        error = GraphError.from_answer(status, content)
        if status >= 500:
            raise ServerError(error)
        raise error

    async def fetch_templates(self, waba_id: str, name: str | None = None) -> list[dict[str, Any]]:
        """Every page of the WABA's templates (only those called `name`, when given), each as
        Graph returns it: templates.parse_template reads them."""
        params = {"fields": "name,language,status,category,components,parameter_format", "limit": str(TEMPLATES_PAGE)}
        if name:
            params["name"] = name  # Meta's filter is a partial match: the exact name is kept below
        found: list[dict[str, Any]] = []
        for _ in range(MAX_PAGES):
            status, content = await self._request("GET", f"{waba_id}/message_templates", params=params)
            if status != 200:
                raise GraphError.from_answer(status, content)
            page = _json_object(content, status)
            found += [item for item in page.get("data", [])
                      if isinstance(item, dict) and (name is None or item.get("name") == name)]
            paging = page.get("paging") or {}
            after = (paging.get("cursors") or {}).get("after")
            if not paging.get("next") or not after:
                return found
            params = {**params, "after": str(after)}
        raise GraphError(f"more than {MAX_PAGES} pages of templates", http_status=status)

    async def fetch_sender(self, phone_number_id: str) -> dict[str, Any]:
        """`GET /{phone-number-id}`: the number's health as Graph returns it (health.py reads it).

        A field this API version does not have (`messaging_limit_tier` is gone after v23,
        `whatsapp_business_manager_messaging_limit` came in v24: whatsapp-templates.md §6) is
        refused by Meta with code 100 naming it: it is dropped and the request made again."""
        fields = list(SENDER_FIELDS)
        while True:
            status, content = await self._request("GET", phone_number_id, params={"fields": ",".join(fields)})
            if status == 200:
                return _json_object(content, status)
            error = GraphError.from_answer(status, content)
            missing = next((f for f in fields if error.code == 100 and f"({f})" in error.message
                            and f in OPTIONAL_SENDER_FIELDS), None)
            if missing is None:
                raise error
            fields.remove(missing)

    async def upload_media(self, phone_number_id: str, content: bytes, filename: str, mime_type: str) -> str:
        """`POST /{phone-number-id}/media`: the id Meta keeps the file under (30 days)."""
        form = aiohttp.FormData()
        form.add_field("messaging_product", "whatsapp")
        form.add_field("type", mime_type)
        form.add_field("file", content, filename=filename, content_type=mime_type)
        status, answer = await self._request("POST", f"{phone_number_id}/media", data=form)
        if status != 200:
            raise GraphError.from_answer(status, answer)
        media_id = _json_object(answer, status).get("id")
        if not media_id:
            raise GraphError(f"HTTP 200 without a media id: {answer[:200]!r}", http_status=status)
        return str(media_id)


def _json_object(content: bytes, status: int) -> dict[str, Any]:
    try:
        answer = json.loads(content)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise GraphError(f"HTTP {status} with a body that is not a JSON object: {content[:200]!r}", http_status=status)
    return answer
