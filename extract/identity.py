"""Which file a stored clip came from: size, modification time and a content fingerprint.

A clip id is a path relative to the source folder, and camera cards reuse file names, so an
id alone does not say that a stored clip is the file on disk now. Every stored clip (and
every failed one) records the :class:`FileIdentity` of its file when it was processed. On a
rerun, :func:`is_unchanged` decides without reading the file when size and modification time
are equal; otherwise the fingerprint decides (a copy that only changed the time is the same
clip; a changed file is processed again).

A sequence of photos (:mod:`extract.sequences`) has the identity of its files together
(:func:`files_identity`): their total size, the latest modification time, and a fingerprint
of the photos' names and fingerprints, so a photo added, removed, renamed or changed makes
the sequence changed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
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


#: the identity of a clip whose files could not be read (it is processed again next time).
UNKNOWN_IDENTITY = FileIdentity(-1, 0, "")


def identity_or_unknown(paths: Sequence[Path]) -> FileIdentity:
    """The identity of a clip's files as processed (:func:`files_identity`), or
    :data:`UNKNOWN_IDENTITY` where they cannot be read. Computed by whoever decoded the
    clip, right after decoding it (a decoder process, an NVDEC thread, a Ray task)."""
    try:
        return files_identity(paths)
    except OSError:
        return UNKNOWN_IDENTITY


def files_identity(paths: Sequence[Path]) -> FileIdentity:
    """The identity of a clip's files (:func:`file_identity` for a single file; for several,
    see the module docstring).

    Raises:
        OSError: a file cannot be read.
    """
    if len(paths) == 1:
        return file_identity(paths[0])
    stats = [os.stat(p) for p in paths]
    return FileIdentity(
        sum(int(st.st_size) for st in stats),
        max(int(st.st_mtime_ns) for st in stats),
        _combined_fingerprint(paths, [int(st.st_size) for st in stats]),
    )


def _combined_fingerprint(paths: Sequence[Path], sizes: Sequence[int]) -> str:
    digest = hashlib.blake2b(b"sequence", digest_size=16)
    for path, size in zip(paths, sizes, strict=True):
        digest.update(f"{Path(path).name}\0{fingerprint(path, size)}\0".encode())
    return digest.hexdigest()


def is_unchanged(paths: Sequence[Path], stored: FileIdentity) -> tuple[bool, bool]:
    """Are a clip's files (``paths``: a video's one, a sequence's photos) still those whose
    identity is ``stored``?

    Returns:
        ``(same, time_only)``: ``same`` when size and time are equal, or else when the
        fingerprint is; ``time_only`` when only the modification time differs (a copy).
        A file that cannot be read counts as changed.
    """
    try:
        stats = [os.stat(p) for p in paths]
    except OSError:
        return False, False
    if sum(st.st_size for st in stats) != stored.size:
        return False, False
    if max(st.st_mtime_ns for st in stats) == stored.mtime_ns:
        return True, False
    try:
        sizes = [int(st.st_size) for st in stats]
        if len(paths) == 1:
            now = fingerprint(paths[0], sizes[0])
        else:
            now = _combined_fingerprint(paths, sizes)
    except OSError:
        return False, False
    same = now == stored.fingerprint
    return same, same
