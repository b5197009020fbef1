"""Photo sequences as clips: discovery (folders by capture-time gap, Hakuna metadata CSVs),
decoding of good and bad photos, the store's sequence rows, identities, older stores."""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import h5py
import numpy as np
import pytest

from extract.discover import Clip, DiscoveryError, discover
from extract.pipeline import extract_features
from extract.sequences import PHOTO_FRAMES, capture_time
from extract.store import FeatureStore
from extract.timestamps import clip_timestamp
from extract.workers import decode_item
from pool.labels import read_labels
from tests.images import (
    burst_from_clip,
    cmyk_jpeg,
    corrupt_exif_jpeg,
    gradient_rgb,
    huge_jpeg,
    png16,
    text_as_jpg,
    truncated_jpeg,
    write_hakuna_labels,
    write_hakuna_metadata,
    write_jpeg,
    zero_bytes,
)

T0 = datetime(2023, 7, 1, 6, 0, 0)
SIZE = 32


def _config(small_config):  # noqa: ANN001, ANN202 - the conftest fixture's FeaturesConfig
    return small_config.model_copy(update={"frames": None, "image_size": SIZE})


def _set_mtime(path: Path, when: datetime) -> None:
    stamp = when.timestamp()
    os.utime(path, (stamp, stamp))


# --- discovery -------------------------------------------------------------------------


def test_real_burst_is_one_sequence_in_capture_order(shared_data: Path, tmp_path: Path) -> None:
    photos = shared_data / "photos-camtrap-dp"
    root, clips = discover(photos)
    assert len(clips) == 1
    (clip,) = clips
    assert clip.is_sequence and len(clip.images) == 10
    names = [p.name for p in clip.images]
    assert names == sorted(names)  # same-second EXIF times keep the file order
    assert clip.clip_id == names[0] and clip.path == photos / names[0]
    found = capture_time(clip.images[0])
    assert found.source == "exif" and found.time == datetime(2021, 4, 11, 20, 43, 9)
    # gap 0: every photo alone, ids are the photos' paths
    assert [c.clip_id for c in discover(photos, sequence_gap=0)[1]] == names


def test_folder_grouped_by_gap_bursts_from_real_clips(shared_data: Path, tmp_path: Path) -> None:
    clips = sorted((shared_data / "chimpandsee").glob("*.mp4"))
    cam = tmp_path / "cam1"
    burst_from_clip(clips[0], cam, 3, T0, step_s=2.0, prefix="A")
    burst_from_clip(clips[1], cam, 4, T0 + timedelta(minutes=5), step_s=1.0, prefix="B")
    burst_from_clip(clips[2], tmp_path / "cam2", 2, T0, step_s=1.0, prefix="C")
    _, found = discover(tmp_path, sequence_gap=10)
    assert [(c.clip_id, len(c.images)) for c in found] == [
        ("cam1/A0000.JPG", 3),
        ("cam1/B0000.JPG", 4),
        ("cam2/C0000.JPG", 2),
    ]
    # a gap smaller than the 2 s steps splits the first burst; other folders never merge
    assert len(discover(tmp_path, sequence_gap=1.5)[1]) == 5
    assert len(discover(tmp_path, sequence_gap=1e9)[1]) == 2
    with pytest.raises(DiscoveryError, match="sequence-gap"):
        discover(tmp_path, sequence_gap=-1)


def test_photos_without_exif_use_file_times_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for i, offset in enumerate([0, 3, 600]):
        path = write_jpeg(tmp_path / f"p{i}.jpg", gradient_rgb(seed=i), None)
        _set_mtime(path, T0 + timedelta(seconds=offset))
    _, clips = discover(tmp_path)
    assert [len(c.images) for c in clips] == [2, 1]
    assert "no EXIF capture time" in caplog.text and "3 photo(s)" in caplog.text


def test_hakuna_metadata_csv_one_clip_per_seq_id(tmp_path: Path) -> None:
    for name in ["a1.jpg", "a2.jpg", "b1.jpg"]:
        write_jpeg(tmp_path / "S1" / name, gradient_rgb(), T0)
    meta = write_hakuna_metadata(
        tmp_path / "train_metadata.csv",
        [
            ("S1/a2.jpg", "SER_S1#A", T0 + timedelta(seconds=1)),
            ("S1/b1.jpg", "SER_S1#B", T0),
            ("S1/a1.jpg", "SER_S1#A", T0),
        ],
    )
    root, clips = discover(meta)
    assert root == tmp_path
    assert [c.clip_id for c in clips] == ["SER_S1#A", "SER_S1#B"]
    assert [p.name for p in clips[0].images] == ["a1.jpg", "a2.jpg"]  # by datetime
    # without datetimes: by file name; a 'filepath' CSV stays a video manifest
    meta.write_text("file_name,seq_id\nS1/a2.jpg,X\nS1/a1.jpg,X\n", encoding="utf-8")
    assert [p.name for p in discover(meta)[1][0].images] == ["a1.jpg", "a2.jpg"]
    meta.write_text("file_name,seq_id,datetime\nS1/a1.jpg,X,yesterday\n", encoding="utf-8")
    with pytest.raises(DiscoveryError, match="line 2: datetime 'yesterday'"):
        discover(meta)


def test_hakuna_labels_layout(tmp_path: Path) -> None:
    labels = write_hakuna_labels(
        tmp_path / "train_labels.csv",
        {"SER#1": {"zebra"}, "SER#2": set(), "SER#3": {"lion", "zebra"}},
        ["lion", "zebra"],
    )
    table = read_labels(labels)
    assert table.classes == ["lion", "zebra", "blank"]
    assert table.filepaths == ["SER#1", "SER#2", "SER#3"]
    np.testing.assert_array_equal(table.targets, [[0, 1, 0], [0, 0, 1], [1, 1, 0]])


# --- decoding --------------------------------------------------------------------------


def test_odd_but_valid_photos_decode(tmp_path: Path) -> None:
    """CMYK JPEG, 16-bit PNG, a 6000x4000 photo and a JPEG with corrupt EXIF all decode."""
    cases = {
        "cmyk": cmyk_jpeg(tmp_path / "cmyk.jpg"),
        "png16": png16(tmp_path / "deep.png"),
        "huge": huge_jpeg(tmp_path / "huge.jpg"),
        "exif": corrupt_exif_jpeg(tmp_path / "exif.jpg"),
    }
    for name, path in cases.items():
        item = decode_item(Clip(path.name, path, (path,)), 4, SIZE, "cpu")
        assert item["ok"], (name, item)
        assert item["frames"].shape == (1, SIZE, SIZE, 3) and not item["meta"]["partial"]
        assert item["mask"].tolist() == [True, False, False, False]
        assert item["frames"].std() > 5, name  # real picture content, not a blank frame
    huge = decode_item(Clip("h", cases["huge"], (cases["huge"],)), 1, SIZE, "cpu")["meta"]
    assert (huge["width"], huge["height"]) == (6000, 4000)
    deep = decode_item(Clip("d", cases["png16"], (cases["png16"],)), 1, SIZE, "cpu")
    assert deep["frames"].min() < 30 and deep["frames"].max() > 225  # full range scaled
    # corrupt EXIF: no capture time from it, the file time instead
    assert capture_time(cases["exif"]).source == "mtime"


@pytest.mark.parametrize(
    ("maker", "reason"),
    [
        (lambda p, good: zero_bytes(p), "empty file (0 bytes)"),
        (lambda p, good: truncated_jpeg(p, good), "damaged image data"),
        (lambda p, good: text_as_jpg(p), "not a readable image file"),
    ],
    ids=["zero-bytes", "truncated", "text"],
)
def test_bad_photo_makes_a_sequence_partial_or_failed(
    tmp_path: Path, maker: object, reason: str
) -> None:
    good = [write_jpeg(tmp_path / f"g{i}.jpg", gradient_rgb(seed=i), T0) for i in range(2)]
    bad = maker(tmp_path / "bad.jpg", good[0])  # type: ignore[operator]
    mixed = decode_item(Clip("m", good[0], (good[0], bad, good[1])), 4, SIZE, "cpu")
    assert mixed["ok"] and mixed["meta"]["partial"]
    assert mixed["meta"]["frame_count"] == 2 and mixed["meta"]["image_count"] == 3
    assert mixed["frame_index"].tolist() == [0, 2, 0, 2]  # positions in the sequence
    assert mixed["mask"].tolist() == [True, True, False, False]
    alone = decode_item(Clip("b", bad, (bad,)), 4, SIZE, "cpu")
    assert not alone["ok"]
    assert alone["reason"].startswith("no readable image in the sequence (bad.jpg: ")
    assert reason in alone["reason"]


def test_long_sequence_sampled_evenly(tmp_path: Path) -> None:
    photos = tuple(
        write_jpeg(tmp_path / f"p{i:02d}.jpg", gradient_rgb(seed=i), T0 + timedelta(seconds=i))
        for i in range(12)
    )
    item = decode_item(Clip("p00.jpg", photos[0], photos), 4, SIZE, "cpu")
    assert item["frame_index"].tolist() == [1, 4, 7, 10] and item["mask"].all()
    assert item["meta"]["time_span"] == 11.0 and item["meta"]["image_count"] == 12


# --- the store ---------------------------------------------------------------------------


def test_features_of_a_mixed_folder(shared_data: Path, tmp_path: Path, small_config) -> None:  # noqa: ANN001
    """Videos are clips, photos are grouped; photos-only stores default to PHOTO_FRAMES."""
    folder = tmp_path / "card"
    (folder / "burst").mkdir(parents=True)
    (folder / "other").mkdir()
    shutil.copy(sorted((shared_data / "chimpandsee").glob("*.mp4"))[0], folder / "v.mp4")
    for name in ["20210531082538-RCNX0031.JPG", "20210531082538-RCNX0032.JPG"]:
        shutil.copy(shared_data / "photos-camtrap-dp" / name, folder / "burst" / name)
    bad = text_as_jpg(folder / "other" / "broken.jpg")
    out = tmp_path / "f.h5"
    summary = extract_features(folder, out, _config(small_config), show_progress=False)
    assert (summary.ok, summary.failed) == (2, 1)
    store = FeatureStore(out)
    assert store.extraction["frames"] == 32  # a folder with a video: video's default
    meta = store.meta()
    photo = meta.loc["burst/20210531082538-RCNX0031.JPG"]
    assert photo["media"] == "images" and photo["image_count"] == 2
    assert photo["camera_make"] == "RECONYX" and photo["container"] == "images"
    assert np.isnan(photo["fps"]) and np.isnan(photo["duration"]) and np.isnan(photo["bitrate"])
    assert meta.loc["v.mp4", "media"] == "video" and meta.loc["v.mp4", "fps"] == 24
    failed = store.failed()
    assert failed["id"].tolist() == ["other/broken.jpg"]
    assert "not a readable image file" in failed["reason"].iloc[0]
    row = store.ids.index("burst/20210531082538-RCNX0031.JPG")
    assert store.mask()[row].sum() == 2

    # photos only: PHOTO_FRAMES slots
    only = extract_features(
        folder / "burst", tmp_path / "p.h5", _config(small_config), show_progress=False
    )
    assert only.ok == 1 and FeatureStore(tmp_path / "p.h5").extraction["frames"] == PHOTO_FRAMES
    assert bad.exists()


def test_sequence_identity_resume_and_change(tmp_path: Path, small_config) -> None:  # noqa: ANN001
    photos = [
        write_jpeg(tmp_path / "cam" / f"p{i}.jpg", gradient_rgb(seed=i), T0 + timedelta(seconds=i))
        for i in range(3)
    ]
    out = tmp_path / "f.h5"
    config = _config(small_config)
    assert extract_features(tmp_path / "cam", out, config, show_progress=False).processed == 1
    assert extract_features(tmp_path / "cam", out, config, show_progress=False).processed == 0
    before = FeatureStore(out).identities().iloc[0]
    assert before["size"] == sum(p.stat().st_size for p in photos)
    # a copy that only changed the times is the same sequence
    for p in photos:
        _set_mtime(p, datetime(2024, 1, 1))
    assert extract_features(tmp_path / "cam", out, config, show_progress=False).processed == 0
    # one photo replaced by another of the same size: processed again, row replaced
    data = bytearray(photos[1].read_bytes())
    data[-3] ^= 0xFF  # inside the entropy-coded data, before the EOI marker
    photos[1].write_bytes(bytes(data))
    summary = extract_features(tmp_path / "cam", out, config, show_progress=False)
    assert summary.processed == 1 and summary.ok == 1
    assert FeatureStore(out).identities().iloc[0]["fingerprint"] != before["fingerprint"]


def test_store_of_format_2_reads_and_extends(
    shared_data: Path, tmp_path: Path, small_config
) -> None:  # noqa: ANN001,E501
    """A store written before sequences (no sequence fields) reads as videos and takes
    new clips, photos included."""
    folder = tmp_path / "card"
    folder.mkdir()
    shutil.copy(sorted((shared_data / "chimpandsee").glob("*.mp4"))[0], folder / "v.mp4")
    out = tmp_path / "f.h5"
    config = small_config.model_copy(update={"image_size": SIZE})
    extract_features(folder, out, config, show_progress=False)
    with h5py.File(out, "r+") as f:
        for name in ["media", "image_count", "file_size_mean", "time_span"]:
            del f[f"meta/{name}"]
        del f["meta/camera_make"], f["meta/camera_model"]
        f.attrs["format_version"] = 2
    meta = FeatureStore(out).meta()
    assert meta.loc["v.mp4", "media"] == "video" and meta.loc["v.mp4", "image_count"] == 0
    shutil.copytree(shared_data / "photos-camtrap-dp", folder / "burst")
    summary = extract_features(folder, out, config, show_progress=False)
    assert (summary.processed, summary.ok) == (1, 2)
    meta = FeatureStore(out).meta()
    assert meta["media"].tolist() == ["video", "images"]
    assert meta["image_count"].tolist() == [0, 10]


def test_recording_time_of_a_sequence_is_its_exif_time(shared_data: Path) -> None:
    first = shared_data / "photos-camtrap-dp" / "20210531082538-RCNX0031.JPG"
    when, source = clip_timestamp(first)
    assert source == "exif" and when == datetime(2021, 4, 11, 20, 43, 9) and when.tzinfo is None
