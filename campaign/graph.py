"""The Graph API edge: async httpx with a bounded pool and explicit timeouts.

Only transport and Meta's error body live here; what an error *means* for the engine is the
error table's business (`campaign.errors`).
"""

from __future__ import annotations

import functools
import re
import ssl
from dataclasses import dataclass
from typing import Any

import httpx

# httpcore's pool assignment is quadratic in connections: past ~20 keep-alive connections
# throughput collapses (library-notes.md). Concurrency beyond that queues on the pool.
POOL_LIMITS = httpx.Limits(max_connections=20, max_keepalive_connections=20)
TIMEOUT = httpx.Timeout(10.0, pool=30.0)


class GraphError(Exception):
    """An error answer from the Graph API, or a request whose outcome is unknown."""

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
    def from_response(cls, response: httpx.Response) -> GraphError:
        """Meta's `{"error": {...}}` body; anything else is kept as the HTTP status."""
        try:
            error = response.json()["error"]
            data = error.get("error_data") or {}
            return cls(
                str(error.get("message") or f"HTTP {response.status_code}"),
                code=_int_or_none(error.get("code")),
                subcode=_int_or_none(error.get("error_subcode")),
                details=data.get("details") if isinstance(data, dict) else None,
                http_status=response.status_code,
                fbtrace_id=error.get("fbtrace_id"),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return cls(f"HTTP {response.status_code} from the Graph API", http_status=response.status_code)


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


class Uncertain(Exception):
    """The request may have reached Meta and its answer was lost (timeout, dropped connection).

    There is no idempotency key in the Cloud API: such a message must not be re-sent
    blindly; a status webhook carrying its callback data, or a grace period, settles it."""


# Only these prove the request never left (library-notes.md, httpx).
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class Accepted:
    wamid: str
    wa_id: str | None
    message_status: str | None


@dataclass(frozen=True)
class Template:
    name: str
    language: str
    status: str
    category: str | None
    body_parameters: int
    header_parameters: int


def count_placeholders(text: str | None) -> int:
    """Distinct `{{n}}` (or named `{{name}}`) placeholders in a template component's text."""
    return len(set(re.findall(r"\{\{\s*([\w]+)\s*\}\}", text or "")))



@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context for every client: loading the CA bundle costs ~25 ms, and
    a worker runs dozens of small clients (see the dispatcher)."""
    return ssl.create_default_context()


class GraphClient:
    """One pooled connection set to the Graph API (or the sandbox) with the system-user token."""

    def __init__(
        self,
        base_url: str,
        version: str,
        access_token: str,
        *,
        timeout: httpx.Timeout = TIMEOUT,
        limits: httpx.Limits = POOL_LIMITS,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._client = httpx.AsyncClient(
            base_url=f"{base_url.rstrip('/')}/{version.strip('/')}/",
            headers={"Authorization": f"Bearer {access_token}"},
            timeout=timeout,
            limits=limits,
            transport=transport,
            verify=_tls_context(),
        )

    async def __aenter__(self) -> GraphClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await self._client.post(path, json=body)
        if response.status_code != 200:
            raise GraphError.from_response(response)
        return response.json()

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
        outcome), or one of `NOT_SENT` (certainly not sent)."""
        try:
            response = await self._client.post(f"{phone_number_id}/messages", json=body)
        except NOT_SENT:
            raise
        except httpx.HTTPError as exc:
            raise Uncertain(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code == 200:
            try:
                answer = response.json()
                message = answer["messages"][0]
                contact = (answer.get("contacts") or [{}])[0]
                return Accepted(str(message["id"]), contact.get("wa_id"), message.get("message_status"))
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                raise Uncertain(f"200 without a message id: {response.text[:200]!r}") from exc
        error = GraphError.from_response(response)
        if error.code is None and response.status_code >= 500:
            # A gateway error without Meta's body: the request may have been processed behind it.
            raise Uncertain(f"HTTP {response.status_code} without an error body")
        raise error

    async def fetch_templates(self, waba_id: str, name: str) -> list[Template]:
        """The WABA's templates called `name`, every language, with their parameter counts."""
        params = {"name": name, "fields": "name,language,status,category,components,parameter_format", "limit": "100"}
        response = await self._client.get(f"{waba_id}/message_templates", params=params)
        if response.status_code != 200:
            raise GraphError.from_response(response)
        found = []
        for item in response.json().get("data", []):
            if item.get("name") != name:
                continue
            components = {str(c.get("type", "")).upper(): c for c in item.get("components", [])}
            header = components.get("HEADER", {})
            found.append(
                Template(
                    name=item["name"],
                    language=str(item.get("language", "")),
                    status=str(item.get("status", "")).upper(),
                    category=(item.get("category") or "").lower() or None,
                    body_parameters=count_placeholders(components.get("BODY", {}).get("text")),
                    header_parameters=count_placeholders(header.get("text"))
                    if str(header.get("format", "TEXT")).upper() == "TEXT"
                    else 0,
                )
            )
        return found
