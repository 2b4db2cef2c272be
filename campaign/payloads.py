"""The Graph API request bodies for one recipient: pure, no I/O.

Body shapes from Meta's send-message reference (whatsapp-cloud-api.md, "Sending"): `to` is
sent as `+E.164` (without `+` Meta may prepend the sender's own country code), template
body parameters are positional `{{1}}..` in `--param` order, and `biz_opaque_callback_data`
carries the outbox id so status webhooks can find a message whose send never returned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TEXT_LIMIT = 4096


@dataclass(frozen=True)
class MessageSpec:
    """What a campaign sends, independent of the recipient."""

    template_name: str
    template_language: str
    param_columns: tuple[str, ...] = ()
    text_body: str | None = None
    header_type: str | None = None
    header_link: str | None = None


class _Row(dict):  # type: ignore[type-arg]
    def __missing__(self, key: str) -> str:
        raise KeyError(key)


def template_payload(spec: MessageSpec, to: str, row: dict[str, Any], callback_data: str) -> dict[str, Any]:
    components: list[dict[str, Any]] = []
    if spec.header_type and spec.header_link:
        components.append(
            {"type": "header", "parameters": [{"type": spec.header_type, spec.header_type: {"link": spec.header_link}}]}
        )
    if spec.param_columns:
        components.append(
            {"type": "body", "parameters": [{"type": "text", "text": str(row.get(c, ""))} for c in spec.param_columns]}
        )
    template: dict[str, Any] = {"name": spec.template_name, "language": {"code": spec.template_language}}
    if components:
        template["components"] = components
    return _envelope(to, "template", template, callback_data)


def text_payload(spec: MessageSpec, to: str, row: dict[str, Any], callback_data: str) -> dict[str, Any]:
    assert spec.text_body is not None
    body = spec.text_body.format_map(_Row({k: "" if v is None else v for k, v in row.items()}))
    return _envelope(to, "text", {"body": body[:TEXT_LIMIT], "preview_url": False}, callback_data)


def _envelope(to: str, kind: str, content: dict[str, Any], callback_data: str) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": kind,
        kind: content,
        "biz_opaque_callback_data": callback_data,
    }
