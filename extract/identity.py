"""Which file a stored clip came from: size, modification time and a content fingerprint.

A clip id is a path relative to the source folder, and camera cards reuse file names, so an
id alone does not say that a stored clip is the file on disk now. Every stored clip (and
every failed one) records the :class:`FileIdentity` of its file when it was processed. On a
rerun, :func:`is_unchanged` decides without reading the file when size and modification time
are equal; otherwise the fingerprint decides (a copy that only changed the time is the same
clip; a changed file is processed again).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

#: bytes hashed at each end of the file.
FINGERPRINT_SPAN = 1 << 20


@dataclass(frozen=True)
class FileIdentity:
    """Size, modification time (ns) and content fingerprint of a file."""

    size: int
    mtime_ns: int
    fingerprint: str


def fingerprint(path: Path, size: int | None = None) -> str:
    """A fast content fingerprint: BLAKE2b-128 of the size, the first and the last MiB.

    Two files of equal size that agree on their first and last MiB get the same value;
    camera files differ in their headers (timestamps) and in their last packets.
    """
    size = os.stat(path).st_size if size is None else size
    digest = hashlib.blake2b(str(size).encode(), digest_size=16)
    with open(path, "rb") as fh:
        digest.update(fh.read(FINGERPRINT_SPAN))
        if size > FINGERPRINT_SPAN:
            fh.seek(max(FINGERPRINT_SPAN, size - FINGERPRINT_SPAN))
            digest.update(fh.read(FINGERPRINT_SPAN))
    return digest.hexdigest()


def file_identity(path: Path) -> FileIdentity:
    """The identity of ``path`` now (stat + fingerprint).

    Raises:
        OSError: the file cannot be read.
    """
    st = os.stat(path)
    return FileIdentity(int(st.st_size), int(st.st_mtime_ns), fingerprint(path, st.st_size))


def is_unchanged(path: Path, stored: FileIdentity) -> tuple[bool, bool]:
    """Is ``path`` still the file whose identity is ``stored``?

    Returns:
        ``(same, time_only)``: ``same`` when size and time are equal, or else when the
        fingerprint is; ``time_only`` when only the modification time differs (a copy).
        A file that cannot be read counts as changed.
    """
    try:
        st = os.stat(path)
    except OSError:
        return False, False
    if st.st_size != stored.size:
        return False, False
    if st.st_mtime_ns == stored.mtime_ns:
        return True, False
    try:
        same = fingerprint(path, st.st_size) == stored.fingerprint
    except OSError:
        return False, False
    return same, same
