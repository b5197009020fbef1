"""Discovery: which files are clips, their ids and order, CSV manifests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from extract.discover import DiscoveryError, discover


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_directory_recursive_extensions_any_case_sorted(tmp_path: Path) -> None:
    for name in ["b/c.MP4", "a.avi", "a/x.Asf", "d/e f/ü.mov", "k.mkv", "l.M4V", "m.wmv", "n.MTS"]:
        _touch(tmp_path / name)
    for name in ["readme.txt", "img.gif", "a/noext", "video.mp4.part"]:
        _touch(tmp_path / name)
    root, clips = discover(tmp_path)
    ids = [c.clip_id for c in clips]
    assert root == tmp_path
    assert ids == sorted(ids)
    assert set(ids) == {
        "b/c.MP4",
        "a.avi",
        "a/x.Asf",
        "d/e f/ü.mov",
        "k.mkv",
        "l.M4V",
        "m.wmv",
        "n.MTS",
    }
    assert all(c.path == tmp_path / c.clip_id for c in clips)
    assert discover(tmp_path)[1] == clips  # stable


def test_symlinks_followed_and_loops_terminate(tmp_path: Path) -> None:
    real = tmp_path / "real"
    _touch(real / "v.mp4")
    videos = tmp_path / "videos"
    videos.mkdir()
    os.symlink(real, videos / "linked dir")
    os.symlink(real / "v.mp4", videos / "link.mp4")
    os.symlink(videos, videos / "linked dir" / "loop")  # a cycle
    _, clips = discover(videos)
    ids = [c.clip_id for c in clips]
    assert "link.mp4" in ids and "linked dir/v.mp4" in ids
    assert len(ids) == len(set(ids))


def test_manifest_relative_absolute_and_row_order(tmp_path: Path) -> None:
    a = _touch(tmp_path / "clips" / "a.mp4")
    b = _touch(tmp_path / "other" / "b.avi")
    outside = _touch(tmp_path.parent / f"{tmp_path.name}_outside.mp4")
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        f"filepath,label\nother/b.avi,x\n{a},y\nclips/../clips/a.mp4,y\n{outside},z\n",
        encoding="utf-8",
    )
    root, clips = discover(manifest)
    assert root == tmp_path
    assert [c.clip_id for c in clips] == ["other/b.avi", "clips/a.mp4", outside.as_posix()]
    assert [c.path for c in clips] == [b, a, outside]


def test_manifest_without_filepath_column(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\na.mp4,x\n")
    with pytest.raises(DiscoveryError, match="'filepath' column"):
        discover(manifest)


def test_missing_source_and_wrong_kind(tmp_path: Path) -> None:
    with pytest.raises(DiscoveryError, match="no such file"):
        discover(tmp_path / "nope")
    with pytest.raises(DiscoveryError, match="directory of videos"):
        discover(_touch(tmp_path / "a.mp4"))


def test_real_media_odd_paths(shared_data: Path) -> None:
    root, clips = discover(shared_data / "camtrap-lowres")
    ids = [c.clip_id for c in clips]
    assert len(clips) == 19
    assert "chimpandsee/Trip_5/card 1.2_location/PICT0074.ASF" in ids
    assert any("Taï_T124" in i for i in ids)
    assert all(c.path.is_file() for c in clips)
