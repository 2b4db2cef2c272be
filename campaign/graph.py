"""The Graph API edge: async httpx with a bounded pool and explicit timeouts.

Only transport and Meta's error body live here; what an error *means* for the engine is the
error table's business (`campaign.errors`).
"""

from __future__ import annotations

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
