"""Thumbnails chosen and written while stage 1 has the frames (extract.thumbnails)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from extract.thumbnails import ClipFrames, Thumbnailer, thumbnail_path
from tests.media import index_frame, read_index


def _clip(clip_id: str, real: int, slots: int = 6) -> ClipFrames:
    """A clip of ``real`` distinct frames (frame i shows i) padded to ``slots`` slots."""
    frames = np.stack([index_frame(i, 160, 120) for i in range(real)])
    rows = np.minimum(np.arange(slots), real - 1)
    return ClipFrames(
        clip_id=clip_id,
        frames=frames,
        rows=rows,
        mask=np.arange(slots) < real,
        features={"a": np.zeros((slots, 2), np.float16), "b": np.ones((slots, 3), np.float16)},
        meta={"width": 640, "height": 360},
    )


def test_the_frame_with_the_most_evidence_and_never_padding(tmp_path: Path) -> None:
    seen = {}

    def evidence(features: dict, mask: np.ndarray, meta: list) -> np.ndarray:
        seen["shapes"] = {k: v.shape for k, v in features.items()}
        scores = np.tile(np.arange(mask.shape[1], dtype=float), (len(mask), 1))
        scores[0, 1] = 99.0  # clip 0: slot 1 stands out; clip 1: the last real slot
        return scores

    clips = [_clip("cam/a.mp4", 5), _clip("cam/b.mp4", 3)]
    thumbs = Thumbnailer(tmp_path, evidence)
    np.testing.assert_array_equal(thumbs.best_slots(clips), [1, 2])  # slots 3-5 of b: padding
    assert seen["shapes"] == {"a": (2, 6, 2), "b": (2, 6, 3)}
    thumbs.write(clips)
    for clip, frame in (("cam/a.mp4", 1), ("cam/b.mp4", 2)):
        image = np.asarray(Image.open(thumbnail_path(tmp_path, clip)))
        assert image.shape == (108, 192, 3)  # 16:9 as the clip, not the square CNN input
        assert read_index(image) == frame


def test_without_evidence_the_middle_real_frame(tmp_path: Path) -> None:
    clips = [_clip("a", 5), _clip("b", 4), _clip("c", 1)]
    np.testing.assert_array_equal(Thumbnailer(tmp_path).best_slots(clips), [2, 1, 0])


def test_paths_are_spread_over_folders_and_distinct() -> None:
    a, b = thumbnail_path("t", "x/clip 1.mp4"), thumbnail_path("t", "x/clip 2.mp4")
    assert a != b and a.parent.parent == Path("t") and len(a.parent.name) == 2


def test_a_thumbnail_that_cannot_be_written_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "thumbs"
    blocker.write_text("a file where the folder should be")
    with caplog.at_level(logging.WARNING):
        Thumbnailer(blocker).write([_clip("a.mp4", 2)])
    assert "a.mp4: thumbnail not written" in caplog.text


def test_a_failing_evidence_function_falls_back_to_the_middle_frame(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(features: dict, mask: np.ndarray, meta: list) -> np.ndarray:
        raise RuntimeError("CUDA out of memory")

    with caplog.at_level(logging.WARNING):
        Thumbnailer(tmp_path, broken).write([_clip("a.mp4", 5)])
    assert "thumbnail evidence failed (CUDA out of memory)" in caplog.text
    assert read_index(np.asarray(Image.open(thumbnail_path(tmp_path, "a.mp4")))) == 2
