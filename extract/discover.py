"""Find the video clips to process: a directory tree or a CSV manifest."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {".mp4", ".avi", ".asf", ".mov", ".mkv", ".m4v", ".wmv", ".mts"}
)


class DiscoveryError(ValueError):
    """The given video source cannot be used (missing, empty, malformed CSV...)."""


@dataclass(frozen=True)
class Clip:
    """One clip to process.

    Attributes:
        clip_id: the path relative to the source root, with '/' separators. This is the
            key of the clip in the feature store and in every output CSV.
        path: the absolute path of the file (symlinks are not resolved, so the id stays
            what the user sees).
    """

    clip_id: str
    path: Path


def is_video_file(path: Path) -> bool:
    """True when ``path`` has one of :data:`VIDEO_EXTENSIONS`, in any letter case."""
    return path.suffix.lower() in VIDEO_EXTENSIONS


def discover(source: Path | str) -> tuple[Path, list[Clip]]:
    """List the clips of a directory (recursive) or of a CSV manifest.

    Args:
        source: a directory, searched recursively (symlinked folders are followed, files
            with other extensions ignored), or a CSV file with a ``filepath`` column whose
            entries are relative to the CSV's folder or absolute.

    Returns:
        ``(root, clips)``: the folder clip ids are relative to, and the clips in a stable
        order (sorted by id for a directory, the CSV's row order for a manifest, duplicates
        dropped).

    Raises:
        DiscoveryError: the source does not exist, or the CSV has no ``filepath`` column.
    """
    source = Path(source).expanduser()
    if not source.exists():
        raise DiscoveryError(f"{source}: no such file or directory")
    if source.is_dir():
        root = Path(os.path.abspath(source))
        return root, _walk(root)
    if source.suffix.lower() == ".csv":
        return _read_manifest(Path(os.path.abspath(source)))
    raise DiscoveryError(
        f"{source}: expected a directory of videos or a .csv manifest with a 'filepath' column"
    )


def _walk(root: Path) -> list[Clip]:
    clips: list[Clip] = []
    seen_dirs: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        st = os.stat(dirpath)
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:  # a symlink loop: do not walk the same folder twice
            dirnames[:] = []
            continue
        seen_dirs.add(key)
        for name in filenames:
            path = Path(dirpath) / name
            if is_video_file(path) and path.is_file():
                clips.append(Clip(path.relative_to(root).as_posix(), path))
    clips.sort(key=lambda c: c.clip_id)
    return clips


def _read_manifest(csv_path: Path) -> tuple[Path, list[Clip]]:
    root = csv_path.parent
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "filepath" not in reader.fieldnames:
            raise DiscoveryError(
                f"{csv_path}: a manifest needs a 'filepath' column "
                f"(found: {', '.join(reader.fieldnames or []) or 'no header'})"
            )
        clips: list[Clip] = []
        seen: set[str] = set()
        for row in reader:
            raw = (row.get("filepath") or "").strip()
            if not raw:
                continue
            path = Path(raw).expanduser()
            path = Path(os.path.normpath(path if path.is_absolute() else root / path))
            clip_id = _manifest_id(path, root)
            if clip_id in seen:
                continue
            seen.add(clip_id)
            clips.append(Clip(clip_id, path))
    return root, clips


def _manifest_id(path: Path, root: Path) -> str:
    """Id of a manifest entry: relative to the CSV's folder when inside it, else absolute."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()
