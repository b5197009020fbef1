"""Fixtures of the level-1 tests: one synthetic store and one trained run per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from extract.store import FeatureStore
from pool.run import train_level1
from pool.synthetic import write_synthetic_store
from tests.pool.support import SPEC, Synthetic, fast_config


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Synthetic:
    base = tmp_path_factory.mktemp("synthetic")
    labels = write_synthetic_store(base / "features.h5", SPEC)
    failed = FeatureStore(base / "features.h5").failed()["id"].tolist()
    root = base / "videos"
    root.mkdir()
    csv = root / "labels.csv"
    labels[~labels["filepath"].isin(failed)].to_csv(csv, index=False)
    return Synthetic(base / "features.h5", csv, labels, failed)


@pytest.fixture(scope="session")
def trained_run(synthetic: Synthetic, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All four models trained on the synthetic store (the expensive fixture, made once)."""
    run = tmp_path_factory.mktemp("runs") / "full"
    return train_level1(fast_config(synthetic, run))
