"""The files the engine writes: how a campaign's name becomes a file name, and writing a file
so that it appears whole or not at all (the report, the chart, the rejects of an import)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from campaign.exceptions import CampaignError


def campaign_file(name: str, kind: str, suffix: str) -> Path:
    """`NAME-KIND.SUFFIX` in the current folder (`spring sale/2026`, `report`, `.csv` →
    `spring_sale_2026-report.csv`): every run of characters other than letters, digits, `.`,
    `-` and `_` becomes `_`, leading and trailing dots and underscores go (no hidden file), and
    a name with nothing left becomes `campaign`."""
    stem = re.sub(r"[^\w.-]+", "_", name).strip("._") or "campaign"
    return Path(f"{stem}-{kind}{suffix}")


def require_folder(target: Path) -> None:
    """A CampaignError naming the folder when `target`'s folder does not exist."""
    if not target.parent.is_dir():
        raise CampaignError(f"{target}: folder {str(target.parent)!r} does not exist")


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """A temporary path beside `target` (`.NAME.PID.partial`) to write instead; renamed over
    `target` when the block succeeds, removed when it fails, so a failed write never leaves
    half a file nor the temporary one. A block that writes nothing leaves `target` as it was.

    Beside, not in a temporary folder: `os.replace` is atomic only within one file system."""
    temp = target.with_name(f".{target.name}.{os.getpid()}.partial")
    temp.unlink(missing_ok=True)  # one a crashed run left is not this block's to rename
    try:
        yield temp
        if temp.exists():
            os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
