"""Small trained runs for the tests of level 2, ``jungle predict`` and its outputs
(imported as ``tests.predict_runs``; the fixtures ``demo_run`` and ``mixed_folder`` in
conftest use them)."""

from __future__ import annotations

import os
from pathlib import Path

from extract.config import FeaturesConfig
from extract.pipeline import extract_features
from pool.config import Level1Config, load_config
from pool.run import train_level1
from scripts.make_demo_data import generate_demo
from stack.train import train_level2
from tests.media import indexed_clip

FAST = {
    "pool": {"epochs": 20, "patience": 5, "use_meta": False},
    "histogram": {"frame_steps": 200, "n_estimators": 150},
    "attention": {"epochs": 20, "patience": 5},
    "gru": {"epochs": 20, "patience": 5},
}


def fast_level1(store: Path, labels_csv: Path, run: Path, **extra: object) -> Level1Config:
    """Quick level-1 settings: pool and histogram, 3 folds, one thread, few epochs."""
    settings = {
        "features": [str(store)],
        "labels": str(labels_csv),
        "run": str(run),
        "models": ["pool", "histogram"],
        "folds": 3,
        "threads": 1,
        "device": "cpu",
        **FAST,
        **extra,
    }
    return load_config(None, settings)


def make_demo_run(base: Path) -> tuple[Path, Path]:
    """A small run trained on features of generated demo clips: (run, data folder)."""
    data = base / "data"
    labels_csv = generate_demo(data, n_clips=48, sites=("siteA", "siteB", "siteC"), seed=1)
    store = base / "train.h5"
    extract_features(
        labels_csv, store, FeaturesConfig(frames=8, image_size=64, workers=1), show_progress=False
    )
    settings = fast_level1(store, labels_csv, base / "run", group_column="site")
    # attention + histogram: the per-frame timeline needs both
    run = train_level1(settings.model_copy(update={"models": ["attention", "histogram"]}))
    train_level2(run)
    return run, data


def make_photo_run(base: Path) -> tuple[Path, Path]:
    """A small run trained on photo bursts of the demo generator, grouped from their folders
    by capture time (ids: first photos): (run, data folder with ``train_metadata.csv`` and
    ``train_labels.csv`` in the Hakuna layout as well)."""
    data = base / "data"
    labels_csv = generate_demo(
        data, n_clips=60, sites=("siteA", "siteB", "siteC"), seed=2, images=True
    )
    store = base / "train.h5"
    extract_features(data, store, FeaturesConfig(image_size=64, workers=1), show_progress=False)
    settings = fast_level1(store, labels_csv, base / "run", group_column="site")
    run = train_level1(settings.model_copy(update={"models": ["attention", "histogram"]}))
    train_level2(run)
    return run, data


def make_mixed_folder(data: Path, folder: Path) -> Path:
    """Four demo clips (links), an empty file, a text file named .mp4 and a 3-frame clip."""
    for clip in sorted((data / "siteA").glob("*.mp4"))[:4]:
        os.symlink(clip, folder / clip.name)
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "notes.mp4").write_text("field notes, not a video\n" * 20)
    indexed_clip(folder / "short.mp4", 3)
    return folder
