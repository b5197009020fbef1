"""When a clip was recorded (extract.timestamps)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from extract.timestamps import clip_timestamp
from tests.media import indexed_clip


def test_creation_time_tag_wins_over_the_file_time(tmp_path: Path) -> None:
    clip = indexed_clip(
        tmp_path / "tagged.mp4", 3, metadata={"creation_time": "2021-05-31T08:25:38.000000Z"}
    )
    os.utime(clip, (1_600_000_000, 1_600_000_000))
    assert clip_timestamp(clip) == (datetime(2021, 5, 31, 8, 25, 38, tzinfo=UTC), "creation_time")


def test_without_a_tag_the_modification_time_is_used(tmp_path: Path) -> None:
    clip = indexed_clip(tmp_path / "plain.avi", 3, kind="mjpeg_avi")
    os.utime(clip, (1_600_000_000, 1_600_000_000))
    assert clip_timestamp(clip) == (datetime.fromtimestamp(1_600_000_000, tz=UTC), "mtime")


def test_a_zero_date_tag_and_an_unreadable_file_fall_back_to_the_file_time(
    tmp_path: Path,
) -> None:
    zero = indexed_clip(
        tmp_path / "noclock.mp4", 3, metadata={"creation_time": "1970-01-01T00:00:00.000000Z"}
    )
    junk = tmp_path / "junk.mp4"
    junk.write_text("not a video\n")
    for path in (zero, junk):
        os.utime(path, (1_700_000_000, 1_700_000_000))
        assert clip_timestamp(path) == (datetime.fromtimestamp(1_700_000_000, tz=UTC), "mtime")
