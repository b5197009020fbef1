"""Generated test photos for image-sequence input: EXIF-stamped JPEGs, bursts cut from real
clips, bad image files, and the CSV layout of the Hakuna Ma-Data (Snapshot Serengeti) data.

Every function writes what it is asked to into the given path and returns that path; none
keeps state between calls.
"""

from __future__ import annotations

import csv
import io
import struct
from datetime import datetime, timedelta
from pathlib import Path

import av
import numpy as np
from PIL import Image

#: EXIF tags written by :func:`write_jpeg`
TAG_DATETIME = 0x0132  # IFD0 DateTime
TAG_MAKE = 0x010F  # IFD0 Make
TAG_MODEL = 0x0110  # IFD0 Model
IFD_EXIF = 0x8769  # pointer to the Exif sub-IFD
TAG_DATETIME_ORIGINAL = 0x9003  # Exif IFD DateTimeOriginal

#: the EXIF date format ("2021:04:11 20:43:05")
EXIF_TIME_FORMAT = "%Y:%m:%d %H:%M:%S"
#: the datetime format of the Hakuna Ma-Data metadata CSV ("2021-04-11 20:43:05")
HAKUNA_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def gradient_rgb(width: int = 160, height: int = 120, seed: int = 0) -> np.ndarray:
    """A smooth RGB test picture (``height x width x 3``, uint8) with a little noise."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, width)[None, :]
    y = np.linspace(0, 255, height)[:, None]
    img = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2)
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_jpeg(
    path: Path | str,
    rgb: np.ndarray,
    when: datetime | None,
    make: str | None = None,
    model: str | None = None,
    quality: int = 90,
) -> Path:
    """Write the uint8 ``rgb`` array (``H x W x 3``) as a JPEG with Pillow.

    With ``when``, EXIF DateTimeOriginal (0x9003 in the Exif IFD 0x8769) and DateTime
    (0x0132 in IFD0) carry it as ``YYYY:MM:DD HH:MM:SS`` (whole seconds); ``make`` and
    ``model`` go to Make (0x010F) and Model (0x0110). Without any of them the file has no
    EXIF segment at all.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).convert("RGB")
    exif = Image.Exif()
    if make is not None:
        exif[TAG_MAKE] = make
    if model is not None:
        exif[TAG_MODEL] = model
    if when is not None:
        stamp = when.strftime(EXIF_TIME_FORMAT)
        exif[TAG_DATETIME] = stamp
        exif.get_ifd(IFD_EXIF)[TAG_DATETIME_ORIGINAL] = stamp
    kwargs: dict = {"quality": quality}
    if when is not None or make is not None or model is not None:
        kwargs["exif"] = exif.tobytes()
    img.save(path, "JPEG", **kwargs)
    return path


def read_exif_time(path: Path | str) -> datetime | None:
    """DateTimeOriginal of a JPEG written by :func:`write_jpeg` (None when absent)."""
    with Image.open(path) as img:
        raw = img.getexif().get_ifd(IFD_EXIF).get(TAG_DATETIME_ORIGINAL)
    return None if raw is None else datetime.strptime(raw, EXIF_TIME_FORMAT)


def _frame_count(path: Path) -> int:
    """Number of video frames of ``path``: the container's count, else counted by decoding."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if stream.frames:
            return int(stream.frames)
        return sum(1 for _ in container.decode(stream))


def burst_from_clip(
    video: Path,
    out_dir: Path,
    n: int,
    start: datetime,
    step_s: float = 1.0,
    prefix: str = "IMG",
) -> list[Path]:
    """A fake camera-trap burst: ``n`` evenly spaced frames of the real clip ``video``.

    Frame ``i`` (first and last frame of the clip included when ``n > 1``) is written to
    ``out_dir / f"{prefix}{i:04d}.JPG"`` with EXIF times ``start + i * step_s`` seconds
    (EXIF keeps whole seconds, so use ``step_s >= 1`` for strictly increasing times).
    Decodes the clip once, front to back, with PyAV.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    video, out_dir = Path(video), Path(out_dir)
    total = _frame_count(video)
    if total < n:
        raise ValueError(f"{video} has {total} frames, fewer than the {n} asked for")
    wanted = np.linspace(0, total - 1, n).round().astype(int).tolist()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for index, frame in enumerate(container.decode(stream)):
            if index != wanted[len(paths)]:
                continue
            i = len(paths)
            when = start + timedelta(seconds=i * step_s)
            paths.append(
                write_jpeg(out_dir / f"{prefix}{i:04d}.JPG", frame.to_ndarray(format="rgb24"), when)
            )
            if len(paths) == n:
                break
    if len(paths) != n:
        raise RuntimeError(f"decoded only {len(paths)} of {n} frames from {video}")
    return paths


# --------------------------------------------------------------------------- bad images


def zero_bytes(path: Path | str) -> Path:
    """An empty file (0 bytes), e.g. ``IMG0001.JPG`` from a camera whose card filled up."""
    path = Path(path)
    path.write_bytes(b"")
    return path


def truncated_jpeg(path: Path | str, source_jpeg: Path | str) -> Path:
    """The first 40 % of the bytes of the valid JPEG ``source_jpeg`` (an interrupted copy).

    The header survives, so ``Image.open`` succeeds and reports the full size; decoding the
    pixels (``load()``) raises ``OSError: image file is truncated (N bytes not processed)``
    unless ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is set, which fills the rest with grey.
    """
    path = Path(path)
    data = Path(source_jpeg).read_bytes()
    path.write_bytes(data[: int(len(data) * 0.4)])
    return path


def text_as_jpg(path: Path | str) -> Path:
    """A text file named like a photo (``Image.open`` raises ``UnidentifiedImageError``)."""
    path = Path(path)
    path.write_text("This is not a photo.\nIt is a note someone saved as .jpg\n", encoding="utf-8")
    return path


def cmyk_jpeg(path: Path | str, width: int = 160, height: int = 120) -> Path:
    """A valid JPEG in Pillow mode ``"CMYK"`` (4 channels: needs ``convert("RGB")``)."""
    path = Path(path)
    Image.fromarray(gradient_rgb(width, height, seed=1)).convert("CMYK").save(
        path, "JPEG", quality=90
    )
    return path


def png16(path: Path | str, width: int = 256, height: int = 64) -> Path:
    """A 16-bit grayscale PNG (Pillow mode ``"I;16"``): a horizontal gradient from 0 to
    65535 plus a vertical ripple, so naive ``uint8`` casts lose almost everything."""
    path = Path(path)
    ramp = np.linspace(0, 65535, width)[None, :]
    ripple = 4096 * np.sin(np.linspace(0, 4 * np.pi, height))[:, None]
    values = np.clip(ramp + ripple, 0, 65535)
    values[:, 0], values[:, -1] = 0, 65535  # the full range, exactly
    Image.fromarray(values.round().astype(np.uint16)).save(path, "PNG")
    return path


def huge_jpeg(path: Path | str, width: int = 6000, height: int = 4000) -> Path:
    """A 24-megapixel RGB JPEG (6000x4000 by default), made fast: a small random picture
    upscaled, quality 70 (a few MB, under a second to write)."""
    path = Path(path)
    rng = np.random.default_rng(2)
    small = Image.fromarray(rng.integers(0, 256, (height // 100, width // 100, 3), np.uint8))
    small.resize((width, height), Image.Resampling.BILINEAR).save(path, "JPEG", quality=70)
    return path


def corrupt_exif_jpeg(path: Path | str, width: int = 160, height: int = 120) -> Path:
    """A JPEG whose pixels decode but whose EXIF is garbage.

    Right after the SOI marker it carries a bogus APP1 ``Exif\\0\\0`` segment: a
    little-endian TIFF header whose first-IFD offset points far past the segment's end,
    followed by random bytes. The real image follows, untouched. With Pillow 13,
    ``Image.open(p)`` itself (the JPEG plugin parses EXIF while opening) emits
    ``UserWarning: Corrupt EXIF data.  Expecting to read 2 bytes but only got 0.``;
    ``getexif()`` then neither raises nor finds anything (an empty ``Exif``, so no
    DateTimeOriginal), and ``load()`` decodes the pixels normally.
    """
    path = Path(path)
    buf = io.BytesIO()
    Image.fromarray(gradient_rgb(width, height, seed=3)).save(buf, "JPEG", quality=90)
    jpeg = buf.getvalue()
    assert jpeg[:2] == b"\xff\xd8"
    rng = np.random.default_rng(4)
    # TIFF header "II*\0" then an IFD offset of 0x7fff0000, then junk (no 0xFF to keep the
    # segment free of anything that looks like a marker)
    tiff = b"II*\x00" + struct.pack("<I", 0x7FFF0000)
    junk = rng.integers(0, 0xFF, 40, dtype=np.uint8).tobytes()
    payload = b"Exif\x00\x00" + tiff + junk
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    path.write_bytes(jpeg[:2] + app1 + jpeg[2:])
    return path


# --------------------------------------------------------------------------- Hakuna Ma-Data


def write_hakuna_metadata(
    csv_path: Path | str, rows: list[tuple[str, str, datetime | None]]
) -> Path:
    """Write a Hakuna Ma-Data metadata CSV: ``file_name,seq_id,datetime``.

    ``rows`` are ``(file_name, seq_id, datetime)``; datetimes are written as
    ``YYYY-MM-DD HH:MM:SS``, a None as an empty cell. When every datetime is None the
    ``datetime`` column is left out entirely.
    """
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with_time = any(when is not None for _, _, when in rows)
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            ["file_name", "seq_id", "datetime"] if with_time else ["file_name", "seq_id"]
        )
        for file_name, seq_id, when in rows:
            if with_time:
                stamp = "" if when is None else when.strftime(HAKUNA_TIME_FORMAT)
                writer.writerow([file_name, seq_id, stamp])
            else:
                writer.writerow([file_name, seq_id])
    return csv_path


def write_hakuna_labels(
    csv_path: Path | str, seq_classes: dict[str, set[str]], classes: list[str]
) -> Path:
    """Write a Hakuna Ma-Data labels CSV: ``seq_id,<class...>,empty`` with 0/1 values.

    ``seq_classes`` maps each sequence to the species seen in it (an empty set: ``empty=1``).
    ``classes`` fixes the column order; ``"empty"`` in it is ignored (always the last
    column), any other class of ``seq_classes`` missing from it is an error.
    """
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    species = [c for c in classes if c != "empty"]
    for seq_id, seen in seq_classes.items():
        unknown = set(seen) - set(species) - {"empty"}
        if unknown:
            raise ValueError(f"sequence {seq_id}: classes {sorted(unknown)} not in {classes}")
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["seq_id", *species, "empty"])
        for seq_id, seen in seq_classes.items():
            present = set(seen) - {"empty"}
            writer.writerow([seq_id, *(int(c in present) for c in species), int(not present)])
    return csv_path
