"""The generated test photos of ``tests/images.py`` are what they claim to be."""

from __future__ import annotations

import warnings
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, UnidentifiedImageError

from tests.images import (
    IFD_EXIF,
    TAG_DATETIME,
    TAG_DATETIME_ORIGINAL,
    TAG_MAKE,
    TAG_MODEL,
    burst_from_clip,
    cmyk_jpeg,
    corrupt_exif_jpeg,
    gradient_rgb,
    huge_jpeg,
    png16,
    read_exif_time,
    text_as_jpg,
    truncated_jpeg,
    write_hakuna_labels,
    write_hakuna_metadata,
    write_jpeg,
    zero_bytes,
)

WHEN = datetime(2021, 4, 11, 20, 43, 5)


def test_write_jpeg_exif_round_trip(tmp_path: Path) -> None:
    rgb = gradient_rgb(64, 48)
    p = write_jpeg(tmp_path / "a.JPG", rgb, WHEN, make="RECONYX", model="HC500")
    with Image.open(p) as img:
        assert img.format == "JPEG" and img.mode == "RGB" and img.size == (64, 48)
        exif = img.getexif()
        assert exif.get_ifd(IFD_EXIF)[TAG_DATETIME_ORIGINAL] == "2021:04:11 20:43:05"
        assert exif[TAG_DATETIME] == "2021:04:11 20:43:05"
        assert exif[TAG_MAKE] == "RECONYX" and exif[TAG_MODEL] == "HC500"
        pixels = np.asarray(img.convert("RGB"), dtype=float)
    assert np.abs(pixels - rgb).mean() < 6  # JPEG, quality 90
    assert read_exif_time(p) == WHEN


def test_write_jpeg_without_exif(tmp_path: Path) -> None:
    p = write_jpeg(tmp_path / "b.jpg", gradient_rgb(32, 32), None)
    with Image.open(p) as img:
        exif = img.getexif()
        assert TAG_DATETIME not in exif and TAG_MAKE not in exif
        assert TAG_DATETIME_ORIGINAL not in exif.get_ifd(IFD_EXIF)
    assert read_exif_time(p) is None


def test_burst_from_real_clip(tmp_path: Path, shared_data: Path) -> None:
    video = sorted((shared_data / "chimpandsee").glob("*.mp4"))[0]
    paths = burst_from_clip(video, tmp_path / "burst", 5, WHEN, step_s=2.0, prefix="RCNX")
    assert [p.name for p in paths] == [f"RCNX{i:04d}.JPG" for i in range(5)]
    times = [read_exif_time(p) for p in paths]
    assert times[0] == WHEN
    assert all((b - a).total_seconds() == 2.0 for a, b in zip(times, times[1:], strict=False))
    frames = []
    for p in paths:
        with Image.open(p) as img:
            assert img.size == (720, 404) and img.mode == "RGB"
            frames.append(np.asarray(img, dtype=float))
    # evenly spaced over 15 s of footage: not five copies of one frame
    assert np.abs(frames[0] - frames[-1]).mean() > 1


def test_zero_bytes_and_text_are_not_images(tmp_path: Path) -> None:
    for p in (zero_bytes(tmp_path / "z.JPG"), text_as_jpg(tmp_path / "t.jpg")):
        assert p.exists()
        with pytest.raises(UnidentifiedImageError):
            Image.open(p)
    assert (tmp_path / "z.JPG").stat().st_size == 0


def test_truncated_jpeg_fails_to_decode(tmp_path: Path) -> None:
    good = write_jpeg(tmp_path / "good.jpg", gradient_rgb(), WHEN)
    p = truncated_jpeg(tmp_path / "cut.jpg", good)
    size = p.stat().st_size
    assert 0.35 * good.stat().st_size <= size <= 0.45 * good.stat().st_size
    with Image.open(p) as img:
        assert img.size == (160, 120)  # the header is intact
        with pytest.raises(OSError, match="truncated"):
            img.load()


def test_cmyk_jpeg(tmp_path: Path) -> None:
    with Image.open(cmyk_jpeg(tmp_path / "c.jpg")) as img:
        assert img.format == "JPEG" and img.mode == "CMYK"
        assert img.convert("RGB").size == (160, 120)


def test_png16_is_16_bit_full_range(tmp_path: Path) -> None:
    with Image.open(png16(tmp_path / "g.png")) as img:
        assert img.format == "PNG" and img.mode == "I;16"
        values = np.asarray(img)
    assert values.dtype == np.uint16
    assert values.min() == 0 and values.max() == 65535
    assert len(np.unique(values)) > 1000  # a real gradient, not two levels
    assert (np.diff(values[0].astype(int)) >= 0).all()


def test_huge_jpeg(tmp_path: Path) -> None:
    with Image.open(huge_jpeg(tmp_path / "h.jpg")) as img:
        assert img.format == "JPEG" and img.mode == "RGB"
        assert img.size == (6000, 4000)


def test_corrupt_exif_still_decodes(tmp_path: Path) -> None:
    p = corrupt_exif_jpeg(tmp_path / "x.jpg")
    data = p.read_bytes()
    assert data[:4] == b"\xff\xd8\xff\xe1" and data[6:12] == b"Exif\x00\x00"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow: "Corrupt EXIF data. ..."
        with Image.open(p) as img:
            try:
                exif = img.getexif()
            except Exception:  # other Pillow versions may raise: acceptable too
                exif = None
            if exif is not None:
                assert TAG_DATETIME_ORIGINAL not in exif.get_ifd(IFD_EXIF)
            img.load()
            assert img.size == (160, 120) and img.mode == "RGB"
            assert np.asarray(img).std() > 10  # real picture content


def test_hakuna_metadata(tmp_path: Path) -> None:
    rows = [
        ("S1/B04/B04_R1/S1_B04_R1_PICT0001.JPG", "SER_S1#B04#1#1", WHEN),
        ("S1/B04/B04_R1/S1_B04_R1_PICT0002.JPG", "SER_S1#B04#1#1", None),
    ]
    df = pd.read_csv(write_hakuna_metadata(tmp_path / "meta.csv", rows))
    assert list(df.columns) == ["file_name", "seq_id", "datetime"]
    assert df.loc[0, "datetime"] == "2021-04-11 20:43:05" and pd.isna(df.loc[1, "datetime"])
    no_time = [(f, s, None) for f, s, _ in rows]
    df = pd.read_csv(write_hakuna_metadata(tmp_path / "meta2.csv", no_time))
    assert list(df.columns) == ["file_name", "seq_id"]
    assert df["seq_id"].tolist() == ["SER_S1#B04#1#1"] * 2


def test_hakuna_labels(tmp_path: Path) -> None:
    seqs = {"s1": {"zebra"}, "s2": set(), "s3": {"lionfemale", "zebra"}}
    p = write_hakuna_labels(tmp_path / "labels.csv", seqs, ["zebra", "lionfemale", "aardvark"])
    df = pd.read_csv(p).set_index("seq_id")
    assert list(df.columns) == ["zebra", "lionfemale", "aardvark", "empty"]
    assert df.loc["s1"].tolist() == [1, 0, 0, 0]
    assert df.loc["s2"].tolist() == [0, 0, 0, 1]
    assert df.loc["s3"].tolist() == [1, 1, 0, 0]
    with pytest.raises(ValueError, match="giraffe"):
        write_hakuna_labels(tmp_path / "bad.csv", {"s": {"giraffe"}}, ["zebra"])
