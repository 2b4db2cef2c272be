"""Meta's rules for a send: request validation, throughput, pair rate and the 24-hour window.

Pure: no I/O, and every time is passed in (``now``), so each rule is tested directly.
Validation follows the order Meta reports problems in: shape (100), then the template
(132001 / 132015 / 132016), then its parameters (132000 / 132012 / 131008).
"""
from __future__ import annotations

import hashlib
import json
from collections import deque
from dataclasses import dataclass
from typing import Any

from campaign.sandbox import meta_errors
from campaign.sandbox.meta_errors import MetaError
from campaign.sandbox.recipients import canonical_wa_id
from campaign.sandbox.templates import MEDIA_FORMATS, Template, TemplateRegistry

MESSAGE_TYPES = ("text", "image", "audio", "video", "document", "sticker", "location", "contacts",
                 "interactive", "template", "reaction")
MEDIA_TYPES = ("image", "audio", "video", "document", "sticker")
TEXT_BODY_MAX = 4096
CALLBACK_DATA_MAX_BYTES = 256


@dataclass(frozen=True, slots=True)
class SendRequest:
    """A send that passed validation: what the limits and the webhook plan need to know."""

    to: str
    wa_id: str
    type: str
    template: Template | None
    callback_data: str | None
    content_key: bytes  # same recipient + same content_key = the same message sent again

    @property
    def free_form(self) -> bool:
        """Anything but a template needs an open 24-hour window."""
        return self.template is None

    @property
    def category(self) -> str:
        """Pricing category: the template's, lowercased; ``service`` for free-form messages."""
        return self.template.category.lower() if self.template else "service"


@dataclass(frozen=True, slots=True)
class RequestSummary:
    """Best-effort fields of any request body, valid or not, for the ledger."""

    to: str | None
    type: str | None
    template_name: str | None
    template_language: str | None
    callback_data: str | None


def summarize(payload: Any) -> RequestSummary:
    """Pick the ledger's fields out of a parsed body without judging it."""
    if not isinstance(payload, dict):
        return RequestSummary(None, None, None, None, None)
    to = payload.get("to")
    kind = payload.get("type", "text" if "text" in payload else None)
    template = payload.get("template") if isinstance(payload.get("template"), dict) else {}
    language = template.get("language") if isinstance(template.get("language"), dict) else {}
    callback = payload.get("biz_opaque_callback_data")
    return RequestSummary(
        to if isinstance(to, str) else None,
        kind if isinstance(kind, str) else None,
        template.get("name") if isinstance(template.get("name"), str) else None,
        language.get("code") if isinstance(language.get("code"), str) else None,
        callback if isinstance(callback, str) else None,
    )


def validate_send(payload: Any, registry: TemplateRegistry, rewrite_wa_ids: bool = True) -> SendRequest | MetaError:
    """Check a ``/messages`` body as Meta does; return the accepted request or the error to answer."""
    if not isinstance(payload, dict):
        return meta_errors.invalid_parameter("The request body must be a JSON object.")
    product = payload.get("messaging_product")
    if product is None:
        return meta_errors.invalid_parameter("The parameter messaging_product is required.",
                                             "(#100) The parameter messaging_product is required.")
    if product != "whatsapp":
        return meta_errors.invalid_parameter(f'Param messaging_product must be one of {{WHATSAPP}} - got "{product}".')
    recipient_type = payload.get("recipient_type", "individual")
    if recipient_type not in ("individual", "group"):
        return meta_errors.invalid_parameter(
            f'Param recipient_type must be one of {{INDIVIDUAL, GROUP}} - got "{recipient_type}".')
    to = payload.get("to")
    if to is None or to == "":
        return meta_errors.invalid_parameter("The parameter to is required.", "(#100) The parameter to is required.")
    if not isinstance(to, str) or not any(ch.isdigit() for ch in to):
        return meta_errors.invalid_parameter("Param to must be a phone number.")
    # Meta documents `type` as optional with `text` as the default.
    kind = payload.get("type", "text")
    if kind not in MESSAGE_TYPES:
        return meta_errors.invalid_parameter(f"Param type must be one of {{{', '.join(MESSAGE_TYPES).upper()}}} "
                                             f'- got "{kind}".')
    obj = payload.get(kind)
    if not isinstance(obj, (dict, list)) or (kind != "contacts" and not isinstance(obj, dict)):
        return meta_errors.invalid_parameter(f"The parameter {kind} is required.",
                                             f"(#100) The parameter {kind} is required.")
    callback = payload.get("biz_opaque_callback_data")
    if callback is not None:
        if not isinstance(callback, str):
            return meta_errors.invalid_parameter("Param biz_opaque_callback_data must be a string.")
        if len(callback.encode("utf-8")) > CALLBACK_DATA_MAX_BYTES:
            return meta_errors.invalid_parameter(
                f"Param biz_opaque_callback_data must be at most {CALLBACK_DATA_MAX_BYTES} characters long.")
    context = payload.get("context")
    if context is not None and not (isinstance(context, dict) and isinstance(context.get("message_id"), str)):
        return meta_errors.invalid_parameter("The parameter context['message_id'] is required.")

    template: Template | None = None
    if kind == "text":
        problem = _check_text(obj)
    elif kind == "template":
        found = _check_template(obj, registry)
        if isinstance(found, MetaError):
            return found
        template, problem = found, None
    else:
        problem = _check_other(kind, obj)
    if problem is not None:
        return problem
    return SendRequest(to=to, wa_id=canonical_wa_id(to, rewrite_wa_ids), type=kind, template=template,
                       callback_data=callback, content_key=_content_key(kind, obj))


def _content_key(kind: str, obj: Any) -> bytes:
    canonical = json.dumps([kind, obj], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.blake2b(canonical.encode("utf-8"), digest_size=16).digest()


def _check_text(obj: dict[str, Any]) -> MetaError | None:
    body = obj.get("body")
    if not isinstance(body, str) or not body:
        return meta_errors.invalid_parameter("The parameter text['body'] is required.",
                                             "(#100) The parameter text['body'] is required.")
    if len(body) > TEXT_BODY_MAX:
        return meta_errors.invalid_parameter(f"Param text['body'] must be at most {TEXT_BODY_MAX} characters long.")
    if "preview_url" in obj and not isinstance(obj["preview_url"], bool):
        return meta_errors.invalid_parameter("Param text['preview_url'] must be a boolean.")
    return None


def _check_other(kind: str, obj: Any) -> MetaError | None:
    if kind in MEDIA_TYPES:
        if not (isinstance(obj.get("link"), str) or isinstance(obj.get("id"), str)):
            return meta_errors.invalid_parameter(f"Param {kind} must contain either 'link' or 'id'.")
    elif kind == "location":
        if not all(isinstance(obj.get(k), (int, float, str)) for k in ("latitude", "longitude")):
            return meta_errors.invalid_parameter("The parameters location['latitude'] and location['longitude'] are required.")
    elif kind == "interactive":
        if not isinstance(obj.get("type"), str) or not isinstance(obj.get("action"), dict):
            return meta_errors.invalid_parameter("The parameters interactive['type'] and interactive['action'] are required.")
    elif kind == "reaction":
        if not isinstance(obj.get("message_id"), str):
            return meta_errors.invalid_parameter("The parameter reaction['message_id'] is required.")
    elif kind == "contacts":
        if not isinstance(obj, list) or not obj:
            return meta_errors.invalid_parameter("Param contacts must be a non-empty array.")
    return None


def _check_template(obj: dict[str, Any], registry: TemplateRegistry) -> Template | MetaError:
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return meta_errors.invalid_parameter("The parameter template['name'] is required.",
                                             "(#100) The parameter template['name'] is required.")
    language = obj.get("language")
    code = language.get("code") if isinstance(language, dict) else None
    if not isinstance(code, str) or not code:
        return meta_errors.invalid_parameter("The parameter template['language']['code'] is required.",
                                             "(#100) The parameter template['language']['code'] is required.")
    components = obj.get("components", [])
    if not isinstance(components, list) or not all(isinstance(c, dict) for c in components):
        return meta_errors.invalid_parameter("Param template['components'] must be an array of objects.")
    given: dict[str, list[Any]] = {}
    for component in components:
        ctype = component.get("type")
        if not isinstance(ctype, str) or ctype.lower() not in ("header", "body", "button", "footer", "carousel",
                                                               "limited_time_offer"):
            return meta_errors.invalid_parameter(
                "Param template['components'][type] must be one of {HEADER, BODY, BUTTON, FOOTER}.")
        params = component.get("parameters", [])
        if not isinstance(params, list) or not all(isinstance(p, dict) for p in params):
            return meta_errors.invalid_parameter("Param template['components'][parameters] must be an array of objects.")
        if ctype.lower() in ("header", "body"):
            given.setdefault(ctype.lower(), []).extend(params)

    template = registry.get(name, code)
    if template is None or template.status in ("PENDING", "REJECTED"):
        return meta_errors.template_not_found(name, code)
    if template.status == "PAUSED":
        return meta_errors.template_paused(name)
    if template.status == "DISABLED":
        return meta_errors.template_disabled(name)

    problem = _check_header(template, given.get("header", []))
    if problem is None:
        problem = _check_params("body", template.body_params, given.get("body", []), template.parameter_format)
    return problem if problem is not None else template


def _check_header(template: Template, params: list[Any]) -> MetaError | None:
    fmt = template.header_format
    if fmt in MEDIA_FORMATS:
        media = params[0] if len(params) == 1 else None
        wanted = fmt.lower()
        received = str(media.get("type", "UNKNOWN")).upper() if media else "UNKNOWN"
        if media is None or media.get("type") != wanted:
            return meta_errors.template_param_format("header", fmt, received)
        inner = media.get(wanted)
        if not isinstance(inner, dict) or not (isinstance(inner.get("link"), str) or isinstance(inner.get("id"), str)):
            return meta_errors.missing_parameter(f"header: {wanted} must contain either 'link' or 'id'.")
        return None
    return _check_params("header", template.header_params, params, template.parameter_format)


def _check_params(component: str, expected: list[str], params: list[Any], parameter_format: str) -> MetaError | None:
    if len(params) != len(expected):
        return meta_errors.template_param_count(component, len(params), len(expected))
    if parameter_format == "NAMED":
        names = {p.get("parameter_name") for p in params}
        if names != set(expected):
            return meta_errors.template_param_count(component, len(names & set(expected)), len(expected))
    for index, param in enumerate(params, start=1):
        ptype = param.get("type")
        if ptype == "text":
            if not isinstance(param.get("text"), str) or not param["text"].strip():
                return meta_errors.missing_parameter(f"{component}: parameter {index} text is missing or empty.")
        elif ptype in ("currency", "date_time"):
            if not isinstance(param.get(ptype), dict):
                return meta_errors.missing_parameter(f"{component}: parameter {index} {ptype} is missing.")
        elif ptype in ("image", "video", "document") and component == "header":
            continue
        else:
            return meta_errors.invalid_parameter(
                f"Param template['components'][{component}]['parameters'][{index - 1}]['type'] must be one of "
                "{TEXT, CURRENCY, DATE_TIME}.")
    return None


class ThroughputWindow:
    """Accepted sends per sender in the trailing second: Meta's messages-per-second cap.

    A sliding one-second window over accepted arrivals, (now - 1, now]; O(1) amortized per check.
    """

    def __init__(self) -> None:
        self._arrivals: dict[str, deque[float]] = {}

    def admits(self, sender: str, now: float, mps: int) -> bool:
        """Whether one more send from ``sender`` at ``now`` stays within ``mps``."""
        arrivals = self._arrivals.get(sender)
        if arrivals is None:
            return mps > 0
        horizon = now - 1.0
        while arrivals and arrivals[0] <= horizon:
            arrivals.popleft()
        return len(arrivals) < mps

    def record(self, sender: str, now: float) -> None:
        """Count an accepted send."""
        arrivals = self._arrivals.get(sender)
        if arrivals is None:
            arrivals = self._arrivals[sender] = deque()
        arrivals.append(now)


class PairSpacing:
    """Messages from one sender to one user: on average one per ``interval``, bursts of ``burst``.

    Meta lets a burst borrow from the future (GCRA); with ``burst=1`` no two accepted messages to
    one user are closer than ``interval``.
    """

    def __init__(self) -> None:
        self._tat: dict[tuple[str, str], float] = {}  # theoretical arrival time of the next message

    def admits(self, sender: str, wa_id: str, now: float, interval: float, burst: int) -> bool:
        """Whether a message to ``wa_id`` at ``now`` is within the pair rate."""
        if interval <= 0:
            return True
        tat = self._tat.get((sender, wa_id))
        if tat is None:
            return True
        return tat - now <= (burst - 1) * interval

    def record(self, sender: str, wa_id: str, now: float, interval: float) -> None:
        """Count an accepted message to ``wa_id``."""
        if interval <= 0:
            return
        tat = self._tat.get((sender, wa_id), now)
        self._tat[(sender, wa_id)] = max(tat, now) + interval


ANY_SENDER = "*"


class ServiceWindows:
    """The 24-hour customer-service windows, opened by the user's last inbound message.

    Keyed by (sender phone-number id, wa_id); an inbound message that names no sender opens the
    window for every sender (the sandbox then stands for a single business number). Wall-clock
    seconds, because a window is a calendar fact.
    """

    def __init__(self) -> None:
        self._last_inbound: dict[tuple[str, str], float] = {}

    def open(self, wa_id: str, at: float, sender: str | None = None) -> None:
        """Record an inbound message from ``wa_id`` at wall time ``at``."""
        key = (sender or ANY_SENDER, wa_id)
        self._last_inbound[key] = max(at, self._last_inbound.get(key, at))

    def close(self, wa_id: str, sender: str | None = None) -> None:
        """Forget inbound messages from ``wa_id`` (for that sender, or all senders when None)."""
        if sender is None:
            for key in [k for k in self._last_inbound if k[1] == wa_id]:
                del self._last_inbound[key]
        else:
            self._last_inbound.pop((sender, wa_id), None)

    def is_open(self, wa_id: str, sender: str, now: float, duration: float) -> bool:
        """Whether a free-form message from ``sender`` to ``wa_id`` at ``now`` is inside a window."""
        for key in ((sender, wa_id), (ANY_SENDER, wa_id)):
            last = self._last_inbound.get(key)
            if last is not None and now - last < duration:
                return True
        return False

    def last_inbound(self, wa_id: str, sender: str | None = None) -> float | None:
        """The most recent inbound time that counts for ``sender`` (any sender when None)."""
        times = [t for (s, w), t in self._last_inbound.items()
                 if w == wa_id and (sender is None or s in (sender, ANY_SENDER))]
        return max(times) if times else None
