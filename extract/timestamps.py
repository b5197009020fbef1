"""When a clip was recorded: the container's ``creation_time`` tag, else the file's
modification time. Cameras write the tag in UTC (MP4/MOV); AVI and ASF cameras usually
write none, and copying a card keeps the modification time on most systems. A photo (a
sequence's first) has its EXIF capture time, which cameras write in their own local time
without an offset: it is returned *naive* (the caller knows the deployment's offset)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import av

from extract.sequences import capture_time, is_image_file

log = logging.getLogger(__name__)


def clip_timestamp(path: Path, tags: bool = True) -> tuple[datetime, str]:
    """``(time, source)`` of ``path``: ``source`` is ``creation_time`` (the container's
    tag, UTC), ``exif`` (a photo's capture time: a naive camera-local time) or ``mtime``
    (the file's modification time). Other than ``exif`` times are timezone-aware (UTC).
    ``tags=False`` skips the container (for a file that failed to decode: opening it again
    could hang) and gives the modification time.

    Raises:
        OSError: the file cannot be read at all.
    """
    if not tags:
        return datetime.fromtimestamp(path.stat().st_mtime, tz=UTC), "mtime"
    if is_image_file(path):
        found = capture_time(path)
        if found.source == "exif":
            return found.time, "exif"
        return datetime.fromtimestamp(path.stat().st_mtime, tz=UTC), "mtime"
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            tags = [dict(container.metadata)]
            tags += [dict(s.metadata) for s in container.streams.video]
    except av.error.FFmpegError:
        tags = []
    for found in tags:
        parsed = _parse(found.get("creation_time", ""))
        if parsed is not None:
            return parsed, "creation_time"
    return datetime.fromtimestamp(path.stat().st_mtime, tz=UTC), "mtime"


def _parse(text: str) -> datetime | None:
    """An ISO 8601 tag (``2021-05-31T08:25:38.000000Z``) as an aware UTC time, or None.
    A zero date (``1970-01-01``/``1904-01-01``, a camera without a clock) is None."""
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        log.debug("unreadable creation_time tag %r", text)
        return None
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return None if value.year <= 1970 else value
