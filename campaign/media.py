"""Header media from files: uploaded to Meta once (`POST /{phone-number-id}/media`) and sent
by id, uploaded again when Meta is about to forget it (uploads live 30 days;
whatsapp-templates.md §4).

The same bytes are uploaded once per sender whatever the file is called (each upload keeps
the content's SHA-256), so a campaign launched twice, or two campaigns with the same banner,
share one upload.
"""

from __future__ import annotations

import asyncio
import hashlib
import mimetypes
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, select

from campaign.db import Database
from campaign.exceptions import CampaignError
from campaign.graph import GraphClient, GraphError, TransportError
from campaign.models import MediaUpload
from campaign.templates import Kind

KEPT_BY_META = timedelta(days=30)
RENEW_BEFORE = timedelta(days=2)
"""An upload this close to its expiry is made again: a campaign may run for days."""
_KINDS = {"image": Kind.IMAGE, "video": Kind.VIDEO}


def kind_of(path: str | Path) -> Kind:
    """What a file is, from its name: an image, a video, else a document."""
    mime = mime_type(path)
    return _KINDS.get(mime.split("/")[0], Kind.DOCUMENT)


def mime_type(path: str | Path) -> str:
    return mimetypes.guess_type(str(path))[0] or "application/octet-stream"


def media_id(db: Database, client_factory: Callable[[], GraphClient], sender: str, path: str,
             now: datetime) -> str:
    """The id to send the file at `path` by: its live upload, a live upload of the same bytes
    under another name, else a new upload. Kept per (sender, path as the binding names it)."""
    file = Path(path).expanduser()
    try:
        content = file.read_bytes()
    except OSError as exc:
        raise CampaignError(f"{file}: cannot read the media file ({exc.strerror})") from None
    digest = hashlib.sha256(content).hexdigest()
    live = MediaUpload.expires_at > now + RENEW_BEFORE
    with db.read_session() as session:
        same = session.scalar(select(MediaUpload).where(MediaUpload.sender == sender, MediaUpload.digest == digest, live)
                              .order_by(MediaUpload.expires_at.desc()).limit(1))
    if same is not None:
        new_id, uploaded_at, expires_at = same.media_id, same.uploaded_at, same.expires_at
    else:
        async def upload() -> str:
            async with client_factory() as client:
                return await client.upload_media(sender, content, file.name, mime_type(file))

        try:
            new_id = asyncio.run(upload())
        except (GraphError, TransportError) as exc:
            raise CampaignError(f"{file}: the upload to Meta failed: {exc}") from None
        uploaded_at, expires_at = now, now + KEPT_BY_META
    with db.session() as session:
        session.execute(delete(MediaUpload).where(MediaUpload.sender == sender, MediaUpload.path == path))
        session.add(MediaUpload(sender=sender, path=path, digest=digest, mime_type=mime_type(file), media_id=new_id,
                                uploaded_at=uploaded_at, expires_at=expires_at))
    return new_id
