"""The one exception a user is meant to read: the CLI prints it as `error: ...` and exits 1."""

from __future__ import annotations


class CampaignError(Exception):
    """A user or input error, with a one-line message naming the file, row, field or campaign."""
