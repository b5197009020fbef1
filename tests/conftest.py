"""Shared fixtures: the real media folder, generated clips, a small extraction config."""

from __future__ import annotations

from pathlib import Path

import pytest

from extract.config import FeaturesConfig
from tests.media import indexed_clip
from tests.predict_runs import make_demo_run, make_mixed_folder, make_photo_run

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (always present in CI; a fresh clone elsewhere may lack it)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real media folder {SHARED_DATA} is absent (see README, 'Tests')")
    return SHARED_DATA


@pytest.fixture(scope="session")
def clip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five small H.264/MPEG-4/MJPEG clips in nested folders with odd names."""
    root = tmp_path_factory.mktemp("videos")
    (root / "site A" / "cam 1").mkdir(parents=True)
    (root / "Taï").mkdir()
    indexed_clip(root / "site A" / "cam 1" / "clip one.mp4", 40)
    indexed_clip(root / "site A" / "b.AVI", 30, "mpeg4_bframes_avi")
    indexed_clip(root / "Taï" / "éléphant.mp4", 12)
    indexed_clip(root / "Taï" / "m.avi", 25, "mjpeg_avi")
    indexed_clip(root / "z.asf", 20, "wmv2_asf")
    (root / "notes.txt").write_text("not a video")
    return root


@pytest.fixture()
def small_config() -> FeaturesConfig:
    """The default backbone on few, small frames: seconds per run on 2 CPU cores."""
    return FeaturesConfig(frames=8, image_size=64, workers=1, batch_frames=16, shard_clips=2)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small run (attention + histogram, level 2) trained on generated demo clips:
    (run, data folder)."""
    return make_demo_run(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="session")
def mixed_folder(demo_run: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Clips to predict: 5 good ones (4 demo clips and a 3-frame one), 2 that fail."""
    return make_mixed_folder(demo_run[1], tmp_path_factory.mktemp("mixed"))


@pytest.fixture(scope="session")
def photo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small run (attention + histogram, level 2) trained on generated photo bursts:
    (run, data folder; see :func:`tests.predict_runs.make_photo_run`)."""
    return make_photo_run(tmp_path_factory.mktemp("photos"))
