"""Camera-trap photo bursts as clips: capture times, grouping into sequences, decoding.

A *sequence* is a burst of still photos from one trigger (Snapshot Serengeti / Hakuna
Ma-Data, iWildCam). jungle treats it as a very short clip whose frames are its photos, so
the backbones, the store, the level-1 models and the stacker apply unchanged.

* :func:`capture_time`: EXIF ``DateTimeOriginal`` (else ``DateTime``), else the file's
  modification time (which copying a card may reset, hence the warning of
  :func:`group_by_gap`'s callers).
* :func:`group_by_gap`: images of one folder, in capture order, start a new sequence when
  more than ``gap`` seconds passed since the previous image (``gap=0``: one image each).
* :func:`decode_sequence`: the photos sampled to ``n_frames`` slots exactly like a clip's
  frames (:func:`extract.decode.sample_indices`: evenly chosen when longer, cyclic padding
  masked out when shorter), squashed to ``size`` with bicubic resampling. An unreadable
  photo is skipped and makes the sequence ``partial``; none readable is a
  :class:`~extract.probe.DecodeError` with each photo's reason.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from extract.decode import DecodedClip, sample_indices
from extract.probe import DecodeError, nonempty_size

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff"})
#: seconds between two photos of one folder above which a new sequence starts (default of
#: ``--sequence-gap``; camera traps shoot a burst within a few seconds and rearm after
#: tens of seconds to minutes).
DEFAULT_SEQUENCE_GAP: float = 10.0
#: frames (photos) per sequence in a store of photos only, unless ``--frames`` says other:
#: a trigger's burst is 1-10 photos, so video's 32 slots would be mostly padding.
PHOTO_FRAMES: int = 10
#: the ``container`` metadata value of a sequence row (``media`` is ``images``).
SEQUENCE_CONTAINER = "images"
#: pixels above which a photo is refused rather than decoded (a 100-megapixel panorama is
#: not a camera-trap photo; Pillow's own bomb check starts at 179 M).
MAX_PIXELS: int = 100_000_000

_EXIF_IFD = 0x8769
_DATETIME_ORIGINAL = 0x9003
_DATETIME = 0x0132
_MAKE, _MODEL = 0x010F, 0x0110


@contextlib.contextmanager
def _quiet_pillow() -> Iterator[None]:
    """Pillow warns (UserWarning) on damaged EXIF blocks; the image is still usable."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def is_image_file(path: Path) -> bool:
    """True when ``path`` has one of :data:`IMAGE_EXTENSIONS`, in any letter case."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


@dataclass(frozen=True)
class CaptureTime:
    """When a photo was taken: a naive local time (as cameras write EXIF) and where it came
    from: ``exif`` or ``mtime`` (the file's modification time, in local time)."""

    time: datetime
    source: str


def _exif(image: Image.Image) -> tuple[dict, dict]:
    """The main and Exif IFDs of an open image (empty when absent or unreadable)."""
    try:
        main = image.getexif()
        return dict(main), dict(main.get_ifd(_EXIF_IFD))
    except Exception:  # Pillow raises assorted errors on damaged EXIF blocks
        return {}, {}


def _parse_exif_time(value: object) -> datetime | None:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        return None
    text = value.strip("\x00 ").strip()
    try:
        parsed = datetime.strptime(text[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    return None if parsed.year <= 1970 else parsed


def _exif_text(value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value).strip("\x00 ").strip() if isinstance(value, str) else ""


def capture_time(path: Path) -> CaptureTime:
    """The capture time of a photo (see :class:`CaptureTime`).

    Raises:
        OSError: the file cannot be read at all (not even its modification time).
    """
    try:
        with _quiet_pillow(), Image.open(path) as image:
            main, exif = _exif(image)
        for value in (exif.get(_DATETIME_ORIGINAL), main.get(_DATETIME)):
            parsed = _parse_exif_time(value)
            if parsed is not None:
                return CaptureTime(parsed, "exif")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        pass  # not readable as an image: decoding will say why
    return CaptureTime(datetime.fromtimestamp(os.stat(path).st_mtime), "mtime")


def group_by_gap(
    times: list[tuple[Path, CaptureTime]], gap: float
) -> list[list[tuple[Path, CaptureTime]]]:
    """Split the photos of ONE folder into sequences: sorted by capture time (then file
    name), a photo more than ``gap`` seconds after the previous one starts a new sequence.
    ``gap=0`` makes every photo its own sequence."""
    ordered = sorted(times, key=lambda pt: (pt[1].time, pt[0].name))
    groups: list[list[tuple[Path, CaptureTime]]] = []
    for item in ordered:
        if groups and gap > 0 and (item[1].time - groups[-1][-1][1].time).total_seconds() <= gap:
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode as 8-bit RGB: 16/32-bit greyscale scaled by its bit depth, CMYK,
    palette and alpha images converted."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        grey = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        grey = np.clip(values * (255.0 if values.max() <= 1.0 else 1.0), 0, 255)
        return Image.fromarray(grey.astype(np.uint8), mode="L").convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


@dataclass
class _Photo:
    pixels: np.ndarray  # (size, size, 3) uint8
    width: int
    height: int
    format: str
    make: str
    model: str
    time: datetime | None


def _read_photo(path: Path, size: int) -> _Photo:
    """Decode one photo squashed to ``size`` x ``size``.

    Raises:
        DecodeError: with the reason.
    """
    nonempty_size(path)
    try:
        with _quiet_pillow(), Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise DecodeError(f"image too large ({width}x{height} pixels)")
            fmt = (image.format or "").lower()
            main, exif = _exif(image)
            if fmt == "jpeg":  # decode big photos at a reduced DCT scale (still >= 2x size)
                image.draft("RGB", (2 * size, 2 * size))
            image.load()
            rgb = _to_rgb(image).resize((size, size), Image.Resampling.BICUBIC)
            pixels = np.asarray(rgb, dtype=np.uint8).copy()
    except DecodeError:
        raise
    except UnidentifiedImageError:
        raise DecodeError("not a readable image file") from None
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"image too large ({exc})") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DecodeError(f"damaged image data ({exc})") from None
    return _Photo(
        pixels,
        width,
        height,
        fmt,
        _exif_text(main.get(_MAKE)),
        _exif_text(main.get(_MODEL)),
        _parse_exif_time(exif.get(_DATETIME_ORIGINAL)) or _parse_exif_time(main.get(_DATETIME)),
    )


def decode_sequence(
    images: tuple[Path, ...], n_frames: int, size: int
) -> tuple[DecodedClip, dict[str, object]]:
    """Sample the photos of a sequence into ``n_frames`` slots (see the module docstring).

    Returns:
        The decoded clip (``frame_index`` is the photo's position in the sequence, among
        all its photos) and the store metadata of the sequence.

    Raises:
        DecodeError: no photo of the sequence can be read (every photo's reason listed).
    """
    photos: list[_Photo] = []
    positions: list[int] = []
    problems: list[str] = []
    for position, path in enumerate(images):
        try:
            photos.append(_read_photo(path, size))
            positions.append(position)
        except DecodeError as exc:
            problems.append(f"{path.name}: {exc}")
            log.info("%s: %s", path, exc)
    if not photos:
        raise DecodeError("no readable image in the sequence (" + "; ".join(problems[:5]) + ")")
    index, mask = sample_indices(len(photos), n_frames)
    wanted = np.unique(index)
    frames = np.stack([photos[i].pixels for i in wanted])
    sizes = [_file_size(p) for p in images]
    times = [p.time for p in photos if p.time is not None]
    first = photos[0]
    meta: dict[str, object] = {
        "file_size": int(sum(sizes)),
        "width": first.width,
        "height": first.height,
        "fps": 0.0,
        "frame_count": len(photos),
        "duration": 0.0,
        "bitrate": 0,
        "codec": first.format,
        "container": SEQUENCE_CONTAINER,
        "decoder": "pillow",
        "partial": bool(problems),
        "media": "images",
        "image_count": len(images),
        "file_size_mean": float(np.mean(sizes)),
        "time_span": (max(times) - min(times)).total_seconds() if times else 0.0,
        "camera_make": first.make,
        "camera_model": first.model,
    }
    decoded = DecodedClip(
        frames=frames,
        frame_index=np.asarray(positions)[index],
        mask=mask,
        decoder="pillow",
        partial=bool(problems),
        n_frames=len(photos),
    )
    return decoded, meta


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
