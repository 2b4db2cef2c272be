"""The states of campaigns and messages, the kinds of message, the sources of a suppression.

Pure: the rules (`statuses`, `policy`, `errors`) and the models both name them, so they
live below both and load no database code.
"""

from __future__ import annotations

import enum


class CampaignState(enum.StrEnum):
    """draft -> scheduled -> running <-> paused -> completed; any non-final -> cancelled."""

    DRAFT = "draft"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class MessageState(enum.StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"




class SuppressionSource(enum.StrEnum):
    MANUAL = "manual"
    OPT_OUT = "opt_out"
    ERROR_131050 = "error_131050"


class SuppressionScope(enum.StrEnum):
    """What a suppression stops: every message, or marketing templates only (131050, a
    marketing opt-out button, Meta's marketing switch): utility and authentication
    templates still reach the number."""

    ALL = "all"
    MARKETING = "marketing"
