"""Meta's error codes and bodies, as the sandbox knows them.

The sandbox keeps its own table on purpose: it must not share the engine's beliefs about
Meta (DESIGN.md, "The sandbox"). Codes, HTTP statuses and wording follow Meta's error-code
reference and the bodies the Graph API returns; the wording is informative only (clients
must branch on ``code``).
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

ERROR_CODES_HREF = "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/"

def fbtrace_id() -> str:
    """A random trace id shaped like Meta's (27 url-safe characters)."""
    return "A" + secrets.token_urlsafe(20)[:26]


@dataclass(frozen=True, slots=True)
class MetaError:
    """One Graph API error: the HTTP status it comes with and the fields of its body."""

    http_status: int
    code: int
    title: str
    message: str
    details: str
    subcode: int | None = None

    def body(self, trace_id: str | None = None) -> dict[str, Any]:
        """The synchronous error body: ``{"error": {message, type, code, error_data, error_subcode?, fbtrace_id}}``."""
        error: dict[str, Any] = {
            "message": self.message,
            "type": "OAuthException",
            "code": self.code,
            "error_data": {"messaging_product": "whatsapp", "details": self.details},
        }
        if self.subcode is not None:
            error["error_subcode"] = self.subcode
        error["fbtrace_id"] = trace_id or fbtrace_id()
        return {"error": error}

    def status_error(self) -> dict[str, Any]:
        """The ``errors[]`` item of a ``failed`` status webhook."""
        return {
            "code": self.code,
            "title": self.title,
            "message": self.title,
            "error_data": {"details": self.details},
            "href": ERROR_CODES_HREF,
        }


# --- synchronous errors (the HTTP answer to a request) -------------------------------------

def invalid_token() -> MetaError:
    """190: missing, malformed or wrong access token (Meta answers 401)."""
    return MetaError(401, 190, "Invalid OAuth access token",
                     "Invalid OAuth access token - Cannot parse access token",
                     "Invalid OAuth access token - Cannot parse access token")


def invalid_parameter(details: str, message: str = "(#100) Invalid parameter") -> MetaError:
    """100: malformed request, missing or invalid field."""
    return MetaError(400, 100, "Invalid parameter", message, details)


def unknown_object(object_id: str, method: str = "get") -> MetaError:
    """100 / subcode 33: the path names an object that does not exist (e.g. a wrong WABA id)."""
    text = (f"Unsupported {method} request. Object with ID '{object_id}' does not exist, cannot be "
            "loaded due to missing permissions, or does not support this operation.")
    return MetaError(400, 100, "Invalid parameter", text, text, subcode=33)


def nonexisting_field(field: str, node_type: str) -> MetaError:
    """100: ``fields`` names a field the node does not have."""
    text = f"(#100) Tried accessing nonexisting field ({field}) on node type ({node_type})"
    return MetaError(400, 100, "Invalid parameter", text, text)


def unknown_path(path: str) -> MetaError:
    """2500: a path the Graph API does not know."""
    return MetaError(400, 2500, "Unknown path components", f"Unknown path components: {path}",
                     f"Unknown path components: {path}")


def missing_parameter(details: str) -> MetaError:
    """131008: a required parameter (e.g. a template parameter's text) is missing or empty."""
    return MetaError(400, 131008, "Required parameter is missing",
                     "(#131008) Required parameter is missing", details)


def template_not_found(name: str, language: str) -> MetaError:
    """132001: no APPROVED template of that name in that language (Meta answers 404)."""
    return MetaError(404, 132001, "Template name does not exist in the translation",
                     "(#132001) Template name does not exist in the translation",
                     f"template name ({name}) does not exist in {language}")


def template_paused(name: str) -> MetaError:
    """132015: the template is paused for low quality."""
    return MetaError(400, 132015, "Template is Paused", "(#132015) Template is Paused",
                     f"Template {name} is paused due to low quality so it cannot be sent in a template message.")


def template_disabled(name: str) -> MetaError:
    """132016: the template was disabled."""
    return MetaError(400, 132016, "Template is Disabled", "(#132016) Template is Disabled",
                     f"Template {name} has been disabled due to low quality and cannot be sent.")


def template_params_mismatch(details: str) -> MetaError:
    """132000: the parameters do not fit the template's parts (count, names, a part they name)."""
    return MetaError(400, 132000, "Number of parameters does not match the expected number of params",
                     "(#132000) Number of parameters does not match the expected number of params", details)


def template_param_count(component: str, given: int, expected: int) -> MetaError:
    """132000: the number of parameters differs from the template's placeholders."""
    return template_params_mismatch(f"{component}: number of localizable_params ({given}) does not match the "
                                    f"expected number of params ({expected})")


def template_param_format(component: str, expected: str, received: str) -> MetaError:
    """132012: a parameter's format differs from the template's (e.g. header media missing)."""
    return MetaError(400, 132012, "Parameter format does not match format in the created template",
                     "(#132012) Parameter format does not match format in the created template",
                     f"{component}: Format mismatch, expected {expected}, received {received}")


def template_param_invalid(details: str) -> MetaError:
    """132018: a parameter's value breaks a rule (whitespace, a code too long, media without a source,
    parameters for a header the template does not have)."""
    return MetaError(400, 132018, "There's an issue with the parameters in your template.",
                     "(#132018) There's an issue with the parameters in your template.", details)


def template_text_too_long(details: str) -> MetaError:
    """132005: a parameter makes the text longer than Meta allows.

    Unverified: whatsapp-templates.md §3 knows the limits (header 60, body 1024, URL 2000) but not
    which code Meta answers an over-long parameter with; 132005 ("translated text too long") is
    the closest code it documents."""
    return MetaError(400, 132005, "Translated text too long", "(#132005) Translated text too long", details)


def bsuid_not_supported() -> MetaError:
    """131062: a message that may not be sent to a business-scoped user id (one-tap, zero-tap and
    copy-code authentication templates); send it to the phone number (whatsapp-usernames.md §3)."""
    return MetaError(400, 131062, "BSUID recipients are not supported for this message",
                     "(#131062) BSUID recipients are not supported for this message",
                     "Authentication templates cannot be sent to a business-scoped user ID. Send the message "
                     "to the user's phone number instead.")


def throughput_exceeded() -> MetaError:
    """130429: more messages per second than the number's throughput."""
    return MetaError(400, 130429, "Rate limit hit", "(#130429) Rate limit hit",
                     "Cloud API message throughput has been reached.")


def pair_rate_limited() -> MetaError:
    """131056: too many messages to the same user in a short time."""
    return MetaError(400, 131056, "(Business Account, Consumer Account) pair rate limit hit",
                     "(#131056) (Business Account, Consumer Account) pair rate limit hit",
                     "Message failed to send because there were too many messages sent from this phone "
                     "number to the same phone number in a short period of time.")


def internal_error() -> MetaError:
    """131000: an unknown internal error (Meta answers 500)."""
    return MetaError(500, 131000, "Something went wrong", "(#131000) Something went wrong",
                     "Message failed to send due to an unknown error. When setting a business public "
                     "key, it either failed to calculate the signature, call the GraphQL endpoint, or "
                     "the GraphQL endpoint returned an error.")


def service_unavailable() -> MetaError:
    """2: the service is temporarily unavailable (Meta answers 503)."""
    return MetaError(503, 2, "Service temporarily unavailable", "(#2) Service temporarily unavailable",
                     "Temporary due to downtime or due to being overloaded.")


# --- asynchronous errors (the ``errors`` of a ``failed`` status webhook) -------------------------

def undeliverable() -> MetaError:
    """131026: the number is not on WhatsApp (or cannot receive the message)."""
    return MetaError(400, 131026, "Message undeliverable", "(#131026) Message undeliverable",
                     "Unable to deliver message. Reasons can include: The recipient phone number is not a "
                     "WhatsApp phone number; the recipient has not accepted the new Terms of Service and "
                     "Privacy Policy; the recipient is using an old WhatsApp version.")


def reengagement_required() -> MetaError:
    """131047: a free-form message outside the 24-hour customer-service window."""
    return MetaError(400, 131047, "Re-engagement message", "(#131047) Re-engagement message",
                     "Message failed to send because more than 24 hours have passed since the customer "
                     "last replied to this number.")


def media_download_failed(details: str) -> MetaError:
    """131053: Meta could not get the media of an accepted message (a link it cannot fetch, a media
    id it does not know): the send was answered 200 and fails by status webhook."""
    return MetaError(400, 131053, "Media upload error", "(#131053) Media upload error", details)


def marketing_limited() -> MetaError:
    """131049: Meta's per-user marketing limit kept the message back."""
    return MetaError(400, 131049,
                     "This message was not delivered to maintain healthy ecosystem engagement.",
                     "(#131049) This message was not delivered to maintain healthy ecosystem engagement.",
                     "In order to maintain a healthy ecosystem engagement, the message failed to be delivered.")


def marketing_opted_out() -> MetaError:
    """131050: the user stopped marketing messages from this business."""
    return MetaError(400, 131050, "Unable to deliver the message. This recipient has chosen to stop "
                     "receiving marketing messages on WhatsApp from your business.",
                     "(#131050) Unable to deliver the message. This recipient has chosen to stop receiving "
                     "marketing messages on WhatsApp from your business.",
                     "Unable to deliver the message. This recipient has chosen to stop receiving marketing "
                     "messages on WhatsApp from your business.")
