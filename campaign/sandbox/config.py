"""The sandbox's configuration: limits, faults, scripted recipients, templates, webhook delivery.

Defaults make ``campaign sandbox`` useful alone (Meta's default 80 MPS, the 6-second pair
interval, 150-250 ms latency, a template registry with ``hello_world`` and ``order_update``).
Everything can come from a JSON or TOML file, from options, or be patched at runtime.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from campaign.sandbox.health import SenderHealth
from campaign.sandbox.templates import Template, default_templates

Range = tuple[float, float]
TEMPLATES_PAGE_MAX = 100  # the largest ``limit`` a template listing honours


def parse_range_ms(value: str | float | int | Iterable[float]) -> Range:
    """Parse a latency/delay range in milliseconds: ``"150-250"``, ``"0"``, ``200``, ``[150, 250]``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        low = high = float(value)
    elif isinstance(value, str):
        text = value.strip().replace("..", "-").replace(",", "-")
        parts = [p for p in text.split("-") if p.strip()]
        if len(parts) == 1 and not text.startswith("-"):
            low = high = float(parts[0])
        elif len(parts) == 2:
            low, high = float(parts[0]), float(parts[1])
        else:
            raise ValueError(f"invalid range {value!r}: expected MS or LOW-HIGH, e.g. 150-250")
    else:
        items = list(value)
        if len(items) == 1:
            low = high = float(items[0])
        elif len(items) == 2:
            low, high = float(items[0]), float(items[1])
        else:
            raise ValueError(f"invalid range {value!r}: expected [LOW, HIGH]")
    if not (math.isfinite(low) and math.isfinite(high)) or low < 0 or high < low:
        raise ValueError(f"invalid range {value!r}: need 0 <= LOW <= HIGH")
    return (low, high)


def parse_latency(value: str | float | int | Iterable[float]) -> Range:
    """Parse ``--latency-ms``: ``"150-250"`` (uniform in that range) or ``"0"`` (none)."""
    return parse_range_ms(value)


_NON_DIGITS = re.compile(r"[^0-9]+")


def digits(number: str) -> str:
    """The digits of a phone number: ``"+49 151-234"`` -> ``"49151234"``."""
    number = str(number)
    if number.isdecimal() and number.isascii():
        return number
    if number[1:].isdecimal() and number[1:].isascii() and number[:1] == "+":  # the E.164 hot path
        return number[1:]
    return _NON_DIGITS.sub("", number)


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


@dataclass
class SandboxConfig:
    """Everything the emulator can be told. Times are seconds unless the name ends in ``_ms``."""

    # Limits (per sender phone-number id).
    mps: int = 80
    pair_interval: float = 6.0
    # Meta lets up to 45 messages to one user in 6 s borrow from the future; 1 = strict spacing.
    pair_burst: int = 1
    # Faults.
    latency_ms: Range = (150.0, 250.0)
    transient_rate: float = 0.0
    transient_503_share: float = 0.5  # of transient faults: 503/2; the rest 500/131000
    # A 5xx does not prove the message did not leave: this share of transient faults still sends it.
    transient_sent_fraction: float = 0.0
    # Identity and secrets (never logged or shown).
    access_token: str | None = field(default_factory=lambda: _env("WA_ACCESS_TOKEN"), repr=False)
    app_secret: str | None = field(default_factory=lambda: _env("WA_APP_SECRET"), repr=False)
    waba_id: str = field(default_factory=lambda: _env("WA_BUSINESS_ACCOUNT_ID") or "102290129340398")
    phone_number_id: str = field(default_factory=lambda: _env("WA_PHONE_NUMBER_ID") or "106540352242922")
    display_phone_number: str = "15550783881"
    # What GET /{phone-number-id} answers (quality, status, limits, throughput); PATCH merges keys.
    health: SenderHealth = field(default_factory=SenderHealth)
    # Templates.
    templates: list[Template] = field(default_factory=default_templates)
    # GET /{waba-id}/message_templates without ``limit``: Meta's default page size.
    templates_page_size: int = 25
    # Media links Meta cannot fetch (exact URLs): a send naming one is accepted, then fails 131053.
    # Links whose host ends in ``.invalid`` (RFC 2606) fail the same way; nothing is ever fetched.
    broken_media_links: frozenset[str] = frozenset()
    # Scripted recipients: explicit numbers (any format; compared by digits) and fractions
    # picked deterministically by hashing the wa_id.
    not_on_whatsapp: frozenset[str] = frozenset()
    marketing_limited: frozenset[str] = frozenset()
    marketing_opted_out: frozenset[str] = frozenset()
    not_on_whatsapp_fraction: float = 0.0
    marketing_limited_fraction: float = 0.0
    marketing_opted_out_fraction: float = 0.0
    # Users with a username whose number Meta withholds: webhooks name them by BSUID only (no
    # ``from``, ``wa_id``, ``recipient_id``) and carry ``profile.username`` (whatsapp-usernames.md §2).
    username_numbers: frozenset[str] = frozenset()
    username_fraction: float = 0.0
    # How many 131049 failures a marketing-limited user gets before their next marketing template
    # is delivered (a retry after the wait succeeds); None = every attempt fails.
    marketing_limited_times: int | None = None
    # Since April 2025 Meta accepts marketing templates to United States numbers and then fails them
    # with 131049. Decided by the number's region: Canada and the Caribbean share +1 and are not
    # affected, nor are the fictional +1 555 numbers of Meta's test accounts.
    block_us_marketing: bool = True
    # Rewrite Mexican and Brazilian inputs to the wa_id Meta reports (521..., 55 without the 9th digit).
    rewrite_wa_ids: bool = True
    window_seconds: float = 24 * 3600.0
    # Webhooks.
    webhook_url: str | None = None
    sent_delay_ms: Range = (50.0, 200.0)
    delivered_delay_ms: Range = (100.0, 1000.0)  # after sent
    read_delay_ms: Range = (500.0, 5000.0)  # after delivered
    failed_delay_ms: Range = (50.0, 500.0)
    delivered_fraction: float = 0.95
    read_fraction: float = 0.6  # of delivered messages
    sent_before_failed_fraction: float = 0.0
    duplicate_rate: float = 0.0
    out_of_order_rate: float = 0.0  # share of messages whose last two statuses are posted swapped
    skip_delivered_rate: float = 0.0  # share of read messages whose ``delivered`` is never posted
    webhook_batch_max: int = 100
    webhook_flush_interval: float = 0.2
    webhook_retry_base: float = 1.0
    webhook_retry_max_delay: float = 60.0
    webhook_max_attempts: int = 15
    webhook_concurrency: int = 8
    webhook_timeout: float = 10.0
    # Randomness (latency, faults, webhook fates); None = not reproducible.
    seed: int | None = None

    def __post_init__(self) -> None:
        for name, kind in _KINDS.items():
            setattr(self, name, _coerce(name, kind, getattr(self, name)))
        self.validate()

    def validate(self) -> None:
        """Refuse values that would make the emulator lie (negative rates, fractions above 1)."""
        if self.mps < 0:
            raise ValueError("mps must be >= 0")
        if self.pair_interval < 0:
            raise ValueError("pair_interval must be >= 0")
        if self.pair_burst < 1:
            raise ValueError("pair_burst must be >= 1")
        for name in _FRACTIONS:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.webhook_batch_max < 1 or self.webhook_concurrency < 1 or self.webhook_max_attempts < 1:
            raise ValueError("webhook_batch_max, webhook_concurrency and webhook_max_attempts must be >= 1")
        if self.window_seconds <= 0 or self.webhook_flush_interval <= 0:
            raise ValueError("window_seconds and webhook_flush_interval must be > 0")
        if self.marketing_limited_times is not None and self.marketing_limited_times < 0:
            raise ValueError("marketing_limited_times must be >= 0 (or null: always)")
        if not 1 <= self.templates_page_size <= TEMPLATES_PAGE_MAX:
            raise ValueError(f"templates_page_size must be between 1 and {TEMPLATES_PAGE_MAX}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SandboxConfig:
        """Build from a mapping of field names (as in a config file). ``default_templates = false``
        starts the registry empty; ``templates`` entries are added to (or replace) the defaults."""
        data = dict(data)
        use_defaults = data.pop("default_templates", True)
        extra = data.pop("templates", None)
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown sandbox config keys: {sorted(unknown)}")
        config = cls(**data)
        if extra is not None or not use_defaults:
            config.templates = _merge_templates(default_templates() if use_defaults else [],
                                                _coerce("templates", "templates", extra or []))
        return config

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> SandboxConfig:
        """Read a JSON (``.json``) or TOML (anything else) file of config keys."""
        path = Path(path)
        raw = path.read_bytes()
        if path.suffix.lower() == ".json":
            data = json.loads(raw.decode("utf-8"))
        else:
            data = tomllib.loads(raw.decode("utf-8"))
        if isinstance(data.get("sandbox"), dict):  # allow a [sandbox] table
            data = data["sandbox"]
        return cls.from_dict(data)

    @classmethod
    def from_options(cls, config_file: str | os.PathLike[str] | None = None, **options: Any) -> SandboxConfig:
        """The file's settings (or the defaults) with every option that is not None applied over them:
        what ``campaign sandbox --config FILE --mps N ...`` means."""
        config = cls.from_file(config_file) if config_file else cls()
        overrides = {name: value for name, value in options.items() if value is not None}
        return config.replace(**overrides) if overrides else config

    def replace(self, **changes: Any) -> SandboxConfig:
        """A copy with some fields changed (values are coerced like a config file's)."""
        return dataclasses.replace(self, **changes)

    def patch(self, changes: dict[str, Any]) -> None:
        """Change fields in place (``PATCH /_sandbox/config``); all-or-nothing."""
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - fields - {"add_templates"}
        if unknown:
            raise ValueError(f"unknown sandbox config keys: {sorted(unknown)}")
        merged = {f: getattr(self, f) for f in fields}
        for name, value in changes.items():
            if name == "add_templates":
                merged["templates"] = _merge_templates(merged["templates"],
                                                       _coerce("templates", "templates", value))
            elif name == "health" and isinstance(value, dict):  # keys not named keep their value
                merged["health"] = _coerce(name, "health", value, merged["health"])
            else:
                merged[name] = _coerce(name, _KINDS.get(name, "any"), value)
        candidate = dataclasses.replace(self, **merged)  # validates
        for name in fields:
            setattr(self, name, getattr(candidate, name))

    def public_dict(self) -> dict[str, Any]:
        """The config as JSON-able data, with the secrets replaced by whether they are set."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("access_token", "app_secret"):
                out[f.name + "_set"] = value is not None
            elif f.name == "templates":
                out[f.name] = [t.graph_json() for t in value]
            elif f.name == "health":
                out[f.name] = value.graph_json()
            elif isinstance(value, frozenset):
                out[f.name] = sorted(value)
            elif isinstance(value, tuple):
                out[f.name] = list(value)
            else:
                out[f.name] = value
        return out


def _merge_templates(base: list[Template], extra: list[Template]) -> list[Template]:
    by_key = {(t.name, t.language): t for t in base}
    for template in extra:
        by_key[(template.name, template.language)] = template
    return list(by_key.values())


_FRACTIONS = (
    "transient_rate", "transient_503_share", "transient_sent_fraction",
    "not_on_whatsapp_fraction", "marketing_limited_fraction", "marketing_opted_out_fraction", "username_fraction",
    "delivered_fraction", "read_fraction", "sent_before_failed_fraction", "duplicate_rate",
    "out_of_order_rate", "skip_delivered_rate",
)

_KINDS: dict[str, str] = {
    "mps": "int", "pair_interval": "float", "pair_burst": "int",
    "latency_ms": "range", "sent_delay_ms": "range", "delivered_delay_ms": "range",
    "read_delay_ms": "range", "failed_delay_ms": "range",
    "not_on_whatsapp": "numbers", "marketing_limited": "numbers", "marketing_opted_out": "numbers",
    "username_numbers": "numbers",
    "block_us_marketing": "bool", "rewrite_wa_ids": "bool",
    "window_seconds": "float", "webhook_batch_max": "int", "webhook_flush_interval": "float",
    "webhook_retry_base": "float", "webhook_retry_max_delay": "float", "webhook_max_attempts": "int",
    "webhook_concurrency": "int", "webhook_timeout": "float",
    "access_token": "optstr", "app_secret": "optstr", "webhook_url": "optstr",
    "waba_id": "str", "phone_number_id": "str", "display_phone_number": "str",
    "templates": "templates", "seed": "optint", "templates_page_size": "int", "broken_media_links": "links",
    "marketing_limited_times": "optint", "health": "health",
    **{name: "float" for name in _FRACTIONS},
}


def _coerce(name: str, kind: str, value: Any, base: SenderHealth | None = None) -> Any:
    try:
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError("not an integer")
            return int(value)
        if kind == "optint":
            return None if value is None else int(value)
        if kind == "float":
            return float(value)
        if kind == "bool":
            if isinstance(value, str):
                return value.strip().lower() in ("1", "true", "yes", "on")
            return bool(value)
        if kind == "range":
            return parse_range_ms(value)
        if kind == "numbers":
            if isinstance(value, str):
                value = [v for v in value.replace(";", ",").split(",") if v.strip()]
            return frozenset(digits(v) for v in value if digits(v))
        if kind == "links":
            if isinstance(value, str):
                value = value.split()  # URLs hold no whitespace
            return frozenset(str(v) for v in value)
        if kind == "str":
            return str(value)
        if kind == "optstr":
            return None if value in (None, "") else str(value)
        if kind == "templates":
            return [t if isinstance(t, Template) else Template.from_dict(t) for t in value]
        if kind == "health":
            if isinstance(value, SenderHealth):
                return value
            if not isinstance(value, dict):
                raise ValueError("must be an object of GET /{phone-number-id} fields")
            return (base or SenderHealth()).updated(value)
        return value
    except (TypeError, ValueError) as exc:
        raise ValueError(f"sandbox config {name}: {exc}") from None
