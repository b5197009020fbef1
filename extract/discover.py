"""Find the clips to process: a directory tree or a CSV manifest.

A clip is a video file or a *sequence* of photos (:mod:`extract.sequences`): the photos of
one folder grouped by capture time (``sequence_gap``), or the rows of one ``seq_id`` of a
Hakuna Ma-Data style metadata CSV (``file_name,seq_id[,datetime]``).
"""

from __future__ import annotations

import csv
import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from extract.sequences import (
    DEFAULT_SEQUENCE_GAP,
    CaptureTime,
    capture_time,
    group_by_gap,
    is_image_file,
)

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {".mp4", ".avi", ".asf", ".mov", ".mkv", ".m4v", ".wmv", ".mts"}
)


class DiscoveryError(ValueError):
    """The given video source cannot be used (missing, empty, malformed CSV...)."""


@dataclass(frozen=True)
class Clip:
    """One clip to process.

    Attributes:
        clip_id: the path relative to the source root, with '/' separators (a sequence of
            a folder: its first photo's; of a metadata CSV: its ``seq_id``). This is the
            key of the clip in the feature store and in every output CSV.
        path: the absolute path of the file (symlinks are not resolved, so the id stays
            what the user sees); a sequence's first photo.
        images: a sequence's photos in capture order (empty for a video).
    """

    clip_id: str
    path: Path
    images: tuple[Path, ...] = ()

    @property
    def is_sequence(self) -> bool:
        """True for a sequence of photos, False for a video."""
        return bool(self.images)

    @property
    def files(self) -> tuple[Path, ...]:
        """The files the clip is made of (a video's one file, a sequence's photos)."""
        return self.images or (self.path,)


def is_video_file(path: Path) -> bool:
    """True when ``path`` has one of :data:`VIDEO_EXTENSIONS`, in any letter case."""
    return path.suffix.lower() in VIDEO_EXTENSIONS


def discover(
    source: Path | str, sequence_gap: float = DEFAULT_SEQUENCE_GAP
) -> tuple[Path, list[Clip]]:
    """List the clips of a directory (recursive) or of a CSV manifest.

    Args:
        source: a directory, searched recursively (symlinked folders are followed, files
            with other extensions ignored): videos are clips, the photos of each folder are
            grouped into sequences by ``sequence_gap``. Or a CSV file: with a ``filepath``
            column, a manifest of videos whose entries are relative to the CSV's folder or
            absolute (a photo listed there is a sequence of one photo); with ``file_name``
            and ``seq_id`` columns (and optionally ``datetime``), the Hakuna Ma-Data
            metadata layout: one sequence per ``seq_id``.
        sequence_gap: seconds between photos above which a new sequence starts (0: each
            photo alone).

    Returns:
        ``(root, clips)``: the folder clip ids are relative to, and the clips in a stable
        order (sorted by id for a directory, the CSV's row order for a manifest, duplicates
        dropped).

    Raises:
        DiscoveryError: the source does not exist, or the CSV has neither layout.
    """
    source = Path(source).expanduser()
    if sequence_gap < 0:
        raise DiscoveryError(f"--sequence-gap must be >= 0 seconds, got {sequence_gap:g}")
    if not source.exists():
        raise DiscoveryError(f"{source}: no such file or directory")
    if source.is_dir():
        root = Path(os.path.abspath(source))
        return root, _walk(root, sequence_gap)
    if source.suffix.lower() == ".csv":
        return _read_manifest(Path(os.path.abspath(source)))
    raise DiscoveryError(
        f"{source}: expected a directory of videos or photos, or a .csv manifest with a "
        "'filepath' column (videos) or 'file_name' and 'seq_id' columns (photo sequences)"
    )


def _walk(root: Path, sequence_gap: float) -> list[Clip]:
    clips: list[Clip] = []
    from_mtime = 0
    seen_dirs: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        st = os.stat(dirpath)
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:  # a symlink loop: do not walk the same folder twice
            dirnames[:] = []
            continue
        seen_dirs.add(key)
        photos: list[tuple[Path, CaptureTime]] = []
        for name in filenames:
            path = Path(dirpath) / name
            if is_video_file(path) and path.is_file():
                clips.append(Clip(path.relative_to(root).as_posix(), path))
            elif is_image_file(path) and path.is_file():
                photos.append((path, capture_time(path)))
        from_mtime += sum(t.source == "mtime" for _, t in photos)
        for group in group_by_gap(photos, sequence_gap):
            images = tuple(p for p, _ in group)
            clips.append(Clip(images[0].relative_to(root).as_posix(), images[0], images))
    if from_mtime:
        log.warning(
            "%d photo(s) have no EXIF capture time: grouped into sequences by their file "
            "modification time, which copying the files may have reset",
            from_mtime,
        )
    clips.sort(key=lambda c: c.clip_id)
    return clips


def _resolve(raw: str, root: Path) -> Path:
    path = Path(raw).expanduser()
    return Path(os.path.normpath(path if path.is_absolute() else root / path))


def _read_manifest(csv_path: Path) -> tuple[Path, list[Clip]]:
    root = csv_path.parent
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip() for f in reader.fieldnames or []]
        if "filepath" not in fields and {"file_name", "seq_id"} <= set(fields):
            reader.fieldnames = fields
            return root, _read_sequences(csv_path, reader)
        if reader.fieldnames is None or "filepath" not in reader.fieldnames:
            raise DiscoveryError(
                f"{csv_path}: a manifest needs a 'filepath' column (videos) or 'file_name' "
                f"and 'seq_id' columns (photo sequences) "
                f"(found: {', '.join(reader.fieldnames or []) or 'no header'})"
            )
        clips: list[Clip] = []
        seen: set[str] = set()
        for row in reader:
            raw = (row.get("filepath") or "").strip()
            if not raw:
                continue
            path = _resolve(raw, root)
            clip_id = _manifest_id(path, root)
            if clip_id in seen:
                continue
            seen.add(clip_id)
            images = (path,) if is_image_file(path) else ()  # a photo: a sequence of one
            clips.append(Clip(clip_id, path, images))
    return root, clips


def _manifest_id(path: Path, root: Path) -> str:
    """Id of a manifest entry: relative to the CSV's folder when inside it, else absolute."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _read_sequences(csv_path: Path, reader: csv.DictReader) -> list[Clip]:
    """One clip per ``seq_id`` (in order of first appearance), its photos ordered by
    ``datetime`` when the column is there, else by file name."""
    root = csv_path.parent
    has_time = "datetime" in (reader.fieldnames or [])
    members: dict[str, list[tuple[datetime | None, str, Path]]] = defaultdict(list)
    for line, row in enumerate(reader, start=2):
        seq_id = (row.get("seq_id") or "").strip()
        raw = (row.get("file_name") or "").strip()
        if not seq_id or not raw:
            raise DiscoveryError(
                f"{csv_path}, line {line}: empty {'seq_id' if not seq_id else 'file_name'}"
            )
        when = None
        text = (row.get("datetime") or "").strip() if has_time else ""
        if text:
            try:
                when = datetime.fromisoformat(text)
            except ValueError:
                raise DiscoveryError(
                    f"{csv_path}, line {line}: datetime {text!r} is not a date and time "
                    "(expected e.g. 2013-05-20 14:31:02)"
                ) from None
        path = _resolve(raw, root)
        members[seq_id].append((when, path.name, path))
    clips: list[Clip] = []
    for seq_id, rows in members.items():
        rows.sort(key=lambda r: (r[0] is None, r[0] or datetime.min, r[1]))
        images = tuple(dict.fromkeys(r[2] for r in rows))  # a repeated row counts once
        clips.append(Clip(seq_id, images[0], images))
    return clips
